//! What travels from the router to the shards: one publication whose WebSocket
//! frame is built at most once per encoding and then shared, as the same bytes, by
//! every shard and every subscriber; and the report that sums its deliveries.

use bytes::Bytes;
use shardcast_proto::{encode_message, Encoding, MessagePosition};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tracing::error;

use crate::broker::Position;
use crate::payload::Payload;
use crate::ws::deflate::{deflate_frame, FULL_WINDOW};
use crate::ws::frame::data_frame;

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
    /// Its place in the channel's history, on a channel with history.
    pub position: Option<Position>,
    /// The data.
    pub payload: Payload,
    /// Per encoding: the plain frame, then its permessage-deflate form.
    frames: [[OnceLock<Option<Bytes>>; 2]; 2],
    report: Option<DeliveryReport>,
}

impl Publication {
    /// A publication; `report`, if any, is told how many subscribers it reached.
    pub fn new(
        channel: Arc<str>,
        seq: u64,
        position: Option<Position>,
        payload: Payload,
        report: Option<DeliveryReport>,
    ) -> Publication {
        Publication {
            channel,
            seq,
            position,
            payload,
            frames: Default::default(),
            report,
        }
    }

    /// The complete WebSocket frame for an encoding, built by whichever shard asks
    /// first; none if it cannot be encoded (logged once here; each shard counts the
    /// deliveries it could not make).
    pub fn frame(&self, encoding: Encoding) -> Option<&Bytes> {
        self.frames[encoding.index()][0]
            .get_or_init(|| {
                match encode_message(
                    encoding,
                    &self.channel,
                    self.seq,
                    self.message_position(),
                    self.payload.json(),
                ) {
                    Ok(body) => Some(data_frame(encoding, &body)),
                    Err(e) => {
                        error!(channel = %self.channel, error = %e, "cannot encode a publication; not delivered");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The frame for an encoding compressed for permessage-deflate (no context
    /// takeover, full window), built once like the plain one; none if there is no
    /// plain frame.
    pub fn compressed_frame(&self, encoding: Encoding) -> Option<&Bytes> {
        self.frames[encoding.index()][1]
            .get_or_init(|| deflate_frame(self.frame(encoding)?, FULL_WINDOW))
            .as_ref()
    }

    /// The position as the `message` frame carries it.
    pub fn message_position(&self) -> Option<MessagePosition<'_>> {
        self.position.as_ref().map(|p| MessagePosition {
            offset: p.offset,
            epoch: &p.epoch,
        })
    }

    /// Called by each shard after its fan-out.
    pub fn shard_done(&self, reached: usize) {
        if let Some(report) = &self.report {
            report.shard_done(reached);
        }
    }
}
