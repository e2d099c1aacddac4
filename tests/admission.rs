//! Admission control: near the descriptor limit (or the connection cap) new
//! upgrades get HTTP 503 with Retry-After, existing subscribers keep receiving,
//! every refusal is counted, and the gateway admits again once sockets close.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use shardcast_proto::{Encoding, ServerFrame};
use tokio_tungstenite::tungstenite::Error as WsError;

/// Connects until a connect is refused; returns the clients and the refusal.
async fn fill(
    gw: &Gateway,
    max: usize,
) -> (
    Vec<Client>,
    tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
) {
    let mut clients = Vec::new();
    for _ in 0..max {
        match Client::try_connect(gw.ws, Encoding::Json).await {
            Ok(c) => clients.push(c),
            Err(WsError::Http(resp)) => return (clients, *resp),
            Err(e) => panic!("unexpected connect error after {} clients: {e}", clients.len()),
        }
    }
    panic!("no refusal after {max} connections");
}

#[tokio::test]
async fn fd_headroom_refuses_upgrades_and_recovers() {
    let gw = Gateway::launch(Launch {
        args: &["--fd-reserve", "64"],
        nofile: Some(256),
    });
    assert_eq!(
        gw.metric("shardcast_fd_limit").await,
        256.0,
        "soft limit raised to the hard limit"
    );
    let mut subscriber = gw.connect(Encoding::Json).await;
    subscriber.subscribe(1, "alerts").await;

    let (mut clients, refusal) = fill(&gw, 256).await;
    assert_eq!(refusal.status(), 503);
    assert!(
        refusal.headers().contains_key("retry-after"),
        "refusal carries Retry-After"
    );
    assert!(
        clients.len() > 100,
        "refused too early, after {} clients",
        clients.len()
    );
    assert!(
        gw.metric("shardcast_connections_refused_total{reason=\"fd_headroom\"}")
            .await
            >= 1.0
    );
    assert!(gw.metric("shardcast_fd_headroom").await <= 80.0);

    assert_eq!(gw.publish("alerts", json!("still delivered")).await["subscribers"], 1);
    assert!(matches!(subscriber.recv().await, ServerFrame::Message { .. }));
    let mut old = clients.pop().unwrap();
    assert!(old.roundtrip(2).await.is_empty(), "existing connections still work");

    // Free some descriptors: once the gateway recounts, it admits again.
    clients.truncate(clients.len() - 40);
    drop(old);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut again = gw.connect(Encoding::Json).await;
    assert!(again.roundtrip(3).await.is_empty());
}

#[tokio::test]
async fn max_connections_refuses_with_503() {
    let gw = Gateway::start(&["--max-connections", "5"]);
    let (clients, refusal) = fill(&gw, 50).await;
    assert_eq!(clients.len(), 5);
    assert_eq!(refusal.status(), 503);
    assert_eq!(
        gw.metric("shardcast_connections_refused_total{reason=\"max_connections\"}")
            .await,
        1.0
    );
}
