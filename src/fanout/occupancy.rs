//! Which channels this instance occupies, and what the broker's transitions mean
//! for Pusher apps. [`OccupancyWatch`] wraps the instance's broker where a Pusher
//! app is configured: it records this instance's occupied channels
//! ([`OccupiedChannels`], which the Pusher API's channel queries list, PROTOCOL.md
//! 20.5), and where an app has webhooks (20.7) it also tells the broker this
//! instance's first and last subscriber of each channel, and turns the transitions
//! the broker gives back to this instance (occupied, vacated, a user's first join or
//! last leave) into webhook events. [`forget_dead_instances`] removes what an
//! instance that died held, and reports what that ended.
//!
//! The router asks the broker to subscribe when a channel gets its first local
//! subscriber and to unsubscribe when it loses its last, so the wrapper needs no
//! hook in the router. Only subscribe and unsubscribe take the set's lock (once
//! per channel occupied or vacated, never per publication). Occupancy changes go to
//! the broker one at a time, in order, from one task: a vacate overtaking the
//! occupy it follows would leave the channel marked occupied by this instance for
//! ever.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{debug, warn};

use crate::broker::{
    Broker, BrokerCall, BrokerFuture, HistoryFuture, HistoryQuery, PresenceFuture, PresenceMember, PublishFuture,
    PublishOptions,
};
use crate::payload::Payload;
use crate::pusher::webhooks::{WebhookEvent, Webhooks};

/// This instance's first subscriber of a channel came (true) or its last left.
type OccupancyChange = (Arc<str>, bool);

/// How long an occupancy change is retried while the broker refuses it.
const OCCUPANCY_RETRY_FOR: Duration = Duration::from_secs(30);

/// The channels with at least one subscriber on this instance, in name order (so a
/// prefix is one range of it).
#[derive(Debug, Default)]
pub struct OccupiedChannels {
    names: Mutex<BTreeSet<Arc<str>>>,
}

impl OccupiedChannels {
    /// An empty set.
    pub fn new() -> Arc<OccupiedChannels> {
        Arc::new(OccupiedChannels::default())
    }

    fn names(&self) -> MutexGuard<'_, BTreeSet<Arc<str>>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The occupied channels whose name starts with `prefix`, at most `limit`.
    pub fn with_prefix(&self, prefix: &str, limit: usize) -> Vec<Arc<str>> {
        self.names()
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|name| name.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Whether `channel` is occupied here.
    pub fn contains(&self, channel: &str) -> bool {
        self.names().contains(channel)
    }
}

/// The instance's broker, recording its occupied channels and, where an app has
/// webhooks, reporting its transitions as webhook events.
pub struct OccupancyWatch {
    inner: Arc<dyn Broker>,
    occupied: Arc<OccupiedChannels>,
    /// The webhooks, and the queue of occupancy changes for the broker.
    webhooks: Option<(Webhooks, flume::Sender<OccupancyChange>)>,
}

impl OccupancyWatch {
    /// Wraps `inner`, recording into `occupied`. With `webhooks`, occupancy changes
    /// are sent from a task on the current runtime; `dropped` counts those given up
    /// after [`OCCUPANCY_RETRY_FOR`].
    pub fn start(
        inner: Arc<dyn Broker>,
        occupied: Arc<OccupiedChannels>,
        webhooks: Option<Webhooks>,
        dropped: prometheus::IntCounter,
    ) -> Arc<OccupancyWatch> {
        let webhooks = webhooks.map(|hooks| {
            let (changes, queue) = flume::unbounded();
            tokio::spawn(send_changes(inner.clone(), hooks.clone(), queue, dropped));
            (hooks, changes)
        });
        Arc::new(OccupancyWatch {
            inner,
            occupied,
            webhooks,
        })
    }

    /// This instance's first subscriber of `channel` came (`occupied`) or its last left.
    fn changed(&self, channel: &Arc<str>, occupied: bool) {
        if occupied {
            self.occupied.names().insert(channel.clone());
        } else {
            self.occupied.names().remove(channel);
        }
        if let Some((_, changes)) = &self.webhooks {
            let _ = changes.send((channel.clone(), occupied));
        }
    }

    /// The webhooks, where an app has them.
    fn hooks(&self) -> Option<Webhooks> {
        self.webhooks.as_ref().map(|(hooks, _)| hooks.clone())
    }
}

/// Sends occupancy changes to the broker in order, each retried while refused.
async fn send_changes(
    broker: Arc<dyn Broker>,
    webhooks: Webhooks,
    queue: flume::Receiver<OccupancyChange>,
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

/// Every method is forwarded, the provided ones too: a method added to [`Broker`]
/// with a default must be forwarded here as well, or the wrapped broker's own
/// answer is lost.
impl Broker for OccupancyWatch {
    fn subscribe(&self, channel: Arc<str>) -> BrokerFuture {
        self.changed(&channel, true);
        self.inner.subscribe(channel)
    }

    fn unsubscribe(&self, channel: Arc<str>) -> BrokerFuture {
        self.changed(&channel, false);
        self.inner.unsubscribe(channel)
    }

    fn publish(&self, channel: Arc<str>, payload: Payload, options: PublishOptions) -> PublishFuture {
        self.inner.publish(channel, payload, options)
    }

    fn history(&self, channel: Arc<str>, query: HistoryQuery) -> HistoryFuture {
        self.inner.history(channel, query)
    }

    fn presence_join(&self, channel: Arc<str>, member: PresenceMember) -> PresenceFuture<bool> {
        let Some(webhooks) = self.hooks() else {
            return self.inner.presence_join(channel, member);
        };
        let user = member.user.clone();
        let joined = self.inner.presence_join(channel.clone(), member);
        Box::pin(async move {
            let first = joined.await?;
            if first {
                webhooks.send(&WebhookEvent::MemberAdded(channel, user));
            }
            Ok(first)
        })
    }

    fn presence_leave(&self, channel: Arc<str>, user: Arc<str>) -> PresenceFuture<bool> {
        let Some(webhooks) = self.hooks() else {
            return self.inner.presence_leave(channel, user);
        };
        let left = self.inner.presence_leave(channel.clone(), user.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::InProcessBroker;

    #[tokio::test]
    async fn subscriptions_are_recorded_and_listed_by_prefix() {
        let occupied = OccupiedChannels::new();
        let broker = OccupancyWatch::start(
            Arc::new(InProcessBroker::standalone().expect("broker")),
            occupied.clone(),
            None,
            prometheus::IntCounter::new("dropped", "dropped").expect("counter"),
        );
        for name in ["app1.a", "app1.b", "app10.c", "app2.d"] {
            broker.subscribe(Arc::from(name)).await.expect("subscribe");
        }
        broker.unsubscribe(Arc::from("app1.b")).await.expect("unsubscribe");
        let listed = |prefix: &str, limit| -> Vec<String> {
            occupied
                .with_prefix(prefix, limit)
                .iter()
                .map(|n| n.to_string())
                .collect()
        };
        assert_eq!(listed("app1.", 10), ["app1.a"]);
        assert_eq!(listed("app1", 10), ["app1.a", "app10.c"]);
        assert_eq!(listed("", 2), ["app1.a", "app10.c"]);
        assert!(occupied.contains("app2.d") && !occupied.contains("app1.b"));
    }
}
