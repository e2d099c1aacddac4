//! Client authentication against the real binary (PROTOCOL.md section 18), with
//! tokens minted by PyJWT (a library nobody here wrote) from keys generated in the
//! test: HS256, RS256 and ES256 accepted, by `connect` frame and by header; every
//! refusal with its documented code and its metric; channel-escape attempts;
//! subscription tokens; refresh over the open socket and expiry without one.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use shardcast_proto::{ClientFrame, Encoding, ErrorCode, ServerFrame, UnsubscribeCode};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "a-test-secret-of-reasonable-length";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// Keys made for this test run: an RSA and an EC key pair, as PEM files.
struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn generate() -> Keys {
        let dir = std::env::temp_dir().join(format!("shardcast-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key dir");
        let script = r#"
import sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa, ec
d = sys.argv[1]
for name, key in (("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                  ("ec", ec.generate_private_key(ec.SECP256R1()))):
    open(f"{d}/{name}.key", "wb").write(key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    open(f"{d}/{name}.pub", "wb").write(key.public_key().public_bytes(serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo))
"#;
        python(script, &[dir.to_str().expect("utf-8 path")]);
        Keys { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("utf-8 path").to_owned()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A token signed by PyJWT: `key` is the HMAC secret, or a private-key PEM file.
fn mint(alg: &str, key: &str, claims: Value) -> String {
    let script = r#"
import sys, json, jwt
alg, key, claims = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if alg == "HS256-with-public-key":
    # PyJWT itself refuses to HMAC with a PEM key, so the attack is made by hand.
    import base64, hashlib, hmac
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims).encode())
    print((signing + b"." + b64(hmac.new(open(key, "rb").read(), signing, hashlib.sha256).digest())).decode())
    sys.exit(0)
if alg == "none":
    key = None
elif not alg.startswith("HS") or key.endswith(".key") or key.endswith(".pub"):
    key = open(key, "rb").read()
print(jwt.encode(claims, key, algorithm=alg))
"#;
    python(script, &[alg, key, &claims.to_string()])
}

fn hs(claims: Value) -> String {
    mint("HS256", SECRET, claims)
}

/// A WebSocket whose welcome is not read yet, optionally with an Authorization header.
async fn open(gw: &Gateway, bearer: Option<&str>) -> Client {
    let mut req = format!("ws://{}/ws", gw.ws).into_client_request().expect("request");
    if let Some(token) = bearer {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().expect("header"));
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("in time")
        .expect("upgrade");
    Client {
        ws,
        encoding: Encoding::Json,
        shard: 0,
        node: String::new(),
    }
}

/// Sends `connect` and returns the welcome that answers it (or panics).
async fn connect(c: &mut Client, token: &str) -> (Option<String>, Option<u64>) {
    c.send(&ClientFrame::Connect {
        id: Some(1),
        token: token.into(),
        name: Some("auth-test".into()),
        version: None,
    })
    .await;
    match c.recv().await {
        ServerFrame::Welcome {
            id: Some(1),
            user,
            expires_at,
            ..
        } => (user, expires_at),
        other => panic!("expected the welcome answering connect, got {other:?}"),
    }
}

async fn subscribe(c: &mut Client, id: u64, channel: &str, token: Option<String>) -> ServerFrame {
    c.send(&ClientFrame::Subscribe {
        id: Some(id),
        channel: channel.into(),
        token,
        latest: false,
        recover: None,
    })
    .await;
    c.recv().await
}

/// A WebSocket upgrade by hand, for the HTTP answers a client library hides.
async fn upgrade_request(gw: &Gateway, path: &str, authorization: Option<&str>) -> (u16, String) {
    let mut headers = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    if let Some(value) = authorization {
        headers.push(("Authorization", value));
    }
    http(gw.ws, "GET", path, None, &headers).await
}

/// Connects with `token` until a welcome answers (a refused attempt is retried),
/// within the harness's wait.
async fn welcomed_soon(gw: &Gateway, token: &str, what: &str) {
    let start = Instant::now();
    loop {
        let mut c = open(gw, None).await;
        c.send(&ClientFrame::Connect {
            id: Some(1),
            token: token.into(),
            name: None,
            version: None,
        })
        .await;
        let next = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("an answer in time");
        if matches!(next, Some(Ok(Message::Text(_)))) {
            return;
        }
        assert!(start.elapsed() < WAIT, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two ready gateways on one Redis, verifying tokens with the test secret, with `extra`.
async fn two_on_one_redis(redis: &RedisServer, extra: &[&str]) -> [Gateway; 2] {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str(), "--token-hmac-secret", SECRET];
    args.extend_from_slice(extra);
    let gws = [Gateway::start(&args), Gateway::start(&args)];
    for gw in &gws {
        gw.wait_ready(200).await;
    }
    gws
}

/// Subscribes and asserts the refusal code.
async fn expect_refused(c: &mut Client, id: u64, channel: &str, token: Option<String>, code: ErrorCode) {
    let reply = subscribe(c, id, channel, token).await;
    assert!(denied(&reply, code), "{channel}: expected {code:?}, got {reply:?}");
}

fn denied(frame: &ServerFrame, code: ErrorCode) -> bool {
    matches!(frame, ServerFrame::Error { code: c, .. } if *c == code)
}

/// The channel rules the tests use, in a config file that lives as long as this.
struct RulesFile {
    dir: PathBuf,
}

impl RulesFile {
    fn new(name: &str) -> RulesFile {
        let dir = std::env::temp_dir().join(format!("shardcast-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("rules.toml"),
            r#"
allow-client-publish = true

[namespaces.""]
subscribe = "anyone"

[namespaces.team]
subscribe = "granted"
publish = "granted"

[namespaces.notifications]
subscribe = "granted"
user_limited = true

[namespaces.private]
subscribe = "granted"
"#,
        )
        .expect("rules file");
        RulesFile { dir }
    }

    fn path(&self) -> String {
        self.dir.join("rules.toml").to_str().expect("utf-8").to_owned()
    }

    /// A gateway with these rules, the test secret, no clock leeway, and `extra`.
    fn gateway(&self, extra: &[&str]) -> Gateway {
        let path = self.path();
        let mut args = vec!["--token-hmac-secret", SECRET, "--token-leeway", "0s", "--config", &path];
        args.extend_from_slice(extra);
        Gateway::start(&args)
    }
}

impl Drop for RulesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_by_connect_frame_and_by_header() {
    let gw = Gateway::start(&["--token-hmac-secret", SECRET]);
    let exp = now() + 300;
    let token = hs(json!({"sub": "42", "exp": exp}));

    let mut c = open(&gw, None).await;
    let (user, expires_at) = connect(&mut c, &token).await;
    assert_eq!((user.as_deref(), expires_at), (Some("42"), Some(exp)));
    assert_eq!(subscribe(&mut c, 2, "news", None).await, ServerFrame::ack(Some(2)));

    let mut h = open(&gw, Some(&token)).await;
    match h.recv().await {
        ServerFrame::Welcome { id: None, user, .. } => assert_eq!(user.as_deref(), Some("42")),
        other => panic!("expected a welcome at once, got {other:?}"),
    }
    // A connection authenticated by header cannot `connect` again.
    h.send(&ClientFrame::Connect {
        id: Some(9),
        token: token.clone(),
        name: None,
        version: None,
    })
    .await;
    assert!(denied(&h.recv().await, ErrorCode::BadRequest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_with_public_keys() {
    let keys = Keys::generate();
    for (alg, name) in [("RS256", "rsa"), ("PS256", "rsa"), ("ES256", "ec")] {
        let public = keys.path(&format!("{name}.pub"));
        let gw = Gateway::start(&["--token-public-key", &public, "--token-algorithms", alg]);
        let token = mint(
            alg,
            &keys.path(&format!("{name}.key")),
            json!({"sub": "u-7", "exp": now() + 60}),
        );
        let mut c = open(&gw, None).await;
        assert_eq!(connect(&mut c, &token).await.0.as_deref(), Some("u-7"), "{alg}");
    }
}

/// Connects with `token` in a connect frame and returns the close code.
async fn refused_code(gw: &Gateway, token: &str) -> u16 {
    let mut c = open(gw, None).await;
    c.send(&ClientFrame::Connect {
        id: Some(1),
        token: token.into(),
        name: None,
        version: None,
    })
    .await;
    c.expect_close().await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_unusable_tokens_are_refused_with_their_codes() {
    let keys = Keys::generate();
    let gw = Gateway::start(&[
        "--token-hmac-secret",
        SECRET,
        "--token-audience",
        "shardcast",
        "--token-issuer",
        "https://issuer.test",
        "--token-leeway",
        "0s",
        "--max-message-bytes",
        "200000",
    ]);
    let good = json!({"sub": "42", "exp": now() + 60, "aud": "shardcast", "iss": "https://issuer.test"});
    let with = |patch: Value| {
        let mut claims = good.clone();
        for (k, v) in patch.as_object().expect("object") {
            claims[k] = v.clone();
        }
        claims
    };
    let mut c = open(&gw, None).await;
    connect(&mut c, &hs(good.clone())).await;

    let bad_signature = mint("HS256", "another-secret-entirely-wrong", good.clone());
    let cases: Vec<(&str, String, u16)> = vec![
        ("bad signature", bad_signature, 4003),
        ("expired", hs(with(json!({"exp": now() - 30}))), 4002),
        ("not yet valid", hs(with(json!({"nbf": now() + 600}))), 4003),
        ("issued in the future", hs(with(json!({"iat": now() + 600}))), 4003),
        ("alg none", mint("none", "", good.clone()), 4003),
        ("wrong aud", hs(with(json!({"aud": "someone-else"}))), 4003),
        ("wrong iss", hs(with(json!({"iss": "https://evil.test"}))), 4003),
        ("garbage", "not.a.token".into(), 4003),
        ("100 KB", "x".repeat(100 * 1024), 4003),
    ];
    for (name, token, code) in &cases {
        assert_eq!(refused_code(&gw, token).await, *code, "{name}");
    }
    // HS256 "signed" with the RSA public key, against a gateway holding only that key.
    let rsa_gw = Gateway::start(&["--token-public-key", &keys.path("rsa.pub")]);
    let confused = mint(
        "HS256-with-public-key",
        &keys.path("rsa.pub"),
        json!({"sub": "42", "exp": now() + 60}),
    );
    assert_eq!(
        refused_code(&rsa_gw, &confused).await,
        4003,
        "HS256 with the RSA public key"
    );
    assert!(rsa_gw.metric("shardcast_auth_refusals_total{reason=\"invalid\"}").await >= 1.0);

    // Header tokens are refused before the upgrade, with 401.
    let bearer = format!("Bearer {}", cases[0].1);
    let (status, body) = upgrade_request(&gw, "/ws", Some(&bearer)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");
    // A token in the query string is refused, saying why.
    let (status, body) = upgrade_request(&gw, "/ws?token=abc", None).await;
    assert_eq!(status, 400);
    assert!(body.contains("access logs"), "{body}");

    let expired = gw.metric("shardcast_auth_refusals_total{reason=\"expired\"}").await;
    let invalid = gw.metric("shardcast_auth_refusals_total{reason=\"invalid\"}").await;
    let query = gw.metric("shardcast_auth_refusals_total{reason=\"query_token\"}").await;
    assert_eq!((expired, query), (1.0, 1.0));
    assert!(invalid >= 9.0, "invalid refusals counted: {invalid}");
    // Nothing of any token reached the logs.
    let logs = gw.logs.lock().expect("logs").join("\n");
    assert!(!logs.contains(&hs(good.clone())[..40]), "a token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_where_one_is_required() {
    let gw = Gateway::start(&["--token-hmac-secret", SECRET, "--handshake-timeout", "1s"]);
    let mut c = open(&gw, None).await;
    // No welcome before connect; a request before it is refused.
    c.send(&ClientFrame::Ping { id: Some(3) }).await;
    assert!(denied(&c.recv().await, ErrorCode::Unauthorized));
    let started = Instant::now();
    assert_eq!(c.expect_close().await.0, 4003);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(gw.metric("shardcast_auth_refusals_total{reason=\"missing\"}").await >= 2.0);
    // Anonymous stays possible where the operator allows it, as for version 1 clients.
    let open_gw = Gateway::start(&["--token-hmac-secret", SECRET, "--allow-anonymous", "true"]);
    let mut anon = open_gw.connect(Encoding::Json).await;
    anon.subscribe(1, "news").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_escapes_are_denied() {
    let rules = RulesFile::new("rules");
    let gw = rules.gateway(&[]);
    let token = hs(json!({"sub": "42", "exp": now() + 120, "channels": ["team:7", "team:8.*"], "publish": ["team:7"]}));
    let mut c = open(&gw, None).await;
    connect(&mut c, &token).await;

    assert_eq!(
        subscribe(&mut c, 1, "notifications:#42", None).await,
        ServerFrame::ack(Some(1))
    );
    expect_refused(&mut c, 2, "notifications:#43", None, ErrorCode::PermissionDenied).await;
    expect_refused(&mut c, 3, "notifications:#42#x", None, ErrorCode::PermissionDenied).await;
    assert_eq!(subscribe(&mut c, 4, "team:7", None).await, ServerFrame::ack(Some(4)));
    assert!(
        denied(
            &subscribe(&mut c, 5, "team:70", None).await,
            ErrorCode::PermissionDenied
        ),
        "no prefix match"
    );
    expect_refused(&mut c, 6, "team:7x", None, ErrorCode::PermissionDenied).await;
    assert_eq!(
        subscribe(&mut c, 7, "team:8.chat", None).await,
        ServerFrame::ack(Some(7))
    );
    expect_refused(&mut c, 8, "team:8.", None, ErrorCode::PermissionDenied).await;
    expect_refused(&mut c, 9, "private:report", None, ErrorCode::PermissionDenied).await;

    // Subscription tokens: for this channel and user only, and not expired.
    let sub_token = |sub: &str, channel: &str, exp: u64| hs(json!({"sub": sub, "channel": channel, "exp": exp}));
    let other_channel = sub_token("42", "private:other", now() + 60);
    expect_refused(
        &mut c,
        10,
        "private:report",
        Some(other_channel),
        ErrorCode::PermissionDenied,
    )
    .await;
    let other_user = sub_token("43", "private:report", now() + 60);
    expect_refused(
        &mut c,
        11,
        "private:report",
        Some(other_user),
        ErrorCode::PermissionDenied,
    )
    .await;
    let expired = sub_token("42", "private:report", now() - 60);
    expect_refused(&mut c, 12, "private:report", Some(expired), ErrorCode::Unauthorized).await;
    let good = sub_token("42", "private:report", now() + 60);
    assert_eq!(
        subscribe(&mut c, 13, "private:report", Some(good)).await,
        ServerFrame::ack(Some(13))
    );

    // Client publish needs the claim.
    for (id, channel, ok) in [(20, "team:7", true), (21, "team:8.chat", false)] {
        c.send(&ClientFrame::Publish {
            id: Some(id),
            channel: channel.into(),
            data: json!("hi"),
            idempotency_key: None,
        })
        .await;
        let reply = loop {
            match c.recv().await {
                ServerFrame::Message { .. } => continue,
                other => break other,
            }
        };
        assert_eq!(!denied(&reply, ErrorCode::PermissionDenied), ok, "{channel}: {reply:?}");
    }
    assert!(
        gw.metric("shardcast_auth_refusals_total{reason=\"permission_denied\"}")
            .await
            >= 9.0
    );

    // An anonymous connection never owns a user channel.
    let anon_gw = Gateway::start(&["--config", &rules.path()]);
    let mut anon = anon_gw.connect(Encoding::Json).await;
    expect_refused(&mut anon, 1, "notifications:#", None, ErrorCode::PermissionDenied).await;
    expect_refused(&mut anon, 2, "team:7", None, ErrorCode::PermissionDenied).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_keeps_the_connection_and_expiry_closes_it() {
    let rules = RulesFile::new("refresh");
    let gw = rules.gateway(&[]);
    // Minted in-process (the jsonwebtoken crate), so a busy machine's slow Python
    // start cannot eat a 3-second token's life before it is even sent.
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let short = |channels: Value| {
        let claims = json!({"sub": "42", "exp": now() + 3, "channels": channels});
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("signs")
    };
    let mut c = open(&gw, None).await;
    connect(&mut c, &short(json!(["team:7"]))).await;
    assert_eq!(subscribe(&mut c, 1, "team:7", None).await, ServerFrame::ack(Some(1)));
    // Refreshed every 1.5 s with a new 3-second token, it lives past 10 s.
    let started = Instant::now();
    let mut id = 10;
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        id += 1;
        c.send(&ClientFrame::Refresh {
            id: Some(id),
            token: short(json!(["team:7"])),
        })
        .await;
        match c.recv().await {
            ServerFrame::Ack {
                id: Some(got),
                expires_at: Some(exp),
                ..
            } => {
                assert_eq!(got, id);
                assert!(exp > now());
            }
            other => panic!("refresh not acknowledged: {other:?}"),
        }
    }
    // A refresh whose grants no longer cover a subscription ends that subscription.
    c.send(&ClientFrame::Refresh {
        id: Some(99),
        token: short(json!([])),
    })
    .await;
    match c.recv().await {
        ServerFrame::Unsubscribed { channel, code, .. } => {
            assert_eq!((channel.as_str(), code), ("team:7", UnsubscribeCode::PermissionDenied))
        }
        other => panic!("expected unsubscribed, got {other:?}"),
    }
    assert!(matches!(c.recv().await, ServerFrame::Ack { id: Some(99), .. }));
    // Not refreshed again: closed with 4002 once the token expires.
    let (code, _) = c.expect_close().await;
    assert_eq!(code, 4002);
    // A refresh for another user is refused with 4003.
    let mut d = open(&gw, None).await;
    connect(&mut d, &short(json!([]))).await;
    d.send(&ClientFrame::Refresh {
        id: Some(2),
        token: hs(json!({"sub": "43", "exp": now() + 60})),
    })
    .await;
    assert_eq!(d.expect_close().await.0, 4003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_token_expiry_ends_that_subscription_only() {
    let rules = RulesFile::new("subexp");
    let gw = rules.gateway(&[]);
    let mut c = open(&gw, None).await;
    connect(&mut c, &hs(json!({"sub": "42", "exp": now() + 120}))).await;
    let sub_token = hs(json!({"sub": "42", "channel": "private:a", "exp": now() + 2}));
    assert_eq!(
        subscribe(&mut c, 1, "private:a", Some(sub_token)).await,
        ServerFrame::ack(Some(1))
    );
    assert_eq!(subscribe(&mut c, 2, "news", None).await, ServerFrame::ack(Some(2)));
    match c.recv().await {
        ServerFrame::Unsubscribed { channel, code, .. } => {
            assert_eq!((channel.as_str(), code), ("private:a", UnsubscribeCode::TokenExpired))
        }
        other => panic!("expected unsubscribed, got {other:?}"),
    }
    // The connection and its other subscription go on.
    gw.publish("news", json!(1)).await;
    assert!(matches!(c.recv().await, ServerFrame::Message { ref channel, .. } if channel == "news"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_disconnect_and_unsubscribe_a_user_on_every_instance() {
    let redis = RedisServer::start();
    let gws = two_on_one_redis(&redis, &["--api-key", "old-key,new-key"]).await;
    let token = |sub: &str| hs(json!({"sub": sub, "exp": now() + 120}));
    let mut users = Vec::new();
    for gw in &gws {
        for sub in ["42", "7"] {
            let mut c = open(gw, None).await;
            connect(&mut c, &token(sub)).await;
            assert_eq!(subscribe(&mut c, 2, "news", None).await, ServerFrame::ack(Some(2)));
            users.push((sub, c));
        }
    }
    let post = |key: &'static str, path: &'static str, body: Value| {
        let admin = gws[0].admin;
        async move {
            let auth = format!("Bearer {key}");
            http(
                admin,
                "POST",
                path,
                Some(&body.to_string()),
                &[("Authorization", &auth)],
            )
            .await
        }
    };
    // A wrong key is refused; either configured key works (rotation).
    assert_eq!(post("nope", "/api/disconnect", json!({"user": "42"})).await.0, 401);
    let (status, body) = post("old-key", "/api/unsubscribe", json!({"user": "7", "channel": "news"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["unsubscribed"], 1);
    let (status, body) = post("new-key", "/api/disconnect", json!({"user": "42"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["disconnected"], 1);
    for (sub, c) in &mut users {
        if *sub == "42" {
            assert_eq!(c.expect_close().await.0, 4004, "user 42 on every instance");
        } else {
            match c.recv().await {
                ServerFrame::Unsubscribed { channel, code, .. } => {
                    assert_eq!((channel.as_str(), code), ("news", UnsubscribeCode::PermissionDenied))
                }
                other => panic!("expected unsubscribed, got {other:?}"),
            }
        }
    }
    assert_eq!(post("new-key", "/api/disconnect", json!({"user": ""})).await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_holds_at_most_the_configured_connections() {
    let gw = Gateway::start(&["--token-hmac-secret", SECRET, "--max-connections-per-user", "2"]);
    let token = hs(json!({"sub": "42", "exp": now() + 120}));
    let mut first = open(&gw, None).await;
    connect(&mut first, &token).await;
    let mut second = open(&gw, Some(&token)).await;
    assert!(matches!(second.recv().await, ServerFrame::Welcome { .. }));
    // The third, by frame or by header, is refused; another user is not affected.
    assert_eq!(refused_code(&gw, &token).await, 4005);
    assert_eq!(
        upgrade_request(&gw, "/ws", Some(&format!("Bearer {token}"))).await.0,
        429
    );
    let mut other = open(&gw, None).await;
    connect(&mut other, &hs(json!({"sub": "7", "exp": now() + 120}))).await;
    assert!(
        gw.metric("shardcast_auth_refusals_total{reason=\"too_many_connections\"}")
            .await
            >= 2.0
    );
    // A closed connection gives its place back.
    first.close().await;
    welcomed_soon(&gw, &token, "the place was never given back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_holds_across_instances_on_one_redis() {
    let redis = RedisServer::start();
    let extra = [
        "--max-connections-per-user",
        "2",
        "--heartbeat-interval",
        "300ms",
        "--instance-ttl",
        "1s",
    ];
    let mut gws = two_on_one_redis(&redis, &extra).await;
    let token = hs(json!({"sub": "42", "exp": now() + 120}));
    let mut on_a = open(&gws[0], None).await;
    connect(&mut on_a, &token).await;
    let mut on_b = open(&gws[1], None).await;
    connect(&mut on_b, &token).await;
    // The third, on either instance, is refused: the count is the cluster's.
    assert_eq!(refused_code(&gws[0], &token).await, 4005);
    assert_eq!(
        upgrade_request(&gws[1], "/ws", Some(&format!("Bearer {token}")))
            .await
            .0,
        429
    );
    // A killed instance's connections stop counting once its heartbeat expires.
    gws[1].signal(libc::SIGKILL);
    let _ = gws[1].wait_exit(WAIT);
    drop(on_b);
    welcomed_soon(&gws[0], &token, "the dead instance's place was never freed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_beyond_the_rate_are_refused_per_connection() {
    let gw = Gateway::start(&["--subscribe-rate", "3"]);
    let mut c = gw.connect(Encoding::Json).await;
    for id in 1..=3 {
        assert_eq!(
            subscribe(&mut c, id, &format!("room-{id}"), None).await,
            ServerFrame::ack(Some(id))
        );
    }
    expect_refused(&mut c, 4, "room-4", None, ErrorCode::RateLimited).await;
    expect_refused(&mut c, 5, "room-5", None, ErrorCode::RateLimited).await;
    // Another connection has its own budget; this one's comes back after a second.
    let mut other = gw.connect(Encoding::Json).await;
    assert_eq!(
        subscribe(&mut other, 1, "room-4", None).await,
        ServerFrame::ack(Some(1))
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(subscribe(&mut c, 6, "room-6", None).await, ServerFrame::ack(Some(6)));
    assert_eq!(
        gw.metric("shardcast_auth_refusals_total{reason=\"rate_limited\"}")
            .await,
        2.0
    );
}
