//! The broker seam: how instances share publications. A broker knows channels and
//! payloads only; it never sees connections or shards. The router subscribes a
//! channel on the broker while any local socket wants it, and the broker hands what
//! other instances publish to a [`BrokerSink`].
//!
//! A broker never echoes an instance's own publications back to it: the instance
//! that takes a publish delivers locally itself, so no subscriber gets it twice.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::publication::Payload;
use crate::router::RouterHandle;

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
    /// Whether the broker can take operations now (feeds readiness).
    fn is_ready(&self) -> bool;
    /// A short name for logs and metrics.
    fn kind(&self) -> &'static str;
}

/// Where a broker delivers what other instances published.
#[derive(Clone)]
pub struct BrokerSink(RouterHandle);

impl BrokerSink {
    /// A sink feeding the given router.
    pub fn new(router: RouterHandle) -> BrokerSink {
        BrokerSink(router)
    }

    /// Hands over one publication received from another instance.
    pub fn deliver(&self, channel: Arc<str>, payload: Payload) {
        self.0.deliver_remote(channel, payload);
    }

    /// Publications from other instances may have been lost (the broker's subscription
    /// was down, or its receiver fell behind): every subscriber is told, per channel.
    pub fn gap(&self) {
        self.0.gap();
    }
}
