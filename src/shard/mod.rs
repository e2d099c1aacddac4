//! A shard: one thread, one single-threaded tokio runtime, and everything that
//! belongs to the connections it was handed: their records, its channel table, a
//! scratch read buffer. Nothing here is shared with another thread; the only ways
//! in are the [`ShardCommand`]s on its flume channel.

mod session;
mod task;
mod upkeep;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{Histogram, IntCounter, IntGauge};
use shardcast_proto::{encode_server, Encoding, ServerFrame};
use slab::Slab;
use tracing::{debug, error};

use crate::channel_table::ChannelTable;
use crate::config::Config;
use crate::connection::{Connection, Disconnect, Sent};
use crate::metrics::Metrics;
use crate::publication::Publication;
use crate::publisher::Publisher;
use crate::router::RouterHandle;
use crate::state::GatewayState;
use crate::ws::frame::data_frame;
use crate::ws::handshake::WsPaths;

/// Size of the per-shard read buffer every connection reads into.
const SCRATCH_BYTES: usize = 64 * 1024;

/// What a shard is asked to do.
pub enum ShardCommand {
    /// Take this freshly accepted socket and run the WebSocket upgrade on it.
    Adopt(std::net::TcpStream, SocketAddr),
    /// Write a publication to this shard's subscribers of its channel.
    Deliver(Arc<Publication>),
    /// The router registered (or failed to register) this shard's interest in a channel.
    InterestConfirmed {
        /// The channel.
        channel: Arc<str>,
        /// Ok, or the error to answer the waiting subscribers with.
        result: Result<(), shardcast_proto::ErrorCode>,
    },
    /// Tell every subscriber of every channel that publications may have been missed.
    Gap,
    /// Close every connection with "going away", spread over the window.
    Drain {
        /// The time over which the closes are spread.
        window: Duration,
    },
    /// Stop the shard's loop (its remaining sockets are dropped).
    Stop,
}

/// The sending side of a shard's command channel.
#[derive(Clone)]
pub struct ShardHandle {
    id: usize,
    tx: flume::Sender<ShardCommand>,
}

impl ShardHandle {
    /// The shard's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Sends a command; fails only if the shard has stopped.
    pub fn send(&self, cmd: ShardCommand) -> Result<(), ShardCommand> {
        self.tx.send(cmd).map_err(|e| e.into_inner())
    }
}

/// What a shard needs from the rest of the gateway.
pub struct ShardDeps {
    /// Limits and timeouts.
    pub config: Arc<Config>,
    /// Where interest changes go.
    pub router: RouterHandle,
    /// For client publishes.
    pub publisher: Publisher,
    /// Shared metrics; the shard resolves its labelled series once.
    pub metrics: Arc<Metrics>,
    /// Connection counts and the draining flag.
    pub state: Arc<GatewayState>,
}

/// Starts shard `id` on its own thread.
pub fn spawn(id: usize, deps: ShardDeps) -> std::io::Result<(ShardHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = flume::unbounded();
    let thread = std::thread::Builder::new().name(format!("shard-{id}")).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                error!(shard = id, error = %e, "cannot start the shard's runtime");
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let core = Rc::new_cyclic(|me| ShardCore::new(id, deps, me.clone()));
            tokio::task::spawn_local(upkeep::run(core.clone()));
            while let Ok(cmd) = rx.recv_async().await {
                match cmd {
                    ShardCommand::Adopt(stream, peer) => {
                        tokio::task::spawn_local(task::handshake(core.clone(), stream, peer));
                    }
                    ShardCommand::Deliver(publication) => core.fan_out(&publication),
                    ShardCommand::Gap => core.announce_gap(),
                    ShardCommand::InterestConfirmed { channel, result } => core.interest_confirmed(&channel, result),
                    ShardCommand::Drain { window } => {
                        core.draining.set(true);
                        tokio::task::spawn_local(upkeep::drain(core.clone(), window));
                    }
                    ShardCommand::Stop => break,
                }
            }
            debug!(shard = id, "shard stopped");
        });
    })?;
    Ok((ShardHandle { id, tx }, thread))
}

/// Per-shard handles on the metrics it updates, resolved once.
struct ShardMetrics {
    connections: IntGauge,
    subscriptions: IntGauge,
    delivered: IntCounter,
    dropped_slow: IntCounter,
    fanout: Histogram,
    lag: Histogram,
}

/// Everything one shard owns. Lives on the shard thread behind an `Rc`; the
/// `RefCell`s are never held across an await.
pub struct ShardCore {
    id: usize,
    config: Arc<Config>,
    conns: RefCell<Slab<Connection>>,
    table: RefCell<ChannelTable>,
    scratch: RefCell<Box<[u8]>>,
    router: RouterHandle,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    shard_metrics: ShardMetrics,
    state: Arc<GatewayState>,
    started: Instant,
    next_id: Cell<u64>,
    draining: Cell<bool>,
    welcome: [Bytes; 2],
    /// This core's own `Rc`, for tasks it spawns.
    me: Weak<ShardCore>,
}

