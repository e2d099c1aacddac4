//! What travels from a publisher to the shards: the payload, and one publication
//! whose WebSocket frame is built at most once per encoding and then shared, as the
//! same bytes, by every shard and every subscriber.

use bytes::Bytes;
use serde_json::value::RawValue;
use shardcast_proto::{encode_message, Encoding};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::ws::frame::data_frame;

/// A publication's data: a JSON value kept as its validated text, so relaying it
/// never re-parses it (only the MessagePack encoding parses it, once).
#[derive(Clone, Debug)]
pub struct Payload(Arc<RawValue>);

impl Payload {
    /// Validates JSON text and wraps it.
    pub fn from_json(text: &str) -> Result<Payload, serde_json::Error> {
        Payload::from_raw(serde_json::from_str(text)?)
    }

    /// Wraps a value that is already parsed (from a MessagePack client, whose nesting
    /// serde_json's own limit has not seen).
    pub fn from_value(value: &serde_json::Value) -> Result<Payload, serde_json::Error> {
        Payload::from_raw(serde_json::value::to_raw_value(value)?)
    }

    /// Wraps a raw JSON value taken from a larger document.
    ///
    /// Refuses what subscribers could not decode although it is valid JSON text:
    /// numbers beyond f64 (`1e400`) and nesting deeper than serde_json's limit of
    /// 128. Both would reach MessagePack subscribers as `null` and break JSON
    /// clients built on serde_json. Only a full parse applies both rules (skipping
    /// a value, as `IgnoredAny` does, checks neither); it runs once per publication.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Payload, serde_json::Error> {
        serde_json::from_str::<serde_json::Value>(raw.get())?;
        Ok(Payload(Arc::from(raw)))
    }

    /// The JSON text.
    pub fn json(&self) -> &RawValue {
        &self.0
    }

    /// Length of the JSON text in bytes (what size limits apply to).
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Whether the JSON text is empty (never, for a valid value).
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }
}

/// Where a local delivery's count goes: the publisher waiting for "how many
/// subscribers did this reach". Each shard adds its count; the last one sends the sum.
#[derive(Debug)]
pub struct DeliveryReport {
    shards_left: AtomicUsize,
    reached: AtomicUsize,
    done: flume::Sender<usize>,
}

impl DeliveryReport {
    /// A report that completes after `shards` shards have reported.
    pub fn new(shards: usize, done: flume::Sender<usize>) -> DeliveryReport {
        DeliveryReport {
            shards_left: AtomicUsize::new(shards),
            reached: AtomicUsize::new(0),
            done,
        }
    }

    /// One shard's part: it reached `n` subscribers.
    pub fn shard_done(&self, n: usize) {
        self.reached.fetch_add(n, Ordering::Relaxed);
        if self.shards_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The publisher may have stopped waiting; nothing to do then.
            let _ = self.done.try_send(self.reached.load(Ordering::Relaxed));
        }
    }
}

/// One publication on one channel, numbered for this instance.
#[derive(Debug)]
pub struct Publication {
    /// The channel it was published to.
    pub channel: Arc<str>,
    /// Its number in the channel on this instance.
    pub seq: u64,
    /// The data.
    pub payload: Payload,
    frames: [OnceLock<Bytes>; 2],
    report: Option<DeliveryReport>,
}

impl Publication {
    /// A publication; `report`, if any, is told how many subscribers it reached.
    pub fn new(channel: Arc<str>, seq: u64, payload: Payload, report: Option<DeliveryReport>) -> Publication {
        Publication {
            channel,
            seq,
            payload,
            frames: [OnceLock::new(), OnceLock::new()],
            report,
        }
    }

    /// The complete WebSocket frame for an encoding, built by whichever shard asks first.
    pub fn frame(&self, encoding: Encoding) -> &Bytes {
        self.frames[encoding.index()].get_or_init(|| {
            let body = encode_message(encoding, &self.channel, self.seq, self.payload.json());
            data_frame(encoding, &body)
        })
    }

    /// Called by each shard after its fan-out.
    pub fn shard_done(&self, reached: usize) {
        if let Some(report) = &self.report {
            report.shard_done(reached);
        }
    }
}
