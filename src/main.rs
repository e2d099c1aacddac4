//! The `shardcast` binary: load the configuration, set up logging and the
//! descriptor limit, run the gateway until SIGTERM or SIGINT, then drain.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;

use shardcast::admission::fd_budget::raise_nofile_limit;
use shardcast::config::{Config, ConfigError, LogFormat};
use shardcast::gateway;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(c) => c,
        Err(ConfigError::Args(e)) => e.exit(),
        Err(e) => {
            eprintln!("shardcast: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let fd_limit = match raise_nofile_limit() {
        Ok(l) => {
            info!(
                soft_before = l.soft_before,
                soft = l.soft,
                hard = l.hard,
                "RLIMIT_NOFILE"
            );
            l.soft as usize
        }
        Err(e) => {
            warn!(error = %e, "cannot read RLIMIT_NOFILE; assuming 1024");
            1024
        }
    };
    // The control thread: acceptor, router, admin API, monitor. Shards run their own.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut signals = match ShutdownSignals::install() {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let ws_path = config.ws_path.clone();
        let gw = match gateway::start(config, fd_limit).await {
            Ok(gw) => gw,
            Err(e) => {
                error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        announce(gw.ws_addr, &ws_path, gw.admin_addr);
        let signal = signals.recv().await;
        info!(signal, "shutting down");
        gw.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Tells a person on stdout where to connect, as URLs to paste (the logs, on
/// stderr, have the bound addresses for machines).
fn announce(ws: SocketAddr, ws_path: &str, admin: SocketAddr) {
    // Not println!: a closed stdout (`shardcast | head -1`) must not panic the gateway.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "WebSocket: ws://{}{ws_path}", reachable(ws));
    let _ = writeln!(out, "Admin API: http://{}/", reachable(admin));
    let _ = out.flush();
}

/// The address a local client connects to: a wildcard bind is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: escape codes in a file or a log
    // collector are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.init(),
    }
}

/// SIGTERM and SIGINT handlers. Installed before the gateway announces it is
/// listening: a signal that arrives before its handler would kill the process
/// outright, without a drain (an orchestrator may stop a pod right after start).
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
