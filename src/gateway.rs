//! Assembling and running one gateway instance: metrics, router, broker, shards,
//! the acceptor, the admin API and the resource monitor; and taking them down again
//! with a graceful drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin::cluster::{ClusterView, Heartbeats};
use crate::admin::console::SessionStore;
use crate::admin::{self, AdminContext};
use crate::admission::acceptor::Acceptor;
use crate::admission::fd_budget::{resident_memory_bytes, FdBudget};
use crate::auth::{
    AuthError, Authenticator, ChannelRules, HistorySettings, JwksCounters, JwksSource, NamespaceRules, TokenVerifier,
    VerifierSettings,
};
use crate::broker::instances::{InstanceRegistry, LocalInstances};
use crate::broker::memory::InProcessBroker;
use crate::broker::redis::{RedisBroker, RedisSettings};
use crate::broker::user_counter::{LocalUserCounter, UserCounter};
use crate::broker::{Broker, BrokerError, BrokerMetrics, BrokerSink};
use crate::config::Config;
use crate::fanout::occupancy::{forget_dead_instances, OccupancyWatch, OccupiedChannels};
use crate::fanout::publisher::Publisher;
use crate::fanout::router::{self, RouterHandle};
use crate::fanout::ChannelHistory;
use crate::metrics::Metrics;
use crate::pusher::apps::{AppsError, PusherApps};
use crate::pusher::webhooks::{WebhookCounters, Webhooks};
use crate::shard::{self, ShardCommand, ShardDeps, ShardHandle};
use crate::state::GatewayState;

