//! Authentication against a real gateway (PROTOCOL.md section 18), with HS256 tokens
//! minted here: a connection token in the `Authorization` header and the welcome's
//! user, a refused token that stops the client without a retry, a 3-second token
//! that the client refreshes so that the connection outlives it, subscription
//! tokens (with `sub_refresh`), permission errors on subscribe, and `unsubscribed`
//! when a subscription token expires.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{wait_event, within, Gateway};
use futures_util::StreamExt;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use shardcast_client::proto::UnsubscribeCode;
use shardcast_client::{Client, ClientEvent, ConnectionState, Error, ErrorCode};

const SECRET: &str = "rust-client-test-secret";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// An HS256 token with these claims, signed with `secret`.
fn sign(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// A connection token for user 42 that lives `seconds`.
fn user_token(seconds: u64) -> String {
    sign(SECRET, json!({"sub": "42", "iat": now(), "exp": now() + seconds}))
}

/// A subscription token for user 42 and `channel` that lives `seconds`.
fn channel_token(channel: &str, seconds: u64) -> String {
    sign(
        SECRET,
        json!({"sub": "42", "channel": channel, "iat": now(), "exp": now() + seconds}),
    )
}

/// A gateway configuration where the `private` namespace needs a grant.
fn rules_file(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardcast-client-auth-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("rules.toml");
    std::fs::write(
        &path,
        "[namespaces.\"\"]\nsubscribe = \"anyone\"\n\n[namespaces.private]\nsubscribe = \"granted\"\n",
    )
    .expect("rules file");
    path
}

fn gateway_with_rules(test: &str) -> Gateway {
    let rules = rules_file(test);
    Gateway::start(&[
        "--token-hmac-secret",
        SECRET,
        "--token-leeway",
        "0s",
        "--config",
        rules.to_str().expect("utf-8"),
    ])
}

#[tokio::test]
async fn a_token_in_the_header_welcomes_its_user() {
    let gateway = Gateway::start(&["--token-hmac-secret", SECRET]);
    let exp = now() + 300;
    let client = Client::builder(gateway.ws_url())
        .token(sign(SECRET, json!({"sub": "42", "exp": exp})))
        .build()
        .expect("client");
    within("connect", client.wait_connected()).await.expect("connected");
    let welcome = client.welcome().expect("welcome");
    assert_eq!(welcome.user.as_deref(), Some("42"));
    assert_eq!(welcome.expires_at, Some(exp));
    let mut news = within("subscribe", client.subscribe("news")).await.expect("subscribed");
    within("publish", gateway.admin().publish("news", &1))
        .await
        .expect("publish");
    assert_eq!(within("message", news.next()).await.expect("open").data, json!(1));
    client.close().await;
}

#[tokio::test]
async fn a_refused_token_stops_the_client_without_a_retry() {
    let gateway = Gateway::start(&["--token-hmac-secret", SECRET]);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (client, mut events) = Client::builder(gateway.ws_url())
        .token_provider(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Some(sign("another-secret", json!({"sub": "42", "exp": now() + 300})))
        })
        .build_with_events()
        .expect("client");
    let refused = wait_event(&mut events, |e| matches!(e, ClientEvent::Unauthorized { .. })).await;
    assert!(
        matches!(&refused, ClientEvent::Unauthorized { code: 401, reason } if reason.contains("unauthorized")),
        "{refused:?}"
    );
    wait_event(&mut events, |e| matches!(e, ClientEvent::Closed { .. })).await;
    assert_eq!(client.state(), ConnectionState::Closed);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the refused token is not tried again");
    assert!(matches!(
        client.wait_connected().await,
        Err(Error::Unauthorized { code: 401, .. })
    ));
    assert!(matches!(
        client.stop_reason(),
        Some(Error::Unauthorized { code: 401, .. })
    ));
    assert!(matches!(
        client.subscribe("news").await,
        Err(Error::Unauthorized { .. })
    ));
}

#[tokio::test]
async fn a_three_second_token_is_refreshed_and_the_connection_outlives_it() {
    let gateway = Gateway::start(&["--token-hmac-secret", SECRET, "--token-leeway", "0s"]);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (client, mut events) = Client::builder(gateway.ws_url())
        .token_provider_async(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(Some(user_token(3))) }
        })
        .build_with_events()
        .expect("client");
    within("connect", client.wait_connected()).await.expect("connected");
    let mut news = within("subscribe", client.subscribe("news")).await.expect("subscribed");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut refreshed = 0;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(10), events.recv()).await {
        match event {
            ClientEvent::TokenRefreshed {
                channel: None,
                expires_at: Some(_),
            } => refreshed += 1,
            ClientEvent::Disconnected { .. } | ClientEvent::TokenRefreshFailed { .. } => {
                panic!("the connection should outlive its tokens: {event:?}")
            }
            _ => {}
        }
    }
    assert!(refreshed >= 3, "{refreshed} refreshes in 10 s of 3-second tokens");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        refreshed + 1,
        "one connect, the rest refreshes"
    );
    assert_eq!(client.state(), ConnectionState::Connected);
    within("publish", gateway.admin().publish("news", &"still here"))
        .await
        .expect("publish");
    assert_eq!(
        within("message", news.next()).await.expect("open").data,
        json!("still here")
    );
    client.close().await;
}

