//! WebSocket on a raw TCP socket, no library in between: `RawClient` sends frames
//! no well-behaved library would, and the lean client (`lean_connect` and the frame
//! functions after it) holds thousands of sockets cheaply.

use std::net::SocketAddr;
use std::time::Duration;

use shardcast_testkit::http_head;
use shardcast_testkit::ws_frame::{self, opcode, CLIENT_MASK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// A WebSocket client on a raw socket, for sending frames no well-behaved library would.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    /// Upgrades a raw socket and reads the 101 response and the welcome frame.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient::upgrade(TcpStream::connect(addr).await.expect("connect"), addr).await
    }

    /// Connects with a small kernel receive buffer (`bytes`), so that once the client
    /// stops reading, what the gateway sends backs up into its outbound queue quickly.
    pub async fn connect_with_receive_buffer(addr: SocketAddr, bytes: u32) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        RawClient::upgrade(socket.connect(addr).await.expect("connect"), addr).await
    }

    /// Upgrades an already connected socket.
    pub async fn upgrade(mut stream: TcpStream, addr: SocketAddr) -> RawClient {
        stream.write_all(upgrade_request(addr).as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.expect("response head");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        let mut raw = RawClient { stream };
        let (op, _) = raw.read_frame().await;
        assert_eq!(op, opcode::TEXT, "welcome is a text frame");
        raw
    }

    /// Sends a frame with the given first byte and payload, masked unless `masked` is false.
    pub async fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let frame = ws_frame::encode_raw(first, payload, masked.then_some(CLIENT_MASK));
        self.stream.write_all(&frame).await.expect("send frame");
    }

    /// Reads one server frame: (opcode, payload).
    pub async fn read_frame(&mut self) -> (u8, Vec<u8>) {
        tokio::time::timeout(WAIT, read_server_frame(&mut self.stream))
            .await
            .expect("frame in time")
            .expect("server frame")
    }

    /// Reads frames until a close frame, answers it as RFC 6455 asks; returns its code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            let (op, payload) = self.read_frame().await;
            if op == opcode::CLOSE {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                self.stream.write_all(&close_frame(code)).await.expect("send close");
                return code;
            }
        }
    }
}

/// The upgrade request these clients send: `/ws`, no subprotocol (JSON).
pub fn upgrade_request(addr: SocketAddr) -> String {
    http_head::upgrade_request(addr, "/ws", None)
}

/// Connects from `source` (any port), upgrades, and reads up to the end of the welcome
/// frame; returns the socket, ready for frames. Errors instead of panicking, so a
/// caller opening thousands can count failures. The welcome is found by its bytes,
/// not parsed: this client exists to be cheap.
pub async fn lean_connect(gw: SocketAddr, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = socket.connect(gw).await?;
    stream.write_all(upgrade_request(gw).as_bytes()).await?;
    // 101 head (129 bytes) + welcome frame (about 90 bytes): read until the welcome
    // JSON object closes.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            let head = String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_owned();
            return Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, head));
        }
        buf.extend_from_slice(&chunk[..n]);
        if !buf.starts_with(b"HTTP/1.1 101") && http_head::find_head_end(&buf).is_some() {
            let head = String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_owned();
            return Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, head));
        }
        if buf.ends_with(b"}") && buf.windows(9).any(|w| w == b"\"welcome\"") {
            return Ok(stream);
        }
    }
}

/// A masked client text frame.
pub fn masked_text(payload: &[u8]) -> Vec<u8> {
    ws_frame::encode_frame(opcode::TEXT, payload, Some(CLIENT_MASK))
}

/// A masked client close frame with `code`, as a client answers the server's close.
pub fn close_frame(code: u16) -> Vec<u8> {
    ws_frame::encode_frame(opcode::CLOSE, &code.to_be_bytes(), Some(CLIENT_MASK))
}

/// Reads one server frame from a plain socket: (opcode, payload).
pub async fn read_server_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let (header, payload) = ws_frame::read_frame(stream).await?;
    Ok((header.opcode, payload))
}

/// Reads frames until a close frame; returns its code (None if the socket ended first).
pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> Option<u16> {
    tokio::time::timeout(limit, async {
        loop {
            match read_server_frame(stream).await {
                Ok((opcode::CLOSE, p)) if p.len() >= 2 => return Some(u16::from_be_bytes([p[0], p[1]])),
                Ok((opcode::CLOSE, _)) => return Some(1005),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}
