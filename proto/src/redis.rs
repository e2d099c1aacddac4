//! The payload format of a publication on Redis, shared by gateways and by any
//! application that publishes with a plain `PUBLISH <prefix><channel> <payload>`.
//!
//! ```text
//! payload = json            ; a JSON value: what subscribers get as `data`
//!         | "@" origin " " json  ; the same, published by the gateway `origin`
//!         | "!" bytes       ; raw bytes: subscribers get {"$bin": "<base64>"}
//!         | "^" offset "," epoch "," [origin] " " json
//!                           ; a publication with history (PROTOCOL.md 15.1)
//!         | "%+" [origin] " " user TAB info-json
//!         | "%-" [origin] " " user
//!                           ; a presence member joined or left (PROTOCOL.md 20.4)
//! ```
//!
//! No JSON text starts with `@`, `!`, `^` or `%`, so the forms cannot be confused.
//! Gateways tag what they publish with their own id so they can skip it when Redis
//! echoes it back: the instance that took a publish has already delivered it locally.

/// One decoded Redis payload.
#[derive(Debug, PartialEq, Eq)]
pub enum RedisPayload<'a> {
    /// A JSON value (not yet validated: the gateway parses it when it takes it).
    Json {
        /// The publishing gateway, when a gateway published it.
        origin: Option<&'a str>,
        /// The JSON text.
        json: &'a str,
    },
    /// A JSON value numbered by the history store.
    Positioned {
        /// Its offset in the channel.
        offset: u64,
        /// The channel's epoch.
        epoch: &'a str,
        /// The publishing gateway; none when an application published it.
        origin: Option<&'a str>,
        /// The JSON text.
        json: &'a str,
    },
    /// Raw bytes, delivered base64-encoded under `$bin`.
    Raw(&'a [u8]),
    /// A user became a member of the channel's presence (its first connection anywhere).
    Joined {
        /// The announcing gateway; none for a cleanup after an instance died.
        origin: Option<&'a str>,
        /// The user id.
        user: &'a str,
        /// The member's `user_info`, JSON text.
        info: &'a str,
    },
    /// A user stopped being a member (its last connection anywhere left).
    Left {
        /// The announcing gateway; none for a cleanup after an instance died.
        origin: Option<&'a str>,
        /// The user id.
        user: &'a str,
    },
}

/// Why a Redis payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedisPayloadError {
    /// The payload is not UTF-8 and is not in the raw form.
    #[error("payload is neither UTF-8 JSON nor the raw form (\"!\" + bytes)")]
    NotUtf8,
    /// An `@origin` or `^position` payload without its shape.
    #[error("payload starts with '@' or '^' but has no \"@origin <json>\" or \"^offset,epoch,origin <json>\" shape")]
    BadEnvelope,
    /// The payload is empty.
    #[error("empty payload")]
    Empty,
}

/// Splits a payload into its form; the JSON text itself is validated by the caller.
pub fn decode_redis_payload(bytes: &[u8]) -> Result<RedisPayload<'_>, RedisPayloadError> {
    match bytes.first() {
        None => Err(RedisPayloadError::Empty),
        Some(b'!') => Ok(RedisPayload::Raw(&bytes[1..])),
        Some(b'@') => {
            let text = std::str::from_utf8(&bytes[1..]).map_err(|_| RedisPayloadError::NotUtf8)?;
            let (origin, json) = text.split_once(' ').ok_or(RedisPayloadError::BadEnvelope)?;
            Ok(RedisPayload::Json {
                origin: Some(origin),
                json,
            })
        }
        Some(b'%') => {
            let text = std::str::from_utf8(&bytes[1..]).map_err(|_| RedisPayloadError::NotUtf8)?;
            let (kind, rest) = text.split_at_checked(1).ok_or(RedisPayloadError::BadEnvelope)?;
            let (origin, body) = rest.split_once(' ').ok_or(RedisPayloadError::BadEnvelope)?;
            let origin = (!origin.is_empty()).then_some(origin);
            match kind {
                "+" => {
                    let (user, info) = body.split_once('\t').ok_or(RedisPayloadError::BadEnvelope)?;
                    if user.is_empty() {
                        return Err(RedisPayloadError::BadEnvelope);
                    }
                    Ok(RedisPayload::Joined { origin, user, info })
                }
                "-" if !body.is_empty() => Ok(RedisPayload::Left { origin, user: body }),
                _ => Err(RedisPayloadError::BadEnvelope),
            }
        }
        Some(b'^') => {
            let text = std::str::from_utf8(&bytes[1..]).map_err(|_| RedisPayloadError::NotUtf8)?;
            let (head, json) = text.split_once(' ').ok_or(RedisPayloadError::BadEnvelope)?;
            let mut parts = head.splitn(3, ',');
            let offset = parts.next().and_then(|o| o.parse::<u64>().ok());
            let (Some(offset), Some(epoch), Some(origin)) = (offset, parts.next(), parts.next()) else {
                return Err(RedisPayloadError::BadEnvelope);
            };
            if offset == 0 || epoch.is_empty() {
                return Err(RedisPayloadError::BadEnvelope);
            }
            Ok(RedisPayload::Positioned {
                offset,
                epoch,
                origin: (!origin.is_empty()).then_some(origin),
                json,
            })
        }
        Some(_) => {
            let json = std::str::from_utf8(bytes).map_err(|_| RedisPayloadError::NotUtf8)?;
            Ok(RedisPayload::Json { origin: None, json })
        }
    }
}

