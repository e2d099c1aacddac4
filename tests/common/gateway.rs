//! A gateway process under test: the real `shardcast` binary on loopback ports,
//! its log lines, signals, exit code and memory, and its admin API (publish,
//! metrics, readiness) as a backend would call it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardcast_proto::Encoding;

use super::client::Client;
use super::http_client::http;
use super::metrics_text::metric_value;
use super::WAIT;

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// Options for starting a gateway.
#[derive(Default)]
pub struct Launch<'a> {
    pub args: &'a [&'a str],
    /// Hard and soft RLIMIT_NOFILE for the gateway process.
    pub nofile: Option<u64>,
}

impl Gateway {
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::launch(Launch { args, nofile: None })
    }

    pub fn launch(opts: Launch<'_>) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(["--log", "info"])
        .args(opts.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(n) = opts.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only this child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start shardcast");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send((
                            v["ws"].as_str().unwrap_or("").to_owned(),
                            v["admin"].as_str().unwrap_or("").to_owned(),
                        ));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (ws, admin) = match rx.recv_timeout(WAIT) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                panic!("gateway did not start: {:?}", logs.lock().unwrap());
            }
        };
        Gateway {
            child,
            ws: ws.parse().expect("ws addr"),
            admin: admin.parse().expect("admin addr"),
            logs,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident memory of the gateway process in bytes.
    pub fn rss(&self) -> u64 {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.pid())).expect("statm");
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    pub async fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(self.admin, method, path, body, &[]).await
    }

    pub async fn publish(&self, channel: &str, data: serde_json::Value) -> serde_json::Value {
        let body = serde_json::json!({"channel": channel, "data": data}).to_string();
        let (status, text) = self.http("POST", "/api/publish", Some(&body)).await;
        assert_eq!(status, 200, "publish failed: {text}");
        serde_json::from_str(&text).expect("publish reply is JSON")
    }

    pub async fn metrics(&self) -> String {
        self.http("GET", "/metrics", None).await.1
    }

    /// The value of one series (name plus exact label set, e.g. `{reason="x"}`), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Polls a metric until `pred` holds or the wait runs out; returns the last value.
    pub async fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let start = Instant::now();
        loop {
            let v = self.metric(series).await;
            if pred(v) || start.elapsed() > WAIT {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the gateway has dropped messages queued for a slow consumer;
    /// returns how many (0 if none within the wait).
    pub async fn wait_slow_consumer_drops(&self) -> f64 {
        self.wait_metric("shardcast_messages_dropped_total{reason=\"slow_consumer\"}", |v| {
            v > 0.0
        })
        .await
    }

    pub async fn connect(&self, encoding: Encoding) -> Client {
        Client::connect(self.ws, encoding).await
    }

    /// Waits until /health/ready answers `status`.
    pub async fn wait_ready(&self, status: u16) {
        let start = Instant::now();
        loop {
            let (got, body) = self.http("GET", "/health/ready", None).await;
            if got == status {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "readiness stayed {got} ({body}), wanted {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node id this gateway announced in its "listening" log line.
    pub fn node_id_from_logs(&self) -> String {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "listening")
            .and_then(|v| v["node"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `n` gateways with the same arguments and waits until each is ready. Each is
/// an `Option` so a test can take one out to stop or kill it.
pub async fn ready_gateways(n: usize, args: &[&str]) -> Vec<Option<Gateway>> {
    let gws: Vec<Option<Gateway>> = (0..n).map(|_| Some(Gateway::start(args))).collect();
    for gw in gws.iter().flatten() {
        gw.wait_ready(200).await;
    }
    gws
}

/// The index of the (still running) gateway whose node id is `node`.
pub fn index_of_node(gateways: &[Option<Gateway>], node: &str) -> Option<usize> {
    gateways
        .iter()
        .position(|g| g.as_ref().is_some_and(|g| g.node_id_from_logs() == node))
}
