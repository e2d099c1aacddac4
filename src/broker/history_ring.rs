//! The in-process history store: per channel, a ring of the latest publications,
//! the channel's epoch and top offset, and the idempotency keys seen within the
//! window. Owned by one thread (the in-process bus, or a standalone gateway's
//! router, which keeps its history itself), so it takes no lock; a
//! channel's history goes when its TTL passes with no publication, and the next
//! publication starts a new epoch.
//!
//! A ring keeps its publications' text back to back in one buffer rather than
//! holding each publication: storing one copies its bytes in and evicting the
//! oldest moves an index, with no allocation or free per publication once the
//! buffer has grown, and nothing left behind in memory the publish path must
//! touch again (measured: the held payloads' frees cost history-on publishing a
//! tenth of its rate). A read, which is rare, builds payloads from the text.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{HistoryPage, HistoryQuery, Position, PublishOptions, Published};
use crate::payload::Payload;

/// Idempotency keys remembered per channel at most: a publisher that invents a key
/// per publication must not grow the store without bound.
const MAX_KEYS_PER_CHANNEL: usize = 100_000;

/// Channels between two sweeps of expired ones (a sweep visits every channel).
const SWEEP_EVERY: u64 = 4096;

/// A channel's retained publications, oldest first; the newest is the ring's top.
#[derive(Default)]
struct RetainedTexts {
    /// Their JSON texts, back to back.
    text: VecDeque<u8>,
    /// Each one's length in `text`.
    lengths: VecDeque<u32>,
}

impl RetainedTexts {
    fn len(&self) -> usize {
        self.lengths.len()
    }

    fn push(&mut self, payload: &Payload) {
        let text = payload.json().get().as_bytes();
        self.text.extend(text);
        // A payload is far below 4 GiB: the message size limit applies to it.
        self.lengths.push_back(text.len() as u32);
    }

    /// Drops the oldest until at most `keep` remain.
    fn trim(&mut self, keep: usize) {
        while self.lengths.len() > keep {
            if let Some(len) = self.lengths.pop_front() {
                self.text.drain(..len as usize);
            }
        }
    }

    /// `count` of them (at most) after skipping the oldest `skip`, oldest first;
    /// `top` is the newest's offset.
    fn read(&self, skip: usize, count: usize, top: u64) -> Vec<(u64, Payload)> {
        let first = top + 1 - self.lengths.len() as u64 + skip as u64;
        let mut start: usize = self.lengths.iter().take(skip).map(|&l| l as usize).sum();
        let mut out = Vec::with_capacity(count.min(self.lengths.len().saturating_sub(skip)));
        for (i, &len) in self.lengths.iter().skip(skip).take(count).enumerate() {
            let end = start + len as usize;
            let mut text = Vec::with_capacity(len as usize);
            text.extend(self.text.range(start..end));
            start = end;
            // Stored from a payload, so valid UTF-8 JSON; skipped if ever not.
            if let Some(payload) = String::from_utf8(text).ok().and_then(|t| Payload::from_stored(t).ok()) {
                out.push((first + i as u64, payload));
            }
        }
        out
    }
}

struct ChannelRing {
    epoch: Arc<str>,
    top: u64,
    entries: RetainedTexts,
    expires: Instant,
    keys: HashMap<Arc<str>, (Position, Instant)>,
}

/// Every channel's history on this process.
pub struct HistoryRings {
    channels: HashMap<Arc<str>, ChannelRing>,
    epochs: EpochSource,
    operations: u64,
    /// Publications held in every ring, kept as they change (for metrics).
    held: usize,
}

impl HistoryRings {
    /// An empty store whose epochs start from `seed` (distinct per process start).
    pub fn new(seed: u64) -> HistoryRings {
        HistoryRings {
            channels: HashMap::new(),
            epochs: EpochSource(seed),
            operations: 0,
            held: 0,
        }
    }

    /// An empty store whose epochs are this process start's own: a restarted
    /// gateway's history is new.
    pub fn for_this_process() -> HistoryRings {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        HistoryRings::new(seed)
    }

