//! A shard: one thread, one single-threaded tokio runtime, and everything that
//! belongs to the connections it was handed: their records ([`connection`]), its
//! channel index ([`channel_table`]), a scratch read buffer. Nothing here is shared
//! with another thread; the only ways in are the [`ShardCommand`]s on its flume
//! channel.
//!
//! # The borrowing rule
//!
//! Everything that changes lives in one [`ShardState`] behind one `RefCell`, and the
//! only place that borrows it is `ShardCore::with`, called by the entry points
//! alone: a command from the channel, a connection task's poll, a tick of the
//! upkeep, a spawned task's continuation. Each runs one operation on a `Shard`
//! view (the immutable [`ShardEnv`] plus `&mut ShardState`), and nothing reachable
//! from a `Shard` can reach the `RefCell` again: the view holds no `ShardCore`, and
//! the only handle back to it (`Spawner`) runs its continuation in a new task,
//! never inside the operation. A double borrow, which would panic and take the
//! shard's thread and all its sockets down, cannot be written.

pub mod channel_table;
pub mod connection;
mod cork;
mod identity;
mod presence;
mod pusher;
mod recovery;
mod session;
mod task;
mod upkeep;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{Histogram, IntCounter, IntGauge};
use shardcast_proto::{encode_server, Encoding, GapReason, ServerFrame};
use slab::Slab;
use tracing::{debug, error};

use crate::auth::Authenticator;
use crate::broker::user_counter::UserCounter;
use crate::broker::{Position, PresenceChange};
use crate::config::Config;
use crate::fanout::control::UserCommand;
use crate::fanout::publication::{DeliveryReport, Publication};
use crate::fanout::publisher::Publisher;
use crate::fanout::router::{RouterHandle, ShardMail, ShardMailbox};
use crate::metrics::Metrics;
use crate::pusher::apps::{PusherApp, PusherApps};
use crate::pusher::protocol::instance_number;
use crate::state::GatewayState;
use crate::ws::deflate::{Inflater, FULL_WINDOW};
use crate::ws::frame::data_frame;
use crate::ws::handshake::WsPaths;
use channel_table::{ChannelTable, Joined, PendingAck, SubscriptionKey, Wire};
use connection::{Connection, Disconnect, Sent};
use cork::Cork;
use pusher::PusherSockets;
pub use recovery::history_frame;
use recovery::Recovery;

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
        /// On a channel with history: where this shard's deliveries start after.
        position: Option<Position>,
    },
    /// Tell subscribers that publications may have been missed: of `channel`, or
    /// of every channel that keeps no history (none).
    Gap {
        /// The channel, or none.
        channel: Option<Arc<str>>,
        /// Why history could not cover it.
        reason: GapReason,
    },
    /// Count this shard's subscribers of a channel into the report.
    CountSubscribers {
        /// The channel.
        channel: Arc<str>,
        /// Where the count goes.
        report: Arc<DeliveryReport>,
    },
    /// A presence channel's members changed: tell its Pusher subscribers.
    Presence {
        /// The channel.
        channel: Arc<str>,
        /// What changed.
        change: Arc<PresenceChange>,
    },
    /// Apply an operator's command to this shard's connections.
    Control {
        /// The command.
        command: Arc<UserCommand>,
        /// Told how many connections it touched.
        report: Option<Arc<DeliveryReport>>,
    },
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

