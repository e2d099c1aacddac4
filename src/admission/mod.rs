//! Admission: who gets a socket. The [`acceptor`] takes connections off the public
//! listener, refuses them while descriptors or the connection cap run out or their
//! source address connects too often, and hands the rest to the least-loaded shard;
//! [`fd_budget`] keeps the descriptor headroom and [`connect_rate`] the per-address
//! rate that decision rests on.

pub mod acceptor;
pub mod connect_rate;
pub mod fd_budget;
