//! The application's handle on a gateway connection: [`ClientBuilder`] with the
//! client's settings, and [`Client`], whose methods turn into commands for the
//! driver task and wait for its answers (with timeouts where the protocol has a reply).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use shardcast_proto::{validate_channel, Encoding, ErrorCode};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::backoff::ReconnectPolicy;
use crate::driver::{Command, Config, Driver, HeartbeatTiming, Reply};
use crate::error::{BoxError, Error, Result};
use crate::event::{ConnectionState, EventStream, Observers};
use crate::history::{check_idempotency_key, History, HistoryOptions, Published, SubscribeOptions};
use crate::presence::Presence;
use crate::subscription::Subscription;
use crate::token::{SubscriptionTokenProvider, TokenProvider};
use crate::transport::{self, Welcome};

/// The client-side heartbeat, for dead connections the operating system has not
/// noticed (a peer that vanished without closing TCP): after `interval` with
/// nothing received the client sends a protocol `ping`; after `timeout` more with
/// still nothing received it drops the connection and reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Run the heartbeat at all (default true).
    pub enabled: bool,
    /// Quiet time before a ping (default: the welcome's `ping_interval_ms`, 25 s on a default gateway).
    pub interval: Option<Duration>,
    /// Further quiet time after the ping before giving up (default: the interval).
    pub timeout: Option<Duration>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            enabled: true,
            interval: None,
            timeout: None,
        }
    }
}

/// Settings of a [`Client`]; start with [`Client::builder`].
pub struct ClientBuilder {
    url: String,
    encoding: Encoding,
    reconnect: ReconnectPolicy,
    heartbeat: Heartbeat,
    connect_timeout: Duration,
    request_timeout: Duration,
    close_timeout: Duration,
    token: Option<String>,
    token_provider: Option<TokenProvider>,
    subscription_token: Option<SubscriptionTokenProvider>,
    websocket: WebSocketConfig,
    max_message_bytes: usize,
    compression: bool,
}

