//! The cluster view after an instance is killed: its connections leave
//! `/api/cluster`'s total (and `shardcast_cluster_connections`) within about two
//! heartbeat intervals, not when its record's TTL runs out, so clients that moved
//! to the other instances are not counted twice meanwhile. Until the record
//! expires the dead instance is listed under `overdue`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shardcast_proto::Encoding;

const INTERVAL_MS: u64 = 300;

async fn cluster(gw: &Gateway) -> serde_json::Value {
    serde_json::from_str(&gw.http("GET", "/api/cluster", None).await.1).expect("cluster view is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_leaves_the_total_within_two_heartbeats() {
    let redis = RedisServer::start();
    let interval = format!("{INTERVAL_MS}ms");
    let args = [
        "--redis",
        &redis.url(),
        "--heartbeat-interval",
        &interval,
        "--instance-ttl",
        "3s",
    ];
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&args)).collect();
    let mut clients = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        gw.wait_ready(200).await;
        for _ in 0..(i + 2) {
            clients.push(gw.connect(Encoding::Json).await);
        }
    }
    let start = Instant::now();
    while cluster(&gws[0]).await["total_connections"] != 9 || cluster(&gws[1]).await["total_connections"] != 9 {
        assert!(start.elapsed() < WAIT, "cluster view: {}", cluster(&gws[0]).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dead = gws[2].node_id_from_logs();
    gws[2].signal(libc::SIGKILL);
    let killed = Instant::now();
    let (mut left_0, mut left_1) = (None, None);
    while left_0.is_none() || left_1.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "still counted: {} / {}",
            cluster(&gws[0]).await,
            cluster(&gws[1]).await
        );
        for (gw, left) in [(&gws[0], &mut left_0), (&gws[1], &mut left_1)] {
            if left.is_none() && cluster(gw).await["total_connections"] == 5 {
                *left = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = left_0.max(left_1).unwrap_or_default();
    eprintln!("the killed instance left the totals after {left_0:?} and {left_1:?}");
    // Overdue by more than one interval, noticed at the next refresh: at most about
    // three intervals after its last heartbeat, against a 3 s TTL.
    assert!(
        left < Duration::from_millis(4 * INTERVAL_MS),
        "the dead instance was counted for {left:?}"
    );
    let view = cluster(&gws[1]).await;
    let nodes = |key: &str| -> Vec<String> {
        view[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["node"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(!nodes("instances").contains(&dead), "{view}");
    assert_eq!(nodes("overdue"), vec![dead.clone()], "{view}");
    assert_eq!(
        gws[0].wait_metric("shardcast_cluster_connections", |v| v == 5.0).await,
        5.0
    );
    // Once its record expires, it is gone from the listing too.
    let start = Instant::now();
    while !cluster(&gws[0]).await["overdue"].as_array().unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", cluster(&gws[0]).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster(&gws[0]).await["instances"].as_array().unwrap().len(), 2);
}
