//! The background task behind a [`Client`](crate::Client): it owns the WebSocket
//! and the connection state machine (connecting → connected → reconnecting … →
//! closed), the reconnect schedule, the heartbeat, request/reply matching by id,
//! and the set of channels the application wants, which it subscribes again on
//! every new connection. Handles talk to it only through [`Command`]s, so there is
//! no lock around the socket. Behaviour follows proto/PROTOCOL.md, sections 5, 6,
//! 10 and 12.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use shardcast_proto::{ClientFrame, Encoding, ErrorCode, ServerFrame};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::{debug, warn};

use crate::backoff::{ReconnectDecision, ReconnectPolicy};
use crate::error::{Error, Result};
use crate::event::{ClientEvent, ConnectionState, Observers};
use crate::subscription::Message;
use crate::transport::{self, AttemptFailure, Incoming, Opened, Welcome, WsStream, ABNORMAL_CLOSURE};
use crate::TokenProvider;

/// What a client handle or subscription asks of the driver.
pub(crate) enum Command {
    /// Add a subscription to a channel; `done` fires when the gateway acknowledged the channel.
    Subscribe {
        channel: String,
        subscription: u64,
        messages: mpsc::UnboundedSender<Message>,
        done: oneshot::Sender<Result<()>>,
    },
    /// Remove a subscription; the channel is unsubscribed on the gateway when its last one goes.
    Unsubscribe {
        channel: String,
        subscription: u64,
        done: Option<oneshot::Sender<Result<()>>>,
    },
    Publish {
        channel: String,
        data: Value,
        done: oneshot::Sender<Result<()>>,
    },
    Ping {
        done: oneshot::Sender<Result<()>>,
    },
    /// Close the connection and stop; `done` fires once stopped.
    Close {
        done: oneshot::Sender<()>,
    },
}

/// The client's settings, fixed when it is built.
pub(crate) struct Config {
    pub url: String,
    pub encoding: Encoding,
    pub reconnect: ReconnectPolicy,
    /// `None` turns the heartbeat off.
    pub heartbeat: Option<HeartbeatTiming>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub close_timeout: Duration,
    pub token: Option<TokenProvider>,
    pub token_param: String,
    pub websocket: WebSocketConfig,
    pub max_message_bytes: usize,
}

/// Heartbeat settings; `None` fields default from the welcome's `ping_interval_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeartbeatTiming {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
}

/// One channel the application wants, shared by all its subscriptions.
struct ChannelEntry {
    /// Tells this entry apart from an earlier one of the same channel, so that a late
    /// reply to a dropped entry's subscribe is not taken for this one's.
    generation: u64,
    subscribers: Vec<(u64, mpsc::UnboundedSender<Message>)>,
    /// Subscriptions waiting for the channel's first ack.
    waiters: Vec<(u64, oneshot::Sender<Result<()>>)>,
    /// Acknowledged on the current connection.
    acked: bool,
    /// Acknowledged on some connection before (so the next ack is a re-subscribe).
    ever_acked: bool,
    /// Request id of the subscribe awaiting its reply on the current connection.
    in_flight: Option<u64>,
    /// Consecutive `unavailable` refusals, for the retry backoff.
    unavailable: u32,
    retry_at: Option<Instant>,
}

/// A request on the current connection that waits for its reply.
enum Pending {
    Subscribe {
        channel: String,
        generation: u64,
    },
    Unsubscribe {
        done: Option<oneshot::Sender<Result<()>>>,
    },
    Request {
        op: &'static str,
        channel: Option<String>,
        done: oneshot::Sender<Result<()>>,
    },
}

impl Pending {
    /// Whether nobody waits for the reply any more (the caller timed out or gave up).
    fn abandoned(&self) -> bool {
        match self {
            Pending::Request { done, .. } => done.is_closed(),
            Pending::Unsubscribe { done } => done.as_ref().map_or(true, |d| d.is_closed()),
            Pending::Subscribe { .. } => false,
        }
    }
}

/// Why a connection (or an attempt at one) ended.
struct Loss {
    code: u16,
    reason: String,
    retry_after: Option<Duration>,
    /// When the lost connection got its welcome; `None` for a failed attempt.
    welcomed_at: Option<Instant>,
}

