//! The broker seam: how instances share publications. The lowest layer: a broker
//! knows channels and payloads only and imports nothing of the gateway above it
//! (no shard, router, frame or WebSocket type). The router subscribes a channel on
//! the broker while any local socket wants it, and the broker hands what other
//! instances publish, as [`BrokerEvent`]s, to a [`BrokerSink`] that the layer above
//! implements.
//!
//! A broker never echoes an instance's own publications back to it: the instance
//! that takes a publish delivers locally itself, so no subscriber gets it twice.
//!
//! A broker is also the history store (PROTOCOL.md 19): for a channel published
//! with a [`HistoryPolicy`] it assigns the offset, keeps the publication, and hands
//! the position back with the publication to every instance, so every instance
//! numbers a publication the same way.

pub mod history_ring;
pub mod instances;
pub mod memory;
pub mod presence_book;
pub mod redis;
pub mod user_counter;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};

use crate::payload::Payload;

/// A broker operation in flight.
pub type BrokerFuture = BrokerCall<()>;

/// A broker operation in flight that answers with a `T`.
pub type BrokerCall<T> = Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send>>;

/// A publish in flight.
pub type PublishFuture = BrokerCall<Published>;

/// A history read in flight.
pub type HistoryFuture = BrokerCall<HistoryPage>;

/// A presence operation in flight.
pub type PresenceFuture<T> = BrokerCall<T>;

/// A member of a channel's presence: a user, with what the app says of it.
#[derive(Debug, Clone)]
pub struct PresenceMember {
    /// The user id.
    pub user: Arc<str>,
    /// The app's `user_info`.
    pub info: Payload,
}

/// What removing a dead instance ended ([`Broker::forget_instance`]).
#[derive(Debug, Clone, Default)]
pub struct Forgotten {
    /// Channels it was the last instance with subscribers on.
    pub vacated: Vec<Arc<str>>,
    /// Presence memberships `(channel, user)` its connections were the last of.
    pub left: Vec<(Arc<str>, Arc<str>)>,
}

/// A change to a channel's members, announced once cluster-wide.
#[derive(Debug, Clone)]
pub enum PresenceChange {
    /// A user's first connection anywhere joined.
    Joined(PresenceMember),
    /// A user's last connection anywhere left (or its instance died).
    Left(Arc<str>),
}

/// Why a broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker is not connected: the operation was not sent, and can be retried later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the operation.
    #[error("broker error: {0}")]
    Failed(String),
    /// No answer came: the operation may or may not have taken effect.
    #[error("no answer from the broker: {0}")]
    Unknown(String),
}

/// How a channel keeps history (PROTOCOL.md 19.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Publications kept.
    pub size: u32,
    /// How long the history outlives the channel's last publication.
    pub ttl: Duration,
}

/// A publication's place in its channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Its offset (1 for the epoch's first publication).
    pub offset: u64,
    /// The epoch.
    pub epoch: Arc<str>,
}

/// What a publish asks of the broker beyond delivery.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Keep it in the channel's history, numbered.
    pub history: Option<HistoryPolicy>,
    /// Publish at most once per key within this window (PROTOCOL.md 19.9).
    pub idempotency: Option<(Arc<str>, Duration)>,
}

/// What a publish did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Where the store put it; none for a channel without history.
    pub position: Option<Position>,
    /// The idempotency key was used before: nothing was published now, and
    /// `position` is the first publication's.
    pub duplicate: bool,
}

/// Which part of a channel's history to read.
#[derive(Debug, Clone, Copy)]
pub struct HistoryQuery {
    /// Publications after this offset; none for the latest `limit`.
    pub since: Option<u64>,
    /// At most this many (0 reads the position only).
    pub limit: usize,
    /// The channel's policy (a read creates the channel's epoch if it has none).
    pub policy: HistoryPolicy,
}

/// A channel's position and the publications a [`HistoryQuery`] asked for, read
/// in one atomic step.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The channel's epoch.
    pub epoch: Arc<str>,
    /// Its top offset (0 before its first publication).
    pub top: u64,
    /// The publications, in offset order.
    pub publications: Vec<(u64, Payload)>,
}

