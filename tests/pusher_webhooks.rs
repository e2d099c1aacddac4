//! Pusher webhooks (PROTOCOL.md 20.7) across three gateways on one redis-server,
//! received by a test HTTP server: each `channel_occupied` and `channel_vacated`
//! arrives exactly once however many instances have subscribers, signed with the
//! app's secret; a batch answered 500 is retried and arrives; when the instance
//! holding a channel's only subscribers is SIGKILLed, the survivors vacate it
//! within the instance TTL, once.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use shardcast_proto::Encoding;

const KEY: &str = "hook-key";
const SECRET: &str = "hook-secret";

fn config(port: u16) -> std::path::PathBuf {
    let hooks = format!(
        "channel_prefix = \"app1:\"\nwebhook_url = \"http://127.0.0.1:{port}/hooks\"\n\
         webhook_events = [\"channel_occupied\", \"channel_vacated\"]"
    );
    pusher_app_config("webhooks", ("1", KEY, SECRET), &hooks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupancy_webhooks_once_across_instances_retried_and_after_a_death() {
    let redis = RedisServer::start();
    let (port, got) = webhook_receiver(KEY, SECRET).await;
    let path = config(port);
    let gws = heartbeat_cluster(3, &redis, &path).await;
    let wait = Duration::from_secs(5);

    // One subscriber on each instance: occupied once; all gone: vacated once.
    let mut clients = Vec::new();
    for gw in &gws {
        let mut c = gw.connect(Encoding::Json).await;
        c.subscribe(1, "app1:room").await;
        clients.push(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got.exactly("channel_occupied", "room", 1, wait).await;
    assert_eq!(got.count("channel_vacated", "room"), 0);
    for c in clients.drain(..) {
        c.close().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got.exactly("channel_vacated", "room", 1, wait).await;

    // A channel outside the app's prefix is none of its business.
    let mut other = gws[0].connect(Encoding::Json).await;
    other.subscribe(1, "elsewhere").await;

    // The receiver fails twice: the batch is retried and arrives once.
    got.refuse.store(2, Ordering::SeqCst);
    let mut retried = gws[1].connect(Encoding::Json).await;
    retried.subscribe(1, "app1:retry").await;
    got.exactly("channel_occupied", "retry", 1, Duration::from_secs(10))
        .await;
    assert_eq!(got.refused.load(Ordering::SeqCst), 2);
    assert!(
        gws[1]
            .metric("shardcast_webhook_requests_total{result=\"failed\"}")
            .await
            >= 2.0
    );
    assert_eq!(got.count("channel_occupied", "elsewhere"), 0);

    // The only subscribers of `solo` are on an instance that dies.
    let mut solo = gws[2].connect(Encoding::Json).await;
    solo.subscribe(1, "app1:solo").await;
    got.exactly("channel_occupied", "solo", 1, wait).await;
    gws[2].signal(libc::SIGKILL);
    let killed = Instant::now();
    got.exactly("channel_vacated", "solo", 1, Duration::from_secs(6)).await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "vacated {took:?} after the kill (TTL 2 s)"
    );
    assert_eq!(
        got.count("channel_vacated", "retry"),
        0,
        "retry still has its subscriber"
    );
    drop((solo, retried, other));
}
