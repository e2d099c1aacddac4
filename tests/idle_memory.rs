//! Regression guard for the headline figure: idle subscribed sockets must cost the
//! gateway little memory. The benchmark measures the real number; this fails only
//! if it grows past 4 KiB per socket (tungstenite's defaults cost ~135 KiB).

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use shardcast_proto::Encoding;

const SOCKETS: usize = 3000;
const CONCURRENCY: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_subscribed_sockets_cost_under_4_kib_each() {
    let gw = Gateway::start(&["--shards", "2"]);
    // Warm up: first connections and channels allocate the shard's fixed structures.
    let mut clients = Vec::with_capacity(SOCKETS + 50);
    for i in 0..50 {
        let mut c = gw.connect(Encoding::Json).await;
        c.subscribe(1, &format!("room-{}", i % 10)).await;
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = gw.rss();

    for batch in 0..SOCKETS / CONCURRENCY {
        let ws = gw.ws;
        let opened = join_all((0..CONCURRENCY).map(|i| async move {
            let mut c = Client::connect(ws, Encoding::Json).await;
            c.subscribe(1, &format!("room-{}", (batch * CONCURRENCY + i) % 10))
                .await;
            c
        }))
        .await;
        clients.extend(opened);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = gw.rss();
    let per_socket = after.saturating_sub(before) as f64 / SOCKETS as f64;
    println!("gateway RSS: {before} -> {after} bytes; {per_socket:.0} bytes per idle subscribed socket");
    assert_eq!(
        gw.metric("shardcast_connections{shard=\"0\"}").await + gw.metric("shardcast_connections{shard=\"1\"}").await,
        (SOCKETS + 50) as f64
    );
    assert!(per_socket <= 4096.0, "{per_socket:.0} bytes per idle socket");
}
