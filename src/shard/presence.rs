//! Presence for native connections (PROTOCOL.md 21): a connection with a user
//! that subscribes to a channel whose namespace enables presence joins its
//! members (through the broker, which counts users across connections and
//! instances), and leaves when it unsubscribes or closes; the channel's native
//! subscribers get `join` and `leave` frames, each built once per encoding; the
//! `presence` operation reads the members. Pusher connections have their own
//! presence path (`pusher.rs`); both see the same members.

use std::sync::Arc;

use bytes::Bytes;
use shardcast_proto::{Encoding, ErrorCode, PresenceEntry, ServerFrame};

use super::channel_table::Wire;
use super::{Shard, ShardState};
use crate::broker::{PresenceChange, PresenceMember};
use crate::payload::Payload;

/// A native connection's presence memberships, `(channel, user)`.
pub(super) type Memberships = Vec<(Arc<str>, Arc<str>)>;

/// Members counted at most for a `presence` reply's `count` (PROTOCOL.md 21).
const COUNT_AT_MOST: usize = 10_000;

impl Shard<'_> {
    /// After native connection `key` subscribed to `channel`: joins its members
    /// where the namespace enables presence and the connection has a user.
    pub(super) fn native_presence_join(&mut self, key: usize, channel: &str) {
        let env = self.env;
        if env.auth.rules().presence(channel).is_none() {
            return;
        }
        let ShardState {
            conns, native_presence, ..
        } = &mut *self.st;
        let Some(identity) = conns.get(key).and_then(|c| c.auth.as_ref()).map(|a| &a.identity) else {
            return;
        };
        if identity.is_anonymous() {
            return;
        }
        let info = identity
            .info
            .as_ref()
            .and_then(|raw| Payload::from_json(raw.get()).ok())
            .or_else(|| Payload::from_json("null").ok());
        let Some(info) = info else { return };
        let channel: Arc<str> = Arc::from(channel);
        let user: Arc<str> = Arc::from(identity.user.as_str());
        native_presence
            .entry(key)
            .or_default()
            .push((channel.clone(), user.clone()));
        let publisher = env.publisher.clone();
        env.spawner.spawn(move |_| async move {
            if let Err(e) = publisher
                .presence_join(channel.clone(), PresenceMember { user, info })
                .await
            {
                tracing::warn!(%channel, error = %e, "presence join failed; the connection is not a member");
            }
        });
    }

    /// Native connection `key` leaves the members of `channel` (of every channel
    /// with none); the broker says whether its user left.
    pub(super) fn native_presence_leave(&mut self, key: usize, channel: Option<&str>) {
        let Some(joined) = self.st.native_presence.get_mut(&key) else {
            return;
        };
        let mut leaving = Vec::new();
        joined.retain(|(c, user)| {
            let leaves = channel.map_or(true, |name| **c == *name);
            if leaves {
                leaving.push((c.clone(), user.clone()));
            }
            !leaves
        });
        if joined.is_empty() {
            self.st.native_presence.remove(&key);
        }
        for (channel, user) in leaving {
            let publisher = self.env.publisher.clone();
            self.env.spawner.spawn(move |_| async move {
                if let Err(e) = publisher.presence_leave(channel.clone(), user).await {
                    tracing::warn!(%channel, error = %e, "presence leave failed; the instance TTL will remove the member");
                }
            });
        }
    }

    /// A channel's members changed: `join` or `leave` to its native subscribers,
    /// where its namespace enables presence.
    pub(super) fn native_presence_changed(&mut self, name: &str, change: &PresenceChange) {
        let env = self.env;
        if env.auth.rules().presence(name).is_none() {
            return;
        }
        let ShardState { table, conns, cork, .. } = &mut *self.st;
        let Some(lists) = table.subscribers(name) else {
            return;
        };
        let frame = match change {
            PresenceChange::Joined(member) => ServerFrame::Join {
                channel: name.to_owned(),
                user: member.user.to_string(),
                info: serde_json::from_str(member.info.json().get()).unwrap_or(serde_json::Value::Null),
            },
            PresenceChange::Left(user) => ServerFrame::Leave {
                channel: name.to_owned(),
                user: user.to_string(),
            },
        };
        let deadline = env.close_deadline();
        for encoding in Encoding::ALL {
            let list = &lists[Wire::Native(encoding).index()];
            if list.is_empty() {
                continue;
            }
            let Some(bytes): Option<Bytes> = env.encode(encoding, &frame) else {
                continue;
            };
            for s in list {
                if let Some(conn) = conns.get_mut(s.conn as usize) {
                    env.deliver(cork, s.conn as usize, conn, &bytes, deadline);
                }
            }
        }
    }

    /// The `presence` operation: the channel's members, permission checked as for
    /// a subscribe.
    pub(super) fn presence_request(&mut self, key: usize, id: Option<u64>, channel: String) {
        let env = self.env;
        if let Err(e) = shardcast_proto::validate_channel(&channel, env.config.max_channel_len) {
            return self.reply_error(key, id, ErrorCode::BadChannel, &e.to_string());
        }
        let Some(max) = env.auth.rules().presence(&channel) else {
            let msg = format!("{channel}: its namespace has no presence");
            return self.reply_error(key, id, ErrorCode::BadChannel, &msg);
        };
        let Some(conn_id) = self.may_read(key, id, &channel) else {
            return;
        };
        let publisher = env.publisher.clone();
        env.spawner.spawn(move |core| async move {
            let members = publisher
                .presence_members(Arc::from(channel.as_str()), COUNT_AT_MOST)
                .await;
            core.with(|shard| {
                if shard.st.conns.get(key).map(|c| c.id) != Some(conn_id) {
                    return;
                }
                match members {
                    Ok(members) => {
                        let frame = ServerFrame::Presence {
                            id,
                            channel,
                            count: members.len() as u64,
                            members: members
                                .iter()
                                .take(max as usize)
                                .map(|m| PresenceEntry {
                                    user: m.user.to_string(),
                                    info: serde_json::from_str(m.info.json().get()).unwrap_or(serde_json::Value::Null),
                                })
                                .collect(),
                        };
                        shard.reply_frame(key, &frame);
                    }
                    Err(e) => shard.reply_error(key, id, ErrorCode::Unavailable, &e.to_string()),
                }
            });
        });
    }
}
