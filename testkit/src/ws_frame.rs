//! RFC 6455 framing as a test or a load generator needs it, client side (masked
//! frames out, server frames in) and for the benchmarks' minimal floor server:
//! building a frame or only its header, whole or with any first byte (fragments,
//! reserved bits, unknown opcodes), parsing a header from a buffer, and reading a
//! whole frame from a stream. No extensions, no reassembly of fragments: callers
//! that care look at `fin` themselves.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Frame opcodes.
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// The FIN bit of a frame's first byte: this frame ends its message.
pub const FIN: u8 = 0x80;

/// Clients must mask; the key does not matter to a server, so one fixed key keeps
/// the frames reproducible.
pub const CLIENT_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The fixed part of a parsed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment bit.
    pub fin: bool,
    /// Opcode (low 4 bits of byte 0).
    pub opcode: u8,
    /// Masking key, when the sender masked (clients must).
    pub mask: Option<[u8; 4]>,
    /// Bytes of header, including extended length and mask.
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: usize,
}

impl FrameHeader {
    /// Header plus payload.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Largest frame this harness accepts (the gateway's own limit is 64 KiB by default).
pub const MAX_FRAME: usize = 16 << 20;

/// Reads a frame header from the start of `buf`: `Ok(None)` when more bytes are
/// needed, an error for a frame this harness refuses.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    if buf[0] & 0x70 != 0 {
        return Err("reserved bits set (no extension was negotiated)".into());
    }
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let (payload_len, mut header_len) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n > MAX_FRAME as u64 {
                return Err(format!("frame of {n} bytes"));
            }
            (n as usize, 10)
        }
        n => (n as usize, 2),
    };
    if payload_len > MAX_FRAME {
        return Err(format!("frame of {payload_len} bytes"));
    }
    let mask = if masked {
        if buf.len() < header_len + 4 {
            return Ok(None);
        }
        let m = [
            buf[header_len],
            buf[header_len + 1],
            buf[header_len + 2],
            buf[header_len + 3],
        ];
        header_len += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        header_len,
        payload_len,
    }))
}

/// Builds a frame header: `first` is the whole first byte (FIN, reserved bits,
/// opcode); the length is any announced payload length, whether or not the payload
/// follows; with `mask` the mask bit is set and the key appended.
pub fn encode_header(first: u8, payload_len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.push(first);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload_len {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= u64::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
    out
}

/// Builds a frame whose first byte is given whole, so a caller can send fragments
/// (no FIN, opcode 0), reserved bits or unknown opcodes; masks the payload when
/// `mask` is given.
pub fn encode_raw(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = encode_header(first, payload.len() as u64, mask);
    out.reserve(payload.len());
    match mask {
        Some(m) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4])),
        None => out.extend_from_slice(payload),
    }
    out
}

/// Builds a whole, unfragmented frame (FIN set); masks the payload when `mask` is given.
pub fn encode_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    encode_raw(FIN | (opcode & 0x0F), payload, mask)
}

/// Unmasks a payload in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Reads one frame from `stream`: its header and its payload, unmasked. A frame
/// [`parse_header`] refuses is an `InvalidData` error, before its payload is read.
pub async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(FrameHeader, Vec<u8>)> {
    let mut head = vec![0u8; 2];
    stream.read_exact(&mut head).await?;
    let extended = match head[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let key = if head[1] & 0x80 != 0 { 4 } else { 0 };
    head.resize(2 + extended + key, 0);
    stream.read_exact(&mut head[2..]).await?;
    let header = parse_header(&head)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "incomplete frame header"))?;
    let mut payload = vec![0u8; header.payload_len];
    stream.read_exact(&mut payload).await?;
    if let Some(m) = header.mask {
        unmask(&mut payload, m);
    }
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_at_each_length_form() {
        for len in [0usize, 5, 125, 126, 1000, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let frame = encode_frame(opcode::TEXT, &payload, mask);
                let h = parse_header(&frame).unwrap().unwrap();
                assert_eq!(h.payload_len, len);
                assert_eq!(h.frame_len(), frame.len());
                assert_eq!(h.mask, mask);
                let mut body = frame[h.header_len..].to_vec();
                if let Some(m) = h.mask {
                    unmask(&mut body, m);
                }
                assert_eq!(body, payload);
                assert_eq!(parse_header(&frame[..1]).unwrap(), None);
            }
        }
    }

    #[test]
    fn a_header_may_announce_any_length_and_the_first_byte_is_kept() {
        let h = encode_header(0x82, 1 << 62, Some([9, 9, 9, 9]));
        assert_eq!(h[..2], [0x82, 0x80 | 127]);
        assert_eq!(h[2..10], (1u64 << 62).to_be_bytes());
        assert_eq!(h[10..], [9, 9, 9, 9]);
        assert_eq!(parse_header(&h), Err(format!("frame of {} bytes", 1u64 << 62)));
        let fragment = encode_raw(opcode::TEXT, b"ab", None);
        assert_eq!(fragment, [0x01, 2, b'a', b'b']);
        assert!(!parse_header(&fragment).unwrap().unwrap().fin);
    }

    #[test]
    fn frames_are_read_whole_from_a_stream() {
        let mut bytes = encode_frame(opcode::PING, b"hi", Some(CLIENT_MASK));
        bytes.extend(encode_frame(opcode::BINARY, &[7; 300], None));
        let mut stream = &bytes[..];
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (first, second) = rt.block_on(async {
            (
                read_frame(&mut stream).await.unwrap(),
                read_frame(&mut stream).await.unwrap(),
            )
        });
        assert_eq!((first.0.opcode, first.1), (opcode::PING, b"hi".to_vec()));
        assert_eq!((second.0.opcode, second.1), (opcode::BINARY, vec![7; 300]));
        assert!(stream.is_empty());
    }
}
