//! The acceptor: one task that accepts every TCP connection on the public port,
//! decides whether the gateway can take it, and hands it to the least-loaded shard.
//!
//! One acceptor rather than an SO_REUSEPORT listener per shard, because: the kernel
//! spreads reuseport connections by a hash of the address pair, which is uneven
//! with few client addresses (a load balancer in front, a benchmark from one host);
//! admission (descriptor headroom, the connection cap, draining) then has a single
//! place to decide; and a drain stops one listener without losing the connections
//! queued in the backlog of another. A hand-off is one flume send per connection,
//! nothing next to the upgrade that follows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::fd_budget::FdBudget;
use crate::metrics::Metrics;
use crate::shard::{ShardCommand, ShardHandle};
use crate::state::GatewayState;
use crate::ws::handshake::{error_body, http_response};

/// Refusals answered at the same time; past this a refused socket is just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Seconds a refused client is told to wait (`Retry-After`).
const REFUSAL_RETRY_AFTER_SECS: u64 = 2;

/// What the acceptor needs.
pub struct Acceptor {
    /// The public port's listener.
    pub listener: TcpListener,
    /// Where accepted sockets go.
    pub shards: Vec<ShardHandle>,
    /// Socket counts per shard and the draining flag.
    pub state: Arc<GatewayState>,
    /// Descriptor headroom.
    pub budget: Arc<FdBudget>,
    /// Accepted and refused counters.
    pub metrics: Arc<Metrics>,
    /// `--max-connections` (0: no cap).
    pub max_connections: usize,
}

impl Acceptor {
    /// Accepts until the task is dropped (which closes the listener).
    pub async fn run(self) {
        let refusals = Arc::new(AtomicUsize::new(0));
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if let Some(reason) = self.refusal_reason() {
                        self.metrics.connections_refused.with_label_values(&[reason]).inc();
                        refuse(stream, reason, &refusals);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let shard = self.state.least_loaded_shard();
                    let std_stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            debug!(%peer, error = %e, "cannot hand socket over");
                            continue;
                        }
                    };
                    self.state.add_socket(shard, 1);
                    self.metrics.connections_accepted.inc();
                    if self.shards[shard].send(ShardCommand::Adopt(std_stream, peer)).is_err() {
                        self.state.add_socket(shard, -1);
                    }
                }
                Err(e) => {
                    if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                        // The reserve should prevent this; if it happens, do not spin.
                        self.metrics
                            .connections_refused
                            .with_label_values(&["fd_exhausted"])
                            .inc();
                        warn!(error = %e, "out of file descriptors while accepting");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    } else {
                        debug!(error = %e, "accept failed");
                    }
                }
            }
        }
    }

    fn refusal_reason(&self) -> Option<&'static str> {
        if self.state.is_draining() {
            return Some("draining");
        }
        if self.max_connections > 0 && self.state.total_sockets() >= self.max_connections {
            return Some("max_connections");
        }
        if !self.budget.try_admit() {
            return Some("fd_headroom");
        }
        None
    }
}

/// Answers a refused socket with 503 and Retry-After, off the accept loop.
fn refuse(mut stream: TcpStream, reason: &'static str, in_flight: &Arc<AtomicUsize>) {
    if in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSALS_IN_FLIGHT {
        in_flight.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let in_flight = in_flight.clone();
    tokio::spawn(async move {
        let body = error_body("unavailable", &format!("connection refused: {reason}"));
        let response = http_response(503, Some(REFUSAL_RETRY_AFTER_SECS), &body);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            // Read the request first: closing with unread input would reset the
            // connection and the client would never see the 503.
            let mut head = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut head)).await;
            let _ = stream.write_all(&response).await;
            let _ = stream.shutdown().await;
        })
        .await;
        in_flight.fetch_sub(1, Ordering::Relaxed);
    });
}
