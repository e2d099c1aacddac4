//! What the history calls of a [`Client`](crate::Client) take and return
//! (PROTOCOL.md 19): [`SubscribeOptions`], the [`Published`] receipt of a publish
//! and the check of its idempotency key, and [`HistoryOptions`] and [`History`] for
//! reading a channel's history.

use shardcast_proto::{valid_idempotency_key, HistoryEntry, StreamPosition};

use crate::error::{Error, Result};

/// Refuses, before anything is sent, an idempotency key of a shape PROTOCOL.md 19.9
/// does not allow (the gateway would answer `bad_request`).
pub(crate) fn check_idempotency_key(key: &str) -> Result<()> {
    if valid_idempotency_key(key) {
        Ok(())
    } else {
        Err(Error::Protocol(format!(
            "idempotency key {key:?} is not 1 to 64 characters of [A-Za-z0-9_.:-]"
        )))
    }
}

/// Options of [`Client::subscribe_with`](crate::Client::subscribe_with).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// A state channel: on a channel with history, its latest publication is
    /// delivered at once after the subscribe (PROTOCOL.md 19.3). It takes effect when
    /// the client sends the channel's subscribe, so not for a subscription added to a
    /// channel already subscribed; it is left out when the client recovers instead.
    pub latest: bool,
}

impl SubscribeOptions {
    /// Asks for the channel's latest publication at once.
    pub fn latest(mut self) -> Self {
        self.latest = true;
        self
    }
}

/// What the gateway's ack of a publish says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// On a channel with history: the publication's offset.
    pub offset: Option<u64>,
    /// With `offset`: the channel's epoch.
    pub epoch: Option<String>,
    /// The idempotency key was used already: nothing was published again, and
    /// `offset` is the first publish's (PROTOCOL.md 19.9).
    pub duplicate: bool,
}

/// Options of [`Client::history`](crate::Client::history).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryOptions {
    /// Publications after this position (a [`Message`](crate::Message)'s `offset`
    /// and `epoch`); without it, the latest ones.
    pub since: Option<StreamPosition>,
    /// At most this many publications (the gateway's default and maximum is its `recover_max`).
    pub limit: Option<u64>,
}

impl HistoryOptions {
    /// The publications after `offset` of `epoch`.
    pub fn since(mut self, offset: u64, epoch: impl Into<String>) -> Self {
        self.since = Some(StreamPosition {
            offset,
            epoch: epoch.into(),
        });
        self
    }

    /// At most `limit` publications.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// A channel's history, as the gateway's `history` frame gives it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct History {
    /// The channel.
    pub channel: String,
    /// The channel's top offset: its latest publication's, 0 when it has none.
    pub offset: u64,
    /// The channel's epoch. A `since` of another epoch returns no publications.
    pub epoch: String,
    /// The publications, in offset order.
    pub publications: Vec<HistoryEntry>,
    /// Whether they reach from `since` (or the oldest retained one) to the top with
    /// no hole, within `limit`.
    pub complete: bool,
}
