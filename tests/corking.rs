//! Corking (src/shard/cork.rs) keeps what a delivery promises: when a busy shard
//! gathers several publications for a socket into one vectored write and the
//! kernel takes only part of it, the client still reads every frame whole and in
//! order; and a subscriber that stops reading is still closed with 4000 once its
//! queue passes `--max-queue-bytes`. Correctness only: speed is bench/'s business.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use shardcast_proto::close;
use shardcast_testkit::ws_frame::{self, opcode};
use tokio::io::AsyncReadExt;

/// Publications per API batch: a batch reaches the shard as a burst of commands,
/// which is what makes it busy and corks its writes.
const BATCH: usize = 100;
const BATCHES: usize = 6;

fn batch_body(channel: &str, first: usize, pad: &str) -> String {
    let items: Vec<_> = (first..first + BATCH)
        .map(|i| serde_json::json!({"channel": channel, "data": {"i": i, "pad": pad}}))
        .collect();
    serde_json::Value::from(items).to_string()
}

/// Reads `count` message frames the slow way (at most 300 bytes a read, a pause
/// every few reads) and checks each is whole, in order, and carries its payload.
async fn read_slowly_in_order(stream: &mut tokio::net::TcpStream, count: usize, pad: &str) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 300];
    let mut next = 0usize;
    let mut last_seq = 0u64;
    let mut reads = 0u64;
    while next < count {
        while let Some(header) = ws_frame::parse_header(&buf).expect("a well-formed frame") {
            if buf.len() < header.frame_len() {
                break;
            }
            let payload = &buf[header.header_len..header.frame_len()];
            assert!(header.fin, "a publication is one unfragmented frame");
            assert_eq!(header.opcode, opcode::TEXT);
            let msg: serde_json::Value = serde_json::from_slice(payload).expect("a whole JSON message");
            assert_eq!(msg["type"], "message", "{msg}");
            assert_eq!(msg["data"]["i"], next as u64, "publication {next} arrives in its place");
            assert_eq!(msg["data"]["pad"], pad, "its payload intact");
            let seq = msg["seq"].as_u64().expect("seq");
            assert!(seq > last_seq, "seq {seq} after {last_seq}");
            last_seq = seq;
            next += 1;
            buf.drain(..header.frame_len());
        }
        if next == count {
            break;
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("frames keep coming")
            .expect("read");
        assert!(n > 0, "the gateway closed the socket after {next} messages");
        buf.extend_from_slice(&chunk[..n]);
        reads += 1;
        if reads % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Keeps reading the clients in the background, so only the test's slow socket lags.
fn readers(clients: Vec<Client>) -> Vec<tokio::task::JoinHandle<()>> {
    clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { while let Some(Ok(_)) = c.ws.next().await {} }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_frames_arrive_whole_and_in_order_through_partial_writes() {
    // One shard, so every subscriber shares the busy turns; a queue bound far
    // above what the test sends, so nothing is dropped.
    let gw = Gateway::start(&["--shards", "1", "--max-queue-bytes", "16777216"]);
    let mut slow = RawClient::connect_with_receive_buffer(gw.ws, 2048).await;
    slow.send_frame(0x81, br#"{"op":"subscribe","id":1,"channel":"corked"}"#, true)
        .await;
    assert_eq!(slow.read_frame().await.1, br#"{"type":"ack","id":1}"#.to_vec());
    // Other subscribers of the channel give the shard more to do per publication.
    let _others = readers(subscribers(gw.ws, "corked", 20).await);

    let pad = "p".repeat(1500);
    for b in 0..BATCHES {
        let (status, text) = gw
            .http("POST", "/api/publish", Some(&batch_body("corked", b * BATCH, &pad)))
            .await;
        assert_eq!(status, 200, "{text}");
    }
    read_slowly_in_order(&mut slow.stream, BATCH * BATCHES, &pad).await;

    let writes = gw.metric("shardcast_corked_writes_total").await;
    let frames = gw.metric("shardcast_corked_frames_total").await;
    eprintln!("corked writes {writes}, frames they completed {frames}");
    assert!(writes > 0.0, "the bursts were gathered (corked writes {writes})");
    assert_eq!(
        gw.metric("shardcast_messages_dropped_total{reason=\"slow_consumer\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corked_subscriber_that_stops_reading_is_closed_with_4000_at_the_bound() {
    let gw = Gateway::start(&["--shards", "1", "--max-queue-bytes", "65536", "--close-timeout", "10s"]);
    let mut slow = RawClient::connect_with_receive_buffer(gw.ws, 2048).await;
    slow.send_frame(0x81, br#"{"op":"subscribe","id":1,"channel":"corked"}"#, true)
        .await;
    assert_eq!(slow.read_frame().await.1, br#"{"type":"ack","id":1}"#.to_vec());
    let _others = readers(subscribers(gw.ws, "corked", 3).await);

    // 16 MB: far past the 64 KiB bound plus what the kernel holds (loopback
    // send buffers grow to megabytes).
    let pad = "p".repeat(4000);
    for b in 0..40 {
        let (status, text) = gw
            .http("POST", "/api/publish", Some(&batch_body("corked", b * BATCH, &pad)))
            .await;
        assert_eq!(status, 200, "{text}");
    }
    let dropped = gw.wait_slow_consumer_drops().await;
    assert!(dropped > 0.0, "the backlog was dropped and counted");
    assert!(
        gw.metric("shardcast_corked_writes_total").await > 0.0,
        "the bursts were gathered"
    );
    // What the kernel held, in order, then the close.
    assert_eq!(slow.expect_close().await, close::SLOW_CONSUMER);
    let closed = gw
        .wait_metric("shardcast_disconnections_total{reason=\"slow_consumer\"}", |v| v >= 1.0)
        .await;
    assert_eq!(closed, 1.0, "only the slow subscriber was cut off");
}
