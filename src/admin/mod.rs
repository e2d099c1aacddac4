//! The admin surface, on its own port: the HTTP API ([`api`]: publish, health,
//! `/metrics`, stats), the Pusher HTTP API ([`pusher_api`], its channel queries
//! [`pusher_channels`]), the cluster view it serves ([`cluster`]) and the web
//! console at `/` ([`console`]). Operators and publishers talk to this layer; it
//! reaches the rest of the gateway only through the publisher, the shared state,
//! the metrics registry, and the broker's occupied channels and presence members.

pub mod api;
pub mod cluster;
pub mod console;
pub mod peers;
pub mod pusher_api;
pub mod pusher_channels;

pub use api::{serve, AdminContext};
