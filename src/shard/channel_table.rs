//! A shard's channel-to-subscribers table.
//!
//! Slab-backed and owned by one shard thread, so nothing in it is locked. Each
//! channel keeps its subscribers in one dense list per [`Wire`] (each encoding of
//! the native protocol, and the Pusher protocol), so a fan-out walks a contiguous
//! array and writes the one frame of that wire to each entry.
//! Every subscription knows its position in that list, which makes unsubscribing
//! O(1) (swap-remove and fix the moved entry) even in a channel of 100k sockets.

use std::collections::HashMap;
use std::sync::Arc;

use shardcast_proto::Encoding;
use slab::Slab;

use crate::broker::Position;

/// What a subscriber's frames look like: one subscriber list per wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The native protocol in an encoding.
    Native(Encoding),
    /// The Pusher Channels protocol (PROTOCOL.md 20).
    Pusher,
}

impl Wire {
    /// The wires, in list order.
    pub const ALL: [Wire; WIRES] = [
        Wire::Native(Encoding::Json),
        Wire::Native(Encoding::MsgPack),
        Wire::Pusher,
    ];

    /// The wire's list in a channel's [`SubscriberLists`].
    pub fn index(self) -> usize {
        match self {
            Wire::Native(encoding) => encoding.index(),
            Wire::Pusher => 2,
        }
    }
}

impl From<Encoding> for Wire {
    fn from(encoding: Encoding) -> Wire {
        Wire::Native(encoding)
    }
}

/// The number of wires.
pub const WIRES: usize = 3;

/// A channel's subscribers, one list per wire (by [`Wire::index`]).
pub type SubscriberLists = [Vec<Subscriber>; WIRES];

/// Key of a subscription, held by its connection.
pub type SubscriptionKey = u32;

/// One entry of a channel's subscriber list.
#[derive(Debug, Clone, Copy)]
pub struct Subscriber {
    /// The connection's slab key in its shard.
    pub conn: u32,
    /// The subscription's key.
    pub sub: SubscriptionKey,
}

/// A subscriber waiting for the router (and broker) to confirm a new channel.
#[derive(Debug, Clone, Copy)]
pub struct PendingAck {
    /// The connection's slab key.
    pub conn: u32,
    /// The connection's unique id (slab keys are reused).
    pub conn_id: u64,
    /// The subscribe request's id.
    pub request: Option<u64>,
    /// The subscribe asked to `recover` on a channel without history: its ack
    /// says `recovered: false`.
    pub unrecoverable: bool,
}

/// Whether this shard's subscription to a channel is confirmed by the router.
#[derive(Debug)]
pub enum ChannelState {
    /// Waiting for the router; these subscribers get their ack once it confirms.
    Pending(Vec<PendingAck>),
    /// Confirmed: publications flow.
    Active,
}

#[derive(Debug)]
struct Channel {
    name: Arc<str>,
    subscribers: SubscriberLists,
    state: ChannelState,
    /// On a channel with history: the last position this shard delivered (or was
    /// told it starts after); per channel, never per subscriber.
    position: Option<Position>,
}

#[derive(Debug, Clone, Copy)]
struct Subscription {
    channel: u32,
    wire: Wire,
    pos: u32,
}

/// A channel whose last subscriber on this shard left.
#[derive(Debug)]
pub struct Emptied {
    /// The channel's name.
    pub name: Arc<str>,
    /// Subscribe acks that were waiting for the router when the channel emptied.
    pub pending: Vec<PendingAck>,
}

/// What a new subscription means for the shard.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// The shard had no subscriber of this channel: tell the router, ack after it confirms.
    FirstOnShard,
    /// The channel is waiting for the router's confirmation: ack with it.
    Pending,
    /// The channel is live: ack now.
    Active,
}

/// The channel table of one shard.
#[derive(Debug, Default)]
pub struct ChannelTable {
    by_name: HashMap<Arc<str>, u32>,
    channels: Slab<Channel>,
    subscriptions: Slab<Subscription>,
}

