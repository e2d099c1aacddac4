//! The background task behind a [`Client`](crate::Client): the [`Driver`] owns the
//! WebSocket and the connection state machine (connecting → connected →
//! reconnecting … → closed), the reconnect schedule, and the set of channels the
//! application wants, which it subscribes again on every new connection. Handles
//! talk to it only through [`Command`]s, so there is no lock around the socket.
//! Behaviour follows proto/PROTOCOL.md, sections 5, 6, 10, 12, 18, 19 and 21.
//!
//! The parts it drives live in the submodules, none of which knows the driver:
//! `command` (what it is told), `channels` (the wanted channels), `requests`
//! (replies matched by id), `connection` (one open WebSocket and its heartbeat)
//! and `tokens` (the connection's and the channels' tokens kept fresh, and the
//! authentication close codes 4002-4005).

mod channels;
mod command;
mod connection;
mod requests;
mod tokens;

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
pub(crate) use self::requests::Reply;
use self::requests::{AckFields, Pending, RequestIds, Unanswered};
use self::tokens::{HeldToken, Tokens};
use crate::backoff::ReconnectDecision;
use crate::deflate_stream;
use crate::error::{Error, Result};
use crate::event::{ClientEvent, ConnectionState, Observers};
use crate::history::History;
use crate::message::Message;
use crate::presence::Presence;
use crate::transport::{self, AttemptFailure, Incoming, Opened, ABNORMAL_CLOSURE};

pub(crate) struct Driver {
    config: Arc<Config>,
    observers: Arc<Observers>,
    commands: mpsc::UnboundedReceiver<Command>,
    channels: ChannelTable,
    request_ids: RequestIds,
    /// Consecutive failed attempts; reset by a connection that stayed up for the backoff cap.
    failures: u32,
    close_waiters: Vec<oneshot::Sender<()>>,
    tokens: Tokens,
}

impl Driver {
    pub(crate) fn new(
        config: Arc<Config>,
        observers: Arc<Observers>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Driver {
            tokens: Tokens::new(config.clone()),
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
                Ok((opened, token)) => self.serve(opened, token).await,
                Err(end) => end,
            };
            let loss = match end {
                End::Lost(loss) => loss,
                End::ClientClosed => return self.stop(None, "client closed".to_owned()),
                End::Fatal(error) => {
                    let reason = error.to_string();
                    self.observers.disconnected(ABNORMAL_CLOSURE, &reason, false, false);
                    return match error {
                        // A refused token is what later calls fail with; other fatal refusals show in `Closed`.
                        Error::Unauthorized { .. } => self.stop_with(Some(ABNORMAL_CLOSURE), reason, error),
                        _ => self.stop(Some(ABNORMAL_CLOSURE), reason),
                    };
                }
            };
            if let Some(error) = self.tokens.authentication_failure(loss.code, &loss.reason) {
                self.observers
                    .disconnected(loss.code, &loss.reason, loss.welcomed_at.is_some(), false);
                return self.stop_with(Some(loss.code), loss.reason, error);
            }
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
            self.observers
                .disconnected(loss.code, &loss.reason, loss.welcomed_at.is_some(), will_reconnect);
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

    /// One connect attempt (token, upgrade, welcome), bounded by the connect timeout,
    /// while still answering commands. Returns the connection and the token it
    /// authenticated with.
    async fn attempt(&mut self) -> Result<(Opened, Option<HeldToken>), End> {
        let config = self.config.clone();
        let attempt = tokio::time::timeout(config.connect_timeout, async move {
            let token = tokens::connect_token(&config).await?;
            let opened = transport::open(
                &config.url,
                config.encoding,
                config.websocket,
                config.compression,
                token.as_ref().map(|t| t.token.as_str()),
            )
            .await?;
            Ok((opened, token))
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
                ended,
                latest,
                done,
            }) => {
                // Registered now, subscribed on the gateway after the next welcome.
                self.channels.add(channel, subscription, messages, ended, latest, done);
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
            Some(Command::History { done, .. }) => {
                let _ = done.send(Err(Error::NotConnected { op: "history" }));
                false
            }
            Some(Command::Presence { done, .. }) => {
                let _ = done.send(Err(Error::NotConnected { op: "presence" }));
                false
            }
        }
    }

    /// Enters the closed state: fails everything still waiting and ends every stream.
    fn stop(self, code: Option<u16>, reason: String) {
        let error = Error::Closed {
            code,
            reason: reason.clone(),
        };
        self.stop_with(code, reason, error);
    }

    /// Like [`stop`](Self::stop), with `error` as what calls fail with from now on.
    fn stop_with(mut self, code: Option<u16>, reason: String, error: Error) {
        debug!(?code, reason, "client stopped");
        // Recorded first: an application that sees its streams end asks for the reason.
        self.observers.set_stopped(error.clone());
        self.channels.close_all(&error);
        self.observers.closed(code, reason, &error);
        for waiter in self.close_waiters.drain(..) {
            let _ = waiter.send(());
        }
        // Commands that raced the stop get the same answer as later ones.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            command.refuse(&error);
        }
    }

