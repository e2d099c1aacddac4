//! Rust client for the shardcast gateway (work in progress).
