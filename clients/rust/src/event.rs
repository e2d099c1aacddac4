//! What the application can observe about the connection: the current
//! [`ConnectionState`] and the stream of [`ClientEvent`]s, plus the fan-out that
//! delivers each event to every [`EventStream`].

use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use serde_json::Value;
use shardcast_proto::{Encoding, ErrorCode, GapReason, UnsubscribeCode};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::error::Error;
use crate::transport::Welcome;

/// Where the client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// A WebSocket is being opened (or the token fetched); no welcome yet.
    Connecting,
    /// The gateway's welcome arrived; requests can be sent.
    Connected,
    /// The connection was lost; the next attempt starts after a delay.
    Reconnecting,
    /// Stopped for good: closed by the application, or after a close code or HTTP
    /// refusal after which the protocol says not to reconnect.
    Closed,
}

/// Something that happened to the connection, in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A connect attempt starts: `attempt` is 0 for the first connect, n for the n-th retry.
    Connecting {
        /// Consecutive failed attempts before this one.
        attempt: u32,
    },
    /// The gateway's welcome arrived.
    Connected {
        /// The gateway instance's id (for logs; derive no behaviour from it).
        node: String,
        /// The shard of that instance that owns the connection.
        shard: u32,
        /// The gateway's ping interval, which sizes the client's heartbeat.
        ping_interval: Duration,
        /// The encoding the gateway chose.
        encoding: Encoding,
        /// The authenticated user; `None` on an anonymous connection.
        user: Option<String>,
    },
    /// A connection closed, or a connect attempt failed.
    Disconnected {
        /// The close code; 1006 when there was no close frame (a dropped or failed connection).
        code: u16,
        /// The close reason, or what went wrong.
        reason: String,
        /// Whether the connection had been welcomed.
        was_connected: bool,
        /// Whether the client will try again.
        will_reconnect: bool,
    },
    /// The next attempt is scheduled.
    Reconnecting {
        /// Retry number (1 for the first retry after a loss).
        attempt: u32,
        /// The wait before it, backoff and hints included.
        delay: Duration,
        /// The gateway's hint (close reason `retry_ms` or HTTP `Retry-After`), if any.
        retry_hint: Option<Duration>,
    },
    /// The gateway reports that publications of a subscribed channel may have been
    /// missed on this (still open) connection (PROTOCOL.md 9.3): re-read the
    /// application's source of truth for it if every message matters.
    Gap {
        /// The channel.
        channel: String,
    },
    /// Publications of a subscribed channel may have been missed and the client could
    /// not recover them (PROTOCOL.md 19.7): a re-subscribe after a reconnect was
    /// answered `recovered: false`, or the gateway sent a `gap` (which
    /// [`ClientEvent::Gap`] reports too, just before). The application should refetch
    /// the channel's state. Channels with history recover by themselves otherwise,
    /// so this is the only case to handle.
    Stale {
        /// The channel.
        channel: String,
        /// Why history could not cover the loss: [`GapReason::NoHistory`] (the channel
        /// keeps none), [`GapReason::EpochChanged`] (its history was lost),
        /// [`GapReason::TooFar`] (more was missed than history holds or one recovery
        /// returns), [`GapReason::Unavailable`] (the store could not be read), or
        /// [`GapReason::Unknown`] (a `gap` without a reason, from a gateway that
        /// predates history, or a newer gateway's reason).
        reason: GapReason,
        /// What told the client.
        source: StaleSource,
    },
    /// A user became a member of a subscribed channel whose namespace has presence
    /// (PROTOCOL.md 21): its first connection subscribed. Once per change,
    /// cluster-wide; this connection's own user included, though a join announced
    /// before the subscribe was acknowledged is missed. Not recovered after a
    /// reconnect: read [`Client::presence`](crate::Client::presence) again on the
    /// [`ClientEvent::Subscribed`] that follows it.
    Join {
        /// The channel.
        channel: String,
        /// The user id (its token's `sub`).
        user: String,
        /// What the user's token says of it (the `info` claim), or null.
        info: Value,
    },
    /// A user stopped being a member of a subscribed channel with presence: its
    /// last connection left (PROTOCOL.md 21). See [`ClientEvent::Join`].
    Leave {
        /// The channel.
        channel: String,
        /// The user id.
        user: String,
    },
    /// A channel's subscription was acknowledged: the first time, or again after a reconnect.
    Subscribed {
        /// The channel.
        channel: String,
        /// True when this re-subscribes after a reconnect. Publications made while the
        /// client was disconnected are lost (at-most-once delivery), unless the channel
        /// keeps history: then they are recovered, or [`ClientEvent::Stale`] follows.
        resubscribed: bool,
    },
    /// The gateway refused a subscription for good (for example `too_many_channels`
    /// after a reconnect); that channel's subscription streams end.
    SubscribeRefused {
        /// The channel.
        channel: String,
        /// The protocol's error code.
        code: ErrorCode,
        /// The gateway's detail.
        message: String,
    },
    /// The gateway ended a channel's subscription (`unsubscribed`, PROTOCOL.md 7.7):
    /// its subscription token expired, or a permission was withdrawn. That channel's
    /// subscription streams end; [`Subscription::end_reason`](crate::Subscription::end_reason)
    /// says why. Subscribing again (with a fresh token) is allowed.
    Unsubscribed {
        /// The channel.
        channel: String,
        /// Why.
        code: UnsubscribeCode,
        /// The gateway's detail.
        message: String,
    },
    /// A token was replaced before it expired: the connection's (`channel` `None`,
    /// a `refresh`) or a channel's subscription token (a `sub_refresh`).
    TokenRefreshed {
        /// The channel whose subscription token was refreshed; `None` for the connection's.
        channel: Option<String>,
        /// The new expiry, seconds since the Unix epoch, where known.
        expires_at: Option<u64>,
    },
    /// A token refresh failed (the provider failed or the gateway said no). It is
    /// tried again, sooner each time; if the token expires all the same, the gateway
    /// closes with 4002 (and the client reconnects with a new token) or ends the
    /// subscription with `unsubscribed`.
    TokenRefreshFailed {
        /// The channel whose subscription token it was; `None` for the connection's.
        channel: Option<String>,
        /// What went wrong.
        reason: String,
    },
    /// The gateway refused this client's credentials (HTTP 401, close 4003), an
    /// operator disconnected the user (4004), or the token expired with no provider
    /// to fetch a new one (4002). The client does not retry; `Closed` follows, and
    /// calls fail with [`Error::Unauthorized`].
    Unauthorized {
        /// The HTTP status or close code.
        code: u16,
        /// The gateway's explanation.
        reason: String,
    },
    /// The client stopped for good; no further events follow.
    Closed {
        /// The close code that stopped it (1006 for a refused upgrade or a last failed
        /// attempt, which had no close frame); `None` when the application closed it.
        code: Option<u16>,
        /// Why it stopped.
        reason: String,
    },
}