#[tokio::test]
async fn subscription_tokens_are_sent_and_refreshed() {
    let gateway = gateway_with_rules("subtoken");
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    let (client, mut events) = Client::builder(gateway.ws_url())
        .token(user_token(300))
        .subscription_token_provider(move |channel| {
            log.lock().expect("lock").push(channel.to_owned());
            channel.starts_with("private:").then(|| channel_token(channel, 3))
        })
        .build_with_events()
        .expect("client");
    let mut report = within("subscribe", client.subscribe("private:report"))
        .await
        .expect("subscribed");
    let _news = within("subscribe", client.subscribe("news")).await.expect("subscribed");
    // The 3-second token is replaced before it expires: the subscription goes on.
    let refreshed = wait_event(&mut events, |e| matches!(e, ClientEvent::TokenRefreshed { .. })).await;
    assert!(
        matches!(&refreshed, ClientEvent::TokenRefreshed { channel: Some(c), expires_at: Some(_) } if c == "private:report"),
        "{refreshed:?}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    within("publish", gateway.admin().publish("private:report", &7))
        .await
        .expect("publish");
    assert_eq!(within("message", report.next()).await.expect("open").data, json!(7));
    assert!(report.end_reason().is_none());
    let asked = asked.lock().expect("lock").clone();
    assert_eq!(&asked[..2], ["private:report", "news"]);
    assert!(asked[2..].iter().all(|c| c == "private:report"), "{asked:?}");
    client.close().await;
}

#[tokio::test]
async fn permission_errors_are_surfaced_on_subscribe() {
    let gateway = gateway_with_rules("denied");
    let client = Client::builder(gateway.ws_url())
        .token(user_token(300))
        .subscription_token_provider(|channel| match channel {
            "private:other" => Some(channel_token("private:elsewhere", 60)),
            "private:forged" => Some(sign(
                "not-the-secret",
                json!({"sub": "42", "channel": channel, "exp": now() + 60}),
            )),
            _ => None,
        })
        .build()
        .expect("client");
    for (channel, code) in [
        ("private:none", ErrorCode::PermissionDenied),
        ("private:other", ErrorCode::PermissionDenied),
        ("private:forged", ErrorCode::Unauthorized),
    ] {
        match within("subscribe", client.subscribe(channel)).await {
            Err(Error::PermissionDenied {
                channel: refused,
                code: got,
                ..
            }) => assert_eq!((refused.as_str(), got), (channel, code)),
            other => panic!("{channel}: expected a permission error, got {other:?}"),
        }
    }
    // The connection is fine: public channels still work.
    within("subscribe", client.subscribe("news")).await.expect("subscribed");
    assert_eq!(client.state(), ConnectionState::Connected);
    client.close().await;
}

#[tokio::test]
async fn an_expired_subscription_token_ends_the_subscription() {
    let gateway = gateway_with_rules("expiry");
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (client, mut events) = Client::builder(gateway.ws_url())
        .token(user_token(300))
        .subscription_token_provider_async(move |channel: String| {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                // The backend grants the first token and refuses to renew it.
                match call {
                    0 => Ok(Some(channel_token(&channel, 2))),
                    _ => Err("the backend no longer grants this channel"),
                }
            }
        })
        .build_with_events()
        .expect("client");
    let mut report = within("subscribe", client.subscribe("private:report"))
        .await
        .expect("subscribed");
    let failed = wait_event(&mut events, |e| matches!(e, ClientEvent::TokenRefreshFailed { .. })).await;
    assert!(
        matches!(&failed, ClientEvent::TokenRefreshFailed { channel: Some(c), reason }
            if c == "private:report" && reason.contains("no longer grants")),
        "{failed:?}"
    );
    let ended = wait_event(&mut events, |e| matches!(e, ClientEvent::Unsubscribed { .. })).await;
    assert!(
        matches!(&ended, ClientEvent::Unsubscribed { channel, code: UnsubscribeCode::TokenExpired, .. }
            if channel == "private:report"),
        "{ended:?}"
    );
    assert!(within("the stream to end", report.next()).await.is_none());
    assert!(matches!(
        report.end_reason(),
        Some(Error::Unsubscribed {
            code: UnsubscribeCode::TokenExpired,
            ..
        })
    ));
    assert_eq!(client.state(), ConnectionState::Connected, "only the subscription ends");
    client.close().await;
}
