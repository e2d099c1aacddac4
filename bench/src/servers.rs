//! The servers under test and how to start, observe and stop them: shardcast (one
//! or more gateway processes, native or through its Pusher endpoint), the floor
//! server, the Node.js stack (cluster workers plus their Redis) and Sockudo (the
//! Rust Pusher server). Each is pinned to the gateway CPUs; ours announce their
//! addresses on stderr as a JSON line with `"message":"listening"`, Sockudo is
//! polled on its health endpoint.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cpu_pinning;
use crate::error::{BenchError, IoContext};
use crate::proc_stats::{self, ProcessSample};
use crate::publisher::{PublishApi, PublishEndpoint};
use crate::pusher_wire::PusherApp;

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
    /// The shardcast gateway with one Pusher app, its clients on the Pusher
    /// endpoint and its publisher on the Pusher HTTP API (PROTOCOL.md 20).
    #[value(name = "shardcast-pusher")]
    #[serde(rename = "shardcast-pusher")]
    ShardcastPusher,
    /// Sockudo, the Rust Pusher server: local adapter, no rate limiter, no metrics.
    Sockudo,
}

impl ServerKind {
    /// Lower-case name used in tables and file names.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Shardcast => "shardcast",
            ServerKind::Floor => "floor",
            ServerKind::Node => "node",
            ServerKind::SocketIo => "socketio",
            ServerKind::ShardcastPusher => "shardcast-pusher",
            ServerKind::Sockudo => "sockudo",
        }
    }

    /// Whether its clients and publisher speak Pusher.
    pub fn is_pusher(self) -> bool {
        matches!(self, ServerKind::ShardcastPusher | ServerKind::Sockudo)
    }

    /// The WebSocket path its clients upgrade on.
    pub fn ws_path(self) -> String {
        match self {
            ServerKind::SocketIo => "/socket.io/?EIO=4&transport=websocket".into(),
            kind if kind.is_pusher() => PusherApp::bench().ws_path(),
            _ => "/ws".into(),
        }
    }

    /// What its clients speak.
    pub fn wire_protocol(self) -> crate::worker_protocol::WireProtocol {
        match self {
            ServerKind::SocketIo => crate::worker_protocol::WireProtocol::SocketIo,
            kind if kind.is_pusher() => crate::worker_protocol::WireProtocol::Pusher,
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
    /// The Sockudo binary.
    pub sockudo_bin: PathBuf,
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
    wait_http_ok(admin, "/health/ready", "shardcast", Duration::from_secs(10), || true)
}

/// Polls `GET <path>` on `addr` until it answers 200, for at most `limit` or while
/// `alive` says the process still runs.
fn wait_http_ok(
    addr: SocketAddr,
    path: &str,
    what: &str,
    limit: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<(), BenchError> {
    let until = Instant::now() + limit;
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let mut head = [0u8; 16];
            if s.write_all(request.as_bytes()).is_ok()
                && matches!(s.read(&mut head), Ok(n) if head[..n].starts_with(b"HTTP/1.1 200"))
            {
                return Ok(());
            }
        }
        if Instant::now() > until || !alive() {
            return Err(BenchError::Launch {
                what: what.into(),
                message: format!("{addr}{path} not 200 within {limit:?}"),
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

/// Drains a server's output for the process's whole life (so it never blocks on a
/// full pipe), keeping the last 50 lines in `tail` and sending the addresses of a
/// `"message":"listening"` line to `listening`.
fn drain_log(stream: impl Read + Send + 'static, tail: LogTail, listening: Option<mpsc::Sender<(String, String)>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Some(tx) = &listening {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send((
                            v["ws"].as_str().unwrap_or_default().to_owned(),
                            v["admin"].as_str().unwrap_or_default().to_owned(),
                        ));
                    }
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

/// `binary` if it is a file, or, for a bare name, the first file of that name on PATH.
fn find_binary(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
}

/// Kills a server that failed to start; the error names `why` and its last log lines.
fn launch_failure(mut child: Child, tail: &LogTail, what: &str, why: &str) -> BenchError {
    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<String> = tail.lock().map(|t| t.iter().cloned().collect()).unwrap_or_default();
    BenchError::Launch {
        what: what.into(),
        message: format!("{why}; last log lines: {}", lines.join(" | ")),
    }
}

/// The config file of the `shardcast-pusher` target: the bench app (PROTOCOL.md 20).
fn shardcast_pusher_config() -> String {
    let app = PusherApp::bench();
    format!(
        "[pusher.apps.\"{}\"]\nkey = \"{}\"\nsecret = \"{}\"\n",
        app.id, app.key, app.secret
    )
}

/// Sockudo's config file: the bench app with its limits raised past anything a
/// scenario reaches, the local adapter, in-memory cache and app store, no queue,
/// rate limiter or metrics server (its worker threads follow its CPU affinity).
fn sockudo_config(port: u16) -> String {
    let app = PusherApp::bench();
    format!(
        r#"host = "127.0.0.1"
port = {port}
mode = "production"
debug = false
shutdown_grace_period = 1

[adapter]
driver = "local"

[cache]
driver = "memory"

[queue]
driver = "none"

[rate_limiter]
enabled = false

[metrics]
enabled = false

[channel_limits]
max_name_length = 200

[event_limits]
max_channels_at_once = 100
max_name_length = 200
max_payload_in_kb = 1024
max_batch_size = 100

[presence]
max_members_per_channel = 100000
max_member_size_in_kb = 10

[app_manager]
driver = "memory"

[[app_manager.array.apps]]
id = "{id}"
key = "{key}"
secret = "{secret}"
enabled = true

[app_manager.array.apps.policy.limits]
max_connections = 1000000
max_client_events_per_second = 100000
max_presence_members_per_channel = 100000
max_presence_member_size_in_kb = 10
max_channel_name_length = 200
max_event_channels_at_once = 100
max_event_name_length = 200
max_event_payload_in_kb = 1024
max_event_batch_size = 100
"#,
        id = app.id,
        key = app.key,
        secret = app.secret,
    )
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
    /// Where its configuration files were written (removed when it stops).
    config_dir: Option<PathBuf>,
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
            config_dir: None,
        };
        match kind {
            ServerKind::Shardcast | ServerKind::ShardcastPusher => {
                if opts.gateways > 1 && !opts.via_redis {
                    return Err(BenchError::Options(
                        "--gateways above 1 needs --via-redis (the gateways share publications through Redis)".into(),
                    ));
                }
                if opts.via_redis {
                    server.redis = Some(RedisServer::start(&opts.redis_server, &opts.cpus)?);
                }
                let pusher_config = match kind {
                    ServerKind::ShardcastPusher => {
                        Some(server.write_config("shardcast.toml", &shardcast_pusher_config())?)
                    }
                    _ => None,
                };
                for i in 0..opts.gateways.max(1) {
                    let mut cmd = Command::new(&opts.shardcast_bin);
                    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                        .args(["--shards", &shards, "--log-format", "json", "--log", "info"])
                        .args(["--node-id", &format!("bench-{i}")]);
                    if let Some(redis) = &server.redis {
                        cmd.args(["--redis", &redis.url()]);
                    }
                    cmd.args(&opts.shardcast_args);
                    if let Some(config) = &pusher_config {
                        cmd.arg("--config").arg(config);
                    }
                    if opts.compression {
                        cmd.args(["--compression", "on"]);
                    }
                    let (ws, admin) = server.spawn_and_wait(cmd, kind.name(), &opts.cpus)?;
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
            ServerKind::Sockudo => {
                let Some(binary) = find_binary(&opts.sockudo_bin) else {
                    return Err(BenchError::Launch {
                        what: "sockudo".into(),
                        message: format!(
                            "{} not found: install Sockudo 5.2 (`cargo install sockudo --version 5.2.0 \
                             --no-default-features --features local,v2`) or pass --sockudo-bin",
                            opts.sockudo_bin.display()
                        ),
                    });
                };
                let port = free_port()?;
                let config = server.write_config("sockudo.toml", &sockudo_config(port))?;
                let mut cmd = Command::new(binary);
                // Sockudo reads config/config.toml from its working directory and
                // lets environment variables override the file: neither may leak in.
                cmd.arg("--config")
                    .arg(&config)
                    .current_dir(config.parent().unwrap_or(Path::new("/")))
                    .env_clear();
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                server.spawn_and_poll(cmd, "sockudo", &opts.cpus, addr)?;
                // Its HTTP API (the publisher's) is on the WebSocket port.
                server.ws.push(addr);
                server.admin = addr;
            }
        }
        Ok(server)
    }

    /// Where and how the publisher publishes to this server.
    pub fn publish_endpoint(&self) -> PublishEndpoint {
        PublishEndpoint {
            addr: self.admin,
            api: if self.kind.is_pusher() {
                PublishApi::Pusher(PusherApp::bench())
            } else {
                PublishApi::Native
            },
        }
    }

    /// Writes `text` to `name` in this server's own temporary directory.
    fn write_config(&mut self, name: &str, text: &str) -> Result<PathBuf, BenchError> {
        let dir = self.config_dir.get_or_insert_with(|| {
            std::env::temp_dir().join(format!("shardcast-bench-{}-{}", std::process::id(), self.kind.name()))
        });
        std::fs::create_dir_all(&*dir).context(|| format!("create {}", dir.display()))?;
        let path = dir.join(name);
        std::fs::write(&path, text).context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Spawns a server that announces nothing and waits until `GET /up` on `addr`
    /// answers 200 (Sockudo's health endpoint).
    fn spawn_and_poll(&mut self, cmd: Command, what: &str, cpus: &[usize], addr: SocketAddr) -> Result<(), BenchError> {
        let (mut child, tail) = self.spawn_logged(cmd, what, cpus, None)?;
        let ready = wait_http_ok(addr, "/up", what, Duration::from_secs(20), || {
            matches!(child.try_wait(), Ok(None))
        });
        if let Err(e) = ready {
            return Err(launch_failure(child, &tail, what, &e.to_string()));
        }
        self.processes.push(child);
        Ok(())
    }

    /// Spawns one of our servers and waits for its `"listening"` line: (ws, admin).
    fn spawn_and_wait(
        &mut self,
        cmd: Command,
        what: &str,
        cpus: &[usize],
    ) -> Result<(SocketAddr, SocketAddr), BenchError> {
        let (tx, rx) = mpsc::channel();
        let (child, tail) = self.spawn_logged(cmd, what, cpus, Some(tx))?;
        let (ws, admin) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addrs) => addrs,
            Err(_) => return Err(launch_failure(child, &tail, what, "no \"listening\" line within 20 s")),
        };
        let (Ok(ws), Ok(admin)) = (ws.parse(), admin.parse()) else {
            return Err(launch_failure(
                child,
                &tail,
                what,
                &format!("bad addresses {ws:?} {admin:?}"),
            ));
        };
        self.processes.push(child);
        Ok((ws, admin))
    }

    /// Spawns `cmd` pinned to `cpus`, its output kept in a log tail of this server
    /// (stderr's `"listening"` line sent to `listening`).
    fn spawn_logged(
        &mut self,
        mut cmd: Command,
        what: &str,
        cpus: &[usize],
        listening: Option<mpsc::Sender<(String, String)>>,
    ) -> Result<(Child, LogTail), BenchError> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        cpu_pinning::pin_command(&mut cmd, cpus);
        let mut child = cmd.spawn().map_err(|e| BenchError::Launch {
            what: what.into(),
            message: e.to_string(),
        })?;
        let tail: LogTail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            drain_log(out, tail.clone(), None);
        }
        if let Some(err) = child.stderr.take() {
            drain_log(err, tail.clone(), listening);
        }
        self.logs.push(tail.clone());
        Ok((child, tail))
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
        if let Some(dir) = self.config_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        if !self.processes.is_empty() {
            self.terminate();
        }
    }
}
