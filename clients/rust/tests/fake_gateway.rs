//! The client against a scripted fake gateway (tokio-tungstenite's server side),
//! for behaviour a real gateway does not show on demand: the token provider's
//! `Authorization` header on every connect (and never a token in the URL), a failing provider,
//! the authentication close codes (4002, 4004, 4005), a subscribe refused as
//! `unavailable` and retried, unknown frame types, and the heartbeat's `ping` op;
//! and history and recovery (PROTOCOL.md 19.7): `recover` on every re-subscribe
//! from the last position delivered, recovered publications once each and in
//! order, duplicates and old offsets dropped, [`ClientEvent::Stale`] on
//! `recovered: false` and on `gap`, `latest`, idempotent publishes and `history`;
//! and presence (PROTOCOL.md 21): `join` and `leave` as events for subscribed
//! channels only, and `presence` answered `unknown_op` by an older gateway.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_event, within};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use shardcast_client::{
    Client, ClientEvent, ConnectionState, Error, ErrorCode, EventStream, GapReason, HistoryOptions, Published,
    ReconnectPolicy, StaleSource, SubscribeOptions, Subscription,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

fn quick_policy() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        ..ReconnectPolicy::default()
    }
}

/// Accepts one WebSocket, echoing the JSON subprotocol; returns it with the request's
/// path and query, and its `Authorization` header (empty if none).
// The callback's result type is tungstenite's, large error variant included.
#[allow(clippy::result_large_err)]
async fn accept_with_auth(listener: &TcpListener) -> (Ws, String, String) {
    let (stream, _) = within("a connection", listener.accept()).await.expect("accept");
    let seen = Arc::new(Mutex::new((String::new(), String::new())));
    let sink = seen.clone();
    let ws = tokio_tungstenite::accept_hdr_async(stream, move |request: &Request, mut response: Response| {
        let authorization = request
            .headers()
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        *sink.lock().expect("lock") = (request.uri().to_string(), authorization.to_owned());
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "shardcast.v1.json".parse().expect("header"));
        Ok(response)
    })
    .await
    .expect("upgrade");
    let (uri, authorization) = seen.lock().expect("lock").clone();
    (ws, uri, authorization)
}

/// Accepts one WebSocket; returns it with the request's path and query.
async fn accept(listener: &TcpListener) -> (Ws, String) {
    let (ws, uri, _) = accept_with_auth(listener).await;
    (ws, uri)
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into())).await.expect("send");
}

async fn welcome(ws: &mut Ws, ping_interval_ms: u64) {
    send(
        ws,
        json!({"type": "welcome", "version": 1, "node": "fake", "shard": 0, "ping_interval_ms": ping_interval_ms}),
    )
    .await;
}

/// The next client frame, as JSON.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        match within("a client frame", ws.next()).await {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).expect("JSON frame"),
            Some(Ok(_)) => continue,
            other => panic!("expected a client frame, got {other:?}"),
        }
    }
}

/// A fake gateway's listener and a client of it at `path` whose token provider
/// answers `{prefix}1`, `{prefix}2`, … and counts its calls in the returned counter.
async fn client_with_counted_tokens(
    path: &str,
    prefix: &'static str,
) -> (TcpListener, Client, EventStream, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}{path}", listener.local_addr().expect("addr"));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (client, events) = Client::builder(url)
        .reconnect(quick_policy())
        .token_provider(move || Some(format!("{prefix}{}", counter.fetch_add(1, Ordering::SeqCst) + 1)))
        .build_with_events()
        .expect("client");
    (listener, client, events, calls)
}

