//! One WebSocket connection attempt: the gateway URL, the upgrade with the
//! encoding's subprotocol and the token's `Authorization: Bearer` header, the HTTP
//! refusals the protocol distinguishes (fatal statuses, 401 for a refused token,
//! 503 and 429 with `Retry-After`), the permessage-deflate offer (the frames
//! themselves are [`crate::deflate_stream`]'s), the wait for the `welcome` frame, and
//! turning WebSocket messages into protocol frames.

use std::time::Duration;

use futures_util::StreamExt;
use shardcast_proto::{decode_server, encode_client, ClientFrame, Encoding, ServerFrame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{
    HeaderValue, AUTHORIZATION, RETRY_AFTER, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use crate::backoff::{parse_retry_after, FATAL_HANDSHAKE_STATUSES};
use crate::deflate_stream::{self, DeflateStream, Limits};
use crate::error::Error;

pub(crate) type WsStream = WebSocketStream<DeflateStream<TcpStream>>;

/// What the `welcome` frame told about the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version of the connection (1).
    pub version: u32,
    /// The gateway instance's id.
    pub node: String,
    /// The shard of that instance that owns the connection.
    pub shard: u32,
    /// The gateway's ping interval.
    pub ping_interval: Duration,
    /// The encoding the gateway chose.
    pub encoding: Encoding,
    /// The authenticated user (the token's `sub`); `None` on an anonymous connection.
    pub user: Option<String>,
    /// When the connection's token expires, seconds since the Unix epoch; `None`
    /// without a token. The client refreshes the token before then.
    pub expires_at: Option<u64>,
    /// Whether the gateway accepted permessage-deflate (see
    /// [`ClientBuilder::compression`](crate::ClientBuilder::compression)).
    pub compression: bool,
}

/// An open, welcomed connection.
pub(crate) struct Opened {
    pub ws: WsStream,
    pub welcome: Welcome,
}

/// Why an attempt did not produce a connection.
#[derive(Debug)]
pub(crate) enum AttemptFailure {
    /// The request itself is wrong; retrying would fail the same way.
    Fatal(Error),
    /// Anything else: the reconnect policy decides on `code` (1006 unless the gateway
    /// sent a close frame) and `reason`; `retry_after` comes from a 503's header.
    Retryable {
        code: u16,
        reason: String,
        retry_after: Option<Duration>,
    },
}

impl AttemptFailure {
    /// A failure without a close frame (RFC 6455's 1006, "abnormal closure").
    pub(crate) fn abnormal(reason: impl Into<String>) -> Self {
        AttemptFailure::Retryable {
            code: ABNORMAL_CLOSURE,
            reason: reason.into(),
            retry_after: None,
        }
    }
}

/// The close code a WebSocket stack reports when a connection ended without a close frame.
pub(crate) const ABNORMAL_CLOSURE: u16 = 1006;

/// Checks a gateway URL once, when the client is built, so that a typo fails fast
/// instead of looping through reconnect attempts.
pub(crate) fn validate_url(url: &str) -> Result<(), Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("wss://") {
        return Err(invalid(
            "wss:// is not supported by this build (no TLS support); terminate TLS in front of a ws:// endpoint",
        ));
    }
    if !lower.starts_with("ws://") {
        return Err(invalid("the scheme must be ws://"));
    }
    url.into_client_request().map_err(|e| invalid(&e.to_string()))?;
    Ok(())
}

