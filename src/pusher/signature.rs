//! The Pusher Channels signatures: a private or presence channel's subscription
//! `auth` (`<key>:HMAC-SHA256(secret, "<socket_id>:<channel>[:<channel_data>]")`),
//! a user sign-in's `auth`, and the signed HTTP API request (`auth_key`,
//! `auth_timestamp`, `auth_version`, `body_md5`, `auth_signature`). Every
//! comparison is constant-time; nothing here logs a secret or a signature.

use md5::{Digest, Md5};
use ring::hmac;
use subtle::ConstantTimeEq;

use super::apps::PusherApp;

/// How far an API request's `auth_timestamp` may be from now (Pusher's rule).
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 of `message` under `secret`, in lowercase hex.
pub fn sign(secret: &str, message: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hex(hmac::sign(&key, message.as_bytes()).as_ref())
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The `auth` a backend signs for a subscription to `channel` by `socket_id`
/// (`channel_data` for presence channels).
pub fn channel_auth(app: &PusherApp, socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    format!("{}:{}", app.key, sign(&app.secret, &message))
}

/// Whether `auth` is the app's signature of this subscription.
pub fn verify_channel_auth(
    app: &PusherApp,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    same(auth, &channel_auth(app, socket_id, channel, channel_data))
}

/// Whether `auth` is the app's signature of a user sign-in (`pusher:signin`):
/// `<key>:HMAC-SHA256(secret, "<socket_id>::user::<user_data>")`.
pub fn verify_signin(app: &PusherApp, socket_id: &str, user_data: &str, auth: &str) -> bool {
    let expected = format!(
        "{}:{}",
        app.key,
        sign(&app.secret, &format!("{socket_id}::user::{user_data}"))
    );
    same(auth, &expected)
}

/// Why a signed API request was refused (each counted under its own label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiAuthError {
    /// A required parameter is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// `auth_key` is not this app's key.
    #[error("unknown auth_key")]
    WrongKey,
    /// `auth_version` is not 1.0.
    #[error("unsupported auth_version")]
    Version,
    /// `auth_timestamp` is not a number within 600 s of now.
    #[error("auth_timestamp too far from now")]
    Timestamp,
    /// `body_md5` does not match the body.
    #[error("body_md5 does not match the body")]
    BodyMd5,
    /// `auth_signature` does not match.
    #[error("invalid auth_signature")]
    Signature,
}

impl ApiAuthError {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ApiAuthError::Missing(_) => "missing",
            ApiAuthError::WrongKey => "wrong_key",
            ApiAuthError::Version => "version",
            ApiAuthError::Timestamp => "timestamp",
            ApiAuthError::BodyMd5 => "body_md5",
            ApiAuthError::Signature => "signature",
        }
    }
}

/// The string a Pusher API request signs: method, path and the sorted query
/// parameters other than `auth_signature` (keys lowercased), joined by newlines.
pub fn string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    sorted.sort();
    let query: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}\n{}\n{}", method.to_ascii_uppercase(), path, query.join("&"))
}

/// Checks a signed API request: its key, version, timestamp (against `now`, Unix
/// seconds), body digest and signature.
pub fn verify_api_request(
    app: &PusherApp,
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
    now: u64,
) -> Result<(), ApiAuthError> {
    let param = |name: &'static str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or(ApiAuthError::Missing(name))
    };
    if !same(param("auth_key")?, &app.key) {
        return Err(ApiAuthError::WrongKey);
    }
    if param("auth_version")? != "1.0" {
        return Err(ApiAuthError::Version);
    }
    let timestamp: u64 = param("auth_timestamp")?.parse().map_err(|_| ApiAuthError::Timestamp)?;
    if timestamp.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
        return Err(ApiAuthError::Timestamp);
    }
    if !body.is_empty() {
        let digest = hex(&Md5::digest(body));
        if !same(param("body_md5")?, &digest) {
            return Err(ApiAuthError::BodyMd5);
        }
    }
    let expected = sign(&app.secret, &string_to_sign(method, path, params));
    if !same(param("auth_signature")?, &expected) {
        return Err(ApiAuthError::Signature);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key and secret of the examples in Pusher's own documentation.
    fn docs_app() -> PusherApp {
        PusherApp::new("3", "278d425bdf160c739803", "7ad3773142a6692b25b8")
    }

    #[test]
    fn a_private_channel_auth_matches_pushers_example() {
        let auth = channel_auth(&docs_app(), "1234.1234", "private-foobar", None);
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(verify_channel_auth(
            &docs_app(),
            "1234.1234",
            "private-foobar",
            None,
            &auth
        ));
        assert!(!verify_channel_auth(
            &docs_app(),
            "1234.1235",
            "private-foobar",
            None,
            &auth
        ));
        assert!(!verify_channel_auth(
            &docs_app(),
            "1234.1234",
            "private-foobar",
            None,
            "x"
        ));
    }

    /// The expected value is what the official `pusher` npm library (5.x)
    /// `authorizeChannel` returns for the same input.
    #[test]
    fn a_presence_channel_auth_signs_the_channel_data() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let auth = channel_auth(&docs_app(), "1234.1234", "presence-foobar", Some(data));
        assert_eq!(
            auth,
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
        assert!(!verify_channel_auth(
            &docs_app(),
            "1234.1234",
            "presence-foobar",
            None,
            &auth
        ));
    }

    #[test]
    fn an_api_request_is_checked_part_by_part() {
        let app = docs_app();
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = hex(&Md5::digest(body));
        assert_eq!(md5, "ec365a775a4cd0599faeb73354201b6f");
        let mut params: Vec<(String, String)> = [
            ("auth_key", "278d425bdf160c739803"),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", md5.as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let signature = sign(&app.secret, &string_to_sign("POST", "/apps/3/events", &params));
        assert_eq!(
            signature,
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        params.push(("auth_signature".into(), signature));
        let now = 1_353_088_179;
        assert_eq!(
            verify_api_request(&app, "POST", "/apps/3/events", &params, body, now),
            Ok(())
        );
        assert_eq!(
            verify_api_request(&app, "POST", "/apps/3/events", &params, body, now + 601),
            Err(ApiAuthError::Timestamp)
        );
        assert_eq!(
            verify_api_request(&app, "POST", "/apps/3/events", &params, b"{}", now),
            Err(ApiAuthError::BodyMd5)
        );
        assert_eq!(
            verify_api_request(&app, "POST", "/apps/4/events", &params, body, now),
            Err(ApiAuthError::Signature)
        );
    }
}