#[tokio::test]
async fn token_provider_is_called_on_every_connect() {
    let (listener, client, mut events, calls) = client_with_counted_tokens("/ws?app=demo", "tok ").await;
    let (mut ws, uri, authorization) = accept_with_auth(&listener).await;
    assert_eq!(uri, "/ws?app=demo", "never a token in the URL");
    assert_eq!(authorization, "Bearer tok 1");
    welcome(&mut ws, 25_000).await;
    wait_event(&mut events, |e| matches!(e, ClientEvent::Connected { .. })).await;
    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "going away; retry_ms=0".into(),
    }))
    .await
    .expect("close");
    // Ending the TCP connection after the close handshake, as a gateway does.
    drop(ws);

    let (mut ws, uri, authorization) = accept_with_auth(&listener).await;
    assert_eq!(uri, "/ws?app=demo");
    assert_eq!(authorization, "Bearer tok 2", "a fresh token for the new connection");
    welcome(&mut ws, 25_000).await;
    within("connect", client.wait_connected()).await.expect("connected");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    drop(ws);
    client.close().await;
}

#[tokio::test]
async fn a_failing_token_provider_fails_only_that_attempt() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (client, mut events) = Client::builder(url)
        .reconnect(quick_policy())
        .token_provider_async(move || {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if call == 0 {
                    Err("the token service is down")
                } else {
                    Ok(Some("fresh".to_owned()))
                }
            }
        })
        .build_with_events()
        .expect("client");
    let failed = wait_event(&mut events, |e| matches!(e, ClientEvent::Disconnected { .. })).await;
    assert!(
        matches!(&failed, ClientEvent::Disconnected { reason, will_reconnect: true, .. }
            if reason.contains("token provider failed") && reason.contains("the token service is down")),
        "{failed:?}"
    );
    let (mut ws, uri, authorization) = accept_with_auth(&listener).await;
    assert_eq!((uri.as_str(), authorization.as_str()), ("/ws", "Bearer fresh"));
    welcome(&mut ws, 25_000).await;
    within("connect", client.wait_connected()).await.expect("connected");
    drop(ws);
    client.close().await;
}

#[tokio::test]
async fn unavailable_subscribe_is_retried_and_unknown_frames_are_ignored() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let client = Client::builder(url).reconnect(quick_policy()).build().expect("client");
    let subscribing = tokio::spawn({
        let client = client.clone();
        async move { client.subscribe("prices").await }
    });

    let (mut ws, _) = accept(&listener).await;
    welcome(&mut ws, 25_000).await;
    let first = recv(&mut ws).await;
    assert_eq!(
        (first["op"].as_str(), first["channel"].as_str()),
        (Some("subscribe"), Some("prices"))
    );
    // Frames from a newer protocol revision, and an error the client cannot pin on a request.
    send(&mut ws, json!({"type": "from_the_future", "id": first["id"]})).await;
    send(
        &mut ws,
        json!({"type": "error", "code": "bad_request", "message": "no id"}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "error", "id": first["id"], "code": "unavailable", "message": "broker down"}),
    )
    .await;

    // The same channel is asked for again, with a new id, after a backoff.
    let retry = recv(&mut ws).await;
    assert_eq!(
        (retry["op"].as_str(), retry["channel"].as_str()),
        (Some("subscribe"), Some("prices"))
    );
    assert_ne!(retry["id"], first["id"]);
    send(&mut ws, json!({"type": "ack", "id": retry["id"]})).await;
    let mut prices = within("subscribe", subscribing)
        .await
        .expect("task")
        .expect("subscribed");
    send(
        &mut ws,
        json!({"type": "message", "channel": "prices", "seq": 1, "data": 1.0825, "extra": "ignored"}),
    )
    .await;
    let message = within("message", prices.next()).await.expect("open");
    assert_eq!((message.seq, message.data), (1, json!(1.0825)));
    assert_eq!(client.state(), ConnectionState::Connected);
    drop(ws);
    client.close().await;
}

#[tokio::test]
async fn heartbeat_sends_protocol_pings_and_drops_a_silent_peer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    // The default heartbeat takes its interval from the welcome.
    let (client, mut events) = Client::builder(url)
        .reconnect(quick_policy())
        .build_with_events()
        .expect("client");
    let (mut ws, _) = accept(&listener).await;
    welcome(&mut ws, 400).await;
    for _ in 0..3 {
        let ping = recv(&mut ws).await;
        assert_eq!(ping["op"], "ping", "{ping}");
        assert!(ping["id"].is_u64(), "{ping}");
        send(&mut ws, json!({"type": "pong", "id": ping["id"]})).await;
    }
    assert_eq!(client.state(), ConnectionState::Connected, "answered pings keep it up");

    // Now the peer reads but never answers: the client gives up after interval + timeout.
    let silent = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    let lost = wait_event(&mut events, |e| matches!(e, ClientEvent::Disconnected { .. })).await;
    assert!(
        matches!(&lost, ClientEvent::Disconnected { code: 1006, reason, will_reconnect: true, .. } if reason.contains("heartbeat timeout")),
        "{lost:?}"
    );
    silent.abort();
    client.close().await;
}

