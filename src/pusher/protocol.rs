//! The Pusher Channels protocol, version 7, as its official clients speak it:
//! the events a client sends (decoded from one JSON text frame) and the frames
//! the server sends. Channel events carry their `data` as a JSON *string*, as
//! Pusher does; `pusher:error` carries an object.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// The protocol version this module speaks (`?protocol=7` on the URL).
pub const PROTOCOL_VERSION: u32 = 7;

/// Pusher's close and error codes that the gateway sends.
pub mod code {
    /// The app key in the URL names no configured app (do not reconnect).
    pub const APP_DOES_NOT_EXIST: u16 = 4001;
    /// The path is not `/app/<key>` (do not reconnect).
    pub const PATH_NOT_FOUND: u16 = 4005;
    /// The `protocol` query parameter is not a version this server speaks.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    /// A subscription or sign-in was refused (an error, not a close).
    pub const UNAUTHORIZED: u16 = 4009;
    /// The server is over capacity (reconnect with backoff).
    pub const OVER_CAPACITY: u16 = 4100;
    /// Reconnect at once (a drain, for instance).
    pub const RECONNECT: u16 = 4200;
    /// The client answered no ping in time (reconnect at once).
    pub const PONG_NOT_RECEIVED: u16 = 4201;
    /// A client event was refused (an error, not a close): not allowed, or rate limited.
    pub const CLIENT_EVENT_REJECTED: u16 = 4301;
}

/// What a client sent.
#[derive(Debug, Clone, PartialEq)]
pub enum PusherRequest {
    /// `pusher:subscribe`.
    Subscribe {
        /// The channel.
        channel: String,
        /// `<key>:<signature>`, for private and presence channels.
        auth: Option<String>,
        /// The presence member's JSON (`{"user_id":..,"user_info":..}`), as signed.
        channel_data: Option<String>,
        /// Where a recovering client left off (offset, epoch): PROTOCOL.md 20.6's
        /// extension.
        recover: Option<(u64, String)>,
    },
    /// `pusher:unsubscribe`.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// `pusher:ping`.
    Ping,
    /// `pusher:pong` (the answer to a server ping).
    Pong,
    /// `pusher:signin`: user authentication.
    Signin {
        /// The user's JSON, as signed.
        user_data: String,
        /// `<key>:<signature>`.
        auth: String,
    },
    /// A `client-*` event for the other subscribers of a private or presence channel.
    ClientEvent {
        /// The event name (starts with `client-`).
        event: String,
        /// The channel.
        channel: String,
        /// The data as sent: its JSON text.
        data: String,
    },
}

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PusherDecodeError(pub String);

#[derive(Deserialize)]
struct Envelope<'a> {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
    #[serde(default)]
    recover: Option<Recover>,
}

#[derive(Deserialize)]
struct Recover {
    offset: u64,
    epoch: String,
}

#[derive(Deserialize)]
struct ChannelData {
    channel: String,
}

#[derive(Deserialize)]
struct SigninData {
    user_data: String,
    auth: String,
}

/// Reads `data`, which clients send either as an object or as a JSON string of one.
fn data_of<T: for<'de> Deserialize<'de>>(data: Option<&RawValue>, event: &str) -> Result<T, PusherDecodeError> {
    let raw = data.ok_or_else(|| PusherDecodeError(format!("{event} without data")))?;
    let parsed = match serde_json::from_str::<T>(raw.get()) {
        Ok(v) => Ok(v),
        Err(_) => serde_json::from_str::<String>(raw.get())
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str::<T>(&s).map_err(|e| e.to_string())),
    };
    parsed.map_err(|e| {
        PusherDecodeError(format!(
            "{event}: bad data: {}",
            e.chars().take(120).collect::<String>()
        ))
    })
}

