//! RFC 6455 frames: building server frames (unmasked, so one frame serves every
//! subscriber) and reading client frames out of a byte buffer, with the checks the
//! RFC requires of a server (masking, reserved bits, control-frame rules, UTF-8,
//! fragmentation) and the gateway's message-size limit, inflating compressed
//! messages where permessage-deflate was negotiated ([`super::deflate`]).

use bytes::Bytes;
use shardcast_proto::{close, Encoding};
use std::io::Cursor;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::deflate::{InflateError, Inflater};

/// Longest close reason that fits a control frame (125 bytes minus the 2-byte code).
const MAX_CLOSE_REASON: usize = 123;

/// Builds one complete, final, unmasked server frame.
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    let mut buf = Vec::with_capacity(header.len(len) + payload.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(len, &mut buf);
    buf.extend_from_slice(payload);
    Bytes::from(buf)
}

/// A data frame in the frame type an encoding travels in (text for JSON, binary for MessagePack).
pub fn data_frame(encoding: Encoding, payload: &[u8]) -> Bytes {
    let opcode = if encoding.is_binary() {
        OpCode::Data(Data::Binary)
    } else {
        OpCode::Data(Data::Text)
    };
    server_frame(opcode, payload)
}

/// A close frame with a code and a reason (cut to fit, on a character boundary).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    server_frame(OpCode::Control(Control::Close), &payload)
}

/// The gateway's keep-alive ping: an empty ping frame, the same two bytes for everyone.
pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[0x89, 0x00])
}

/// A pong answering a client ping, echoing its payload as RFC 6455 requires.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    server_frame(OpCode::Control(Control::Pong), payload)
}

/// One complete thing read from a client.
#[derive(Debug, PartialEq)]
pub enum Incoming<'a> {
    /// A whole data message (fragments already joined); text is valid UTF-8.
    Message {
        /// A binary (not text) message.
        binary: bool,
        /// The unmasked payload.
        payload: &'a [u8],
    },
    /// A ping to answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong (an answer to our keep-alive ping).
    Pong,
    /// The client's close frame; `code` is `None` for an empty close.
    Close {
        /// The close code, if the frame had one.
        code: Option<u16>,
        /// The close reason (UTF-8, possibly empty).
        reason: &'a str,
    },
}

/// A client broke the framing rules; each maps to the close code the gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RFC 6455 violation (close 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message that is not UTF-8 (close 1007).
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A message above the configured maximum (close 1009).
    #[error("message larger than {0} bytes")]
    TooBig(usize),
    /// A compressed message that inflates past the maximum (close 1009): a zip
    /// bomb, or just too big.
    #[error("message inflates to more than {0} bytes")]
    InflatedTooBig(usize),
}

impl FrameError {
    /// The close code this error is answered with.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => close::PROTOCOL_ERROR,
            FrameError::InvalidUtf8 => close::INVALID_PAYLOAD,
            FrameError::TooBig(_) | FrameError::InflatedTooBig(_) => close::MESSAGE_TOO_BIG,
        }
    }

    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            FrameError::Protocol(_) => "protocol_error",
            FrameError::InvalidUtf8 => "invalid_utf8",
            FrameError::TooBig(_) => "message_too_big",
            FrameError::InflatedTooBig(_) => "inflated_too_big",
        }
    }
}

/// A fragmented message being put together. Exists only between a non-final data
/// frame and its final continuation, so an idle connection holds none.
#[derive(Debug)]
pub struct Fragments {
    binary: bool,
    /// Its first frame had RSV1 set: the joined payload is to be inflated.
    compressed: bool,
    buf: Vec<u8>,
}

/// Whether the caller wants more frames after the one just handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read on.
    Continue,
    /// Stop after this frame (the connection is closing).
    Stop,
}