    async fn serve(&mut self, opened: Opened, token: Option<HeldToken>) -> End {
        let Opened { ws, welcome } = opened;
        let mut connection = Connection::new(ws, &welcome, self.config.heartbeat, self.config.request_timeout);
        self.tokens.connected(&mut connection, token, &welcome);
        self.observers.connected(&welcome);
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
                    Some(Err(e)) => {
                        if let Some(code) = deflate_stream::close_code(&e) {
                            return connection.fail(code, e.to_string(), self.config.close_timeout).await;
                        }
                        return connection.lost(ABNORMAL_CLOSURE, e.to_string());
                    }
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
                        self.observers.disconnected(1000, "client closed", true, false);
                        return End::ClientClosed;
                    };
                    self.online_command(connection, command).await;
                }
                Some(fetched) = self.tokens.next_fetched() => {
                    self.tokens
                        .on_fetched(connection, fetched, &mut self.request_ids, &mut self.channels, &self.observers)
                        .await;
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
                ended,
                latest,
                done,
            } => {
                if self
                    .channels
                    .add(channel.clone(), subscription, messages, ended, latest, done)
                {
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
                    let frame = ClientFrame::Unsubscribe { id: Some(id), channel };
                    connection.request(id, frame, Pending::Unsubscribe { done }).await;
                } else if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
            }
            Command::Publish {
                channel,
                data,
                idempotency_key,
                done,
            } => {
                let id = self.request_ids.take();
                let limit = self.config.max_message_bytes;
                connection
                    .publish(id, channel, data, idempotency_key, limit, done)
                    .await;
            }
            Command::History {
                channel,
                since,
                limit,
                done,
            } => {
                let id = self.request_ids.take();
                let frame = ClientFrame::History {
                    id: Some(id),
                    channel: channel.clone(),
                    since,
                    limit,
                };
                let pending = Pending::Request {
                    op: "history",
                    channel: Some(channel),
                    done,
                };
                connection.request(id, frame, pending).await;
            }
            Command::Presence { channel, done } => {
                let id = self.request_ids.take();
                let frame = ClientFrame::Presence {
                    id: Some(id),
                    channel: channel.clone(),
                };
                let pending = Pending::Request {
                    op: "presence",
                    channel: Some(channel),
                    done,
                };
                connection.request(id, frame, pending).await;
            }
            Command::Ping { done } => {
                let id = self.request_ids.take();
                let pending = Pending::Request {
                    op: "ping",
                    channel: None,
                    done,
                };
                connection
                    .request(id, ClientFrame::Ping { id: Some(id) }, pending)
                    .await;
            }
            // Taken out by the caller, which owns the closing.
            Command::Close { done } => self.close_waiters.push(done),
        }
    }

    /// Subscribes `channel` on the gateway; with a subscription token provider, once
    /// it has supplied the channel's token.
    async fn send_subscribe(&mut self, connection: &mut Connection, channel: &str) {
        let id = self.request_ids.take();
        let Some(generation) = self.channels.subscribe_sent(channel, id) else {
            return;
        };
        if !self.tokens.fetch_subscription_token(channel, id) {
            let request = self.channels.subscribe_request(channel.to_owned(), generation, None);
            connection.subscribe(id, request).await;
        }
    }

    async fn on_frame(&mut self, connection: &mut Connection, frame: ServerFrame) {
        match frame {
            ServerFrame::Message {
                channel,
                seq,
                offset,
                epoch,
                data,
            } => self.channels.dispatch(Message {
                channel,
                seq,
                offset,
                epoch,
                data,
            }),
            ServerFrame::Ack {
                id,
                expires_at,
                offset,
                epoch,
                recovered,
                duplicate,
            } => {
                let ack = AckFields {
                    expires_at,
                    offset,
                    epoch,
                    recovered,
                    duplicate,
                };
                self.on_reply(connection, id, Ok(Reply::Ack(ack)));
            }
            ServerFrame::Pong { id } => self.on_reply(connection, id, Ok(Reply::Ack(AckFields::default()))),
            ServerFrame::History {
                id,
                channel,
                offset,
                epoch,
                publications,
                complete,
            } => {
                let history = History {
                    channel,
                    offset,
                    epoch,
                    publications,
                    complete,
                };
                self.on_reply(connection, id, Ok(Reply::History(history)));
            }
            ServerFrame::Presence {
                id,
                channel,
                count,
                members,
            } => {
                let presence = Presence {
                    channel,
                    count,
                    members,
                };
                self.on_reply(connection, id, Ok(Reply::Presence(presence)));
            }
            ServerFrame::Join { channel, user, info } => {
                if self.channels.wants(&channel) {
                    self.observers.emit(ClientEvent::Join { channel, user, info });
                }
            }
            ServerFrame::Leave { channel, user } => {
                if self.channels.wants(&channel) {
                    self.observers.emit(ClientEvent::Leave { channel, user });
                }
            }
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
            ServerFrame::Gap { channel, reason } => {
                warn!(
                    channel,
                    ?reason,
                    "the gateway reports that publications may have been missed"
                );
                self.channels.gap(&channel, reason, &self.observers);
            }
            ServerFrame::Unsubscribed { channel, code, message } => {
                debug!(channel, ?code, message, "the gateway ended a subscription");
                self.channels.unsubscribed(&channel, code, message, &self.observers);
            }
            // A second welcome is unexpected but harmless; unknown frame types are ignored (section 2).
            ServerFrame::Welcome { .. } | ServerFrame::Unknown => {}
        }
    }

    /// A reply to request `id`: `Ok` with what it carried, or the error frame's code and message.
    fn on_reply(&mut self, connection: &mut Connection, id: Option<u64>, result: Result<Reply, (ErrorCode, String)>) {
        // Heartbeat pongs and replies whose caller gave up have nobody waiting.
        match connection.requests.take(id) {
            None => {}
            Some(Pending::Subscribe(request)) => {
                let result = result.map(|reply| match reply {
                    Reply::Ack(ack) => ack,
                    // Not an answer a subscribe gets; taken as a plain ack.
                    Reply::History(_) | Reply::Presence(_) => AckFields::default(),
                });
                let at = self
                    .channels
                    .subscribe_answered(request, id, result, &self.config.reconnect, &self.observers);
                connection.wake_for_channel(at);
            }
            Some(Pending::Refresh { token, received_at }) => {
                self.tokens
                    .refresh_answered(connection, token, received_at, result, &self.observers);
            }
            Some(Pending::SubRefresh {
                channel,
                token,
                received_at,
            }) => tokens::sub_refresh_answered(
                connection,
                &mut self.channels,
                channel,
                token,
                received_at,
                result,
                &self.observers,
            ),
            Some(other) => other.answer(result),
        }
    }

    /// Runs the heartbeat, due subscribe retries and due token refreshes; returns a
    /// reason if the connection is dead.
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
        self.tokens.refresh_if_due(connection, now);
        if connection.channel_wakeup.is_some_and(|at| at <= now) {
            for channel in self.channels.due_retries(now) {
                self.send_subscribe(connection, &channel).await;
            }
            self.tokens
                .refresh_subscription_tokens(self.channels.due_token_refreshes(now));
            connection.channel_wakeup = self.channels.next_wakeup();
        }
        None
    }
}
