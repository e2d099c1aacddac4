//! What the parent and its load-generator worker processes say to each other: the
//! worker's spec (a command-line argument), commands (JSON lines on the worker's
//! stdin) and events (JSON lines on its stdout). Progress text goes to stderr.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::latency::LatencyBuckets;

/// What the clients speak on top of WebSocket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireProtocol {
    /// shardcast's JSON protocol (welcome, subscribe → ack, `message` frames); the
    /// floor and the `ws` Node baseline speak it too.
    #[default]
    Shardcast,
    /// shardcast's protocol in MessagePack (`shardcast.v1.msgpack`, binary frames).
    ShardcastMsgPack,
    /// Socket.IO v4 over Engine.IO v4 (open `0{..}`, connect `40`, events `42[..]`,
    /// acks `43..`, server pings `2` answered by `3`).
    SocketIo,
    /// Pusher Channels protocol 7 on public channels (`pusher:subscribe` answered by
    /// `pusher_internal:subscription_succeeded`, events whose `data` is a string,
    /// `pusher:ping` answered by `pusher:pong`): shardcast's Pusher endpoint, Sockudo.
    Pusher,
}

/// Everything one worker process needs to open and run its share of connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// This worker's index among its siblings.
    pub index: usize,
    /// WebSocket addresses; connection `g` (global index) goes to `targets[g % len]`.
    pub targets: Vec<SocketAddr>,
    /// WebSocket path.
    pub path: String,
    /// Subprotocol offered (empty: none).
    pub subprotocol: String,
    /// What the clients speak.
    #[serde(default)]
    pub protocol: WireProtocol,
    /// Global index of this worker's first connection.
    pub first_connection: usize,
    /// Connections this worker opens.
    pub connections: usize,
    /// Connection `g` subscribes to `{channel_prefix}{g % channels}`.
    pub channel_prefix: String,
    /// Number of channels connections are spread over.
    pub channels: usize,
    /// Source addresses this worker (alone) binds its sockets to.
    pub source_ips: Vec<Ipv4Addr>,
    /// Connections opened per second by this worker (0: unpaced).
    pub connect_rate: f64,
    /// Upgrades in progress at once, at most.
    pub max_in_flight: usize,
    /// Connect attempts per connection before it counts as failed.
    pub attempts: u32,
    /// CPUs the worker pins itself to.
    pub cpus: Vec<usize>,
    /// The worker exits by itself after this many seconds whatever happens.
    pub deadline_secs: u64,
    /// Interval of progress events.
    pub progress_ms: u64,
    /// Pre-minted connection tokens, line `g` for connection `g` (global index): when
    /// set, each connection sends a `connect` frame with its token before subscribing.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Follow each connection's offsets in its channel (holes, duplicates) and
    /// answer `offsets` (history scenarios).
    #[serde(default)]
    pub track_offsets: bool,
    /// After a storm, resubscribe with `recover` from the last offset received.
    #[serde(default)]
    pub recover: bool,
    /// Connect to `targets[k % len]` after storm `k` (instead of `targets[g % len]`):
    /// the clients of a killed gateway move to the next one.
    #[serde(default)]
    pub failover: bool,
    /// Offer permessage-deflate at the upgrade, as browsers do, and inflate what
    /// arrives compressed.
    #[serde(default)]
    pub offer_deflate: bool,
}

/// A command from the parent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum WorkerCommand {
    /// Forget latencies and delivery counts recorded so far.
    Reset,
    /// Send a `report` event.
    Report,
    /// Drop every connection at once and reconnect them all; send `storm_done` when
    /// every connection is back and subscribed (or has given up).
    Storm,
    /// Send an `offsets` event (with `track_offsets`).
    Offsets,
    /// Close everything and exit.
    Quit,
}

/// Why connections failed or ended, counted.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct FailureCounts {
    /// Upgrades answered with an HTTP status other than 101 (503 from admission control).
    pub refused: u64,
    /// connect() or I/O errors (ECONNREFUSED, resets).
    pub io_errors: u64,
    /// Upgrades or subscriptions that took too long.
    pub timeouts: u64,
    /// Unexpected frames (an `error` instead of `ack`, bad framing).
    pub protocol_errors: u64,
    /// Established connections the server closed afterwards.
    pub closed_by_server: u64,
    /// Connections given up after every attempt failed.
    pub gave_up: u64,
}

impl FailureCounts {
    /// Adds another count in.
    pub fn add(&mut self, o: &FailureCounts) {
        self.refused += o.refused;
        self.io_errors += o.io_errors;
        self.timeouts += o.timeouts;
        self.protocol_errors += o.protocol_errors;
        self.closed_by_server += o.closed_by_server;
        self.gave_up += o.gave_up;
    }

    /// Attempts that failed, whatever the reason.
    pub fn failed_attempts(&self) -> u64 {
        self.refused + self.io_errors + self.timeouts + self.protocol_errors
    }
}

/// An event from a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// Periodic counters.
    Progress {
        /// Connections currently subscribed.
        subscribed: usize,
        /// Message frames received since the last reset.
        delivered: u64,
    },
    /// Every connection has been attempted: subscribed or given up.
    Ready {
        /// Connections subscribed.
        subscribed: usize,
        /// Failures on the way.
        failures: FailureCounts,
        /// CLOCK_MONOTONIC ns when the first connect started.
        first_ns: u64,
        /// CLOCK_MONOTONIC ns when the last subscription was acknowledged.
        last_ns: u64,
    },
    /// Answer to `report`.
    Report {
        /// Message frames received since the last reset.
        delivered: u64,
        /// Bytes those frames took on the wire (headers included, compressed if they were).
        #[serde(default)]
        wire_bytes: u64,
        /// How many of them arrived compressed.
        #[serde(default)]
        compressed: u64,
        /// Their publish-to-delivery latencies.
        latency: LatencyBuckets,
        /// Failures and closes since the start.
        failures: FailureCounts,
        /// The worker's own resident memory, bytes.
        rss_bytes: u64,
    },
    /// Every connection is back after a storm.
    StormDone {
        /// Connections subscribed again.
        resubscribed: usize,
        /// Failures during the storm.
        failures: FailureCounts,
        /// CLOCK_MONOTONIC ns when the storm started in this worker.
        start_ns: u64,
        /// CLOCK_MONOTONIC ns of the last re-subscription.
        last_ns: u64,
    },
    /// Answer to `offsets`.
    Offsets {
        /// What the connections' offsets showed since the start.
        counts: crate::stream_cursor::OffsetCounts,
    },
    /// The worker cannot go on.
    Failed {
        /// Why.
        message: String,
    },
}