/// The gateway's default maximum message size (`--max-message-bytes`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 65_536;

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("encoding", &self.encoding)
            .field("reconnect", &self.reconnect)
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("compression", &self.compression)
            .field("token", &self.token.as_ref().map(|_| "<token>"))
            .field("token_provider", &self.token_provider.as_ref().map(|_| "<provider>"))
            .field(
                "subscription_token",
                &self.subscription_token.as_ref().map(|_| "<provider>"),
            )
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            url: url.into(),
            encoding: Encoding::Json,
            reconnect: ReconnectPolicy::default(),
            heartbeat: Heartbeat::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(3),
            token: None,
            token_provider: None,
            subscription_token: None,
            websocket: WebSocketConfig::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            compression: true,
        }
    }

    /// The frame encoding (default JSON). Payloads arrive as the same JSON values either way.
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// The reconnect policy (default: 500 ms base, 30 s cap, doubling, forever).
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// The heartbeat settings (default: on, sized by the gateway's ping interval).
    pub fn heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// How long one connect attempt may take, TCP connect to `welcome` (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long `publish` and `ping` wait for their reply (default 10 s). Also bounds a
    /// single send to a gateway that stopped reading, and a token provider's answer
    /// for a refresh or a subscribe.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a close handshake may take before the socket is dropped (default 3 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// A fixed connection token (PROTOCOL.md 18.2), sent as `Authorization: Bearer`
    /// on every upgrade. It cannot be refreshed: when it expires (close 4002) the
    /// client stops with [`Error::Unauthorized`]. For short-lived tokens use a
    /// [provider](Self::token_provider_async), which takes precedence over this.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A synchronous connection token provider; see [`token_provider_async`](Self::token_provider_async).
    pub fn token_provider<F>(self, provider: F) -> Self
    where
        F: Fn() -> Option<String> + Send + Sync + 'static,
    {
        self.token_provider_async(move || std::future::ready(Ok::<_, BoxError>(provider())))
    }

    /// The connection token provider (the application's "get token" call to its
    /// backend). It is called before every connect attempt, its token sent as
    /// `Authorization: Bearer` on the upgrade (never in the URL, which the gateway
    /// refuses), and again before the token expires: the welcome says when, and the
    /// client sends the new token in a `refresh` at 80-90 % of the token's lifetime,
    /// at least 10 s before expiry. After close 4002 (token expired) it reconnects
    /// with a new token. `None` connects anonymously.
    ///
    /// A failure fails that connect attempt, which then backs off like any other
    /// failure; a failed refresh is reported ([`ClientEvent::TokenRefreshFailed`](crate::ClientEvent::TokenRefreshFailed))
    /// and tried again. A token the gateway refuses (HTTP 401, close 4003) stops the
    /// client with [`Error::Unauthorized`] rather than retrying.
    pub fn token_provider_async<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<String>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.token_provider = Some(Arc::new(move || {
            let token = provider();
            Box::pin(async move { token.await.map_err(Into::into) })
        }));
        self
    }

    /// A synchronous subscription token provider; see
    /// [`subscription_token_provider_async`](Self::subscription_token_provider_async).
    pub fn subscription_token_provider<F>(self, provider: F) -> Self
    where
        F: Fn(&str) -> Option<String> + Send + Sync + 'static,
    {
        self.subscription_token_provider_async(move |channel: String| {
            std::future::ready(Ok::<_, BoxError>(provider(&channel)))
        })
    }

    /// The subscription token provider (PROTOCOL.md 18.4), for channels the
    /// connection token does not grant: called with the channel before every
    /// `subscribe` the client sends (re-subscribes after a reconnect included), and
    /// before the token's `exp` to replace it with a `sub_refresh`. `None` subscribes
    /// without a token. A failure fails that subscribe with [`Error::TokenProvider`].
    pub fn subscription_token_provider_async<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<String>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.subscription_token = Some(Arc::new(move |channel| {
            let token = provider(channel);
            Box::pin(async move { token.await.map_err(Into::into) })
        }));
        self
    }

    /// The gateway's maximum message size in bytes (default 65 536, the gateway's
    /// default). Larger publishes fail with [`Error::MessageTooLarge`] without being
    /// sent: the gateway would close with 1009, after which the client does not reconnect.
    pub fn max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = limit;
        self
    }

    /// Low-level WebSocket settings (message size limits, buffer sizes). The default
    /// accepts messages up to 64 MiB; the protocol asks for at least 4 × the gateway's
    /// maximum message size.
    pub fn websocket_config(mut self, config: WebSocketConfig) -> Self {
        self.websocket = config;
        self
    }

    /// Whether to offer permessage-deflate (RFC 7692; default on, as browsers do).
    /// A gateway started with `--compression on` then sends messages compressed and
    /// the client inflates them, bounded by the WebSocket configuration's maximum
    /// message size (past it the connection is lost with 1009). The client's own
    /// frames go uncompressed either way. [`Welcome::compression`] tells whether the
    /// gateway accepted.
    pub fn compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// Starts the client: it connects in the background and keeps reconnecting.
    /// Must be called inside a Tokio runtime.
    pub fn build(self) -> Result<Client> {
        self.build_with_events().map(|(client, _)| client)
    }

    /// Like [`build`](Self::build), with an event stream that sees every event from the
    /// first `Connecting` on (a stream taken later with [`Client::events`] may miss that).
    pub fn build_with_events(self) -> Result<(Client, EventStream)> {
        transport::validate_url(&self.url)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let config = Arc::new(Config {
            url: self.url,
            encoding: self.encoding,
            reconnect: self.reconnect,
            heartbeat: self.heartbeat.enabled.then_some(HeartbeatTiming {
                interval: self.heartbeat.interval,
                timeout: self.heartbeat.timeout,
            }),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            close_timeout: self.close_timeout,
            token: self.token,
            token_provider: self.token_provider,
            subscription_token: self.subscription_token,
            websocket: self.websocket,
            max_message_bytes: self.max_message_bytes,
            compression: self.compression,
        });
        let observers = Arc::new(Observers::new());
        let events = observers.listen();
        let (commands, receiver) = mpsc::unbounded_channel();
        runtime.spawn(Driver::new(config.clone(), observers.clone(), receiver).run());
        let client = Client {
            commands,
            observers,
            encoding: config.encoding,
            request_timeout: config.request_timeout,
        };
        Ok((client, events))
    }
}

