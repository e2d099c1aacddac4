//! `ApiClient`: a minimal HTTP/1.1 keep-alive client for the servers' admin APIs
//! (`POST /api/publish`, the Pusher HTTP API's `POST /apps/<id>/events`, `GET
//! /metrics`). Hand-written because the harness needs exactly these requests and
//! must not add its own overhead or dependencies to the publish path it times. A
//! server that answers `Connection: close` gets a new connection per request.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{BenchError, IoContext};
use shardcast_testkit::http_head::{find_head_end, header_value};

/// One keep-alive connection to an admin API.
pub struct ApiClient {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server said `Connection: close` (Sockudo's API does after every
    /// answer): the next request opens a new connection.
    closing: bool,
}

impl ApiClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<ApiClient, BenchError> {
        let stream = TcpStream::connect(addr)
            .await
            .context(|| format!("connect to admin API {addr}"))?;
        let _ = stream.set_nodelay(true);
        Ok(ApiClient {
            addr,
            stream,
            buf: Vec::with_capacity(4096),
            closing: false,
        })
    }

    /// Sends one request and reads the response: (status, body).
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), BenchError> {
        if self.closing {
            *self = ApiClient::connect(self.addr).await?;
        }
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let mut request = Vec::with_capacity(head.len() + body.len());
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(body);
        self.stream
            .write_all(&request)
            .await
            .context(|| format!("send {method} {path}"))?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<(u16, Vec<u8>), BenchError> {
        let head_end = loop {
            if let Some(end) = find_head_end(&self.buf) {
                break end;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| BenchError::Protocol(format!("bad HTTP status line: {head:?}")))?;
        self.closing = header_value(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let body = if let Some(len) = header_value(&head, "content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| BenchError::Protocol(format!("bad Content-Length {len:?}")))?;
            while self.buf.len() < head_end + len {
                self.fill().await?;
            }
            let body = self.buf[head_end..head_end + len].to_vec();
            self.buf.drain(..head_end + len);
            body
        } else if header_value(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            self.buf.drain(..head_end);
            self.read_chunked().await?
        } else {
            return Err(BenchError::Protocol(
                "response without Content-Length on a keep-alive connection".into(),
            ));
        };
        Ok((status, body))
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>, BenchError> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| BenchError::Protocol(format!("bad chunk size {size_text:?}")))?;
            while self.buf.len() < line_end + 2 + size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    async fn fill(&mut self) -> Result<(), BenchError> {
        self.buf.reserve(4096);
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .context(|| "read HTTP response".into())?;
        if n == 0 {
            return Err(BenchError::Closed(None));
        }
        Ok(())
    }
}

/// One GET on a fresh connection; the body when the status is 200.
pub async fn get(addr: SocketAddr, path: &str) -> Result<String, BenchError> {
    let mut client = ApiClient::connect(addr).await?;
    let (status, body) = client.request("GET", path, b"").await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        return Err(BenchError::Api {
            status,
            body: text.chars().take(300).collect(),
        });
    }
    Ok(text)
}
