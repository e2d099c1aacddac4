//! The gateway's admin HTTP API as a backend uses it: publishing
//! (`POST /api/publish`), the instance's stats (`GET /api/stats`) and the cluster
//! view (`GET /api/cluster`), with the optional API key.
//!
//! The HTTP side is a deliberately small HTTP/1.1 client: one request per TCP
//! connection (`Connection: close`), plain `http://` only (the admin port is meant
//! to stay private to the backend, so it has no TLS), response heads parsed with
//! `httparse`, bodies by `Content-Length`, chunked encoding or end of stream.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use shardcast_proto::{validate_channel, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// The largest response this client reads; the API's answers are a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A client of one gateway instance's admin API.
#[derive(Clone)]
pub struct AdminClient {
    /// `host:port`, as given in the URL.
    authority: String,
    /// The URL's path without a trailing slash (usually empty).
    base_path: String,
    api_key: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("authority", &self.authority)
            .field("base_path", &self.base_path)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The answer to a single publication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishReceipt {
    /// Connections on this instance the publication was written or queued to
    /// (subscribers on other instances are not counted; 0 is not an error).
    pub subscribers: u64,
}

/// One instance's local figures, from `GET /api/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStats {
    /// The instance's id.
    pub node: String,
    /// Its open WebSocket connections.
    pub connections: u64,
    /// Open connections per shard.
    #[serde(default)]
    pub shards: Vec<u64>,
    /// Channels with at least one local subscriber.
    #[serde(default)]
    pub channels: i64,
    /// File descriptors left before the limit.
    #[serde(default)]
    pub fd_headroom: i64,
    /// Whether the instance reports ready.
    #[serde(default)]
    pub ready: bool,
    /// Fields this version does not know, kept so that printing shows them.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// One instance in the cluster view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The instance's id.
    pub node: String,
    /// Its WebSocket address.
    pub ws: String,
    /// Its open WebSocket connections.
    pub connections: u64,
    /// When it reported this, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// The cluster as one instance sees it, from `GET /api/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Live instances (all of them with Redis; otherwise just the one asked).
    pub instances: Vec<InstanceInfo>,
    /// Their connections, summed.
    pub total_connections: u64,
    /// False when the instance could not refresh the view (Redis unreachable): the figures are old.
    pub fresh: bool,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

#[derive(Serialize)]
struct PublishBody<'a> {
    channel: &'a str,
    data: &'a RawValue,
}

