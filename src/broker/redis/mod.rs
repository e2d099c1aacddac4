//! The Redis broker (fred): instances share publications through Redis pub/sub,
//! or Redis Cluster sharded pub/sub (SSUBSCRIBE/SPUBLISH) so traffic spreads over
//! the cluster's masters instead of reaching every node.
//!
//! One subscriber connection per instance carries every channel the instance wants,
//! so a publication crosses Redis once per instance, never once per subscriber.
//! The set of wanted channels is kept here, not in fred: fred only remembers a
//! channel whose SUBSCRIBE succeeded, and a channel wanted while Redis is down must
//! still be subscribed when it comes back. A reconciler re-subscribes the whole set
//! after every reconnect; until it has, the broker does not report ready.

mod history;
mod instances;
mod keeper;
mod receiver;
mod user_counter;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::ClusterInterface;
use fred::prelude::*;
use fred::types::config::ReconnectPolicy;
use shardcast_proto::redis::encode_redis_payload;
use tracing::info;

use super::{
    Broker, BrokerError, BrokerFuture, BrokerMetrics, BrokerSink, HistoryFuture, HistoryQuery, PublishFuture,
    PublishOptions, Published,
};
use crate::payload::Payload;
use history::HistoryCall;
use keeper::{count_reconnects, SubscriptionCommand, SubscriptionKeeper};
use receiver::receive;

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

/// A broker call in flight.
type BrokerCall<T> = Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send>>;

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
    publisher: Client,
    subscriber: SubscriberClient,
    commands: flume::Sender<SubscriptionCommand>,
    settings: RedisSettings,
    /// True once every wanted channel is subscribed on the current connection.
    in_sync: Arc<AtomicBool>,
}

impl RedisBroker {
    /// Creates the clients and starts connecting (in the background: a gateway
    /// starts, not ready, while Redis is unreachable, and becomes ready when it is).
    pub fn start(
        settings: RedisSettings,
        sink: Arc<dyn BrokerSink>,
        metrics: BrokerMetrics,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let fail = |e: fred::error::Error| BrokerError::Failed(format!("redis configuration: {e}"));
        if settings.url.starts_with("rediss://") {
            // This build's Redis client has no TLS; failing here beats a silent plain connection.
            return Err(BrokerError::Failed(
                "rediss:// (TLS) is not supported by this build".into(),
            ));
        }
        let config = if settings.cluster {
            Config::from_url_clustered(&settings.url)
        } else {
            Config::from_url(&settings.url)
        }
        .map_err(fail)?;
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
            .with_connection_config(|c| {
                c.connection_timeout = COMMAND_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
                // A command is not replayed on a new connection: a publish either
                // went through or is reported as failed.
                c.max_command_attempts = 1;
            });
        let publisher = builder.build().map_err(fail)?;
        // fred's default of 32 pub/sub messages in flight would drop messages (as
        // `Lagged`) under any burst. The capacity is allocated up front for each of
        // the client's event channels, so it is raised on the subscriber only, and
        // only as far as a burst needs: the receiver just hands messages on.
        builder.with_performance_config(|p| p.broadcast_channel_capacity = SUBSCRIBER_BUFFER);
        let subscriber = builder.build_subscriber_client().map_err(fail)?;
        publisher.connect();
        subscriber.connect();

        let (commands, rx) = flume::unbounded();
        let in_sync = Arc::new(AtomicBool::new(false));
        tokio::spawn(receive(
            subscriber.message_rx(),
            settings.clone(),
            sink.clone(),
            metrics.clone(),
        ));
        let resync = Arc::new(AtomicBool::new(false));
        tokio::spawn(count_reconnects(
            subscriber.clone(),
            resync.clone(),
            in_sync.clone(),
            metrics.clone(),
        ));
        tokio::spawn(
            SubscriptionKeeper {
                subscriber: subscriber.clone(),
                publisher: publisher.clone(),
                cluster: settings.cluster,
                prefix: settings.prefix.clone(),
                probe_channel: Arc::from(format!("{PROBE_PREFIX}{}", settings.origin)),
                wanted: HashSet::new(),
                complete: false,
                resync,
                synced_once: false,
                lost: false,
                sink: sink.clone(),
                in_sync: in_sync.clone(),
                metrics,
            }
            .run(rx),
        );
        info!(url = %redact(&settings.url), cluster = settings.cluster, "redis broker starting");
        Ok(Arc::new(RedisBroker {
            publisher,
            subscriber,
            commands,
            settings,
            in_sync,
        }))
    }

