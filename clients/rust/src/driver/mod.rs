//! The background task behind a [`Client`](crate::Client): the [`Driver`] owns the
//! WebSocket and the connection state machine (connecting → connected →
//! reconnecting … → closed), the reconnect schedule, and the set of channels the
//! application wants, which it subscribes again on every new connection. Handles
//! talk to it only through [`Command`]s, so there is no lock around the socket.
//! It also keeps the connection's token and the channels' subscription tokens
//! fresh, and reacts to the authentication close codes (4002-4005).
//! Behaviour follows proto/PROTOCOL.md, sections 5, 6, 10, 12 and 18.
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
use shardcast_proto::{close, ClientFrame, ErrorCode, ServerFrame};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use self::channels::ChannelTable;
pub(crate) use self::command::{Command, Config, HeartbeatTiming};
use self::connection::{Connection, End, HeartbeatStep, Loss, NEVER};
use self::requests::{Pending, RequestIds, SubscribeRequest, Unanswered};
use crate::backoff::ReconnectDecision;
use crate::error::{BoxError, Error, Result};
use crate::event::{ClientEvent, ConnectionState, Observers};
use crate::message::Message;
use crate::token::{TokenFuture, TokenLifetime};
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
    /// Numbers the connections, so that a token fetched for an earlier one is dropped.
    serial: u64,
    /// Tokens fetched in the background (provider calls run beside the driver, so
    /// that a slow backend does not stall the connection).
    fetched: mpsc::UnboundedReceiver<Fetched>,
    fetches: mpsc::UnboundedSender<Fetched>,
}

/// A token provider's answer, for the connection numbered `serial`.
struct Fetched {
    serial: u64,
    purpose: FetchPurpose,
    received_at: Instant,
    result: Result<Option<String>, BoxError>,
}

/// What a token was fetched for.
enum FetchPurpose {
    /// A `refresh` of the connection's token.
    Refresh,
    /// Subscribe request `id` for `channel`, which waits for it.
    Subscribe { channel: String, id: u64 },
    /// A `sub_refresh` of the channel's subscription token.
    SubRefresh { channel: String },
}

/// The token a connection was opened with, and when it arrived.
struct HeldToken {
    token: String,
    received_at: Instant,
}