    /// Stores a publication where its options ask for it; what the broker hands
    /// on, or `duplicate` when its idempotency key was seen within the window.
    pub fn publish(&mut self, channel: &Arc<str>, payload: &Payload, options: &PublishOptions) -> Published {
        let now = Instant::now();
        self.sweep(now);
        let ring = self.ring(channel, now, options.history.map(|p| p.ttl));
        if let Some((key, _)) = &options.idempotency {
            if let Some((position, until)) = ring.keys.get(key) {
                if *until > now {
                    return Published {
                        position: (position.offset > 0).then(|| position.clone()),
                        duplicate: true,
                    };
                }
            }
        }
        let before = ring.entries.len();
        let position = options.history.map(|policy| {
            ring.top += 1;
            ring.entries.push(payload);
            ring.entries.trim(policy.size as usize);
            Position {
                offset: ring.top,
                epoch: ring.epoch.clone(),
            }
        });
        let grown = ring.entries.len() - before;
        if let Some((key, window)) = &options.idempotency {
            if ring.keys.len() >= MAX_KEYS_PER_CHANNEL {
                ring.keys.retain(|_, (_, until)| *until > now);
            }
            if ring.keys.len() < MAX_KEYS_PER_CHANNEL {
                let remembered = position.clone().unwrap_or(Position {
                    offset: 0,
                    epoch: ring.epoch.clone(),
                });
                ring.keys.insert(key.clone(), (remembered, now + *window));
                ring.expires = ring.expires.max(now + *window);
            }
        }
        self.held += grown;
        Published {
            position,
            duplicate: false,
        }
    }

    /// The channel's position and the publications the query asks for.
    pub fn read(&mut self, channel: &Arc<str>, query: &HistoryQuery) -> HistoryPage {
        let now = Instant::now();
        let ring = self.ring(channel, now, Some(query.policy.ttl));
        let held = ring.entries.len();
        let skip = match query.since {
            // The first `limit` after `since`.
            Some(since) => held - (ring.top.saturating_sub(since) as usize).min(held),
            // The newest `limit`.
            None => held.saturating_sub(query.limit),
        };
        let publications = ring.entries.read(skip, query.limit, ring.top);
        HistoryPage {
            epoch: ring.epoch.clone(),
            top: ring.top,
            publications,
        }
    }

    /// Channels and publications held, for metrics.
    pub fn size(&self) -> (usize, usize) {
        (self.channels.len(), self.held)
    }

    /// The channel's ring, a new one (new epoch) if it had none or it expired;
    /// `ttl` (when history is kept) pushes its expiry.
    fn ring(&mut self, channel: &Arc<str>, now: Instant, ttl: Option<Duration>) -> &mut ChannelRing {
        let epochs = &mut self.epochs;
        let ring = self
            .channels
            .entry(channel.clone())
            .or_insert_with(|| ChannelRing::new(epochs.next(), now));
        if ring.expires <= now {
            self.held -= ring.entries.len();
            *ring = ChannelRing::new(epochs.next(), now);
        }
        if let Some(ttl) = ttl {
            ring.expires = ring.expires.max(now + ttl);
        }
        ring
    }

    fn sweep(&mut self, now: Instant) {
        self.operations += 1;
        if self.operations % SWEEP_EVERY == 0 {
            let held = &mut self.held;
            self.channels.retain(|_, ring| {
                let keep = ring.expires > now;
                if !keep {
                    *held -= ring.entries.len();
                }
                keep
            });
        }
    }
}

impl ChannelRing {
    fn new(epoch: Arc<str>, now: Instant) -> ChannelRing {
        ChannelRing {
            epoch,
            top: 0,
            entries: RetainedTexts::default(),
            expires: now,
            keys: HashMap::new(),
        }
    }
}

/// Epoch names: distinct per process start (the seed) and per channel life.
struct EpochSource(u64);

