//! The Pusher Channels endpoint (PROTOCOL.md 20) driven by pusher-js, Pusher's
//! own JavaScript client (its Node build, tests/pusher/client.cjs), with channel
//! auth signed by the `pusher` server library: connecting, public and private
//! subscriptions (a forged auth refused), events published through the Pusher
//! HTTP API and the native API, client events reaching other sockets but not the
//! sender, an unknown app key refused with 4001, and one publication reaching a
//! native subscriber and a pusher-js subscriber alike; presence channels' member
//! lists, and joins and leaves announced once per user (across two instances
//! sharing a redis-server too); Pusher's keep-alive and
//! close codes; user sign-in and an operator's disconnect of the user; recovery
//! as PROTOCOL.md 20.6's extension; and an idle Pusher
//! socket's memory within 15% of a native one's; and a public Pusher channel
//! refused where the native channel rules restrict its shardcast channel.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use shardcast_proto::{Encoding, ServerFrame};
use tokio_tungstenite::tungstenite::Message;

const APP_ID: &str = "3";
const KEY: &str = "278d425bdf160c739803";
const SECRET: &str = "7ad3773142a6692b25b8";

/// A gateway with one Pusher app that allows client events; `test` names its
/// config file (tests run in parallel).
fn gateway(test: &str) -> Gateway {
    gateway_with(test, &[])
}

/// The same, with more flags.
fn gateway_with(test: &str, flags: &[&str]) -> Gateway {
    let path = pusher_app_config(&format!("ws-{test}"), (APP_ID, KEY, SECRET), "client_events = true");
    let mut args = vec!["--config", path.to_str().expect("utf-8"), "--shards", "2"];
    args.extend_from_slice(flags);
    Gateway::start(&args)
}

/// One pusher-js client (tests/pusher/client.cjs).
struct PusherJs(NodeScript);

impl std::ops::Deref for PusherJs {
    type Target = NodeScript;
    fn deref(&self) -> &NodeScript {
        &self.0
    }
}

impl std::ops::DerefMut for PusherJs {
    fn deref_mut(&mut self) -> &mut NodeScript {
        &mut self.0
    }
}

impl PusherJs {
    fn start(gw: &Gateway, key: &str) -> PusherJs {
        let port = gw.ws.port().to_string();
        PusherJs(NodeScript::start(
            "client.cjs",
            &["127.0.0.1", &port, APP_ID, key, SECRET],
        ))
    }

    /// Waits until connected; returns the socket id.
    fn connected(&self) -> String {
        let state = self.expect("connected", |l| l["type"] == "state" && l["current"] == "connected");
        state["socket_id"].as_str().expect("a socket id").to_owned()
    }

    fn subscribe(&mut self, channel: &str) {
        self.send(json!({"op": "subscribe", "channel": channel}));
        self.expect("the subscription", |l| {
            l["type"] == "subscribed" && l["channel"] == channel
        });
    }

    /// The next channel event.
    fn event(&self) -> Value {
        self.expect("an event", |l| l["type"] == "event")
    }
}

