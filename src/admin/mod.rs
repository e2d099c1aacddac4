//! The admin surface, on its own port: the HTTP API ([`api`]: publish, health,
//! `/metrics`, stats), the Pusher HTTP API ([`pusher_api`]), the cluster view it
//! serves ([`cluster`]) and the web console at `/` ([`console`]). Operators and publishers talk to this layer; it
//! reaches the rest of the gateway only through the publisher, the shared state
//! and the metrics registry.

pub mod api;
pub mod cluster;
pub mod console;
pub mod peers;
pub mod pusher_api;

pub use api::{serve, AdminContext};
