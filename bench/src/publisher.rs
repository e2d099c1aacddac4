//! `Publisher`: drives `POST /api/publish` on the server under test (or the Pusher
//! HTTP API's signed `POST /apps/<id>/events` on a Pusher server), at a fixed rate
//! or as fast as deliveries keep up, putting a CLOCK_MONOTONIC send timestamp
//! (`"t"`) into every payload for the receivers to time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardcast_testkit::xorshift::XorShift;
use tokio::time::Instant;

use crate::clock::monotonic_ns;
use crate::error::BenchError;
use crate::http_client::ApiClient;
use crate::pusher_wire::{self, PusherApp};

/// Which publish API a server speaks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PublishApi {
    /// shardcast's `POST /api/publish` (the floor and the Node baselines speak it too).
    #[default]
    Native,
    /// The Pusher HTTP API of `app`: one signed `POST /apps/<id>/events` per
    /// publication, `POST /apps/<id>/batch_events` for a batch.
    Pusher(PusherApp),
}

/// Where the publisher sends its requests, and in which API.
#[derive(Debug, Clone)]
pub struct PublishEndpoint {
    /// The HTTP address.
    pub addr: SocketAddr,
    /// The API it serves there.
    pub api: PublishApi,
}

impl From<SocketAddr> for PublishEndpoint {
    /// shardcast's own API at `addr`.
    fn from(addr: SocketAddr) -> Self {
        PublishEndpoint {
            addr,
            api: PublishApi::Native,
        }
    }
}

/// What to publish and how fast.
#[derive(Debug, Clone)]
pub struct PublishLoad {
    /// Publications per second; `None` publishes as fast as deliveries keep up.
    pub rate: Option<f64>,
    /// How long to publish.
    pub duration: Duration,
    /// Most publications in total.
    pub max_publications: u64,
    /// Publications per request (a JSON array when above 1).
    pub batch: usize,
    /// Concurrent HTTP connections.
    pub http_connections: usize,
    /// Approximate size of each publication's `data`, bytes.
    pub payload_bytes: usize,
    /// What that `data` looks like.
    pub shape: PayloadShape,
    /// Channel name prefix.
    pub channel_prefix: String,
    /// Channels to pick from (uniformly at random when above 1).
    pub channels: usize,
    /// Subscribers each publication reaches (for the max-rate window).
    pub deliveries_per_publication: u64,
    /// At max rate, publishing pauses while more deliveries than this are outstanding.
    pub window_deliveries: u64,
}

/// Counters shared between the publisher tasks and the scenario loop.
#[derive(Debug, Default)]
pub struct PublishProgress {
    /// Publications accepted by the API.
    pub published: AtomicU64,
    /// Deliveries counted by the load generators (updated by the scenario loop).
    pub delivered: AtomicU64,
    /// Requests answered with an error or failed.
    pub errors: AtomicU64,
    /// Set to stop publishing early.
    pub stop: AtomicBool,
    /// The first error, for the report.
    pub first_error: Mutex<Option<String>>,
}

/// What a publishing phase did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOutcome {
    /// Publications accepted.
    pub published: u64,
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Seconds spent publishing.
    pub seconds: f64,
}

/// What a publication's `data` looks like. Either way it starts with the send
/// timestamp `"t"` the receivers time it by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PayloadShape {
    /// `{"t":..,"n":..,"p":"xxx.."}`: one byte repeated, which compresses to nearly
    /// nothing (the size only matters to the uncompressed scenarios).
    #[default]
    Padding,
    /// A market-data document ([`trades_document`]): varied numbers under repeated
    /// keys, compressible as real JSON is.
    Trades,
}

/// Trading venues the trades document names.
const VENUES: [&str; 4] = ["coinbase", "kraken", "bitstamp", "gemini"];

