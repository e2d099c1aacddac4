//! The Pusher HTTP API (PROTOCOL.md 20.5) driven by Pusher's own server
//! libraries: the `pusher` npm package and pusher-http-python publish events,
//! singly and in batches, to native subscribers; requests with a tampered
//! signature, an old timestamp or a wrong body_md5 are refused with 401 and
//! counted; the event reaches subscribers as `{"event", "data"}`. Two instances
//! on one Redis answer the channel and user queries for the whole cluster, and
//! terminate a user's connections on both.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use shardcast::broker::instances::{InstanceInfo, InstanceRegistry};
use shardcast::broker::redis::{RedisBroker, RedisSettings};
use shardcast::broker::{Broker, BrokerEvent, BrokerMetrics, BrokerSink, PresenceMember};
use shardcast::payload::Payload;
use shardcast_proto::{ClientFrame, Encoding, ServerFrame};

const APP_ID: &str = "3";
const KEY: &str = "278d425bdf160c739803";
const SECRET: &str = "7ad3773142a6692b25b8";

/// A gateway with one Pusher app, from a config file.
fn gateway(prefix: &str) -> Gateway {
    gateway_with(prefix, &[])
}

/// The same, with more command-line flags.
fn gateway_with(prefix: &str, flags: &[&str]) -> Gateway {
    let path = pusher_app_config(
        &format!("api-{prefix}"),
        (APP_ID, KEY, SECRET),
        &format!("channel_prefix = \"{prefix}\""),
    );
    let mut args = vec!["--config", path.to_str().expect("utf-8")];
    args.extend_from_slice(flags);
    Gateway::start(&args)
}