/// Decodes one client frame.
pub fn decode_request(text: &str) -> Result<PusherRequest, PusherDecodeError> {
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        PusherDecodeError(format!(
            "not a Pusher event: {}",
            e.to_string().chars().take(120).collect::<String>()
        ))
    })?;
    match envelope.event.as_str() {
        "pusher:subscribe" => {
            let d: SubscribeData = data_of(envelope.data, "pusher:subscribe")?;
            Ok(PusherRequest::Subscribe {
                channel: d.channel,
                auth: d.auth,
                channel_data: d.channel_data,
                recover: d.recover.map(|r| (r.offset, r.epoch)),
            })
        }
        "pusher:unsubscribe" => {
            let d: ChannelData = data_of(envelope.data, "pusher:unsubscribe")?;
            Ok(PusherRequest::Unsubscribe { channel: d.channel })
        }
        "pusher:ping" => Ok(PusherRequest::Ping),
        "pusher:pong" => Ok(PusherRequest::Pong),
        "pusher:signin" => {
            let d: SigninData = data_of(envelope.data, "pusher:signin")?;
            Ok(PusherRequest::Signin {
                user_data: d.user_data,
                auth: d.auth,
            })
        }
        event if event.starts_with("client-") => {
            let channel = envelope
                .channel
                .ok_or_else(|| PusherDecodeError(format!("{event} without a channel")))?;
            let data = envelope
                .data
                .map(|d| d.get().to_owned())
                .ok_or_else(|| PusherDecodeError(format!("{event} without data")))?;
            Ok(PusherRequest::ClientEvent {
                event: event.to_owned(),
                channel,
                data,
            })
        }
        other => Err(PusherDecodeError(format!(
            "unknown event {:?}",
            other.chars().take(64).collect::<String>()
        ))),
    }
}

/// `pusher:connection_established`.
pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> String {
    let data = json!({"socket_id": socket_id, "activity_timeout": activity_timeout_secs}).to_string();
    json!({"event": "pusher:connection_established", "data": data}).to_string()
}

/// `pusher_internal:subscription_succeeded`; `presence` is the member list of a
/// presence channel (`{"ids":[..],"hash":{..},"count":n}`).
pub fn subscription_succeeded(channel: &str, presence: Option<Value>) -> String {
    let data = match presence {
        Some(p) => json!({ "presence": p }).to_string(),
        None => "{}".to_owned(),
    };
    json!({"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": data}).to_string()
}

/// `pusher_internal:member_added`: `user_info_json` is the member's info as JSON text.
pub fn member_added(channel: &str, user_id: &str, user_info_json: &str) -> String {
    let info: Value = serde_json::from_str(user_info_json).unwrap_or(Value::Null);
    let data = json!({"user_id": user_id, "user_info": info}).to_string();
    json!({"event": "pusher_internal:member_added", "channel": channel, "data": data}).to_string()
}

/// `pusher_internal:member_removed`.
pub fn member_removed(channel: &str, user_id: &str) -> String {
    let data = json!({ "user_id": user_id }).to_string();
    json!({"event": "pusher_internal:member_removed", "channel": channel, "data": data}).to_string()
}

/// A presence subscription's `channel_data`: the member's user id (a string or
/// a number, read as a string) and its info as JSON text (`null` when absent).
pub fn presence_member(channel_data: &str) -> Result<(String, String), PusherDecodeError> {
    #[derive(Deserialize)]
    struct Member<'a> {
        user_id: Value,
        #[serde(borrow, default)]
        user_info: Option<&'a RawValue>,
    }
    let member: Member<'_> = serde_json::from_str(channel_data).map_err(|e| {
        PusherDecodeError(format!(
            "channel_data: {}",
            e.to_string().chars().take(120).collect::<String>()
        ))
    })?;
    let user = match member.user_id {
        Value::String(s) if !s.is_empty() => s,
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(PusherDecodeError(
                "channel_data: user_id must be a string or a number".into(),
            ))
        }
    };
    Ok((
        user,
        member
            .user_info
            .map_or_else(|| "null".to_owned(), |i| i.get().to_owned()),
    ))
}

/// `pusher:signin_success`, carrying the signed user data back.
pub fn signin_success(user_data: &str) -> String {
    let data = json!({ "user_data": user_data }).to_string();
    json!({"event": "pusher:signin_success", "data": data}).to_string()
}

