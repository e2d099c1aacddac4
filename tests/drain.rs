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
    // The signal is delivered asynchronously: readiness must flip within a few
    // milliseconds, not necessarily before the next request.
    let (status, body) = loop {
        let (status, body) = gw.http("GET", "/health/ready", None).await;
        if status == 503 || start.elapsed() > Duration::from_millis(300) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
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

/// PROTOCOL.md 3.5: a drain closes the public port at once (a probe there is
/// refused, as a new client is), while the admin port answers ready 503
/// `"draining":true` and live 200 for the whole drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_instance_is_told_apart_on_the_admin_port() {
    let mut gw = Gateway::start(&["--drain-window", "2s"]);
    assert_eq!(http(gw.ws, "GET", "/health/ready", None, &[]).await.0, 200);
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(gw.connect(Encoding::Json).await);
    }
    let start = Instant::now();
    gw.signal(libc::SIGTERM);
    loop {
        match tokio::net::TcpStream::connect(gw.ws).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            // A connection that reached the backlog as the listener closed is
            // reset; the next attempt is refused.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("unexpected connect error: {e}"),
            Ok(_) => {}
        }
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "public port still accepting {:?} into the drain",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The admin port tells the drain apart from a crash until the drain is over.
    let mut probes = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        let (status, body) = gw.http("GET", "/health/ready", None).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("\"draining\":true"), "{body}");
        assert_eq!(gw.http("GET", "/health/live", None).await.0, 200);
        probes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(probes >= 5, "only {probes} probes answered");
    drop(clients);
    assert_eq!(gw.wait_exit(Duration::from_secs(6)), Some(0));
}
