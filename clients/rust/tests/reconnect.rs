//! Losing the gateway, against real gateway processes: reconnecting and
//! re-subscribing after a restart (SIGTERM drain, then a new process on the same
//! port), stopping for good after close codes and HTTP statuses that blame the
//! client, the heartbeat noticing a frozen gateway, and 503 `Retry-After`.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, wait_event, within, Gateway};
use futures_util::StreamExt;
use serde_json::json;
use shardcast_client::{Client, ClientEvent, ConnectionState, Encoding, Error, Heartbeat, ReconnectPolicy};

/// Short delays, so that tests do not wait out production backoff.
fn quick_policy() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        ..ReconnectPolicy::default()
    }
}

async fn reconnects_after_restart(encoding: Encoding) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut gateway = Gateway::start_at(&listen, &["--drain-window", "500ms"]);
    let (client, mut events) = Client::builder(gateway.ws_url())
        .encoding(encoding)
        .reconnect(quick_policy())
        .build_with_events()
        .expect("client");
    let mut news = within("subscribe", client.subscribe("news")).await.expect("subscribed");
    within("publish", gateway.admin().publish("news", &json!({"before": true})))
        .await
        .expect("publish");
    assert_eq!(
        within("message", news.next()).await.expect("open").data,
        json!({"before": true})
    );

    // A drain closes with 1001 and a retry hint; the client will come back.
    assert_eq!(gateway.terminate(), Some(0), "a drained gateway exits 0");
    let disconnected = wait_event(&mut events, |e| matches!(e, ClientEvent::Disconnected { .. })).await;
    let ClientEvent::Disconnected {
        code,
        reason,
        was_connected,
        will_reconnect,
    } = disconnected
    else {
        unreachable!()
    };
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("retry_ms="), "{reason}");
    assert!(was_connected && will_reconnect);
    let ClientEvent::Reconnecting { delay, retry_hint, .. } =
        wait_event(&mut events, |e| matches!(e, ClientEvent::Reconnecting { .. })).await
    else {
        unreachable!()
    };
    let hint = retry_hint.expect("the hint from the close reason");
    assert!(delay >= hint, "the hint is a floor: {delay:?} < {hint:?}");

    // While the gateway is down, attempts fail and back off; the subscription stays registered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(client.state(), ConnectionState::Connected);

    // A new process on the same port: the client reconnects and re-subscribes by itself.
    let gateway = Gateway::start_at(&listen, &[]);
    wait_event(
        &mut events,
        |e| matches!(e, ClientEvent::Subscribed { channel, resubscribed: true } if channel == "news"),
    )
    .await;
    assert_eq!(client.state(), ConnectionState::Connected);
    assert_eq!(client.welcome().expect("welcome").node, gateway.node);
    let receipt = within("publish", gateway.admin().publish("news", &json!({"after": true})))
        .await
        .expect("publish");
    assert_eq!(receipt.subscribers, 1, "re-subscribed on the new gateway");
    let message = within("message", news.next()).await.expect("the same stream goes on");
    assert_eq!(message.data, json!({"after": true}));
    assert_eq!(message.seq, 1, "seq restarts on a new instance");
    client.close().await;
}

#[tokio::test]
async fn reconnects_and_resubscribes_after_a_gateway_restart_json() {
    reconnects_after_restart(Encoding::Json).await;
}

#[tokio::test]
async fn reconnects_and_resubscribes_after_a_gateway_restart_msgpack() {
    reconnects_after_restart(Encoding::MsgPack).await;
}