/// Closes `ws` with `code` and `reason`, and ends the TCP connection as a gateway does.
async fn close_with(mut ws: Ws, code: u16, reason: &str) {
    ws.close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }))
    .await
    .expect("close");
    drop(ws);
}

#[tokio::test]
async fn token_expired_reconnects_with_a_new_token_and_disconnected_stops() {
    let (listener, client, mut events, calls) = client_with_counted_tokens("/ws", "tok").await;
    let (mut ws, _, authorization) = accept_with_auth(&listener).await;
    assert_eq!(authorization, "Bearer tok1");
    welcome(&mut ws, 25_000).await;
    wait_event(&mut events, |e| matches!(e, ClientEvent::Connected { .. })).await;
    close_with(ws, 4002, "token expired").await;

    // 4002: the provider is asked for a new token, and the client reconnects with it.
    let (mut ws, _, authorization) = accept_with_auth(&listener).await;
    assert_eq!(authorization, "Bearer tok2");
    welcome(&mut ws, 25_000).await;
    within("connect", client.wait_connected()).await.expect("connected");
    close_with(ws, 4004, "disconnected by an operator").await;

    // 4004: no reconnect; the client stops with an authentication error.
    let refused = wait_event(&mut events, |e| matches!(e, ClientEvent::Unauthorized { .. })).await;
    assert_eq!(
        refused,
        ClientEvent::Unauthorized {
            code: 4004,
            reason: "disconnected by an operator".to_owned()
        }
    );
    wait_event(&mut events, |e| matches!(e, ClientEvent::Closed { .. })).await;
    assert!(matches!(
        client.stop_reason(),
        Some(Error::Unauthorized { code: 4004, .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A client with the fixed token `fixed`, connected to a fake gateway on `listener`.
async fn connected_with_a_fixed_token(listener: &TcpListener) -> (Client, EventStream, Ws) {
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let (client, mut events) = Client::builder(url)
        .reconnect(quick_policy())
        .token("fixed")
        .build_with_events()
        .expect("client");
    let (mut ws, _, authorization) = accept_with_auth(listener).await;
    assert_eq!(authorization, "Bearer fixed");
    welcome(&mut ws, 25_000).await;
    wait_event(&mut events, |e| matches!(e, ClientEvent::Connected { .. })).await;
    (client, events, ws)
}

#[tokio::test]
async fn token_expired_without_a_provider_stops() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (client, mut events, ws) = connected_with_a_fixed_token(&listener).await;
    close_with(ws, 4002, "token expired").await;
    // A fixed token cannot be renewed: reconnecting with it would be refused again.
    wait_event(&mut events, |e| {
        matches!(e, ClientEvent::Unauthorized { code: 4002, .. })
    })
    .await;
    wait_event(&mut events, |e| matches!(e, ClientEvent::Closed { .. })).await;
    assert!(matches!(
        client.stop_reason(),
        Some(Error::Unauthorized { code: 4002, .. })
    ));
}

#[tokio::test]
async fn too_many_connections_reconnects_with_backoff() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (client, mut events, ws) = connected_with_a_fixed_token(&listener).await;
    close_with(ws, 4005, "too many connections").await;
    let lost = wait_event(&mut events, |e| matches!(e, ClientEvent::Disconnected { .. })).await;
    assert!(
        matches!(
            lost,
            ClientEvent::Disconnected {
                code: 4005,
                will_reconnect: true,
                ..
            }
        ),
        "{lost:?}"
    );
    wait_event(&mut events, |e| {
        matches!(e, ClientEvent::Reconnecting { attempt: 1, .. })
    })
    .await;
    let (mut ws, _) = accept(&listener).await;
    welcome(&mut ws, 25_000).await;
    within("reconnect", client.wait_connected()).await.expect("connected");
    drop(ws);
    client.close().await;
}

/// The next client frame with op `op`, skipping heartbeat pings.
async fn recv_op(ws: &mut Ws, op: &str) -> Value {
    loop {
        let frame = recv(ws).await;
        if frame["op"] == op {
            return frame;
        }
    }
}

/// A `message` frame of a channel with history.
fn positioned(channel: &str, seq: u64, offset: u64, epoch: &str, data: Value) -> Value {
    json!({"type": "message", "channel": channel, "seq": seq, "offset": offset, "epoch": epoch, "data": data})
}

/// The next `count` messages of `subscription`, as (offset, data) pairs.
async fn next_messages(subscription: &mut Subscription, count: usize) -> Vec<(Option<u64>, Value)> {
    let mut got = Vec::new();
    while got.len() < count {
        let message = within("a message", subscription.next()).await.expect("open");
        got.push((message.offset, message.data));
    }
    got
}

/// A client of a fake gateway on `listener`, connected and subscribed to `news`
/// (with `options`); its subscribe is acknowledged with `ack`'s fields.
async fn subscribed_to_news(
    listener: &TcpListener,
    options: SubscribeOptions,
    ack: Value,
) -> (Client, EventStream, Ws, Subscription, Value) {
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let (client, events) = Client::builder(url)
        .reconnect(quick_policy())
        .build_with_events()
        .expect("client");
    let subscribing = tokio::spawn({
        let client = client.clone();
        async move { client.subscribe_with("news", options).await }
    });
    let (mut ws, _) = accept(listener).await;
    welcome(&mut ws, 25_000).await;
    let subscribe = recv_op(&mut ws, "subscribe").await;
    let mut reply = json!({"type": "ack", "id": subscribe["id"]});
    for (field, value) in ack.as_object().expect("ack fields") {
        reply[field] = value.clone();
    }
    send(&mut ws, reply).await;
    let subscription = within("subscribe", subscribing)
        .await
        .expect("task")
        .expect("subscribed");
    (client, events, ws, subscription, subscribe)
}

/// Drops the fake gateway's end of the connection and accepts and welcomes the
/// client's next one; returns it with the subscribe the client sends on it.
async fn reconnected(listener: &TcpListener, ws: Ws) -> (Ws, Value) {
    drop(ws);
    let (mut ws, _) = accept(listener).await;
    welcome(&mut ws, 25_000).await;
    let subscribe = recv_op(&mut ws, "subscribe").await;
    (ws, subscribe)
}

#[tokio::test]
async fn recovers_from_the_last_position_once_each_and_in_order() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ack = json!({"offset": 40, "epoch": "q7Bf2"});
    let (client, _events, mut ws, mut news, first) =
        subscribed_to_news(&listener, SubscribeOptions::default(), ack).await;
    assert!(
        first.get("recover").is_none(),
        "no recover on the first subscribe: {first}"
    );
    assert!(first.get("latest").is_none(), "{first}");
    for (seq, offset, data) in [(1, 41, "a"), (2, 41, "a again"), (3, 39, "old"), (4, 42, "b")] {
        send(&mut ws, positioned("news", seq, offset, "q7Bf2", json!(data))).await;
    }
    assert_eq!(
        next_messages(&mut news, 2).await,
        [(Some(41), json!("a")), (Some(42), json!("b"))]
    );

    let (mut ws, subscribe) = reconnected(&listener, ws).await;
    assert_eq!(
        subscribe["recover"],
        json!({"offset": 42, "epoch": "q7Bf2"}),
        "{subscribe}"
    );
    assert!(subscribe.get("latest").is_none(), "{subscribe}");
    send(
        &mut ws,
        json!({"type": "ack", "id": subscribe["id"], "offset": 44, "epoch": "q7Bf2", "recovered": true}),
    )
    .await;
    for (seq, offset, data) in [
        (0, 43, "c"),
        (0, 44, "d"),
        (1, 44, "d again"),
        (2, 45, "e"),
        (3, 1, "new epoch"),
    ] {
        let epoch = if data == "new epoch" { "Zz9" } else { "q7Bf2" };
        send(&mut ws, positioned("news", seq, offset, epoch, json!(data))).await;
    }
    let got = next_messages(&mut news, 4).await;
    assert_eq!(
        got,
        [
            (Some(43), json!("c")),
            (Some(44), json!("d")),
            (Some(45), json!("e")),
            (Some(1), json!("new epoch"))
        ]
    );

    // Recovered with nothing delivered since: the next re-subscribe recovers from the same place.
    let (mut ws, subscribe) = reconnected(&listener, ws).await;
    assert_eq!(subscribe["recover"], json!({"offset": 1, "epoch": "Zz9"}));
    send(
        &mut ws,
        json!({"type": "ack", "id": subscribe["id"], "offset": 1, "epoch": "Zz9", "recovered": true}),
    )
    .await;
    let (ws, subscribe) = reconnected(&listener, ws).await;
    assert_eq!(subscribe["recover"], json!({"offset": 1, "epoch": "Zz9"}));
    drop(ws);
    client.close().await;
}

#[tokio::test]
async fn stale_on_recovered_false_and_on_gap() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ack = json!({"offset": 10, "epoch": "q7Bf2"});
    let (client, mut events, ws, mut news, _) = subscribed_to_news(&listener, SubscribeOptions::default(), ack).await;
    let (mut ws, subscribe) = reconnected(&listener, ws).await;
    assert_eq!(subscribe["recover"], json!({"offset": 10, "epoch": "q7Bf2"}));
    send(
        &mut ws,
        json!({"type": "ack", "id": subscribe["id"], "offset": 0, "epoch": "New1", "recovered": false}),
    )
    .await;
    let stale = wait_event(&mut events, |e| matches!(e, ClientEvent::Stale { .. })).await;
    assert_eq!(
        stale,
        ClientEvent::Stale {
            channel: "news".to_owned(),
            reason: GapReason::EpochChanged,
            source: StaleSource::Recover
        }
    );
    // Live delivery goes on from the ack's position.
    send(&mut ws, positioned("news", 1, 1, "New1", json!("fresh"))).await;
    assert_eq!(next_messages(&mut news, 1).await, [(Some(1), json!("fresh"))]);

    send(&mut ws, json!({"type": "gap", "channel": "news", "reason": "too_far"})).await;
    send(&mut ws, json!({"type": "gap", "channel": "news"})).await;
    let gap = wait_event(&mut events, |e| matches!(e, ClientEvent::Gap { .. })).await;
    assert_eq!(
        gap,
        ClientEvent::Gap {
            channel: "news".to_owned()
        }
    );
    for reason in [GapReason::TooFar, GapReason::Unknown] {
        let stale = wait_event(&mut events, |e| matches!(e, ClientEvent::Stale { .. })).await;
        assert_eq!(
            stale,
            ClientEvent::Stale {
                channel: "news".to_owned(),
                reason,
                source: StaleSource::Gap
            }
        );
    }

    // Same epoch, not recovered: too far back.
    let (mut ws, subscribe) = reconnected(&listener, ws).await;
    assert_eq!(subscribe["recover"], json!({"offset": 1, "epoch": "New1"}));
    send(
        &mut ws,
        json!({"type": "ack", "id": subscribe["id"], "offset": 900, "epoch": "New1", "recovered": false}),
    )
    .await;
    let stale = wait_event(&mut events, |e| matches!(e, ClientEvent::Stale { .. })).await;
    assert!(
        matches!(
            stale,
            ClientEvent::Stale {
                reason: GapReason::TooFar,
                source: StaleSource::Recover,
                ..
            }
        ),
        "{stale:?}"
    );

    // History turned off: no position any more, so no recover either.
    let (mut ws, subscribe) = reconnected(&listener, ws).await;
    assert_eq!(subscribe["recover"], json!({"offset": 900, "epoch": "New1"}));
    send(
        &mut ws,
        json!({"type": "ack", "id": subscribe["id"], "recovered": false}),
    )
    .await;
    let stale = wait_event(&mut events, |e| matches!(e, ClientEvent::Stale { .. })).await;
    assert!(
        matches!(
            stale,
            ClientEvent::Stale {
                reason: GapReason::NoHistory,
                ..
            }
        ),
        "{stale:?}"
    );
    let (ws, subscribe) = reconnected(&listener, ws).await;
    assert!(subscribe.get("recover").is_none(), "{subscribe}");
    drop(ws);
    client.close().await;
}

#[tokio::test]
async fn a_channel_without_history_keeps_v1_behaviour() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (client, _events, mut ws, mut news, _) =
        subscribed_to_news(&listener, SubscribeOptions::default(), json!({})).await;
    for _ in 0..2 {
        send(
            &mut ws,
            json!({"type": "message", "channel": "news", "seq": 1, "data": "x"}),
        )
        .await;
    }
    assert_eq!(
        next_messages(&mut news, 2).await,
        [(None, json!("x")), (None, json!("x"))]
    );
    let (ws, subscribe) = reconnected(&listener, ws).await;
    assert_eq!(
        subscribe,
        json!({"op": "subscribe", "id": subscribe["id"], "channel": "news"})
    );
    drop(ws);
    client.close().await;
}

