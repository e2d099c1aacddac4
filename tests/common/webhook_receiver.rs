//! A Pusher webhook receiver for the webhook tests: an HTTP server on loopback that
//! checks each request's key and signature and records the events it accepts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use shardcast::pusher::signature::sign;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the receiver got: each delivered batch's events, in arrival order.
#[derive(Default)]
pub struct Received {
    pub events: Mutex<Vec<Value>>,
    /// Requests to refuse with 500 before accepting again.
    pub refuse: AtomicUsize,
    /// Requests refused so far.
    pub refused: AtomicUsize,
}

/// A Pusher webhook receiver on 127.0.0.1 (PROTOCOL.md 20.7): checks each request's key and signature,
/// answers 500 while `refuse` is above zero, records what it accepts.
pub async fn webhook_receiver(key: &'static str, secret: &'static str) -> (u16, Arc<Received>) {
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
                assert_eq!(header("x-pusher-key"), key);
                assert_eq!(
                    header("x-pusher-signature"),
                    sign(secret, &body),
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
    pub fn count(&self, name: &str, channel: &str) -> usize {
        self.events
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| e["name"] == name && e["channel"] == channel)
            .count()
    }

    /// Waits until `count(name, channel)` reaches `n`, then a little longer, and
    /// asserts it stayed `n` (exactly once means no second copy arrives later).
    pub async fn exactly(&self, name: &str, channel: &str, n: usize, limit: Duration) {
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
