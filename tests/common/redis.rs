//! `RedisServer`: a real redis-server process on a loopback port, for the scale-out tests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::server_process::free_port;
use super::WAIT;

/// A real redis-server process on a loopback port, with no persistence.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    dir: std::path::PathBuf,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(free_port(), &[])
    }

    pub fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("shardcast-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let start = Instant::now();
        while self.cli(&["PING"]) != "PONG" {
            assert!(start.elapsed() < WAIT, "redis-server did not start on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal to the server (SIGSTOP to hang it, SIGCONT to resume it).
    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe {
                libc::kill(child.id() as i32, sig);
            }
        }
    }

    /// Runs redis-cli against this server; returns its trimmed output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (no replicas), for the cluster tests.
impl RedisServer {
    /// Three Redis Cluster masters, no replicas, slots assigned and the cluster ok.
    pub fn start_cluster() -> Vec<RedisServer> {
        RedisServer::start_cluster_with(&[])
    }

    /// The same, with extra redis-server options on every node.
    pub fn start_cluster_with(extra: &[&str]) -> Vec<RedisServer> {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ];
                args.extend(extra);
                RedisServer::start_with(free_port(), &args)
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        RedisServer::wait_cluster_ok(&nodes);
        nodes
    }

    /// The id of the cluster node that owns `key`'s slot (asked of this node).
    pub fn owner_of(&self, key: &str) -> String {
        let slot: u16 = self.cli(&["CLUSTER", "KEYSLOT", key]).parse().expect("a slot");
        for line in self.cli(&["CLUSTER", "NODES"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            for range in fields.iter().skip(8) {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        return fields[0].to_owned();
                    }
                }
            }
        }
        panic!("no owner for slot {slot}");
    }

    /// This node's cluster id.
    pub fn node_id(&self) -> String {
        self.cli(&["CLUSTER", "MYID"])
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub fn wait_cluster_ok(nodes: &[RedisServer]) {
        let start = Instant::now();
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(start.elapsed() < WAIT * 2, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