/// How often descriptors, memory and broker health are measured.
const MONITOR_PERIOD: Duration = Duration::from_millis(250);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The bind or listen error.
        source: std::io::Error,
    },
    /// A shard thread could not be started.
    #[error("cannot start shard thread: {0}")]
    Thread(std::io::Error),
    /// The broker could not be set up (bad Redis URL).
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The authentication settings are unusable (bad key, unknown algorithm, bad rules).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Metric registration failed (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The Pusher apps of the config file are unusable.
    #[error(transparent)]
    PusherApps(#[from] AppsError),
    /// An app's webhook sender could not start.
    #[error("webhooks: {0}")]
    Webhooks(String),
}

/// A started gateway. Must be started inside a tokio runtime (the control thread's).
pub struct RunningGateway {
    /// Where the WebSocket port listens.
    pub ws_addr: SocketAddr,
    /// Where the admin port listens.
    pub admin_addr: SocketAddr,
    config: Arc<Config>,
    state: Arc<GatewayState>,
    cluster: Arc<ClusterView>,
    shards: Vec<ShardHandle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    acceptor: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

/// Starts a gateway: with the Redis broker when `--redis` is set, else in-process.
pub async fn start(config: Config, fd_limit: usize) -> Result<RunningGateway, GatewayError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new()?);
    let shard_count = config.shard_count();
    let state = Arc::new(GatewayState::new(config.node_id(), shard_count));
    let budget = Arc::new(FdBudget::new(fd_limit, config.fd_reserve, state.clone()));
    let jwks = match &config.token_jwks_url {
        None => None,
        Some(url) => {
            let counters = JwksCounters {
                ok: metrics.jwks_refreshes.with_label_values(&["ok"]),
                error: metrics.jwks_refreshes.with_label_values(&["error"]),
            };
            let ca = config.token_jwks_ca.as_deref();
            Some(JwksSource::start(url, ca, config.token_jwks_refresh, counters).await?)
        }
    };
    let auth = Arc::new(authenticator(&config, jwks.clone())?);
    let (router_handle, router_rx) = RouterHandle::channel();
    let BrokerParts {
        broker,
        instances,
        users,
    } = make_broker(&config, &state, Arc::new(router_handle.clone()), &metrics)?;
    let channel_history = ChannelHistory::new(Arc::new(auth.rules().clone()));
    let pusher_apps = Arc::new(PusherApps::from_table(&config.pusher_apps)?);
    let webhooks = Webhooks::start(
        &pusher_apps,
        WebhookCounters {
            requests: metrics.webhook_requests.clone(),
            dropped: metrics.webhook_dropped.clone(),
            queued: metrics.webhook_queued.clone(),
        },
    )
    .map_err(GatewayError::Webhooks)?;
    // Where a Pusher app is configured, the broker records the instance's occupied
    // channels (the channel queries) and, with webhooks, reports occupancy and
    // presence changes; other gateways pay nothing.
    let occupied = OccupiedChannels::new();
    let broker: Arc<dyn Broker> = if pusher_apps.is_empty() {
        broker
    } else {
        OccupancyWatch::start(
            broker,
            occupied.clone(),
            webhooks.clone(),
            metrics.occupancy_dropped.clone(),
        )
    };
    let publisher = Publisher::new(
        router_handle.clone(),
        broker.clone(),
        channel_history.clone(),
        config.publish_timeout,
    )
    .with_webhooks(webhooks.clone());
    // Not ready until the broker says so (a Redis broker starts disconnected).
    state.set_broker_up(broker.is_ready());

    let ws_listener = bind(config.listen)?;
    let admin_listener = bind(config.admin_listen)?;
    let ws_addr = ws_listener.local_addr().map_err(|source| GatewayError::Bind {
        addr: config.listen,
        source,
    })?;
    let admin_addr = admin_listener.local_addr().map_err(|source| GatewayError::Bind {
        addr: config.admin_listen,
        source,
    })?;

    let mut shards = Vec::with_capacity(shard_count);
    let mut threads = Vec::with_capacity(shard_count);
    for id in 0..shard_count {
        let deps = ShardDeps {
            config: config.clone(),
            router: router_handle.clone(),
            publisher: publisher.clone(),
            metrics: metrics.clone(),
            state: state.clone(),
            auth: auth.clone(),
            users: users.clone(),
            pusher_apps: pusher_apps.clone(),
        };
        let (handle, thread) = shard::spawn(id, deps).map_err(GatewayError::Thread)?;
        shards.push(handle);
        threads.push(thread);
    }
    metrics.fd_limit.set(fd_limit as i64);
    metrics.fd_reserve.set(config.fd_reserve as i64);
    // Counted now that listeners and shard runtimes exist, so the gauges are right
    // from the first scrape, before the monitor's first round.
    if let Ok(open) = budget.rescan() {
        metrics.open_fds.set(open as i64);
        metrics.fd_headroom.set(budget.headroom() as i64);
    }
    metrics.max_connections.set(config.max_connections as i64);
    // A dead instance's presence and occupancy are removed by the survivors.
    let (gone_tx, gone_rx) = flume::unbounded();
    let forget = tokio::spawn(forget_dead_instances(broker.clone(), gone_rx, webhooks));
    let cluster = ClusterView::new(
        instances,
        state.clone(),
        metrics.clone(),
        ws_addr,
        config.admin_advertise.clone().unwrap_or_else(|| admin_addr.to_string()),
        Heartbeats {
            interval: config.heartbeat_interval,
            ttl: config.instance_ttl,
        },
        Some(gone_tx),
    );

    let mut background = vec![
        tokio::spawn(router::run(
            router_rx,
            router_handle,
            shards.clone(),
            broker.clone(),
            channel_history,
            metrics.clone(),
        )),
        tokio::spawn(admin::serve(
            admin_listener,
            Arc::new(AdminContext {
                api_keys: config.api_key.iter().filter(|k| !k.is_empty()).cloned().collect(),
                max_message_bytes: config.max_message_bytes,
                max_channel_len: config.max_channel_len,
                publisher,
                state: state.clone(),
                metrics: metrics.clone(),
                budget: budget.clone(),
                cluster: cluster.clone(),
                sessions: SessionStore::new(metrics.registry())?,
                pusher_apps: pusher_apps.clone(),
                occupied,
                broker: broker.clone(),
            }),
        )),
        tokio::spawn(cluster.clone().run()),
        forget,
        tokio::spawn(monitor(state.clone(), budget.clone(), metrics.clone(), broker.clone())),
    ];
    background.extend(jwks.map(|source| tokio::spawn(source.run())));
    let acceptor = tokio::spawn(
        Acceptor {
            listener: ws_listener,
            shards: shards.clone(),
            state: state.clone(),
            budget,
            metrics,
            max_connections: config.max_connections,
            connect_rate_per_ip: config.connect_rate_per_ip,
        }
        .run(),
    );
    if config.api_key.iter().all(|k| k.is_empty()) {
        warn!("no API key configured: anyone who reaches the admin port can publish");
    }
    info!(
        ws = %ws_addr,
        admin = %admin_addr,
        shards = shard_count,
        broker = broker.kind(),
        node = %state.node_id,
        "listening"
    );
    Ok(RunningGateway {
        ws_addr,
        admin_addr,
        cluster,
        config,
        state,
        shards,
        threads,
        acceptor,
        background,
    })
}

impl RunningGateway {
    /// Drains and stops: readiness turns false, the public port closes, every
    /// connection gets "going away" within the drain window, then the shards stop.
    pub async fn shutdown(self) {
        let started = Instant::now();
        self.state.start_draining();
        self.acceptor.abort();
        let window = self.config.drain_window;
        let open = self.state.total_connections();
        info!(connections = open, window_ms = window.as_millis() as u64, "draining");
        for shard in &self.shards {
            let _ = shard.send(ShardCommand::Drain { window });
        }
        // Closes are spread over the window; give the last batch the close timeout
        // to finish its handshake, but never wait past window + close timeout.
        let limit = window + self.config.close_timeout;
        while self.state.total_connections() > 0 && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.state.total_connections();
        for shard in &self.shards {
            let _ = shard.send(ShardCommand::Stop);
        }
        for thread in self.threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        for task in self.background {
            task.abort();
        }
        // Leave the cluster view now rather than when the heartbeat expires.
        self.cluster.leave().await;
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            dropped = left,
            "drained"
        );
    }

    /// Shared state (connection counts, readiness), for embedding and tests.
    pub fn state(&self) -> &Arc<GatewayState> {
        &self.state
    }
}

