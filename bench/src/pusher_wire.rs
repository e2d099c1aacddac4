//! The Pusher Channels protocol (version 7) as the harness speaks it, client side:
//! the frames a subscriber sends and reads on a public channel, and the signed
//! HTTP API request (`POST /apps/<id>/events`) the publisher sends. Used against
//! shardcast's Pusher endpoint and against Sockudo alike.

use std::borrow::Cow;

use md5::{Digest, Md5};
use ring::hmac;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::loadgen::{extract_timestamp, timestamp_after};

/// The event name the publisher gives every publication.
pub const EVENT_NAME: &str = "bench";

/// One Pusher app: what the subscribers connect with and the publisher signs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PusherApp {
    /// The app id (in the HTTP API's paths).
    pub id: String,
    /// The public key (in the WebSocket path and `auth_key`).
    pub key: String,
    /// The secret the API requests are signed with.
    pub secret: String,
}

impl PusherApp {
    /// The app every Pusher target of the harness is configured with.
    pub fn bench() -> PusherApp {
        PusherApp {
            id: "bench".into(),
            key: "bench-key".into(),
            secret: "bench-secret".into(),
        }
    }

    /// The WebSocket path a client upgrades on.
    pub fn ws_path(&self) -> String {
        format!("/app/{}?protocol=7&client=bench&version=1", self.key)
    }
}

/// What a server frame means to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PusherFrame {
    /// `pusher:connection_established`.
    Established,
    /// `pusher_internal:subscription_succeeded`.
    Subscribed,
    /// `pusher:ping`, to be answered with [`PONG`].
    Ping,
    /// `pusher:error` or `pusher:subscription_error`, with the frame's text.
    Error(String),
    /// A channel event (a publication), with the publisher's timestamp if found.
    Event(Option<u64>),
    /// Anything else from the server (`pusher:pong`, other `pusher*` events).
    Other,
}

/// The answer to a `pusher:ping`.
pub const PONG: &[u8] = br#"{"event":"pusher:pong","data":{}}"#;

/// The `pusher:subscribe` frame for public channel `channel`.
pub fn subscribe_frame(channel: &str) -> String {
    serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}}).to_string()
}

#[derive(Deserialize)]
struct FrameHead<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// What a server frame is. A channel event's `data` is a JSON string holding the
/// publisher's payload, so the timestamp is looked up inside that string.
pub fn classify(payload: &[u8]) -> PusherFrame {
    let Ok(head) = serde_json::from_slice::<FrameHead>(payload) else {
        return PusherFrame::Other;
    };
    match head.event.as_ref() {
        "pusher:connection_established" => PusherFrame::Established,
        "pusher_internal:subscription_succeeded" => PusherFrame::Subscribed,
        "pusher:ping" => PusherFrame::Ping,
        "pusher:error" | "pusher:subscription_error" => {
            PusherFrame::Error(String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned())
        }
        e if e.starts_with("pusher:") || e.starts_with("pusher_internal:") => PusherFrame::Other,
        _ => PusherFrame::Event(head.data.and_then(data_timestamp)),
    }
}

/// The `"t"` timestamp in an event's `data`: inside its string (escaped quotes,
/// read in place), or in an object sent as is.
fn data_timestamp(data: &RawValue) -> Option<u64> {
    let raw = data.get().as_bytes();
    if raw.first() != Some(&b'"') {
        return extract_timestamp(raw);
    }
    // `{\"t\":123,..}` as a JSON string: the digits after the escaped key.
    timestamp_after(raw, br#"\"t\":"#).or_else(|| {
        // Some other escaping of the key (`\u0022`): unescape the string and look again.
        let text: String = serde_json::from_str(data.get()).ok()?;
        extract_timestamp(text.as_bytes())
    })
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The body of one event on one channel: `{"name":..,"channel":..,"data":"<data>"}`,
/// `data` (the publisher's JSON payload) carried as a string as Pusher requires.
pub fn event_body(channel: &str, data: &str) -> String {
    serde_json::json!({"name": EVENT_NAME, "channel": channel, "data": data}).to_string()
}