/// The payload a gateway publishes: `@origin json`.
pub fn encode_redis_payload(origin: &str, json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + origin.len() + json.len());
    out.push(b'@');
    out.extend_from_slice(origin.as_bytes());
    out.push(b' ');
    out.extend_from_slice(json.as_bytes());
    out
}

/// The `data` a raw payload is delivered as: `{"$bin": "<base64>"}`.
pub fn raw_payload_json(bytes: &[u8]) -> String {
    format!("{{\"$bin\":\"{}\"}}", base64(bytes))
}

/// Standard base64 with padding (RFC 4648 section 4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms() {
        assert_eq!(
            decode_redis_payload(br#"{"a":1}"#),
            Ok(RedisPayload::Json {
                origin: None,
                json: r#"{"a":1}"#
            })
        );
        assert_eq!(
            decode_redis_payload(b"@node-1 [1,2]"),
            Ok(RedisPayload::Json {
                origin: Some("node-1"),
                json: "[1,2]"
            })
        );
        assert_eq!(decode_redis_payload(b"!\x00\xff"), Ok(RedisPayload::Raw(b"\x00\xff")));
        assert_eq!(decode_redis_payload(b"@nospace"), Err(RedisPayloadError::BadEnvelope));
        assert_eq!(decode_redis_payload(b"\xff\xfe"), Err(RedisPayloadError::NotUtf8));
        assert_eq!(decode_redis_payload(b""), Err(RedisPayloadError::Empty));
        assert_eq!(encode_redis_payload("n", "true"), b"@n true");
    }

    #[test]
    fn the_presence_forms() {
        assert_eq!(
            decode_redis_payload(b"%+node-1 42\t{\"name\":\"Ann\"}"),
            Ok(RedisPayload::Joined {
                origin: Some("node-1"),
                user: "42",
                info: r#"{"name":"Ann"}"#
            })
        );
        assert_eq!(
            decode_redis_payload(b"%- 42"),
            Ok(RedisPayload::Left {
                origin: None,
                user: "42"
            })
        );
        for bad in [&b"%"[..], b"%+", b"%+n 42", b"%*n 42", b"%-n ", b"%+n \t{}"] {
            assert_eq!(
                decode_redis_payload(bad),
                Err(RedisPayloadError::BadEnvelope),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_positioned_form() {
        assert_eq!(
            decode_redis_payload(b"^42,q7Bf2,node-1 {\"a\":1}"),
            Ok(RedisPayload::Positioned {
                offset: 42,
                epoch: "q7Bf2",
                origin: Some("node-1"),
                json: r#"{"a":1}"#
            })
        );
        assert_eq!(
            decode_redis_payload(b"^1,e, null"),
            Ok(RedisPayload::Positioned {
                offset: 1,
                epoch: "e",
                origin: None,
                json: "null"
            })
        );
        for bad in [&b"^x,e, 1"[..], b"^0,e, 1", b"^1,, 1", b"^1,e 1", b"^1,e,o"] {
            assert_eq!(
                decode_redis_payload(bad),
                Err(RedisPayloadError::BadEnvelope),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), output);
        }
        assert_eq!(raw_payload_json(b"\x00\x01"), r#"{"$bin":"AAE="}"#);
    }
}
