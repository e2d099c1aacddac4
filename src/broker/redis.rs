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

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::ReconnectPolicy;
use fred::types::Message;
use shardcast_proto::redis::{decode_redis_payload, encode_redis_payload, raw_payload_json, RedisPayload};
use tokio::sync::broadcast::error::RecvError;
use tracing::{error, info, warn};

use super::{Broker, BrokerError, BrokerFuture, BrokerSink};
use crate::metrics::Metrics;
use crate::publication::Payload;

/// Timeout of one Redis command: a publish fails, rather than hangs, when Redis is gone.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Start of the probe channel's name (after the prefix): `#` is outside the
/// protocol's channel charset, so no client channel can be mistaken for it.
const PROBE_PREFIX: &str = "#probe#";

/// A probe slower than this counts as failed, so the keeper is never stuck long.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Pub/sub messages fred may hold for the receiver before it reports `Lagged`.
const SUBSCRIBER_BUFFER: usize = 8192;

/// How often the reconciler checks that the subscriptions match the connection.
const RECONCILE_PERIOD: Duration = Duration::from_millis(200);

/// Most channels in one SUBSCRIBE, so a re-subscribe of 100k channels is a few
/// hundred commands, not 100k round trips, nor one enormous frame.
const SUBSCRIBE_BATCH: usize = 500;

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

enum SubscriptionCommand {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
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
        sink: BrokerSink,
        metrics: Arc<Metrics>,
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