/// Token verification and channel rules from the configuration.
fn authenticator(config: &Config, jwks: Option<Arc<JwksSource>>) -> Result<Authenticator, AuthError> {
    let public_key_pem = match &config.token_public_key {
        None => None,
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| AuthError::Config(format!("cannot read --token-public-key {}: {e}", path.display())))?,
        ),
    };
    let has_key = config.token_hmac_secret.is_some() || public_key_pem.is_some() || jwks.is_some();
    let verifier = if has_key {
        Some(TokenVerifier::new(&VerifierSettings {
            hmac_secret: config.token_hmac_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            public_key_pem,
            jwks,
            algorithms: config.token_algorithms.clone(),
            audience: config.token_audience.clone(),
            issuer: config.token_issuer.clone(),
            leeway_secs: config.token_leeway.as_secs(),
        })?)
    } else {
        None
    };
    let mut namespaces = std::collections::HashMap::new();
    for (name, table) in &config.namespaces {
        let rules: NamespaceRules = table
            .clone()
            .try_into()
            .map_err(|e| AuthError::Config(format!("[namespaces.{name:?}]: {e}")))?;
        namespaces.insert(name.clone(), rules);
    }
    let rules = ChannelRules::new(&config.namespace_separator, namespaces).with_history_defaults(HistorySettings {
        size: config.history_size,
        ttl_secs: config.history_ttl,
        recover_max: config.recover_max,
    });
    let auth = Authenticator::new(verifier, config.allow_anonymous, rules);
    match auth.verifier() {
        Some(v) => info!(
            algorithms = ?v.algorithms(),
            anonymous = auth.allows_anonymous(),
            "client tokens are verified"
        ),
        None if !auth.allows_anonymous() => {
            warn!("anonymous connections are refused and no token key is configured: nobody can connect")
        }
        None => {}
    }
    Ok(auth)
}

/// What connects an instance to the others.
struct BrokerParts {
    broker: Arc<dyn Broker>,
    instances: Box<dyn InstanceRegistry>,
    /// The per-user connection count, where a limit is configured.
    users: Option<Arc<dyn UserCounter>>,
}

/// The broker and instance registry the configuration asks for.
fn make_broker(
    config: &Config,
    state: &GatewayState,
    sink: Arc<dyn BrokerSink>,
    metrics: &Metrics,
) -> Result<BrokerParts, GatewayError> {
    let Some(url) = &config.redis else {
        // Nobody else to reach: what other instances publish never comes, so the sink goes unused.
        drop(sink);
        let limit = config.max_connections_per_user;
        return Ok(BrokerParts {
            broker: Arc::new(InProcessBroker::standalone()?),
            instances: Box::new(LocalInstances),
            users: (limit > 0).then(|| Arc::new(LocalUserCounter::new(limit)) as Arc<dyn UserCounter>),
        });
    };
    let settings = RedisSettings {
        url: url.clone(),
        cluster: config.redis_cluster,
        prefix: config.redis_prefix.clone(),
        origin: state.node_id.clone(),
        max_payload: config.max_message_bytes,
    };
    let broker = RedisBroker::start(settings, sink, broker_metrics(metrics))?;
    let instances = Box::new(broker.instances());
    let limit = config.max_connections_per_user;
    let users = (limit > 0).then(|| Arc::new(broker.user_counter(limit)) as Arc<dyn UserCounter>);
    Ok(BrokerParts {
        broker,
        instances,
        users,
    })
}

/// The series of the registry that a broker updates.
fn broker_metrics(metrics: &Metrics) -> BrokerMetrics {
    BrokerMetrics {
        received: metrics.redis_messages_received.clone(),
        dropped_bad_payload: metrics.messages_dropped.with_label_values(&["bad_payload"]),
        dropped_lagged: metrics.messages_dropped.with_label_values(&["broker_lag"]),
        reconnects: metrics.redis_reconnects.clone(),
        subscriptions: metrics.redis_subscriptions.clone(),
        degraded_slots: metrics.redis_degraded_slots.clone(),
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    let err = |source| GatewayError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(4096).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

/// Keeps the descriptor count, memory and broker-health gauges current.
async fn monitor(state: Arc<GatewayState>, budget: Arc<FdBudget>, metrics: Arc<Metrics>, broker: Arc<dyn Broker>) {
    let mut last_scan = Instant::now();
    loop {
        if budget.scan_due(last_scan.elapsed()) {
            let scan = budget.clone();
            if let Ok(Ok(_)) = tokio::task::spawn_blocking(move || scan.rescan()).await {
                last_scan = Instant::now();
            }
        }
        metrics.open_fds.set(budget.estimated_open() as i64);
        metrics.fd_headroom.set(budget.headroom() as i64);
        if let Some(rss) = resident_memory_bytes() {
            metrics.resident_memory.set(rss as i64);
        }
        if let Some((channels, publications)) = broker.history_size() {
            metrics.history_channels.set(channels as i64);
            metrics.history_publications.set(publications as i64);
        }
        let up = broker.is_ready();
        state.set_broker_up(up);
        metrics.broker_up.set(i64::from(up));
        metrics.ready.set(i64::from(state.is_ready()));
        tokio::time::sleep(MONITOR_PERIOD).await;
    }
}