impl EpochSource {
    fn next(&mut self) -> Arc<str> {
        // A 64-bit mix (splitmix64) of a counter: short, alphanumeric, and never
        // the same twice for one seed.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut out = String::with_capacity(11);
        for _ in 0..11 {
            out.push(ALPHABET[(z % 62) as usize] as char);
            z /= 62;
        }
        Arc::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::HistoryPolicy;

    fn policy(size: u32) -> HistoryPolicy {
        HistoryPolicy {
            size,
            ttl: Duration::from_secs(60),
        }
    }

    fn with_history(size: u32) -> PublishOptions {
        PublishOptions {
            history: Some(policy(size)),
            idempotency: None,
        }
    }

    /// Texts of every length, many times round the buffer: each read gives back
    /// exactly what was published at each offset.
    #[test]
    fn texts_read_back_whole_across_the_buffer_wrapping() {
        let mut rings = HistoryRings::new(1);
        let ch: Arc<str> = Arc::from("ticks");
        let text = |n: u64| format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat((n * 7 % 50) as usize));
        for n in 1..=500u64 {
            rings.publish(&ch, &Payload::from_json(&text(n)).unwrap(), &with_history(20));
            if n % 37 != 0 {
                continue;
            }
            for (since, limit) in [
                (Some(n - 5), 3),
                (Some(n.saturating_sub(40)), 100),
                (Some(n), 5),
                (None, 4),
            ] {
                let page = rings.read(
                    &ch,
                    &HistoryQuery {
                        since,
                        limit,
                        policy: policy(20),
                    },
                );
                let first = match since {
                    Some(s) => (s + 1).max(n - 19),
                    None => n + 1 - limit as u64,
                };
                let want: Vec<(u64, String)> = (first..=n).take(limit).map(|o| (o, text(o))).collect();
                let got: Vec<(u64, String)> = page
                    .publications
                    .iter()
                    .map(|(o, p)| (*o, p.json().get().to_owned()))
                    .collect();
                assert_eq!(got, want, "after {n}, since {since:?}, limit {limit}");
            }
        }
    }

    #[test]
    fn offsets_grow_and_the_ring_keeps_the_latest() {
        let mut rings = HistoryRings::new(1);
        let ch: Arc<str> = Arc::from("news");
        for n in 1..=5u64 {
            let p = rings.publish(&ch, &Payload::from_json(&n.to_string()).unwrap(), &with_history(3));
            assert_eq!(p.position.unwrap().offset, n);
        }
        let page = rings.read(
            &ch,
            &HistoryQuery {
                since: Some(1),
                limit: 10,
                policy: policy(3),
            },
        );
        assert_eq!(page.top, 5);
        assert_eq!(page.publications.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [3, 4, 5]);
        let latest = rings.read(
            &ch,
            &HistoryQuery {
                since: None,
                limit: 1,
                policy: policy(3),
            },
        );
        assert_eq!(latest.publications[0].0, 5);
        assert_eq!(latest.epoch, page.epoch);
    }

    #[test]
    fn an_idempotency_key_publishes_once() {
        let mut rings = HistoryRings::new(1);
        let ch: Arc<str> = Arc::from("news");
        let options = PublishOptions {
            history: Some(policy(10)),
            idempotency: Some((Arc::from("k1"), Duration::from_secs(60))),
        };
        let first = rings.publish(&ch, &Payload::from_json("1").unwrap(), &options);
        let again = rings.publish(&ch, &Payload::from_json("1").unwrap(), &options);
        assert!(!first.duplicate && again.duplicate);
        assert_eq!(first.position, again.position);
        assert_eq!(rings.size(), (1, 1));
    }

    #[test]
    fn epochs_differ_per_seed_and_per_channel() {
        let (mut a, mut b) = (HistoryRings::new(1), HistoryRings::new(2));
        let (x, y): (Arc<str>, Arc<str>) = (Arc::from("x"), Arc::from("y"));
        let q = HistoryQuery {
            since: None,
            limit: 0,
            policy: policy(1),
        };
        let (ax, ay, bx) = (a.read(&x, &q).epoch, a.read(&y, &q).epoch, b.read(&x, &q).epoch);
        assert!(ax != ay && ax != bx);
        assert!(ax.bytes().all(|c| c.is_ascii_alphanumeric()));
    }
}
