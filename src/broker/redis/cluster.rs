//! Redis Cluster as one [`Link`] per master, routed by hash slot here, so that a
//! dead master degrades only its own slots: publishes to the others' channels go
//! on, their sharded subscriptions stay, readiness holds while any master is in
//! sync, and when the master returns only its channels get a gap (or a catch-up).
//!
//! The slot map comes from `CLUSTER SLOTS`, asked of any reachable node every
//! [`REFRESH_PERIOD`]; when masters come, go or trade slots, links are created and
//! closed and the wanted channels move with their slots.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use fred::interfaces::ClusterInterface;
use fred::prelude::*;
use fred::types::cluster::ClusterRouting;
use fred::types::config::{Server, ServerConfig};
use fred::types::Value;
use fred::util::redis_keyslot;
use tracing::{info, warn};

use super::keeper::GapScope;
use super::link::{Link, LinkChannels};
use super::{RedisSettings, CONTROL_CHANNEL, PROBE_PREFIX};
use crate::broker::{BrokerError, BrokerEvent, BrokerMetrics, BrokerSink};

/// How often the slot map is read again.
const REFRESH_PERIOD: Duration = Duration::from_secs(1);

/// Number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// The masters, their slots and their links.
struct Topology {
    routing: ClusterRouting,
    /// By master, as the slot map names it (a lookup per publish allocates nothing).
    links: HashMap<Server, Arc<Link>>,
}

/// Every master's link, and which channels the instance wants.
pub(super) struct ClusterLinks {
    settings: RedisSettings,
    config: Config,
    sink: Arc<dyn BrokerSink>,
    metrics: BrokerMetrics,
    topology: RwLock<Arc<Topology>>,
    wanted: Mutex<HashSet<Arc<str>>>,
    /// Asks the seed address for the slot map before any link exists.
    seed: Client,
}