impl ShardMailbox for ShardHandle {
    fn send_mail(&self, mail: ShardMail) -> bool {
        let cmd = match mail {
            ShardMail::Publication(p) => ShardCommand::Deliver(p),
            ShardMail::InterestConfirmed {
                channel,
                result,
                position,
            } => ShardCommand::InterestConfirmed {
                channel,
                result,
                position,
            },
            ShardMail::Gap { channel, reason } => ShardCommand::Gap { channel, reason },
            ShardMail::Control { command, report } => ShardCommand::Control { command, report },
            ShardMail::CountSubscribers { channel, report } => ShardCommand::CountSubscribers { channel, report },
            ShardMail::Presence { channel, change } => ShardCommand::Presence { channel, change },
        };
        self.send(cmd).is_ok()
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
    /// Token verification and channel rules.
    pub auth: Arc<Authenticator>,
    /// Each user's connections, where a per-user limit is configured.
    pub users: Option<Arc<dyn UserCounter>>,
    /// The Pusher apps (PROTOCOL.md 20): `/app/<key>` is served when there are any.
    pub pusher_apps: Arc<PusherApps>,
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
            let corking = deps.config.corking;
            let core = Rc::new_cyclic(|me| ShardCore::new(id, deps, Spawner(me.clone())));
            tokio::task::spawn_local(upkeep::run(core.clone()));
            while let Ok(cmd) = rx.recv_async().await {
                if !corking || rx.is_empty() {
                    // Idle: a lone command's writes go out at once.
                    if core.handle(cmd) == Flow::Stop {
                        break;
                    }
                    continue;
                }
                // Busy: gather the turn's deliveries, then one write per socket.
                core.with(|shard| shard.st.cork.begin());
                let mut flow = core.handle(cmd);
                let mut handled = 1;
                while flow == Flow::Go && core.with(|shard| shard.st.cork.may_continue(handled)) {
                    let Ok(cmd) = rx.try_recv() else {
                        break;
                    };
                    flow = core.handle(cmd);
                    handled += 1;
                }
                core.with(|shard| shard.uncork());
                if flow == Flow::Stop {
                    break;
                }
            }
            debug!(shard = id, "shard stopped");
        });
    })?;
    Ok((ShardHandle { id, tx }, thread))
}

/// Whether the shard's loop goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// Per-shard handles on the metrics it updates, resolved once.
struct ShardMetrics {
    connections: IntGauge,
    subscriptions: IntGauge,
    delivered: IntCounter,
    dropped_slow: IntCounter,
    dropped_encode: IntCounter,
    fanout: Histogram,
    lag: Histogram,
    corked_writes: IntCounter,
    corked_frames: IntCounter,
}

/// Starts tasks that continue an operation later, with the shard in hand. The one
/// way back from a [`Shard`] to its [`ShardCore`]: the continuation runs in its own
/// task, after the operation that spawned it has released the state.
pub(crate) struct Spawner(Weak<ShardCore>);

impl Spawner {
    /// Runs `continuation` in a new task on this shard (if the shard still exists).
    pub(crate) fn spawn<F, Fut>(&self, continuation: F)
    where
        F: FnOnce(Rc<ShardCore>) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let me = self.0.clone();
        tokio::task::spawn_local(async move {
            if let Some(core) = me.upgrade() {
                continuation(core).await;
            }
        });
    }
}

/// What a shard knows and never changes after it starts.
pub struct ShardEnv {
    id: usize,
    config: Arc<Config>,
    router: RouterHandle,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    shard_metrics: ShardMetrics,
    state: Arc<GatewayState>,
    auth: Arc<Authenticator>,
    users: Option<Arc<dyn UserCounter>>,
    /// The Pusher apps by key, shared by their connections.
    pusher_apps: HashMap<String, Arc<PusherApp>>,
    /// The first number of this instance's Pusher socket ids.
    pusher_instance: u32,
    started: Instant,
    spawner: Spawner,
}

/// Everything about a shard that changes: borrowed once per operation (see the
/// module's borrowing rule).
pub struct ShardState {
    conns: Slab<Connection>,
    table: ChannelTable,
    scratch: Box<[u8]>,
    next_id: u64,
    draining: bool,
    /// Subscriptions waiting for their history read (PROTOCOL.md 19.4); empty
    /// but for the moments after subscribes with `recover` or `latest`.
    recovering: HashMap<SubscriptionKey, Recovery>,
    /// The connections with deliveries gathered in a busy turn.
    cork: Cork,
    /// Inflates compressed client messages (permessage-deflate); made at the
    /// first one.
    inflater: Option<Box<Inflater>>,
    /// What its Pusher-protocol connections carry (PROTOCOL.md 20).
    pushers: PusherSockets,
    /// The presence memberships `(channel, user)` of its native connections, by
    /// connection (PROTOCOL.md 21); empty but where namespaces enable presence.
    native_presence: HashMap<usize, presence::Memberships>,
}

