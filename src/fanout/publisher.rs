//! The one path every publish takes, whoever makes it (the admin API or a client):
//! deliver to this instance's subscribers through the router, and hand the same
//! payload to the broker for every other instance.

use std::sync::Arc;

use super::control::UserCommand;
use super::router::{RouterHandle, Source};
use crate::broker::{Broker, BrokerError};
use crate::payload::Payload;

/// A publish that reached this instance's subscribers but not the broker.
#[derive(Debug, thiserror::Error)]
#[error("delivered to {reached} local subscribers, but not to other instances: {source}")]
pub struct PublishError {
    /// Local subscribers it did reach.
    pub reached: usize,
    /// Why the broker did not take it.
    pub source: BrokerError,
}

/// Publishes to local subscribers and other instances.
#[derive(Clone)]
pub struct Publisher {
    router: RouterHandle,
    broker: Arc<dyn Broker>,
}

impl Publisher {
    /// A publisher over this instance's router and broker.
    pub fn new(router: RouterHandle, broker: Arc<dyn Broker>) -> Publisher {
        Publisher { router, broker }
    }

    /// Publishes and returns how many local subscribers the publication reached.
    pub async fn publish(&self, channel: Arc<str>, payload: Payload, source: Source) -> Result<usize, PublishError> {
        let remote = self.broker.publish(channel.clone(), payload.clone());
        let local = self.router.publish_local(channel, payload, source);
        let (reached, remote) = tokio::join!(local, remote);
        remote
            .map(|()| reached)
            .map_err(|source| PublishError { reached, source })
    }

    /// Applies an operator's command here and sends it to every other instance;
    /// returns how many connections it touched on this instance.
    pub async fn control(&self, command: UserCommand) -> Result<usize, PublishError> {
        let remote = match command.to_payload() {
            Ok(payload) => self.broker.broadcast_control(payload),
            Err(e) => Box::pin(std::future::ready(Err(BrokerError::Failed(e.to_string())))),
        };
        let local = self.router.control(command);
        let (reached, remote) = tokio::join!(local, remote);
        remote
            .map(|()| reached)
            .map_err(|source| PublishError { reached, source })
    }

    /// Whether the broker can take publishes now.
    pub fn broker_ready(&self) -> bool {
        self.broker.is_ready()
    }
}