#[tokio::test]
async fn latest_then_recover_from_just_before_the_top() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ack = json!({"offset": 1200, "epoch": "q7Bf2"});
    let (client, _events, ws, _prices, first) =
        subscribed_to_news(&listener, SubscribeOptions::default().latest(), ack).await;
    assert_eq!(first["latest"], json!(true));
    // Gone before the latest publication arrived: it is recovered, not lost.
    let (ws, subscribe) = reconnected(&listener, ws).await;
    assert_eq!(subscribe["recover"], json!({"offset": 1199, "epoch": "q7Bf2"}));
    assert!(subscribe.get("latest").is_none(), "{subscribe}");
    drop(ws);
    client.close().await;
}

#[tokio::test]
async fn idempotent_publish_history_and_their_typed_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let client = Client::builder(url).reconnect(quick_policy()).build().expect("client");
    let (mut ws, _) = accept(&listener).await;
    welcome(&mut ws, 25_000).await;
    within("connect", client.wait_connected()).await.expect("connected");

    let bad = client.publish_with_key("news", "hi", "has space").await;
    assert!(matches!(bad, Err(Error::Protocol(_))), "{bad:?}");
    let publishing = tokio::spawn({
        let client = client.clone();
        async move { client.publish_with_key("news", "hi", "order-7781:shipped").await }
    });
    let publish = recv_op(&mut ws, "publish").await;
    assert_eq!(
        publish,
        json!({"op": "publish", "id": publish["id"], "channel": "news", "data": "hi", "idempotency_key": "order-7781:shipped"})
    );
    send(
        &mut ws,
        json!({"type": "ack", "id": publish["id"], "offset": 45, "epoch": "q7Bf2", "duplicate": true}),
    )
    .await;
    let published = within("publish", publishing).await.expect("task").expect("published");
    assert_eq!(
        (published.offset, published.epoch.as_deref(), published.duplicate),
        (Some(45), Some("q7Bf2"), true)
    );

    let publishing = tokio::spawn({
        let client = client.clone();
        async move { client.publish("news", &1).await }
    });
    let publish = recv_op(&mut ws, "publish").await;
    send(&mut ws, json!({"type": "ack", "id": publish["id"]})).await;
    assert_eq!(
        within("publish", publishing).await.expect("task").expect("published"),
        Published::default()
    );

    let publishing = tokio::spawn({
        let client = client.clone();
        async move { client.publish_with_key("news", &1, "k1").await }
    });
    let publish = recv_op(&mut ws, "publish").await;
    send(
        &mut ws,
        json!({"type": "error", "id": publish["id"], "code": "timeout", "message": "outcome unknown"}),
    )
    .await;
    let outcome = within("publish", publishing).await.expect("task");
    assert!(
        matches!(&outcome, Err(Error::BrokerTimeout { channel, .. }) if channel == "news"),
        "{outcome:?}"
    );
    assert_eq!(
        outcome.err().and_then(|e| e.code()),
        Some(shardcast_client::ErrorCode::Timeout)
    );

    let reading = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .history("prices:eur", HistoryOptions::default().since(41, "q7Bf2").limit(1))
                .await
        }
    });
    let history = recv_op(&mut ws, "history").await;
    assert_eq!(
        history,
        json!({"op": "history", "id": history["id"], "channel": "prices:eur", "since": {"offset": 41, "epoch": "q7Bf2"}, "limit": 1})
    );
    send(
        &mut ws,
        json!({"type": "history", "id": history["id"], "channel": "prices:eur", "offset": 1200, "epoch": "q7Bf2",
               "publications": [{"offset": 42, "data": 1.0825}], "complete": false}),
    )
    .await;
    let read = within("history", reading).await.expect("task").expect("history");
    assert_eq!(
        (read.channel.as_str(), read.offset, read.epoch.as_str(), read.complete),
        ("prices:eur", 1200, "q7Bf2", false)
    );
    assert_eq!(read.publications.len(), 1);
    assert_eq!(
        (read.publications[0].offset, &read.publications[0].data),
        (42, &json!(1.0825))
    );

    let reading = tokio::spawn({
        let client = client.clone();
        async move { client.history("news", HistoryOptions::default()).await }
    });
    let history = recv_op(&mut ws, "history").await;
    assert_eq!(
        history,
        json!({"op": "history", "id": history["id"], "channel": "news"})
    );
    send(
        &mut ws,
        json!({"type": "error", "id": history["id"], "code": "no_history", "message": "news keeps no history"}),
    )
    .await;
    let refused = within("history", reading).await.expect("task");
    assert!(
        matches!(&refused, Err(Error::NoHistory { channel, .. }) if channel == "news"),
        "{refused:?}"
    );
    drop(ws);
    client.close().await;
}