/// What told the client that a channel's stream has a hole ([`ClientEvent::Stale`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaleSource {
    /// A re-subscribe with `recover` was answered `recovered: false`.
    Recover,
    /// A `gap` frame on an open connection.
    Gap,
}

/// Events of one client, as a [`Stream`]; created by
/// [`Client::events`](crate::Client::events). Unbounded: events are rare, and a
/// listener that never reads only holds a few small values (on channels with
/// presence, a join and a leave per member that comes and goes: keep reading, or
/// drop the stream). Ends after [`ClientEvent::Closed`].
#[derive(Debug)]
pub struct EventStream {
    receiver: mpsc::UnboundedReceiver<ClientEvent>,
}

impl EventStream {
    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.receiver.recv().await
    }
}

impl Stream for EventStream {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        self.receiver.poll_recv(cx)
    }
}

/// The state and the event listeners, shared by the client handles and the driver task.
#[derive(Debug)]
pub(crate) struct Observers {
    state: watch::Sender<ConnectionState>,
    listeners: Mutex<Vec<mpsc::UnboundedSender<ClientEvent>>>,
    welcome: Mutex<Option<Welcome>>,
    /// Why the client stopped, once it has.
    stopped: Mutex<Option<Error>>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (each
/// critical section here is a single assignment or push).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Observers {
    pub(crate) fn new() -> Self {
        Observers {
            state: watch::Sender::new(ConnectionState::Connecting),
            listeners: Mutex::new(Vec::new()),
            welcome: Mutex::new(None),
            stopped: Mutex::new(None),
        }
    }

    pub(crate) fn welcome(&self) -> Option<Welcome> {
        lock(&self.welcome).clone()
    }

    /// The error for calls made after the client stopped.
    pub(crate) fn closed_error(&self) -> Error {
        self.stop_reason().unwrap_or(Error::Closed {
            code: None,
            reason: "client closed".to_owned(),
        })
    }

    /// Why the client stopped, once it has.
    pub(crate) fn stop_reason(&self) -> Option<Error> {
        lock(&self.stopped).clone()
    }

    pub(crate) fn set_stopped(&self, error: Error) {
        *lock(&self.stopped) = Some(error);
    }

    pub(crate) fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    pub(crate) fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    pub(crate) fn set_state(&self, state: ConnectionState) {
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    /// A new listener; after the client closed, its stream ends at once.
    pub(crate) fn listen(&self) -> EventStream {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut listeners = self.lock_listeners();
        // Checked under the lock: the driver sets Closed before it emits the last
        // event, so a listener added here either gets that event or is never added.
        if self.state() != ConnectionState::Closed {
            listeners.push(sender);
        }
        EventStream { receiver }
    }

    pub(crate) fn emit(&self, event: ClientEvent) {
        let mut listeners = self.lock_listeners();
        listeners.retain(|l| l.send(event.clone()).is_ok());
        if matches!(event, ClientEvent::Closed { .. }) {
            // Dropping the senders ends every stream after this last event.
            listeners.clear();
        }
    }

    /// The client got `welcome`: it is connected.
    pub(crate) fn connected(&self, welcome: &Welcome) {
        debug!(node = welcome.node, shard = welcome.shard, "connected");
        *lock(&self.welcome) = Some(welcome.clone());
        self.set_state(ConnectionState::Connected);
        self.emit(ClientEvent::Connected {
            node: welcome.node.clone(),
            shard: welcome.shard,
            ping_interval: welcome.ping_interval,
            encoding: welcome.encoding,
            user: welcome.user.clone(),
        });
    }

    /// The connection (or an attempt at one) ended with close `code` and `reason`.
    pub(crate) fn disconnected(&self, code: u16, reason: &str, was_connected: bool, will_reconnect: bool) {
        debug!(code, reason, will_reconnect, "disconnected");
        self.emit(ClientEvent::Disconnected {
            code,
            reason: reason.to_owned(),
            was_connected,
            will_reconnect,
        });
    }

    /// The client stopped for good, with `error` as what calls fail with from now
    /// on: the last events, after which every event stream ends.
    pub(crate) fn closed(&self, code: Option<u16>, reason: String, error: &Error) {
        self.set_state(ConnectionState::Closed);
        if let Error::Unauthorized { code, reason } = error {
            self.emit(ClientEvent::Unauthorized {
                code: *code,
                reason: reason.clone(),
            });
        }
        self.emit(ClientEvent::Closed { code, reason });
    }

    fn lock_listeners(&self) -> MutexGuard<'_, Vec<mpsc::UnboundedSender<ClientEvent>>> {
        lock(&self.listeners)
    }
}
