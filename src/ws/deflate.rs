//! permessage-deflate (RFC 7692): the offer a client makes at the upgrade and the
//! answer, a server frame compressed, and a client message inflated under the
//! message-size limit.
//!
//! The gateway never keeps a compression context per connection: it always
//! answers with `server_no_context_takeover` and `client_no_context_takeover`, so
//! every message is compressed on its own. That is what lets a publication's
//! compressed frame be built once and written to every subscriber that negotiated
//! the extension (as the uncompressed frame is), and lets one inflater per shard
//! serve all its connections; an idle connection holds nothing for it.
//!
//! The deflate implementation is flate2 on its zlib-rs backend: flate2 is the
//! maintained, standard Rust front end for raw deflate streams, and zlib-rs is a
//! pure-Rust zlib (no C toolchain), which, unlike flate2's default miniz_oxide
//! backend, compresses with a chosen window size (`server_max_window_bits`).

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The RSV1 bit of a frame's first byte: set on the first frame of a compressed message.
pub const RSV1: u8 = 0x40;

/// The largest LZ77 window, and the one publications are compressed with.
pub const FULL_WINDOW: u8 = 15;

/// What a sync flush ends with; RFC 7692 7.2.1 strips it from a message and the
/// receiver appends it back before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The extension's token in `Sec-WebSocket-Extensions`.
const TOKEN: &str = "permessage-deflate";

/// The outcome of a negotiation the gateway accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// The largest window the server may compress with (`server_max_window_bits`,
    /// 15 when the client set no bound).
    pub server_window: u8,
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub response: String,
}

/// Picks the first permessage-deflate offer in `Sec-WebSocket-Extensions` values
/// that the gateway can honour; none if there is none (the connection then runs
/// uncompressed).
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<Agreement> {
    header_values
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(accept_offer)
}

/// One offer: `permessage-deflate` and its parameters, each at most once, each
/// with a valid value (RFC 7692 5.1: an offer we cannot honour is declined).
fn accept_offer(offer: &str) -> Option<Agreement> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(TOKEN) {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_window = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                server_window = Some(window_bits(value?)?);
                2
            }
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    let mut response = format!("{TOKEN}; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = server_window {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Some(Agreement {
        server_window: server_window.unwrap_or(FULL_WINDOW),
        response,
    })
}

fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.len() > 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

thread_local! {
    /// This thread's compressor and its window: a deflate state is a few hundred
    /// KiB, so it is made once per shard thread and reset for each message.
    static COMPRESSOR: RefCell<Option<(u8, Compress)>> = const { RefCell::new(None) };
}

/// The compressed form of a complete, unfragmented, unmasked server data frame:
/// RSV1 set, its payload deflated on its own with a window of `window_bits` (9 to
/// 15). `None` for a window of 8, which zlib cannot honour: the frame then goes
/// uncompressed, which the extension allows for any message. A tiny payload may
/// come out a few bytes longer: `--compression <bytes>` is the knob for that.
pub fn deflate_frame(frame: &[u8], window_bits: u8) -> Option<Bytes> {
    if !(9..=15).contains(&window_bits) || frame.len() < 2 {
        return None;
    }
    let header_len = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let payload = frame.get(header_len..)?;
    let body = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compress = match &mut *slot {
            Some((bits, c)) if *bits == window_bits => {
                c.reset();
                c
            }
            other => {
                let c = Compress::new_with_window_bits(Compression::default(), false, window_bits);
                &mut other.insert((window_bits, c)).1
            }
        };
        deflate(compress, payload)
    })?;
    let len = body.len();
    let mut out = Vec::with_capacity(10 + len);
    out.push(frame[0] | RSV1);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&body);
    Some(Bytes::from(out))
}

/// Deflates `input` as one message: a sync flush, its 4-byte tail stripped.
fn deflate(compress: &mut Compress, input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    loop {
        let consumed = compress.total_in() as usize;
        compress
            .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        // Everything is out once the input is consumed and the flush left room.
        if compress.total_in() as usize == input.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Some(out)
}

/// Why a compressed client message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the message limit (a zip bomb, or just too big).
    TooBig,
    /// It is not a valid deflate stream.
    Invalid,
}

/// A shard's inflater: one deflate state and one output buffer for all its
/// connections (no context is taken over between messages, so none is kept).
pub struct Inflater {
    state: Decompress,
    out: Vec<u8>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("buffered", &self.out.capacity())
            .finish()
    }
}