/// Publication `n`'s trades document of at most about `bytes` bytes (at least one
/// trade), sent at `sent`: `{"t":..,"n":..,"type":"trades","symbol":"BTC-USD",
/// "sequence":..,"trades":[{"id":..,"price":"43127.52","size":"0.41820000",
/// "side":"buy","ts":..,"venue":"kraken"},..]}`. Prices walk, sizes, sides and
/// venues vary, and every publication differs, so a compressor that keeps its
/// window between messages finds the keys again but not the numbers.
pub fn trades_document(bytes: usize, sent: u64, n: u64) -> String {
    let mut rng = XorShift::for_stream(n + 1);
    let mut doc = format!(
        r#"{{"t":{sent},"n":{n},"type":"trades","symbol":"BTC-USD","sequence":{},"trades":["#,
        880_000_000 + n
    );
    let mut price_cents = 4_312_750 + rng.below(20_000);
    let mut id = 48_213_377 + n * 64;
    let mut ts = 1_732_658_400_000 + n * 250;
    loop {
        price_cents = (price_cents + rng.below(201)).saturating_sub(100);
        ts += rng.below(40);
        let size = rng.below(250_000_000);
        let trade = format!(
            r#"{{"id":{id},"price":"{}.{:02}","size":"{}.{:08}","side":"{}","ts":{ts},"venue":"{}"}}"#,
            price_cents / 100,
            price_cents % 100,
            size / 100_000_000,
            size % 100_000_000,
            if rng.below(2) == 0 { "buy" } else { "sell" },
            VENUES[rng.below(VENUES.len() as u64) as usize]
        );
        let first = doc.ends_with('[');
        if !first && doc.len() + 1 + trade.len() + 2 > bytes {
            break;
        }
        if !first {
            doc.push(',');
        }
        doc.push_str(&trade);
        id += 1;
    }
    doc.push_str("]}");
    doc
}