/// Reads every complete frame at the start of `buf` (unmasking in place), hands each
/// message or control frame to `handle`, and returns how many bytes it consumed; the
/// rest is an incomplete frame to keep for the next read. `inflater` is given for a
/// connection that negotiated permessage-deflate: its messages may then be
/// compressed (RSV1), and are handed over inflated.
pub fn read_frames(
    buf: &mut [u8],
    fragments: &mut Option<Box<Fragments>>,
    max_message: usize,
    mut inflater: Option<&mut Inflater>,
    mut handle: impl FnMut(Incoming<'_>) -> Flow,
) -> Result<usize, FrameError> {
    let mut pos = 0usize;
    while pos < buf.len() {
        let mut cursor = Cursor::new(&buf[pos..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break,
            Err(_) => return Err(FrameError::Protocol("reserved opcode")),
        };
        let header_len = cursor.position() as usize;
        check_header(&header, len, fragments.as_deref(), max_message, inflater.is_some())?;
        let len = len as usize;
        if buf.len() - pos - header_len < len {
            break;
        }
        let start = pos + header_len;
        let payload = &mut buf[start..start + len];
        if let Some(mask) = header.mask {
            apply_mask(payload, mask);
        }
        pos = start + len;
        let flow = match header.opcode {
            OpCode::Control(Control::Ping) => handle(Incoming::Ping(payload)),
            OpCode::Control(Control::Pong) => handle(Incoming::Pong),
            OpCode::Control(Control::Close) => handle(parse_close(payload)?),
            OpCode::Data(Data::Continue) => {
                // check_header guarantees a message is in progress.
                let Some(frag) = fragments.as_mut() else {
                    return Err(FrameError::Protocol("continuation without a message"));
                };
                frag.buf.extend_from_slice(payload);
                if !header.is_final {
                    continue;
                }
                let Some(frag) = fragments.take() else {
                    continue;
                };
                let message = Message {
                    binary: frag.binary,
                    compressed: frag.compressed,
                    payload: &frag.buf,
                };
                deliver(message, inflater.as_deref_mut(), max_message, &mut handle)?
            }
            OpCode::Data(kind) => {
                let binary = matches!(kind, Data::Binary);
                if header.is_final {
                    let message = Message {
                        binary,
                        compressed: header.rsv1,
                        payload,
                    };
                    deliver(message, inflater.as_deref_mut(), max_message, &mut handle)?
                } else {
                    *fragments = Some(Box::new(Fragments {
                        binary,
                        compressed: header.rsv1,
                        buf: payload.to_vec(),
                    }));
                    Flow::Continue
                }
            }
            OpCode::Control(Control::Reserved(_)) => return Err(FrameError::Protocol("reserved opcode")),
        };
        if flow == Flow::Stop {
            break;
        }
    }
    Ok(pos)
}

fn check_header(
    header: &FrameHeader,
    len: u64,
    fragments: Option<&Fragments>,
    max_message: usize,
    deflate: bool,
) -> Result<(), FrameError> {
    if header.mask.is_none() {
        return Err(FrameError::Protocol("client frame is not masked"));
    }
    if header.rsv2 || header.rsv3 {
        return Err(FrameError::Protocol("reserved bits set without an extension"));
    }
    if header.rsv1 {
        if !deflate {
            return Err(FrameError::Protocol("reserved bits set without an extension"));
        }
        // RFC 7692 6: only a message's first frame carries the bit.
        if !matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary)) {
            return Err(FrameError::Protocol("RSV1 on a control or continuation frame"));
        }
    }
    match header.opcode {
        OpCode::Control(_) => {
            if len > 125 {
                return Err(FrameError::Protocol("control frame payload over 125 bytes"));
            }
            if !header.is_final {
                return Err(FrameError::Protocol("fragmented control frame"));
            }
        }
        OpCode::Data(Data::Continue) => {
            let Some(frag) = fragments else {
                return Err(FrameError::Protocol("continuation without a message"));
            };
            // A 64-bit length can overflow the sum; saturate rather than wrap past the check.
            if (frag.buf.len() as u64).saturating_add(len) > max_message as u64 {
                return Err(FrameError::TooBig(max_message));
            }
        }
        OpCode::Data(_) => {
            if fragments.is_some() {
                return Err(FrameError::Protocol("new message inside a fragmented one"));
            }
            if len > max_message as u64 {
                return Err(FrameError::TooBig(max_message));
            }
        }
    }
    Ok(())
}

/// A whole message as it came off the wire.
struct Message<'a> {
    binary: bool,
    compressed: bool,
    payload: &'a [u8],
}