impl ChannelTable {
    /// An empty table.
    pub fn new() -> ChannelTable {
        ChannelTable::default()
    }

    /// Adds a subscription of connection `conn` to `name`.
    pub fn subscribe(&mut self, name: &str, conn: u32, wire: impl Into<Wire>) -> (SubscriptionKey, Joined) {
        let wire = wire.into();
        let (channel_key, joined) = match self.by_name.get(name) {
            Some(&key) => {
                let joined = match self.channels[key as usize].state {
                    ChannelState::Active => Joined::Active,
                    ChannelState::Pending(_) => Joined::Pending,
                };
                (key, joined)
            }
            None => {
                let name: Arc<str> = Arc::from(name);
                let key = self.channels.insert(Channel {
                    name: name.clone(),
                    subscribers: Default::default(),
                    state: ChannelState::Pending(Vec::new()),
                    position: None,
                }) as u32;
                self.by_name.insert(name, key);
                (key, Joined::FirstOnShard)
            }
        };
        let list = &mut self.channels[channel_key as usize].subscribers[wire.index()];
        let sub = self.subscriptions.insert(Subscription {
            channel: channel_key,
            wire,
            pos: list.len() as u32,
        }) as u32;
        list.push(Subscriber { conn, sub });
        (sub, joined)
    }

    /// Removes a subscription; returns the channel if it has no subscriber left (the
    /// shard then tells the router it lost interest, and answers the acks that were
    /// still waiting for the router).
    pub fn unsubscribe(&mut self, sub: SubscriptionKey) -> Option<Emptied> {
        let s = self.subscriptions.try_remove(sub as usize)?;
        let channel = &mut self.channels[s.channel as usize];
        let list = &mut channel.subscribers[s.wire.index()];
        list.swap_remove(s.pos as usize);
        if let Some(moved) = list.get(s.pos as usize) {
            self.subscriptions[moved.sub as usize].pos = s.pos;
        }
        if list.len() < list.capacity() / 4 {
            list.shrink_to(list.len() * 2);
        }
        if channel.subscribers.iter().all(Vec::is_empty) {
            let channel = self.channels.remove(s.channel as usize);
            self.by_name.remove(&channel.name);
            let pending = match channel.state {
                ChannelState::Pending(acks) => acks,
                ChannelState::Active => Vec::new(),
            };
            return Some(Emptied {
                name: channel.name,
                pending,
            });
        }
        None
    }

    /// The channel a subscription belongs to.
    pub fn channel_of(&self, sub: SubscriptionKey) -> Option<&str> {
        let s = self.subscriptions.get(sub as usize)?;
        Some(&self.channels[s.channel as usize].name)
    }

    /// Queues an ack for a subscriber of a pending channel; false if the channel is
    /// active (or unknown), in which case the caller acks at once.
    pub fn add_pending_ack(&mut self, name: &str, ack: PendingAck) -> bool {
        let Some(&key) = self.by_name.get(name) else {
            return false;
        };
        match &mut self.channels[key as usize].state {
            ChannelState::Pending(acks) => {
                acks.push(ack);
                true
            }
            ChannelState::Active => false,
        }
    }

    /// The router confirmed a channel: mark it active and return the acks to send.
    pub fn activate(&mut self, name: &str) -> Vec<PendingAck> {
        let Some(&key) = self.by_name.get(name) else {
            return Vec::new();
        };
        match std::mem::replace(&mut self.channels[key as usize].state, ChannelState::Active) {
            ChannelState::Pending(acks) => acks,
            ChannelState::Active => Vec::new(),
        }
    }

    /// Records the last position of a channel with history delivered on this shard.
    pub fn set_position(&mut self, name: &str, position: Option<Position>) {
        if let Some(&key) = self.by_name.get(name) {
            self.channels[key as usize].position = position;
        }
    }