    /// The command client, for other Redis users of this instance (the cluster view).
    pub fn client(&self) -> Client {
        self.publisher.clone()
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

    fn publish(&self, channel: Arc<str>, payload: Payload) -> BrokerFuture {
        if !self.publisher.is_connected() {
            return Box::pin(std::future::ready(Err(BrokerError::Unavailable(
                "redis is not connected".into(),
            ))));
        }
        let topic = format!("{}{}", self.settings.prefix, channel);
        let body = encode_redis_payload(&self.settings.origin, payload.json().get());
        let client = self.publisher.clone();
        let cluster = self.settings.cluster;
        Box::pin(async move {
            let sent: Result<i64, _> = if cluster {
                client.spublish(topic, body).await
            } else {
                client.publish(topic, body).await
            };
            sent.map(|_| ()).map_err(|e| BrokerError::Unavailable(e.to_string()))
        })
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

/// What a probe publication found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Our subscriber got it: the subscriptions are in place.
    Received,
    /// Redis delivered it to nobody: our subscriber connection has lost them.
    NotReceived,
    /// No answer (timeout, error): nothing learned.
    Failed,
}

/// Owns the set of wanted channels and keeps the subscriber connection subscribed
/// to exactly that set. One task, so SUBSCRIBE and UNSUBSCRIBE of a channel are
/// never reordered.
///
/// Whether the connection really holds the subscriptions is checked, not assumed:
/// besides the wanted channels it subscribes a private probe channel (its name is
/// outside the protocol's channel charset, so no client can collide with it), and
/// every tick it publishes an empty probe there. PUBLISH answers how many
/// subscribers got it: zero means this connection lost its subscriptions (a
/// reconnect the events have not told us about yet), and everything is
/// re-subscribed before the instance reports ready again.
struct SubscriptionKeeper {
    subscriber: SubscriberClient,
    publisher: Client,
    cluster: bool,
    prefix: String,
    probe_channel: Arc<str>,
    wanted: HashSet<Arc<str>>,
    /// Every (UN)SUBSCRIBE since the last full re-subscribe went through.
    complete: bool,
    /// Set by the reconnect listener: some connection is new, re-subscribe all.
    resync: Arc<AtomicBool>,
    /// Whether the subscriptions were ever verified (the first sync is no gap).
    synced_once: bool,
    /// The subscriptions were lost since the last verification: what other instances
    /// published meanwhile never reached this one, and subscribers must be told.
    lost: bool,
    /// Where the gap is announced.
    sink: BrokerSink,
    in_sync: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl SubscriptionKeeper {
    async fn run(mut self, rx: flume::Receiver<SubscriptionCommand>) {
        let mut tick = tokio::time::interval(RECONCILE_PERIOD);
        loop {
            tokio::select! {
                cmd = rx.recv_async() => {
                    let Ok(first) = cmd else { return };
                    // Take what else is queued, so a burst becomes a few batched commands.
                    let mut batch = vec![first];
                    batch.extend(rx.drain().take(SUBSCRIBE_BATCH * 4));
                    self.apply(batch).await;
                }
                _ = tick.tick() => self.reconcile().await,
            }
            self.metrics.redis_subscriptions.set(self.wanted.len() as i64);
        }
    }

    /// Checks the subscriptions against Redis and repairs them.
    async fn reconcile(&mut self) {
        if !self.subscriber.is_connected() || !self.publisher.is_connected() {
            self.complete = false;
            self.lost |= self.synced_once;
            self.in_sync.store(false, Ordering::Release);
            return;
        }
        if self.resync.swap(false, Ordering::AcqRel) {
            self.complete = false;
            self.lost |= self.synced_once;
        }
        let probe = if self.complete {
            self.probe().await
        } else {
            Probe::Failed
        };
        if probe == Probe::Received {
            self.in_sync.store(true, Ordering::Release);
            return;
        }
        // Redis answered that nobody got the probe: this connection lost its
        // subscriptions (a reconnect not reported yet). A probe that merely failed or
        // was slow proves nothing, and must not announce a gap.
        self.lost |= self.synced_once && probe == Probe::NotReceived;
        self.in_sync.store(false, Ordering::Release);
        let mut all: Vec<Arc<str>> = self.wanted.iter().cloned().collect();
        if !all.is_empty() {
            info!(channels = all.len(), "subscribing every wanted channel on redis");
        }
        // The probe channel last: a positive probe then vouches for all the others.
        all.push(self.probe_channel.clone());
        self.complete = true;
        self.send(all, true).await;
        let verified = self.complete && self.probe().await == Probe::Received;
        self.in_sync.store(verified, Ordering::Release);
        if verified {
            if std::mem::take(&mut self.lost) {
                // Re-subscribed first, so every publication after the gap frame arrives.
                self.sink.gap();
            }
            self.synced_once = true;
        }
    }

    /// Publishes to the probe channel and says whether this instance's subscriber got it.
    async fn probe(&self) -> Probe {
        let topic = format!("{}{}", self.prefix, self.probe_channel);
        let publish = async {
            let receivers: Result<i64, _> = if self.cluster {
                self.publisher.spublish(topic, "").await
            } else {
                self.publisher.publish(topic, "").await
            };
            receivers
        };
        match tokio::time::timeout(PROBE_TIMEOUT, publish).await {
            Ok(Ok(n)) if n >= 1 => Probe::Received,
            Ok(Ok(_)) => Probe::NotReceived,
            _ => Probe::Failed,
        }
    }

    async fn apply(&mut self, batch: Vec<SubscriptionCommand>) {
        // Runs of the same command kind go out together, in order.
        let mut run: Vec<Arc<str>> = Vec::new();
        let mut run_is_subscribe = true;
        for cmd in batch {
            let (channel, subscribe) = match cmd {
                SubscriptionCommand::Subscribe(c) => (c, true),
                SubscriptionCommand::Unsubscribe(c) => (c, false),
            };
            if subscribe != run_is_subscribe && !run.is_empty() {
                self.send(std::mem::take(&mut run), run_is_subscribe).await;
            }
            run_is_subscribe = subscribe;
            if subscribe {
                self.wanted.insert(channel.clone());
            } else {
                self.wanted.remove(&channel);
            }
            run.push(channel);
        }
        if !run.is_empty() {
            self.send(run, run_is_subscribe).await;
        }
    }

    /// Sends (UN)SUBSCRIBE for the channels; a failure leaves them to the reconciler.
    async fn send(&mut self, channels: Vec<Arc<str>>, subscribe: bool) {
        if channels.is_empty() {
            return;
        }
        if !self.subscriber.is_connected() {
            self.complete = false;
            return;
        }
        let topics: Vec<String> = channels.iter().map(|c| format!("{}{}", self.prefix, c)).collect();
        let groups: Vec<Vec<String>> = if self.cluster {
            // SSUBSCRIBE takes channels of one hash slot per command.
            match fred::util::group_by_hash_slot(topics) {
                Ok(groups) => groups
                    .into_values()
                    .map(|keys| keys.into_iter().filter_map(|k| k.into_string()).collect())
                    .collect(),
                Err(e) => {
                    error!(error = %e, "cannot group channels by hash slot");
                    self.complete = false;
                    return;
                }
            }
        } else {
            topics.chunks(SUBSCRIBE_BATCH).map(<[String]>::to_vec).collect()
        };
        for group in groups {
            let sent = match (self.cluster, subscribe) {
                (false, true) => self.subscriber.subscribe(group).await,
                (false, false) => self.subscriber.unsubscribe(group).await,
                (true, true) => self.subscriber.ssubscribe(group).await,
                (true, false) => self.subscriber.sunsubscribe(group).await,
            };
            if let Err(e) = sent {
                warn!(error = %e, subscribe, "redis subscription change failed; the reconciler retries");
                self.complete = false;
                self.in_sync.store(false, Ordering::Release);
                return;
            }
        }
    }
}

/// Counts reconnects and has the keeper re-subscribe: a new connection has no
/// subscriptions (in a cluster, the probe only watches one node's connection).
async fn count_reconnects(
    subscriber: SubscriberClient,
    resync: Arc<AtomicBool>,
    in_sync: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    let mut reconnects = subscriber.reconnect_rx();
    // The first connection to each server is not a reconnect.
    let mut seen = HashSet::new();
    loop {
        match reconnects.recv().await {
            Ok(server) => {
                // A first connection is the keeper's initial sync, not a loss.
                if !seen.insert(server.to_string()) {
                    resync.store(true, Ordering::Release);
                    in_sync.store(false, Ordering::Release);
                    metrics.redis_reconnects.inc();
                }
                info!(%server, "redis connection (re)established");
            }
            Err(RecvError::Lagged(_)) => resync.store(true, Ordering::Release),
            Err(RecvError::Closed) => return,
        }
    }
}

/// Hands every message from Redis to the router, except this instance's own.
async fn receive(
    mut messages: tokio::sync::broadcast::Receiver<Message>,
    settings: RedisSettings,
    sink: BrokerSink,
    metrics: Arc<Metrics>,
) {
    let bad_payload = metrics.messages_dropped.with_label_values(&["bad_payload"]);
    let lagged = metrics.messages_dropped.with_label_values(&["broker_lag"]);
    let last_warning = AtomicU64::new(0);
    let started = Instant::now();
    // One warning a second at most: a misbehaving publisher must not flood the logs.
    let warn_bad = |channel: &str, why: &str| {
        bad_payload.inc();
        let now = started.elapsed().as_secs() + 1;
        if last_warning.swap(now, Ordering::Relaxed) != now {
            warn!(channel, why, "dropped a redis payload");
        }
    };
    loop {
        let msg = match messages.recv().await {
            Ok(msg) => msg,
            Err(RecvError::Lagged(n)) => {
                lagged.inc_by(n);
                error!(lost = n, "redis messages were lost: the receiver fell behind");
                sink.gap();
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(channel) = msg.channel.strip_prefix(settings.prefix.as_str()) else {
            continue;
        };
        if channel.starts_with(PROBE_PREFIX) {
            continue;
        }
        metrics.redis_messages_received.inc();
        let Some(bytes) = msg.value.as_bytes() else {
            warn_bad(channel, "not a string payload");
            continue;
        };
        if bytes.len() > settings.max_payload + settings.origin.len() + 2 {
            warn_bad(channel, "payload above --max-message-bytes");
            continue;
        }
        let payload = match decode_redis_payload(bytes) {
            Ok(RedisPayload::Json { origin: Some(o), .. }) if o == settings.origin => continue,
            Ok(RedisPayload::Json { json, .. }) => Payload::from_json(json).map_err(|e| e.to_string()),
            Ok(RedisPayload::Raw(raw)) => Payload::from_json(&raw_payload_json(raw)).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match payload {
            Ok(p) => sink.deliver(Arc::from(channel), p),
            Err(why) => warn_bad(channel, &why),
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
