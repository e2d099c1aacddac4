//! The HTTP/1.1 side of the public port: the WebSocket upgrade (RFC 6455 section 4),
//! the health probes a load balancer sends to the same port, and the plain-HTTP
//! answers (refusals, errors) a socket may get instead of an upgrade.

use shardcast_proto::Encoding;

use super::deflate::{self, Agreement};

/// Largest request head the public port reads before answering 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// What a request on the public port asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum PublicRequest {
    /// A valid WebSocket upgrade on the configured path.
    Upgrade {
        /// Whether this is the test-only echo endpoint.
        echo: bool,
        /// The client's `Sec-WebSocket-Key`, to derive the accept key from.
        key: String,
        /// The encoding picked from the client's subprotocols.
        encoding: Encoding,
        /// The subprotocol token the encoding was picked by, exactly as the client
        /// spelled it (the response echoes it); `None` when the client offered none.
        subprotocol: Option<String>,
        /// The token of an `Authorization: Bearer <token>` header, if any.
        bearer: Option<String>,
        /// The permessage-deflate offer the gateway would accept, if the client
        /// made one (used only where `--compression` allows it).
        deflate: Option<Agreement>,
    },
    /// A valid WebSocket upgrade on a Pusher Channels path, `/app/<key>`
    /// (PROTOCOL.md 20.1): whether the key names an app is the shard's to say.
    PusherUpgrade {
        /// The client's `Sec-WebSocket-Key`.
        key: String,
        /// The app key from the path.
        app_key: String,
        /// The `protocol` query parameter, as given.
        protocol: Option<String>,
        /// The permessage-deflate offer the gateway would accept, if any.
        deflate: Option<Agreement>,
    },
    /// `GET /health/live` or `GET /health/ready`, for load balancers that probe the public port.
    Health {
        /// `/health/ready` (true) or `/health/live` (false).
        ready_probe: bool,
    },
    /// An upgrade with a credential in the query string: refused (400), since URLs
    /// end up in access logs.
    TokenInUrl,
    /// Anything else: answered with this status and message, then closed.
    Reject {
        /// The HTTP status.
        status: u16,
        /// The error message in the JSON body.
        message: &'static str,
    },
}

/// The paths the public port serves WebSockets on.
#[derive(Debug, Clone, Copy)]
pub struct WsPaths<'a> {
    /// The protocol endpoint.
    pub protocol: &'a str,
    /// The echo endpoint for conformance tests, when enabled.
    pub echo: Option<&'a str>,
}

