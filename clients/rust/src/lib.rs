//! Rust client for the shardcast WebSocket fan-out gateway.
//!
//! - [`Client`]: one logical connection to a gateway that reconnects by itself
//!   (exponential backoff with full jitter, honouring the gateway's close codes and
//!   retry hints), subscribes every channel again after a reconnect, and detects
//!   dead connections with a heartbeat. [`Client::subscribe`] returns a
//!   [`Subscription`], a [`Stream`](futures_util::Stream) of [`Message`]s.
//! - Authentication (PROTOCOL.md section 18): a connection token sent as
//!   `Authorization: Bearer` and refreshed before it expires
//!   ([`ClientBuilder::token_provider_async`]), and subscription tokens per channel
//!   ([`ClientBuilder::subscription_token_provider_async`]).
//! - History and recovery (PROTOCOL.md section 19): on a channel with history, the
//!   client recovers what it missed while disconnected (each publication once, in
//!   order, through the same [`Subscription`]) and raises [`ClientEvent::Stale`]
//!   when it cannot; [`Client::subscribe_with`] (`latest`), [`Client::history`] and
//!   [`Client::publish_with_key`] (idempotent publishing).
//! - Presence (PROTOCOL.md section 21): [`Client::presence`] lists a channel's
//!   members, and [`ClientEvent::Join`] / [`ClientEvent::Leave`] tell who comes and
//!   goes on the subscribed channels.
//! - Compression: the client offers permessage-deflate (RFC 7692) and inflates what
//!   a gateway started with `--compression on` sends compressed; it sends its own
//!   frames uncompressed. [`ClientBuilder::compression`] turns the offer off, and
//!   [`Welcome::compression`] tells whether the gateway accepted it.
//! - [`ClientEvent`] / [`ConnectionState`]: what happens to the connection.
//! - [`AdminClient`]: the gateway's admin HTTP API (publish, stats, cluster view).
//!
//! The wire protocol is `proto/PROTOCOL.md`; its types come from
//! [`shardcast_proto`], re-exported as [`proto`].
//!
//! ```no_run
//! # async fn example() -> Result<(), shardcast_client::Error> {
//! use futures_util::StreamExt;
//! use shardcast_client::{AdminClient, Client, Encoding};
//!
//! let client = Client::builder("ws://127.0.0.1:8000/ws")
//!     .encoding(Encoding::MsgPack)
//!     .build()?;
//! let mut news = client.subscribe("news").await?;
//!
//! let admin = AdminClient::new("http://127.0.0.1:8001")?;
//! admin.publish("news", &serde_json::json!({"text": "hello"})).await?;
//!
//! if let Some(message) = news.next().await {
//!     assert_eq!(message.data["text"], "hello");
//! }
//! client.close().await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod admin;
mod backoff;
mod client;
mod deflate_stream;
mod driver;
mod error;
mod event;
mod history;
mod message;
mod presence;
mod subscription;
mod token;
mod transport;

pub use admin::{AdminClient, ClusterView, InstanceInfo, InstanceStats, PublishReceipt};
pub use backoff::{parse_retry_after, ReconnectDecision, ReconnectPolicy, StopReason, FATAL_HANDSHAKE_STATUSES};
pub use client::{Client, ClientBuilder, Heartbeat, DEFAULT_MAX_MESSAGE_BYTES};
#[doc(hidden)]
pub use deflate_stream::inflated_messages;
pub use error::{BoxError, Error, Result};
pub use event::{ClientEvent, ConnectionState, EventStream, StaleSource};
pub use history::{History, HistoryOptions, Published, SubscribeOptions};
pub use message::Message;
pub use presence::Presence;
pub use shardcast_proto as proto;
pub use shardcast_proto::{Encoding, ErrorCode, GapReason, HistoryEntry, PresenceEntry, StreamPosition};
pub use subscription::Subscription;
pub use token::{SubscriptionTokenProvider, TokenFuture, TokenProvider};
pub use transport::Welcome;

#[cfg(test)]
mod tests {
    use super::*;

    /// The handles are meant to be moved into tasks and shared.
    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Client>();
        check::<Subscription>();
        check::<EventStream>();
        check::<Message>();
        check::<Error>();
        check::<AdminClient>();
        check::<ClientEvent>();
        check::<Presence>();
    }

    #[test]
    fn building_outside_a_runtime_is_an_error() {
        assert!(matches!(Client::connect("ws://127.0.0.1:1/ws"), Err(Error::NoRuntime)));
        assert!(matches!(
            Client::connect("http://127.0.0.1:1/ws"),
            Err(Error::InvalidUrl { .. })
        ));
    }
}
