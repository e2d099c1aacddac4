//! The in-process presence store: per channel, each user's connections counted
//! per instance on the bus, so a user is one member however many connections and
//! instances it has, and joins and leaves are announced once. Owned by the bus
//! thread, so it takes no lock; an instance leaving the bus takes its users along.

use std::collections::HashMap;
use std::sync::Arc;

use super::PresenceMember;
use crate::payload::Payload;

struct Member {
    info: Payload,
    /// Connections per bus member (instance).
    connections: HashMap<u64, u32>,
}

/// Every channel's members on this process's bus.
#[derive(Default)]
pub struct PresenceBook {
    channels: HashMap<Arc<str>, HashMap<Arc<str>, Member>>,
}

impl PresenceBook {
    /// One more connection of `member.user` on instance `from`; true when the user
    /// became a member (its first connection anywhere).
    pub fn join(&mut self, channel: &Arc<str>, from: u64, member: &PresenceMember) -> bool {
        let users = self.channels.entry(channel.clone()).or_default();
        let entry = users.entry(member.user.clone()).or_insert_with(|| Member {
            info: member.info.clone(),
            connections: HashMap::new(),
        });
        let first = entry.connections.is_empty();
        *entry.connections.entry(from).or_default() += 1;
        first
    }

    /// One connection of `user` on instance `from` fewer; true when the user
    /// stopped being a member (its last connection anywhere).
    pub fn leave(&mut self, channel: &Arc<str>, from: u64, user: &str) -> bool {
        let Some(users) = self.channels.get_mut(channel) else {
            return false;
        };
        let Some(entry) = users.get_mut(user) else {
            return false;
        };
        if let Some(n) = entry.connections.get_mut(&from) {
            *n -= 1;
            if *n == 0 {
                entry.connections.remove(&from);
            }
        }
        let last = entry.connections.is_empty();
        if last {
            users.remove(user);
            if users.is_empty() {
                self.channels.remove(channel);
            }
        }
        last
    }

    /// The channel's members, at most `limit`.
    pub fn members(&self, channel: &str, limit: usize) -> Vec<PresenceMember> {
        self.channels.get(channel).map_or_else(Vec::new, |users| {
            users
                .iter()
                .take(limit)
                .map(|(user, m)| PresenceMember {
                    user: user.clone(),
                    info: m.info.clone(),
                })
                .collect()
        })
    }

    /// Instance `from` is gone: its connections leave; returns the (channel, user)
    /// pairs that stopped being members.
    pub fn forget(&mut self, from: u64) -> Vec<(Arc<str>, Arc<str>)> {
        let mut left = Vec::new();
        for (channel, users) in &mut self.channels {
            users.retain(|user, m| {
                m.connections.remove(&from);
                let gone = m.connections.is_empty();
                if gone {
                    left.push((channel.clone(), user.clone()));
                }
                !gone
            });
        }
        self.channels.retain(|_, users| !users.is_empty());
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: &str) -> PresenceMember {
        PresenceMember {
            user: Arc::from(user),
            info: Payload::from_json(r#"{"name":"x"}"#).unwrap(),
        }
    }

    #[test]
    fn a_user_is_one_member_across_connections_and_instances() {
        let mut book = PresenceBook::default();
        let ch: Arc<str> = Arc::from("presence-room");
        assert!(book.join(&ch, 1, &member("ann")));
        assert!(!book.join(&ch, 1, &member("ann")), "a second tab");
        assert!(!book.join(&ch, 2, &member("ann")), "another instance");
        assert_eq!(book.members(&ch, 10).len(), 1);
        assert!(!book.leave(&ch, 1, "ann"));
        assert!(!book.leave(&ch, 1, "ann"));
        assert!(book.leave(&ch, 2, "ann"), "the last connection anywhere");
        assert!(book.members(&ch, 10).is_empty());
    }

    #[test]
    fn a_gone_instance_takes_its_users_along() {
        let mut book = PresenceBook::default();
        let ch: Arc<str> = Arc::from("presence-room");
        book.join(&ch, 1, &member("ann"));
        book.join(&ch, 1, &member("bob"));
        book.join(&ch, 2, &member("bob"));
        assert_eq!(book.forget(1), vec![(ch.clone(), Arc::from("ann"))]);
        assert_eq!(book.members(&ch, 10).len(), 1);
    }
}