/// Opens a WebSocket to `url`, offering `encoding`'s subprotocol, permessage-deflate
/// when `compression` is on, and sending `token` as `Authorization: Bearer`
/// (PROTOCOL.md 18.1), and waits for the `welcome` frame. The caller bounds the
/// whole attempt with its connect timeout.
pub(crate) async fn open(
    url: &str,
    encoding: Encoding,
    config: WebSocketConfig,
    compression: bool,
    token: Option<&str>,
) -> Result<Opened, AttemptFailure> {
    let mut request = url.into_client_request().map_err(|e| {
        AttemptFailure::Fatal(Error::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    })?;
    request
        .headers_mut()
        .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(encoding.subprotocol()));
    if let Some(token) = token {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            AttemptFailure::Fatal(Error::Unauthorized {
                code: 401,
                reason: "the token is not a valid HTTP header value".to_owned(),
            })
        })?;
        // Kept out of any debug output of the request.
        value.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    if compression {
        request.headers_mut().insert(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(deflate_stream::OFFER),
        );
    }
    let stream = DeflateStream::new(connect_tcp(url, &request).await?, compression, Limits::of(&config));
    // tungstenite ignores the response's Sec-WebSocket-Extensions (its check is a
    // TODO in 0.30); the stream beneath it has read the answer.
    let (mut ws, response) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| handshake_failure(url, e))?;
    let compression = ws.get_ref().agreement().is_some();
    // The gateway echoes the subprotocol it chose; the protocol says to use that one.
    let negotiated = response
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(Encoding::from_subprotocol)
        .unwrap_or(encoding);
    let welcome = loop {
        let message = match ws.next().await {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(read_failure(&e, format!("before the welcome: {e}"))),
            None => return Err(AttemptFailure::abnormal("connection closed before the welcome")),
        };
        match decode(negotiated, message) {
            Incoming::Frame(ServerFrame::Welcome {
                version,
                node,
                shard,
                ping_interval_ms,
                user,
                expires_at,
                ..
            }) => {
                break Welcome {
                    version,
                    node,
                    shard,
                    ping_interval: Duration::from_millis(ping_interval_ms),
                    encoding: negotiated,
                    user,
                    expires_at,
                    compression,
                }
            }
            Incoming::Control => continue,
            Incoming::Close { code, reason } => {
                // A refusal after the upgrade (for example a drain that began meanwhile):
                // its code and retry hint count like any other close.
                let _ = ws.close(None).await;
                return Err(AttemptFailure::Retryable {
                    code,
                    reason,
                    retry_after: None,
                });
            }
            Incoming::Frame(other) => {
                return Err(AttemptFailure::abnormal(format!(
                    "expected a welcome frame first, got {other:?}"
                )))
            }
            Incoming::Undecodable(e) => return Err(AttemptFailure::abnormal(format!("bad welcome frame: {e}"))),
        }
    };
    Ok(Opened { ws, welcome })
}

/// The TCP connection for `request`, with Nagle's algorithm off (frames are small
/// and latency matters), as tokio-tungstenite's own `connect_async` would open it.
async fn connect_tcp(
    url: &str,
    request: &tungstenite::handshake::client::Request,
) -> Result<TcpStream, AttemptFailure> {
    let uri = request.uri();
    let Some(host) = uri.host() else {
        return Err(AttemptFailure::Fatal(Error::InvalidUrl {
            url: url.to_owned(),
            reason: "the URL has no host".to_owned(),
        }));
    };
    let port = uri.port_u16().unwrap_or(80);
    let socket = TcpStream::connect(format!("{host}:{port}"))
        .await
        .map_err(|e| AttemptFailure::abnormal(tungstenite::Error::Io(e).to_string()))?;
    socket
        .set_nodelay(true)
        .map_err(|e| AttemptFailure::abnormal(tungstenite::Error::Io(e).to_string()))?;
    Ok(socket)
}

/// Sorts a failed upgrade into the protocol's cases (section 12).
fn handshake_failure(url: &str, error: tungstenite::Error) -> AttemptFailure {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            if status == 401 {
                // The token was refused: the same token would be refused again.
                return AttemptFailure::Fatal(Error::Unauthorized {
                    code: status,
                    reason: body,
                });
            }
            if FATAL_HANDSHAKE_STATUSES.contains(&status) {
                return AttemptFailure::Fatal(Error::HandshakeRejected { status, body });
            }
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            AttemptFailure::Retryable {
                code: ABNORMAL_CLOSURE,
                reason: format!("upgrade refused with HTTP {status}: {body}"),
                retry_after,
            }
        }
        tungstenite::Error::Url(e) => AttemptFailure::Fatal(Error::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        }),
        other => read_failure(&other, other.to_string()),
    }
}

/// A read that failed during the attempt: 1009 for a compressed message past the
/// size limit (not retried, like the gateway's own 1009), else abnormal.
fn read_failure(error: &tungstenite::Error, reason: String) -> AttemptFailure {
    match deflate_stream::close_code(error) {
        Some(code) => AttemptFailure::Retryable {
            code,
            reason,
            retry_after: None,
        },
        None => AttemptFailure::abnormal(reason),
    }
}

/// A WebSocket message, sorted for the client.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A protocol frame.
    Frame(ServerFrame),
    /// The peer's close frame (1005 when it carried no code).
    Close { code: u16, reason: String },
    /// A ping, pong or raw frame: proof of life, nothing else.
    Control,
    /// A data message that does not decode; the protocol says to go on.
    Undecodable(String),
}

