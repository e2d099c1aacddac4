//! A Redis Cluster that loses one of its three masters (no replicas, and
//! `cluster-require-full-coverage no`, so the two others keep serving their slots):
//! the gateways degrade per slot. Publishes to channels on the healthy masters
//! keep working and keep being delivered; only the dead master's channels are
//! refused (quickly), counted, and shown; readiness stays true (an instance that
//! can serve most channels is not pulled from the pool); the cluster view keeps
//! both instances; and when the master returns, only its channels get a gap.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use shardcast_proto::{Encoding, ServerFrame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_master_degrades_only_its_slots() {
    let mut nodes = RedisServer::start_cluster_with(&["--cluster-require-full-coverage", "no"]);
    let url = nodes[0].url();
    let gws = ready_gateways(2, &["--redis", url.as_str(), "--redis-cluster"]).await;
    let (a, b) = (gws[0].as_ref().expect("a"), gws[1].as_ref().expect("b"));
    // The victim: a master that owns neither instance's heartbeat nor node 0 (the
    // gateways' seed address).
    let victim = 2;
    let victim_id = nodes[victim].node_id();
    let channels: Vec<String> = (0..20).map(|i| format!("room-{i}")).collect();
    let affected: Vec<bool> = channels
        .iter()
        .map(|c| nodes[0].owner_of(&format!("shardcast:{c}")) == victim_id)
        .collect();
    let n_affected = affected.iter().filter(|x| **x).count();
    assert!(
        n_affected > 0 && n_affected < channels.len(),
        "{n_affected} of 20 on the victim"
    );
    let mut c = b.connect(Encoding::Json).await;
    for (i, ch) in channels.iter().enumerate() {
        c.subscribe(i as u64 + 1, ch).await;
    }

    nodes[victim].kill();
    // Past the node timeout, the others mark it failed.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    for gw in [a, b] {
        let (status, body) = gw.http("GET", "/health/ready", None).await;
        assert_eq!(status, 200, "still ready with one master down: {body}");
    }
    for (ch, dead) in channels.iter().zip(&affected) {
        let body = json!({"channel": ch, "data": "x"}).to_string();
        let start = Instant::now();
        let (status, reply) = a.http("POST", "/api/publish", Some(&body)).await;
        if *dead {
            assert!(
                status == 503 || status == 504,
                "{ch} on the dead master: {status} {reply}"
            );
            assert!(
                start.elapsed() < Duration::from_millis(1500),
                "{ch}: answered after {:?}",
                start.elapsed()
            );
        } else {
            assert_eq!(status, 200, "{ch} on a healthy master: {reply}");
            match c.recv().await {
                ServerFrame::Message { channel, .. } => assert_eq!(&channel, ch),
                other => panic!("expected {ch}'s message, got {other:?}"),
            }
        }
    }
    let stats: Value = serde_json::from_str(&a.http("GET", "/api/stats", None).await.1).expect("json");
    let degraded = stats["redis_degraded_slots"]
        .as_i64()
        .expect("degraded slots in /api/stats");
    assert!(
        degraded > 4000 && degraded < 7000,
        "about a third of 16384 slots degraded: {stats}"
    );
    assert_eq!(a.metric("shardcast_redis_degraded_slots").await, degraded as f64);
    let view: Value = serde_json::from_str(&a.http("GET", "/api/cluster", None).await.1).expect("json");
    assert_eq!(view["instances"].as_array().map(Vec::len), Some(2), "{view}");

    nodes[victim].restart();
    RedisServer::wait_cluster_ok(&nodes);
    // Gaps only for the affected channels, then delivery again everywhere.
    let mut gaps = std::collections::BTreeSet::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        match tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
            Ok(ServerFrame::Gap { channel, .. }) => {
                gaps.insert(channel);
            }
            Ok(_) => {}
            Err(_) if gaps.len() >= n_affected => break,
            Err(_) => {}
        }
    }
    let expected: std::collections::BTreeSet<String> = channels
        .iter()
        .zip(&affected)
        .filter(|(_, d)| **d)
        .map(|(c, _)| c.clone())
        .collect();
    assert_eq!(gaps, expected, "gaps for the dead master's channels only");
    a.wait_metric("shardcast_redis_degraded_slots", |v| v == 0.0).await;
    for ch in channels.iter().filter(|_| true).take(20) {
        let reply = a.publish(ch, json!("again")).await;
        assert_eq!(reply["ok"], true, "{ch} after the master's return: {reply}");
    }
}