    /// The last position of a channel with history delivered on this shard.
    pub fn position(&self, name: &str) -> Option<&Position> {
        let &key = self.by_name.get(name)?;
        self.channels[key as usize].position.as_ref()
    }

    /// The subscribers of a channel about to get the publication at `position`
    /// (recorded first, when it has one): [`ChannelTable::set_position`] and
    /// [`ChannelTable::subscribers`] in one lookup, for the fan-out of every publication.
    pub fn deliver_at(&mut self, name: &str, position: Option<&Position>) -> Option<&SubscriberLists> {
        let &key = self.by_name.get(name)?;
        let channel = &mut self.channels[key as usize];
        match (position, channel.position.as_mut()) {
            // The same epoch: only the offset moves, and the epoch's reference
            // count (shared with the router's thread) is not touched.
            (Some(new), Some(old)) if Arc::ptr_eq(&new.epoch, &old.epoch) => old.offset = new.offset,
            (Some(new), _) => channel.position = Some(new.clone()),
            (None, _) => {}
        }
        matches!(channel.state, ChannelState::Active).then_some(&channel.subscribers)
    }

    /// The subscribers of a channel, one list per wire (by [`Wire::index`]).
    pub fn subscribers(&self, name: &str) -> Option<&SubscriberLists> {
        let &key = self.by_name.get(name)?;
        let channel = &self.channels[key as usize];
        matches!(channel.state, ChannelState::Active).then_some(&channel.subscribers)
    }

    /// Every live (confirmed) channel with its subscriber lists.
    pub fn active_channels(&self) -> impl Iterator<Item = (&str, &SubscriberLists)> {
        self.channels
            .iter()
            .filter(|(_, c)| matches!(c.state, ChannelState::Active))
            .map(|(_, c)| (&*c.name, &c.subscribers))
    }

    /// Every subscription of a channel (for failing a pending channel).
    pub fn subscriptions_of(&self, name: &str) -> Vec<Subscriber> {
        self.by_name
            .get(name)
            .map(|&key| self.channels[key as usize].subscribers.concat())
            .unwrap_or_default()
    }

    /// Number of subscriptions on this shard.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Number of channels with a subscriber on this shard.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_subscriber_then_active() {
        let mut t = ChannelTable::new();
        let (a, j) = t.subscribe("news", 1, Encoding::Json);
        assert_eq!(j, Joined::FirstOnShard);
        assert!(t.subscribers("news").is_none(), "pending channels get no publications");
        let (_, j) = t.subscribe("news", 2, Encoding::MsgPack);
        assert_eq!(j, Joined::Pending);
        t.activate("news");
        let (_, j) = t.subscribe("news", 3, Encoding::Json);
        assert_eq!(j, Joined::Active);
        let subs = t.subscribers("news").unwrap();
        assert_eq!(subs[0].iter().map(|s| s.conn).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(subs[1].len(), 1);
        assert_eq!(t.channel_of(a), Some("news"));
    }

    #[test]
    fn unsubscribe_keeps_positions_right() {
        let mut t = ChannelTable::new();
        let keys: Vec<_> = (0..10).map(|c| t.subscribe("c", c, Encoding::Json).0).collect();
        t.activate("c");
        for k in [keys[0], keys[5], keys[9], keys[3]] {
            assert!(t.unsubscribe(k).is_none());
        }
        let mut left: Vec<_> = t.subscribers("c").unwrap()[0].iter().map(|s| s.conn).collect();
        left.sort();
        assert_eq!(left, vec![1, 2, 4, 6, 7, 8]);
        for k in [keys[1], keys[2], keys[4], keys[6], keys[7]] {
            assert!(t.unsubscribe(k).is_none());
        }
        assert_eq!(t.unsubscribe(keys[8]).map(|e| e.name).as_deref(), Some("c"));
        assert_eq!(t.channel_count(), 0);
        assert_eq!(t.subscription_count(), 0);
        assert!(t.unsubscribe(keys[8]).is_none(), "double unsubscribe is harmless");
    }
}