/// Decodes one WebSocket message. The bytes are decoded with the connection's
/// encoding whatever the frame type, so that a gateway sending the other frame
/// type still works where the bytes are right.
pub(crate) fn decode(encoding: Encoding, message: WsMessage) -> Incoming {
    let bytes: &[u8] = match &message {
        WsMessage::Text(text) => text.as_bytes(),
        WsMessage::Binary(bytes) => bytes,
        WsMessage::Close(frame) => {
            return match frame {
                Some(frame) => Incoming::Close {
                    code: u16::from(frame.code),
                    reason: frame.reason.to_string(),
                },
                None => Incoming::Close {
                    code: 1005,
                    reason: String::new(),
                },
            }
        }
        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => return Incoming::Control,
    };
    match decode_server(encoding, bytes) {
        Ok(frame) => Incoming::Frame(frame),
        Err(e) => Incoming::Undecodable(e.message),
    }
}

/// Encodes a client frame as the WebSocket message its encoding travels in.
pub(crate) fn encode(encoding: Encoding, frame: &ClientFrame) -> Result<WsMessage, Error> {
    let bytes = encode_client(encoding, frame).map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(match encoding {
        // serde_json only writes UTF-8, so this conversion does not fail in practice;
        // falling back to a binary frame keeps the bytes rather than panicking.
        Encoding::Json => match String::from_utf8(bytes) {
            Ok(text) => WsMessage::Text(text.into()),
            Err(e) => WsMessage::Binary(e.into_bytes().into()),
        },
        Encoding::MsgPack => WsMessage::Binary(bytes.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn urls_are_checked_up_front() {
        assert!(validate_url("ws://127.0.0.1:8000/ws").is_ok());
        assert!(validate_url("WS://example.com/ws?x=1").is_ok());
        assert!(matches!(
            validate_url("wss://example.com/ws"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            validate_url("http://example.com/ws"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(validate_url("ws://"), Err(Error::InvalidUrl { .. })));
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Section 16.1: every server frame vector decodes, in both encodings, to its value.
    #[test]
    fn server_frame_vectors_decode_in_both_encodings() {
        let vectors: Value =
            serde_json::from_str(include_str!("../../../proto/vectors/server_frames.json")).expect("vector JSON");
        let entries = vectors.as_array().expect("array");
        assert!(!entries.is_empty());
        for entry in entries {
            let name = &entry["name"];
            let json = entry["json"].as_str().expect("json").to_owned();
            let msgpack = unhex(entry["msgpack_hex"].as_str().expect("msgpack_hex"));
            for (encoding, message) in [
                (Encoding::Json, WsMessage::Text(json.into())),
                (Encoding::MsgPack, WsMessage::Binary(msgpack.into())),
            ] {
                let Incoming::Frame(frame) = decode(encoding, message) else {
                    panic!("{name}: did not decode in {encoding:?}");
                };
                let got = serde_json::to_value(&frame).expect("frame to value");
                assert_eq!(got, entry["value"], "{name} in {encoding:?}");
            }
        }
    }

    /// Section 16.2: the frames this client sends decode, with a generic decoder, to the vectors' values.
    #[test]
    fn client_frame_vectors_match_what_the_client_encodes() {
        let vectors: Value =
            serde_json::from_str(include_str!("../../../proto/vectors/client_frames.json")).expect("vector JSON");
        let entries = vectors.as_array().expect("array");
        assert!(!entries.is_empty());
        for entry in entries {
            let value = &entry["value"];
            // Built through the proto types the client sends, from the vector's fields.
            let frame: ClientFrame = serde_json::from_value(value.clone()).expect("frame from value");
            let json = match encode(Encoding::Json, &frame).expect("encodes") {
                WsMessage::Text(t) => serde_json::from_str::<Value>(&t).expect("JSON"),
                other => panic!("JSON frames travel as text, got {other:?}"),
            };
            assert_eq!(&json, value, "{}", entry["name"]);
            let msgpack = match encode(Encoding::MsgPack, &frame).expect("encodes") {
                WsMessage::Binary(b) => rmp_serde::from_slice::<Value>(&b).expect("MessagePack"),
                other => panic!("MessagePack frames travel as binary, got {other:?}"),
            };
            assert_eq!(&msgpack, value, "{}", entry["name"]);
        }
    }

    #[test]
    fn close_and_control_messages_are_sorted() {
        assert!(matches!(
            decode(Encoding::Json, WsMessage::Close(None)),
            Incoming::Close { code: 1005, .. }
        ));
        assert!(matches!(
            decode(Encoding::Json, WsMessage::Ping(Vec::new().into())),
            Incoming::Control
        ));
        assert!(matches!(
            decode(Encoding::Json, WsMessage::Text("{nope".into())),
            Incoming::Undecodable(_)
        ));
        assert!(matches!(
            decode(
                Encoding::Json,
                WsMessage::Text(r#"{"type":"from_the_future","x":1}"#.into())
            ),
            Incoming::Frame(ServerFrame::Unknown)
        ));
    }
}
