//! Test harness: runs the real `shardcast` binary on loopback ports and talks to it
//! over real sockets, as a user's client and a user's backend would. Each module
//! owns one piece; everything is re-exported here, so a test says `use common::*`.
// Each test binary compiles the whole harness and uses a part of it.
#![allow(dead_code, unused_imports)]

mod client;
mod deploy_config;
mod gateway;
mod http_client;
mod metrics_text;
mod nginx;
mod node_script;
mod percentile;
mod proc_sample;
mod proxied_cluster;
mod python;
mod raw_client;
mod redis;
mod server_process;
mod vectors;
mod webhook_receiver;

use std::time::Duration;

pub use client::*;
pub use deploy_config::*;
pub use gateway::*;
pub use http_client::*;
pub use metrics_text::*;
pub use nginx::*;
pub use node_script::*;
pub use percentile::*;
pub use proc_sample::*;
pub use proxied_cluster::*;
pub use python::*;
pub use raw_client::*;
pub use redis::*;
pub use server_process::*;
pub use vectors::*;
pub use webhook_receiver::*;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);