/// One shard, shared by its tasks on the shard thread behind an `Rc`.
pub struct ShardCore {
    env: ShardEnv,
    state: RefCell<ShardState>,
}

/// One operation's access to a shard: the environment, and the state borrowed
/// mutably for the operation's length.
pub(crate) struct Shard<'a> {
    env: &'a ShardEnv,
    st: &'a mut ShardState,
}

impl ShardCore {
    fn new(id: usize, deps: ShardDeps, spawner: Spawner) -> ShardCore {
        let label = id.to_string();
        let pusher_instance = instance_number(&deps.state.node_id);
        let m = &deps.metrics;
        let shard_metrics = ShardMetrics {
            connections: m.connections.with_label_values(&[&label]),
            subscriptions: m.subscriptions.with_label_values(&[&label]),
            delivered: m.messages_delivered.clone(),
            dropped_slow: m.messages_dropped.with_label_values(&["slow_consumer"]),
            dropped_encode: m.messages_dropped.with_label_values(&["encode_failed"]),
            fanout: m.fanout_duration.clone(),
            lag: m.shard_loop_lag.with_label_values(&[&label]),
            corked_writes: m.corked_writes.clone(),
            corked_frames: m.corked_frames.clone(),
        };
        ShardCore {
            env: ShardEnv {
                id,
                config: deps.config,
                router: deps.router,
                publisher: deps.publisher,
                metrics: deps.metrics,
                shard_metrics,
                state: deps.state,
                auth: deps.auth,
                users: deps.users,
                pusher_apps: deps
                    .pusher_apps
                    .iter()
                    .map(|app| (app.key.clone(), Arc::new(app.clone())))
                    .collect(),
                pusher_instance,
                started: Instant::now(),
                spawner,
            },
            state: RefCell::new(ShardState {
                conns: Slab::new(),
                table: ChannelTable::new(),
                scratch: vec![0u8; SCRATCH_BYTES].into_boxed_slice(),
                next_id: 1,
                draining: false,
                recovering: HashMap::new(),
                cork: Cork::default(),
                inflater: None,
                pushers: PusherSockets::new(),
                native_presence: HashMap::new(),
            }),
        }
    }

    /// Handles one command from the shard's channel.
    fn handle(self: &Rc<Self>, cmd: ShardCommand) -> Flow {
        match cmd {
            ShardCommand::Adopt(stream, peer) => {
                tokio::task::spawn_local(task::handshake(self.clone(), stream, peer));
            }
            ShardCommand::Deliver(publication) => self.with(|shard| shard.fan_out(&publication)),
            ShardCommand::Gap { channel, reason } => self.with(|shard| shard.announce_gap(channel, reason)),
            ShardCommand::Control { command, report } => {
                let touched = self.with(|shard| shard.apply_control(&command));
                if let Some(report) = report {
                    report.shard_done(touched);
                }
            }
            ShardCommand::InterestConfirmed {
                channel,
                result,
                position,
            } => self.with(|shard| shard.interest_confirmed(&channel, result, position)),
            ShardCommand::CountSubscribers { channel, report } => {
                let n = self.with(|shard| {
                    shard
                        .st
                        .table
                        .subscribers(&channel)
                        .map_or(0, |lists| lists.iter().map(Vec::len).sum())
                });
                report.shard_done(n);
            }
            ShardCommand::Presence { channel, change } => self.with(|shard| {
                shard.presence_changed(&channel, &change);
                shard.native_presence_changed(&channel, &change);
            }),
            ShardCommand::Drain { window } => {
                self.with(|shard| shard.st.draining = true);
                tokio::task::spawn_local(upkeep::drain(self.clone(), window));
            }
            ShardCommand::Stop => return Flow::Stop,
        }
        Flow::Go
    }

    /// Runs one operation on the shard: the only place its state is borrowed.
    fn with<R>(&self, operation: impl FnOnce(&mut Shard<'_>) -> R) -> R {
        let mut st = self.state.borrow_mut();
        operation(&mut Shard {
            env: &self.env,
            st: &mut st,
        })
    }
}

impl ShardEnv {
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

