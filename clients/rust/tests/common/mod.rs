//! Test harness: runs the real `shardcast` gateway binary on loopback ports, and
//! bounds every wait so that a broken client fails a test instead of hanging it.
//!
//! The gateway binary is `$SHARDCAST_BIN`, else `<target dir>/debug/shardcast`,
//! built with `cargo build -p shardcast --bin shardcast` if it is missing. An
//! existing binary is used as it is: after changing the gateway, build it first
//! (the project's test script builds the whole workspace before testing).
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use shardcast_client::{AdminClient, ClientEvent, EventStream};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// Fails the test if `future` takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Reads events until one matches `wanted`; fails the test, listing what came, after [`WAIT`].
pub async fn wait_event(events: &mut EventStream, wanted: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if wanted(&event) => return event,
            Ok(Some(event)) => seen.push(event),
            Ok(None) => panic!("the event stream ended; events were: {seen:#?}"),
            Err(_) => panic!("no matching event within {WAIT:?}; events were: {seen:#?}"),
        }
    }
}

/// The gateway binary (see the module docs).
pub fn gateway_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SHARDCAST_BIN") {
            return PathBuf::from(bin);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
            Some(dir) => workspace.join(dir),
            None => workspace.join("target"),
        };
        let bin = target.join("debug").join("shardcast");
        if !bin.exists() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "shardcast", "--bin", "shardcast"])
                .current_dir(&workspace)
                .status()
                .expect("run cargo build for the gateway");
            assert!(
                status.success(),
                "building the gateway failed; build it with `cargo build`"
            );
        }
        bin
    })
}

/// A free TCP port on loopback (bound and released; good enough for test servers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running gateway process, killed when dropped.
pub struct Gateway {
    child: Child,
    /// The WebSocket address.
    pub ws: SocketAddr,
    /// The admin API address.
    pub admin: SocketAddr,
    /// The instance id from the "listening" log line.
    pub node: String,
    /// Its stderr lines (JSON logs).
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts a gateway on free ports.
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::start_at("127.0.0.1:0", args)
    }

    /// Starts a gateway whose WebSocket port is `listen` (for restarts on the same port).
    pub fn start_at(listen: &str, args: &[&str]) -> Gateway {
        let mut child = Command::new(gateway_bin())
            .args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
            .args(["--log-format", "json", "--log", "info", "--shards", "1"])
            .args(args)
            // The CLI shares this variable; a key meant for one test must not leak into the gateway.
            .env_remove("SHARDCAST_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", gateway_bin().display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (found, listening) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let field = |name: &str| v[name].as_str().unwrap_or_default().to_owned();
                        let _ = found.send((field("ws"), field("admin"), field("node")));
                    }
                }
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let (ws, admin, node) = match listening.recv_timeout(WAIT) {
            Ok(addresses) => addresses,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the gateway did not start: {:?}",
                    logs.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
        };
        Gateway {
            child,
            ws: ws.parse().expect("ws address in the log"),
            admin: admin.parse().expect("admin address in the log"),
            node,
            logs,
        }
    }

    /// `ws://<ws>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    /// `http://<admin>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// An admin API client for this gateway.
    pub fn admin(&self) -> AdminClient {
        AdminClient::new(&self.admin_url()).expect("admin URL")
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Stops the gateway with SIGTERM (a drain) and waits for it to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the gateway did not exit within {WAIT:?} of SIGTERM");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped (SIGSTOP) process.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
