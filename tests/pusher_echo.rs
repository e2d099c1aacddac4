//! Laravel Echo (the `laravel-echo` package on pusher-js, tests/pusher/echo.mjs)
//! against the Pusher endpoint, with channel auth signed by the `pusher` server
//! library as a Laravel backend's broadcaster signs it: `Echo.channel().listen()`
//! and `Echo.private().listen()` receive events published through the Pusher HTTP
//! API (Laravel's event-name formatting included), `Echo.join()`'s `here`,
//! `joining` and `leaving` see a second user arrive and go, and a `whisper`
//! reaches the other user but not its sender.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const APP_ID: &str = "5";
const KEY: &str = "echo-key";
const SECRET: &str = "echo-secret";

/// One Laravel Echo client as user `id`, named `name`.
fn echo(gw: &Gateway, id: &str, name: &str) -> NodeScript {
    let port = gw.ws.port().to_string();
    let client = NodeScript::start("echo.mjs", &["127.0.0.1", &port, APP_ID, KEY, SECRET, id, name]);
    client.expect("connected", |l| l["type"] == "connected");
    client
}

fn trigger(gw: &Gateway, channel: &str, event: &str, data: Value) {
    let args = json!({"channels": [channel], "event": event, "data": data});
    assert_eq!(
        pusher_trigger(gw.admin.port(), (APP_ID, KEY, SECRET), "trigger", &args),
        "200"
    );
}

fn subscribed(client: &NodeScript, channel: &str) -> Value {
    client.expect(&format!("the subscription to {channel}"), |l| {
        l["type"] == "subscribed" && l["channel"] == channel
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn laravel_echo_listens_joins_and_whispers() {
    let path = pusher_app_config("echo", (APP_ID, KEY, SECRET), "client_events = true");
    let gw = Gateway::start(&["--config", path.to_str().expect("utf-8")]);

    let mut ann = echo(&gw, "7", "Ann");
    ann.send(json!({"op": "channel", "name": "news", "event": "OrderShipped"}));
    subscribed(&ann, "news");
    ann.send(json!({"op": "private", "name": "orders", "event": ".order.paid"}));
    subscribed(&ann, "orders");
    ann.send(json!({"op": "join", "name": "room"}));
    let here = ann.expect("here", |l| l["type"] == "here");
    assert_eq!(here["users"], json!(["Ann"]));

    // Laravel names a broadcast event by its class; Echo's listen("OrderShipped")
    // expects App\Events\OrderShipped, and ".order.paid" a name used as is.
    trigger(&gw, "news", "App\\Events\\OrderShipped", json!({"id": 5}));
    let shipped = ann.expect("OrderShipped", |l| l["type"] == "event" && l["channel"] == "news");
    assert_eq!(shipped["data"], json!({"id": 5}));
    trigger(&gw, "private-orders", "order.paid", json!({"id": 6}));
    let paid = ann.expect("order.paid", |l| l["type"] == "event" && l["channel"] == "orders");
    assert_eq!(paid["data"], json!({"id": 6}));

    let mut bob = echo(&gw, "8", "Bob");
    bob.send(json!({"op": "join", "name": "room"}));
    let here = bob.expect("here", |l| l["type"] == "here");
    assert_eq!(here["users"], json!(["Ann", "Bob"]));
    let joining = ann.expect("joining", |l| l["type"] == "joining");
    assert_eq!(joining["user"], "Bob");

    // A whisper is a client event on the private channel: to Ann, not back to Bob.
    bob.send(json!({"op": "private", "name": "orders", "event": ".order.paid"}));
    subscribed(&bob, "orders");
    bob.send(json!({"op": "whisper", "name": "orders", "event": "typing", "data": {"typing": true}}));
    let whisper = ann.expect("the whisper", |l| l["type"] == "whisper");
    assert_eq!(whisper["data"], json!({"typing": true}));
    assert!(
        !bob.lines_within(Duration::from_millis(300))
            .iter()
            .any(|l| l["type"] == "whisper"),
        "a whisper is not echoed to its sender"
    );

    bob.send(json!({"op": "disconnect"}));
    let leaving = ann.expect("leaving", |l| l["type"] == "leaving");
    assert_eq!(leaving["user"], "Bob");
}