#[tokio::test]
async fn presence_changes_of_subscribed_channels_and_an_older_gateways_presence() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (client, mut events, mut ws, _news, _) =
        subscribed_to_news(&listener, SubscribeOptions::default(), json!({})).await;

    // A channel the client does not want (a leave that raced its unsubscribe, say) is nobody's.
    send(
        &mut ws,
        json!({"type": "join", "channel": "other", "user": "41", "info": null}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "join", "channel": "news", "user": "42", "info": {"name": "Ann"}}),
    )
    .await;
    send(&mut ws, json!({"type": "leave", "channel": "news", "user": "42"})).await;
    let joined = wait_event(&mut events, |e| matches!(e, ClientEvent::Join { .. })).await;
    assert_eq!(
        joined,
        ClientEvent::Join {
            channel: "news".to_owned(),
            user: "42".to_owned(),
            info: json!({"name": "Ann"}),
        }
    );
    let left = wait_event(&mut events, |e| matches!(e, ClientEvent::Leave { .. })).await;
    assert_eq!(
        left,
        ClientEvent::Leave {
            channel: "news".to_owned(),
            user: "42".to_owned(),
        }
    );

    let reading = tokio::spawn({
        let client = client.clone();
        async move { client.presence("news").await }
    });
    let presence = recv_op(&mut ws, "presence").await;
    assert_eq!(
        presence,
        json!({"op": "presence", "id": presence["id"], "channel": "news"})
    );
    send(
        &mut ws,
        json!({"type": "error", "id": presence["id"], "code": "unknown_op", "message": "unknown op `presence`"}),
    )
    .await;
    let refused = within("presence", reading).await.expect("task");
    match &refused {
        Err(
            error @ Error::Server {
                op: "presence",
                code: ErrorCode::UnknownOp,
                channel: Some(channel),
                ..
            },
        ) => {
            assert_eq!(channel, "news");
            assert!(error.to_string().contains("predates presence"), "{error}");
        }
        other => panic!("expected unknown_op, got {other:?}"),
    }
    drop(ws);
    client.close().await;
}
