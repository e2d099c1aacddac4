//! The background task behind a [`Client`](crate::Client): the [`Driver`] owns the
//! WebSocket and the connection state machine (connecting → connected →
//! reconnecting … → closed), the reconnect schedule, and the set of channels the
//! application wants, which it subscribes again on every new connection. Handles
//! talk to it only through [`Command`]s, so there is no lock around the socket.
//! Behaviour follows proto/PROTOCOL.md, sections 5, 6, 10 and 12.
//!
//! The parts it drives live in the submodules, none of which knows the driver:
//! `command` (what it is told), `channels` (the wanted channels), `requests`
//! (replies matched by id) and `connection` (one open WebSocket and its heartbeat).

mod channels;
mod command;
mod connection;
mod requests;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use shardcast_proto::{ClientFrame, ErrorCode, ServerFrame};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use self::channels::ChannelTable;
pub(crate) use self::command::{Command, Config, HeartbeatTiming};
use self::connection::{Connection, End, HeartbeatStep, Loss, NEVER};
use self::requests::{Pending, RequestIds, Unanswered};
use crate::backoff::ReconnectDecision;
use crate::error::{Error, Result};
use crate::event::{ClientEvent, ConnectionState, Observers};
use crate::message::Message;
use crate::transport::{self, AttemptFailure, Incoming, Opened, Welcome, ABNORMAL_CLOSURE};