enum End {
    /// The connection or attempt was lost; the policy decides what next.
    Lost(Loss),
    /// The application closed the client (or dropped every handle).
    ClientClosed,
    /// The request itself is wrong: stop without retrying.
    Fatal(Error),
}

/// The state of one open connection.
struct Connection {
    ws: WsStream,
    encoding: Encoding,
    pending: HashMap<u64, Pending>,
    /// Abandoned entries are pruned once `pending` grows past this.
    prune_at: usize,
    welcomed_at: Instant,
    last_received: Instant,
    /// (interval, timeout) of the heartbeat, if it runs.
    heartbeat: Option<(Duration, Duration)>,
    /// A heartbeat ping went out and nothing has arrived since.
    pinged: bool,
    heartbeat_check: Instant,
    /// Earliest `retry_at` of any channel, if any.
    retry_wakeup: Option<Instant>,
    /// Set when a send failed; the connection is treated as lost.
    broken: Option<String>,
}

/// Far enough ahead to mean "never" for a timer, near enough not to overflow `Instant`.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// `pending` entries kept before abandoned ones are pruned.
const PRUNE_FLOOR: usize = 256;

pub(crate) struct Driver {
    config: Arc<Config>,
    observers: Arc<Observers>,
    commands: mpsc::UnboundedReceiver<Command>,
    channels: HashMap<String, ChannelEntry>,
    next_generation: u64,
    next_request_id: u64,
    /// Consecutive failed attempts; reset by a connection that stayed up for the backoff cap.
    failures: u32,
    close_waiters: Vec<oneshot::Sender<()>>,
}

impl Driver {
    pub(crate) fn new(
        config: Arc<Config>,
        observers: Arc<Observers>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Driver {
            config,
            observers,
            commands,
            channels: HashMap::new(),
            next_generation: 0,
            next_request_id: 1,
            failures: 0,
            close_waiters: Vec::new(),
        }
    }

    /// Connects, serves and reconnects until the client stops.
    pub(crate) async fn run(mut self) {
        loop {
            self.observers.set_state(ConnectionState::Connecting);
            self.observers.emit(ClientEvent::Connecting { attempt: self.failures });
            let end = match self.attempt().await {
                Ok(opened) => self.serve(opened).await,
                Err(end) => end,
            };
            let loss = match end {
                End::Lost(loss) => loss,
                End::ClientClosed => return self.stop(None, "client closed".to_owned()),
                End::Fatal(error) => {
                    let reason = error.to_string();
                    self.emit_disconnected(ABNORMAL_CLOSURE, &reason, false, false);
                    return self.stop(Some(ABNORMAL_CLOSURE), reason);
                }
            };
            let policy = &self.config.reconnect;
            // A connection that stayed up for the cap resets the backoff; one accepted and
            // dropped at once (a slow consumer, a crashing gateway) keeps backing off.
            if loss.welcomed_at.is_some_and(|at| at.elapsed() >= policy.max_delay) {
                self.failures = 0;
            }
            self.failures = self.failures.saturating_add(1);
            let decision = policy.decide(
                loss.code,
                &loss.reason,
                loss.retry_after,
                self.failures,
                fastrand::f64(),
            );
            let will_reconnect = matches!(decision, ReconnectDecision::Retry { .. });
            self.emit_disconnected(loss.code, &loss.reason, loss.welcomed_at.is_some(), will_reconnect);
            let ReconnectDecision::Retry { delay, hint } = decision else {
                return self.stop(Some(loss.code), loss.reason);
            };
            self.forget_connection();
            self.observers.set_state(ConnectionState::Reconnecting);
            self.observers.emit(ClientEvent::Reconnecting {
                attempt: self.failures,
                delay,
                retry_hint: hint,
            });
            debug!(attempt = self.failures, ?delay, "reconnecting");
            if self.wait(delay).await {
                return self.stop(None, "client closed".to_owned());
            }
        }
    }

    fn emit_disconnected(&self, code: u16, reason: &str, was_connected: bool, will_reconnect: bool) {
        debug!(code, reason, will_reconnect, "disconnected");
        self.observers.emit(ClientEvent::Disconnected {
            code,
            reason: reason.to_owned(),
            was_connected,
            will_reconnect,
        });
    }

