//! What the driver is told: the [`Command`]s that client handles and subscriptions
//! send it, and the [`Config`] it is started with.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use shardcast_proto::{Encoding, StreamPosition};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::requests::Reply;
use crate::backoff::ReconnectPolicy;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::token::{SubscriptionTokenProvider, TokenProvider};

/// What a client handle or subscription asks of the driver.
pub(crate) enum Command {
    /// Add a subscription to a channel; `done` fires when the gateway acknowledged the channel.
    Subscribe {
        channel: String,
        subscription: u64,
        messages: mpsc::UnboundedSender<Message>,
        /// Where the driver records why it ended the subscription's stream.
        ended: Arc<OnceLock<Error>>,
        /// Ask for the channel's latest publication (when the channel's subscribe is sent).
        latest: bool,
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
        idempotency_key: Option<String>,
        done: oneshot::Sender<Result<Reply>>,
    },
    Ping {
        done: oneshot::Sender<Result<Reply>>,
    },
    /// Read a channel's history.
    History {
        channel: String,
        since: Option<StreamPosition>,
        limit: Option<u64>,
        done: oneshot::Sender<Result<Reply>>,
    },
    /// Read a channel's members.
    Presence {
        channel: String,
        done: oneshot::Sender<Result<Reply>>,
    },
    /// Close the connection and stop; `done` fires once stopped.
    Close {
        done: oneshot::Sender<()>,
    },
}

impl Command {
    /// Answers a command that arrived after the driver stopped: with `error`, or
    /// as done for a close.
    pub(crate) fn refuse(self, error: &Error) {
        match self {
            Command::Subscribe { done, .. } | Command::Unsubscribe { done: Some(done), .. } => {
                let _ = done.send(Err(error.clone()));
            }
            Command::Publish { done, .. }
            | Command::Ping { done }
            | Command::History { done, .. }
            | Command::Presence { done, .. } => {
                let _ = done.send(Err(error.clone()));
            }
            Command::Unsubscribe { done: None, .. } => {}
            Command::Close { done } => {
                let _ = done.send(());
            }
        }
    }
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
    /// A fixed connection token, used when there is no provider.
    pub token: Option<String>,
    /// Called before every connect and for every refresh of the connection token.
    pub token_provider: Option<TokenProvider>,
    /// Called before every subscribe and every `sub_refresh`.
    pub subscription_token: Option<SubscriptionTokenProvider>,
    pub websocket: WebSocketConfig,
    pub max_message_bytes: usize,
    /// Offer permessage-deflate.
    pub compression: bool,
}

/// Heartbeat settings; `None` fields default from the welcome's `ping_interval_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeartbeatTiming {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
}
