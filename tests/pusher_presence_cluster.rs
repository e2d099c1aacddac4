//! Presence across three gateways on one redis-server, with pusher-js members and
//! a webhook receiver: a user with sockets on two instances is one member,
//! `member_added` reaches the others and the webhook once per user; when the
//! instance holding one of a user's two sockets is SIGKILLed the user stays, and
//! when the instance holding its last one is, the user leaves within the instance
//! TTL: `member_removed` once to the others and once to the webhook. A client
//! event reaches the webhook once, with its event, sender socket and user.
//! The same behind nginx with the shipped config (sticky by client address), with
//! pusher-js clients connecting from several 127.0.0.x addresses as separate
//! machines would: the instance that dies takes its lone member away within the
//! TTL, once, while the clients it held reconnect through nginx to the others.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const APP_ID: &str = "9";
const KEY: &str = "presence-key";
const SECRET: &str = "presence-secret";

/// A pusher-js client on `gw`, subscribed to `presence-room` as `user`.
fn member(gw: &Gateway, user: &str) -> NodeScript {
    let port = gw.ws.port().to_string();
    let mut js = NodeScript::start("client.cjs", &["127.0.0.1", &port, APP_ID, KEY, SECRET]);
    js.expect("connected", |l| l["type"] == "state" && l["current"] == "connected");
    js.send(
        json!({"op": "subscribe", "channel": "presence-room", "user": {"user_id": user, "user_info": {"name": user}}}),
    );
    js
}

/// The gateway instance a socket id names (its part before the dot, PROTOCOL.md 20.1).
fn instance_of(socket_id: &Value) -> String {
    let id = socket_id.as_str().expect("a socket id");
    id.split('.').next().expect("instance").to_owned()
}

/// A bare Pusher-protocol socket to `to` from `source`: the instance that serves it.
async fn probe_instance(source: std::net::Ipv4Addr, to: std::net::SocketAddr) -> String {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind((source, 0).into()).expect("bind a loopback source");
    let stream = socket.connect(to).await.expect("connect");
    let url = format!("ws://{to}/app/{KEY}?protocol=7&client=probe&version=1");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("upgrade");
    let Some(Ok(Message::Text(text))) = ws.next().await else {
        panic!("no connection_established")
    };
    let hello: Value = serde_json::from_str(&text).expect("json");
    let data: Value = serde_json::from_str(hello["data"].as_str().expect("data")).expect("data json");
    instance_of(&data["socket_id"])
}

fn members(js: &NodeScript) -> Value {
    js.expect("the member list", |l| l["type"] == "subscribed")["members"].clone()
}