#[tokio::test]
async fn no_reconnect_after_message_too_big() {
    let gateway = Gateway::start(&["--max-message-bytes", "128"]);
    let (client, mut events) = Client::builder(gateway.ws_url())
        .reconnect(quick_policy())
        .build_with_events()
        .expect("client");
    let mut news = within("subscribe", client.subscribe("news")).await.expect("subscribed");

    // A frame above the gateway's limit (which the client was not told about, so its
    // local check at the default 64 KiB lets it through): close 1009, not to be retried.
    let big = "x".repeat(1024);
    match within("publish", client.publish("news", &big)).await {
        Err(Error::ConnectionLost { code: 1009, .. }) => {}
        other => panic!("expected the connection to be lost with 1009, got {other:?}"),
    }
    let disconnected = wait_event(&mut events, |e| matches!(e, ClientEvent::Disconnected { .. })).await;
    assert!(
        matches!(
            disconnected,
            ClientEvent::Disconnected {
                code: 1009,
                will_reconnect: false,
                ..
            }
        ),
        "{disconnected:?}"
    );
    let closed = wait_event(&mut events, |e| matches!(e, ClientEvent::Closed { .. })).await;
    assert!(
        matches!(closed, ClientEvent::Closed { code: Some(1009), .. }),
        "{closed:?}"
    );
    assert_eq!(within("the event stream to end", events.recv()).await, None);
    assert_eq!(client.state(), ConnectionState::Closed);
    assert!(matches!(
        client.stop_reason(),
        Some(Error::Closed { code: Some(1009), .. })
    ));
    assert_eq!(within("end of stream", news.next()).await, None);

    // It stays down: no new connection shows up on the gateway.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.state(), ConnectionState::Closed);
    let stats = within("stats", gateway.admin().stats()).await.expect("stats");
    assert_eq!(stats.connections, 0);
    assert!(matches!(
        client.ping().await,
        Err(Error::Closed { code: Some(1009), .. })
    ));
}

#[tokio::test]
async fn heartbeat_detects_a_frozen_gateway() {
    let gateway = Gateway::start(&[]);
    let (client, mut events) = Client::builder(gateway.ws_url())
        .reconnect(quick_policy())
        .connect_timeout(Duration::from_secs(1))
        .heartbeat(Heartbeat {
            enabled: true,
            interval: Some(Duration::from_millis(300)),
            timeout: Some(Duration::from_millis(300)),
        })
        .build_with_events()
        .expect("client");
    let _news = within("subscribe", client.subscribe("news")).await.expect("subscribed");

    // A stopped process keeps its sockets open but answers nothing: only a heartbeat notices.
    gateway.signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    let disconnected = wait_event(&mut events, |e| matches!(e, ClientEvent::Disconnected { .. })).await;
    let noticed_after = frozen_at.elapsed();
    gateway.signal(libc::SIGCONT);
    let ClientEvent::Disconnected {
        code,
        reason,
        will_reconnect,
        ..
    } = disconnected
    else {
        unreachable!()
    };
    assert_eq!(code, 1006);
    assert!(reason.contains("heartbeat timeout"), "{reason}");
    assert!(will_reconnect);
    assert!(
        noticed_after >= Duration::from_millis(500) && noticed_after < Duration::from_secs(5),
        "noticed after {noticed_after:?}"
    );

    // Once the gateway runs again the client comes back and re-subscribes.
    wait_event(
        &mut events,
        |e| matches!(e, ClientEvent::Subscribed { channel, resubscribed: true } if channel == "news"),
    )
    .await;
    let receipt = within("publish", gateway.admin().publish("news", &1))
        .await
        .expect("publish");
    assert_eq!(receipt.subscribers, 1);
    client.close().await;
}

#[tokio::test]
async fn a_quiet_healthy_connection_survives_the_heartbeat() {
    let gateway = Gateway::start(&[]);
    let (client, mut events) = Client::builder(gateway.ws_url())
        .heartbeat(Heartbeat {
            enabled: true,
            interval: Some(Duration::from_millis(200)),
            timeout: Some(Duration::from_secs(1)),
        })
        .build_with_events()
        .expect("client");
    within("connect", client.wait_connected()).await.expect("connected");
    // Many heartbeat periods with no traffic but the heartbeat's own pings and pongs.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(client.state(), ConnectionState::Connected);
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(10), events.recv()).await {
        assert!(
            !matches!(event, ClientEvent::Disconnected { .. }),
            "unexpected {event:?}"
        );
    }
    client.close().await;
}