/// Runs tests/pusher/trigger.mjs (the `pusher` npm package); returns the status it printed.
fn node_trigger(gw: &Gateway, secret: &str, mode: &str, args: Value) -> String {
    pusher_trigger(gw.admin.port(), (APP_ID, KEY, secret), mode, &args)
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

/// The `pusher` npm package's `get`: the status and the JSON body.
fn node_get(gw: &Gateway, secret: &str, path: &str, params: Value) -> (u64, Value) {
    let line = node_trigger(gw, secret, "get", json!({"path": path, "params": params}));
    let answer: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    (answer["status"].as_u64().unwrap_or(0), answer["body"].clone())
}

/// Runs one pusher-http-python call (`expr`, on `client`) against `gw`; returns
/// its answer as JSON, or `{"error": ...}`.
fn python_call(gw: &Gateway, expr: &str) -> Value {
    let out = python(
        r#"
import sys, json, pusher
host, port, app, key, secret, expr = sys.argv[1:]
client = pusher.Pusher(app_id=app, key=key, secret=secret, host=host, port=int(port), ssl=False)
try:
    print(json.dumps(eval(expr)))
except Exception as e:
    print(json.dumps({"error": type(e).__name__ + " " + str(e)}))
"#,
        &["127.0.0.1", &gw.admin.port().to_string(), APP_ID, KEY, SECRET, expr],
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"))
}

/// A native client signed in as `user` (an HS256 token minted by PyJWT).
async fn user_client(gw: &Gateway, user: &str) -> Client {
    let token = python(
        "import sys, time, jwt; print(jwt.encode({'sub': sys.argv[1], 'exp': int(time.time()) + 300}, sys.argv[2], algorithm='HS256'))",
        &[user, TOKEN_SECRET],
    );
    let mut c = gw.connect(Encoding::Json).await;
    c.send(&ClientFrame::Connect {
        id: Some(1),
        token,
        name: None,
        version: None,
    })
    .await;
    assert!(
        matches!(c.recv().await, ServerFrame::Welcome { .. }),
        "the token is accepted"
    );
    c
}

const TOKEN_SECRET: &str = "a-token-secret-for-the-pusher-tests";

/// Drops whatever a broker hands up: the test's stand-in instance only writes
/// presence members.
struct Ignored;

impl BrokerSink for Ignored {
    fn event(&self, _: BrokerEvent) {}
}

/// Members of a presence channel, written by a stand-in instance through the
/// Redis broker exactly as a gateway's presence join writes them (the Pusher
/// WebSocket endpoint that makes them from real clients is another change).
async fn presence_members_via_broker(redis: &RedisServer, channel: &str, users: &[&str]) -> Arc<RedisBroker> {
    let settings = RedisSettings {
        url: redis.url(),
        cluster: false,
        prefix: "shardcast:".into(),
        origin: "pusher-test-members".into(),
        max_payload: 64 * 1024,
    };
    let metrics = BrokerMetrics::unregistered().expect("metrics");
    let broker = RedisBroker::start(settings, Arc::new(Ignored), metrics).expect("redis broker");
    // Alive while its heartbeat record exists (at_ms 0: never listed as a live
    // instance, so never asked for its channels).
    let instances = broker.instances();
    let me = InstanceInfo {
        node: "pusher-test-members".into(),
        ws: String::new(),
        admin: String::new(),
        health: Default::default(),
        connections: 0,
        at_ms: 0,
    };
    while instances.heartbeat(&me, Duration::from_secs(120)).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for user in users {
        let member = PresenceMember {
            user: Arc::from(*user),
            info: Payload::from_json(&json!({"name": user}).to_string()).expect("info"),
        };
        assert!(broker
            .presence_join(Arc::from(channel), member)
            .await
            .expect("presence join"));
    }
    broker
}

/// Waits until `gw`'s cluster view lists `n` live instances.
async fn wait_cluster(gw: &Gateway, n: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, body) = gw.http("GET", "/api/cluster", None).await;
        let listed = serde_json::from_str::<Value>(&body).map_or(0, |v| v["instances"].as_array().map_or(0, Vec::len));
        if listed == n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "cluster view: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sorted_ids(users: &Value) -> Vec<String> {
    let mut ids: Vec<String> = users["users"]
        .as_array()
        .unwrap_or_else(|| panic!("no users in {users}"))
        .iter()
        .map(|u| u["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_and_user_queries_answer_for_the_whole_cluster() {
    let redis = RedisServer::start();
    let url = redis.url();
    let flags = [
        "--redis",
        url.as_str(),
        "--token-hmac-secret",
        TOKEN_SECRET,
        "--allow-anonymous",
        "true",
    ];
    let gws = [gateway_with("app3.", &flags), gateway_with("app3.", &flags)];
    for gw in &gws {
        gw.wait_ready(200).await;
    }
    for gw in &gws {
        wait_cluster(gw, 2).await;
    }
    // Native subscribers on the app's mapped channels, on both instances; a
    // channel outside the app's prefix is not the app's.
    let mut a = gws[0].connect(Encoding::Json).await;
    a.subscribe(1, "app3.orders").await;
    a.subscribe(2, "app3.presence-room").await;
    let mut b = gws[1].connect(Encoding::Json).await;
    b.subscribe(1, "app3.orders").await;
    b.subscribe(2, "app3.invoices").await;
    b.subscribe(3, "elsewhere").await;
    let _members = presence_members_via_broker(&redis, "app3.presence-room", &["u1", "u2"]).await;
    let mut user42 = user_client(&gws[1], "42").await;
    user42.subscribe(2, "app3.orders").await;
    let mut user7 = user_client(&gws[0], "7").await;
    user7.subscribe(2, "app3.invoices").await;

    // The npm library, asking the first instance: the second's channels are listed.
    let answers = [
        (
            "/channels",
            json!({}),
            json!({"channels": {"invoices": {}, "orders": {}, "presence-room": {}}}),
        ),
        (
            "/channels",
            json!({"filter_by_prefix": "presence-", "info": "user_count"}),
            json!({"channels": {"presence-room": {"user_count": 2}}}),
        ),
        (
            "/channels",
            json!({"filter_by_prefix": "o", "info": "subscription_count"}),
            json!({"channels": {"orders": {"subscription_count": 3}}}),
        ),
        (
            "/channels/invoices",
            json!({"info": "subscription_count"}),
            json!({"occupied": true, "subscription_count": 2}),
        ),
        ("/channels/nobody-here", json!({}), json!({"occupied": false})),
    ];
    for (path, params, expected) in answers {
        let asked = format!("{path} {params}");
        assert_eq!(node_get(&gws[0], SECRET, path, params), (200, expected), "{asked}");
    }
    let (status, body) = node_get(&gws[0], SECRET, "/channels/presence-room/users", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(sorted_ids(&body), ["u1", "u2"]);
    // Refused: user_count where not every channel listed is a presence channel,
    // the users of a channel that is not one, a prefix or a channel name longer
    // than any channel.
    let long = "x".repeat(300);
    let refused = [
        ("/channels".to_owned(), json!({"info": "user_count"})),
        ("/channels/orders/users".to_owned(), json!({})),
        ("/channels".to_owned(), json!({"filter_by_prefix": long})),
        (format!("/channels/{long}"), json!({})),
    ];
    for (path, params) in refused {
        let asked = format!("{path} {params}");
        assert_eq!(node_get(&gws[0], SECRET, &path, params).0, 400, "{asked}");
    }

    // pusher-http-python, asking the second instance.
    assert_eq!(
        python_call(
            &gws[1],
            "client.channels_info(prefix_filter='presence-', attributes=['user_count'])"
        ),
        json!({"channels": {"presence-room": {"user_count": 2}}})
    );
    assert_eq!(
        python_call(&gws[1], "client.channel_info('orders', ['subscription_count'])"),
        json!({"occupied": true, "subscription_count": 3})
    );
    assert_eq!(
        python_call(&gws[1], "client.channel_info('presence-room', ['user_count'])"),
        json!({"occupied": true, "user_count": 2})
    );
    assert_eq!(
        sorted_ids(&python_call(&gws[1], "client.users_info('presence-room')")),
        ["u1", "u2"]
    );

    // A user's connections end on every instance: 42 through the npm library on
    // the first instance (its connection is on the second), 7 through python on
    // the second (pusher-http-python 3.3.3 posts to /users/<id>/... without the app).
    assert_eq!(node_trigger(&gws[0], SECRET, "terminate", json!({"user": "42"})), "200");
    assert_eq!(user42.expect_close().await.0, 4004);
    drop(user42);
    assert_eq!(
        python_call(&gws[1], "client.terminate_user_connections('7')"),
        json!({})
    );
    assert_eq!(user7.expect_close().await.0, 4004);
    drop(user7);
    assert!(
        a.roundtrip(9).await.is_empty() && b.roundtrip(9).await.is_empty(),
        "anonymous clients stay"
    );

    // A signed GET altered after signing, and one signed with another secret.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let signed = python(
        r#"
import sys, hashlib, hmac
secret, key, ts = sys.argv[1:]
query = f"auth_key={key}&auth_timestamp={ts}&auth_version=1.0&filter_by_prefix=presence-&info=user_count"
sig = hmac.new(secret.encode(), f"GET\n/apps/3/channels\n{query}".encode(), hashlib.sha256).hexdigest()
print(f"/apps/3/channels?{query}&auth_signature={sig}")
"#,
        &[SECRET, KEY, &now.to_string()],
    );
    let (status, body) = http(gws[0].admin, "GET", &signed, None, &[]).await;
    assert_eq!(status, 200, "{body}");
    let before = gws[0]
        .metric("shardcast_pusher_api_refusals_total{reason=\"signature\"}")
        .await;
    let tampered = signed.replace("filter_by_prefix=presence-", "filter_by_prefix=");
    assert_eq!(http(gws[0].admin, "GET", &tampered, None, &[]).await.0, 401);
    assert_eq!(node_get(&gws[0], "not-the-secret", "/channels", json!({})).0, 401);
    assert_eq!(
        gws[0]
            .metric("shardcast_pusher_api_refusals_total{reason=\"signature\"}")
            .await,
        before + 2.0
    );
    let (status, _) = http(gws[0].admin, "GET", "/apps/99/channels", None, &[]).await;
    assert_eq!(status, 404, "an unknown app");

    // A dead instance does not hold the query up: asked at once and refused, it is
    // left out (and later no longer in the cluster view).
    gws[1].signal(libc::SIGKILL);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let started = std::time::Instant::now();
        let (status, body) = node_get(&gws[0], SECRET, "/channels", json!({}));
        assert_eq!(status, 200, "{body}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        // Left: the first instance's anonymous subscriber (the dead instance's
        // channels are gone, and so are the terminated users' sockets once closed).
        if body == json!({"channels": {"orders": {}, "presence-room": {}}}) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
