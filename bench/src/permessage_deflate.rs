//! permessage-deflate (RFC 7692) on the load generator's side: the offer a browser
//! makes, what the server's 101 agreed to, and a compressed message inflated back
//! to its text, so latency is read from the payload as a real client would see it.
//!
//! The load generator never compresses what it sends (the extension lets either side
//! send any message uncompressed), so only the server-to-client direction matters.
//! When the server keeps its LZ77 window between messages (no
//! `server_no_context_takeover`: Node `ws` by default), each connection keeps its own
//! inflate state; when it does not (shardcast), one state per worker thread is reset
//! for every message and an idle connection holds nothing for it.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};

/// What browsers offer: the extension, letting the server bound the client's window.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The RSV1 bit of a frame's first byte: set on the first frame of a compressed message.
pub const RSV1: u8 = 0x40;

/// What the sender stripped from the end of each message (RFC 7692 7.2.1) and the
/// receiver appends back before inflating (7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The extension's token.
const TOKEN: &str = "permessage-deflate";

/// Output room ensured before each inflate call.
const OUT_CHUNK: usize = 4096;

/// What a server's 101 response agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The server compresses each message with the window its previous messages left
    /// (it did not answer `server_no_context_takeover`): the client must keep its
    /// inflate state from one message to the next.
    pub server_context_takeover: bool,
    /// The server's LZ77 window (`server_max_window_bits`, 15 when not given).
    pub server_window_bits: u8,
}

/// Reads the `Sec-WebSocket-Extensions` value of a 101 response to [`OFFER`]: the
/// agreement, or none when the server declined (no value; the connection then runs
/// uncompressed). An extension that was not offered, or a parameter RFC 7692 does
/// not define, is an error.
pub fn parse_response(value: Option<&str>) -> Result<Option<Agreement>, String> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let mut agreement = None;
    for extension in value.split(',') {
        let mut parts = extension.split(';').map(str::trim);
        let token = parts.next().unwrap_or_default();
        if !token.eq_ignore_ascii_case(TOKEN) {
            return Err(format!("the server accepted {token:?}, which was not offered"));
        }
        if agreement.is_some() {
            return Err("the server accepted permessage-deflate twice".into());
        }
        let mut found = Agreement {
            server_context_takeover: true,
            server_window_bits: 15,
        };
        for param in parts {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (param, None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("server_no_context_takeover", None) => found.server_context_takeover = false,
                // Only binds what the client compresses, and it compresses nothing.
                ("client_no_context_takeover", None) => {}
                ("server_max_window_bits", Some(v)) => found.server_window_bits = window_bits(v)?,
                ("client_max_window_bits", Some(v)) => {
                    window_bits(v)?;
                }
                _ => return Err(format!("unexpected permessage-deflate parameter {param:?}")),
            }
        }
        agreement = Some(found);
    }
    Ok(agreement)
}

fn window_bits(value: &str) -> Result<u8, String> {
    value
        .parse::<u8>()
        .ok()
        .filter(|b| (8..=15).contains(b))
        .ok_or_else(|| format!("window bits {value:?} outside 8..=15"))
}

thread_local! {
    /// The worker thread's inflate state for servers without context takeover:
    /// reset for each message, shared by every connection.
    static SHARED: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Inflates one connection's compressed messages, as its [`Agreement`] requires.
pub struct MessageInflater {
    /// The connection's own state when the server takes its context over, made at
    /// the first compressed message; none otherwise.
    own: Option<Box<Decompress>>,
    takeover: bool,
}

impl std::fmt::Debug for MessageInflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageInflater")
            .field("takeover", &self.takeover)
            .field("has_state", &self.own.is_some())
            .finish()
    }
}

impl MessageInflater {
    /// An inflater for a connection with this agreement.
    pub fn new(agreement: Agreement) -> Self {
        MessageInflater {
            own: None,
            takeover: agreement.server_context_takeover,
        }
    }

    /// Appends the text of the compressed message `payload` (its frame's payload,
    /// tail stripped) to `out`; an error for invalid data or more than `limit` bytes.
    pub fn inflate(&mut self, payload: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), String> {
        if self.takeover {
            // A window of 15 reads any window the server chose.
            let state = self.own.get_or_insert_with(|| Box::new(Decompress::new(false)));
            inflate_message(state, payload, out, limit)
        } else {
            SHARED.with(|cell| {
                let mut state = cell.borrow_mut();
                state.reset(false);
                inflate_message(&mut state, payload, out, limit)
            })
        }
    }
}