/// Parses a request head; `Ok(None)` means more bytes are needed.
pub fn parse_request(buf: &[u8], paths: WsPaths<'_>) -> Result<Option<PublicRequest>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(buf)?.is_partial() {
        return Ok(None);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if req.method != Some("GET") {
        return Ok(Some(PublicRequest::Reject {
            status: 405,
            message: "only GET is served on the WebSocket port",
        }));
    }
    match path {
        "/health/live" => return Ok(Some(PublicRequest::Health { ready_probe: false })),
        "/health/ready" => return Ok(Some(PublicRequest::Health { ready_probe: true })),
        p if p == paths.protocol || Some(p) == paths.echo => {}
        p if pusher_app_key(p).is_some() => {}
        _ => {
            return Ok(Some(PublicRequest::Reject {
                status: 404,
                message: "not found",
            }))
        }
    }
    if carries_token(query) {
        return Ok(Some(PublicRequest::TokenInUrl));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    // A header may be repeated; its values then read as one comma-separated list.
    let has_token = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Ok(Some(PublicRequest::Reject {
            status: 426,
            message: "this endpoint speaks WebSocket only",
        }));
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Ok(Some(PublicRequest::Reject {
            status: 426,
            message: "unsupported Sec-WebSocket-Version (13 required)",
        }));
    }
    let Some(key) = header("sec-websocket-key").map(|k| k.trim().to_owned()) else {
        return Ok(Some(PublicRequest::Reject {
            status: 400,
            message: "missing Sec-WebSocket-Key",
        }));
    };
    let deflate = deflate::negotiate(
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
            .filter_map(|h| std::str::from_utf8(h.value).ok()),
    );
    if let Some(app_key) = pusher_app_key(path).filter(|_| path != paths.protocol && Some(path) != paths.echo) {
        // Pusher's clients offer no subprotocol and send no Authorization header.
        let protocol = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("protocol="))
            .map(str::to_owned);
        return Ok(Some(PublicRequest::PusherUpgrade {
            key,
            app_key: app_key.to_owned(),
            protocol,
            deflate,
        }));
    }
    let (encoding, subprotocol) = match header("sec-websocket-protocol") {
        None => (Encoding::Json, None),
        Some(list) => match list
            .split(',')
            .map(str::trim)
            .find_map(|token| Some((Encoding::from_subprotocol(token)?, token)))
        {
            Some((enc, token)) => (enc, Some(token.to_owned())),
            None => {
                return Ok(Some(PublicRequest::Reject {
                    status: 400,
                    message: "no supported subprotocol (shardcast.v1.json, shardcast.v1.msgpack)",
                }))
            }
        },
    };
    let bearer = match header("authorization") {
        None => None,
        Some(value) => match value.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
                Some(token.trim().to_owned())
            }
            _ => {
                return Ok(Some(PublicRequest::Reject {
                    status: 400,
                    message: "the Authorization header must be `Bearer <token>`",
                }))
            }
        },
    };
    Ok(Some(PublicRequest::Upgrade {
        echo: Some(path) == paths.echo,
        key,
        encoding,
        subprotocol,
        bearer,
        deflate,
    }))
}

/// The app key of a Pusher Channels path (`/app/<key>`), if it is one.
fn pusher_app_key(path: &str) -> Option<&str> {
    path.strip_prefix("/app/")
        .filter(|key| !key.is_empty() && !key.contains('/'))
}

/// The message of the 400 answer to [`PublicRequest::TokenInUrl`].
pub const TOKEN_IN_URL: &str = "tokens are not accepted in the URL (it ends up in access logs): send it in the first frame (op connect) or in an Authorization: Bearer header";

/// Whether a query string carries a parameter that looks like a credential.
fn carries_token(query: &str) -> bool {
    query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("");
        ["token", "access_token", "jwt", "auth", "authorization"]
            .iter()
            .any(|t| name.eq_ignore_ascii_case(t))
    })
}

