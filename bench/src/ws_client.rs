//! `WsClient`: the load generator's minimal WebSocket client over one TCP socket.
//!
//! Hand-written rather than tokio-tungstenite because the load generator must hold
//! ~18k sockets per process on a shared core: this client keeps one small read
//! buffer per socket, parses only frame headers, answers pings, and hands message
//! payloads back without copying or UTF-8 validation (BENCHMARKS.md has the
//! measured difference). When asked it offers permessage-deflate as browsers do and
//! inflates the compressed messages it receives.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::error::{BenchError, IoContext};
use crate::permessage_deflate::{self, MessageInflater, RSV1};
use shardcast_testkit::http_head::{find_head_end, header_value, upgrade_request};
use shardcast_testkit::ws_frame::{self, opcode, parse_header, CLIENT_MASK};

/// Spare buffer space ensured before each read.
const READ_CHUNK: usize = 4096;
/// A drained buffer larger than this is given back, so a burst does not leave every
/// idle socket holding a large buffer.
const KEEP_CAPACITY: usize = 16 * 1024;
/// Most bytes a compressed message may inflate to (the frame limit of the harness).
const MAX_INFLATED: usize = ws_frame::MAX_FRAME;

/// A text or binary frame received: where its payload sits (in the read buffer, or
/// in the inflated text of a compressed message) and how many bytes it took on the
/// wire.
#[derive(Debug, Clone)]
pub struct ReceivedFrame {
    range: Range<usize>,
    inflated: bool,
    wire_len: usize,
}

impl ReceivedFrame {
    /// Header and payload bytes the frame took on the wire (compressed, if it was).
    pub fn wire_len(&self) -> usize {
        self.wire_len
    }

    /// Whether it arrived compressed (permessage-deflate).
    pub fn was_compressed(&self) -> bool {
        self.inflated
    }
}

/// One client WebSocket connection.
pub struct WsClient {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    /// Set when the server agreed to permessage-deflate.
    inflater: Option<MessageInflater>,
    /// The text of the last compressed message.
    inflated: Vec<u8>,
}

impl WsClient {
    /// Connects from `source` (port chosen by the kernel at connect time) to `target`
    /// and performs the upgrade on `path`, offering `subprotocol`, and
    /// permessage-deflate when `offer_deflate`.
    pub async fn connect(
        target: SocketAddr,
        source: Option<Ipv4Addr>,
        path: &str,
        subprotocol: &str,
        offer_deflate: bool,
    ) -> Result<WsClient, BenchError> {
        let socket = TcpSocket::new_v4().context(|| "socket()".into())?;
        if let Some(ip) = source {
            set_bind_address_no_port(&socket);
            socket
                .bind(SocketAddr::new(ip.into(), 0))
                .context(|| format!("bind to source {ip}"))?;
        }
        let stream = socket
            .connect(target)
            .await
            .context(|| format!("connect to {target}"))?;
        // Latency figures must not include Nagle's delay on our small frames.
        let _ = stream.set_nodelay(true);
        let mut client = WsClient {
            stream,
            buf: Vec::with_capacity(1024),
            start: 0,
            inflater: None,
            inflated: Vec::new(),
        };
        client.upgrade(target, path, subprotocol, offer_deflate).await?;
        Ok(client)
    }

