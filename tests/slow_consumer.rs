//! A subscriber that stops reading is cut off with the slow-consumer close code
//! once its bounded queue fills, while a fast subscriber of the same channel gets
//! every message, and the gateway's memory stays bounded.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use shardcast_proto::{close, Encoding};

const MESSAGES: usize = 4000;
const BATCH: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_fast_one_gets_everything() {
    let gw = Gateway::start(&["--max-queue-bytes", "65536", "--close-timeout", "10s", "--shards", "2"]);
    let rss_before = gw.rss();

    // The slow client: a raw socket with a small receive buffer, which stops reading
    // right after its subscription is acknowledged.
    let mut slow = RawClient::connect_with_receive_buffer(gw.ws, 4096).await;
    slow.send_frame(0x81, br#"{"op":"subscribe","id":1,"channel":"firehose"}"#, true)
        .await;
    assert_eq!(slow.read_frame().await.1, br#"{"type":"ack","id":1}"#.to_vec());

    let mut fast = gw.connect(Encoding::Json).await;
    fast.subscribe(1, "firehose").await;
    let reader = tokio::spawn(async move {
        let mut seen = 0usize;
        while seen < MESSAGES {
            match tokio::time::timeout(WAIT, fast.ws.next()).await {
                Ok(Some(Ok(m))) if m.is_text() => seen += 1,
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        (seen, fast)
    });

    let payload = "x".repeat(4000);
    for _ in 0..MESSAGES / BATCH {
        let batch: Vec<_> = (0..BATCH)
            .map(|_| serde_json::json!({"channel": "firehose", "data": payload}))
            .collect();
        let (status, text) = gw
            .http(
                "POST",
                "/api/publish",
                Some(&serde_json::Value::from(batch).to_string()),
            )
            .await;
        assert_eq!(status, 200, "{text}");
    }
    let (seen, _fast) = reader.await.unwrap();
    assert_eq!(seen, MESSAGES, "the fast subscriber got every message");

    let dropped = gw.wait_slow_consumer_drops().await;
    assert!(dropped > 0.0, "the slow consumer's backlog was dropped and counted");
    let rss_growth = gw.rss().saturating_sub(rss_before);
    assert!(rss_growth < 48 << 20, "gateway RSS grew by {rss_growth} bytes");

    // Reading again, the slow client finds what the kernel had buffered, then the close.
    assert_eq!(slow.expect_close().await, close::SLOW_CONSUMER);
    let closed = gw
        .wait_metric("shardcast_disconnections_total{reason=\"slow_consumer\"}", |v| v >= 1.0)
        .await;
    assert_eq!(closed, 1.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        gw.metric("shardcast_connections{shard=\"0\"}").await + gw.metric("shardcast_connections{shard=\"1\"}").await,
        1.0
    );
}
