//! The Pusher HTTP API (PROTOCOL.md 20.5) driven by Pusher's own server
//! libraries: the `pusher` npm package and pusher-http-python publish events,
//! singly and in batches, to native subscribers; requests with a tampered
//! signature, an old timestamp or a wrong body_md5 are refused with 401 and
//! counted; the event reaches subscribers as `{"event", "data"}`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::{json, Value};
use shardcast_proto::{Encoding, ServerFrame};

const APP_ID: &str = "3";
const KEY: &str = "278d425bdf160c739803";
const SECRET: &str = "7ad3773142a6692b25b8";

fn pusher_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pusher")
}

/// A gateway with one Pusher app, from a config file.
fn gateway(prefix: &str) -> Gateway {
    let dir = std::env::temp_dir().join(format!("shardcast-pusher-{}-{prefix}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gw.toml");
    std::fs::write(
        &path,
        format!("[pusher.apps.\"{APP_ID}\"]\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\nchannel_prefix = \"{prefix}\"\n"),
    )
    .expect("config");
    Gateway::start(&["--config", path.to_str().expect("utf-8")])
}

/// Runs tests/pusher/trigger.mjs (the `pusher` npm package); returns the status it printed.
fn node_trigger(gw: &Gateway, secret: &str, mode: &str, args: Value) -> String {
    let out = Command::new("node")
        .current_dir(pusher_dir())
        .arg("trigger.mjs")
        .args(["127.0.0.1", &gw.admin.port().to_string(), APP_ID, KEY, secret, mode])
        .arg(args.to_string())
        .output()
        .expect("node (tests/run.sh runs npm ci in tests/pusher)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// pusher-http-python's trigger; returns "ok" or the error it raised.
fn python_trigger(gw: &Gateway, channel: &str, event: &str, data: &str) -> String {
    python(
        r#"
import sys, pusher
host, port, app, key, secret, channel, event, data = sys.argv[1:]
client = pusher.Pusher(app_id=app, key=key, secret=secret, host=host, port=int(port), ssl=False)
try:
    client.trigger([channel], event, data)
    print("ok")
except Exception as e:
    print(type(e).__name__, e)
"#,
        &[
            "127.0.0.1",
            &gw.admin.port().to_string(),
            APP_ID,
            KEY,
            SECRET,
            channel,
            event,
            data,
        ],
    )
}

async fn expect_event(c: &mut Client) -> Value {
    match c.recv().await {
        ServerFrame::Message { data, .. } => data,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushers_server_libraries_publish_to_native_subscribers() {
    let gw = gateway("");
    let mut c = gw.connect(Encoding::Json).await;
    c.subscribe(1, "orders").await;
    c.subscribe(2, "invoices").await;

    let status = node_trigger(
        &gw,
        SECRET,
        "trigger",
        json!({"channels": ["orders", "invoices"], "event": "created", "data": {"id": 7}}),
    );
    assert_eq!(status, "200");
    // The library sends data as a JSON string, as Pusher does.
    assert_eq!(
        expect_event(&mut c).await,
        json!({"event": "created", "data": "{\"id\":7}"})
    );
    assert_eq!(
        expect_event(&mut c).await,
        json!({"event": "created", "data": "{\"id\":7}"})
    );

    let batch = json!([
        {"channel": "orders", "name": "a", "data": "1"},
        {"channel": "invoices", "name": "b", "data": "2"},
    ]);
    assert_eq!(node_trigger(&gw, SECRET, "batch", batch), "200");
    let mut got = vec![expect_event(&mut c).await, expect_event(&mut c).await];
    got.sort_by_key(|v| v["event"].as_str().map(str::to_owned));
    assert_eq!(
        got,
        [json!({"event": "a", "data": "1"}), json!({"event": "b", "data": "2"})]
    );

    assert_eq!(python_trigger(&gw, "orders", "py", "{\"from\":\"python\"}"), "ok");
    assert_eq!(
        expect_event(&mut c).await,
        json!({"event": "py", "data": "{\"from\":\"python\"}"})
    );

    // A wrong secret signs wrongly: 401, counted, nothing delivered.
    assert_eq!(
        node_trigger(
            &gw,
            "not-the-secret",
            "trigger",
            json!({"channels": ["orders"], "event": "x", "data": 1})
        ),
        "401"
    );
    assert!(c.roundtrip(9).await.is_empty(), "nothing was published");
    assert_eq!(
        gw.metric("shardcast_pusher_api_refusals_total{reason=\"signature\"}")
            .await,
        1.0
    );
}

/// Requests signed and then altered, by hand, exactly as a tampering proxy would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_old_and_mismatched_requests_are_refused() {
    let gw = gateway("app3.");
    let mut c = gw.connect(Encoding::Json).await;
    c.subscribe(1, "app3.feed").await;
    let body = r#"{"name":"e","channels":["feed"],"data":"{}"}"#;
    // Signs with the official library's algorithm, as python does it.
    let signed = |timestamp: u64, body_md5_of: &str| {
        python(
            r#"
import sys, hashlib, hmac
secret, key, ts, body = sys.argv[1:]
md5 = hashlib.md5(body.encode()).hexdigest()
query = f"auth_key={key}&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}"
sig = hmac.new(secret.encode(), f"POST\n/apps/3/events\n{query}".encode(), hashlib.sha256).hexdigest()
print(f"/apps/3/events?{query}&auth_signature={sig}")
"#,
            &[SECRET, KEY, &timestamp.to_string(), body_md5_of],
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let good = signed(now, body);
    let (status, reply) = http(gw.admin, "POST", &good, Some(body), &[]).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        expect_event(&mut c).await,
        json!({"event": "e", "data": "{}"}),
        "the app's prefix applies"
    );

    let tampered = good.replace("auth_timestamp=", "auth_timestamp=1");
    assert_eq!(http(gw.admin, "POST", &tampered, Some(body), &[]).await.0, 401);
    let old = signed(now - 700, body);
    assert_eq!(http(gw.admin, "POST", &old, Some(body), &[]).await.0, 401);
    let other_body = signed(now, r#"{"name":"x"}"#);
    assert_eq!(http(gw.admin, "POST", &other_body, Some(body), &[]).await.0, 401);
    for reason in ["timestamp", "body_md5"] {
        let series = format!("shardcast_pusher_api_refusals_total{{reason=\"{reason}\"}}");
        assert!(gw.metric(&series).await >= 1.0, "{series}");
    }
    assert!(c.roundtrip(3).await.is_empty(), "no refused request published anything");
    let (status, _) = http(gw.admin, "POST", "/apps/99/events", Some(body), &[]).await;
    assert_eq!(status, 404, "an unknown app");
}