impl AdminClient {
    /// A client of the admin API at `url` (`http://host:port`). Only `http://` is
    /// supported: the admin port has no TLS.
    pub fn new(url: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = match url.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &url[7..],
            _ if url.len() >= 8 && url[..8].eq_ignore_ascii_case("https://") => {
                return Err(invalid("https:// is not supported; the admin API is plain http://"))
            }
            _ => return Err(invalid("the scheme must be http://")),
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
            return Err(invalid("expected http://host:port"));
        }
        if path.contains(['?', '#']) {
            return Err(invalid("the admin URL takes no query or fragment"));
        }
        Ok(AdminClient {
            authority: authority.to_owned(),
            base_path: path.trim_end_matches('/').to_owned(),
            api_key: None,
            timeout: Duration::from_secs(10),
        })
    }

    /// Sends `Authorization: Bearer <key>` (needed when the gateway runs with `--api-key`).
    pub fn api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.is_empty());
        self
    }

    /// Bounds each request, connect to last byte (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Publishes `data` (any value that serialises to JSON) to a channel.
    pub async fn publish<T: Serialize + ?Sized>(&self, channel: &str, data: &T) -> Result<PublishReceipt> {
        let raw = serde_json::value::to_raw_value(data)?;
        self.publish_json(channel, &raw).await
    }

    /// Publishes a payload that is already JSON text; JSON subscribers receive that text
    /// byte for byte (key order and number formatting included).
    pub async fn publish_json(&self, channel: &str, data: &RawValue) -> Result<PublishReceipt> {
        validate_channel(channel, usize::MAX).map_err(|source| Error::InvalidChannel {
            channel: channel.to_owned(),
            source,
        })?;
        let body = serde_json::to_vec(&PublishBody { channel, data })?;
        let answer = self.request("POST", "/api/publish", Some(&body)).await?;
        parse_json(&answer)
    }

    /// This instance's connection and channel counts.
    pub async fn stats(&self) -> Result<InstanceStats> {
        parse_json(&self.request("GET", "/api/stats", None).await?)
    }

    /// The cluster's instances and their connection counts.
    pub async fn cluster(&self) -> Result<ClusterView> {
        parse_json(&self.request("GET", "/api/cluster", None).await?)
    }

    /// Sends one request and returns the body of a 2xx answer; other statuses become
    /// [`Error::Api`] with the body's error code.
    async fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>> {
        let exchange = async {
            let mut stream = TcpStream::connect(&self.authority).await?;
            stream.set_nodelay(true)?;
            let head = self.request_head(method, path, body.map(<[u8]>::len));
            let mut request = head.into_bytes();
            request.extend_from_slice(body.unwrap_or_default());
            stream.write_all(&request).await?;
            read_response(&mut stream).await
        };
        let response = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::Timeout {
                op: "admin API request",
                timeout: self.timeout,
            })??;
        if (200..300).contains(&response.status) {
            return Ok(response.body);
        }
        Err(api_error(response.status, &response.body))
    }

    fn request_head(&self, method: &str, path: &str, content_length: Option<usize>) -> String {
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: shardcast-client/{}\r\n",
            self.base_path,
            self.authority,
            env!("CARGO_PKG_VERSION"),
        );
        if let Some(length) = content_length {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {length}\r\n"
            ));
        }
        if let Some(key) = &self.api_key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        head.push_str("\r\n");
        head
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        Error::Protocol(format!(
            "unexpected admin API answer ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    })
}

/// Reads the API's error shape, `{"ok":false,"error":{"code":..,"message":..}}`.
fn api_error(status: u16, body: &[u8]) -> Error {
    #[derive(Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: ErrorCode,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(envelope) => Error::Api {
            status,
            code: envelope.error.code,
            message: envelope.error.message,
        },
        Err(_) => Error::Api {
            status,
            code: ErrorCode::Unknown,
            message: String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
        },
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 response: head, then a body framed by `Content-Length`, by
/// chunked encoding, or by the end of the connection.
async fn read_response(stream: &mut TcpStream) -> Result<Response> {
    let mut buffer = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response.code.unwrap_or(0);
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
                };
                let content_length = header("content-length");
                let chunked = header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                // 1xx answers (100 Continue) precede the real one.
                if (100..200).contains(&status) {
                    buffer.drain(..head_len);
                    continue;
                }
                let mut rest = buffer.split_off(head_len);
                let body = if chunked {
                    read_chunked(stream, rest).await?
                } else if let Some(length) = content_length {
                    let length: usize = length
                        .parse()
                        .map_err(|_| Error::Protocol(format!("bad Content-Length {length:?}")))?;
                    if length > MAX_RESPONSE_BYTES {
                        return Err(Error::Protocol(format!("response of {length} bytes is too large")));
                    }
                    while rest.len() < length {
                        if read_more(stream, &mut rest).await? == 0 {
                            return Err(Error::Protocol("response body ended early".to_owned()));
                        }
                    }
                    rest.truncate(length);
                    rest
                } else {
                    while read_more(stream, &mut rest).await? > 0 {}
                    rest
                };
                return Ok(Response { status, body });
            }
            Ok(httparse::Status::Partial) => {
                if read_more(stream, &mut buffer).await? == 0 {
                    return Err(Error::Protocol(
                        "the connection closed before a complete HTTP response".to_owned(),
                    ));
                }
            }
            Err(e) => return Err(Error::Protocol(format!("malformed HTTP response: {e}"))),
        }
    }
}

