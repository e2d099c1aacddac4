//! The servers under test and how to start, observe and stop them: shardcast (one
//! or more gateway processes), the floor server, and the Node.js stack (cluster
//! workers plus their Redis). Each is pinned to the gateway CPUs and announces its
//! addresses on stderr as a JSON line with `"message":"listening"`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cpu_pinning;
use crate::error::{BenchError, IoContext};
use crate::proc_stats::{self, ProcessSample};

/// Which server a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// The shardcast gateway.
    Shardcast,
    /// The floor: upgrade, then write pre-built frames; no protocol work.
    Floor,
    /// Node.js `ws` in a cluster, fanning out through Redis pub/sub.
    Node,
    /// Socket.IO 4 in a cluster with the Redis adapter (its own wire protocol).
    #[value(name = "socketio")]
    #[serde(rename = "socketio")]
    SocketIo,
}

impl ServerKind {
    /// Lower-case name used in tables and file names.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Shardcast => "shardcast",
            ServerKind::Floor => "floor",
            ServerKind::Node => "node",
            ServerKind::SocketIo => "socketio",
        }
    }

    /// The WebSocket path its clients upgrade on.
    pub fn ws_path(self) -> &'static str {
        match self {
            ServerKind::SocketIo => "/socket.io/?EIO=4&transport=websocket",
            _ => "/ws",
        }
    }

    /// What its clients speak.
    pub fn wire_protocol(self) -> crate::worker_protocol::WireProtocol {
        match self {
            ServerKind::SocketIo => crate::worker_protocol::WireProtocol::SocketIo,
            _ => crate::worker_protocol::WireProtocol::Shardcast,
        }
    }
}

/// How to start the servers.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The shardcast binary.
    pub shardcast_bin: PathBuf,
    /// Extra arguments for shardcast.
    pub shardcast_args: Vec<String>,
    /// Gateway processes to run (more than one needs `via_redis`).
    pub gateways: usize,
    /// Connect shardcast to a Redis broker (`--redis`), for multi-gateway scenarios.
    pub via_redis: bool,
    /// Directory with server.js and node_modules.
    pub node_dir: PathBuf,
    /// The redis-server binary.
    pub redis_server: String,
    /// Node cluster workers (0: one per server CPU).
    pub node_workers: usize,
    /// CPUs the servers are pinned to (the number of shards/workers follows it).
    pub cpus: Vec<usize>,
    /// Compress messages with permessage-deflate for clients that offer it:
    /// shardcast `--compression on`, Node `ws` with `perMessageDeflate`.
    pub compression: bool,
}

/// Last lines a server wrote to stderr, for error messages.
type LogTail = Arc<Mutex<VecDeque<String>>>;

/// A redis-server of our own on a loopback port.
pub struct RedisServer {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
}

