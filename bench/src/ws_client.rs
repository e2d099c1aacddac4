//! `WsClient`: the load generator's minimal WebSocket client over one TCP socket.
//!
//! Hand-written rather than tokio-tungstenite because the load generator must hold
//! ~18k sockets per process on a shared core: this client keeps one small read
//! buffer per socket, parses only frame headers, answers pings, and hands message
//! payloads back without copying or UTF-8 validation (BENCHMARKS.md has the
//! measured difference).

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::error::{BenchError, IoContext};
use shardcast_testkit::http_head::{find_head_end, upgrade_request};
use shardcast_testkit::ws_frame::{self, opcode, parse_header, CLIENT_MASK};

/// Spare buffer space ensured before each read.
const READ_CHUNK: usize = 4096;
/// A drained buffer larger than this is given back, so a burst does not leave every
/// idle socket holding a large buffer.
const KEEP_CAPACITY: usize = 16 * 1024;

/// A text or binary frame received: where its payload sits in the buffer.
#[derive(Debug, Clone)]
pub struct ReceivedFrame {
    range: Range<usize>,
}

/// One client WebSocket connection.
pub struct WsClient {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl WsClient {
    /// Connects from `source` (port chosen by the kernel at connect time) to `target`
    /// and performs the upgrade on `path`, offering `subprotocol`.
    pub async fn connect(
        target: SocketAddr,
        source: Option<Ipv4Addr>,
        path: &str,
        subprotocol: &str,
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
        };
        client.upgrade(target, path, subprotocol).await?;
        Ok(client)
    }

    async fn upgrade(&mut self, target: SocketAddr, path: &str, subprotocol: &str) -> Result<(), BenchError> {
        let offered = (!subprotocol.is_empty()).then_some(subprotocol);
        let request = upgrade_request(target, path, offered);
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
            if let Some(h) = parse_header(&self.buf[self.start..]).map_err(BenchError::Protocol)? {
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
                    match h.opcode {
                        opcode::TEXT | opcode::BINARY => return Ok(ReceivedFrame { range: payload }),
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

    /// The payload of a frame returned by the last [`WsClient::next_frame`].
    pub fn payload(&self, frame: &ReceivedFrame) -> &[u8] {
        self.buf.get(frame.range.clone()).unwrap_or(&[])
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
