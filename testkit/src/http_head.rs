//! The HTTP/1.1 heads around a WebSocket connection and a minimal API client: the
//! upgrade request a client sends, where a head ends, and a header's value.

use std::fmt::Display;

/// The `Sec-WebSocket-Key` these clients send: RFC 6455's sample nonce. A server
/// must accept any key, and a fixed one keeps requests reproducible.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A client's upgrade request for `path` on `host`, offering `subprotocol` when given.
pub fn upgrade_request(host: impl Display, path: &str, subprotocol: Option<&str>) -> String {
    let protocol = subprotocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\n{protocol}\r\n"
    )
}

/// Index just past the `\r\n\r\n` that ends an HTTP head, if it is in `buf`.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The value of a header in an HTTP head (name compared case-insensitively).
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_heads_are_found_and_read() {
        let head = "HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nsec-websocket-accept: abc\r\n\r\nxyz";
        let end = find_head_end(head.as_bytes()).unwrap();
        assert_eq!(&head[end..], "xyz");
        assert_eq!(header_value(&head[..end], "Sec-WebSocket-Accept"), Some("abc"));
        assert_eq!(header_value(&head[..end], "Missing"), None);
    }

    #[test]
    fn the_upgrade_request_is_one_complete_head() {
        let plain = upgrade_request("127.0.0.1:80", "/ws", None);
        assert_eq!(find_head_end(plain.as_bytes()), Some(plain.len()));
        assert_eq!(header_value(&plain, "sec-websocket-key"), Some(SAMPLE_KEY));
        assert_eq!(header_value(&plain, "Sec-WebSocket-Protocol"), None);
        let offered = upgrade_request("h", "/echo", Some("shardcast.v1.msgpack"));
        assert!(offered.starts_with("GET /echo HTTP/1.1\r\nHost: h\r\n"));
        assert_eq!(
            header_value(&offered, "Sec-WebSocket-Protocol"),
            Some("shardcast.v1.msgpack")
        );
    }
}