impl RedisServer {
    /// Starts redis-server without persistence and waits until it answers PING.
    pub fn start(binary: &str, cpus: &[usize]) -> Result<RedisServer, BenchError> {
        let port = free_port()?;
        let mut cmd = Command::new(binary);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--maxclients", "1000", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cpu_pinning::pin_command(&mut cmd, cpus);
        let child = cmd.spawn().map_err(|e| BenchError::Launch {
            what: "redis-server".into(),
            message: format!("{binary}: {e} (install the redis-server package)"),
        })?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = RedisServer { child, addr };
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if redis_ping(addr) {
                return Ok(server);
            }
            if Instant::now() > until || matches!(server.child.try_wait(), Ok(Some(_))) {
                let _ = server.child.kill();
                return Err(BenchError::Launch {
                    what: "redis-server".into(),
                    message: format!("no PONG on {addr}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Polls `GET /health/ready` until it answers 200 (10 s at most).
fn wait_ready(admin: SocketAddr) -> Result<(), BenchError> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let request = format!("GET /health/ready HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
            let mut head = [0u8; 16];
            if s.write_all(request.as_bytes()).is_ok()
                && matches!(s.read(&mut head), Ok(n) if head[..n].starts_with(b"HTTP/1.1 200"))
            {
                return Ok(());
            }
        }
        if Instant::now() > until {
            return Err(BenchError::Launch {
                what: "shardcast".into(),
                message: format!("{admin}/health/ready not 200 within 10 s"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free loopback port (for servers that cannot report the port they bound).
fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").context(|| "find a free port".into())?;
    Ok(l.local_addr().context(|| "find a free port".into())?.port())
}

/// A running server under test.
pub struct ServerUnderTest {
    /// Which server.
    pub kind: ServerKind,
    processes: Vec<Child>,
    /// WebSocket addresses (one per gateway process).
    pub ws: Vec<SocketAddr>,
    /// Admin API address (of the first process).
    pub admin: SocketAddr,
    /// Admin API addresses of every shardcast gateway process, in order.
    pub admins: Vec<SocketAddr>,
    /// The Redis the server uses, if any.
    pub redis: Option<RedisServer>,
    logs: Vec<LogTail>,
}

impl ServerUnderTest {
    /// Starts `kind` pinned to `opts.cpus` and waits until it listens.
    pub fn start(kind: ServerKind, opts: &ServerOptions) -> Result<ServerUnderTest, BenchError> {
        let shards = opts.cpus.len().to_string();
        let mut server = ServerUnderTest {
            kind,
            processes: Vec::new(),
            ws: Vec::new(),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            admins: Vec::new(),
            redis: None,
            logs: Vec::new(),
        };
        match kind {
            ServerKind::Shardcast => {
                if opts.gateways > 1 && !opts.via_redis {
                    return Err(BenchError::Options(
                        "--gateways above 1 needs --via-redis (the gateways share publications through Redis)".into(),
                    ));
                }
                if opts.via_redis {
                    server.redis = Some(RedisServer::start(&opts.redis_server, &opts.cpus)?);
                }
                for i in 0..opts.gateways.max(1) {
                    let mut cmd = Command::new(&opts.shardcast_bin);
                    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                        .args(["--shards", &shards, "--log-format", "json", "--log", "info"])
                        .args(["--node-id", &format!("bench-{i}")]);
                    if let Some(redis) = &server.redis {
                        cmd.args(["--redis", &redis.url()]);
                    }
                    cmd.args(&opts.shardcast_args);
                    if opts.compression {
                        cmd.args(["--compression", "on"]);
                    }
                    let (ws, admin) = server.spawn_and_wait(cmd, "shardcast", &opts.cpus)?;
                    // With a broker the gateway listens before it is ready (it refuses
                    // upgrades until Redis answers): measure from readiness on.
                    wait_ready(admin)?;
                    server.ws.push(ws);
                    server.admins.push(admin);
                    if i == 0 {
                        server.admin = admin;
                    }
                }
            }
            ServerKind::Floor => {
                let exe = std::env::current_exe().context(|| "find our own executable".into())?;
                let mut cmd = Command::new(exe);
                cmd.args(["floor", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                    .args(["--threads", &shards]);
                let (ws, admin) = server.spawn_and_wait(cmd, "floor", &opts.cpus)?;
                server.ws.push(ws);
                server.admin = admin;
            }
            ServerKind::Node | ServerKind::SocketIo => {
                let redis = RedisServer::start(&opts.redis_server, &opts.cpus)?;
                let script = opts.node_dir.join(match kind {
                    ServerKind::SocketIo => "socketio.js",
                    _ => "server.js",
                });
                if !opts.node_dir.join("node_modules").is_dir() {
                    return Err(BenchError::Launch {
                        what: "node baseline".into(),
                        message: format!(
                            "{} has no node_modules: run `npm ci` there (bench/run does)",
                            opts.node_dir.display()
                        ),
                    });
                }
                let mut cmd = Command::new("node");
                cmd.arg(script)
                    .env("WS_PORT", free_port()?.to_string())
                    .env("ADMIN_PORT", free_port()?.to_string())
                    .env(
                        "WORKERS",
                        match opts.node_workers {
                            0 => shards.clone(),
                            n => n.to_string(),
                        },
                    )
                    .env("REDIS_URL", redis.url());
                if opts.compression {
                    cmd.env("PER_MESSAGE_DEFLATE", "1");
                }
                server.redis = Some(redis);
                let (ws, admin) = server.spawn_and_wait(cmd, kind.name(), &opts.cpus)?;
                server.ws.push(ws);
                server.admin = admin;
            }
        }
        Ok(server)
    }

    fn spawn_and_wait(
        &mut self,
        mut cmd: Command,
        what: &str,
        cpus: &[usize],
    ) -> Result<(SocketAddr, SocketAddr), BenchError> {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        cpu_pinning::pin_command(&mut cmd, cpus);
        let mut child = cmd.spawn().map_err(|e| BenchError::Launch {
            what: what.into(),
            message: e.to_string(),
        })?;
        let tail: LogTail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let tail = tail.clone();
            // Drains stderr for the process's whole life so it never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if v["message"] == "listening" {
                            let _ = tx.send((
                                v["ws"].as_str().unwrap_or_default().to_owned(),
                                v["admin"].as_str().unwrap_or_default().to_owned(),
                            ));
                        }
                    }
                    if let Ok(mut t) = tail.lock() {
                        if t.len() >= 50 {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
            });
        }
        self.logs.push(tail.clone());
        let fail = |child: &mut Child, why: &str| {
            let _ = child.kill();
            let _ = child.wait();
            let lines: Vec<String> = tail.lock().map(|t| t.iter().cloned().collect()).unwrap_or_default();
            BenchError::Launch {
                what: what.into(),
                message: format!("{why}; last log lines: {}", lines.join(" | ")),
            }
        };
        let (ws, admin) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addrs) => addrs,
            Err(_) => return Err(fail(&mut child, "no \"listening\" line within 20 s")),
        };
        let (Ok(ws), Ok(admin)) = (ws.parse(), admin.parse()) else {
            return Err(fail(&mut child, &format!("bad addresses {ws:?} {admin:?}")));
        };
        self.processes.push(child);
        Ok((ws, admin))
    }

    /// Process ids of the server (with Node's workers), without Redis.
    pub fn pids(&self) -> Vec<i32> {
        self.processes
            .iter()
            .flat_map(|c| proc_stats::process_tree(c.id() as i32))
            .collect()
    }

    /// Memory and CPU of the server processes (Redis excluded).
    pub fn sample(&self) -> ProcessSample {
        proc_stats::sample_processes(&self.pids())
    }

    /// Memory and CPU of the Redis this server uses (zero without Redis).
    pub fn sample_redis(&self) -> ProcessSample {
        self.redis
            .as_ref()
            .map(|r| proc_stats::sample_process(r.pid()))
            .unwrap_or_default()
    }

    /// The server's last log lines (for diagnosing a failed run).
    pub fn log_tail(&self) -> Vec<String> {
        self.logs
            .iter()
            .flat_map(|t| {
                t.lock()
                    .map(|t| t.iter().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// SIGKILLs server process `index` (a gateway, for the history scenarios);
    /// false when there is no such process.
    pub fn kill_process(&self, index: usize) -> bool {
        let Some(c) = self.processes.get(index) else {
            return false;
        };
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) == 0 }
    }

    /// Stops the server: SIGTERM, then SIGKILL after 3 s.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        for c in &self.processes {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        let until = Instant::now() + Duration::from_secs(3);
        for c in &mut self.processes {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        self.processes.clear();
        self.redis = None;
    }
}

impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        if !self.processes.is_empty() {
            self.terminate();
        }
    }
}