impl ShardCore {
    fn new(id: usize, deps: ShardDeps, me: Weak<ShardCore>) -> ShardCore {
        let label = id.to_string();
        let m = &deps.metrics;
        let shard_metrics = ShardMetrics {
            connections: m.connections.with_label_values(&[&label]),
            subscriptions: m.subscriptions.with_label_values(&[&label]),
            delivered: m.messages_delivered.clone(),
            dropped_slow: m.messages_dropped.with_label_values(&["slow_consumer"]),
            fanout: m.fanout_duration.clone(),
            lag: m.shard_loop_lag.with_label_values(&[&label]),
        };
        let welcome = Encoding::ALL.map(|enc| {
            let frame = ServerFrame::Welcome {
                version: shardcast_proto::PROTOCOL_VERSION,
                node: deps.state.node_id.clone(),
                shard: id as u32,
                ping_interval_ms: deps.config.ping_interval.as_millis() as u64,
            };
            data_frame(enc, &encode_server(enc, &frame))
        });
        ShardCore {
            id,
            config: deps.config,
            conns: RefCell::new(Slab::new()),
            table: RefCell::new(ChannelTable::new()),
            scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
            router: deps.router,
            publisher: deps.publisher,
            metrics: deps.metrics,
            shard_metrics,
            state: deps.state,
            started: Instant::now(),
            next_id: Cell::new(1),
            draining: Cell::new(false),
            welcome,
            me,
        }
    }

    /// The WebSocket paths of the public port.
    fn ws_paths(&self) -> WsPaths<'_> {
        WsPaths {
            protocol: &self.config.ws_path,
            echo: self.config.test_echo_path.as_deref(),
        }
    }

    /// The shard clock in deciseconds: coarse, and small enough for a u32 per connection.
    fn now(&self) -> u32 {
        (self.started.elapsed().as_millis() / 100) as u32
    }

    /// A deadline `d` from now on the shard clock.
    fn after(&self, d: Duration) -> u32 {
        self.now().saturating_add((d.as_millis() / 100) as u32 + 1)
    }

    /// Writes one publication to every local subscriber of its channel: the same
    /// frame bytes for every subscriber of an encoding, no allocation per subscriber.
    fn fan_out(&self, publication: &Publication) {
        let start = Instant::now();
        let table = self.table.borrow();
        let Some(lists) = table.subscribers(&publication.channel) else {
            publication.shard_done(0);
            return;
        };
        let mut conns = self.conns.borrow_mut();
        let limit = self.config.max_queue_bytes;
        let deadline = self.after(self.config.close_timeout);
        let mut reached = 0usize;
        for enc in Encoding::ALL {
            let list = &lists[enc.index()];
            if list.is_empty() {
                continue;
            }
            let frame = publication.frame(enc);
            for s in list {
                let Some(conn) = conns.get_mut(s.conn as usize) else {
                    continue;
                };
                match conn.send(frame, limit) {
                    Sent::Written | Sent::Queued => reached += 1,
                    Sent::Overflow => self.close_slow_consumer(conn, deadline),
                    Sent::Closed => {}
                }
            }
        }
        self.shard_metrics.delivered.inc_by(reached as u64);
        self.shard_metrics.fanout.observe(start.elapsed().as_secs_f64());
        publication.shard_done(reached);
    }

    /// Sends a `gap` frame to every subscriber of every live channel on this shard,
    /// each channel's frame built once per encoding.
    fn announce_gap(&self) {
        let table = self.table.borrow();
        let mut conns = self.conns.borrow_mut();
        let limit = self.config.max_queue_bytes;
        let deadline = self.after(self.config.close_timeout);
        for (name, lists) in table.active_channels() {
            for enc in Encoding::ALL {
                let list = &lists[enc.index()];
                if list.is_empty() {
                    continue;
                }
                let gap = ServerFrame::Gap {
                    channel: name.to_owned(),
                };
                let frame = data_frame(enc, &encode_server(enc, &gap));
                for s in list {
                    if let Some(conn) = conns.get_mut(s.conn as usize) {
                        if conn.send(&frame, limit) == Sent::Overflow {
                            self.close_slow_consumer(conn, deadline);
                        }
                    }
                }
            }
        }
    }

    /// Closes a connection whose queue overflowed with the slow-consumer code; what
    /// it had queued is dropped and counted.
    fn close_slow_consumer(&self, conn: &mut Connection, deadline: u32) {
        let dropped = conn.close(
            shardcast_proto::close::SLOW_CONSUMER,
            "slow consumer: outbound queue full",
            Disconnect::SlowConsumer,
            deadline,
        );
        self.shard_metrics.dropped_slow.inc_by(dropped as u64);
    }

    /// Removes a finished connection and everything it held.
    fn remove(&self, key: usize) {
        let Some(conn) = self.conns.borrow_mut().try_remove(key) else {
            return;
        };
        let mut emptied = Vec::new();
        {
            let mut table = self.table.borrow_mut();
            emptied.extend(conn.subs.iter().filter_map(|sub| table.unsubscribe(*sub)));
            self.shard_metrics.subscriptions.set(table.subscription_count() as i64);
        }
        for channel in emptied {
            self.channel_emptied(channel);
        }
        let why = conn.disconnect.unwrap_or(Disconnect::Eof);
        self.metrics.disconnections.with_label_values(&[why.label()]).inc();
        self.shard_metrics.connections.dec();
        self.state.add_connection(self.id, -1);
        self.state.add_socket(self.id, -1);
        debug!(
            shard = self.id,
            conn = conn.id,
            reason = why.label(),
            "connection closed"
        );
    }
}