    async fn upgrade(
        &mut self,
        target: SocketAddr,
        path: &str,
        subprotocol: &str,
        offer_deflate: bool,
    ) -> Result<(), BenchError> {
        let offered = (!subprotocol.is_empty()).then_some(subprotocol);
        let request = with_extension_offer(
            upgrade_request(target, path, offered),
            offer_deflate.then_some(permessage_deflate::OFFER),
        );
        self.stream
            .write_all(request.as_bytes())
            .await
            .context(|| "send upgrade request".into())?;
        let head_end = loop {
            if let Some(end) = find_head_end(&self.buf) {
                break end;
            }
            if self.buf.len() > 16 * 1024 {
                return Err(BenchError::Protocol("upgrade response head too long".into()));
            }
            self.buf.reserve(1024);
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .context(|| "read upgrade response".into())?;
            if n == 0 {
                return Err(BenchError::Closed(None));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]);
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BenchError::Protocol("bad upgrade status line".into()))?;
        if status != 101 {
            return Err(BenchError::HandshakeRefused(status));
        }
        let agreement = permessage_deflate::parse_response(header_value(&head, "Sec-WebSocket-Extensions"))
            .map_err(BenchError::Protocol)?;
        if agreement.is_some() && !offer_deflate {
            return Err(BenchError::Protocol(
                "permessage-deflate accepted but not offered".into(),
            ));
        }
        self.inflater = agreement.map(MessageInflater::new);
        self.start = head_end;
        Ok(())
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, payload: &[u8]) -> Result<(), BenchError> {
        self.send(opcode::TEXT, payload).await
    }

    /// Sends one data frame with `opcode` (text or binary).
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), BenchError> {
        let frame = ws_frame::encode_frame(opcode, payload, Some(CLIENT_MASK));
        self.stream.write_all(&frame).await.context(|| "send frame".into())
    }

    /// Waits for the next text or binary frame, answering pings on the way. The
    /// payload stays valid until the next call; read it with [`WsClient::payload`].
    /// Cancel-safe: a cancelled call loses no bytes.
    pub async fn next_frame(&mut self) -> Result<ReceivedFrame, BenchError> {
        self.compact();
        loop {
            let (header, compressed) = self.peek_header()?;
            if let Some(h) = header {
                if self.buf.len() - self.start >= h.frame_len() {
                    let payload = self.start + h.header_len..self.start + h.frame_len();
                    self.start += h.frame_len();
                    if !h.fin {
                        return Err(BenchError::Protocol("fragmented message".into()));
                    }
                    if let Some(m) = h.mask {
                        // Servers must not mask, but reading it costs nothing.
                        ws_frame::unmask(&mut self.buf[payload.clone()], m);
                    }
                    let data = matches!(h.opcode, opcode::TEXT | opcode::BINARY);
                    if compressed && !data {
                        return Err(BenchError::Protocol("RSV1 set on a control frame".into()));
                    }
                    match h.opcode {
                        opcode::TEXT | opcode::BINARY if compressed => return self.inflate(payload, h.frame_len()),
                        opcode::TEXT | opcode::BINARY => {
                            return Ok(ReceivedFrame {
                                range: payload,
                                inflated: false,
                                wire_len: h.frame_len(),
                            })
                        }
                        opcode::PING => {
                            let body = self.buf[payload].to_vec();
                            let pong = ws_frame::encode_frame(opcode::PONG, &body, Some(CLIENT_MASK));
                            self.stream.write_all(&pong).await.context(|| "send pong".into())?;
                        }
                        opcode::PONG => {}
                        opcode::CLOSE => {
                            let p = &self.buf[payload];
                            let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                            return Err(BenchError::Closed(code));
                        }
                        other => {
                            return Err(BenchError::Protocol(format!("opcode {other:#x}")));
                        }
                    }
                    continue;
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK {
                self.buf.reserve(READ_CHUNK);
            }
            let n = self.stream.read_buf(&mut self.buf).await.context(|| "read".into())?;
            if n == 0 {
                return Err(BenchError::Closed(None));
            }
        }
    }

    /// The header at the read position, if whole, and whether it has RSV1 set (a
    /// compressed message; an error unless permessage-deflate was agreed).
    fn peek_header(&self) -> Result<(Option<ws_frame::FrameHeader>, bool), BenchError> {
        let unread = &self.buf[self.start..];
        let rsv1 = unread.first().is_some_and(|b| b & RSV1 != 0);
        if !rsv1 || self.inflater.is_none() {
            return Ok((parse_header(unread).map_err(BenchError::Protocol)?, false));
        }
        // The shared parser refuses reserved bits: hand it a copy without RSV1.
        let mut head = [0u8; 14];
        let n = unread.len().min(head.len());
        head[..n].copy_from_slice(&unread[..n]);
        head[0] &= !RSV1;
        Ok((parse_header(&head[..n]).map_err(BenchError::Protocol)?, true))
    }

    /// Inflates the compressed message whose payload is at `payload` in the buffer.
    fn inflate(&mut self, payload: Range<usize>, wire_len: usize) -> Result<ReceivedFrame, BenchError> {
        let Some(inflater) = self.inflater.as_mut() else {
            return Err(BenchError::Protocol(
                "compressed frame without permessage-deflate".into(),
            ));
        };
        self.inflated.clear();
        if self.inflated.capacity() > KEEP_CAPACITY {
            self.inflated = Vec::new();
        }
        inflater
            .inflate(&self.buf[payload], &mut self.inflated, MAX_INFLATED)
            .map_err(BenchError::Protocol)?;
        Ok(ReceivedFrame {
            range: 0..self.inflated.len(),
            inflated: true,
            wire_len,
        })
    }

    /// The payload of a frame returned by the last [`WsClient::next_frame`] (its
    /// text, inflated, if it came compressed).
    pub fn payload(&self, frame: &ReceivedFrame) -> &[u8] {
        let source = if frame.inflated { &self.inflated } else { &self.buf };
        source.get(frame.range.clone()).unwrap_or(&[])
    }

    /// Drops consumed bytes from the front of the buffer.
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        if self.start >= self.buf.len() {
            self.buf.clear();
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::with_capacity(READ_CHUNK);
            }
        } else {
            self.buf.drain(..self.start);
        }
        self.start = 0;
    }
}

/// `request` (a whole upgrade head) with a `Sec-WebSocket-Extensions` offer added.
fn with_extension_offer(mut request: String, offer: Option<&str>) -> String {
    if let Some(offer) = offer {
        // The head ends with the empty line; the header goes before it.
        request.truncate(request.len() - 2);
        request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n\r\n"));
    }
    request
}

/// Lets the kernel pick the source port at connect time, from the whole 4-tuple,
/// instead of reserving one at bind time: many more sockets per source address.
fn set_bind_address_no_port(socket: &TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value that outlives the call.
    // Failure only means fewer ports per source address, so it is ignored.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_offer_is_a_header_of_the_head() {
        let plain = upgrade_request("h", "/ws", Some("shardcast.v1.json"));
        assert_eq!(with_extension_offer(plain.clone(), None), plain);
        let offered = with_extension_offer(plain, Some(permessage_deflate::OFFER));
        assert_eq!(find_head_end(offered.as_bytes()), Some(offered.len()));
        assert_eq!(
            header_value(&offered, "sec-websocket-extensions"),
            Some("permessage-deflate; client_max_window_bits")
        );
        assert_eq!(
            header_value(&offered, "Sec-WebSocket-Protocol"),
            Some("shardcast.v1.json")
        );
    }
}