/// Builds one request body for `api`: a single publication, or a batch of `count`
/// (a JSON array for shardcast, `{"batch":[..]}` for Pusher); the Pusher events
/// carry the same `data` document as a string.
pub fn publish_body(
    api: &PublishApi,
    load: &PublishLoad,
    first: u64,
    count: usize,
    rng: &mut impl FnMut() -> u64,
) -> Vec<u8> {
    let pad = "x".repeat(load.payload_bytes.saturating_sub(40));
    let sent = monotonic_ns();
    let item = |n: u64, channel: u64| {
        let data = match load.shape {
            PayloadShape::Padding => format!(r#"{{"t":{sent},"n":{n},"p":"{pad}"}}"#),
            PayloadShape::Trades => trades_document(load.payload_bytes, sent, n),
        };
        match api {
            PublishApi::Native => format!(r#"{{"channel":"{}{}","data":{data}}}"#, load.channel_prefix, channel),
            PublishApi::Pusher(_) => pusher_wire::event_body(&format!("{}{channel}", load.channel_prefix), &data),
        }
    };
    let pick = |rng: &mut dyn FnMut() -> u64| {
        if load.channels > 1 {
            rng() % load.channels as u64
        } else {
            0
        }
    };
    if count == 1 {
        return item(first, pick(rng)).into_bytes();
    }
    let mut body = String::from(match api {
        PublishApi::Native => "[",
        PublishApi::Pusher(_) => r#"{"batch":["#,
    });
    for k in 0..count as u64 {
        if k > 0 {
            body.push(',');
        }
        body.push_str(&item(first + k, pick(rng)));
    }
    body.push(']');
    if matches!(api, PublishApi::Pusher(_)) {
        body.push('}');
    }
    body.into_bytes()
}

/// The method and request target of one publish request with `body`: shardcast's
/// fixed path, or the Pusher path signed now with the app's secret.
pub fn publish_target(api: &PublishApi, count: usize, body: &[u8]) -> String {
    match api {
        PublishApi::Native => "/api/publish".into(),
        PublishApi::Pusher(app) => {
            let path = match count {
                1 => format!("/apps/{}/events", app.id),
                _ => format!("/apps/{}/batch_events", app.id),
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            pusher_wire::signed_request_target(app, "POST", &path, body, now)
        }
    }
}

/// Publishes according to `load` until its duration or count is reached.
pub async fn run_publisher(
    endpoint: impl Into<PublishEndpoint>,
    load: PublishLoad,
    progress: Arc<PublishProgress>,
) -> Result<PublishOutcome, BenchError> {
    let PublishEndpoint { addr: admin, api } = endpoint.into();
    let started = Instant::now();
    let end = started + load.duration;
    let next_slot = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..load.http_connections.max(1) {
        let mut client = ApiClient::connect(admin).await?;
        let load = load.clone();
        let progress = progress.clone();
        let next_slot = next_slot.clone();
        let requests = requests.clone();
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift::new(0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1));
            let batch = load.batch.max(1) as u64;
            loop {
                if progress.stop.load(Ordering::Relaxed) {
                    break;
                }
                let slot = next_slot.fetch_add(batch, Ordering::Relaxed);
                if slot >= load.max_publications || Instant::now() >= end {
                    break;
                }
                match load.rate {
                    Some(rate) => {
                        tokio::time::sleep_until(started + Duration::from_secs_f64(slot as f64 / rate)).await;
                    }
                    None => {
                        // Closed loop: stay within a window of undelivered frames, so
                        // "max rate" measures sustained throughput, not queue growth.
                        while progress.published.load(Ordering::Relaxed) * load.deliveries_per_publication
                            > progress.delivered.load(Ordering::Relaxed) + load.window_deliveries
                        {
                            if Instant::now() >= end || progress.stop.load(Ordering::Relaxed) {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                if Instant::now() >= end {
                    break;
                }
                let count = batch.min(load.max_publications - slot) as usize;
                let body = publish_body(&api, &load, slot, count, &mut || rng.next_u64());
                let target = publish_target(&api, count, &body);
                requests.fetch_add(1, Ordering::Relaxed);
                match client.request("POST", &target, &body).await {
                    Ok((200, _)) => {
                        progress.published.fetch_add(count as u64, Ordering::Relaxed);
                    }
                    Ok((status, body)) => {
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        note_error(&progress, format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
                    }
                    Err(e) => {
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        note_error(&progress, e.to_string());
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(PublishOutcome {
        published: progress.published.load(Ordering::Relaxed),
        requests: requests.load(Ordering::Relaxed),
        errors: progress.errors.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn note_error(progress: &PublishProgress, message: String) {
    if let Ok(mut first) = progress.first_error.lock() {
        first.get_or_insert(message.chars().take(300).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(channels: usize, payload_bytes: usize) -> PublishLoad {
        PublishLoad {
            rate: None,
            duration: Duration::from_secs(1),
            max_publications: 10,
            batch: 1,
            http_connections: 1,
            payload_bytes,
            shape: PayloadShape::Padding,
            channel_prefix: "c-".into(),
            channels,
            deliveries_per_publication: 1,
            window_deliveries: 1,
        }
    }

    #[test]
    fn bodies_are_valid_json_with_timestamps() {
        let mut n = 0;
        let mut rng = || {
            n += 7;
            n
        };
        let one: serde_json::Value =
            serde_json::from_slice(&publish_body(&PublishApi::Native, &load(1, 64), 5, 1, &mut rng)).unwrap();
        assert_eq!(one["channel"], "c-0");
        assert!(one["data"]["t"].as_u64().unwrap() > 0);
        let many: serde_json::Value =
            serde_json::from_slice(&publish_body(&PublishApi::Native, &load(10, 200), 0, 3, &mut rng)).unwrap();
        assert_eq!(many.as_array().unwrap().len(), 3);
        assert!(many[0]["data"]["p"].as_str().unwrap().len() >= 150);
    }

    #[test]
    fn pusher_bodies_carry_the_document_as_a_string_and_are_signed() {
        let api = PublishApi::Pusher(PusherApp::bench());
        let one = publish_body(&api, &load(1, 64), 5, 1, &mut || 0);
        let v: serde_json::Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(v["channel"], "c-0");
        assert_eq!(v["name"], pusher_wire::EVENT_NAME);
        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["n"], 5);
        assert!(data["t"].as_u64().unwrap() > 0);
        let target = publish_target(&api, 1, &one);
        assert!(
            target.starts_with("/apps/bench/events?auth_key=bench-key&auth_timestamp="),
            "{target}"
        );
        assert!(target.contains("&auth_version=1.0&body_md5="), "{target}");
        let batch = publish_body(&api, &load(3, 64), 0, 3, &mut || 1);
        let v: serde_json::Value = serde_json::from_slice(&batch).unwrap();
        assert_eq!(v["batch"].as_array().unwrap().len(), 3);
        assert_eq!(v["batch"][2]["channel"], "c-1");
        assert!(publish_target(&api, 3, &batch).starts_with("/apps/bench/batch_events?"));
        assert_eq!(publish_target(&PublishApi::Native, 3, &batch), "/api/publish");
    }

    #[test]
    fn trades_documents_are_json_of_about_the_size_asked() {
        let doc = trades_document(2048, 123456789, 7);
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert!((1900..=2048).contains(&doc.len()), "{} bytes", doc.len());
        assert_eq!(v["t"], 123456789);
        assert!(v["trades"].as_array().unwrap().len() > 10);
        assert!(doc.starts_with(r#"{"t":123456789,"#), "the timestamp comes first");
        assert_ne!(trades_document(2048, 1, 8)[20..], doc[20..], "publications differ");
        let tiny: serde_json::Value = serde_json::from_str(&trades_document(10, 1, 1)).unwrap();
        assert_eq!(tiny["trades"].as_array().unwrap().len(), 1);
        let mut with_shape = load(1, 2048);
        with_shape.shape = PayloadShape::Trades;
        let body: serde_json::Value =
            serde_json::from_slice(&publish_body(&PublishApi::Native, &with_shape, 3, 1, &mut || 0)).unwrap();
        assert_eq!(body["data"]["n"], 3);
        assert_eq!(body["data"]["type"], "trades");
    }
}