/// The user id of a sign-in's `user_data` (its `id` member, a non-empty string).
pub fn signin_user(user_data: &str) -> Result<String, PusherDecodeError> {
    #[derive(Deserialize)]
    struct User {
        id: String,
    }
    match serde_json::from_str::<User>(user_data) {
        Ok(user) if !user.id.is_empty() => Ok(user.id),
        _ => Err(PusherDecodeError(
            "user_data must be a JSON object with a non-empty string id".into(),
        )),
    }
}

/// `pusher_internal:subscription_succeeded` answering a subscribe with `recover`
/// (PROTOCOL.md 20.6): its data says whether the missed events follow.
pub fn recovery_succeeded(channel: &str, recovered: bool) -> String {
    let data = json!({ "recovered": recovered }).to_string();
    json!({"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": data}).to_string()
}

/// `pusher:error`; `code` is none for a frame that is not a Pusher event (PROTOCOL.md 20.1).
pub fn error(code: Option<u16>, message: &str) -> String {
    json!({"event": "pusher:error", "data": {"code": code, "message": message}}).to_string()
}

/// `pusher:subscription_error` on a channel, which pusher-js and Laravel Echo hand
/// to the channel's error callbacks (`status` as an auth endpoint's would be).
pub fn subscription_error(channel: &str, message: &str, status: u16) -> String {
    let data = json!({"type": "AuthError", "error": message, "status": status});
    json!({"event": "pusher:subscription_error", "channel": channel, "data": data}).to_string()
}

/// `pusher:pong`.
pub fn pong() -> String {
    r#"{"event":"pusher:pong","data":{}}"#.to_owned()
}

/// `pusher:ping` (the server's keep-alive).
pub fn ping() -> String {
    r#"{"event":"pusher:ping","data":{}}"#.to_owned()
}

/// A channel event: `data` is sent as a JSON string (`data_text` is that string's
/// content: the event's data as JSON text, or a plain string as published).
pub fn channel_event(event: &str, channel: &str, data_text: &str, user_id: Option<&str>) -> String {
    positioned_event(event, channel, data_text, user_id, None)
}

/// A channel event with, on a channel with history, its `offset` and `epoch`
/// (PROTOCOL.md 20.6: an extension that Pusher's clients ignore).
fn positioned_event(
    event: &str,
    channel: &str,
    data_text: &str,
    user_id: Option<&str>,
    position: Option<(u64, &str)>,
) -> String {
    let mut frame = json!({"event": event, "channel": channel, "data": data_text});
    if let Some(user) = user_id {
        frame["user_id"] = json!(user);
    }
    if let Some((offset, epoch)) = position {
        frame["offset"] = json!(offset);
        frame["epoch"] = json!(epoch);
    }
    frame.to_string()
}

/// A socket id as Pusher clients expect it: two numbers joined by a dot.
pub fn socket_id(a: u32, b: u64) -> String {
    format!("{a}.{b}")
}

/// The two numbers of a socket id of Pusher's shape.
pub fn parse_socket_id(id: &str) -> Option<(u32, u64)> {
    let (a, b) = id.split_once('.')?;
    if !valid_socket_id(id) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The first number of this instance's socket ids: a hash of its node id, so a
/// socket id names its instance across a cluster (PROTOCOL.md 20.1).
pub fn instance_number(node_id: &str) -> u32 {
    // FNV-1a: stable across processes and builds, unlike the std hasher.
    let hash = node_id
        .bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    // Kept below 2^31 for clients that read it as a signed number.
    hash & 0x7fff_ffff
}

/// A shardcast publication as a Pusher channel event (PROTOCOL.md 20.3): data
/// `{"event": E, "data": D, ...}` is the event E (D sent as is if a string, as its
/// JSON text otherwise, `user_id` added when present); anything else is the event
/// `message` with the publication's JSON text as its data; `position` is its
/// place in the channel's history, if it has one (PROTOCOL.md 20.6). Returns the
/// frame's text and the publication's `socket_id`, the socket it must not reach.
pub fn publication_event(
    channel: &str,
    payload_json: &str,
    position: Option<(u64, &str)>,
) -> (String, Option<(u32, u64)>) {
    #[derive(Deserialize)]
    struct AsEvent<'a> {
        event: String,
        #[serde(borrow)]
        data: &'a RawValue,
        #[serde(default)]
        socket_id: Option<String>,
        #[serde(default)]
        user_id: Option<String>,
    }
    match serde_json::from_str::<AsEvent<'_>>(payload_json) {
        Ok(e) => {
            let text = match serde_json::from_str::<String>(e.data.get()) {
                Ok(s) => s,
                Err(_) => e.data.get().to_owned(),
            };
            let excluded = e.socket_id.as_deref().and_then(parse_socket_id);
            let frame = positioned_event(&e.event, channel, &text, e.user_id.as_deref(), position);
            (frame, excluded)
        }
        Err(_) => (positioned_event("message", channel, payload_json, None, position), None),
    }
}

