//! The crate's one error type. Every fallible call of the client, the admin API
//! client and the token hook reports an [`Error`]; the variants tell the cases
//! apart and carry the protocol's [`ErrorCode`] and close codes where there are
//! any, so callers can match on them instead of parsing messages.

use std::sync::Arc;
use std::time::Duration;

use shardcast_proto::{ChannelNameError, ErrorCode, UnsubscribeCode};

/// A boxed error from user code (a token provider).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in this crate.
///
/// `Clone` so that one failure (for example a refused subscription shared by
/// several [`Subscription`](crate::Subscription)s) can be handed to every waiter.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The gateway or admin URL cannot be used.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A channel name the protocol does not allow; nothing was sent.
    #[error("invalid channel name {channel:?}: {source}")]
    InvalidChannel {
        /// The refused name.
        channel: String,
        /// What is wrong with it.
        #[source]
        source: ChannelNameError,
    },

    /// The gateway answered a WebSocket request with an `error` frame.
    #[error("the gateway refused {op}: {}: {message}", code.as_str())]
    Server {
        /// The operation that was refused (`subscribe`, `publish`, ...).
        op: &'static str,
        /// The protocol's error code.
        code: ErrorCode,
        /// The gateway's human-readable detail (not stable; do not parse it).
        message: String,
        /// The channel the request named, if it named one.
        channel: Option<String>,
    },

    /// The channel keeps no history (`no_history`, PROTOCOL.md 19.6): the answer to
    /// [`Client::history`](crate::Client::history) on such a channel.
    #[error("{channel} keeps no history: {message}")]
    NoHistory {
        /// The channel.
        channel: String,
        /// The gateway's detail.
        message: String,
    },

    /// The gateway's broker did not answer a publish in time (`timeout`, PROTOCOL.md
    /// 14.3): the publication may or may not have been delivered. Retrying with the
    /// same idempotency key is safe (PROTOCOL.md 19.9). Unlike [`Error::Timeout`],
    /// the gateway did answer.
    #[error("the outcome of the publish to {channel} is unknown (the broker did not answer in time): {message}")]
    BrokerTimeout {
        /// The channel.
        channel: String,
        /// The gateway's detail.
        message: String,
    },

    /// The admin HTTP API answered with an error status.
    #[error("the admin API answered HTTP {status}: {}: {message}", code.as_str())]
    Api {
        /// The HTTP status.
        status: u16,
        /// The protocol's error code from the body (`Unknown` if the body had none).
        code: ErrorCode,
        /// The body's message, or the body itself when it was not the API's error shape.
        message: String,
    },

    /// A request got no reply in time.
    #[error("no reply to {op} within {timeout:?}")]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// How long the client waited.
        timeout: Duration,
    },

    /// The operation needs an open connection and there is none. Publishes and
    /// pings are not queued while disconnected: sent later, they could surprise.
    #[error("cannot {op}: not connected")]
    NotConnected {
        /// The operation.
        op: &'static str,
    },

    /// The connection closed while a request was waiting for its reply.
    #[error("connection lost while waiting for the reply to {op} (close {code}: {reason})")]
    ConnectionLost {
        /// The operation that was waiting.
        op: &'static str,
        /// The WebSocket close code (1006 when the connection ended without one).
        code: u16,
        /// The close reason.
        reason: String,
    },

    /// A frame larger than the gateway's maximum message size, refused before sending:
    /// the gateway would close with 1009, after which the client must not reconnect.
    #[error("frame of {size} bytes exceeds the maximum message size of {limit} bytes")]
    MessageTooLarge {
        /// The encoded frame's size in bytes.
        size: usize,
        /// The configured limit ([`ClientBuilder::max_message_bytes`](crate::ClientBuilder::max_message_bytes)).
        limit: usize,
    },

    /// The client has stopped: closed by the application, or after a close code
    /// or HTTP refusal after which the protocol says not to reconnect.
    #[error("client closed{}", closed_detail(*.code, reason))]
    Closed {
        /// The close code that stopped the client; `None` when the application closed it.
        code: Option<u16>,
        /// Why it stopped.
        reason: String,
    },

    /// The subscription was cancelled (unsubscribed) before the gateway acknowledged it.
    #[error("subscription to {channel} was cancelled before it was acknowledged")]
    Cancelled {
        /// The channel.
        channel: String,
    },

    /// The gateway answered the WebSocket upgrade with an HTTP status that means
    /// the request itself is wrong (400, 404, 405, 426, 431), so retrying is pointless.
    /// (401 is [`Error::Unauthorized`].)
    #[error("the gateway refused the WebSocket upgrade with HTTP {status}: {body}")]
    HandshakeRejected {
        /// The HTTP status.
        status: u16,
        /// The response body, for people.
        body: String,
    },

    /// The gateway refused this client's credentials, so the client stopped rather
    /// than retry with the same token: HTTP 401 on the upgrade (a refused
    /// `Authorization` token), close 4003 (token refused, or a refused `refresh`),
    /// close 4004 (an operator disconnected this user), or close 4002 (token
    /// expired) when there is no token provider to fetch a new one.
    #[error("authentication failed ({code}): {reason}")]
    Unauthorized {
        /// The HTTP status (401) or the close code (4002, 4003, 4004).
        code: u16,
        /// The gateway's explanation (`expired`, `bad signature`, …).
        reason: String,
    },

    /// The gateway refused a subscription for this identity (PROTOCOL.md 18.3): the
    /// channel rules do not grant it (`code` [`ErrorCode::PermissionDenied`], also for
    /// a subscription token of another channel or user), or the subscription token is
    /// malformed, badly signed or expired ([`ErrorCode::Unauthorized`]).
    #[error("not allowed to subscribe to {channel} ({}): {message}", code.as_str())]
    PermissionDenied {
        /// The channel.
        channel: String,
        /// [`ErrorCode::PermissionDenied`] or [`ErrorCode::Unauthorized`].
        code: ErrorCode,
        /// The gateway's detail.
        message: String,
    },

    /// The gateway ended a subscription (`unsubscribed` frame, PROTOCOL.md 7.7): its
    /// subscription token expired, or a permission was withdrawn.
    #[error("the gateway ended the subscription to {channel} ({code:?}): {message}")]
    Unsubscribed {
        /// The channel.
        channel: String,
        /// Why.
        code: UnsubscribeCode,
        /// The gateway's detail.
        message: String,
    },

    /// The token provider failed; the connect attempt counts as failed.
    #[error("token provider failed: {0}")]
    TokenProvider(#[source] Arc<dyn std::error::Error + Send + Sync + 'static>),

    /// The peer said something this client cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// A socket-level failure (connect, read, write).
    #[error("I/O error: {0}")]
    Io(#[source] Arc<std::io::Error>),

    /// The data to publish could not be turned into JSON.
    #[error("cannot serialise the data as JSON: {0}")]
    Serialize(#[source] Arc<serde_json::Error>),

    /// The client needs a Tokio runtime and was built outside one.
    #[error("the client must be built inside a Tokio runtime")]
    NoRuntime,
}

fn closed_detail(code: Option<u16>, reason: &str) -> String {
    match (code, reason.is_empty()) {
        (Some(code), true) => format!(" after close code {code}"),
        (Some(code), false) => format!(" after close code {code}: {reason}"),
        (None, true) => String::new(),
        (None, false) => format!(": {reason}"),
    }
}

impl Error {
    /// The protocol error code this error carries, if it came from the gateway.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } | Error::Api { code, .. } | Error::PermissionDenied { code, .. } => Some(*code),
            Error::NoHistory { .. } => Some(ErrorCode::NoHistory),
            Error::BrokerTimeout { .. } => Some(ErrorCode::Timeout),
            _ => None,
        }
    }

    /// The error for an `error` frame answering request `op` on `channel`: a
    /// dedicated variant where the code has one, [`Error::Server`] otherwise.
    pub(crate) fn from_reply(op: &'static str, code: ErrorCode, message: String, channel: Option<String>) -> Self {
        match (code, channel) {
            (ErrorCode::NoHistory, Some(channel)) => Error::NoHistory { channel, message },
            (ErrorCode::Timeout, Some(channel)) => Error::BrokerTimeout { channel, message },
            (code, channel) => Error::Server {
                op,
                code,
                message,
                channel,
            },
        }
    }

    pub(crate) fn io(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Serialize(Arc::new(e))
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