    /// The cluster-wide per-user connection count, at most `limit` per user.
    pub fn user_counter(&self, limit: u32) -> RedisUserCounter {
        RedisUserCounter::new(
            self.publisher.clone(),
            &self.settings.prefix,
            &self.settings.origin,
            limit,
        )
    }

    /// The instance records (heartbeats) of this cluster, on the command connection.
    pub fn instances(&self) -> RedisInstances {
        RedisInstances::new(self.publisher.clone(), &self.settings.prefix)
    }

    /// PUBLISH (SPUBLISH on a cluster) of a payload, stamped with this instance's origin.
    fn send(&self, channel: &str, payload: &Payload) -> BrokerFuture {
        let topic = format!("{}{}", self.settings.prefix, channel);
        if !self.reachable(&topic) {
            return Box::pin(std::future::ready(Err(BrokerError::Unavailable(
                "the redis node of this channel is not connected".into(),
            ))));
        }
        let body = encode_redis_payload(&self.settings.origin, payload.json().get());
        let client = self.publisher.clone();
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

    /// Whether the Redis node that serves `topic` is connected: on a cluster, the
    /// master of its slot (the others may be down: the broker degrades per slot);
    /// otherwise the one server.
    fn reachable(&self, topic: &str) -> bool {
        if !self.settings.cluster {
            return self.publisher.is_connected();
        }
        let slot = fred::util::redis_keyslot(topic.as_bytes());
        let owner = self
            .publisher
            .cached_cluster_state()
            .and_then(|routing| routing.get_server(slot).cloned());
        owner.is_some_and(|server| self.publisher.active_connections().contains(&server))
    }

    fn not_connected<T: Send + 'static>(&self, channel: &str) -> Option<BrokerCall<T>> {
        let topic = format!("{}{}", self.settings.prefix, channel);
        (!self.reachable(&topic)).then(|| {
            let refused: BrokerCall<T> = Box::pin(std::future::ready(Err(BrokerError::Unavailable(
                "redis is not connected".into(),
            ))));
            refused
        })
    }
}

impl Broker for RedisBroker {
    fn subscribe(&self, channel: Arc<str>) -> BrokerFuture {
        // Local delivery starts at once; the keeper subscribes on Redis as soon as it
        // can, and until then the instance reports not ready.
        let _ = self.commands.send(SubscriptionCommand::Subscribe(channel));
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe(&self, channel: Arc<str>) -> BrokerFuture {
        let _ = self.commands.send(SubscriptionCommand::Unsubscribe(channel));
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish(&self, channel: Arc<str>, payload: Payload, options: PublishOptions) -> PublishFuture {
        if options.history.is_none() && options.idempotency.is_none() {
            let sent = self.send(&channel, &payload);
            return Box::pin(async move { sent.await.map(|()| Published::default()) });
        }
        if let Some(refused) = self.not_connected(&channel) {
            return refused;
        }
        let client = self.publisher.clone();
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
        if let Some(refused) = self.not_connected(&channel) {
            return refused;
        }
        let client = self.publisher.clone();
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

    fn is_ready(&self) -> bool {
        let connected = self.publisher.is_connected() && self.subscriber.is_connected();
        if !connected {
            // Whatever the keeper last verified was on a connection that is gone; it
            // must verify again (it may be stuck in a command on the dead one).
            self.in_sync.store(false, Ordering::Release);
        }
        connected && self.in_sync.load(Ordering::Acquire)
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

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_credentials() {
        assert_eq!(super::redact("redis://user:pw@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(super::redact("redis://host:6379"), "redis://host:6379");
    }
}
