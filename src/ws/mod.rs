//! The WebSocket transport as the gateway runs it: the HTTP upgrade, RFC 6455
//! framing and the permessage-deflate extension (RFC 7692), over a raw
//! non-blocking socket.
//!
//! tungstenite's `WebSocket` keeps a read buffer and a write buffer per connection
//! (128 KiB read by default, and a write buffer that never shrinks after a burst);
//! with hundreds of thousands of idle sockets that is most of the memory. So the
//! gateway uses tungstenite for the pieces that hold no state (frame-header parsing
//! and the accept-key derivation) and owns the buffers itself: reads go into one
//! scratch buffer per shard, and a publication's whole frame is built once and
//! written to every subscriber as the same bytes.

pub mod deflate;
pub mod frame;
pub mod handshake;