/// Publishes with the `pusher` server library through the Pusher HTTP API.
fn trigger(gw: &Gateway, channel: &str, event: &str, data: Value, socket_id: Option<&str>) {
    let mut args = json!({"channels": [channel], "event": event, "data": data});
    if let Some(socket) = socket_id {
        args["socket_id"] = json!(socket);
    }
    assert_eq!(
        pusher_trigger(gw.admin.port(), (APP_ID, KEY, SECRET), "trigger", &args),
        "200"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_subscribes_to_public_and_private_channels() {
    let gw = gateway("subscribe");
    let mut js = PusherJs::start(&gw, KEY);
    let socket_id = js.connected();
    let (a, b) = socket_id.split_once('.').expect("two numbers");
    assert!(a.parse::<u32>().is_ok() && b.parse::<u64>().is_ok(), "{socket_id}");

    js.subscribe("news");
    trigger(&gw, "news", "created", json!({"id": 7}), None);
    assert_eq!(
        js.event(),
        json!({"type": "event", "channel": "news", "event": "created", "data": {"id": 7}})
    );
    // A native publish of the {event, data} shape is the same event.
    gw.publish("news", json!({"event": "native", "data": "{\"n\":1}"}))
        .await;
    assert_eq!(js.event()["data"], json!({"n": 1}));
    // Any other payload is the event `message`.
    gw.publish("news", json!({"price": 3})).await;
    let message = js.event();
    assert_eq!(
        (&message["event"], &message["data"]),
        (&json!("message"), &json!({"price": 3}))
    );

    js.subscribe("private-orders");
    trigger(&gw, "private-orders", "paid", json!("yes"), None);
    assert_eq!(js.event()["data"], "yes");

    js.send(json!({"op": "subscribe", "channel": "private-secrets", "forge": true}));
    js.expect("pusher:error 4009", |l| {
        l["type"] == "error" && l["data"]["code"] == 4009
    });
    let refused = js.expect("the refusal", |l| l["type"] == "subscription_error");
    assert_eq!(refused["channel"], "private-secrets");
    assert_eq!(refused["data"]["status"], 401);
    assert_eq!(
        gw.metric("shardcast_pusher_refusals_total{reason=\"signature\"}").await,
        1.0
    );
    // `#` is the channel rules' user boundary: not a Pusher channel name.
    js.send(json!({"op": "subscribe", "channel": "inbox#alice"}));
    let refused = js.expect("the refusal", |l| l["type"] == "subscription_error");
    assert_eq!(
        (&refused["channel"], &refused["data"]["status"]),
        (&json!("inbox#alice"), &json!(400))
    );
    trigger(&gw, "private-secrets", "leak", json!(1), None);
    trigger(&gw, "news", "after", json!(2), None);
    assert_eq!(js.event()["event"], "after", "nothing from the refused channel");

    js.send(json!({"op": "unsubscribe", "channel": "news"}));
    tokio::time::sleep(Duration::from_millis(200)).await;
    trigger(&gw, "news", "gone", json!(3), None);
    trigger(&gw, "private-orders", "still", json!(4), None);
    assert_eq!(js.event()["event"], "still", "nothing after the unsubscribe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_reach_other_sockets_but_not_the_sender() {
    let gw = gateway("client");
    let mut sender = PusherJs::start(&gw, KEY);
    let mut other = PusherJs::start(&gw, KEY);
    sender.connected();
    other.connected();
    sender.subscribe("private-chat");
    other.subscribe("private-chat");

    sender.send(json!({"op": "trigger", "channel": "private-chat", "event": "client-typing", "data": {"who": "a"}}));
    assert_eq!(
        other.event(),
        json!({"type": "event", "channel": "private-chat", "event": "client-typing", "data": {"who": "a"}})
    );
    let echoed: Vec<Value> = sender
        .lines_within(Duration::from_millis(500))
        .into_iter()
        .filter(|l| l["type"] == "event")
        .collect();
    assert!(echoed.is_empty(), "the sender got its own event back: {echoed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_gets_4001() {
    let gw = gateway("unknown");
    let js = PusherJs::start(&gw, "not-a-key");
    let error = js.expect("an error", |l| l["type"] == "error");
    assert_eq!(error["data"]["code"], 4001);
    let states = js.lines_within(Duration::from_millis(500));
    assert!(
        !states.iter().any(|l| l["current"] == "connected"),
        "never connected: {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publication_reaches_native_and_pusher_subscribers() {
    let gw = gateway("mixed");
    let mut native = gw.connect(Encoding::Json).await;
    native.subscribe(1, "mixed").await;
    let mut js = PusherJs::start(&gw, KEY);
    let socket_id = js.connected();
    js.subscribe("mixed");

    trigger(&gw, "mixed", "both", json!({"n": 1}), None);
    assert_eq!(js.event()["data"], json!({"n": 1}));
    match native.recv().await {
        ServerFrame::Message { data, .. } => assert_eq!(data, json!({"event": "both", "data": "{\"n\":1}"})),
        other => panic!("expected a message, got {other:?}"),
    }

    // The API's socket_id excludes that socket, and only it.
    trigger(&gw, "mixed", "not-you", json!(2), Some(&socket_id));
    match native.recv().await {
        ServerFrame::Message { data, .. } => assert_eq!(data["event"], "not-you"),
        other => panic!("expected a message, got {other:?}"),
    }
    trigger(&gw, "mixed", "you", json!(3), None);
    assert_eq!(js.event()["event"], "you", "the excluded event never came");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_members_join_and_leave_once_per_user() {
    let gw = gateway("presence");
    let join = |js: &mut PusherJs, user: &str| {
        js.connected();
        let info = json!({"name": user});
        js.send(json!({"op": "subscribe", "channel": "presence-room", "user": {"user_id": user, "user_info": info}}));
        js.expect("the member list", |l| l["type"] == "subscribed")["members"].clone()
    };
    let mut alice = PusherJs::start(&gw, KEY);
    assert_eq!(join(&mut alice, "alice"), json!(["alice"]));
    let mut bob = PusherJs::start(&gw, KEY);
    assert_eq!(join(&mut bob, "bob"), json!(["alice", "bob"]));
    let added = alice.expect("bob's join", |l| l["type"] == "member_added");
    assert_eq!(added["user_id"], "bob");

    // Bob's second socket is the same member: nobody hears of it.
    let mut bob_again = PusherJs::start(&gw, KEY);
    assert_eq!(join(&mut bob_again, "bob"), json!(["alice", "bob"]));
    bob_again.send(json!({"op": "trigger", "channel": "presence-room", "event": "client-hi", "data": {}}));
    let hi = alice.expect("bob's client event", |l| l["type"] == "event");
    assert_eq!(hi["event"], "client-hi");
    drop(bob_again);
    let quiet = alice.lines_within(Duration::from_millis(700));
    assert!(
        !quiet
            .iter()
            .any(|l| l["type"] == "member_removed" || l["type"] == "member_added"),
        "a second socket's join and leave are not announced: {quiet:?}"
    );
    // Bob's last socket leaves: bob leaves, once.
    drop(bob);
    let removed = alice.expect("bob's leave", |l| l["type"] == "member_removed");
    assert_eq!(removed["user_id"], "bob");
    let quiet = alice.lines_within(Duration::from_millis(500));
    assert!(!quiet.iter().any(|l| l["type"] == "member_removed"), "{quiet:?}");
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, as JSON.
async fn next_text(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).expect("json"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no frame: {other:?}"),
        }
    }
}

/// A bare Pusher-protocol socket (no library), subscribed to `channel`.
async fn lean_pusher_socket(gw: std::net::SocketAddr, channel: &str) -> Ws {
    let url = format!("ws://{gw}/app/{KEY}?protocol=7&client=test&version=1");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("upgrade");
    assert_eq!(next_text(&mut ws).await["event"], "pusher:connection_established");
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    ws.send(Message::text(subscribe.to_string())).await.expect("send");
    assert_eq!(
        next_text(&mut ws).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    ws
}

/// RSS per idle subscribed socket over `n` sockets opened by `open`.
async fn idle_bytes_per_socket<F, Fut, S>(gw: &Gateway, n: usize, open: F) -> (f64, Vec<S>)
where
    F: Fn(std::net::SocketAddr, String) -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let mut sockets = Vec::with_capacity(n + 50);
    for i in 0..50 {
        sockets.push(open(gw.ws, format!("room-{}", i % 10)).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = gw.rss();
    for batch in 0..n / 100 {
        let opened = join_all((0..100).map(|i| open(gw.ws, format!("room-{}", (batch * 100 + i) % 10)))).await;
        sockets.extend(opened);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = gw.rss();
    (after.saturating_sub(before) as f64 / n as f64, sockets)
}

/// Issue #13's bound: an idle Pusher-protocol connection costs the gateway at
/// most 15% more memory than a native one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pusher_socket_costs_within_15_percent_of_a_native_one() {
    const SOCKETS: usize = 3000;
    let native_gw = gateway("idle-native");
    let (native, native_sockets) = idle_bytes_per_socket(&native_gw, SOCKETS, |addr, channel| async move {
        let mut c = Client::connect(addr, Encoding::Json).await;
        c.subscribe(1, &channel).await;
        c
    })
    .await;
    drop(native_sockets);
    drop(native_gw);
    let pusher_gw = gateway("idle-pusher");
    let (pusher, _sockets) = idle_bytes_per_socket(&pusher_gw, SOCKETS, |addr, channel| async move {
        lean_pusher_socket(addr, &channel).await
    })
    .await;
    println!("idle subscribed socket: native {native:.0} B, Pusher {pusher:.0} B");
    assert!(
        pusher <= native * 1.15,
        "Pusher {pusher:.0} B vs native {native:.0} B per idle socket"
    );
}

/// The next text frame that is not the server's keep-alive ping.
async fn next_reply(ws: &mut Ws) -> Value {
    loop {
        let frame = next_text(ws).await;
        if frame["event"] != "pusher:ping" {
            return frame;
        }
    }
}

/// The close code a socket gets, skipping other frames.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_sockets_are_pinged_and_closed_the_pusher_way() {
    let gw = gateway_with("keepalive", &["--ping-interval", "500ms", "--idle-timeout", "1500ms"]);
    // A quiet socket gets pusher:ping (a text frame, not a WebSocket ping) ...
    let mut quiet = lean_pusher_socket(gw.ws, "room").await;
    assert_eq!(next_text(&mut quiet).await["event"], "pusher:ping");
    // ... and, never answering it, the close Pusher's clients read as "reconnect now".
    assert_eq!(close_code(&mut quiet).await, Some(4201));

    // A socket that answers stays; the drain closes it with 4200.
    let mut alive = lean_pusher_socket(gw.ws, "room").await;
    assert_eq!(next_text(&mut alive).await["event"], "pusher:ping");
    let pong = json!({"event": "pusher:pong", "data": {}}).to_string();
    alive.send(Message::text(pong)).await.expect("send");
    // Pusher's own ping is answered too.
    let ping = json!({"event": "pusher:ping", "data": {}}).to_string();
    alive.send(Message::text(ping)).await.expect("send");
    assert_eq!(next_reply(&mut alive).await["event"], "pusher:pong");
    // Bad input is a pusher:error without a code; the connection stays.
    alive.send(Message::text("not json")).await.expect("send");
    let error = next_reply(&mut alive).await;
    assert_eq!(
        (&error["event"], &error["data"]["code"]),
        (&json!("pusher:error"), &Value::Null)
    );
    alive
        .send(Message::text(r#"{"event":"pusher:teleport","data":{}}"#))
        .await
        .expect("send");
    assert_eq!(next_reply(&mut alive).await["data"]["code"], Value::Null);
    gw.signal(libc::SIGTERM);
    assert_eq!(close_code(&mut alive).await, Some(4200));
}

/// Two instances through a real redis-server: a member on one sees the other
/// instance's joins and leaves, once per user, and events published on either;
/// a socket id excludes its socket on the other instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_exclusion_work_across_instances() {
    let redis = RedisServer::start();
    let url = redis.url();
    let flags = [
        "--redis",
        url.as_str(),
        "--heartbeat-interval",
        "300ms",
        "--instance-ttl",
        "1s",
    ];
    let one = gateway_with("redis-one", &flags);
    let two = gateway_with("redis-two", &flags);
    one.wait_ready(200).await;
    two.wait_ready(200).await;
    let join = |js: &mut PusherJs, user: &str| {
        let member = json!({"user_id": user, "user_info": {}});
        js.send(json!({"op": "subscribe", "channel": "presence-lobby", "user": member}));
        js.expect("the member list", |l| l["type"] == "subscribed")["members"].clone()
    };
    let mut alice = PusherJs::start(&one, KEY);
    alice.connected();
    assert_eq!(join(&mut alice, "alice"), json!(["alice"]));
    let mut bob = PusherJs::start(&two, KEY);
    let bob_id = bob.connected();
    assert_eq!(join(&mut bob, "bob"), json!(["alice", "bob"]));
    assert_eq!(
        alice.expect("bob's join", |l| l["type"] == "member_added")["user_id"],
        "bob"
    );
    let mut bob_on_one = PusherJs::start(&one, KEY);
    bob_on_one.connected();
    assert_eq!(join(&mut bob_on_one, "bob"), json!(["alice", "bob"]));

    // Published through instance one's API, excluding bob's socket on instance two.
    trigger(&one, "presence-lobby", "news", json!(1), Some(&bob_id));
    assert_eq!(alice.event()["event"], "news");
    assert_eq!(bob_on_one.event()["event"], "news");
    trigger(&two, "presence-lobby", "more", json!(2), None);
    assert_eq!(
        bob.event()["event"],
        "more",
        "the excluded event never reached bob on two"
    );
    assert_eq!(alice.event()["event"], "more");

    // Bob's socket on two leaves; his socket on one keeps him a member.
    drop(bob);
    let quiet = alice.lines_within(Duration::from_millis(700));
    assert!(!quiet.iter().any(|l| l["type"] == "member_removed"), "{quiet:?}");
    drop(bob_on_one);
    assert_eq!(
        alice.expect("bob's leave", |l| l["type"] == "member_removed")["user_id"],
        "bob"
    );
}

/// Subscribes a bare socket to `channel` with `pusher:subscribe`'s `recover`
/// extension; returns the subscription_succeeded data.
async fn subscribe_recovering(ws: &mut Ws, channel: &str, offset: u64, epoch: &str) -> Value {
    let data = json!({"channel": channel, "recover": {"offset": offset, "epoch": epoch}});
    let subscribe = json!({"event": "pusher:subscribe", "data": data});
    ws.send(Message::text(subscribe.to_string())).await.expect("send");
    let answer = next_reply(ws).await;
    assert_eq!(answer["event"], "pusher_internal:subscription_succeeded");
    serde_json::from_str(answer["data"].as_str().expect("data is a string")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_socket_recovers_what_it_missed() {
    let gw = gateway_with("recover", &["--history-size", "100"]);
    let mut first = lean_pusher_socket(gw.ws, "prices").await;
    for n in 1..=2 {
        gw.publish("prices", json!({"event": "tick", "data": n.to_string()}))
            .await;
    }
    let tick = next_reply(&mut first).await;
    assert_eq!(
        (&tick["event"], &tick["data"], &tick["offset"]),
        (&json!("tick"), &json!("1"), &json!(1))
    );
    let last = next_reply(&mut first).await;
    let epoch = last["epoch"].as_str().expect("an epoch").to_owned();
    assert_eq!(last["offset"], 2);
    drop(first);

    // Missed while away: 3 and 4; then a new socket recovers from offset 2.
    for n in 3..=4 {
        gw.publish("prices", json!({"event": "tick", "data": n.to_string()}))
            .await;
    }
    let url = format!("ws://{}/app/{KEY}?protocol=7", gw.ws);
    let (mut again, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade");
    assert_eq!(next_text(&mut again).await["event"], "pusher:connection_established");
    assert_eq!(
        subscribe_recovering(&mut again, "prices", 2, &epoch).await,
        json!({"recovered": true})
    );
    for n in 3..=4 {
        let tick = next_reply(&mut again).await;
        assert_eq!((&tick["data"], &tick["offset"]), (&json!(n.to_string()), &json!(n)));
    }
    gw.publish("prices", json!({"event": "tick", "data": "5"})).await;
    assert_eq!(next_reply(&mut again).await["offset"], 5, "then live, nothing twice");

    // Another epoch cannot be recovered: said so, and live events follow.
    let (mut stranger, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade");
    assert_eq!(next_text(&mut stranger).await["event"], "pusher:connection_established");
    assert_eq!(
        subscribe_recovering(&mut stranger, "prices", 1, "another-epoch").await,
        json!({"recovered": false})
    );
    gw.publish("prices", json!({"event": "tick", "data": "6"})).await;
    assert_eq!(next_reply(&mut stranger).await["offset"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_pusher_socket_is_its_users() {
    let gw = gateway("signin");
    let url = format!("ws://{}/app/{KEY}?protocol=7", gw.ws);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade");
    let established = next_text(&mut ws).await;
    let data: Value = serde_json::from_str(established["data"].as_str().expect("data")).expect("json");
    let socket_id = data["socket_id"].as_str().expect("socket id").to_owned();
    let user_data = json!({"id": "alice", "user_info": {"name": "Alice"}}).to_string();
    let signin = |auth: String| {
        let data = json!({"user_data": user_data, "auth": auth});
        Message::text(json!({"event": "pusher:signin", "data": data}).to_string())
    };

    ws.send(signin(format!("{KEY}:{}", "0".repeat(64))))
        .await
        .expect("send");
    let refused = next_reply(&mut ws).await;
    assert_eq!(
        (&refused["event"], &refused["data"]["code"]),
        (&json!("pusher:error"), &json!(4009))
    );

    // Signed as the `pusher` server library's authenticateUser signs it.
    let signature = shardcast::pusher::signature::sign(SECRET, &format!("{socket_id}::user::{user_data}"));
    ws.send(signin(format!("{KEY}:{signature}"))).await.expect("send");
    let success = next_reply(&mut ws).await;
    assert_eq!(success["event"], "pusher:signin_success");
    let data: Value = serde_json::from_str(success["data"].as_str().expect("data")).expect("json");
    assert_eq!(data["user_data"], user_data.as_str());

    let (status, body) = gw.http("POST", "/api/disconnect", Some(r#"{"user":"alice"}"#)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        close_code(&mut ws).await,
        Some(4009),
        "an operator's disconnect, Pusher's code"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_pusher_channel_cannot_reach_a_native_channel_the_rules_restrict() {
    // No channel_prefix: the Pusher channel `team:7.chat` is the native one.
    let path = pusher_app_config(
        "ws-rules",
        (APP_ID, KEY, SECRET),
        "\n[namespaces.team]\nsubscribe = \"granted\"",
    );
    let gw = Gateway::start(&["--config", path.to_str().expect("utf-8")]);
    let url = format!("ws://{}/app/{KEY}?protocol=7&client=test&version=1", gw.ws);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("upgrade");
    assert_eq!(next_text(&mut ws).await["event"], "pusher:connection_established");
    for channel in ["team:7.chat", "news"] {
        let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
        ws.send(Message::text(subscribe.to_string())).await.expect("send");
    }
    let refused = next_text(&mut ws).await;
    assert_eq!(
        (refused["event"].clone(), refused["data"]["code"].clone()),
        (json!("pusher:error"), json!(4009)),
        "{refused}"
    );
    let error = next_text(&mut ws).await;
    assert_eq!(
        (error["event"].clone(), error["channel"].clone()),
        (json!("pusher:subscription_error"), json!("team:7.chat")),
        "{error}"
    );
    let ok = next_text(&mut ws).await;
    assert_eq!(
        (ok["event"].clone(), ok["channel"].clone()),
        (json!("pusher_internal:subscription_succeeded"), json!("news")),
        "{ok}"
    );
    gw.wait_metric("shardcast_pusher_refusals_total{reason=\"permission\"}", |v| v == 1.0)
        .await;
}
