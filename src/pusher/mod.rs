//! The Pusher Channels protocol (version 7) and HTTP API, so that Pusher's own
//! clients (pusher-js, the iOS, Android, Flutter and .NET SDKs, Laravel Echo) and
//! server libraries work against shardcast unchanged (issue #13). This module is
//! the protocol's leaf: the apps ([`apps`]), the frames ([`protocol`]), the
//! signatures ([`signature`]) and the webhook sender ([`webhooks`]); it imports
//! nothing of the gateway but [`crate::outbound`]. The endpoint
//! that speaks it on the shards, presence, the HTTP API and webhooks build on it.

pub mod apps;
pub mod protocol;
pub mod signature;
pub mod webhooks;