/// Refuses, before anything is sent, a channel name the protocol forbids. The length
/// limit is the gateway's configuration, so only the charset is checked here.
fn check_channel(channel: &str) -> Result<()> {
    validate_channel(channel, usize::MAX).map_err(|source| Error::InvalidChannel {
        channel: channel.to_owned(),
        source,
    })
}

/// Ids of subscriptions, unique in the process, so that an unsubscribe names exactly one.
static NEXT_SUBSCRIPTION_ID: AtomicU64 = AtomicU64::new(1);

/// A client of a shardcast gateway: one logical connection that survives the loss of
/// any particular WebSocket.
///
/// Cheap to clone; clones share the connection. The connection is closed when
/// [`close`](Self::close) is called, or once every clone and every
/// [`Subscription`] is dropped.
///
/// ```no_run
/// # async fn example() -> Result<(), shardcast_client::Error> {
/// use futures_util::StreamExt;
///
/// let client = shardcast_client::Client::connect("ws://127.0.0.1:8000/ws")?;
/// let mut news = client.subscribe("news").await?;
/// while let Some(message) = news.next().await {
///     println!("{} #{}: {}", message.channel, message.seq, message.data);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    observers: Arc<Observers>,
    encoding: Encoding,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state())
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Settings for a client of the gateway endpoint `url` (`ws://host:port/ws`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// A client with the default settings; shorthand for `Client::builder(url).build()`.
    pub fn connect(url: impl Into<String>) -> Result<Client> {
        Client::builder(url).build()
    }

    /// Subscribes to a channel. Resolves once the gateway acknowledged the
    /// subscription, so every publication accepted after that is delivered; while
    /// disconnected it waits for the next connection (wrap it in a timeout if that
    /// should not be indefinite). Several subscriptions may share a channel: the
    /// gateway is asked once. After a reconnect the channel is subscribed again by itself.
    ///
    /// Fails with [`Error::InvalidChannel`] before sending anything for a name the
    /// protocol forbids, [`Error::PermissionDenied`] if this identity may not
    /// subscribe to the channel (or its subscription token is refused),
    /// [`Error::TokenProvider`] if the subscription token provider failed,
    /// [`Error::Server`] if the gateway refuses otherwise (for example
    /// `too_many_channels`), and [`Error::Closed`] (or [`Error::Unauthorized`]) if
    /// the client stops first.
    ///
    /// On a channel with history (PROTOCOL.md 19), the client keeps the position of
    /// the last publication delivered and, after a reconnect, asks the gateway to
    /// recover from it: the publications missed meanwhile arrive on the subscription
    /// first, in order, each once, then the live ones. When they cannot be recovered
    /// (or the gateway sends a `gap`), [`ClientEvent::Stale`](crate::ClientEvent::Stale)
    /// tells the application to refetch the channel's state.
    pub async fn subscribe(&self, channel: impl Into<String>) -> Result<Subscription> {
        self.subscribe_with(channel, SubscribeOptions::default()).await
    }

    /// [`subscribe`](Self::subscribe) with options: `latest` asks for the channel's
    /// latest publication at once (a state channel, PROTOCOL.md 19.3).
    pub async fn subscribe_with(&self, channel: impl Into<String>, options: SubscribeOptions) -> Result<Subscription> {
        let channel = channel.into();
        check_channel(&channel)?;
        let id = NEXT_SUBSCRIPTION_ID.fetch_add(1, Ordering::Relaxed);
        let (messages, receiver) = mpsc::unbounded_channel();
        let (done, reply) = oneshot::channel();
        let ended = Arc::new(OnceLock::new());
        self.command(Command::Subscribe {
            channel: channel.clone(),
            subscription: id,
            messages,
            ended: ended.clone(),
            latest: options.latest,
            done,
        })?;
        // Built before the wait, so that a caller who gives up (drops this future)
        // still unsubscribes, through the subscription's Drop.
        let subscription = Subscription::new(channel, id, receiver, self.commands.clone(), ended);
        match reply.await {
            Ok(Ok(())) => Ok(subscription),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(self.observers.closed_error()),
        }
    }

    /// Publishes `data` (any value that serialises to JSON, `null` included) through the
    /// WebSocket, and waits for the gateway's ack. The gateway allows this only when
    /// started with `--allow-client-publish`; otherwise this fails with
    /// [`Error::Server`] with code `forbidden`. The usual way to publish is the HTTP API
    /// ([`AdminClient`](crate::AdminClient)). Not queued while disconnected:
    /// fails with [`Error::NotConnected`]. A frame above
    /// [`max_message_bytes`](ClientBuilder::max_message_bytes) fails with
    /// [`Error::MessageTooLarge`] without being sent.
    ///
    /// On a channel with history, the receipt carries the publication's offset and epoch.
    pub async fn publish<T: Serialize + ?Sized>(&self, channel: &str, data: &T) -> Result<Published> {
        self.publish_as(channel, data, None).await
    }

    /// [`publish`](Self::publish) with an idempotency key (PROTOCOL.md 19.9): 1 to 64
    /// characters of `[A-Za-z0-9_.:-]`, unique per publication. A publish with a key
    /// already used (within the gateway's history TTL) is not published again and is
    /// answered with the first one's offset and `duplicate: true`, so retrying after
    /// [`Error::BrokerTimeout`] (outcome unknown), [`Error::Timeout`] or
    /// [`Error::ConnectionLost`] is safe. A malformed key fails with [`Error::Protocol`]
    /// without being sent.
    pub async fn publish_with_key<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
        key: &str,
    ) -> Result<Published> {
        check_idempotency_key(key)?;
        self.publish_as(channel, data, Some(key.to_owned())).await
    }

    async fn publish_as<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
        idempotency_key: Option<String>,
    ) -> Result<Published> {
        check_channel(channel)?;
        let data = serde_json::to_value(data)?;
        let (done, reply) = oneshot::channel();
        self.command(Command::Publish {
            channel: channel.to_owned(),
            data,
            idempotency_key,
            done,
        })?;
        match self.reply("publish", reply).await? {
            Reply::Ack(ack) => Ok(Published {
                duplicate: ack.duplicate == Some(true),
                offset: ack.offset.filter(|_| ack.epoch.is_some()),
                epoch: ack.epoch.filter(|_| ack.offset.is_some()),
            }),
            Reply::History(_) | Reply::Presence(_) => Err(Error::Protocol(
                "a publish was answered with a history or presence frame".to_owned(),
            )),
        }
    }

    /// Reads a channel's history (PROTOCOL.md 19.6): the publications after
    /// `options.since`, or the latest ones, at most `options.limit`. Fails with
    /// [`Error::NoHistory`] on a channel that keeps none, [`Error::Server`] with
    /// `permission_denied` on one this connection may not subscribe to (or
    /// `unknown_op` from a gateway before history), [`Error::NotConnected`] while
    /// disconnected.
    pub async fn history(&self, channel: &str, options: HistoryOptions) -> Result<History> {
        check_channel(channel)?;
        let (done, reply) = oneshot::channel();
        self.command(Command::History {
            channel: channel.to_owned(),
            since: options.since,
            limit: options.limit,
            done,
        })?;
        match self.reply("history", reply).await? {
            Reply::History(history) => Ok(history),
            Reply::Ack(_) | Reply::Presence(_) => Err(Error::Protocol(
                "a history request was answered with another reply".to_owned(),
            )),
        }
    }

    /// Reads who is on a channel whose namespace has presence (PROTOCOL.md 21): its
    /// members (users, each once however many connections it has, with their token's
    /// `info`; at most the namespace's `presence_max` of them) and their exact count.
    /// The connection need not be subscribed; the permission is a subscribe's. To
    /// follow the changes, subscribe and read [`ClientEvent::Join`](crate::ClientEvent::Join)
    /// and [`ClientEvent::Leave`](crate::ClientEvent::Leave) from [`events`](Self::events).
    ///
    /// Fails with [`Error::PermissionDenied`] on a channel this connection may not
    /// subscribe to, [`Error::Server`] with `bad_channel` on one whose namespace has
    /// no presence (or `unknown_op` from a gateway older than presence),
    /// [`Error::NotConnected`] while disconnected.
    pub async fn presence(&self, channel: &str) -> Result<Presence> {
        check_channel(channel)?;
        let (done, reply) = oneshot::channel();
        self.command(Command::Presence {
            channel: channel.to_owned(),
            done,
        })?;
        match self.reply("presence", reply).await {
            Ok(Reply::Presence(presence)) => Ok(presence),
            Ok(Reply::Ack(_) | Reply::History(_)) => Err(Error::Protocol(
                "a presence request was answered with another reply".to_owned(),
            )),
            // The permission is a subscribe's (PROTOCOL.md 21), so is the refusal.
            Err(Error::Server {
                code: code @ ErrorCode::PermissionDenied,
                message,
                ..
            }) => Err(Error::PermissionDenied {
                channel: channel.to_owned(),
                code,
                message,
            }),
            // The gateway's own message only names the op; say what it means.
            Err(Error::Server {
                code: ErrorCode::UnknownOp,
                channel,
                ..
            }) => Err(Error::Server {
                op: "presence",
                code: ErrorCode::UnknownOp,
                message: "this gateway predates presence (PROTOCOL.md 21)".to_owned(),
                channel,
            }),
            Err(error) => Err(error),
        }
    }

    /// Sends a protocol `ping` and returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        let (done, reply) = oneshot::channel();
        self.command(Command::Ping { done })?;
        self.reply("ping", reply).await?;
        Ok(started.elapsed())
    }

    /// Closes the connection (close code 1000) and stops reconnecting; returns once
    /// the client has stopped. Subscription streams end. Safe to call more than once.
    pub async fn close(&self) {
        let (done, stopped) = oneshot::channel();
        if self.commands.send(Command::Close { done }).is_ok() {
            let _ = stopped.await;
        }
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.observers.state()
    }

    /// A watch on the connection state, for waiting on changes.
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.observers.watch_state()
    }

    /// Waits until the client is connected; fails with [`Error::Closed`] if it stops instead.
    pub async fn wait_connected(&self) -> Result<()> {
        let mut states = self.observers.watch_state();
        let state = states
            .wait_for(|s| matches!(s, ConnectionState::Connected | ConnectionState::Closed))
            .await
            .map(|s| *s)
            .unwrap_or(ConnectionState::Closed);
        match state {
            ConnectionState::Connected => Ok(()),
            _ => Err(self.observers.closed_error()),
        }
    }

    /// Why the client stopped, once it has; `None` while it runs: [`Error::Closed`]
    /// with the close code and reason, or [`Error::Unauthorized`] when the gateway
    /// refused the client's credentials.
    pub fn stop_reason(&self) -> Option<Error> {
        self.observers.stop_reason()
    }

    /// A stream of the events from now on; see [`ClientBuilder::build_with_events`] to
    /// see them from the start.
    pub fn events(&self) -> EventStream {
        self.observers.listen()
    }

    /// What the current (or last) connection's `welcome` said, if one arrived.
    pub fn welcome(&self) -> Option<Welcome> {
        self.observers.welcome()
    }

    /// The encoding this client asks for.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    fn command(&self, command: Command) -> Result<()> {
        self.commands.send(command).map_err(|_| self.observers.closed_error())
    }

    async fn reply(&self, op: &'static str, reply: oneshot::Receiver<Result<Reply>>) -> Result<Reply> {
        match tokio::time::timeout(self.request_timeout, reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.observers.closed_error()),
            Err(_) => Err(Error::Timeout {
                op,
                timeout: self.request_timeout,
            }),
        }
    }
}
