//! The fan-out path: everything between a publish and the shards. The
//! [`publisher`] is the one path every publish takes (local router plus broker);
//! the [`router`] knows which shards want which channel, numbers publications and
//! keeps the broker subscribed; a [`publication`] is built once and shared, as the
//! same frame bytes, by every shard; operator [`control`] commands take the same
//! road to every shard of every instance. Below it is only the broker; the shards above
//! reach the router through its handle and it reaches them through
//! [`router::ShardMailbox`], which the shard layer implements. A channel with
//! history keeps its order on the instance through a [`history_cursor`].

pub mod control;
pub mod history_cursor;
pub mod occupancy;
pub mod publication;
pub mod publisher;
pub mod router;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::ChannelRules;
use crate::broker::HistoryPolicy;

/// Which channels keep history, as broker policies: the channel rules' settings
/// (PROTOCOL.md 19.1), read by the publisher, the router and the shards alike.
#[derive(Clone, Default)]
pub struct ChannelHistory {
    rules: Arc<ChannelRules>,
}

impl ChannelHistory {
    /// The history settings of these rules.
    pub fn new(rules: Arc<ChannelRules>) -> ChannelHistory {
        ChannelHistory { rules }
    }

    /// How `channel` keeps history, and the most publications one read returns;
    /// none when it keeps none.
    pub fn policy(&self, channel: &str) -> Option<(HistoryPolicy, usize)> {
        self.rules.history(channel).map(|h| {
            let policy = HistoryPolicy {
                size: h.size,
                ttl: Duration::from_secs(h.ttl_secs),
            };
            (policy, h.recover_max as usize)
        })
    }

    /// How long an idempotency key is remembered on `channel`.
    pub fn idempotency_window(&self, channel: &str) -> Duration {
        Duration::from_secs(self.rules.idempotency_window_secs(channel))
    }
}