    /// A server frame as a WebSocket frame; none if it cannot be encoded, which is
    /// counted and logged (an empty frame never goes on the wire).
    fn encode(&self, encoding: Encoding, frame: &ServerFrame) -> Option<Bytes> {
        match encode_server(encoding, frame) {
            Ok(body) => Some(data_frame(encoding, &body)),
            Err(e) => {
                self.shard_metrics.dropped_encode.inc();
                error!(shard = self.id, error = %e, "cannot encode a frame; not sent");
                None
            }
        }
    }

    /// The `welcome` for a new connection.
    fn welcome(
        &self,
        encoding: Encoding,
        id: Option<u64>,
        user: Option<String>,
        expires_at: Option<u64>,
    ) -> Option<Bytes> {
        let frame = ServerFrame::Welcome {
            version: shardcast_proto::PROTOCOL_VERSION,
            node: self.state.node_id.clone(),
            shard: self.id as u32,
            ping_interval_ms: self.config.ping_interval.as_millis() as u64,
            id,
            user,
            expires_at,
        };
        self.encode(encoding, &frame)
    }

    /// When a close started now must be complete.
    fn close_deadline(&self) -> u32 {
        self.after(self.config.close_timeout)
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

    /// Queues `frame` for `conn` under the queue limit; an overflow closes it.
    fn send_or_close(&self, conn: &mut Connection, frame: &Bytes, deadline: u32) -> Sent {
        let sent = conn.send(frame, self.config.max_queue_bytes);
        if sent == Sent::Overflow {
            self.close_slow_consumer(conn, deadline);
        }
        sent
    }

    /// Delivers `frame` to the connection at slab key `key`: gathered for the turn's
    /// write while the shard is busy, else as [`ShardEnv::send_or_close`].
    fn deliver(&self, cork: &mut Cork, key: usize, conn: &mut Connection, frame: &Bytes, deadline: u32) -> Sent {
        if !cork.active() {
            return self.send_or_close(conn, frame, deadline);
        }
        let (sent, newly) = conn.send_corked(frame, self.config.max_queue_bytes, cork::WRITE_BYTES);
        if newly {
            cork.add(key, conn.id);
        }
        if sent == Sent::Overflow {
            self.close_slow_consumer(conn, deadline);
        }
        sent
    }
}

impl Shard<'_> {
    /// Writes one publication to every local subscriber of its channel: the same
    /// frame bytes for every subscriber of an encoding, no allocation per subscriber.
    /// A subscription still recovering holds it instead (PROTOCOL.md 19.4).
    fn fan_out(&mut self, publication: &Arc<Publication>) {
        let env = self.env;
        let start = Instant::now();
        let ShardState {
            table,
            conns,
            recovering,
            cork,
            pushers,
            ..
        } = &mut *self.st;
        let Some(lists) = table.deliver_at(&publication.channel, publication.position.as_ref()) else {
            publication.shard_done(0);
            return;
        };
        let deadline = env.close_deadline();
        let mut reached = 0usize;
        for enc in Encoding::ALL {
            let list = &lists[enc.index()];
            if list.is_empty() {
                continue;
            }
            let Some(frame) = publication.frame(enc) else {
                env.shard_metrics.dropped_encode.inc_by(list.len() as u64);
                continue;
            };
            // Built once, by the first shard with a subscriber that negotiated
            // permessage-deflate with the full window; others get the plain frame.
            let compressible = env.config.compression.min_bytes().is_some_and(|min| frame.len() >= min);
            let mut compressed = None;
            for s in list {
                if !recovering.is_empty() {
                    if let Some(recovery) = recovering.get_mut(&s.sub) {
                        recovery.hold(publication);
                        continue;
                    }
                }
                if let Some(conn) = conns.get_mut(s.conn as usize) {
                    let frame = if compressible && conn.deflate_window == FULL_WINDOW {
                        compressed.get_or_insert_with(|| publication.compressed_frame(enc).unwrap_or(frame))
                    } else {
                        frame
                    };
                    if matches!(
                        env.deliver(cork, s.conn as usize, conn, frame, deadline),
                        Sent::Written | Sent::Queued
                    ) {
                        reached += 1;
                    }
                }
            }
        }
        let pusher_list = &lists[Wire::Pusher.index()];
        if !pusher_list.is_empty() {
            reached += pusher::fan_out(env, publication, pusher_list, conns, pushers, recovering, cork);
        }
        env.shard_metrics.delivered.inc_by(reached as u64);
        env.shard_metrics.fanout.observe(start.elapsed().as_secs_f64());
        publication.shard_done(reached);
        if !self.st.recovering.is_empty() {
            self.live_moved(publication);
        }
    }