    /// One connect attempt (token, upgrade, welcome), bounded by the connect timeout,
    /// while still answering commands.
    async fn attempt(&mut self) -> Result<Opened, End> {
        let config = self.config.clone();
        let attempt = tokio::time::timeout(config.connect_timeout, async move {
            let mut url = config.url.clone();
            if let Some(provider) = &config.token {
                match provider().await {
                    Ok(Some(token)) => url = transport::with_query_param(&url, &config.token_param, &token),
                    Ok(None) => {}
                    Err(e) => return Err(AttemptFailure::abnormal(format!("token provider failed: {e}"))),
                }
            }
            transport::open(&url, config.encoding, config.websocket).await
        });
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                result = &mut attempt => {
                    return match result {
                        Ok(Ok(opened)) => Ok(opened),
                        Ok(Err(AttemptFailure::Fatal(error))) => Err(End::Fatal(error)),
                        Ok(Err(AttemptFailure::Retryable { code, reason, retry_after })) => Err(End::Lost(Loss {
                            code,
                            reason,
                            retry_after,
                            welcomed_at: None,
                        })),
                        Err(_) => Err(End::Lost(Loss {
                            code: ABNORMAL_CLOSURE,
                            reason: format!("no welcome within {:?}", self.config.connect_timeout),
                            retry_after: None,
                            welcomed_at: None,
                        })),
                    };
                }
                command = self.commands.recv() => {
                    if self.offline_command(command) {
                        return Err(End::ClientClosed);
                    }
                }
            }
        }
    }

    /// Waits out a reconnect delay while answering commands; true if the client was closed.
    async fn wait(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return false,
                command = self.commands.recv() => {
                    if self.offline_command(command) {
                        return true;
                    }
                }
            }
        }
    }

    /// Handles a command while there is no connection; true if it closes the client.
    fn offline_command(&mut self, command: Option<Command>) -> bool {
        match command {
            // Every handle is gone: nobody can use the client any more.
            None => true,
            Some(Command::Close { done }) => {
                self.close_waiters.push(done);
                true
            }
            Some(Command::Subscribe {
                channel,
                subscription,
                messages,
                done,
            }) => {
                // Registered now, subscribed on the gateway after the next welcome.
                self.add_subscription(channel, subscription, messages, done);
                false
            }
            Some(Command::Unsubscribe {
                channel,
                subscription,
                done,
            }) => {
                // Disconnected: the next connection simply does not subscribe it.
                self.remove_subscription(&channel, subscription);
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
                false
            }
            Some(Command::Publish { done, .. }) => {
                let _ = done.send(Err(Error::NotConnected { op: "publish" }));
                false
            }
            Some(Command::Ping { done }) => {
                let _ = done.send(Err(Error::NotConnected { op: "ping" }));
                false
            }
        }
    }

    /// Adds a subscription to its channel's entry; returns true if the entry is new
    /// (so the channel still has to be subscribed on the gateway).
    fn add_subscription(
        &mut self,
        channel: String,
        subscription: u64,
        messages: mpsc::UnboundedSender<Message>,
        done: oneshot::Sender<Result<()>>,
    ) -> bool {
        if let Some(entry) = self.channels.get_mut(&channel) {
            entry.subscribers.push((subscription, messages));
            if entry.acked {
                // The channel is live: every later publication reaches the new subscription too.
                let _ = done.send(Ok(()));
            } else {
                entry.waiters.push((subscription, done));
            }
            return false;
        }
        self.next_generation += 1;
        self.channels.insert(
            channel,
            ChannelEntry {
                generation: self.next_generation,
                subscribers: vec![(subscription, messages)],
                waiters: vec![(subscription, done)],
                acked: false,
                ever_acked: false,
                in_flight: None,
                unavailable: 0,
                retry_at: None,
            },
        );
        true
    }

    /// Removes a subscription; returns the channel's entry if that was its last one
    /// (so the channel has to be unsubscribed on the gateway).
    fn remove_subscription(&mut self, channel: &str, subscription: u64) -> Option<ChannelEntry> {
        let entry = self.channels.get_mut(channel)?;
        let before = entry.subscribers.len();
        entry.subscribers.retain(|(id, _)| *id != subscription);
        if entry.subscribers.len() == before {
            // Not (or no longer) part of this entry, e.g. refused earlier: nothing to undo.
            return None;
        }
        if let Some(at) = entry.waiters.iter().position(|(id, _)| *id == subscription) {
            let (_, waiter) = entry.waiters.swap_remove(at);
            let _ = waiter.send(Err(Error::Cancelled {
                channel: channel.to_owned(),
            }));
        }
        if entry.subscribers.is_empty() {
            self.channels.remove(channel)
        } else {
            None
        }
    }

    /// After a lost connection: nothing is subscribed on the gateway any more.
    fn forget_connection(&mut self) {
        for entry in self.channels.values_mut() {
            entry.acked = false;
            entry.in_flight = None;
            entry.unavailable = 0;
            entry.retry_at = None;
        }
    }

    /// Enters the closed state: fails everything still waiting and ends every stream.
    fn stop(mut self, code: Option<u16>, reason: String) {
        debug!(?code, reason, "client stopped");
        let error = Error::Closed {
            code,
            reason: reason.clone(),
        };
        // Recorded first: an application that sees its streams end asks for the reason.
        self.observers.set_stopped(code, &reason);
        for (_, entry) in self.channels.drain() {
            for (_, waiter) in entry.waiters {
                let _ = waiter.send(Err(error.clone()));
            }
            // Dropping the entry drops the senders, which ends the subscription streams.
        }
        self.observers.set_state(ConnectionState::Closed);
        self.observers.emit(ClientEvent::Closed { code, reason });
        for waiter in self.close_waiters.drain(..) {
            let _ = waiter.send(());
        }
        // Commands that raced the stop get the same answer as later ones.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Subscribe { done, .. }
                | Command::Publish { done, .. }
                | Command::Ping { done }
                | Command::Unsubscribe { done: Some(done), .. } => {
                    let _ = done.send(Err(error.clone()));
                }
                Command::Unsubscribe { done: None, .. } => {}
                Command::Close { done } => {
                    let _ = done.send(());
                }
            }
        }
    }

    // ---- one open connection ----

    async fn serve(&mut self, opened: Opened) -> End {
        let Opened { ws, welcome } = opened;
        let now = Instant::now();
        let heartbeat = self.config.heartbeat.and_then(|timing| {
            let interval = timing.interval.unwrap_or(welcome.ping_interval);
            // A gateway announcing no ping interval gives nothing to size the timeout by.
            (!interval.is_zero()).then(|| (interval, timing.timeout.unwrap_or(interval)))
        });
        let mut connection = Connection {
            ws,
            encoding: welcome.encoding,
            pending: HashMap::new(),
            prune_at: PRUNE_FLOOR,
            welcomed_at: now,
            last_received: now,
            heartbeat,
            pinged: false,
            heartbeat_check: now + heartbeat.map_or(NEVER, |(interval, _)| interval),
            retry_wakeup: None,
            broken: None,
        };
        self.announce(&welcome);
        let end = self.serve_connection(&mut connection).await;
        // Requests still unanswered when the connection ends get no reply (section 5).
        let (code, reason) = match &end {
            End::Lost(loss) => (loss.code, loss.reason.clone()),
            _ => (1000, "client closed".to_owned()),
        };
        for (_, pending) in connection.pending.drain() {
            let lost = |op| match &end {
                End::Lost(_) => Error::ConnectionLost {
                    op,
                    code,
                    reason: reason.clone(),
                },
                _ => Error::Closed {
                    code: None,
                    reason: reason.clone(),
                },
            };
            match pending {
                Pending::Request { op, done, .. } => {
                    let _ = done.send(Err(lost(op)));
                }
                // An unsubscribe is complete once the connection is gone.
                Pending::Unsubscribe { done: Some(done) } => {
                    let _ = done.send(Ok(()));
                }
                Pending::Unsubscribe { done: None } | Pending::Subscribe { .. } => {}
            }
        }
        end
    }

    fn announce(&mut self, welcome: &Welcome) {
        debug!(node = welcome.node, shard = welcome.shard, "connected");
        self.observers.set_welcome(welcome.clone());
        self.observers.set_state(ConnectionState::Connected);
        self.observers.emit(ClientEvent::Connected {
            node: welcome.node.clone(),
            shard: welcome.shard,
            ping_interval: welcome.ping_interval,
            encoding: welcome.encoding,
        });
    }

    async fn serve_connection(&mut self, connection: &mut Connection) -> End {
        // Subscriptions do not survive a connection: ask again for every channel, in
        // the order the application first asked for them.
        let mut channels: Vec<(u64, String)> = self
            .channels
            .iter()
            .map(|(channel, entry)| (entry.generation, channel.clone()))
            .collect();
        channels.sort_unstable();
        for (_, channel) in channels {
            self.send_subscribe(connection, &channel).await;
        }
        let idle = Instant::now() + NEVER;
        let timer = tokio::time::sleep_until(connection.next_wakeup(idle));
        tokio::pin!(timer);
        loop {
            if let Some(reason) = connection.broken.take() {
                return self.lost(connection, ABNORMAL_CLOSURE, reason);
            }
            tokio::select! {
                message = connection.ws.next() => match message {
                    Some(Ok(message)) => {
                        // Anything at all proves the connection alive, pings and pongs included.
                        connection.last_received = Instant::now();
                        connection.pinged = false;
                        match transport::decode(connection.encoding, message) {
                            Incoming::Frame(frame) => self.on_frame(connection, frame).await,
                            Incoming::Control => {}
                            Incoming::Close { code, reason } => {
                                finish_close(&mut connection.ws, self.config.close_timeout).await;
                                return self.lost(connection, code, reason);
                            }
                            Incoming::Undecodable(e) => warn!(error = e, "ignoring an undecodable frame"),
                        }
                    }
                    Some(Err(e)) => return self.lost(connection, ABNORMAL_CLOSURE, e.to_string()),
                    None => return self.lost(connection, ABNORMAL_CLOSURE, "connection closed without a close frame".to_owned()),
                },
                command = self.commands.recv() => {
                    let command = match command {
                        Some(Command::Close { done }) => {
                            self.close_waiters.push(done);
                            None
                        }
                        other => other,
                    };
                    let Some(command) = command else {
                        self.close_connection(connection).await;
                        return End::ClientClosed;
                    };
                    self.online_command(connection, command).await;
                }
                () = &mut timer => {
                    if let Some(reason) = self.on_timer(connection).await {
                        return self.lost(connection, ABNORMAL_CLOSURE, reason);
                    }
                }
            }
            let wakeup = connection.next_wakeup(idle);
            if wakeup != timer.deadline() {
                timer.as_mut().reset(wakeup);
            }
        }
    }

    fn lost(&self, connection: &Connection, code: u16, reason: String) -> End {
        End::Lost(Loss {
            code,
            reason,
            retry_after: None,
            welcomed_at: Some(connection.welcomed_at),
        })
    }

    /// Closes the connection from this side, with the close handshake, bounded in time.
    async fn close_connection(&mut self, connection: &mut Connection) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "client closed".into(),
        };
        let close_timeout = self.config.close_timeout;
        let ws = &mut connection.ws;
        let _ = tokio::time::timeout(close_timeout, async {
            let _ = ws.close(Some(frame)).await;
            // The gateway echoes the close and then ends the TCP connection.
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        self.emit_disconnected(1000, "client closed", true, false);
    }

    async fn online_command(&mut self, connection: &mut Connection, command: Command) {
        match command {
            Command::Subscribe {
                channel,
                subscription,
                messages,
                done,
            } => {
                if self.add_subscription(channel.clone(), subscription, messages, done) {
                    self.send_subscribe(connection, &channel).await;
                }
            }
            Command::Unsubscribe {
                channel,
                subscription,
                done,
            } => match self.remove_subscription(&channel, subscription) {
                // An unanswered subscribe needs no special care: the gateway answers it
                // first, then the unsubscribe (section 6.1).
                Some(entry) if entry.acked || entry.in_flight.is_some() => {
                    let id = self.take_request_id();
                    connection.track(id, Pending::Unsubscribe { done });
                    self.send(connection, ClientFrame::Unsubscribe { id: Some(id), channel })
                        .await;
                }
                _ => {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                }
            },
            Command::Publish { channel, data, done } => {
                let id = self.take_request_id();
                let frame = ClientFrame::Publish {
                    id: Some(id),
                    channel: channel.clone(),
                    data,
                };
                let message = transport::encode(connection.encoding, &frame);
                let (size, limit) = (message.len(), self.config.max_message_bytes);
                if size > limit {
                    // Sent, it would get close 1009 and end the client for good.
                    let _ = done.send(Err(Error::MessageTooLarge { size, limit }));
                    return;
                }
                connection.track(
                    id,
                    Pending::Request {
                        op: "publish",
                        channel: Some(channel),
                        done,
                    },
                );
                self.send_message(connection, message).await;
            }
            Command::Ping { done } => {
                let id = self.take_request_id();
                connection.track(
                    id,
                    Pending::Request {
                        op: "ping",
                        channel: None,
                        done,
                    },
                );
                self.send(connection, ClientFrame::Ping { id: Some(id) }).await;
            }
            // Taken out by the caller, which owns the closing.
            Command::Close { done } => self.close_waiters.push(done),
        }
    }

    fn take_request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        // Ids only need to be distinct among requests in flight.
        self.next_request_id = self.next_request_id.checked_add(1).unwrap_or(1);
        id
    }

    async fn send(&self, connection: &mut Connection, frame: ClientFrame) {
        let message = transport::encode(connection.encoding, &frame);
        self.send_message(connection, message).await;
    }

    async fn send_message(&self, connection: &mut Connection, message: WsMessage) {
        if connection.broken.is_some() {
            return;
        }
        // A peer that stopped reading would block this send forever, and with it the
        // heartbeat that is meant to notice such a peer; the request timeout bounds it.
        match tokio::time::timeout(self.config.request_timeout, connection.ws.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => connection.broken = Some(format!("send failed: {e}")),
            Err(_) => connection.broken = Some("send timed out: the gateway stopped reading".to_owned()),
        }
    }

    async fn send_subscribe(&mut self, connection: &mut Connection, channel: &str) {
        let id = self.take_request_id();
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        entry.in_flight = Some(id);
        entry.retry_at = None;
        connection.track(
            id,
            Pending::Subscribe {
                channel: channel.to_owned(),
                generation: entry.generation,
            },
        );
        let frame = ClientFrame::Subscribe {
            id: Some(id),
            channel: channel.to_owned(),
        };
        self.send(connection, frame).await;
    }

    async fn on_frame(&mut self, connection: &mut Connection, frame: ServerFrame) {
        match frame {
            ServerFrame::Message { channel, seq, data } => self.dispatch(Message { channel, seq, data }),
            ServerFrame::Ack { id } | ServerFrame::Pong { id } => self.on_reply(connection, id, Ok(())),
            ServerFrame::Error {
                id: None,
                code,
                message,
            } => {
                // Only a frame the gateway could not read gets an error without an id,
                // and this client sends none of those.
                warn!(
                    code = code.as_str(),
                    message, "the gateway reported an error without a request id"
                );
            }
            ServerFrame::Error { id, code, message } => self.on_reply(connection, id, Err((code, message))),
            ServerFrame::Gap { channel } => {
                warn!(channel, "the gateway reports that publications may have been missed");
                self.observers.emit(ClientEvent::Gap { channel });
            }
            // A second welcome is unexpected but harmless; unknown frame types are ignored (section 2).
            ServerFrame::Welcome { .. } | ServerFrame::Unknown => {}
        }
    }

    fn on_reply(&mut self, connection: &mut Connection, id: Option<u64>, result: Result<(), (ErrorCode, String)>) {
        // Heartbeat pongs and replies whose caller gave up have nobody waiting.
        let Some(pending) = id.and_then(|id| connection.pending.remove(&id)) else {
            return;
        };
        match pending {
            Pending::Subscribe { channel, generation } => {
                self.on_subscribe_reply(connection, &channel, generation, id, result)
            }
            Pending::Unsubscribe { done } => {
                let result = match result {
                    // Gone on the gateway already: the goal is reached either way.
                    Ok(()) | Err((ErrorCode::NotSubscribed, _)) => Ok(()),
                    Err((code, message)) => Err(Error::Server {
                        op: "unsubscribe",
                        code,
                        message,
                        channel: None,
                    }),
                };
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
            Pending::Request { op, channel, done } => {
                let _ = done.send(result.map_err(|(code, message)| Error::Server {
                    op,
                    code,
                    message,
                    channel,
                }));
            }
        }
    }

    fn on_subscribe_reply(
        &mut self,
        connection: &mut Connection,
        channel: &str,
        generation: u64,
        id: Option<u64>,
        result: Result<(), (ErrorCode, String)>,
    ) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        // The entry may have been dropped and made anew since this request went out.
        if entry.generation != generation || entry.in_flight != id {
            return;
        }
        entry.in_flight = None;
        match result {
            Ok(()) => {
                let resubscribed = entry.ever_acked;
                entry.acked = true;
                entry.ever_acked = true;
                entry.unavailable = 0;
                for (_, waiter) in entry.waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
                self.observers.emit(ClientEvent::Subscribed {
                    channel: channel.to_owned(),
                    resubscribed,
                });
            }
            Err((ErrorCode::Unavailable, message)) => {
                // The gateway's broker is struggling: retry this channel with backoff (section 12).
                entry.unavailable = entry.unavailable.saturating_add(1);
                let delay = self.config.reconnect.backoff_delay(entry.unavailable, fastrand::f64());
                let at = Instant::now() + delay;
                entry.retry_at = Some(at);
                connection.retry_wakeup = Some(connection.retry_wakeup.map_or(at, |t| t.min(at)));
                debug!(channel, message, ?delay, "subscribe unavailable; retrying");
            }
            Err((code, message)) => {
                // Any other refusal is final for this channel: retrying would be refused again.
                if let Some(entry) = self.channels.remove(channel) {
                    let error = Error::Server {
                        op: "subscribe",
                        code,
                        message: message.clone(),
                        channel: Some(channel.to_owned()),
                    };
                    for (_, waiter) in entry.waiters {
                        let _ = waiter.send(Err(error.clone()));
                    }
                }
                self.observers.emit(ClientEvent::SubscribeRefused {
                    channel: channel.to_owned(),
                    code,
                    message,
                });
            }
        }
    }

    fn dispatch(&mut self, message: Message) {
        // A publication can race an unsubscribe; then nobody wants it any more.
        let Some(entry) = self.channels.get_mut(&message.channel) else {
            return;
        };
        entry.subscribers.retain(|(_, sender)| !sender.is_closed());
        if let Some(((_, last), others)) = entry.subscribers.split_last() {
            for (_, sender) in others {
                let _ = sender.send(message.clone());
            }
            let _ = last.send(message);
        }
    }

    /// Runs the heartbeat and due subscribe retries; returns a reason if the connection is dead.
    async fn on_timer(&mut self, connection: &mut Connection) -> Option<String> {
        let now = Instant::now();
        if let Some((interval, timeout)) = connection.heartbeat {
            if now >= connection.heartbeat_check {
                let quiet = now.saturating_duration_since(connection.last_received);
                if !connection.pinged {
                    if quiet >= interval {
                        // The pong itself is not awaited: any frame that arrives clears `pinged`.
                        connection.pinged = true;
                        connection.heartbeat_check = now + timeout;
                        let id = self.take_request_id();
                        self.send(connection, ClientFrame::Ping { id: Some(id) }).await;
                    } else {
                        connection.heartbeat_check = connection.last_received + interval;
                    }
                } else if quiet >= interval + timeout {
                    return Some(format!("heartbeat timeout: nothing received for {quiet:?}"));
                } else {
                    connection.heartbeat_check = connection.last_received + interval + timeout;
                }
            }
        }
        if connection.retry_wakeup.is_some_and(|at| at <= now) {
            let due: Vec<String> = self
                .channels
                .iter()
                .filter(|(_, e)| !e.acked && e.in_flight.is_none() && e.retry_at.is_some_and(|at| at <= now))
                .map(|(channel, _)| channel.clone())
                .collect();
            for channel in due {
                self.send_subscribe(connection, &channel).await;
            }
            connection.retry_wakeup = self.channels.values().filter_map(|e| e.retry_at).min();
        }
        None
    }
}

impl Connection {
    fn track(&mut self, id: u64, pending: Pending) {
        if self.pending.len() >= self.prune_at {
            self.pending.retain(|_, p| !p.abandoned());
            // Doubling keeps pruning amortised when every entry is still wanted.
            self.prune_at = (self.pending.len() * 2).max(PRUNE_FLOOR);
        }
        self.pending.insert(id, pending);
    }

    fn next_wakeup(&self, idle: Instant) -> Instant {
        let heartbeat = if self.heartbeat.is_some() {
            self.heartbeat_check
        } else {
            idle
        };
        self.retry_wakeup.map_or(heartbeat, |at| at.min(heartbeat))
    }
}

/// After the gateway's close frame: lets the WebSocket send its close reply and see
/// the TCP connection end, bounded in time.
async fn finish_close(ws: &mut WsStream, limit: Duration) {
    let _ = tokio::time::timeout(limit, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}