/// Appends what the socket has to `buffer`; 0 at the end of the stream.
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<usize> {
    if buffer.len() >= MAX_RESPONSE_BYTES {
        return Err(Error::Protocol("HTTP response too large".to_owned()));
    }
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buffer.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Decodes a chunked body; `pending` holds bytes already read past the head.
async fn read_chunked(stream: &mut TcpStream, mut pending: Vec<u8>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(at) = pending.windows(2).position(|w| w == b"\r\n") {
                break at;
            }
            if read_more(stream, &mut pending).await? == 0 {
                return Err(Error::Protocol("chunked body ended early".to_owned()));
            }
        };
        let size_text = String::from_utf8_lossy(&pending[..line_end]).into_owned();
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| Error::Protocol(format!("bad chunk size {size_text:?}")))?;
        pending.drain(..line_end + 2);
        if size == 0 {
            // Trailers, if any, are not needed.
            return Ok(body);
        }
        if body.len() + size > MAX_RESPONSE_BYTES {
            return Err(Error::Protocol("HTTP response too large".to_owned()));
        }
        while pending.len() < size + 2 {
            if read_more(stream, &mut pending).await? == 0 {
                return Err(Error::Protocol("chunked body ended early".to_owned()));
            }
        }
        body.extend_from_slice(&pending[..size]);
        pending.drain(..size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn admin_urls_are_checked() {
        let client = AdminClient::new("http://127.0.0.1:8001").expect("valid");
        assert_eq!(client.authority, "127.0.0.1:8001");
        assert_eq!(client.base_path, "");
        let client = AdminClient::new("HTTP://gw.internal:8001/prefix/").expect("valid");
        assert_eq!(client.authority, "gw.internal:8001");
        assert_eq!(client.base_path, "/prefix");
        for bad in [
            "https://x:1",
            "ws://x:1",
            "127.0.0.1:8001",
            "http://",
            "http://x:1/?a=b",
        ] {
            assert!(matches!(AdminClient::new(bad), Err(Error::InvalidUrl { .. })), "{bad}");
        }
    }

    /// Serves one canned response and returns what the client sent.
    async fn serve_once(response: &'static [u8]) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            // The request is small: read until its head and body have arrived.
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut chunk).await.expect("read");
                request.extend_from_slice(&chunk[..n]);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Ok(n) = socket.try_read(&mut chunk) {
                request.extend_from_slice(&chunk[..n]);
            }
            // Split writes exercise the incremental parsing.
            let (first, second) = response.split_at(response.len() / 2);
            socket.write_all(first).await.expect("write");
            tokio::time::sleep(Duration::from_millis(10)).await;
            socket.write_all(second).await.expect("write");
            request
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn publish_sends_the_key_and_reads_a_chunked_answer() {
        let (url, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"ok\"\r\n15\r\n:true,\"subscribers\":3\r\n1\r\n}\r\n0\r\n\r\n",
        )
        .await;
        let client = AdminClient::new(&url).expect("url").api_key(Some("s3cret".into()));
        let receipt = client
            .publish("news", &serde_json::json!({"b": 1, "a": [true]}))
            .await
            .expect("publish");
        assert_eq!(receipt.subscribers, 3);
        let request = String::from_utf8(server.await.expect("server")).expect("utf8");
        assert!(request.starts_with("POST /api/publish HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("\r\nAuthorization: Bearer s3cret\r\n"), "{request}");
        let body = request.split_once("\r\n\r\n").expect("body").1;
        let sent: Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(
            sent,
            serde_json::json!({"channel": "news", "data": {"a": [true], "b": 1}})
        );
    }

    #[tokio::test]
    async fn errors_carry_the_status_and_the_protocol_code() {
        let (url, _server) = serve_once(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 67\r\n\r\n{\"ok\":false,\"error\":{\"code\":\"forbidden\",\"message\":\"wrong API key\"}}",
        )
        .await;
        let error = AdminClient::new(&url).expect("url").stats().await.expect_err("401");
        match error {
            Error::Api { status, code, message } => {
                assert_eq!(
                    (status, code, message.as_str()),
                    (401, ErrorCode::Forbidden, "wrong API key")
                );
            }
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_end_of_the_stream() {
        let (url, _server) = serve_once(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"instances\":[{\"node\":\"a\",\"ws\":\"127.0.0.1:1\",\"connections\":2,\"at_ms\":5}],\"total_connections\":2,\"fresh\":true}",
        )
        .await;
        let view = AdminClient::new(&url).expect("url").cluster().await.expect("cluster");
        assert_eq!(view.total_connections, 2);
        assert_eq!(view.instances[0].node, "a");
        assert!(view.fresh);
    }

    #[tokio::test]
    async fn an_unreachable_admin_port_is_an_io_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let client = AdminClient::new(&format!("http://127.0.0.1:{port}")).expect("url");
        assert!(matches!(client.stats().await, Err(Error::Io(_))));
    }
}
