//! Instance-wide state that every thread reads: per-shard socket counts, the
//! draining flag and broker health. All atomics, so the acceptor, the shards and
//! the admin API share it without a lock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Shared, lock-free state of one gateway instance.
#[derive(Debug)]
pub struct GatewayState {
    /// This instance's id.
    pub node_id: String,
    draining: AtomicBool,
    broker_up: AtomicBool,
    /// Sockets each shard owns (handshaking or open): what the acceptor balances on.
    shard_sockets: Box<[AtomicUsize]>,
    /// Open WebSocket connections on each shard.
    shard_connections: Box<[AtomicUsize]>,
}

impl GatewayState {
    /// State for `shards` shards.
    pub fn new(node_id: String, shards: usize) -> GatewayState {
        GatewayState {
            node_id,
            draining: AtomicBool::new(false),
            broker_up: AtomicBool::new(true),
            shard_sockets: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            shard_connections: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shard_sockets.len()
    }

    /// Starts draining: readiness turns false for good.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the instance is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Records the broker's health.
    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Relaxed);
    }

    /// Whether the broker was up at the last check.
    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    /// Ready: not draining and the broker is up.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.broker_up()
    }

    /// A socket was handed to shard `i` (`delta` +1) or left it (-1).
    pub fn add_socket(&self, shard: usize, delta: isize) {
        add(&self.shard_sockets[shard], delta);
    }

    /// A connection on shard `i` opened (+1) or closed (-1).
    pub fn add_connection(&self, shard: usize, delta: isize) {
        add(&self.shard_connections[shard], delta);
    }

    /// The shard owning the fewest sockets.
    pub fn least_loaded_shard(&self) -> usize {
        (0..self.shard_sockets.len())
            .min_by_key(|&i| self.shard_sockets[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Sockets owned by all shards (handshaking or open).
    pub fn total_sockets(&self) -> usize {
        self.shard_sockets.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Open WebSocket connections per shard.
    pub fn connections_per_shard(&self) -> Vec<usize> {
        self.shard_connections
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Open WebSocket connections in all shards.
    pub fn total_connections(&self) -> usize {
        self.connections_per_shard().iter().sum()
    }
}

fn add(counter: &AtomicUsize, delta: isize) {
    if delta >= 0 {
        counter.fetch_add(delta as usize, Ordering::Relaxed);
    } else {
        counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}
