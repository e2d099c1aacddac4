//! What starting a third-party server process (redis-server, nginx, HAProxy) for a
//! test takes: a free loopback port, a scratch directory, and a wait until it listens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use super::WAIT;

/// A free TCP port on loopback (bound and released; good enough for test servers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory for one server's config, pid and logs, unique to this test process.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardcast-{name}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until `addr` accepts connections; fails the test if `child` exits first or
/// the wait runs out.
pub fn wait_listening(addr: SocketAddr, child: &mut Child) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server for {addr} exited: {status}");
        }
        assert!(start.elapsed() < WAIT, "no server listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
