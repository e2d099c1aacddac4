//! Pusher webhooks (PROTOCOL.md 20.7) across three gateways on one redis-server,
//! received by a test HTTP server: each `channel_occupied` and `channel_vacated`
//! arrives exactly once however many instances have subscribers, signed with the
//! app's secret; a batch answered 500 is retried and arrives; when the instance
//! holding a channel's only subscribers is SIGKILLed, the survivors vacate it
//! within the instance TTL, once.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use shardcast::pusher::signature::sign;
use shardcast_proto::Encoding;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KEY: &str = "hook-key";
const SECRET: &str = "hook-secret";

/// What the receiver got: each delivered batch's events, in arrival order.
#[derive(Default)]
struct Received {
    events: Mutex<Vec<Value>>,
    /// Requests to refuse with 500 before accepting again.
    refuse: AtomicUsize,
    refused: AtomicUsize,
}

/// A webhook receiver on 127.0.0.1: checks each request's key and signature,
/// answers 500 while `refuse` is above zero, records what it accepts.
async fn receiver() -> (u16, Arc<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let got = Arc::new(Received::default());
    let state = got.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = socket.read(&mut chunk).await.expect("read");
                    assert!(n > 0, "request cut short");
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse().ok())
                            .expect("content-length");
                        while buf.len() < end + 4 + length {
                            let n = socket.read(&mut chunk).await.expect("read body");
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        break (
                            head,
                            String::from_utf8(buf[end + 4..end + 4 + length].to_vec()).expect("utf-8"),
                        );
                    }
                };
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default()
                };
                assert!(head.starts_with("POST /hooks "), "{head}");
                assert_eq!(header("x-pusher-key"), KEY);
                assert_eq!(
                    header("x-pusher-signature"),
                    sign(SECRET, &body),
                    "signed with the app secret"
                );
                let status = if state.refuse.load(Ordering::SeqCst) > 0 {
                    state.refuse.fetch_sub(1, Ordering::SeqCst);
                    state.refused.fetch_add(1, Ordering::SeqCst);
                    "500 Internal Server Error"
                } else {
                    let batch: Value = serde_json::from_str(&body).expect("json body");
                    assert!(batch["time_ms"].as_u64().is_some(), "{batch}");
                    let events = batch["events"].as_array().expect("events").clone();
                    state.events.lock().expect("lock").extend(events);
                    "200 OK"
                };
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, got)
}

impl Received {
    /// How many events named `name` on `channel` arrived.
    fn count(&self, name: &str, channel: &str) -> usize {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| e["name"] == name && e["channel"] == channel)
            .count()
    }

    /// Waits until `count(name, channel)` reaches `n`, then a little longer, and
    /// asserts it stayed `n` (exactly once means no second copy arrives later).
    async fn exactly(&self, name: &str, channel: &str, n: usize, limit: Duration) {
        let start = Instant::now();
        while self.count(name, channel) < n {
            assert!(
                start.elapsed() < limit,
                "{name} {channel}: {:?}",
                self.events.lock().expect("lock")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            self.count(name, channel),
            n,
            "{name} {channel}: {:?}",
            self.events.lock().expect("lock")
        );
    }
}

fn config(port: u16) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shardcast-webhooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gw.toml");
    std::fs::write(
        &path,
        format!(
            "[pusher.apps.\"1\"]\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\nchannel_prefix = \"app1:\"\n\
             webhook_url = \"http://127.0.0.1:{port}/hooks\"\nwebhook_events = [\"channel_occupied\", \"channel_vacated\"]\n"
        ),
    )
    .expect("config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupancy_webhooks_once_across_instances_retried_and_after_a_death() {
    let redis = RedisServer::start();
    let (port, got) = receiver().await;
    let path = config(port);
    let args = [
        "--config",
        path.to_str().expect("utf-8"),
        "--redis",
        &redis.url(),
        "--heartbeat-interval",
        "250ms",
        "--instance-ttl",
        "2s",
    ];
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&args)).collect();
    for gw in &gws {
        gw.wait_ready(200).await;
    }
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
