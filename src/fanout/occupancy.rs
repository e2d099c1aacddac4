//! What the broker's transitions mean for Pusher webhooks (PROTOCOL.md 20.7):
//! [`OccupancyWatch`] wraps the instance's broker where some app has a webhook, so
//! that this instance's first subscriber of a channel and its last one, and its
//! presence joins and leaves, are told to the broker, and the transitions the
//! broker gives back to this instance (occupied, vacated, a user's first join or
//! last leave) become webhook events. [`forget_dead_instances`] removes what an
//! instance that died held, and reports what that ended.
//!
//! The router asks the broker to subscribe when a channel gets its first local
//! subscriber and to unsubscribe when it loses its last, so the wrapper needs no
//! hook in the router. Occupancy changes go to the broker one at a time, in order,
//! from one task: a vacate overtaking the occupy it follows would leave the channel
//! marked occupied by this instance for ever.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::broker::{
    Broker, BrokerCall, BrokerFuture, HistoryFuture, HistoryQuery, PresenceFuture, PresenceMember, PublishFuture,
    PublishOptions,
};
use crate::payload::Payload;
use crate::pusher::webhooks::{WebhookEvent, Webhooks};

/// How long an occupancy change is retried while the broker refuses it.
const OCCUPANCY_RETRY_FOR: Duration = Duration::from_secs(30);

/// The instance's broker, reporting its transitions as webhook events.
pub struct OccupancyWatch {
    inner: Arc<dyn Broker>,
    webhooks: Webhooks,
    changes: flume::Sender<(Arc<str>, bool)>,
}

impl OccupancyWatch {
    /// Wraps `inner`; its occupancy changes are sent from a task on the current
    /// runtime. `dropped` counts the changes given up after
    /// [`OCCUPANCY_RETRY_FOR`].
    pub fn start(inner: Arc<dyn Broker>, webhooks: Webhooks, dropped: prometheus::IntCounter) -> Arc<OccupancyWatch> {
        let (changes, queue) = flume::unbounded();
        tokio::spawn(send_changes(inner.clone(), webhooks.clone(), queue, dropped));
        Arc::new(OccupancyWatch {
            inner,
            webhooks,
            changes,
        })
    }
}

/// Sends occupancy changes to the broker in order, each retried while refused.
async fn send_changes(
    broker: Arc<dyn Broker>,
    webhooks: Webhooks,
    queue: flume::Receiver<(Arc<str>, bool)>,
    dropped: prometheus::IntCounter,
) {
    while let Ok((channel, occupied)) = queue.recv_async().await {
        let until = tokio::time::Instant::now() + OCCUPANCY_RETRY_FOR;
        let mut wait = Duration::from_millis(100);
        loop {
            match broker.occupancy(channel.clone(), occupied).await {
                Ok(true) if occupied => webhooks.send(&WebhookEvent::ChannelOccupied(channel.clone())),
                Ok(true) => webhooks.send(&WebhookEvent::ChannelVacated(channel.clone())),
                Ok(false) => {}
                Err(e) if tokio::time::Instant::now() + wait < until => {
                    debug!(%channel, error = %e, "occupancy change refused; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(e) => {
                    warn!(%channel, error = %e, "occupancy change given up; its webhook may be missing");
                    dropped.inc();
                }
            }
            break;
        }
    }
}

impl Broker for OccupancyWatch {
    fn subscribe(&self, channel: Arc<str>) -> BrokerFuture {
        let _ = self.changes.send((channel.clone(), true));
        self.inner.subscribe(channel)
    }

    fn unsubscribe(&self, channel: Arc<str>) -> BrokerFuture {
        let _ = self.changes.send((channel.clone(), false));
        self.inner.unsubscribe(channel)
    }

    fn publish(&self, channel: Arc<str>, payload: Payload, options: PublishOptions) -> PublishFuture {
        self.inner.publish(channel, payload, options)
    }

    fn history(&self, channel: Arc<str>, query: HistoryQuery) -> HistoryFuture {
        self.inner.history(channel, query)
    }

    fn presence_join(&self, channel: Arc<str>, member: PresenceMember) -> PresenceFuture<bool> {
        let user = member.user.clone();
        let joined = self.inner.presence_join(channel.clone(), member);
        let webhooks = self.webhooks.clone();
        Box::pin(async move {
            let first = joined.await?;
            if first {
                webhooks.send(&WebhookEvent::MemberAdded(channel, user));
            }
            Ok(first)
        })
    }

    fn presence_leave(&self, channel: Arc<str>, user: Arc<str>) -> PresenceFuture<bool> {
        let left = self.inner.presence_leave(channel.clone(), user.clone());
        let webhooks = self.webhooks.clone();
        Box::pin(async move {
            let last = left.await?;
            if last {
                webhooks.send(&WebhookEvent::MemberRemoved(channel, user));
            }
            Ok(last)
        })
    }

    fn presence_members(&self, channel: Arc<str>, limit: usize) -> PresenceFuture<Vec<PresenceMember>> {
        self.inner.presence_members(channel, limit)
    }

    fn occupancy(&self, channel: Arc<str>, occupied: bool) -> BrokerCall<bool> {
        self.inner.occupancy(channel, occupied)
    }

    fn forget_instance(&self, node: Arc<str>) -> BrokerCall<crate::broker::Forgotten> {
        self.inner.forget_instance(node)
    }

    fn broadcast_control(&self, payload: Payload) -> BrokerFuture {
        self.inner.broadcast_control(payload)
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn history_size(&self) -> Option<(u64, u64)> {
        self.inner.history_size()
    }

    fn history_is_local(&self) -> bool {
        self.inner.history_is_local()
    }
}

/// Removes what each instance named on `gone` held (its heartbeat expired), and
/// sends the webhooks of what that ended, if any app has them. Runs until the
/// sender is dropped.
pub async fn forget_dead_instances(broker: Arc<dyn Broker>, gone: flume::Receiver<String>, webhooks: Option<Webhooks>) {
    while let Ok(node) = gone.recv_async().await {
        match broker.forget_instance(Arc::from(node.as_str())).await {
            Ok(forgotten) => {
                if !forgotten.vacated.is_empty() || !forgotten.left.is_empty() {
                    debug!(%node, vacated = forgotten.vacated.len(), left = forgotten.left.len(), "dead instance forgotten");
                }
                let Some(webhooks) = &webhooks else { continue };
                for channel in forgotten.vacated {
                    webhooks.send(&WebhookEvent::ChannelVacated(channel));
                }
                for (channel, user) in forgotten.left {
                    webhooks.send(&WebhookEvent::MemberRemoved(channel, user));
                }
            }
            Err(e) => warn!(%node, error = %e, "could not forget a dead instance; another instance may"),
        }
    }
}
