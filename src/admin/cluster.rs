//! The cluster view: which instances are alive and how many connections each holds.
//!
//! Every interval this instance heartbeats through the broker's
//! [`InstanceRegistry`] and keeps what it read as a snapshot. `/api/cluster` and the
//! `shardcast_cluster_*` gauges serve the last snapshot, so a cluster query never
//! waits on another instance (nor on Redis) and cannot hang.
//!
//! A killed instance's record stays in the registry until its TTL runs out (3 s by
//! default), while its clients are already reconnecting to the others and counted
//! there. So an instance whose heartbeat is overdue by more than one interval
//! (its record older than two intervals when read) is left out of the totals at
//! once and listed as `overdue` until the record expires. This compares the
//! writer's clock (`at_ms`) with the reader's: instances' clocks must agree to well
//! within an interval (NTP does).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::warn;

use prometheus::core::Collector;

use crate::broker::instances::{InstanceHealth, InstanceInfo, InstanceRegistry};
use crate::metrics::Metrics;
use crate::state::GatewayState;

/// The last known state of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSnapshot {
    /// Live instances, this one included.
    pub instances: Vec<InstanceInfo>,
    /// Their connections, summed.
    pub total_connections: usize,
    /// Instances whose record is still there but whose heartbeat is overdue (most
    /// likely dead); not in `instances` nor in the total.
    pub overdue: Vec<InstanceInfo>,
    /// False when the last refresh failed (Redis unreachable): the figures are old.
    pub fresh: bool,
}

/// How often this instance heartbeats, and how long its record outlives the last.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeats {
    /// Between two heartbeats.
    pub interval: Duration,
    /// A record's life.
    pub ttl: Duration,
}

/// The cluster view of one instance, kept fresh by [`ClusterView::run`].
pub struct ClusterView {
    registry: Box<dyn InstanceRegistry>,
    state: Arc<GatewayState>,
    metrics: Arc<Metrics>,
    ws: SocketAddr,
    admin: String,
    interval: Duration,
    ttl: Duration,
    snapshot: Mutex<Arc<ClusterSnapshot>>,
    /// The loop-lag histograms' (sum, count) per shard at the last heartbeat.
    lag_before: Mutex<Vec<(f64, u64)>>,
    /// Gets the id of each instance whose record expired since the last read:
    /// what it held in the broker is then removed (PROTOCOL.md 20.4, 20.7).
    gone: Option<flume::Sender<String>>,
}

impl ClusterView {
    /// A view over the given registry.
    pub fn new(
        registry: Box<dyn InstanceRegistry>,
        state: Arc<GatewayState>,
        metrics: Arc<Metrics>,
        ws: SocketAddr,
        admin: String,
        timing: Heartbeats,
        gone: Option<flume::Sender<String>>,
    ) -> Arc<ClusterView> {
        let Heartbeats { interval, ttl } = timing;
        let view = Arc::new(ClusterView {
            registry,
            state,
            metrics,
            ws,
            admin,
            interval,
            ttl,
            snapshot: Mutex::new(Arc::new(ClusterSnapshot {
                instances: Vec::new(),
                total_connections: 0,
                overdue: Vec::new(),
                fresh: false,
            })),
            lag_before: Mutex::new(Vec::new()),
            gone,
        });
        view.store(vec![view.me()], true);
        view
    }