impl ClusterLinks {
    /// Starts discovering the cluster from the configured address.
    pub(super) fn start(
        settings: RedisSettings,
        sink: Arc<dyn BrokerSink>,
        metrics: BrokerMetrics,
    ) -> Result<Arc<ClusterLinks>, BrokerError> {
        let fail = |e: fred::error::Error| BrokerError::Failed(format!("redis configuration: {e}"));
        // The URL's credentials and options, for every link; the server is each master.
        let config = Config::from_url_clustered(&settings.url).map_err(fail)?;
        let seed_server = match &config.server {
            ServerConfig::Clustered { hosts, .. } => hosts.first().cloned(),
            _ => None,
        }
        .ok_or_else(|| BrokerError::Failed("redis cluster URL without a host".into()))?;
        let mut seed_config = config.clone();
        seed_config.server = ServerConfig::Centralized { server: seed_server };
        let seed = Builder::from_config(seed_config)
            .set_policy(fred::types::config::ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(fail)?;
        seed.connect();
        let links = Arc::new(ClusterLinks {
            settings,
            config,
            sink,
            metrics,
            topology: RwLock::new(Arc::new(Topology {
                routing: ClusterRouting::new(),
                links: HashMap::new(),
            })),
            wanted: Mutex::new(HashSet::new()),
            seed,
        });
        tokio::spawn(refresh(Arc::downgrade(&links)));
        Ok(links)
    }

    fn topology(&self) -> Arc<Topology> {
        self.topology.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The link of the master that owns `key`'s slot.
    pub(super) fn link_for(&self, key: &str) -> Option<Arc<Link>> {
        let topology = self.topology();
        let owner = topology.routing.get_server(redis_keyslot(key.as_bytes()))?;
        topology.links.get(owner).cloned()
    }

    /// Starts or stops wanting a channel, on the link of its slot.
    pub(super) fn want(&self, channel: Arc<str>, wanted: bool) {
        {
            let mut set = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
            if wanted {
                set.insert(channel.clone());
            } else {
                set.remove(&channel);
            }
        }
        // Without a link yet, the channel goes with the link's initial set.
        if let Some(link) = self.link_for(&self.topic(&channel)) {
            link.want(channel, wanted);
        }
    }

    fn topic(&self, channel: &str) -> String {
        format!("{}{}", self.settings.prefix, channel)
    }

    /// Ready while the slot map is known and some master's subscriptions are in sync.
    pub(super) fn is_ready(&self) -> bool {
        let topology = self.topology();
        let ready = topology.links.values().filter(|l| l.is_ready()).count();
        let degraded: usize = topology
            .routing
            .slots()
            .iter()
            .filter(|r| !topology.links.get(&r.primary).is_some_and(|l| l.is_ready()))
            .map(|r| usize::from(r.end - r.start) + 1)
            .sum();
        let unknown = if topology.routing.slots().is_empty() { SLOTS } else { 0 };
        self.metrics.degraded_slots.set((degraded + unknown) as i64);
        ready > 0
    }

    /// Reads the slot map and brings the links in line with it.
    async fn refresh_once(&self) -> Result<(), BrokerError> {
        let current = self.topology();
        let mut askers: Vec<Client> = current
            .links
            .values()
            .filter(|l| l.publisher.is_connected())
            .map(|l| l.publisher.clone())
            .collect();
        askers.push(self.seed.clone());
        let mut routing = None;
        for client in askers {
            let asked = tokio::time::timeout(Duration::from_millis(500), client.cluster_slots::<Value>()).await;
            if let Ok(Ok(value)) = asked {
                let host = match &client.client_config().server {
                    ServerConfig::Centralized { server } => server.host.to_string(),
                    _ => "127.0.0.1".to_owned(),
                };
                if let Ok(r) = ClusterRouting::from_cluster_slots(value, host.as_str()) {
                    routing = Some(r);
                    break;
                }
            }
        }
        let Some(routing) = routing else {
            return Err(BrokerError::Unavailable(
                "no cluster node answered CLUSTER SLOTS".into(),
            ));
        };
        if same_slots(&routing, &current.routing) && !current.links.is_empty() {
            return Ok(());
        }
        self.apply(routing, &current);
        Ok(())
    }

    /// Creates, keeps or closes links for a new slot map, and moves channels.
    fn apply(&self, routing: ClusterRouting, current: &Topology) {
        let wanted: Vec<Arc<str>> = self
            .wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let owner = |r: &ClusterRouting, channel: &str| {
            r.get_server(redis_keyslot(self.topic(channel).as_bytes()))
                .map(|s| s.to_string())
        };
        let control_owner = owner(&routing, CONTROL_CHANNEL);
        let mut links = HashMap::new();
        let mut moved = Vec::new();
        for master in routing.unique_primary_nodes() {
            let addr = master.to_string();
            let mine: HashSet<Arc<str>> = wanted
                .iter()
                .filter(|c| owner(&routing, c).as_deref() == Some(addr.as_str()))
                .cloned()
                .collect();
            let probe = probe_channel(&self.settings, &routing, &addr);
            // A link whose slots changed is made anew: its probe and control channel
            // may have moved, and its subscriptions with them.
            let unchanged = current.links.contains_key(&master) && same_ranges(&routing, &current.routing, &addr);
            if let (true, Some(link)) = (unchanged, current.links.get(&master)) {
                links.insert(master.clone(), link.clone());
                continue;
            }
            moved.extend(mine.iter().filter(|c| owner(&current.routing, c).is_some()).cloned());
            let mut config = self.config.clone();
            config.server = ServerConfig::Centralized { server: master.clone() };
            let channels = LinkChannels {
                probe,
                control: control_owner.as_deref() == Some(addr.as_str()),
                wanted: mine,
            };
            match Link::start(
                config,
                &self.settings,
                channels,
                true,
                GapScope::Wanted,
                self.sink.clone(),
                self.metrics.clone(),
            ) {
                Ok(link) => {
                    info!(master = %addr, "redis cluster master linked");
                    links.insert(master.clone(), Arc::new(link));
                }
                Err(e) => warn!(master = %addr, error = %e, "cannot link a redis cluster master"),
            }
        }
        for (addr, link) in &current.links {
            if !links.get(addr).is_some_and(|l: &Arc<Link>| Arc::ptr_eq(l, link)) {
                info!(master = %addr, "redis cluster master unlinked");
                link.stop();
            }
        }
        *self.topology.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Topology { routing, links });
        if !moved.is_empty() {
            // Their old subscriptions are gone with the old link.
            self.sink.event(BrokerEvent::ChannelsGap { channels: moved });
        }
    }

    /// A client for `key`'s master.
    pub(super) fn client_for(&self, key: &str) -> Option<Client> {
        self.link_for(key).map(|l| l.publisher.clone())
    }
}

/// Reads the slot map until the cluster links are dropped.
async fn refresh(links: std::sync::Weak<ClusterLinks>) {
    let mut warned = false;
    loop {
        let Some(links) = links.upgrade() else {
            return;
        };
        match links.refresh_once().await {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                warn!(error = %e, "cannot read the redis cluster's slot map");
                warned = true;
            }
            Err(_) => {}
        }
        drop(links);
        tokio::time::sleep(REFRESH_PERIOD).await;
    }
}

fn same_slots(a: &ClusterRouting, b: &ClusterRouting) -> bool {
    let key = |r: &ClusterRouting| -> Vec<(u16, u16, String)> {
        r.slots()
            .iter()
            .map(|s| (s.start, s.end, s.primary.to_string()))
            .collect()
    };
    key(a) == key(b)
}

fn same_ranges(a: &ClusterRouting, b: &ClusterRouting, addr: &str) -> bool {
    let ranges = |r: &ClusterRouting| -> Vec<(u16, u16)> {
        r.slots()
            .iter()
            .filter(|s| s.primary.to_string() == addr)
            .map(|s| (s.start, s.end))
            .collect()
    };
    ranges(a) == ranges(b)
}

/// A probe channel whose slot belongs to `addr`: the instance's probe name with
/// the first suffix that lands there.
fn probe_channel(settings: &RedisSettings, routing: &ClusterRouting, addr: &str) -> Arc<str> {
    let base = format!("{PROBE_PREFIX}{}", settings.origin);
    for n in 0..100_000u32 {
        let name = format!("{base}#{n}");
        let slot = redis_keyslot(format!("{}{name}", settings.prefix).as_bytes());
        if routing.get_server(slot).is_some_and(|s| s.to_string() == addr) {
            return Arc::from(name);
        }
    }
    Arc::from(base)
}