    /// Sends a `gap` frame to every subscriber of `channel`, or of every live
    /// channel without history on this shard, each channel's frame built once per
    /// encoding.
    fn announce_gap(&mut self, channel: Option<Arc<str>>, reason: GapReason) {
        let env = self.env;
        let ShardState { table, conns, cork, .. } = &mut *self.st;
        let deadline = env.close_deadline();
        let history = env.publisher.channel_history();
        for (name, lists) in table.active_channels() {
            let wanted = match &channel {
                Some(c) => **c == *name,
                None => history.policy(name).is_none(),
            };
            if !wanted {
                continue;
            }
            for enc in Encoding::ALL {
                let list = &lists[enc.index()];
                if list.is_empty() {
                    continue;
                }
                let gap = ServerFrame::Gap {
                    channel: name.to_owned(),
                    reason: Some(reason),
                };
                let Some(frame) = env.encode(enc, &gap) else {
                    continue;
                };
                for s in list {
                    if let Some(conn) = conns.get_mut(s.conn as usize) {
                        env.deliver(cork, s.conn as usize, conn, &frame, deadline);
                    }
                }
            }
        }
    }

    /// Ends a busy turn: every connection with gathered deliveries gets its write.
    fn uncork(&mut self) {
        let (writes, frames) = self.st.cork.flush(&mut self.st.conns);
        self.env.shard_metrics.corked_writes.inc_by(writes as u64);
        self.env.shard_metrics.corked_frames.inc_by(frames as u64);
    }

    /// Removes a finished connection and everything it held.
    fn remove(&mut self, key: usize) {
        let env = self.env;
        self.pusher_closing(key);
        self.native_presence_leave(key, None);
        let Some(conn) = self.st.conns.try_remove(key) else {
            return;
        };
        for sub in &conn.subs {
            self.forget_recovery(*sub);
            if let Some(channel) = self.st.table.unsubscribe(*sub) {
                self.channel_emptied(channel);
            }
        }
        env.shard_metrics
            .subscriptions
            .set(self.st.table.subscription_count() as i64);
        if let (Some(auth), Some(users)) = (conn.auth.as_ref().filter(|a| a.counted), &env.users) {
            users.release(Arc::from(auth.identity.user.as_str()));
        }
        let why = conn.disconnect.unwrap_or(Disconnect::Eof);
        env.metrics.disconnections.with_label_values(&[why.label()]).inc();
        env.shard_metrics.connections.dec();
        env.state.add_connection(env.id, -1);
        env.state.add_socket(env.id, -1);
        debug!(
            shard = env.id,
            conn = conn.id,
            reason = why.label(),
            "connection closed"
        );
    }
}

/// Until a new subscription's channel is live on this shard, its answer (`pending`)
/// waits with the channel, and the shard's first subscriber asks the router for
/// it; true when the channel is live already and the caller answers now.
fn answer_when_live(
    env: &ShardEnv,
    table: &mut ChannelTable,
    channel: &str,
    pending: PendingAck,
    joined: &Joined,
) -> bool {
    match joined {
        Joined::FirstOnShard => {
            table.add_pending_ack(channel, pending);
            env.router.interest(env.id, Arc::from(channel), true);
            false
        }
        Joined::Pending => {
            table.add_pending_ack(channel, pending);
            false
        }
        Joined::Active => true,
    }
}