impl Default for Inflater {
    fn default() -> Inflater {
        Inflater::new()
    }
}

/// How much output room one inflate step is given at most.
const INFLATE_STEP: usize = 64 * 1024;

impl Inflater {
    /// An inflater for raw deflate streams with any window up to 32 KiB.
    pub fn new() -> Inflater {
        Inflater {
            state: Decompress::new(false),
            out: Vec::new(),
        }
    }

    /// Inflates one message (the payloads of its frames, joined) into this
    /// inflater's buffer; never produces more than `max + 1` bytes, so a bomb
    /// costs at most the limit in memory and its own size in time.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<&[u8], InflateError> {
        self.state.reset(false);
        self.out.clear();
        if self.out.capacity() > 4 * INFLATE_STEP {
            // A big message should not pin its buffer on the shard for good.
            self.out = Vec::new();
        }
        'parts: for part in [compressed, &TAIL[..]] {
            let mut pos = 0usize;
            loop {
                if self.out.len() == self.out.capacity() {
                    let room = (max.saturating_add(1) - self.out.len()).min(INFLATE_STEP);
                    self.out.reserve_exact(room);
                }
                let (in_before, out_before) = (self.state.total_in(), self.state.total_out());
                let status = self
                    .state
                    .decompress_vec(&part[pos..], &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                pos += (self.state.total_in() - in_before) as usize;
                if self.out.len() > max {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block: the message ends here, whatever follows.
                    break 'parts;
                }
                let progress = self.state.total_in() != in_before || self.state.total_out() != out_before;
                if pos == part.len() && (self.out.len() < self.out.capacity() || !progress) {
                    break;
                }
                if !progress {
                    return Err(InflateError::Invalid);
                }
            }
        }
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unframe(frame: &[u8]) -> &[u8] {
        match frame[1] & 0x7f {
            126 => &frame[4..],
            127 => &frame[10..],
            _ => &frame[2..],
        }
    }

    #[test]
    fn negotiates_the_first_offer_it_can_honour() {
        let a = negotiate(["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(a.server_window, 15);
        assert_eq!(
            a.response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let a = negotiate(["x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=9"]).unwrap();
        assert_eq!(a.server_window, 9);
        assert!(a.response.ends_with("; server_max_window_bits=9"));
        let a = negotiate([
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover",
        ])
        .unwrap();
        assert_eq!(a.server_window, 15);
        for declined in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits=1x",
            "permessage-deflate; unknown",
            "deflate-frame",
        ] {
            assert_eq!(negotiate([declined]), None, "{declined}");
        }
    }

    #[test]
    fn a_compressed_frame_inflates_to_the_original() {
        let text = br#"{"type":"message","channel":"c","seq":1,"data":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
        let frame = crate::ws::frame::data_frame(shardcast_proto::Encoding::Json, text);
        for bits in [9, 12, 15] {
            let compressed = deflate_frame(&frame, bits).expect("compressed");
            assert!(compressed.len() < frame.len());
            assert_eq!(compressed[0], 0x81 | RSV1);
            let mut inflater = Inflater::new();
            assert_eq!(inflater.inflate(unframe(&compressed), 1 << 20), Ok(&text[..]));
        }
        let big = vec![b'z'; 200_000];
        let frame = crate::ws::frame::data_frame(shardcast_proto::Encoding::MsgPack, &big);
        let compressed = deflate_frame(&frame, 15).unwrap();
        assert_eq!(Inflater::new().inflate(unframe(&compressed), 200_000), Ok(&big[..]));
        let tiny = deflate_frame(
            &crate::ws::frame::data_frame(shardcast_proto::Encoding::Json, b"hi"),
            15,
        )
        .unwrap();
        assert_eq!(Inflater::new().inflate(unframe(&tiny), 10), Ok(&b"hi"[..]));
        assert_eq!(deflate_frame(&frame, 8), None, "zlib has no 256-byte window");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let frame = crate::ws::frame::data_frame(shardcast_proto::Encoding::MsgPack, &zeros);
        let bomb = deflate_frame(&frame, 15).unwrap();
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        let mut inflater = Inflater::new();
        assert_eq!(inflater.inflate(unframe(&bomb), 65_536), Err(InflateError::TooBig));
        assert_eq!(inflater.inflate(b"\xff\xff\xff", 65_536), Err(InflateError::Invalid));
        assert_eq!(inflater.inflate(&[0x00], 10), Ok(&b""[..]));
    }
}
