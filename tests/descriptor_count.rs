//! The descriptor count behind admission and `shardcast_open_fds` follows sockets as
//! they open and close, not only the periodic `/proc` scan: right after a flood the
//! gauge matches `/proc`, and a client arriving the moment descriptors free up is
//! admitted rather than refused from a stale count.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shardcast_proto::Encoding;

fn proc_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `shardcast_open_fds` against /proc; the scrape's own admin connection (and a
/// socket or two on its way in or out) is the slack.
async fn assert_gauge_matches(gw: &Gateway, when: &str) {
    let gauge = gw.metric("shardcast_open_fds").await as i64;
    let real = proc_fds(gw.pid()) as i64;
    assert!(
        (gauge - real).abs() <= 3,
        "{when}: shardcast_open_fds {gauge}, /proc {real}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_and_the_gauge_follow_sockets_between_scans() {
    let gw = Gateway::launch(Launch {
        args: &["--fd-reserve", "64"],
        nofile: Some(256),
    });
    let idle = proc_fds(gw.pid());
    for round in 0..5 {
        // Flood to the refusal.
        let mut clients = Vec::new();
        while let Ok(c) = Client::try_connect(gw.ws, Encoding::Json).await {
            clients.push(c);
            assert!(clients.len() < 256, "never refused");
        }
        assert_gauge_matches(&gw, "full").await;

        // Free a few descriptors and connect the moment the gateway has closed them,
        // well within the 250 ms between scans.
        let pid = gw.pid();
        let before = proc_fds(pid);
        clients.truncate(clients.len() - 20);
        let start = Instant::now();
        while proc_fds(pid) > before - 20 {
            assert!(start.elapsed() < WAIT, "the gateway did not close the sockets");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        match Client::try_connect(gw.ws, Encoding::Json).await {
            Ok(c) => clients.push(c),
            Err(e) => panic!(
                "round {round}: refused {:?} after 20 descriptors freed: {e}",
                start.elapsed()
            ),
        }
        assert_gauge_matches(&gw, "after the closes").await;
        drop(clients);
        let start = Instant::now();
        // Back to idle before the next round (a refused socket lingers up to 500 ms).
        while proc_fds(gw.pid()) > idle + 4 {
            assert!(
                start.elapsed() < WAIT,
                "idle {idle} descriptors, still {}",
                proc_fds(gw.pid())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
