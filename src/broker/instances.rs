//! Where instances find each other: each writes a heartbeat record that expires
//! after a TTL and reads everyone else's, so a killed instance drops out by itself.
//! Without Redis ([`LocalInstances`]) the cluster is this instance alone. What the records are used for
//! (the cluster view, its gauges and HTTP side) lives above, in `admin::cluster`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::BrokerError;

/// One instance as its heartbeat describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceInfo {
    /// The instance's id.
    pub node: String,
    /// Its WebSocket address.
    pub ws: String,
    /// Its admin address, as other instances reach it (empty in records of
    /// versions that did not write it).
    #[serde(default)]
    pub admin: String,
    /// Its open WebSocket connections.
    pub connections: usize,
    /// When it wrote this, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// How the instance is doing, for the console's view of every instance
    /// (defaults in records of versions that did not write it).
    #[serde(default)]
    pub health: InstanceHealth,
}

/// An instance's own figures, carried by its heartbeat: the counters are totals
/// since its start, so a reader differences two heartbeats for rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceHealth {
    /// Connections per shard.
    pub shards: Vec<usize>,
    /// Descriptors left before the limit.
    pub fd_headroom: u64,
    /// The descriptor limit.
    pub fd_limit: u64,
    /// Mean shard loop lag over the last heartbeat interval, in milliseconds (the
    /// worst shard's).
    pub lag_ms: f64,
    /// Publications taken (every source), since start.
    pub published: u64,
    /// Frames delivered to subscribers, since start.
    pub delivered: u64,
    /// Messages dropped (every reason), since start.
    pub dropped: u64,
    /// Whether its broker is connected and in sync.
    pub broker_up: bool,
    /// Whether it reports ready.
    pub ready: bool,
}

/// An instance-registry operation in flight.
pub type RegistryFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send + 'a>>;

/// The store of heartbeat records.
pub trait InstanceRegistry: Send + Sync + 'static {
    /// Whether the cluster is this instance alone (nothing to store or read).
    fn is_local(&self) -> bool;

    /// Writes this instance's record (alive for `ttl`) and returns every live one.
    fn heartbeat<'a>(&'a self, me: &'a InstanceInfo, ttl: Duration) -> RegistryFuture<'a, Vec<InstanceInfo>>;

    /// Removes this instance's record, so the others stop counting it at once.
    fn leave<'a>(&'a self, node: &'a str) -> RegistryFuture<'a, ()>;
}

/// No Redis: the cluster is this instance.
pub struct LocalInstances;

impl InstanceRegistry for LocalInstances {
    fn is_local(&self) -> bool {
        true
    }

    fn heartbeat<'a>(&'a self, me: &'a InstanceInfo, _ttl: Duration) -> RegistryFuture<'a, Vec<InstanceInfo>> {
        Box::pin(std::future::ready(Ok(vec![me.clone()])))
    }

    fn leave<'a>(&'a self, _node: &'a str) -> RegistryFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}
