//! shardcast: a per-core sharded WebSocket fan-out gateway.
//!
//! # Layout
//!
//! The layers, from the socket down; each imports only from layers below it:
//!
//! - [`admission`]: the public listener; refuses what the descriptor budget or the
//!   connection cap cannot take, and hands the rest to a shard.
//! - [`shard`]: one thread and event loop owning connections
//!   ([`shard::connection`]) and a channel index ([`shard::channel_table`]); it
//!   runs the protocol ([`shardcast_proto`]) on its connections' frames.
//! - [`fanout`]: the publish path: the [`fanout::publisher`] every publish takes,
//!   the [`fanout::router`] that knows which shards want which channel, and the
//!   [`fanout::publication`] built once and shared by every subscriber. The router
//!   reaches the shards through a trait the shard layer implements.
//! - [`broker`]: how instances share publications (in-process, Redis, Redis
//!   Cluster), keep their history (offsets, epochs: PROTOCOL.md 19) and find each
//!   other ([`broker::instances`]). It knows channels and payloads only, and emits
//!   [`broker::BrokerEvent`]s to a sink the router implements.
//!
//! Beside them, used by any layer and importing none: [`ws`] (the WebSocket
//! transport: upgrade, RFC 6455 frames and permessage-deflate over raw sockets),
//! [`auth`] (token verification and channel rules), [`pusher`] (the Pusher
//! protocol's frames, apps and signatures), [`payload`] (a publication's validated data),
//! [`metrics`], [`state`] (lock-free shared counters), [`config`] and [`outbound`]
//! (requests to configured URLs, which [`auth`] and [`pusher`] make). On top: [`admin`] (the admin port: HTTP API, health,
//! metrics, the cluster view) and [`gateway`], which wires an instance together
//! and drains it.
//!
//! Threads talk only through flume channels and atomics. Nothing on the publish
//! path takes a lock of ours (flume's queues synchronise internally): the
//! in-process broker and its history store are a thread fed by a channel, and a
//! standalone gateway's broker does nothing at all for a channel without history.
//! The one exception is Redis Cluster, whose slot map a publish reads under an
//! uncontended read lock (written only when the cluster's slots change).

#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod auth;
pub mod broker;
pub mod config;
pub mod fanout;
pub mod gateway;
pub mod metrics;
pub mod outbound;
pub mod payload;
pub mod pusher;
pub mod shard;
pub mod state;
pub mod ws;
