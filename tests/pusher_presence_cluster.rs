//! Presence across three gateways on one redis-server, with pusher-js members and
//! a webhook receiver: a user with sockets on two instances is one member,
//! `member_added` reaches the others and the webhook once per user; when the
//! instance holding one of a user's two sockets is SIGKILLed the user stays, and
//! when the instance holding its last one is, the user leaves within the instance
//! TTL: `member_removed` once to the others and once to the webhook. A client
//! event reaches the webhook once, with its event, sender socket and user.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

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