/// Whether a socket id has Pusher's shape (`\d+\.\d+`), as the HTTP API checks
/// the `socket_id` it is given.
pub fn valid_socket_id(id: &str) -> bool {
    match id.split_once('.') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_events_decode_as_pusher_js_sends_them() {
        assert_eq!(
            decode_request(r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel":"private-x"}}"#),
            Ok(PusherRequest::Subscribe {
                channel: "private-x".into(),
                auth: Some("k:s".into()),
                channel_data: None,
                recover: None,
            })
        );
        // Some clients send data as a string of JSON.
        assert_eq!(
            decode_request(r#"{"event":"pusher:unsubscribe","data":"{\"channel\":\"x\"}"}"#),
            Ok(PusherRequest::Unsubscribe { channel: "x".into() })
        );
        assert_eq!(
            decode_request(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(PusherRequest::Ping)
        );
        match decode_request(r#"{"event":"client-typing","channel":"private-x","data":{"who":"me"}}"#) {
            Ok(PusherRequest::ClientEvent { event, channel, data }) => {
                assert_eq!(
                    (event.as_str(), channel.as_str(), data.as_str()),
                    ("client-typing", "private-x", r#"{"who":"me"}"#)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(decode_request(r#"{"event":"pusher:teleport"}"#).is_err());
        assert!(
            decode_request(r#"{"event":"client-x","data":1}"#).is_err(),
            "a client event needs a channel"
        );
        assert!(decode_request("not json").is_err());
    }

    #[test]
    fn server_frames_have_pushers_shapes() {
        let established: Value = serde_json::from_str(&connection_established("1.2", 120)).unwrap();
        assert_eq!(established["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"socket_id": "1.2", "activity_timeout": 120}));
        let event: Value = serde_json::from_str(&channel_event("ev", "ch", r#"{"a":1}"#, None)).unwrap();
        assert_eq!(event, json!({"event": "ev", "channel": "ch", "data": "{\"a\":1}"}));
        assert!(valid_socket_id("123.456") && !valid_socket_id("123") && !valid_socket_id("a.1"));
        assert_eq!(parse_socket_id("12.34"), Some((12, 34)));
    }

    #[test]
    fn publications_become_channel_events() {
        let (frame, excluded) = publication_event("ch", r#"{"event":"ev","data":"{\"a\":1}","socket_id":"1.2"}"#, None);
        let frame: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(frame, json!({"event": "ev", "channel": "ch", "data": "{\"a\":1}"}));
        assert_eq!(excluded, Some((1, 2)));
        let (frame, _) = publication_event("ch", r#"{"event":"ev","data":{"a":1},"user_id":"u"}"#, None);
        let frame: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            frame,
            json!({"event": "ev", "channel": "ch", "data": "{\"a\":1}", "user_id": "u"})
        );
        let (frame, excluded) = publication_event("ch", r#"{"price":3}"#, Some((4, "e1")));
        let frame: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            frame,
            json!({"event": "message", "channel": "ch", "data": "{\"price\":3}", "offset": 4, "epoch": "e1"})
        );
        assert_eq!(excluded, None);
    }
}
