//! The broker seam: how instances share publications. The lowest layer: a broker
//! knows channels and payloads only and imports nothing of the gateway above it
//! (no shard, router, frame or WebSocket type). The router subscribes a channel on
//! the broker while any local socket wants it, and the broker hands what other
//! instances publish, as [`BrokerEvent`]s, to a [`BrokerSink`] that the layer above
//! implements.
//!
//! A broker never echoes an instance's own publications back to it: the instance
//! that takes a publish delivers locally itself, so no subscriber gets it twice.

pub mod instances;
pub mod memory;
pub mod redis;
pub mod user_counter;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

use crate::payload::Payload;

/// A broker operation in flight.
pub type BrokerFuture = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// Why a broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker is not connected; the operation can be retried later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the operation.
    #[error("broker error: {0}")]
    Failed(String),
}

/// Moves publications between instances.
pub trait Broker: Send + Sync + 'static {
    /// Starts receiving other instances' publications on `channel`.
    fn subscribe(&self, channel: Arc<str>) -> BrokerFuture;
    /// Stops receiving `channel`.
    fn unsubscribe(&self, channel: Arc<str>) -> BrokerFuture;
    /// Sends a publication to every other instance subscribed to `channel`.
    fn publish(&self, channel: Arc<str>, payload: Payload) -> BrokerFuture;
    /// Sends a control message (opaque to the broker: an operator's command) to
    /// every other instance, which receives it as [`BrokerEvent::Control`]. Every
    /// instance listens for control messages from its start; none is stored.
    fn broadcast_control(&self, payload: Payload) -> BrokerFuture;
    /// Whether the broker can take operations now (feeds readiness).
    fn is_ready(&self) -> bool;
    /// A short name for logs and metrics.
    fn kind(&self) -> &'static str;
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
    },
    /// Publications from other instances may have been lost (the broker's
    /// subscription was down, or its receiver fell behind), on any channel.
    Gap,
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
        })
    }
}
