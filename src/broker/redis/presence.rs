//! Presence and occupancy on Redis: the calls to the functions of `presence.lua`
//! (members per user across instances, announced once on the channel's own topic)
//! and `occupancy.lua` (which instances have subscribers on a channel), and the
//! index of the channels each instance touched, so that a dead instance's share
//! can be removed. What each costs in Redis operations is said in the `.lua` files.

use std::sync::Arc;

use fred::prelude::*;

use super::history::fcall;
use crate::broker::{BrokerError, PresenceMember};
use crate::payload::Payload;

/// How long a channel's presence keys outlive their last change: abandoned
/// channels vanish; live ones are rewritten on every join.
const KEY_TTL_SECS: u64 = 24 * 3600;

/// The keys of a channel's presence, hash-tagged to the channel's slot: the
/// users, their info, and `node`'s own connections.
fn keys(prefix: &str, channel: &str, node: &str) -> Vec<String> {
    let tag = format!("{{{prefix}{channel}}}");
    vec![
        format!("{prefix}presence:{tag}:users"),
        format!("{prefix}presence:{tag}:info"),
        format!("{prefix}presence:{tag}:node:{node}"),
    ]
}

/// Context of one presence call (owned, so a call's future owns it).
pub(super) struct PresenceCall {
    pub(super) client: Client,
    pub(super) cluster: bool,
    pub(super) prefix: String,
    /// This instance's id: its node hash, and the origin of its announcements.
    pub(super) origin: String,
}

impl PresenceCall {
    fn sharded(&self) -> String {
        if self.cluster { "1" } else { "0" }.to_owned()
    }

    fn topic(&self, channel: &str) -> String {
        format!("{}{channel}", self.prefix)
    }

    /// One more connection of `member.user` here; true when the user became a member.
    pub(super) async fn join(&self, channel: &str, member: &PresenceMember) -> Result<bool, BrokerError> {
        let args = vec![
            self.topic(channel),
            member.user.to_string(),
            member.info.json().get().to_owned(),
            self.origin.to_owned(),
            self.sharded(),
            KEY_TTL_SECS.to_string(),
        ];
        let keys = keys(&self.prefix, channel, &self.origin);
        let reply = fcall(&self.client, self.cluster, "shardcast_presence_join", keys, args).await?;
        Ok(reply.as_u64() == Some(1))
    }

    /// One connection of `user` fewer here; true when the user stopped being a member.
    pub(super) async fn leave(&self, channel: &str, user: &str) -> Result<bool, BrokerError> {
        let args = vec![
            self.topic(channel),
            user.to_owned(),
            self.origin.to_owned(),
            self.sharded(),
        ];
        let keys = keys(&self.prefix, channel, &self.origin);
        let reply = fcall(&self.client, self.cluster, "shardcast_presence_leave", keys, args).await?;
        Ok(reply.as_u64() == Some(1))
    }

    /// `node` (another instance) is gone: its connections' users leave `channel`;
    /// the users that stopped being members.
    pub(super) async fn forget(&self, channel: &str, node: &str) -> Result<Vec<Arc<str>>, BrokerError> {
        let keys = keys(&self.prefix, channel, node);
        let args = vec![self.topic(channel), self.sharded()];
        let reply = fcall(&self.client, self.cluster, "shardcast_presence_forget", keys, args).await?;
        Ok(reply
            .into_array()
            .into_iter()
            .filter_map(|user| user.as_string())
            .map(Arc::from)
            .collect())
    }

    /// Records whether `node` has subscribers on `channel`; true when that occupied
    /// the channel (its first instance) or vacated it (its last).
    pub(super) async fn occupancy(&self, channel: &str, node: &str, occupied: bool) -> Result<bool, BrokerError> {
        let key = format!("{}occupancy:{{{}{channel}}}", self.prefix, self.prefix);
        let args = vec![node.to_owned(), if occupied { "1" } else { "0" }.to_owned()];
        let reply = fcall(&self.client, self.cluster, "shardcast_occupancy", vec![key], args).await?;
        Ok(reply.as_u64() == Some(1))
    }

    /// The channel's members, at most `limit`.
    pub(super) async fn members(&self, channel: &str, limit: usize) -> Result<Vec<PresenceMember>, BrokerError> {
        let keys = keys(&self.prefix, channel, &self.origin);
        let reply = fcall(
            &self.client,
            self.cluster,
            "shardcast_presence_members",
            keys,
            vec![limit.to_string()],
        )
        .await?;
        let items = reply.into_array();
        let mut members = Vec::with_capacity(items.len() / 2);
        for pair in items.chunks(2) {
            let [user, info] = pair else {
                return Err(BrokerError::Failed(
                    "unexpected reply from shardcast_presence_members".into(),
                ));
            };
            let (Some(user), Some(info)) = (user.as_string(), info.as_str()) else {
                continue;
            };
            // Info was validated when its member joined; a broken one is skipped.
            if let Ok(info) = Payload::from_json(&info) {
                members.push(PresenceMember {
                    user: Arc::from(user),
                    info,
                });
            }
        }
        Ok(members)
    }
}

/// The key of the set of channels where `node` has (or had) subscribers or
/// presence, hash-tagged to the node: what to clean up when it dies.
pub(super) fn node_index(prefix: &str, node: &str) -> String {
    format!("{prefix}node:{{{node}}}:channels")
}