/// The `101 Switching Protocols` response for an accepted upgrade; `subprotocol` is
/// the client's chosen token as it sent it. RFC 6455 4.2.2 has the server select
/// one of the client's own values, and strict clients (Python `websockets`) compare
/// the echo byte for byte, so a token offered as `Shardcast.V1.Json` comes back so.
/// `extensions` is the `Sec-WebSocket-Extensions` value of an accepted extension.
pub fn upgrade_response(key: &str, subprotocol: Option<&str>, extensions: Option<&str>) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(token) = subprotocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(token);
        out.push_str("\r\n");
    }
    if let Some(value) = extensions {
        out.push_str("Sec-WebSocket-Extensions: ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A complete plain-HTTP response with a JSON body, closing the connection.
pub fn http_response(status: u16, retry_after_secs: Option<u64>, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut extra = retry_after_secs
        .map(|s| format!("Retry-After: {s}\r\n"))
        .unwrap_or_default();
    if status == 426 {
        // RFC 6455 4.4: name the protocol and the version the server speaks.
        extra.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
    }
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A JSON error body in the same shape as the admin API's errors.
pub fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"ok": false, "error": {"code": code, "message": message}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: WsPaths<'static> = WsPaths {
        protocol: "/ws",
        echo: Some("/echo"),
    };

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn bearer_tokens_are_read_and_url_tokens_refused() {
        let with_header = format!("{UPGRADE}Authorization: Bearer abc.def.ghi\r\n\r\n");
        assert!(matches!(
            parse_request(with_header.as_bytes(), WS).unwrap(),
            Some(PublicRequest::Upgrade { bearer: Some(ref t), .. }) if t == "abc.def.ghi"
        ));
        let basic = format!("{UPGRADE}Authorization: Basic Zm9vOmJhcg==\r\n\r\n");
        assert!(matches!(
            parse_request(basic.as_bytes(), WS).unwrap(),
            Some(PublicRequest::Reject { status: 400, .. })
        ));
        for query in ["token=x", "a=1&access_token=x", "JWT=x", "auth"] {
            let req = UPGRADE.replacen("GET /ws ", &format!("GET /ws?{query} "), 1) + "\r\n";
            assert_eq!(
                parse_request(req.as_bytes(), WS).unwrap(),
                Some(PublicRequest::TokenInUrl),
                "{query}"
            );
        }
        let harmless = UPGRADE.replacen("GET /ws ", "GET /ws?tokens_left=3 ", 1) + "\r\n";
        assert!(matches!(
            parse_request(harmless.as_bytes(), WS).unwrap(),
            Some(PublicRequest::Upgrade { .. })
        ));
    }

    #[test]
    fn upgrade_with_and_without_subprotocol() {
        let plain = format!("{UPGRADE}\r\n");
        assert_eq!(
            parse_request(plain.as_bytes(), WS).unwrap(),
            Some(PublicRequest::Upgrade {
                echo: false,
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
                encoding: Encoding::Json,
                subprotocol: None,
                bearer: None,
                deflate: None,
            })
        );
        let offer = format!("{UPGRADE}Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n");
        assert!(matches!(
            parse_request(offer.as_bytes(), WS).unwrap(),
            Some(PublicRequest::Upgrade { deflate: Some(ref a), .. }) if a.server_window == 15
        ));
        let mp = format!("{UPGRADE}Sec-WebSocket-Protocol: foo, Shardcast.V1.MsgPack \r\n\r\n");
        assert!(matches!(
            parse_request(mp.as_bytes(), WS).unwrap(),
            Some(PublicRequest::Upgrade {
                encoding: Encoding::MsgPack,
                subprotocol: Some(token),
                ..
            }) if token == "Shardcast.V1.MsgPack"
        ));
        let bad = format!("{UPGRADE}Sec-WebSocket-Protocol: foo\r\n\r\n");
        assert!(matches!(
            parse_request(bad.as_bytes(), WS).unwrap(),
            Some(PublicRequest::Reject { status: 400, .. })
        ));
        assert_eq!(parse_request(&plain.as_bytes()[..20], WS).unwrap(), None);
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        let resp = String::from_utf8(upgrade_response("dGhlIHNhbXBsZSBub25jZQ==", None, None)).unwrap();
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn health_and_other_paths() {
        let h = b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_request(h, WS).unwrap(),
            Some(PublicRequest::Health { ready_probe: true })
        );
        let other = b"GET /nope HTTP/1.1\r\n\r\n";
        assert!(matches!(
            parse_request(other, WS).unwrap(),
            Some(PublicRequest::Reject { status: 404, .. })
        ));
        let pusher = UPGRADE.replacen("GET /ws ", "GET /app/k1?protocol=7&client=js ", 1) + "\r\n";
        assert!(matches!(
            parse_request(pusher.as_bytes(), WS).unwrap(),
            Some(PublicRequest::PusherUpgrade { ref app_key, protocol: Some(ref p), .. }) if app_key == "k1" && p == "7"
        ));
        let plain = b"GET /ws HTTP/1.1\r\n\r\n";
        assert!(matches!(
            parse_request(plain, WS).unwrap(),
            Some(PublicRequest::Reject { status: 426, .. })
        ));
    }
}