    /// The last snapshot; without Redis, the cluster is this instance, read now.
    pub fn snapshot(&self) -> Arc<ClusterSnapshot> {
        if self.registry.is_local() {
            self.store(vec![self.me()], true);
        }
        self.snapshot
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Whether this instance is alone (no broker shares a registry).
    pub fn is_local(&self) -> bool {
        self.registry.is_local()
    }

    /// Heartbeats and refreshes the snapshot every interval, forever.
    pub async fn run(self: Arc<Self>) {
        // Every instance whose record the last successful read found.
        let mut seen: Vec<String> = Vec::new();
        loop {
            let me = self.me();
            match self.registry.heartbeat(&me, self.ttl).await {
                Ok(instances) => {
                    let now: Vec<String> = instances.iter().map(|i| i.node.clone()).collect();
                    if let Some(gone) = &self.gone {
                        for node in seen.iter().filter(|n| !now.contains(n)) {
                            let _ = gone.send(node.clone());
                        }
                    }
                    seen = now;
                    self.store(instances, true);
                }
                Err(e) => {
                    warn!(error = %e, "cluster heartbeat failed");
                    // Nothing new was read, so no record is overdue that was not
                    // before: the old figures stay, marked stale, and this
                    // instance's own figure is current.
                    let old = self.snapshot();
                    let mut instances = old.instances.clone();
                    instances.retain(|i| i.node != me.node);
                    instances.push(me);
                    self.publish(instances, old.overdue.clone(), false);
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// Removes this instance's heartbeat, so the others stop counting it at once.
    pub async fn leave(&self) {
        let removed = tokio::time::timeout(Duration::from_secs(1), self.registry.leave(&self.state.node_id)).await;
        if !matches!(removed, Ok(Ok(()))) {
            warn!("could not remove this instance's heartbeat; it expires with its TTL");
        }
    }

    fn me(&self) -> InstanceInfo {
        InstanceInfo {
            node: self.state.node_id.clone(),
            ws: self.ws.to_string(),
            admin: self.admin.clone(),
            connections: self.state.total_connections(),
            at_ms: now_ms(),
            health: self.health(),
        }
    }

    /// This instance's figures for its heartbeat; the loop lag is the worst
    /// shard's mean since the previous heartbeat.
    fn health(&self) -> InstanceHealth {
        let m = &self.metrics;
        let lag: Vec<(f64, u64)> = shard_lag_totals(m).into_iter().map(|(_, totals)| totals).collect();
        let mut previous = self.lag_before.lock().unwrap_or_else(|p| p.into_inner());
        let lag_ms = lag
            .iter()
            .enumerate()
            .map(|(i, (sum, count))| {
                let (sum0, count0) = previous.get(i).copied().unwrap_or((0.0, 0));
                let n = count.saturating_sub(count0);
                if n == 0 {
                    0.0
                } else {
                    (sum - sum0) / n as f64 * 1000.0
                }
            })
            .fold(0.0, f64::max);
        *previous = lag;
        let total = |vec: &prometheus::IntCounterVec| -> u64 {
            vec.collect()
                .iter()
                .flat_map(|family| family.get_metric())
                .map(|metric| metric.get_counter().get_value() as u64)
                .sum()
        };
        InstanceHealth {
            shards: self.state.connections_per_shard(),
            fd_headroom: u64::try_from(m.fd_headroom.get()).unwrap_or(0),
            fd_limit: u64::try_from(m.fd_limit.get()).unwrap_or(0),
            lag_ms,
            published: total(&m.messages_published),
            delivered: m.messages_delivered.get(),
            dropped: total(&m.messages_dropped),
            broker_up: m.broker_up.get() == 1,
            ready: self.state.is_ready(),
        }
    }

    /// Stores what a heartbeat read: leaves out the instances overdue by more than
    /// one interval (never this one).
    fn store(&self, instances: Vec<InstanceInfo>, fresh: bool) {
        let cutoff = now_ms().saturating_sub(2 * self.interval.as_millis() as u64);
        let (instances, overdue) = instances
            .into_iter()
            .partition(|i| i.at_ms >= cutoff || i.node == self.state.node_id);
        self.publish(instances, overdue, fresh);
    }

    fn publish(&self, mut instances: Vec<InstanceInfo>, mut overdue: Vec<InstanceInfo>, fresh: bool) {
        instances.sort_by(|a, b| a.node.cmp(&b.node));
        overdue.sort_by(|a, b| a.node.cmp(&b.node));
        let total_connections = instances.iter().map(|i| i.connections).sum();
        self.metrics.cluster_connections.set(total_connections as i64);
        self.metrics.cluster_instances.set(instances.len() as i64);
        let snapshot = Arc::new(ClusterSnapshot {
            instances,
            total_connections,
            overdue,
            fresh,
        });
        match self.snapshot.lock() {
            Ok(mut s) => *s = snapshot,
            Err(p) => *p.into_inner() = snapshot,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Each shard's loop-lag histogram totals, `(shard label, (sum of seconds, samples))`:
/// two readings give the mean lag between them.
pub(in crate::admin) fn shard_lag_totals(metrics: &Metrics) -> Vec<(String, (f64, u64))> {
    metrics
        .shard_loop_lag
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| {
            let h = metric.get_histogram();
            let shard = metric
                .get_label()
                .first()
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            (shard, (h.get_sample_sum(), h.get_sample_count()))
        })
        .collect()
}