/// Moves publications between instances.
pub trait Broker: Send + Sync + 'static {
    /// Starts receiving other instances' publications on `channel`.
    fn subscribe(&self, channel: Arc<str>) -> BrokerFuture;
    /// Stops receiving `channel`.
    fn unsubscribe(&self, channel: Arc<str>) -> BrokerFuture;
    /// Sends a publication to every other instance subscribed to `channel`; with
    /// a history policy, stores and numbers it first, and sends it with its position.
    fn publish(&self, channel: Arc<str>, payload: Payload, options: PublishOptions) -> PublishFuture;
    /// Reads a channel's position and history.
    fn history(&self, channel: Arc<str>, query: HistoryQuery) -> HistoryFuture;
    /// One more connection of `member.user` on `channel`, on this instance; true
    /// when the user became a member (announced to the other instances as
    /// [`BrokerEvent::Presence`]; this instance announces locally itself).
    fn presence_join(&self, channel: Arc<str>, member: PresenceMember) -> PresenceFuture<bool>;
    /// One connection of `user` on `channel` fewer; true when the user left.
    fn presence_leave(&self, channel: Arc<str>, user: Arc<str>) -> PresenceFuture<bool>;
    /// The channel's members, at most `limit`.
    fn presence_members(&self, channel: Arc<str>, limit: usize) -> PresenceFuture<Vec<PresenceMember>>;
    /// Records that this instance now has subscribers on `channel` (`occupied`) or
    /// has none any more; answers whether that occupied the channel (no instance had
    /// any) or vacated it (none has any now). Called, in order, only where something
    /// watches occupancy (webhooks, PROTOCOL.md 20.7).
    fn occupancy(&self, channel: Arc<str>, occupied: bool) -> BrokerCall<bool>;
    /// Another instance is gone (its heartbeat record expired): removes it from the
    /// occupancy and presence of every channel it had, each removal atomic, so that
    /// of several instances doing this, one sees each channel vacated or user leave.
    fn forget_instance(&self, node: Arc<str>) -> BrokerCall<Forgotten>;
    /// Sends a control message (opaque to the broker: an operator's command) to
    /// every other instance, which receives it as [`BrokerEvent::Control`]. Every
    /// instance listens for control messages from its start; none is stored.
    fn broadcast_control(&self, payload: Payload) -> BrokerFuture;
    /// Whether the broker can take operations now (feeds readiness).
    fn is_ready(&self) -> bool;
    /// A short name for logs and metrics.
    fn kind(&self) -> &'static str;
    /// Channels and publications the store holds in this process, where it holds
    /// them here (the in-process store; Redis keeps its own).
    fn history_size(&self) -> Option<(u64, u64)> {
        None
    }
    /// Whether no other instance shares this broker's history (a standalone
    /// gateway): then the router keeps the history itself, in its own task, and a
    /// publication with history costs no extra thread hop. The broker's own
    /// history calls are then not used.
    fn history_is_local(&self) -> bool {
        false
    }
}

/// What a broker hands up to the instance. Non-exhaustive: history and presence
/// add their own events here, and whoever consumes them must say what it does with
/// an event it does not know.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BrokerEvent {
    /// Another instance published on a channel this instance subscribed.
    Publication {
        /// The channel.
        channel: Arc<str>,
        /// The data.
        payload: Payload,
        /// Its place in the channel's history, when it was published with history.
        position: Option<Position>,
    },
    /// Publications from other instances may have been lost (the broker's
    /// subscription was down, or its receiver fell behind), on any channel.
    Gap,
    /// The same, on these channels only (one master of a cluster was lost).
    ChannelsGap {
        /// The channels.
        channels: Vec<Arc<str>>,
    },
    /// A channel's members changed on another instance (or an instance died).
    Presence {
        /// The channel.
        channel: Arc<str>,
        /// What changed.
        change: PresenceChange,
    },
    /// Another instance broadcast a control message ([`Broker::broadcast_control`]).
    Control {
        /// The message, as sent.
        payload: Payload,
    },
}

/// Where a broker delivers its events: implemented by the layer above (the
/// router), so the broker never names it. Called from the broker's own tasks and
/// threads, so it must only hand the event on, never block.
pub trait BrokerSink: Send + Sync + 'static {
    /// Takes one event.
    fn event(&self, event: BrokerEvent);
}

/// The metric series a broker updates, resolved by whoever owns the registry, so
/// the broker depends on prometheus's types and nothing of the gateway's.
#[derive(Clone)]
pub struct BrokerMetrics {
    /// Messages received from Redis (probe messages excluded).
    pub received: IntCounter,
    /// Payloads dropped as malformed or oversized.
    pub dropped_bad_payload: IntCounter,
    /// Messages lost because the receiver fell behind.
    pub dropped_lagged: IntCounter,
    /// Reconnects of the subscriber connection.
    pub reconnects: IntCounter,
    /// Channels this instance wants subscribed.
    pub subscriptions: IntGauge,
    /// Hash slots of a Redis Cluster whose master is not in sync (16384: none known).
    pub degraded_slots: IntGauge,
}

impl BrokerMetrics {
    /// Series registered nowhere: for brokers built outside a gateway (tests).
    pub fn unregistered() -> Result<BrokerMetrics, prometheus::Error> {
        Ok(BrokerMetrics {
            received: IntCounter::new("received", "received")?,
            dropped_bad_payload: IntCounter::new("dropped_bad_payload", "dropped")?,
            dropped_lagged: IntCounter::new("dropped_lagged", "dropped")?,
            reconnects: IntCounter::new("reconnects", "reconnects")?,
            subscriptions: IntGauge::new("subscriptions", "subscriptions")?,
            degraded_slots: IntGauge::new("degraded_slots", "degraded slots")?,
        })
    }
}
