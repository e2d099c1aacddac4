//! The gateway's admin HTTP API as a backend uses it: publishing
//! (`POST /api/publish`), the instance's stats (`GET /api/stats`) and the cluster
//! view (`GET /api/cluster`), with the optional API key.
//!
//! The HTTP side is hyper's HTTP/1.1 client connection: one request per TCP
//! connection (`Connection: close`), plain `http://` only (the admin port is meant
//! to stay private to the backend, so it has no TLS).

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use shardcast_proto::{validate_channel, ErrorCode};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::history::check_idempotency_key;

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
    /// On a channel with history: the publication's offset (PROTOCOL.md 19.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// With `offset`: the channel's epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The idempotency key was used already: nothing was published again, and
    /// `offset` is the first publish's (PROTOCOL.md 19.9).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
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
        self.publish_body(channel, data, None).await
    }

    /// [`publish`](Self::publish) with an idempotency key (PROTOCOL.md 19.9): 1 to 64
    /// characters of `[A-Za-z0-9_.:-]`, unique per publication. A publish with a key
    /// already used (within the gateway's history TTL) is not published again, and is
    /// answered with the first one's offset and `duplicate: true`, so retrying after a
    /// 504 `timeout` (outcome unknown) or a 503 is safe. A malformed key fails with
    /// [`Error::Protocol`] without being sent.
    pub async fn publish_with_key<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
        key: &str,
    ) -> Result<PublishReceipt> {
        check_idempotency_key(key)?;
        let raw = serde_json::value::to_raw_value(data)?;
        self.publish_body(channel, &raw, Some(key)).await
    }

    async fn publish_body(
        &self,
        channel: &str,
        data: &RawValue,
        idempotency_key: Option<&str>,
    ) -> Result<PublishReceipt> {
        validate_channel(channel, usize::MAX).map_err(|source| Error::InvalidChannel {
            channel: channel.to_owned(),
            source,
        })?;
        let body = serde_json::to_vec(&PublishBody {
            channel,
            data,
            idempotency_key,
        })?;
        let answer = self.request(Method::POST, "/api/publish", Some(body)).await?;
        parse_json(&answer)
    }

    /// This instance's connection and channel counts.
    pub async fn stats(&self) -> Result<InstanceStats> {
        parse_json(&self.request(Method::GET, "/api/stats", None).await?)
    }

    /// The cluster's instances and their connection counts.
    pub async fn cluster(&self) -> Result<ClusterView> {
        parse_json(&self.request(Method::GET, "/api/cluster", None).await?)
    }

    /// Sends one request and returns the body of a 2xx answer; other statuses become
    /// [`Error::Api`] with the body's error code.
    async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes> {
        let (status, body) = tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| Error::Timeout {
                op: "admin API request",
                timeout: self.timeout,
            })??;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(api_error(status, &body))
    }

    /// One request on a connection of its own, closed after the answer.
    async fn exchange(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<(u16, Bytes)> {
        let stream = TcpStream::connect(&self.authority).await.map_err(|e| {
            // The OS's message ("Connection refused") does not say what was unreachable.
            Error::io(std::io::Error::new(
                e.kind(),
                format!("cannot reach the admin API at {}: {e}", self.authority),
            ))
        })?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) = http1::Builder::new()
            .title_case_headers(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        let request = self.build_request(method, path, body)?;
        let exchange = async {
            let response = sender.send_request(request).await.map_err(http_error)?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(e) => http_error(*e),
                    Err(_) => Error::Protocol("HTTP response too large".to_owned()),
                })?;
            Ok((status, body.to_bytes()))
        };
        // The connection future moves the bytes; it runs alongside the exchange in this
        // task, so nothing outlives the call.
        tokio::pin!(connection);
        tokio::select! {
            result = exchange => result,
            Err(e) = &mut connection => Err(http_error(e)),
        }
    }

    fn build_request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Request<Full<Bytes>>> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_path))
            .header(header::HOST, &self.authority)
            .header(header::CONNECTION, "close")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("shardcast-client/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(key) = &self.api_key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Protocol(format!("cannot build the admin API request: {e}")))
    }
}

/// A failed HTTP exchange: a socket error stays an I/O error, anything else is the
/// peer not speaking HTTP as expected.
fn http_error(e: hyper::Error) -> Error {
    let io = std::error::Error::source(&e).and_then(|source| source.downcast_ref::<std::io::Error>());
    match io {
        Some(io) => Error::io(std::io::Error::new(io.kind(), e.to_string())),
        None if e.is_incomplete_message() => {
            Error::Protocol("the connection closed before a complete HTTP response".to_owned())
        }
        None => Error::Protocol(format!("admin API HTTP exchange failed: {e}")),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        let error = client.stats().await.expect_err("nothing listens");
        assert!(matches!(error, Error::Io(_)), "{error:?}");
        let expected = format!("cannot reach the admin API at 127.0.0.1:{port}: ");
        assert!(error.to_string().contains(&expected), "{error}");
    }
}