pub(crate) struct Driver {
    config: Arc<Config>,
    observers: Arc<Observers>,
    commands: mpsc::UnboundedReceiver<Command>,
    channels: ChannelTable,
    request_ids: RequestIds,
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
            channels: ChannelTable::default(),
            request_ids: RequestIds::default(),
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
            self.channels.forget_connection();
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
                self.channels.add(channel, subscription, messages, done);
                false
            }
            Some(Command::Unsubscribe {
                channel,
                subscription,
                done,
            }) => {
                // Disconnected: the next connection simply does not subscribe it.
                self.channels.remove(&channel, subscription);
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

    /// Enters the closed state: fails everything still waiting and ends every stream.
    fn stop(mut self, code: Option<u16>, reason: String) {
        debug!(?code, reason, "client stopped");
        let error = Error::Closed {
            code,
            reason: reason.clone(),
        };
        // Recorded first: an application that sees its streams end asks for the reason.
        self.observers.set_stopped(code, &reason);
        self.channels.close_all(&error);
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

    async fn serve(&mut self, opened: Opened) -> End {
        let Opened { ws, welcome } = opened;
        let mut connection = Connection::new(ws, &welcome, self.config.heartbeat, self.config.request_timeout);
        self.announce(&welcome);
        let end = self.serve_connection(&mut connection).await;
        connection.requests.end_all(match &end {
            End::Lost(loss) => Unanswered::Lost {
                code: loss.code,
                reason: &loss.reason,
            },
            _ => Unanswered::Closed,
        });
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
        for channel in self.channels.in_subscribe_order() {
            self.send_subscribe(connection, &channel).await;
        }
        let idle = Instant::now() + NEVER;
        let timer = tokio::time::sleep_until(connection.next_wakeup(idle));
        tokio::pin!(timer);
        loop {
            if let Some(reason) = connection.broken.take() {
                return connection.lost(ABNORMAL_CLOSURE, reason);
            }
            tokio::select! {
                message = connection.ws.next() => match message {
                    Some(Ok(message)) => {
                        connection.received();
                        match transport::decode(connection.encoding, message) {
                            Incoming::Frame(frame) => self.on_frame(connection, frame).await,
                            Incoming::Control => {}
                            Incoming::Close { code, reason } => {
                                connection.finish_close(self.config.close_timeout).await;
                                return connection.lost(code, reason);
                            }
                            Incoming::Undecodable(e) => warn!(error = e, "ignoring an undecodable frame"),
                        }
                    }
                    Some(Err(e)) => return connection.lost(ABNORMAL_CLOSURE, e.to_string()),
                    None => return connection.lost(ABNORMAL_CLOSURE, "connection closed without a close frame".to_owned()),
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
                        connection.close(self.config.close_timeout).await;
                        self.emit_disconnected(1000, "client closed", true, false);
                        return End::ClientClosed;
                    };
                    self.online_command(connection, command).await;
                }
                () = &mut timer => {
                    if let Some(reason) = self.on_timer(connection).await {
                        return connection.lost(ABNORMAL_CLOSURE, reason);
                    }
                }
            }
            let wakeup = connection.next_wakeup(idle);
            if wakeup != timer.deadline() {
                timer.as_mut().reset(wakeup);
            }
        }
    }

    async fn online_command(&mut self, connection: &mut Connection, command: Command) {
        match command {
            Command::Subscribe {
                channel,
                subscription,
                messages,
                done,
            } => {
                if self.channels.add(channel.clone(), subscription, messages, done) {
                    self.send_subscribe(connection, &channel).await;
                }
            }
            Command::Unsubscribe {
                channel,
                subscription,
                done,
            } => {
                if self.channels.remove(&channel, subscription) {
                    let id = self.request_ids.take();
                    connection.requests.track(id, Pending::Unsubscribe { done });
                    connection
                        .send(ClientFrame::Unsubscribe { id: Some(id), channel })
                        .await;
                } else if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
            }
            Command::Publish { channel, data, done } => {
                let id = self.request_ids.take();
                let frame = ClientFrame::Publish {
                    id: Some(id),
                    channel: channel.clone(),
                    data,
                };
                let message = match transport::encode(connection.encoding, &frame) {
                    Ok(message) => message,
                    Err(e) => {
                        let _ = done.send(Err(e));
                        return;
                    }
                };
                let (size, limit) = (message.len(), self.config.max_message_bytes);
                if size > limit {
                    // Sent, it would get close 1009 and end the client for good.
                    let _ = done.send(Err(Error::MessageTooLarge { size, limit }));
                    return;
                }
                connection.requests.track(
                    id,
                    Pending::Request {
                        op: "publish",
                        channel: Some(channel),
                        done,
                    },
                );
                connection.send_message(message).await;
            }
            Command::Ping { done } => {
                let id = self.request_ids.take();
                connection.requests.track(
                    id,
                    Pending::Request {
                        op: "ping",
                        channel: None,
                        done,
                    },
                );
                connection.send(ClientFrame::Ping { id: Some(id) }).await;
            }
            // Taken out by the caller, which owns the closing.
            Command::Close { done } => self.close_waiters.push(done),
        }
    }

    async fn send_subscribe(&mut self, connection: &mut Connection, channel: &str) {
        let id = self.request_ids.take();
        let Some(generation) = self.channels.subscribe_sent(channel, id) else {
            return;
        };
        connection.requests.track(
            id,
            Pending::Subscribe {
                channel: channel.to_owned(),
                generation,
            },
        );
        let frame = ClientFrame::Subscribe {
            id: Some(id),
            channel: channel.to_owned(),
            token: None,
        };
        connection.send(frame).await;
    }

    async fn on_frame(&mut self, connection: &mut Connection, frame: ServerFrame) {
        match frame {
            ServerFrame::Message { channel, seq, data } => self.channels.dispatch(Message { channel, seq, data }),
            ServerFrame::Ack { id, .. } | ServerFrame::Pong { id } => self.on_reply(connection, id, Ok(())),
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
            ServerFrame::Unsubscribed { channel, code, message } => {
                // Authentication support (issue #11) surfaces this on the subscription;
                // until then it is logged.
                warn!(channel, ?code, message, "the gateway ended a subscription");
            }
            // A second welcome is unexpected but harmless; unknown frame types are ignored (section 2).
            ServerFrame::Welcome { .. } | ServerFrame::Unknown => {}
        }
    }

    fn on_reply(&mut self, connection: &mut Connection, id: Option<u64>, result: Result<(), (ErrorCode, String)>) {
        // Heartbeat pongs and replies whose caller gave up have nobody waiting.
        match connection.requests.take(id) {
            None => {}
            Some(Pending::Subscribe { channel, generation }) => {
                let retry_at = self.channels.subscribe_answered(
                    &channel,
                    generation,
                    id,
                    result,
                    &self.config.reconnect,
                    &self.observers,
                );
                if let Some(at) = retry_at {
                    connection.retry_wakeup = Some(connection.retry_wakeup.map_or(at, |t| t.min(at)));
                }
            }
            Some(other) => other.answer(result),
        }
    }

    /// Runs the heartbeat and due subscribe retries; returns a reason if the connection is dead.
    async fn on_timer(&mut self, connection: &mut Connection) -> Option<String> {
        let now = Instant::now();
        match connection.heartbeat_step(now) {
            HeartbeatStep::Wait => {}
            HeartbeatStep::Ping => {
                let id = self.request_ids.take();
                connection.send(ClientFrame::Ping { id: Some(id) }).await;
            }
            HeartbeatStep::Dead(reason) => return Some(reason),
        }
        if connection.retry_wakeup.is_some_and(|at| at <= now) {
            for channel in self.channels.due_retries(now) {
                self.send_subscribe(connection, &channel).await;
            }
            connection.retry_wakeup = self.channels.next_retry();
        }
        None
    }
}
