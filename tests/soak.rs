//! Soak: subscribe/unsubscribe churn, reconnects (clean and abrupt), client and API
//! publishes through Redis, for a configurable time, against one gateway (with a
//! peer instance publishing through the same Redis). The gateway's resident memory,
//! open descriptors and threads (from /proc), and its connection and subscription
//! gauges are sampled every few seconds; the test fails if any of them trends
//! upward after warm-up (mean of the last third against the middle third), or if
//! anything is left behind once the churn stops.
//!
//! `SHARDCAST_SOAK_SECS` sets the duration (default 45 s, the run in `cargo test`);
//! `tests/soak.sh --minutes N` runs it longer on a release build.
//! `SHARDCAST_SOAK_CSV=<file>` also writes every sample to a CSV file.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use shardcast_proto::{ClientFrame, Encoding, ServerFrame};
use shardcast_testkit::xorshift::XorShift;
use tokio_tungstenite::tungstenite::Message;

/// Connections that stay subscribed for the whole run, besides the churners.
const RESIDENTS: usize = 200;
/// Tasks that connect, churn their subscriptions, and disconnect, over and over.
const CHURNERS: usize = 40;
const CHANNELS: u64 = 30;
const PUBLISH_EVERY: Duration = Duration::from_millis(20);

fn soak_duration() -> Duration {
    let secs = std::env::var("SHARDCAST_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45u64);
    Duration::from_secs(secs.max(15))
}

/// One reading of the gateway.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    proc: ProcSample,
    connections: f64,
    subscriptions: f64,
}

/// Sends a request and reads until its reply, skipping publications; false if the
/// connection failed (the churner then reconnects).
async fn request(c: &mut Client, frame: ClientFrame) -> bool {
    let id = frame.id();
    let bytes = shardcast_proto::encode_client(Encoding::Json, &frame);
    let text = String::from_utf8(bytes.expect("encodes")).expect("JSON is UTF-8");
    if c.ws.send(Message::Text(text.into())).await.is_err() {
        return false;
    }
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(WAIT, c.ws.next()).await else {
            return false;
        };
        let Message::Text(t) = msg else { continue };
        match shardcast_proto::decode_server(Encoding::Json, t.as_bytes()) {
            Ok(ServerFrame::Ack { id: got, .. }) | Ok(ServerFrame::Pong { id: got }) if got == id => return true,
            Ok(ServerFrame::Error { id: got, code, .. }) if got == id => {
                panic!("request {id:?} refused: {code:?}")
            }
            Ok(_) => continue,
            Err(e) => panic!("undecodable frame: {e}"),
        }
    }
    false
}

/// Reads whatever arrived for a moment; counts publications.
async fn drain(c: &mut Client, received: &AtomicU64) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_millis(5), c.ws.next()).await {
            Err(_) => return true,
            Ok(Some(Ok(Message::Text(_)))) => {
                received.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => return false,
        }
    }
}

/// One churner: connect, subscribe to a few channels, churn them, publish now and
/// then, leave (cleanly or by dropping the socket), repeat until `stop`.
async fn churn(addr: SocketAddr, seed: u64, stop: Arc<AtomicBool>, received: Arc<AtomicU64>) -> u64 {
    let mut rng = XorShift::for_stream(seed);
    let mut sessions = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = Client::try_connect(addr, Encoding::Json).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        sessions += 1;
        let mut held: Vec<u64> = Vec::new();
        let mut next_id = 1u64;
        let mut ok = true;
        for _ in 0..(5 + rng.below(20)) {
            if stop.load(Ordering::Relaxed) || !ok {
                break;
            }
            next_id += 1;
            let id = Some(next_id);
            let room = rng.below(CHANNELS);
            ok = match rng.below(10) {
                0..=3 if !held.contains(&room) => {
                    held.push(room);
                    request(
                        &mut c,
                        ClientFrame::Subscribe {
                            id,
                            channel: format!("room-{room}"),
                            token: None,
                            latest: false,
                            recover: None,
                        },
                    )
                    .await
                }
                4..=5 if !held.is_empty() => {
                    let room = held.swap_remove(rng.below(held.len() as u64) as usize);
                    request(
                        &mut c,
                        ClientFrame::Unsubscribe {
                            id,
                            channel: format!("room-{room}"),
                        },
                    )
                    .await
                }
                6 => {
                    let data = json!({"from": seed, "n": next_id});
                    request(
                        &mut c,
                        ClientFrame::Publish {
                            id,
                            channel: format!("room-{room}"),
                            data,
                            idempotency_key: None,
                        },
                    )
                    .await
                }
                7 => request(&mut c, ClientFrame::Ping { id }).await,
                _ => drain(&mut c, &received).await,
            };
            tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
        }
        if rng.below(2) == 0 {
            let _ = c.ws.close(None).await;
        }
        drop(c);
    }
    sessions
}

