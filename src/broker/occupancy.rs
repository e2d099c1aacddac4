//! Which channels this instance's sockets subscribe to, as the router tells its
//! broker: a [`Broker`] that forwards every call to the real one and records its
//! subscriptions in an [`OccupiedChannels`] set, which the admin port lists (the
//! Pusher HTTP API's channel queries, PROTOCOL.md 20.5).
//!
//! The router subscribes a channel on its broker when the channel's first local
//! socket subscribes and unsubscribes when its last one leaves, so the set is this
//! instance's occupied channels, behind the shards by one hop of the router's
//! queue. Only subscribe and unsubscribe take the set's lock (once per channel
//! occupied or vacated, never per publication).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    Broker, BrokerCall, BrokerFuture, Forgotten, HistoryFuture, HistoryQuery, PresenceFuture, PresenceMember,
    PublishFuture, PublishOptions,
};
use crate::payload::Payload;

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

/// A broker that records the router's subscriptions in an [`OccupiedChannels`].
pub struct OccupancyRecordingBroker {
    inner: Arc<dyn Broker>,
    occupied: Arc<OccupiedChannels>,
}

impl OccupancyRecordingBroker {
    /// Wraps `inner`, recording into `occupied`.
    pub fn new(inner: Arc<dyn Broker>, occupied: Arc<OccupiedChannels>) -> OccupancyRecordingBroker {
        OccupancyRecordingBroker { inner, occupied }
    }
}

/// Every method is forwarded, the provided ones too: a method added to [`Broker`]
/// with a default must be forwarded here as well, or the wrapped broker's own
/// answer is lost.
impl Broker for OccupancyRecordingBroker {
    fn subscribe(&self, channel: Arc<str>) -> BrokerFuture {
        self.occupied.names().insert(channel.clone());
        self.inner.subscribe(channel)
    }

    fn unsubscribe(&self, channel: Arc<str>) -> BrokerFuture {
        self.occupied.names().remove(&channel);
        self.inner.unsubscribe(channel)
    }

    fn publish(&self, channel: Arc<str>, payload: Payload, options: PublishOptions) -> PublishFuture {
        self.inner.publish(channel, payload, options)
    }

    fn history(&self, channel: Arc<str>, query: HistoryQuery) -> HistoryFuture {
        self.inner.history(channel, query)
    }

    fn presence_join(&self, channel: Arc<str>, member: PresenceMember) -> PresenceFuture<bool> {
        self.inner.presence_join(channel, member)
    }

    fn presence_leave(&self, channel: Arc<str>, user: Arc<str>) -> PresenceFuture<bool> {
        self.inner.presence_leave(channel, user)
    }

    fn presence_members(&self, channel: Arc<str>, limit: usize) -> PresenceFuture<Vec<PresenceMember>> {
        self.inner.presence_members(channel, limit)
    }

    fn occupancy(&self, channel: Arc<str>, occupied: bool) -> BrokerCall<bool> {
        self.inner.occupancy(channel, occupied)
    }

    fn forget_instance(&self, node: Arc<str>) -> BrokerCall<Forgotten> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::InProcessBroker;

    #[tokio::test]
    async fn subscriptions_are_recorded_and_listed_by_prefix() {
        let occupied = OccupiedChannels::new();
        let broker = OccupancyRecordingBroker::new(
            Arc::new(InProcessBroker::standalone().expect("broker")),
            occupied.clone(),
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
