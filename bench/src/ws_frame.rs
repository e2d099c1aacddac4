//! The few pieces of RFC 6455 framing the load generator and the floor server need:
//! reading a frame header, building a frame, and the handshake's fixed texts. Kept
//! minimal on purpose: no fragmentation, no extensions, which neither shardcast nor
//! the baselines use on these connections.

/// Frame opcodes used here.
pub mod opcode {
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

/// Builds a whole frame (FIN set); masks the payload when `mask` is given.
pub fn encode_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | (opcode & 0x0F));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Unmasks a payload in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Index just past the `\r\n\r\n` that ends an HTTP head, if it is in `buf`.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The value of a header in an HTTP head (name compared case-insensitively).
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
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
    fn http_heads_are_found_and_read() {
        let head = "HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nsec-websocket-accept: abc\r\n\r\nxyz";
        let end = find_head_end(head.as_bytes()).unwrap();
        assert_eq!(&head[end..], "xyz");
        assert_eq!(header_value(&head[..end], "Sec-WebSocket-Accept"), Some("abc"));
        assert_eq!(header_value(&head[..end], "Missing"), None);
    }
}
