//! Admission: who gets a socket. The [`acceptor`] takes connections off the public
//! listener, refuses them while descriptors or the connection cap run out, and hands
//! the rest to the least-loaded shard; [`fd_budget`] keeps the descriptor headroom
//! that decision rests on.

pub mod acceptor;
pub mod fd_budget;
