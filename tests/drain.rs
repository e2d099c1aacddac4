//! Graceful drain on SIGTERM: readiness goes false at once, every client gets
//! "going away" with a retry hint, the closes are spread over the drain window, and
//! the process exits 0 within it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shardcast_proto::{close, Encoding};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_within_the_window() {
    let mut gw = Gateway::start(&["--drain-window", "1s", "--shards", "2"]);
    assert_eq!(gw.http("GET", "/health/ready", None).await.0, 200);
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = gw
            .connect(if i % 2 == 0 { Encoding::Json } else { Encoding::MsgPack })
            .await;
        c.subscribe(1, "news").await;
        clients.push(c);
    }

    let start = Instant::now();
    gw.signal(libc::SIGTERM);
    let (status, body) = gw.http("GET", "/health/ready", None).await;
    assert_eq!(status, 503, "not ready while draining: {body}");
    assert!(body.contains("\"draining\":true"), "{body}");
    assert_eq!(
        gw.http("GET", "/health/live", None).await.0,
        200,
        "still live while draining"
    );

    let closes = clients.into_iter().map(|mut c| {
        tokio::spawn(async move {
            let (code, reason) = c.expect_close().await;
            (code, reason, start.elapsed())
        })
    });
    let mut times = Vec::new();
    for handle in closes {
        let (code, reason, at) = handle.await.unwrap();
        assert_eq!(code, close::GOING_AWAY);
        assert!(close::retry_ms(&reason).is_some(), "retry hint in {reason:?}");
        times.push(at);
    }
    times.sort();
    let spread = times[times.len() - 1] - times[0];
    assert!(
        spread >= Duration::from_millis(300),
        "closes spread over the window, got {spread:?}"
    );
    assert!(
        times[times.len() - 1] <= Duration::from_millis(1500),
        "all closed within the window"
    );

    let code = gw.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "exit status after drain");
    assert!(start.elapsed() < Duration::from_secs(4));
}
