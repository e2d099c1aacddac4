//! What travels from the router to the shards: one publication whose WebSocket
//! frame is built at most once per encoding (and once as a Pusher channel event)
//! and then shared, as the same bytes, by every shard and every subscriber; and
//! the report that sums its deliveries.

use bytes::Bytes;
use shardcast_proto::{encode_message, Encoding, MessagePosition};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tracing::error;

use crate::broker::Position;
use crate::payload::Payload;
use crate::pusher::protocol::publication_event;
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
    /// The Pusher channel event, built for the first app prefix asked for.
    pusher: OnceLock<PusherFrame>,
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
            pusher: OnceLock::new(),
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

    /// The Pusher channel event for subscribers whose app prefixes its channels
    /// with `prefix_len` bytes (PROTOCOL.md 20.2), built by whichever shard asks
    /// first. None when it was built for another prefix length: a channel shared
    /// by apps with different prefixes (rare) builds its own [`PusherFrame::new`].
    pub fn pusher_frame(&self, prefix_len: usize) -> Option<&PusherFrame> {
        let frame = self.pusher.get_or_init(|| PusherFrame::new(self, prefix_len));
        (frame.prefix_len == prefix_len).then_some(frame)
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

/// A publication as a Pusher channel event (PROTOCOL.md 20.3), for the
/// subscribers of one app prefix.
#[derive(Debug)]
pub struct PusherFrame {
    prefix_len: usize,
    /// The WebSocket text frame.
    pub frame: Bytes,
    compressed: OnceLock<Option<Bytes>>,
    /// The socket it must not reach: a `socket_id` (instance number, connection
    /// number) the publisher excluded.
    pub excluded: Option<(u32, u64)>,
}

impl PusherFrame {
    /// The event for subscribers whose app prefixes channels with `prefix_len` bytes.
    pub fn new(publication: &Publication, prefix_len: usize) -> PusherFrame {
        let channel = publication.channel.get(prefix_len..).unwrap_or(&publication.channel);
        let position = publication.position.as_ref().map(|p| (p.offset, &*p.epoch));
        let (text, excluded) = publication_event(channel, publication.payload.json().get(), position);
        PusherFrame {
            prefix_len,
            frame: data_frame(Encoding::Json, text.as_bytes()),
            compressed: OnceLock::new(),
            excluded,
        }
    }

    /// The length of the app prefix it was built for.
    pub fn prefix_len(&self) -> usize {
        self.prefix_len
    }

    /// The frame compressed for permessage-deflate (full window), built once.
    pub fn compressed(&self) -> &Bytes {
        self.compressed
            .get_or_init(|| deflate_frame(&self.frame, FULL_WINDOW))
            .as_ref()
            .unwrap_or(&self.frame)
    }
}
