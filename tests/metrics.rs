//! /metrics reports what a dashboard needs, and its numbers match what the test
//! can count from outside.

mod common;

use common::*;
use serde_json::json;
use shardcast_proto::Encoding;

async fn connection_total(gw: &Gateway) -> f64 {
    let text = gw.metrics().await;
    metric_value(&text, "shardcast_connections{shard=\"0\"}")
        + metric_value(&text, "shardcast_connections{shard=\"1\"}")
}

#[tokio::test]
async fn connection_gauge_matches_open_clients() {
    let gw = Gateway::start(&["--shards", "2"]);
    let mut clients = Vec::new();
    for _ in 0..7 {
        let mut c = gw.connect(Encoding::Json).await;
        c.subscribe(1, "room").await;
        clients.push(c);
    }
    assert_eq!(connection_total(&gw).await, 7.0);
    let on_shard0 = clients.iter().filter(|c| c.shard == 0).count() as f64;
    assert_eq!(gw.metric("shardcast_connections{shard=\"0\"}").await, on_shard0);
    assert_eq!(gw.metric("shardcast_subscriptions{shard=\"0\"}").await, on_shard0);
    for c in clients.drain(..3) {
        c.close().await;
    }
    let start = std::time::Instant::now();
    while connection_total(&gw).await != 4.0 && start.elapsed() < WAIT {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(connection_total(&gw).await, 4.0);
    assert_eq!(
        gw.metric("shardcast_disconnections_total{reason=\"client_close\"}")
            .await,
        3.0
    );

    let stats: serde_json::Value = serde_json::from_str(&gw.http("GET", "/api/stats", None).await.1).unwrap();
    assert_eq!(stats["connections"], 4);

    assert_eq!(gw.publish("room", json!(1)).await["subscribers"], 4);
    let text = gw.metrics().await;
    assert_eq!(metric_value(&text, "shardcast_messages_delivered_total"), 4.0);
    assert_eq!(
        metric_value(&text, "shardcast_messages_published_total{source=\"api\"}"),
        1.0
    );
    assert_eq!(metric_value(&text, "shardcast_channels"), 1.0);
    for name in [
        "shardcast_open_fds",
        "shardcast_fd_limit",
        "shardcast_fd_headroom",
        "shardcast_process_resident_memory_bytes",
        "shardcast_shard_loop_lag_seconds_count{shard=\"1\"}",
        "shardcast_ready",
    ] {
        let v = gw.wait_metric(name, |v| v > 0.0).await;
        assert!(v > 0.0, "{name} = {v}");
    }
}
