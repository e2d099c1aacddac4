//! Fault injection: half of 2,000 subscribers of one channel stop reading.
//!
//! Each slow subscriber's outbound queue stays bounded (`--max-queue-bytes`), so the
//! gateway's memory does too; each is closed with 4000 once its queue overflows; and
//! the 1,000 subscribers that keep reading see no added delivery latency beyond a
//! stated bound, compared with the same publish stream before the slow half joined.
//!
//! The slow sockets advertise an Internet-like MSS (1400) and a small receive
//! buffer: on loopback the kernel would otherwise give each of them megabytes of
//! send buffer (the MSS there is 64 KiB), and 1,000 of them would press on the
//! machine's TCP memory long before the gateway's own limit is reached.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const HALF: usize = 1000;
const MESSAGES_PER_PHASE: usize = 250;
const PUBLISH_EVERY: Duration = Duration::from_millis(10);
const PAYLOAD: usize = 1024;
const QUEUE_LIMIT: usize = 65536;

/// Sends a subscribe and reads its ack.
async fn subscribe(s: &mut TcpStream, channel: &str) {
    let frame = format!(r#"{{"op":"subscribe","id":1,"channel":"{channel}"}}"#);
    s.write_all(&masked_text(frame.as_bytes())).await.unwrap();
    let (_, payload) = tokio::time::timeout(WAIT, read_server_frame(s))
        .await
        .expect("ack in time")
        .unwrap();
    assert_eq!(payload, br#"{"type":"ack","id":1}"#);
}

/// A subscriber that will stop reading: small receive buffer, small MSS.
async fn slow_socket(gw: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_tcp_mss(1400).unwrap();
    socket.connect(&gw.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let stream = TcpStream::from_std(socket.into()).unwrap();
    let mut raw = RawClient::upgrade(stream, gw).await;
    subscribe(&mut raw.stream, "ticks").await;
    raw.stream
}

/// Microseconds since the test's epoch; publications carry it, readers subtract it.
fn micros(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// Reads until the "stop" marker; returns (sent-at, latency) for every message.
async fn read_stream(mut s: TcpStream, epoch: Instant) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    loop {
        let (_, payload) = tokio::time::timeout(WAIT, read_server_frame(&mut s))
            .await
            .expect("a reader stalled")
            .expect("a reader's connection broke");
        let now = micros(epoch);
        let text = std::str::from_utf8(&payload).unwrap();
        if text.contains(r#""data":"stop""#) {
            return seen;
        }
        let Some(at) = text.split("\"t=").nth(1) else {
            continue;
        };
        let sent: u64 = at.split(';').next().unwrap().parse().unwrap();
        seen.push((sent, now - sent));
    }
}

/// Publishes one phase of the stream at a steady rate.
async fn publish_phase(gw: &Gateway, epoch: Instant) {
    let pad = "x".repeat(PAYLOAD);
    let mut next = Instant::now();
    for _ in 0..MESSAGES_PER_PHASE {
        let data = format!("t={};{pad}", micros(epoch));
        let body = serde_json::json!({"channel": "ticks", "data": data}).to_string();
        let (status, text) = gw.http("POST", "/api/publish", Some(&body)).await;
        assert_eq!(status, 200, "{text}");
        next += PUBLISH_EVERY;
        tokio::time::sleep_until(next.into()).await;
    }
}

fn summary(latencies: &[u64]) -> (Duration, Duration, Duration) {
    let mut d: Vec<Duration> = latencies.iter().map(|&us| Duration::from_micros(us)).collect();
    (
        percentile(&mut d, 50.0),
        percentile(&mut d, 99.0),
        percentile(&mut d, 100.0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_half_is_cut_off_and_the_readers_keep_their_latency() {
    let queue_limit = QUEUE_LIMIT.to_string();
    let gw = Gateway::start(&["--max-queue-bytes", &queue_limit, "--close-timeout", "10s"]);
    let epoch = Instant::now();

    let mut readers = Vec::with_capacity(HALF);
    for chunk in 0..HALF / 100 {
        let opened = futures_util::future::join_all((0..100).map(|_| async {
            let mut s = lean_connect(gw.ws, None).await.unwrap();
            subscribe(&mut s, "ticks").await;
            s
        }))
        .await;
        readers.extend(opened);
        let _ = chunk;
    }
    let readers: Vec<_> = readers
        .into_iter()
        .map(|s| tokio::spawn(read_stream(s, epoch)))
        .collect();

    // Phase A: the readers alone.
    let rss_before = gw.rss();
    let phase_a_start = micros(epoch);
    publish_phase(&gw, epoch).await;

    // Phase B: the slow half subscribes, then never reads again.
    let mut slow = Vec::with_capacity(HALF);
    for _ in 0..HALF / 100 {
        slow.extend(futures_util::future::join_all((0..100).map(|_| slow_socket(gw.ws))).await);
    }
    let phase_b_start = micros(epoch);
    let mut rss_peak = gw.rss();
    let publishing = publish_phase(&gw, epoch);
    let sampling = async {
        let mut peak = 0;
        for _ in 0..30 {
            peak = peak.max(gw.rss());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    };
    let ((), sampled_peak) = tokio::join!(publishing, sampling);
    rss_peak = rss_peak.max(sampled_peak);
    let (status, _) = gw
        .http("POST", "/api/publish", Some(r#"{"channel":"ticks","data":"stop"}"#))
        .await;
    assert_eq!(status, 200);

    let mut phase_a = Vec::new();
    let mut phase_b = Vec::new();
    for r in readers {
        let seen = r.await.unwrap();
        assert_eq!(seen.len(), 2 * MESSAGES_PER_PHASE, "a reader missed messages");
        for (sent, latency) in seen {
            if sent >= phase_b_start {
                phase_b.push(latency);
            } else if sent >= phase_a_start {
                phase_a.push(latency);
            }
        }
    }
    let (a50, a99, a_max) = summary(&phase_a);
    let (b50, b99, b_max) = summary(&phase_b);
    let growth = rss_peak.saturating_sub(rss_before);
    eprintln!(
        "readers' latency alone: p50 {a50:?} p99 {a99:?} max {a_max:?}; with {HALF} slow subscribers: \
         p50 {b50:?} p99 {b99:?} max {b_max:?}; gateway RSS {} MiB before, peak growth {} KiB",
        rss_before >> 20,
        growth >> 10
    );

    // The slow half: every one closed with 4000, its backlog dropped and counted.
    let codes = futures_util::future::join_all(slow.iter_mut().map(|s| async move {
        let code = read_until_close(s, WAIT).await;
        let _ = s.write_all(&close_frame(4000)).await;
        code
    }))
    .await;
    let cut = codes.iter().filter(|c| **c == Some(4000)).count();
    assert_eq!(cut, HALF, "slow subscribers closed with 4000: {cut} of {HALF}");
    let closed = gw
        .wait_metric("shardcast_disconnections_total{reason=\"slow_consumer\"}", |v| {
            v >= HALF as f64
        })
        .await;
    assert_eq!(closed, HALF as f64);
    assert!(
        gw.metric("shardcast_messages_dropped_total{reason=\"slow_consumer\"}")
            .await
            > 0.0
    );

    // Memory: bounded by the queue limit of each slow subscriber, and in fact far
    // below it, since queued frames are shared between subscribers.
    assert!(
        growth < (HALF * QUEUE_LIMIT) as u64,
        "gateway RSS grew by {growth} bytes, more than {HALF} full queues"
    );
    // The readers: no added latency beyond a bound generous for a shared 2-core
    // machine running debug builds.
    let bound = (a99 * 3).max(a99 + Duration::from_millis(100));
    assert!(
        b99 <= bound,
        "readers' p99 went from {a99:?} to {b99:?} (bound {bound:?})"
    );
}