impl Driver {
    pub(crate) fn new(
        config: Arc<Config>,
        observers: Arc<Observers>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        let (fetches, fetched) = mpsc::unbounded_channel();
        Driver {
            config,
            observers,
            commands,
            channels: ChannelTable::default(),
            request_ids: RequestIds::default(),
            failures: 0,
            close_waiters: Vec::new(),
            serial: 0,
            fetched,
            fetches,
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
                    self.emit_disconnected(ABNORMAL_CLOSURE, &reason, false, false);
                    return match error {
                        // A refused token is what later calls fail with; other fatal refusals show in `Closed`.
                        Error::Unauthorized { .. } => self.stop_with(Some(ABNORMAL_CLOSURE), reason, error),
                        _ => self.stop(Some(ABNORMAL_CLOSURE), reason),
                    };
                }
            };
            if let Some(error) = self.authentication_failure(loss.code, &loss.reason) {
                self.emit_disconnected(loss.code, &loss.reason, loss.welcomed_at.is_some(), false);
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

    /// The error that stops the client after an authentication close code, if this is
    /// one (section 11.1): 4003 and 4004 never reconnect; 4002 (token expired)
    /// reconnects with a new token from the provider, so only without one is it final.
    /// 4005 (too many connections) reconnects with backoff, as the policy says.
    fn authentication_failure(&self, code: u16, reason: &str) -> Option<Error> {
        let renewable = self.config.token_provider.is_some();
        match code {
            close::UNAUTHORIZED | close::DISCONNECTED => {}
            close::TOKEN_EXPIRED if !renewable => {}
            _ => return None,
        }
        Some(Error::Unauthorized {
            code,
            reason: reason.to_owned(),
        })
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
    /// while still answering commands. Returns the connection and the token it
    /// authenticated with.
    async fn attempt(&mut self) -> Result<(Opened, Option<HeldToken>), End> {
        let config = self.config.clone();
        let attempt = tokio::time::timeout(config.connect_timeout, async move {
            // A provider is called before every connect, so that an expired token
            // (close 4002) is replaced; a fixed token is all there is otherwise.
            let token = match &config.token_provider {
                Some(provider) => match provider().await {
                    Ok(token) => token,
                    Err(e) => return Err(AttemptFailure::abnormal(format!("token provider failed: {e}"))),
                },
                None => config.token.clone(),
            };
            let token = token.filter(|t| !t.is_empty()).map(|token| HeldToken {
                token,
                received_at: Instant::now(),
            });
            let opened = transport::open(
                &config.url,
                config.encoding,
                config.websocket,
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
                done,
            }) => {
                // Registered now, subscribed on the gateway after the next welcome.
                self.channels.add(channel, subscription, messages, ended, done);
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
        self.observers.set_state(ConnectionState::Closed);
        if let Error::Unauthorized { code, reason } = &error {
            self.observers.emit(ClientEvent::Unauthorized {
                code: *code,
                reason: reason.clone(),
            });
        }
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

    async fn serve(&mut self, opened: Opened, token: Option<HeldToken>) -> End {
        let Opened { ws, welcome } = opened;
        let mut connection = Connection::new(ws, &welcome, self.config.heartbeat, self.config.request_timeout);
        self.serial = self.serial.wrapping_add(1);
        // The welcome says when the token expires; the token's own `exp` where it does not.
        let lifetime = token.and_then(|t| TokenLifetime::of(&t.token, welcome.expires_at, t.received_at));
        self.schedule_refresh(&mut connection, lifetime);
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
            user: welcome.user.clone(),
        });
    }

    /// Plans the refresh of the connection's token with this lifetime (none if it
    /// does not expire, or if there is no provider to get a new one from).
    fn schedule_refresh(&self, connection: &mut Connection, lifetime: Option<TokenLifetime>) {
        connection.token_lifetime = lifetime;
        connection.token_refresh_at = lifetime
            .filter(|_| self.config.token_provider.is_some())
            .map(|lifetime| lifetime.refresh_at(Instant::now(), fastrand::f64()));
    }

    /// A connection token refresh failed: reported, and tried again (sooner, since
    /// less of the lifetime is left) while the token lasts; past its expiry the
    /// gateway's close 4002 follows, and the client reconnects with a new token.
    fn refresh_failed(&self, connection: &mut Connection, reason: String) {
        warn!(reason, "token refresh failed");
        self.observers
            .emit(ClientEvent::TokenRefreshFailed { channel: None, reason });
        let lifetime = connection
            .token_lifetime
            .filter(|l| !l.remaining(Instant::now()).is_zero());
        self.schedule_refresh(connection, lifetime);
    }

    /// Calls a token provider beside the driver, bounded by the request timeout (a
    /// provider that never answers would hold a subscribe forever); the answer
    /// arrives as a [`Fetched`].
    fn fetch(&self, purpose: FetchPurpose, token: TokenFuture) {
        let (serial, fetches, limit) = (self.serial, self.fetches.clone(), self.config.request_timeout);
        tokio::spawn(async move {
            let result = match tokio::time::timeout(limit, token).await {
                Ok(result) => result,
                Err(_) => Err(format!("no token within {limit:?}").into()),
            };
            let _ = fetches.send(Fetched {
                serial,
                purpose,
                received_at: Instant::now(),
                result,
            });
        });
    }

    /// A token provider answered: sends the request the token was fetched for.
    async fn on_fetched(&mut self, connection: &mut Connection, fetched: Fetched) {
        if fetched.serial != self.serial {
            // Fetched for a connection that is gone; the new one fetches its own.
            return;
        }
        let Fetched {
            purpose,
            received_at,
            result,
            ..
        } = fetched;
        match purpose {
            FetchPurpose::Refresh => match result {
                Ok(Some(token)) if !token.is_empty() => {
                    let id = self.request_ids.take();
                    let frame = ClientFrame::Refresh {
                        id: Some(id),
                        token: token.clone(),
                    };
                    connection.requests.track(id, Pending::Refresh { token, received_at });
                    connection.send(frame).await;
                }
                Ok(_) => self.refresh_failed(connection, "the token provider returned no token".to_owned()),
                Err(e) => self.refresh_failed(connection, format!("token provider failed: {e}")),
            },
            FetchPurpose::Subscribe { channel, id } => {
                let Some(generation) = self.channels.awaiting_token(&channel, id) else {
                    return;
                };
                match result {
                    Ok(token) => {
                        let token = token.filter(|t| !t.is_empty());
                        self.send_subscribe_frame(connection, channel, id, generation, token, received_at)
                            .await;
                    }
                    Err(e) => self
                        .channels
                        .token_failed(&channel, id, Error::TokenProvider(Arc::from(e))),
                }
            }
            FetchPurpose::SubRefresh { channel } => match result {
                Ok(Some(token)) if !token.is_empty() => {
                    let id = self.request_ids.take();
                    let frame = ClientFrame::SubRefresh {
                        id: Some(id),
                        channel: channel.clone(),
                        token: token.clone(),
                    };
                    connection.requests.track(
                        id,
                        Pending::SubRefresh {
                            channel,
                            token,
                            received_at,
                        },
                    );
                    connection.send(frame).await;
                }
                other => {
                    let reason = match other {
                        Err(e) => format!("subscription token provider failed: {e}"),
                        Ok(_) => "the subscription token provider returned no token".to_owned(),
                    };
                    let at = self.channels.token_refreshed(&channel, Err(reason), &self.observers);
                    connection.wake_for_channel(at);
                }
            },
        }
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
                Some(fetched) = self.fetched.recv() => self.on_fetched(connection, fetched).await,
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
                done,
            } => {
                if self.channels.add(channel.clone(), subscription, messages, ended, done) {
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

    /// Subscribes `channel` on the gateway; with a subscription token provider, once
    /// it has supplied the channel's token.
    async fn send_subscribe(&mut self, connection: &mut Connection, channel: &str) {
        let id = self.request_ids.take();
        let Some(generation) = self.channels.subscribe_sent(channel, id) else {
            return;
        };
        match &self.config.subscription_token {
            Some(provider) => {
                let token = provider(channel.to_owned());
                let purpose = FetchPurpose::Subscribe {
                    channel: channel.to_owned(),
                    id,
                };
                self.fetch(purpose, token);
            }
            None => {
                self.send_subscribe_frame(connection, channel.to_owned(), id, generation, None, Instant::now())
                    .await
            }
        }
    }

    async fn send_subscribe_frame(
        &mut self,
        connection: &mut Connection,
        channel: String,
        id: u64,
        generation: u64,
        token: Option<String>,
        received_at: Instant,
    ) {
        let frame = ClientFrame::Subscribe {
            id: Some(id),
            channel: channel.clone(),
            token: token.clone(),
        };
        connection.requests.track(
            id,
            Pending::Subscribe(SubscribeRequest {
                channel,
                generation,
                token: token.map(|token| (token, received_at)),
            }),
        );
        connection.send(frame).await;
    }

    async fn on_frame(&mut self, connection: &mut Connection, frame: ServerFrame) {
        match frame {
            ServerFrame::Message { channel, seq, data } => self.channels.dispatch(Message { channel, seq, data }),
            ServerFrame::Ack { id, expires_at } => self.on_reply(connection, id, Ok(expires_at)),
            ServerFrame::Pong { id } => self.on_reply(connection, id, Ok(None)),
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
                debug!(channel, ?code, message, "the gateway ended a subscription");
                self.channels.unsubscribed(&channel, code, message, &self.observers);
            }
            // A second welcome is unexpected but harmless; unknown frame types are ignored (section 2).
            ServerFrame::Welcome { .. } | ServerFrame::Unknown => {}
        }
    }

    /// A reply to request `id`: `Ok` with the ack's `expires_at`, or the error frame's code and message.
    fn on_reply(
        &mut self,
        connection: &mut Connection,
        id: Option<u64>,
        result: Result<Option<u64>, (ErrorCode, String)>,
    ) {
        // Heartbeat pongs and replies whose caller gave up have nobody waiting.
        match connection.requests.take(id) {
            None => {}
            Some(Pending::Subscribe(request)) => {
                let at = self
                    .channels
                    .subscribe_answered(request, id, result, &self.config.reconnect, &self.observers);
                connection.wake_for_channel(at);
            }
            Some(Pending::Refresh { token, received_at }) => match result {
                Ok(expires_at) => {
                    let lifetime = TokenLifetime::of(&token, expires_at, received_at);
                    self.schedule_refresh(connection, lifetime);
                    self.observers.emit(ClientEvent::TokenRefreshed {
                        channel: None,
                        expires_at,
                    });
                }
                // A refused token closes the connection with 4003 next; anything else is retried.
                Err((code, message)) => self.refresh_failed(connection, format!("{}: {message}", code.as_str())),
            },
            Some(Pending::SubRefresh {
                channel,
                token,
                received_at,
            }) => {
                let outcome = result
                    .map(|expires_at| (token, received_at, expires_at))
                    .map_err(|(code, message)| format!("{}: {message}", code.as_str()));
                let at = self.channels.token_refreshed(&channel, outcome, &self.observers);
                connection.wake_for_channel(at);
            }
            Some(other) => other.answer(result.map(|_| ())),
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
        if connection.token_refresh_at.is_some_and(|at| at <= now) {
            connection.token_refresh_at = None;
            if let Some(provider) = &self.config.token_provider {
                self.fetch(FetchPurpose::Refresh, provider());
            }
        }
        if connection.channel_wakeup.is_some_and(|at| at <= now) {
            for channel in self.channels.due_retries(now) {
                self.send_subscribe(connection, &channel).await;
            }
            for channel in self.channels.due_token_refreshes(now) {
                if let Some(provider) = &self.config.subscription_token {
                    self.fetch(
                        FetchPurpose::SubRefresh {
                            channel: channel.clone(),
                        },
                        provider(channel),
                    );
                }
            }
            connection.channel_wakeup = self.channels.next_wakeup();
        }
        None
    }
}