/// Residents: subscribed for the whole run, reading everything.
async fn resident(mut c: Client, stop: Arc<AtomicBool>, received: Arc<AtomicU64>) -> Client {
    while !stop.load(Ordering::Relaxed) {
        assert!(drain(&mut c, &received).await, "a resident's connection broke");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_shows_no_upward_trend() {
    let duration = soak_duration();
    let sample_every = Duration::from_millis((duration.as_millis() as u64 / 30).clamp(1000, 10_000));
    let redis = RedisServer::start();
    let args = [
        "--redis",
        &redis.url(),
        "--allow-client-publish",
        "--heartbeat-interval",
        "500ms",
    ];
    let gw = Gateway::start(&args);
    let peer = Gateway::start(&args);
    gw.wait_ready(200).await;
    peer.wait_ready(200).await;
    let baseline = proc_sample(gw.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut residents = Vec::new();
    for i in 0..RESIDENTS {
        let mut c = gw.connect(Encoding::Json).await;
        c.subscribe(1, &format!("room-{}", i as u64 % CHANNELS)).await;
        residents.push(tokio::spawn(resident(c, stop.clone(), received.clone())));
    }
    let churners: Vec<_> = (0..CHURNERS as u64)
        .map(|seed| tokio::spawn(churn(gw.ws, seed + 1, stop.clone(), received.clone())))
        .collect();
    let publisher = {
        let stop = stop.clone();
        let targets = [gw.admin, peer.admin];
        tokio::spawn(async move {
            let mut rng = XorShift::new(7);
            let mut published = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"channel": format!("room-{}", rng.below(CHANNELS)), "data": {"n": published}});
                let target = targets[(published % 2) as usize];
                let (status, text) = http(target, "POST", "/api/publish", Some(&body.to_string()), &[]).await;
                assert_eq!(status, 200, "{text}");
                published += 1;
                tokio::time::sleep(PUBLISH_EVERY).await;
            }
            published
        })
    };

    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < duration {
        tokio::time::sleep(sample_every).await;
        let metrics = gw.metrics().await;
        samples.push(Sample {
            at: start.elapsed(),
            proc: proc_sample(gw.pid()),
            connections: sum_series(&metrics, "shardcast_connections"),
            subscriptions: sum_series(&metrics, "shardcast_subscriptions"),
        });
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    let mut sessions = 0;
    for c in churners {
        sessions += c.await.unwrap();
    }
    let mut kept = Vec::new();
    for r in residents {
        kept.push(r.await.unwrap());
    }

    eprintln!("   t(s)   RSS(KiB)  fds  threads  connections  subscriptions");
    for s in &samples {
        eprintln!(
            "{:7.1} {:10} {:4} {:8} {:12} {:14}",
            s.at.as_secs_f64(),
            s.proc.rss_bytes >> 10,
            s.proc.fds,
            s.proc.threads,
            s.connections,
            s.subscriptions
        );
    }
    if let Some(path) = std::env::var_os("SHARDCAST_SOAK_CSV") {
        let mut csv = String::from("seconds,rss_bytes,fds,threads,connections,subscriptions\n");
        for s in &samples {
            csv.push_str(&format!(
                "{:.1},{},{},{},{},{}\n",
                s.at.as_secs_f64(),
                s.proc.rss_bytes,
                s.proc.fds,
                s.proc.threads,
                s.connections,
                s.subscriptions
            ));
        }
        std::fs::write(path, csv).expect("write the CSV");
    }

    let third = samples.len() / 3;
    assert!(third >= 3, "too few samples: {}", samples.len());
    let middle = &samples[third..2 * third];
    let last = &samples[samples.len() - third..];
    let trend = |name: &str, get: &dyn Fn(&Sample) -> f64, ratio: f64, slack: f64| {
        let (m, l) = (mean(middle.iter().map(get)), mean(last.iter().map(get)));
        eprintln!("{name}: middle third {m:.0}, last third {l:.0}");
        assert!(l <= m * ratio + slack, "{name} trends upward: {m:.0} -> {l:.0}");
    };
    trend("RSS bytes", &|s| s.proc.rss_bytes as f64, 1.10, 2.0 * 1024.0 * 1024.0);
    trend("open fds", &|s| s.proc.fds as f64, 1.10, 10.0);
    trend("threads", &|s| s.proc.threads as f64, 1.0, 1.0);
    trend("connections", &|s| s.connections, 1.20, 10.0);
    trend("subscriptions", &|s| s.subscriptions, 1.20, 20.0);
    let delivered = received.load(Ordering::Relaxed);
    eprintln!(
        "{sessions} churn sessions, {published} API publishes, {delivered} messages read; RSS {} KiB at start, {} KiB at the end",
        baseline.rss_bytes >> 10,
        samples.last().unwrap().proc.rss_bytes >> 10
    );
    assert!(
        sessions as usize >= CHURNERS * 2,
        "too little churn: {sessions} sessions"
    );
    assert!(delivered > 0, "nothing was delivered");

    // Once the churn stops, nothing of it is left: only the residents remain.
    let settle = Instant::now();
    loop {
        let metrics = gw.metrics().await;
        let conns = sum_series(&metrics, "shardcast_connections");
        let subs = sum_series(&metrics, "shardcast_subscriptions");
        let fds = proc_sample(gw.pid()).fds;
        if conns == RESIDENTS as f64 && subs == RESIDENTS as f64 && fds <= baseline.fds + RESIDENTS + 10 {
            break;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(15),
            "left behind: {conns} connections, {subs} subscriptions, {fds} fds (baseline {})",
            baseline.fds
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, c) in kept.iter_mut().enumerate() {
        assert!(request(c, ClientFrame::Ping { id: Some(i as u64) }).await);
    }
}
