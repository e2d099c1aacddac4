//! Pusher's own JavaScript clients (pusher-js, Laravel Echo), run by the scripts
//! of tests/pusher/ in a Node process: commands go in on stdin, what the client
//! sees comes out as JSON lines.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::WAIT;

/// tests/pusher/, where the scripts and their npm packages are (tests/run.sh runs
/// `npm ci` there).
pub fn pusher_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pusher")
}

/// One client script in a Node process.
pub struct NodeScript {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<Value>,
}

impl NodeScript {
    /// Runs `script` of tests/pusher/ with `args`.
    pub fn start(script: &str, args: &[&str]) -> NodeScript {
        let mut child = Command::new("node")
            .current_dir(pusher_dir())
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (tests/run.sh runs npm ci in tests/pusher)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        NodeScript { child, stdin, lines }
    }

    /// Sends `sig` to the Node process (SIGSTOP: a client that neither reads,
    /// closes nor reconnects).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Sends one command line.
    pub fn send(&mut self, command: Value) {
        writeln!(self.stdin, "{command}").expect("write to node");
    }

    /// The first line matching `pred` within the test wait (earlier lines are dropped).
    pub fn expect(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("the client never saw {what}; it saw {seen:?}");
    }

    /// What it printed within `d`.
    pub fn lines_within(&self, d: Duration) -> Vec<Value> {
        let deadline = Instant::now() + d;
        let mut got = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => got.push(line),
                Err(_) => break,
            }
        }
        got
    }
}

impl Drop for NodeScript {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs tests/pusher/trigger.mjs (the `pusher` server library) against a gateway's
/// Pusher HTTP API; returns what it printed (the HTTP status, or a JSON line for `get`).
pub fn pusher_trigger(admin_port: u16, app: (&str, &str, &str), mode: &str, args: &Value) -> String {
    let (id, key, secret) = app;
    let out = Command::new("node")
        .current_dir(pusher_dir())
        .arg("trigger.mjs")
        .args(["127.0.0.1", &admin_port.to_string(), id, key, secret, mode])
        .arg(args.to_string())
        .output()
        .expect("node (tests/run.sh runs npm ci in tests/pusher)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A config file with one Pusher app `(id, key, secret)` and `extra` TOML lines
/// for it, in a scratch directory named after `test` (tests run in parallel).
pub fn pusher_app_config(test: &str, app: (&str, &str, &str), extra: &str) -> PathBuf {
    let (id, key, secret) = app;
    let dir = std::env::temp_dir().join(format!("shardcast-pusher-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gw.toml");
    std::fs::write(
        &path,
        format!("[pusher.apps.\"{id}\"]\nkey = \"{key}\"\nsecret = \"{secret}\"\n{extra}\n"),
    )
    .expect("config");
    path
}

/// `n` gateways with `config` on one redis-server, heartbeating every 250 ms with a
/// 2 s record TTL (so a SIGKILLed one is noticed quickly), each ready.
pub async fn heartbeat_cluster(n: usize, redis: &super::RedisServer, config: &std::path::Path) -> Vec<super::Gateway> {
    let url = redis.url();
    let args = [
        "--config",
        config.to_str().expect("utf-8"),
        "--redis",
        &url,
        "--heartbeat-interval",
        "250ms",
        "--instance-ttl",
        "2s",
    ];
    let gws: Vec<super::Gateway> = (0..n).map(|_| super::Gateway::start(&args)).collect();
    for gw in &gws {
        gw.wait_ready(200).await;
    }
    gws
}