fn presence_changes(js: &NodeScript, within: Duration) -> Vec<Value> {
    js.lines_within(within)
        .into_iter()
        .filter(|l| l["type"] == "member_added" || l["type"] == "member_removed")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_per_user_across_instances_and_survives_until_the_last_dies() {
    let redis = RedisServer::start();
    let (port, hooks) = webhook_receiver(KEY, SECRET).await;
    let path = pusher_app_config(
        "presence-cluster",
        (APP_ID, KEY, SECRET),
        &format!(
            "client_events = true\nwebhook_url = \"http://127.0.0.1:{port}/hooks\"\n\
             webhook_events = [\"member_added\", \"member_removed\", \"client_event\"]"
        ),
    );
    let gws = heartbeat_cluster(3, &redis, &path).await;
    // Every instance must have read the others' heartbeats before one dies.
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Ann on instances 0 and 1, Bob on 2: two members, not three.
    let ann0 = member(&gws[0], "ann");
    assert_eq!(members(&ann0), json!(["ann"]));
    let ann1 = member(&gws[1], "ann");
    assert_eq!(members(&ann1), json!(["ann"]));
    let bob = member(&gws[2], "bob");
    assert_eq!(members(&bob), json!(["ann", "bob"]));
    for ann in [&ann0, &ann1] {
        let added = ann.expect("bob added", |l| l["type"] == "member_added");
        assert_eq!(added["user_id"], "bob");
    }
    hooks.exactly("member_added", "presence-room", 2, WAIT).await;
    let added: Vec<String> = hooks
        .events
        .lock()
        .expect("lock")
        .iter()
        .filter(|e| e["name"] == "member_added")
        .map(|e| e["user_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(added, ["ann", "bob"], "one member_added per user");

    // A client event reaches the others and, once, the webhook, with its sender.
    let mut bob = bob;
    bob.send(json!({"op": "trigger", "channel": "presence-room", "event": "client-wave", "data": {"hi": 1}}));
    let wave = ann1.expect("the client event", |l| {
        l["type"] == "event" && l["event"] == "client-wave"
    });
    assert_eq!(wave["data"], json!({"hi": 1}));
    hooks.exactly("client_event", "presence-room", 1, WAIT).await;
    let hook = hooks
        .events
        .lock()
        .expect("lock")
        .iter()
        .find(|e| e["name"] == "client_event")
        .cloned()
        .expect("the client_event webhook");
    assert_eq!(
        (hook["event"].clone(), hook["user_id"].clone()),
        (json!("client-wave"), json!("bob"))
    );
    assert!(hook["socket_id"].as_str().is_some_and(|s| s.contains('.')), "{hook}");

    // Instance 0 dies with one of Ann's sockets: she is still on instance 1.
    gws[0].signal(libc::SIGKILL);
    let quiet = presence_changes(&bob, Duration::from_secs(4));
    assert!(quiet.is_empty(), "ann still has a socket on instance 1: {quiet:?}");
    assert_eq!(hooks.count("member_removed", "presence-room"), 0);

    // Instance 1 dies with her last one: she leaves, once, within the TTL.
    gws[1].signal(libc::SIGKILL);
    let killed = Instant::now();
    let removed = bob.expect("ann removed", |l| l["type"] == "member_removed");
    assert_eq!(removed["user_id"], "ann");
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "ann left {took:?} after her last instance died (TTL 2 s)"
    );
    assert!(
        presence_changes(&bob, Duration::from_millis(800)).is_empty(),
        "removed once"
    );
    hooks.exactly("member_removed", "presence-room", 1, WAIT).await;
    drop((ann0, ann1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_behind_nginx_is_per_user_and_a_dead_instance_takes_its_members_away() {
    let redis = RedisServer::start();
    let path = pusher_app_config("presence-nginx", (APP_ID, KEY, SECRET), "");
    let gws = heartbeat_cluster(3, &redis, &path).await;
    let nginx = Nginx::start(&gws.iter().map(|g| g.ws).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Which instance each gateway is, and where nginx sends each source address.
    let mut gateway_of = std::collections::HashMap::new();
    for (i, gw) in gws.iter().enumerate() {
        gateway_of.insert(probe_instance(std::net::Ipv4Addr::LOCALHOST, gw.ws).await, i);
    }
    let mut sources_of: std::collections::HashMap<String, Vec<String>> = Default::default();
    for x in 2..40u8 {
        let source = std::net::Ipv4Addr::new(127, 0, 0, x);
        let instance = probe_instance(source, nginx.addr).await;
        sources_of.entry(instance).or_default().push(source.to_string());
    }
    let mut by_load: Vec<(String, Vec<String>)> = sources_of.into_iter().collect();
    by_load.sort_by_key(|(_, sources)| std::cmp::Reverse(sources.len()));
    assert_eq!(by_load.len(), 3, "38 addresses reach all three instances: {by_load:?}");
    // A (two sources: Ann's first socket and Dan), B (Ann's second), C (Bob).
    let (a, b, c) = (&by_load[0], &by_load[1], &by_load[2]);
    assert!(a.1.len() >= 2, "{by_load:?}");

    let port = nginx.addr.port().to_string();
    let via = |source: &str, user: &str| {
        let mut js = NodeScript::start("client.cjs", &["127.0.0.1", &port, APP_ID, KEY, SECRET, source]);
        let state = js.expect("connected", |l| l["type"] == "state" && l["current"] == "connected");
        js.send(json!({"op": "subscribe", "channel": "presence-room", "user": {"user_id": user, "user_info": {}}}));
        (js, instance_of(&state["socket_id"]))
    };
    let (bob, on) = via(&c.1[0], "bob");
    assert_eq!(on, c.0, "nginx kept Bob's address on its instance");
    assert_eq!(members(&bob), json!(["bob"]));
    let (ann_a, on) = via(&a.1[0], "ann");
    assert_eq!(on, a.0);
    assert_eq!(members(&ann_a), json!(["ann", "bob"]));
    let (ann_b, on) = via(&b.1[0], "ann");
    assert_eq!(on, b.0);
    assert_eq!(members(&ann_b), json!(["ann", "bob"]));
    let (dan, on) = via(&a.1[1], "dan");
    assert_eq!(on, a.0);
    assert_eq!(members(&dan), json!(["ann", "bob", "dan"]));

    // Each join was announced once per user, to members on every instance.
    let seen = |js: &NodeScript| -> Vec<(String, String)> {
        presence_changes(js, Duration::from_millis(1500))
            .iter()
            .map(|l| {
                (
                    l["type"].as_str().unwrap_or_default().to_owned(),
                    l["user_id"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let added = |u: &str| ("member_added".to_owned(), u.to_owned());
    let removed = |u: &str| ("member_removed".to_owned(), u.to_owned());
    assert_eq!(
        seen(&bob),
        [added("ann"), added("dan")],
        "Ann's two sockets are one member"
    );
    assert_eq!(seen(&ann_a), [added("dan")]);
    assert_eq!(seen(&ann_b), [added("dan")]);

    // Instance A dies while Dan's client is frozen (it will not come back); Ann's
    // socket there reconnects through nginx to another instance and re-subscribes.
    dan.signal(libc::SIGSTOP);
    let killed = Instant::now();
    gws[gateway_of[&a.0]].signal(libc::SIGKILL);
    let gone = bob.expect("dan removed", |l| l["type"] == "member_removed");
    assert_eq!(gone["user_id"], "dan", "Ann still has a socket on B");
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "Dan left {took:?} after his instance died (TTL 2 s)"
    );
    let back = ann_a.expect("Ann's socket back", |l| {
        l["type"] == "state" && l["current"] == "connected"
    });
    assert_ne!(
        instance_of(&back["socket_id"]),
        a.0,
        "nginx moved her off the dead instance"
    );
    let again = members(&ann_a);
    assert!(
        again
            .as_array()
            .is_some_and(|m| m.contains(&json!("ann")) && m.contains(&json!("bob"))),
        "{again}"
    );
    assert_eq!(seen(&bob), [], "Dan removed once; Ann never left");
    assert_eq!(seen(&ann_b), [removed("dan")]);
    dan.signal(libc::SIGKILL);
    drop(nginx);
}