/// `<key>:<HMAC-SHA256(secret, "<socket_id>:<channel>[:<channel_data>]")>` in
/// lowercase hex: what an app's backend signs for a private or presence subscription.
pub fn channel_auth(key: &str, secret: &str, socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    let signature = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        message.as_bytes(),
    );
    format!("{key}:{}", hex(signature.as_ref()))
}

/// The path and signed query of an HTTP API request: `<path>?auth_key=..&
/// auth_timestamp=..&auth_version=1.0&body_md5=..&auth_signature=..`, where the
/// signature is HMAC-SHA256(secret, "<METHOD>\n<path>\n<the other parameters, sorted>").
pub fn signed_request_target(app: &PusherApp, method: &str, path: &str, body: &[u8], timestamp: u64) -> String {
    // Already in key order: auth_key < auth_timestamp < auth_version < body_md5.
    let query = format!(
        "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={}",
        app.key,
        hex(&Md5::digest(body))
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, app.secret.as_bytes());
    let signature = hmac::sign(&key, format!("{method}\n{path}\n{query}").as_bytes());
    format!("{path}?{query}&auth_signature={}", hex(signature.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_signed_as_in_pushers_documentation() {
        // The worked example of Pusher's HTTP API reference (the gateway's verifier
        // test, src/pusher/signature.rs, checks the same vector).
        let app = PusherApp {
            id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
        };
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let target = signed_request_target(&app, "POST", "/apps/3/events", body, 1353088179);
        assert_eq!(
            target,
            "/apps/3/events?auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn event_frames_carry_the_publishers_timestamp_in_their_data_string() {
        let payload = r#"{"t":123456789,"n":4,"p":"xx"}"#;
        let body: serde_json::Value = serde_json::from_str(&event_body("fanout-0", payload)).unwrap();
        assert_eq!(body["data"], payload, "data travels as a string");
        assert_eq!(body["name"], EVENT_NAME);
        // As the servers send it, in either field order.
        let frame = serde_json::json!({"event": "bench", "channel": "fanout-0", "data": payload}).to_string();
        assert_eq!(classify(frame.as_bytes()), PusherFrame::Event(Some(123456789)));
        let reordered = format!(
            r#"{{"channel":"c","data":{},"event":"bench"}}"#,
            serde_json::json!(payload)
        );
        assert_eq!(classify(reordered.as_bytes()), PusherFrame::Event(Some(123456789)));
        let unicode = r#"{"event":"bench","channel":"c","data":"{\u0022t\u0022:42}"}"#;
        assert_eq!(classify(unicode.as_bytes()), PusherFrame::Event(Some(42)));
        let object = r#"{"event":"bench","channel":"c","data":{"t":7}}"#;
        assert_eq!(classify(object.as_bytes()), PusherFrame::Event(Some(7)));
        assert_eq!(
            classify(br#"{"event":"bench","channel":"c","data":"x"}"#),
            PusherFrame::Event(None)
        );
    }

    #[test]
    fn protocol_frames_are_told_apart() {
        let established =
            br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#;
        assert_eq!(classify(established), PusherFrame::Established);
        let succeeded = br#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}"#;
        assert_eq!(classify(succeeded), PusherFrame::Subscribed);
        assert_eq!(classify(br#"{"event":"pusher:ping","data":{}}"#), PusherFrame::Ping);
        assert!(matches!(
            classify(br#"{"event":"pusher:error","data":{"code":4009,"message":"no"}}"#),
            PusherFrame::Error(_)
        ));
        assert_eq!(classify(br#"{"event":"pusher:pong","data":{}}"#), PusherFrame::Other);
        assert_eq!(classify(b"not json"), PusherFrame::Other);
        let subscribe: serde_json::Value = serde_json::from_str(&subscribe_frame("idle-3")).unwrap();
        assert_eq!(subscribe["event"], "pusher:subscribe");
        assert_eq!(subscribe["data"]["channel"], "idle-3");
        assert_eq!(
            PusherApp::bench().ws_path(),
            "/app/bench-key?protocol=7&client=bench&version=1"
        );
    }
}