/// Inflates one message: its payload, then the 4-byte tail the sender stripped.
fn inflate_message(state: &mut Decompress, payload: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), String> {
    let start = out.len();
    for part in [payload, &TAIL[..]] {
        let mut at = 0;
        loop {
            if out.capacity() - out.len() < OUT_CHUNK / 4 {
                out.reserve(OUT_CHUNK);
            }
            let (in0, out0) = (state.total_in(), state.total_out());
            let status = state
                .decompress_vec(&part[at..], out, FlushDecompress::Sync)
                .map_err(|e| format!("invalid deflate data: {e}"))?;
            at += (state.total_in() - in0) as usize;
            if out.len() - start > limit {
                return Err(format!("a message inflates to more than {limit} bytes"));
            }
            let progressed = state.total_in() != in0 || state.total_out() != out0;
            // A final block ends the stream; the sender should not send one, but
            // what came before it is the whole message.
            if status == Status::StreamEnd {
                return Ok(());
            }
            let room_left = out.len() < out.capacity();
            if at == part.len() && (room_left || !progressed) {
                break;
            }
            if !progressed {
                return Err("inflate made no progress".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7692 7.2.3.1: "Hello" compressed on its own.
    const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    /// RFC 7692 7.2.3.2: the second "Hello" of a connection that shares its window.
    const HELLO_AGAIN: [u8; 5] = [0xf2, 0x00, 0x11, 0x00, 0x00];

    fn takeover(on: bool) -> Agreement {
        Agreement {
            server_context_takeover: on,
            server_window_bits: 15,
        }
    }

    #[test]
    fn the_rfc_examples_inflate() {
        let mut inflater = MessageInflater::new(takeover(false));
        let mut out = Vec::new();
        inflater.inflate(&HELLO, &mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
        // Without takeover each message stands alone, again and again.
        out.clear();
        inflater.inflate(&HELLO, &mut out, 100).unwrap();
        assert_eq!(out, b"Hello");

        let mut shared = MessageInflater::new(takeover(true));
        let mut out = Vec::new();
        shared.inflate(&HELLO, &mut out, 100).unwrap();
        out.clear();
        shared.inflate(&HELLO_AGAIN, &mut out, 100).unwrap();
        assert_eq!(out, b"Hello", "the second message refers to the first one's window");
    }

    #[test]
    fn a_frame_the_gateway_would_send_inflates() {
        // Deflated the way the gateway does it: a sync flush, the tail stripped.
        let text: Vec<u8> = (0..3000u32)
            .flat_map(|i| format!("{{\"n\":{i},\"side\":\"buy\"}}").into_bytes())
            .collect();
        let mut compress = flate2::Compress::new(flate2::Compression::default(), false);
        let mut body = Vec::with_capacity(text.len());
        compress
            .compress_vec(&text, &mut body, flate2::FlushCompress::Sync)
            .unwrap();
        assert!(body.ends_with(&TAIL));
        body.truncate(body.len() - TAIL.len());
        let mut out = Vec::new();
        MessageInflater::new(takeover(false))
            .inflate(&body, &mut out, text.len())
            .unwrap();
        assert_eq!(out, text);
        let err = MessageInflater::new(takeover(false)).inflate(&body, &mut Vec::new(), 1000);
        assert!(err.unwrap_err().contains("more than 1000"));
        assert!(MessageInflater::new(takeover(false))
            .inflate(&[0xff, 0xff, 0xff], &mut Vec::new(), 100)
            .is_err());
    }

    #[test]
    fn responses_are_read() {
        assert_eq!(parse_response(None), Ok(None));
        assert_eq!(parse_response(Some("  ")), Ok(None));
        // shardcast's answer.
        assert_eq!(
            parse_response(Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            )),
            Ok(Some(takeover(false)))
        );
        // Node `ws` with its defaults.
        assert_eq!(
            parse_response(Some("permessage-deflate; client_max_window_bits=15")),
            Ok(Some(takeover(true)))
        );
        assert_eq!(
            parse_response(Some("Permessage-Deflate; server_max_window_bits=\"10\"")),
            Ok(Some(Agreement {
                server_context_takeover: true,
                server_window_bits: 10
            }))
        );
        assert!(parse_response(Some("x-webkit-deflate-frame")).is_err());
        assert!(parse_response(Some("permessage-deflate; server_max_window_bits=16")).is_err());
        assert!(parse_response(Some("permessage-deflate; mystery")).is_err());
        assert!(parse_response(Some("permessage-deflate, permessage-deflate")).is_err());
    }
}