fn deliver(
    message: Message<'_>,
    inflater: Option<&mut Inflater>,
    max_message: usize,
    handle: &mut impl FnMut(Incoming<'_>) -> Flow,
) -> Result<Flow, FrameError> {
    let Message {
        binary,
        compressed,
        payload,
    } = message;
    let payload = match (compressed, inflater) {
        (true, Some(inflater)) => inflater.inflate(payload, max_message).map_err(|e| match e {
            InflateError::TooBig => FrameError::InflatedTooBig(max_message),
            InflateError::Invalid => FrameError::Protocol("invalid deflate data"),
        })?,
        // check_header refuses RSV1 where nothing was negotiated.
        (true, None) => return Err(FrameError::Protocol("reserved bits set without an extension")),
        (false, _) => payload,
    };
    if !binary && std::str::from_utf8(payload).is_err() {
        return Err(FrameError::InvalidUtf8);
    }
    Ok(handle(Incoming::Message { binary, payload }))
}

fn parse_close(payload: &[u8]) -> Result<Incoming<'_>, FrameError> {
    match payload.len() {
        0 => Ok(Incoming::Close { code: None, reason: "" }),
        1 => Err(FrameError::Protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Incoming::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

/// XORs a client payload with its masking key (RFC 6455 section 5.3).
fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = buf.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![first];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn read_all(bytes: &[u8], max: usize) -> (Result<usize, FrameError>, Vec<String>) {
        let mut buf = bytes.to_vec();
        let mut frags = None;
        let mut seen = Vec::new();
        let r = read_frames(&mut buf, &mut frags, max, None, |ev| {
            seen.push(match ev {
                Incoming::Message { binary, payload } => {
                    format!(
                        "{}:{}",
                        if binary { "bin" } else { "text" },
                        String::from_utf8_lossy(payload)
                    )
                }
                Incoming::Ping(p) => format!("ping:{}", String::from_utf8_lossy(p)),
                Incoming::Pong => "pong".into(),
                Incoming::Close { code, reason } => format!("close:{code:?}:{reason}"),
            });
            Flow::Continue
        });
        (r, seen)
    }

    #[test]
    fn reads_masked_text_and_control_frames() {
        let mut bytes = client_frame(0x81, b"hello");
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x88, &[0x03, 0xe8, b'o', b'k']));
        let (r, seen) = read_all(&bytes, 1024);
        assert_eq!(r, Ok(bytes.len()));
        assert_eq!(seen, vec!["text:hello", "ping:p", "close:Some(1000):ok"]);
    }

    #[test]
    fn joins_fragments_around_a_control_frame() {
        let mut bytes = client_frame(0x01, b"hel");
        bytes.extend(client_frame(0x89, b""));
        bytes.extend(client_frame(0x80, b"lo"));
        let (r, seen) = read_all(&bytes, 1024);
        assert_eq!(r, Ok(bytes.len()));
        assert_eq!(seen, vec!["ping:", "text:hello"]);
    }

    #[test]
    fn stops_at_an_incomplete_frame() {
        let full = client_frame(0x82, &[7u8; 300]);
        let (r, seen) = read_all(&full[..full.len() - 1], 1024);
        assert_eq!(r, Ok(0));
        assert!(seen.is_empty());
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        assert_eq!(
            read_all(&[0x81, 0x00], 10).0,
            Err(FrameError::Protocol("client frame is not masked"))
        );
        assert_eq!(
            read_all(&client_frame(0x81, b"x".repeat(11).as_slice()), 10).0,
            Err(FrameError::TooBig(10))
        );
        assert_eq!(
            read_all(&client_frame(0x81, &[0xff, 0xfe]), 10).0,
            Err(FrameError::InvalidUtf8)
        );
        assert!(matches!(
            read_all(&client_frame(0x80, b"x"), 10).0,
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            read_all(&client_frame(0xC1, b"x"), 10).0,
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            read_all(&client_frame(0x83, b"x"), 10).0,
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            read_all(&client_frame(0x88, &[0x03, 0xed]), 10).0,
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn server_frames_have_the_right_headers() {
        assert_eq!(&data_frame(Encoding::Json, b"hi")[..], &[0x81, 0x02, b'h', b'i']);
        assert_eq!(&data_frame(Encoding::MsgPack, b"hi")[..2], &[0x82, 0x02]);
        assert_eq!(
            &close_frame(1001, "bye")[..],
            &[0x88, 0x05, 0x03, 0xe9, b'b', b'y', b'e']
        );
        assert_eq!(close_frame(1000, &"é".repeat(100)).len(), 2 + 2 + 122);
        let big = data_frame(Encoding::Json, &[b'a'; 70_000]);
        assert_eq!(&big[..2], &[0x81, 127]);
    }
}
