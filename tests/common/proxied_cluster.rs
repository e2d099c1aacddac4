//! `ProxiedCluster`: the scale-out deployment a fault or load-balancer test runs
//! against: gateways sharing one Redis, behind nginx with the shipped config.

use std::net::SocketAddr;

use super::gateway::{ready_gateways, Gateway};
use super::nginx::Nginx;
use super::redis::RedisServer;

/// Gateway arguments with heartbeats fast enough that an instance that is gone
/// leaves the cluster view within about a second.
pub const FAST_HEARTBEATS: [&str; 4] = ["--heartbeat-interval", "300ms", "--instance-ttl", "1s"];

/// Ready gateways on one Redis behind nginx; dropped nginx first, Redis last.
pub struct ProxiedCluster {
    pub nginx: Nginx,
    /// Each an `Option` so a test can take one out to stop or kill it.
    pub gateways: Vec<Option<Gateway>>,
    pub redis: RedisServer,
}

impl ProxiedCluster {
    /// Starts Redis, `n` gateways with `--redis` and `args`, waits until each is
    /// ready, and puts nginx in front of them.
    pub async fn start(n: usize, args: &[&str]) -> ProxiedCluster {
        let redis = RedisServer::start();
        let url = redis.url();
        let args: Vec<&str> = ["--redis", url.as_str()].iter().chain(args).copied().collect();
        let gateways = ready_gateways(n, &args).await;
        let upstreams: Vec<SocketAddr> = gateways.iter().flatten().map(|g| g.ws).collect();
        let nginx = Nginx::start(&upstreams);
        ProxiedCluster { nginx, gateways, redis }
    }
}
