//! What [`Client::presence`](crate::Client::presence) returns: [`Presence`], a
//! channel's members as the gateway's `presence` frame lists them (PROTOCOL.md 21).
//! The changes arrive as [`ClientEvent::Join`](crate::ClientEvent::Join) and
//! [`ClientEvent::Leave`](crate::ClientEvent::Leave).

use shardcast_proto::PresenceEntry;

/// A channel's members: users, each once however many connections it has.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Presence {
    /// The channel.
    pub channel: String,
    /// How many members it has: exact up to 10 000 (a larger channel reports 10 000),
    /// however many `members` lists.
    pub count: u64,
    /// Its members (the `user` of each, and its token's `info` claim or null), at most
    /// the namespace's `presence_max`, in no particular order.
    pub members: Vec<PresenceEntry>,
}
