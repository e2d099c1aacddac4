//! What the gateway's integration tests (`tests/`) and the benchmark harness
//! (`bench/`) both need to drive a WebSocket server from the client side, written
//! once: RFC 6455 framing ([`ws_frame`]), the HTTP heads around it ([`http_head`]),
//! and a seeded generator for jitter and picks ([`xorshift`]). Not a WebSocket
//! library: it builds and reads exactly the bytes a test or a load generator asks
//! for, including the malformed ones.

#![warn(missing_docs)]

pub mod http_head;
pub mod ws_frame;
pub mod xorshift;
