//! The Redis broker (fred): instances share publications through Redis pub/sub,
//! or Redis Cluster sharded pub/sub (SSUBSCRIBE/SPUBLISH) so traffic spreads over
//! the cluster's masters instead of reaching every node.
//!
//! One subscriber connection per instance (per master, on a cluster: see
//! [`cluster`]) carries every channel the instance wants, so a publication crosses
//! Redis once per instance, never once per subscriber.
//! The set of wanted channels is kept here, not in fred: fred only remembers a
//! channel whose SUBSCRIBE succeeded, and a channel wanted while Redis is down must
//! still be subscribed when it comes back. A reconciler re-subscribes the whole set
//! after every reconnect; until it has, the broker does not report ready.

mod cluster;
mod history;
mod instances;
mod keeper;
mod link;
mod presence;
mod receiver;
mod user_counter;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use shardcast_proto::redis::encode_redis_payload;
use tracing::info;

use super::{
    Broker, BrokerCall, BrokerError, BrokerFuture, BrokerMetrics, BrokerSink, Forgotten, HistoryFuture, HistoryQuery,
    PresenceFuture, PresenceMember, PublishFuture, PublishOptions, Published,
};
use crate::payload::Payload;
use cluster::ClusterLinks;
use history::HistoryCall;
use keeper::GapScope;
use link::{Link, LinkChannels};
use presence::PresenceCall;

pub use instances::RedisInstances;
pub use user_counter::RedisUserCounter;

/// Timeout of one Redis command: a publish fails, rather than hangs, when Redis is gone.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Start of the probe channel's name (after the prefix): `#` is outside the
/// protocol's channel charset, so no client channel can be mistaken for it.
pub(crate) const PROBE_PREFIX: &str = "#probe#";

/// The channel (after the prefix) control messages travel on; like the probe's, its
/// name is outside the protocol's channel charset.
pub(crate) const CONTROL_CHANNEL: &str = "#control";

