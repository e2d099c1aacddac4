//! WebSocket on a raw TCP socket, no library in between: `RawClient` sends frames
//! no well-behaved library would, and the lean client (`lean_connect` and the frame
//! functions after it) holds thousands of sockets cheaply.

use std::net::SocketAddr;
use std::time::Duration;

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

    /// Upgrades an already connected socket.
    pub async fn upgrade(mut stream: TcpStream, addr: SocketAddr) -> RawClient {
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.expect("response head");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        let mut raw = RawClient { stream };
        let (opcode, _) = raw.read_frame().await;
        assert_eq!(opcode, 1, "welcome is a text frame");
        raw
    }

    /// Sends a frame with the given first byte and payload, masked unless `masked` is false.
    pub async fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut out = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        if payload.len() < 126 {
            out.push(mask_bit | payload.len() as u8);
        } else if payload.len() < 65536 {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        let mask = [1u8, 2, 3, 4];
        if masked {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.stream.write_all(&out).await.expect("send frame");
    }

    /// Reads one server frame: (opcode, payload).
    pub async fn read_frame(&mut self) -> (u8, Vec<u8>) {
        tokio::time::timeout(WAIT, async {
            let mut h = [0u8; 2];
            self.stream.read_exact(&mut h).await.expect("frame header");
            let mut len = (h[1] & 0x7f) as usize;
            if len == 126 {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).await.unwrap();
                len = u16::from_be_bytes(b) as usize;
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).await.unwrap();
                len = u64::from_be_bytes(b) as usize;
            }
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.expect("frame payload");
            (h[0] & 0x0f, payload)
        })
        .await
        .expect("frame in time")
    }

    /// Reads frames until a close frame, answers it as RFC 6455 asks; returns its code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            let (op, payload) = self.read_frame().await;
            if op == 8 {
                self.send_frame(0x88, &payload[..2], true).await;
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// The upgrade request the lean clients send (no subprotocol: JSON).
pub fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
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
        if !buf.starts_with(b"HTTP/1.1 101") && buf.windows(4).any(|w| w == b"\r\n\r\n") {
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
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x81];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one unmasked server frame from a plain socket: (opcode, payload).
pub async fn read_server_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    stream.read_exact(&mut h).await?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).await?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).await?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok((h[0] & 0x0f, payload))
}

/// Reads frames until a close frame; returns its code (None if the socket ended first).
pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> Option<u16> {
    tokio::time::timeout(limit, async {
        loop {
            match read_server_frame(stream).await {
                Ok((8, p)) if p.len() >= 2 => return Some(u16::from_be_bytes([p[0], p[1]])),
                Ok((8, _)) => return Some(1005),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}
