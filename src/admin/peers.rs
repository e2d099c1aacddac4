//! Questions to the other instances' admin ports: a plain HTTP/1.1 GET with the
//! caller's own authorization, bounded in time, for the cluster-wide answers of
//! the admin API (a channel's subscribers on every instance, the Pusher API's
//! channel queries).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one instance may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// The largest answer read from an instance.
const MAX_ANSWER: usize = 64 << 10;

/// GETs `path` from the admin port at `addr`, passing `authorization` on; the
/// answer's JSON, or why there is none.
pub async fn get_json(
    addr: &str,
    path: &str,
    authorization: Option<&HeaderValue>,
) -> Result<serde_json::Value, String> {
    let headers: Vec<_> = authorization.map(|v| (AUTHORIZATION, v.clone())).into_iter().collect();
    get_json_with(addr, path, &headers, MAX_ANSWER).await
}

/// GETs `path` from the admin port at `addr` with these headers; the answer's
/// JSON (at most `max_answer` bytes), or why there is none.
pub async fn get_json_with(
    addr: &str,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    max_answer: usize,
) -> Result<serde_json::Value, String> {
    tokio::time::timeout(PEER_TIMEOUT, ask(addr, path, headers, max_answer))
        .await
        .map_err(|_| format!("no answer within {} ms", PEER_TIMEOUT.as_millis()))?
}

async fn ask(
    addr: &str,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    max_answer: usize,
) -> Result<serde_json::Value, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = Request::get(path)
        .header(HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    for (name, value) in headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), max_answer)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}