/// Pub/sub messages fred may hold for the receiver before it reports `Lagged`.
const SUBSCRIBER_BUFFER: usize = 8192;

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db` (for a cluster: any node's address).
    pub url: String,
    /// Use Redis Cluster with sharded pub/sub.
    pub cluster: bool,
    /// Prefix of every Redis channel name.
    pub prefix: String,
    /// This instance's id, stamped on what it publishes so it can skip the echo.
    pub origin: String,
    /// Payloads above this size are dropped (and counted) instead of delivered.
    pub max_payload: usize,
}

/// A broker over Redis pub/sub.
pub struct RedisBroker {
    links: Links,
    settings: RedisSettings,
}

/// One link to one Redis, or one per master of a cluster.
enum Links {
    One(Link),
    Cluster(Arc<ClusterLinks>),
}

/// A command connection for a key: the one Redis, or the master of the key's slot.
#[derive(Clone)]
enum RedisClients {
    One(Client),
    Cluster(Arc<ClusterLinks>),
}

impl RedisClients {
    /// The client whose server holds `key`; none while its master is unknown.
    fn for_key(&self, key: &str) -> Option<Client> {
        match self {
            RedisClients::One(client) => Some(client.clone()),
            RedisClients::Cluster(links) => links.client_for(key),
        }
    }
}

impl RedisBroker {
    /// Creates the clients and starts connecting (in the background: a gateway
    /// starts, not ready, while Redis is unreachable, and becomes ready when it is).
    pub fn start(
        settings: RedisSettings,
        sink: Arc<dyn BrokerSink>,
        metrics: BrokerMetrics,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        if settings.url.starts_with("rediss://") {
            // This build's Redis client has no TLS; failing here beats a silent plain connection.
            return Err(BrokerError::Failed(
                "rediss:// (TLS) is not supported by this build".into(),
            ));
        }
        let links = if settings.cluster {
            Links::Cluster(ClusterLinks::start(settings.clone(), sink, metrics)?)
        } else {
            let config = Config::from_url(&settings.url)
                .map_err(|e| BrokerError::Failed(format!("redis configuration: {e}")))?;
            let channels = LinkChannels {
                probe: Arc::from(format!("{PROBE_PREFIX}{}", settings.origin)),
                control: true,
                wanted: HashSet::new(),
            };
            Links::One(Link::start(
                config,
                &settings,
                channels,
                false,
                GapScope::All,
                sink,
                metrics,
            )?)
        };
        info!(url = %redact(&settings.url), cluster = settings.cluster, "redis broker starting");
        Ok(Arc::new(RedisBroker { links, settings }))
    }

    fn clients(&self) -> RedisClients {
        match &self.links {
            Links::One(link) => RedisClients::One(link.publisher.clone()),
            Links::Cluster(links) => RedisClients::Cluster(links.clone()),
        }
    }

    /// The cluster-wide per-user connection count, at most `limit` per user.
    pub fn user_counter(&self, limit: u32) -> RedisUserCounter {
        RedisUserCounter::new(self.clients(), &self.settings.prefix, &self.settings.origin, limit)
    }

    /// The instance records (heartbeats) of this cluster, on the command connection.
    pub fn instances(&self) -> RedisInstances {
        RedisInstances::new(self.clients(), &self.settings.prefix)
    }

    /// The connected command client for `topic`'s server; none when it is not
    /// connected (on a cluster: the master of its slot, whatever the others do).
    fn client_for(&self, topic: &str) -> Option<Client> {
        let client = match &self.links {
            Links::One(link) => link.publisher.clone(),
            Links::Cluster(links) => links.client_for(topic)?,
        };
        client.is_connected().then_some(client)
    }

    /// PUBLISH (SPUBLISH on a cluster) of a payload, stamped with this instance's origin.
    fn send(&self, channel: &str, payload: &Payload) -> BrokerFuture {
        let topic = format!("{}{}", self.settings.prefix, channel);
        let Some(client) = self.client_for(&topic) else {
            return Box::pin(std::future::ready(Err(BrokerError::Unavailable(
                "the redis node of this channel is not connected".into(),
            ))));
        };
        let body = encode_redis_payload(&self.settings.origin, payload.json().get());
        let cluster = self.settings.cluster;
        Box::pin(async move {
            let sent: Result<i64, _> = if cluster {
                client.spublish(topic, body).await
            } else {
                client.publish(topic, body).await
            };
            sent.map(|_| ()).map_err(history::classify)
        })
    }

    /// A presence call on the client of the channel's slot, or the refusal to return.
    fn presence_call<T: Send + 'static>(&self, channel: &str) -> Result<PresenceCall, BrokerCall<T>> {
        Ok(PresenceCall {
            client: self.history_client(channel)?,
            cluster: self.settings.cluster,
            prefix: self.settings.prefix.clone(),
            origin: self.settings.origin.clone(),
        })
    }

    /// [`RedisBroker::presence_call`], with this instance's index of channels (its
    /// key, and the client of its slot, if connected).
    fn indexed_call<T: Send + 'static>(
        &self,
        channel: &str,
    ) -> Result<(PresenceCall, String, Option<Client>), BrokerCall<T>> {
        let call = self.presence_call(channel)?;
        let key = presence::node_index(&self.settings.prefix, &call.origin);
        let index = self.client_for(&key);
        Ok((call, key, index))
    }

    /// The client for a channel's history keys, or the refusal to return.
    fn history_client<T: Send + 'static>(&self, channel: &str) -> Result<Client, BrokerCall<T>> {
        let topic = format!("{}{}", self.settings.prefix, channel);
        self.client_for(&topic).ok_or_else(|| {
            let refused: BrokerCall<T> = Box::pin(std::future::ready(Err(BrokerError::Unavailable(
                "the redis node of this channel is not connected".into(),
            ))));
            refused
        })
    }
}

impl Broker for RedisBroker {
    fn subscribe(&self, channel: Arc<str>) -> BrokerFuture {
        // Local delivery starts at once; the keeper subscribes on Redis as soon as it
        // can, and until then the instance reports not ready.
        match &self.links {
            Links::One(link) => link.want(channel, true),
            Links::Cluster(links) => links.want(channel, true),
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe(&self, channel: Arc<str>) -> BrokerFuture {
        match &self.links {
            Links::One(link) => link.want(channel, false),
            Links::Cluster(links) => links.want(channel, false),
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish(&self, channel: Arc<str>, payload: Payload, options: PublishOptions) -> PublishFuture {
        if options.history.is_none() && options.idempotency.is_none() {
            let sent = self.send(&channel, &payload);
            return Box::pin(async move { sent.await.map(|()| Published::default()) });
        }
        let client = match self.history_client(&channel) {
            Ok(client) => client,
            Err(refused) => return refused,
        };
        let (cluster, prefix, origin) = (
            self.settings.cluster,
            self.settings.prefix.clone(),
            self.settings.origin.clone(),
        );
        Box::pin(async move {
            let call = HistoryCall {
                client: &client,
                cluster,
                prefix: &prefix,
            };
            call.publish(&channel, &payload, &origin, &options).await
        })
    }

    fn history(&self, channel: Arc<str>, query: HistoryQuery) -> HistoryFuture {
        let client = match self.history_client(&channel) {
            Ok(client) => client,
            Err(refused) => return refused,
        };
        let (cluster, prefix) = (self.settings.cluster, self.settings.prefix.clone());
        Box::pin(async move {
            let call = HistoryCall {
                client: &client,
                cluster,
                prefix: &prefix,
            };
            call.read(&channel, &query).await
        })
    }

    fn broadcast_control(&self, payload: Payload) -> BrokerFuture {
        self.send(CONTROL_CHANNEL, &payload)
    }

    fn presence_join(&self, channel: Arc<str>, member: PresenceMember) -> PresenceFuture<bool> {
        let (call, key, index) = match self.indexed_call(&channel) {
            Ok(parts) => parts,
            Err(refused) => return refused,
        };
        Box::pin(async move {
            // Indexed first, so that this instance's death finds the membership.
            index_channel(index.as_ref(), &key, &channel, true).await?;
            call.join(&channel, &member).await
        })
    }

    fn presence_leave(&self, channel: Arc<str>, user: Arc<str>) -> PresenceFuture<bool> {
        match self.presence_call(&channel) {
            Ok(call) => Box::pin(async move { call.leave(&channel, &user).await }),
            Err(refused) => refused,
        }
    }

    fn presence_members(&self, channel: Arc<str>, limit: usize) -> PresenceFuture<Vec<PresenceMember>> {
        match self.presence_call(&channel) {
            Ok(call) => Box::pin(async move { call.members(&channel, limit).await }),
            Err(refused) => refused,
        }
    }

    fn occupancy(&self, channel: Arc<str>, occupied: bool) -> BrokerCall<bool> {
        let (call, key, index) = match self.indexed_call(&channel) {
            Ok(parts) => parts,
            Err(refused) => return refused,
        };
        Box::pin(async move {
            // Indexed before the change and unindexed after it: a death in between
            // leaves an index entry with nothing to remove, never the reverse.
            if occupied {
                index_channel(index.as_ref(), &key, &channel, true).await?;
            }
            let changed = call.occupancy(&channel, &call.origin, occupied).await?;
            if !occupied {
                index_channel(index.as_ref(), &key, &channel, false).await?;
            }
            Ok(changed)
        })
    }

    fn forget_instance(&self, node: Arc<str>) -> BrokerCall<Forgotten> {
        let key = presence::node_index(&self.settings.prefix, &node);
        let Some(index) = self.client_for(&key) else {
            return Box::pin(std::future::ready(Err(BrokerError::Unavailable(
                "the redis node of the instance index is not connected".into(),
            ))));
        };
        let clients = self.clients();
        let (cluster, prefix, origin) = (
            self.settings.cluster,
            self.settings.prefix.clone(),
            self.settings.origin.clone(),
        );
        Box::pin(async move {
            let channels: Vec<String> = index.smembers(&key).await.map_err(history::classify)?;
            let mut forgotten = Forgotten::default();
            for channel in channels {
                let channel: Arc<str> = Arc::from(channel);
                let Some(client) = clients.for_key(&format!("{prefix}{channel}")) else {
                    // That channel's master is down: what the dead instance held
                    // there stays until that master's keys expire.
                    continue;
                };
                let call = PresenceCall {
                    client,
                    cluster,
                    prefix: prefix.clone(),
                    origin: origin.clone(),
                };
                for user in call.forget(&channel, &node).await? {
                    forgotten.left.push((channel.clone(), user));
                }
                if call.occupancy(&channel, &node, false).await? {
                    forgotten.vacated.push(channel.clone());
                }
            }
            let _: i64 = index.del(&key).await.map_err(history::classify)?;
            Ok(forgotten)
        })
    }

    fn is_ready(&self) -> bool {
        match &self.links {
            Links::One(link) => link.is_ready(),
            // A cluster with some masters down still serves the others' slots.
            Links::Cluster(links) => links.is_ready(),
        }
    }

    fn kind(&self) -> &'static str {
        if self.settings.cluster {
            "redis-cluster"
        } else {
            "redis"
        }
    }
}

/// A Redis URL with its password hidden, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Adds `channel` to an instance's index (or removes it); without a connected
/// client for the index, refused.
async fn index_channel(index: Option<&Client>, key: &str, channel: &str, add: bool) -> Result<(), BrokerError> {
    let Some(index) = index else {
        return Err(BrokerError::Unavailable(
            "the redis node of the instance index is not connected".into(),
        ));
    };
    let changed: Result<i64, _> = if add {
        index.sadd(key, channel).await
    } else {
        index.srem(key, channel).await
    };
    changed.map(|_| ()).map_err(history::classify)
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_credentials() {
        assert_eq!(super::redact("redis://user:pw@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(super::redact("redis://host:6379"), "redis://host:6379");
    }
}
