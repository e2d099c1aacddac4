//! The cluster view: which instances are alive and how many connections each holds.
//!
//! Each instance writes a heartbeat record to Redis with a TTL and reads everyone
//! else's; a killed instance's record expires and it drops out. `/api/cluster` and
//! the `shardcast_cluster_*` gauges serve the last snapshot, so a cluster query
//! never waits on another instance (nor on Redis) and cannot hang.
//!
//! Keys share one hash tag, `{<prefix>}`, so they live in one slot and the
//! commands work unchanged on Redis Cluster.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::metrics::Metrics;
use crate::state::GatewayState;

/// One instance as its heartbeat describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The instance's id.
    pub node: String,
    /// Its WebSocket address.
    pub ws: String,
    /// Its open WebSocket connections.
    pub connections: usize,
    /// When it wrote this, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// The last known state of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSnapshot {
    /// Live instances, this one included.
    pub instances: Vec<InstanceInfo>,
    /// Their connections, summed.
    pub total_connections: usize,
    /// False when the last refresh failed (Redis unreachable): the figures are old.
    pub fresh: bool,
}

/// Where instances find each other.
pub enum ClusterRegistry {
    /// No Redis: the cluster is this instance.
    Local,
    /// Heartbeats in Redis.
    Redis {
        /// The Redis command client.
        client: Client,
        /// Key prefix, a hash tag such as `{shardcast:}`.
        tag: String,
    },
}

/// The cluster view of one instance, kept fresh by [`ClusterView::run`].
pub struct ClusterView {
    registry: ClusterRegistry,
    state: Arc<GatewayState>,
    metrics: Arc<Metrics>,
    ws: SocketAddr,
    interval: Duration,
    ttl: Duration,
    snapshot: Mutex<Arc<ClusterSnapshot>>,
}

impl ClusterView {
    /// A view over the given registry.
    pub fn new(
        registry: ClusterRegistry,
        state: Arc<GatewayState>,
        metrics: Arc<Metrics>,
        ws: SocketAddr,
        interval: Duration,
        ttl: Duration,
    ) -> Arc<ClusterView> {
        let view = Arc::new(ClusterView {
            registry,
            state,
            metrics,
            ws,
            interval,
            ttl,
            snapshot: Mutex::new(Arc::new(ClusterSnapshot {
                instances: Vec::new(),
                total_connections: 0,
                fresh: false,
            })),
        });
        view.store(vec![view.me()], true);
        view
    }

    /// The last snapshot; without Redis, the cluster is this instance, read now.
    pub fn snapshot(&self) -> Arc<ClusterSnapshot> {
        if matches!(self.registry, ClusterRegistry::Local) {
            self.store(vec![self.me()], true);
        }
        self.snapshot
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Heartbeats and refreshes the snapshot every interval, forever.
    pub async fn run(self: Arc<Self>) {
        loop {
            let me = self.me();
            match self.refresh(&me).await {
                Ok(instances) => self.store(instances, true),
                Err(e) => {
                    warn!(error = %e, "cluster heartbeat failed");
                    let mut old = self.snapshot().instances.clone();
                    // Whatever else is stale, this instance's own figure is current.
                    old.retain(|i| i.node != me.node);
                    old.push(me);
                    self.store(old, false);
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// Removes this instance's heartbeat, so the others stop counting it at once.
    pub async fn leave(&self) {
        let ClusterRegistry::Redis { client, tag } = &self.registry else {
            return;
        };
        let node = self.state.node_id.as_str();
        let removed = tokio::time::timeout(Duration::from_secs(1), async {
            let _: Result<i64, _> = client.del(format!("{tag}instance:{node}")).await;
            let _: Result<i64, _> = client.srem(format!("{tag}instances"), node).await;
        })
        .await;
        if removed.is_err() {
            warn!("could not remove this instance's heartbeat; it expires with its TTL");
        }
    }

    fn me(&self) -> InstanceInfo {
        InstanceInfo {
            node: self.state.node_id.clone(),
            ws: self.ws.to_string(),
            connections: self.state.total_connections(),
            at_ms: now_ms(),
        }
    }

    fn store(&self, mut instances: Vec<InstanceInfo>, fresh: bool) {
        instances.sort_by(|a, b| a.node.cmp(&b.node));
        let total_connections = instances.iter().map(|i| i.connections).sum();
        self.metrics.cluster_connections.set(total_connections as i64);
        self.metrics.cluster_instances.set(instances.len() as i64);
        let snapshot = Arc::new(ClusterSnapshot {
            instances,
            total_connections,
            fresh,
        });
        match self.snapshot.lock() {
            Ok(mut s) => *s = snapshot,
            Err(p) => *p.into_inner() = snapshot,
        }
    }

    /// Writes this instance's heartbeat and reads every live one.
    async fn refresh(&self, me: &InstanceInfo) -> Result<Vec<InstanceInfo>, fred::error::Error> {
        let ClusterRegistry::Redis { client, tag } = &self.registry else {
            return Ok(vec![me.clone()]);
        };
        let members_key = format!("{tag}instances");
        let key = |node: &str| format!("{tag}instance:{node}");
        let record = serde_json::to_string(me).unwrap_or_default();
        let ttl_ms = self.ttl.as_millis() as i64;
        let () = client
            .set(key(&me.node), record, Some(Expiration::PX(ttl_ms)), None, false)
            .await?;
        let _: i64 = client.sadd(&members_key, me.node.as_str()).await?;
        let members: Vec<String> = client.smembers(&members_key).await?;
        if members.is_empty() {
            return Ok(vec![me.clone()]);
        }
        let keys: Vec<String> = members.iter().map(|m| key(m)).collect();
        let records: Vec<Option<String>> = client.mget(keys).await?;
        let mut live = Vec::with_capacity(members.len());
        let mut expired = Vec::new();
        for (member, record) in members.into_iter().zip(records) {
            match record.and_then(|r| serde_json::from_str::<InstanceInfo>(&r).ok()) {
                Some(info) => live.push(info),
                None => expired.push(member),
            }
        }
        if !expired.is_empty() {
            let _: i64 = client.srem(&members_key, expired).await?;
        }
        Ok(live)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