#[tokio::test]
async fn refused_upgrade_waits_for_retry_after() {
    let gateway = Gateway::start(&["--max-connections", "1"]);
    let first = Client::connect(gateway.ws_url()).expect("first client");
    within("first connect", first.wait_connected())
        .await
        .expect("connected");

    let (second, mut events) = Client::builder(gateway.ws_url())
        .reconnect(quick_policy())
        .build_with_events()
        .expect("second client");
    let refused = wait_event(&mut events, |e| matches!(e, ClientEvent::Disconnected { .. })).await;
    assert!(
        matches!(&refused, ClientEvent::Disconnected { code: 1006, reason, was_connected: false, will_reconnect: true } if reason.contains("503")),
        "{refused:?}"
    );
    let ClientEvent::Reconnecting { delay, retry_hint, .. } =
        wait_event(&mut events, |e| matches!(e, ClientEvent::Reconnecting { .. })).await
    else {
        unreachable!()
    };
    // The gateway sends Retry-After: 2, well above this policy's 400 ms cap.
    assert_eq!(retry_hint, Some(Duration::from_secs(2)));
    assert_eq!(delay, Duration::from_secs(2));

    // Room frees up; the retry after the wait gets in.
    first.close().await;
    within("second connect", second.wait_connected())
        .await
        .expect("connected");
    second.close().await;
}

#[tokio::test]
async fn no_retry_after_a_fatal_http_status() {
    let gateway = Gateway::start(&[]);
    let url = format!("ws://{}/not-the-ws-path", gateway.ws);
    let (client, mut events) = Client::builder(url)
        .reconnect(quick_policy())
        .build_with_events()
        .expect("client");
    let closed = wait_event(&mut events, |e| matches!(e, ClientEvent::Closed { .. })).await;
    assert!(
        matches!(&closed, ClientEvent::Closed { reason, .. } if reason.contains("HTTP 404")),
        "{closed:?}"
    );
    assert_eq!(client.state(), ConnectionState::Closed);
    match within("subscribe", client.subscribe("news")).await {
        Err(Error::Closed { reason, .. }) => assert!(reason.contains("404"), "{reason}"),
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[tokio::test]
async fn subscribe_before_the_gateway_exists() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (client, mut events) = Client::builder(format!("ws://{listen}/ws"))
        .reconnect(quick_policy())
        .build_with_events()
        .expect("client");
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.subscribe("early").await }
    });
    // Connection refused, again and again, with growing delays.
    wait_event(&mut events, |e| {
        matches!(e, ClientEvent::Reconnecting { attempt: 2, .. })
    })
    .await;
    assert!(
        matches!(
            client.publish("early", &1).await,
            Err(Error::NotConnected { op: "publish" })
        ),
        "publishes are not queued"
    );
    let gateway = Gateway::start_at(&listen, &[]);
    let mut early = within("subscribe", pending).await.expect("task").expect("subscribed");
    within("publish", gateway.admin().publish("early", &"hi"))
        .await
        .expect("publish");
    assert_eq!(within("message", early.next()).await.expect("open").data, json!("hi"));
    client.close().await;
}

#[tokio::test]
async fn oversized_publish_is_refused_locally_when_the_limit_is_known() {
    let gateway = Gateway::start(&["--max-message-bytes", "128", "--allow-client-publish"]);
    let client = Client::builder(gateway.ws_url())
        .max_message_bytes(128)
        .build()
        .expect("client");
    let mut news = within("subscribe", client.subscribe("news")).await.expect("subscribed");
    match within("publish", client.publish("news", &"x".repeat(1024))).await {
        Err(Error::MessageTooLarge { size, limit: 128 }) => assert!(size > 1024, "{size}"),
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // Nothing was sent: the connection is intact and small publishes still go through.
    within("publish", client.publish("news", &"small"))
        .await
        .expect("publish");
    assert_eq!(within("message", news.next()).await.expect("open").data, json!("small"));
    assert_eq!(client.state(), ConnectionState::Connected);
    client.close().await;
}
