//! shardcast: a per-core sharded WebSocket fan-out gateway.
//!
//! # Layout
//!
//! Layers, from the socket up; each knows only the one below it:
//!
//! - [`ws`]: the WebSocket transport (upgrade, RFC 6455 frames) over raw sockets.
//! - [`connection`]: one connection's record: its socket, its bounded outbound queue.
//! - [`channel_table`]: a shard's channel-to-subscribers index.
//! - [`shard`]: one thread and event loop owning connections and a channel table;
//!   it runs the protocol ([`shardcast_proto`]) on its connections' frames.
//! - [`router`]: which shards want which channel; numbers and routes publications.
//! - [`broker`]: how instances share publications (in-process, or Redis).
//! - [`publisher`]: the one path every publish takes (local router + broker).
//!
//! Around them: [`acceptor`] (admission and hand-off to shards), [`admin`] (HTTP
//! API, health, metrics), [`cluster`] (live instances and their connection counts), [`fd_budget`] (descriptor headroom), [`metrics`],
//! [`state`] (lock-free shared counters), [`config`], and [`gateway`], which
//! assembles an instance and drains it.
//!
//! Threads talk only through flume channels and atomics; nothing on the publish
//! path takes a lock.

#![warn(missing_docs)]

pub mod acceptor;
pub mod admin;
pub mod broker;
pub mod channel_table;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod fd_budget;
pub mod gateway;
pub mod metrics;
pub mod publication;
pub mod publisher;
pub mod router;
pub mod shard;
pub mod state;
pub mod ws;
