//! The acceptor: one task that accepts every TCP connection on the public port,
//! decides whether the gateway can take it, and hands it to the least-loaded shard.
//!
//! One acceptor rather than an SO_REUSEPORT listener per shard, because: the kernel
//! spreads reuseport connections by a hash of the address pair, which is uneven
//! with few client addresses (a load balancer in front, a benchmark from one host);
//! admission (descriptor headroom, the connection cap, draining) then has a single
//! place to decide; and a drain stops one listener without losing the connections
//! queued in the backlog of another. A hand-off is one flume send per connection,
//! nothing next to the upgrade that follows. The same single place keeps the
//! connect rate per source address ([`ConnectRate`]) without a lock.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardcast_proto::ErrorCode;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::connect_rate::ConnectRate;
use super::fd_budget::{FdBudget, RefusedSocket};
use crate::metrics::Metrics;
use crate::shard::{ShardCommand, ShardHandle};
use crate::state::GatewayState;
use crate::ws::handshake::{error_body, http_response, MAX_REQUEST_HEAD};

/// Refused sockets left open at the same time to read the rest of their request
/// (so that closing them does not reset the connection); past this a refused
/// socket is closed right after its answer.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// How a refused socket is answered.
struct RefusalAnswer {
    /// The reason [`Acceptor::refusal_reason`] gives, also the metric label.
    reason: &'static str,
    /// HTTP status.
    status: u16,
    /// `error.code` of the body.
    code: &'static str,
    /// Seconds the client is told to wait (`Retry-After`).
    retry_after_secs: u64,
}

/// Every reason [`Acceptor::refusal_reason`] gives, with its answer (PROTOCOL.md 3.4).
const REFUSAL_ANSWERS: [RefusalAnswer; 4] = [
    RefusalAnswer::unavailable("draining"),
    RefusalAnswer::unavailable("max_connections"),
    RefusalAnswer::unavailable("fd_headroom"),
    RefusalAnswer {
        reason: RATE_LIMITED,
        status: 429,
        code: ErrorCode::RateLimited.as_str(),
        retry_after_secs: 1,
    },
];

/// The refusal reason of a source address over `--connect-rate-per-ip`.
const RATE_LIMITED: &str = "rate_limited";

impl RefusalAnswer {
    /// A 503 for a gateway that cannot take a connection now.
    const fn unavailable(reason: &'static str) -> RefusalAnswer {
        RefusalAnswer {
            reason,
            status: 503,
            code: ErrorCode::Unavailable.as_str(),
            retry_after_secs: 2,
        }
    }
}

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
    /// `--connect-rate-per-ip` (0: no limit).
    pub connect_rate_per_ip: u32,
}

impl Acceptor {
    /// Accepts until the task is dropped (which closes the listener).
    pub async fn run(self) {
        let refusals = Refusals::new();
        let mut connect_rate = ConnectRate::new(self.connect_rate_per_ip, Instant::now());
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if let Some(reason) = self.refusal_reason(connect_rate.as_mut(), peer.ip()) {
                        self.metrics.connections_refused.with_label_values(&[reason]).inc();
                        if reason == RATE_LIMITED {
                            self.metrics.auth_refusals.with_label_values(&[reason]).inc();
                        }
                        refusals.refuse(stream, self.budget.refused_socket(), reason);
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

    /// Why a connect from `source` is refused, if it is. The rate comes first: it
    /// counts attempts, whether or not the gateway could take them.
    fn refusal_reason(&self, connect_rate: Option<&mut ConnectRate>, source: IpAddr) -> Option<&'static str> {
        if let Some(rate) = connect_rate {
            if !rate.try_acquire(source, Instant::now()) {
                return Some(RATE_LIMITED);
            }
        }
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

/// The answer every refused socket gets (a 503, or a 429 for the connect rate),
/// built once per reason.
struct Refusals {
    responses: Vec<(&'static str, Vec<u8>)>,
    /// Sockets lingering for their request to arrive, bounded by
    /// [`MAX_REFUSALS_IN_FLIGHT`].
    lingering: Arc<AtomicUsize>,
}

impl Refusals {
    fn new() -> Refusals {
        let responses = REFUSAL_ANSWERS
            .iter()
            .map(|a| {
                let body = error_body(a.code, &format!("connection refused: {}", a.reason));
                (a.reason, http_response(a.status, Some(a.retry_after_secs), &body))
            })
            .collect();
        Refusals {
            responses,
            lingering: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Answers a refused socket with its status and Retry-After at once, without waiting
    /// for its request: a fresh socket's send buffer always takes the response, so
    /// one non-blocking write delivers it however many refusals come at once.
    ///
    /// Then the write side is shut (FIN after the response) and whatever part of
    /// the request has arrived is read off, because closing with unread input
    /// resets the connection, and a reset can overtake the response in the
    /// client's stack. Up to [`MAX_REFUSALS_IN_FLIGHT`] sockets linger a moment
    /// for the rest of their request; past that (each holds a descriptor, which
    /// may be what is short) the socket is closed now, answered all the same.
    fn refuse(&self, stream: TcpStream, descriptor: RefusedSocket, reason: &'static str) {
        let Some((_, response)) = self.responses.iter().find(|(r, _)| *r == reason) else {
            return;
        };
        let Ok(mut stream) = stream.into_std() else {
            return;
        };
        if !matches!(stream.write(response), Ok(n) if n == response.len()) {
            return;
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        if drain_input(&mut stream) {
            return;
        }
        if self.lingering.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSALS_IN_FLIGHT {
            self.lingering.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let lingering = self.lingering.clone();
        tokio::spawn(async move {
            if let Ok(mut stream) = TcpStream::from_std(stream) {
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
            }
            lingering.fetch_sub(1, Ordering::Relaxed);
            drop(descriptor);
        });
    }
}

/// Reads off what has arrived on a non-blocking socket; true once the peer has
/// finished sending (EOF or an error), so the socket can close without a reset.
fn drain_input(stream: &mut std::net::TcpStream) -> bool {
    let mut sink = [0u8; 1024];
    for _ in 0..(MAX_REQUEST_HEAD / sink.len()) {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    false
}
