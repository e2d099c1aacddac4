//! The fan-out path: everything between a publish and the shards. The
//! [`publisher`] is the one path every publish takes (local router plus broker);
//! the [`router`] knows which shards want which channel, numbers publications and
//! keeps the broker subscribed; a [`publication`] is built once and shared, as the
//! same frame bytes, by every shard; operator [`control`] commands take the same
//! road to every shard of every instance. Below it is only the broker; the shards above
//! reach the router through its handle and it reaches them through
//! [`router::ShardMailbox`], which the shard layer implements.

pub mod control;
pub mod publication;
pub mod publisher;
pub mod router;
