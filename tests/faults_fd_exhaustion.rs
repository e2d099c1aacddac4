//! Fault injection: a connection flood far past the gateway's descriptor limit.
//!
//! With the shipped reserve, the flood is refused at admission: upgrades get 503 with
//! Retry-After, every refusal is
//! counted, the process never runs out of descriptors, existing subscribers keep
//! receiving, and new clients are admitted again as soon as the flood stops.
//!
//! With no reserve at all (`--fd-reserve 0`), the flood does exhaust the descriptors:
//! `accept` fails with EMFILE, which is counted (`fd_exhausted`) without a busy loop,
//! and the gateway recovers by itself once the handshake timeout frees the sockets.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use shardcast_proto::{Encoding, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How one flood connection ended.
#[derive(Debug, Default)]
struct Outcomes {
    upgraded: usize,
    refused_503: usize,
    closed_without_answer: usize,
    connect_failed: usize,
}

/// Opens `n` connections that each send an upgrade request (or nothing, if `silent`),
/// `batch` at a time; returns the open sockets.
async fn flood(gw: SocketAddr, n: usize, silent: bool) -> (Vec<TcpStream>, usize) {
    let mut open = Vec::with_capacity(n);
    let mut failed = 0;
    let request = upgrade_request(gw);
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let batch = futures_util::future::join_all(chunk.iter().map(|_| {
            let request = request.clone();
            async move {
                let mut s = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(gw))
                    .await
                    .ok()?
                    .ok()?;
                if !silent {
                    s.write_all(request.as_bytes()).await.ok()?;
                }
                Some(s)
            }
        }))
        .await;
        for s in batch {
            match s {
                Some(s) => open.push(s),
                None => failed += 1,
            }
        }
    }
    (open, failed)
}

/// Reads what each flood socket got back (within `limit`) and sorts the outcomes.
async fn classify(sockets: &mut [TcpStream], limit: Duration) -> Outcomes {
    let heads = futures_util::future::join_all(sockets.iter_mut().map(|s| async move {
        let mut buf = vec![0u8; 512];
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(n)) => buf[..n].to_vec(),
            _ => Vec::new(),
        }
    }))
    .await;
    let mut out = Outcomes::default();
    for head in heads {
        if head.starts_with(b"HTTP/1.1 101") {
            out.upgraded += 1;
        } else if head.starts_with(b"HTTP/1.1 503") {
            assert!(
                String::from_utf8_lossy(&head).contains("Retry-After: 2"),
                "a 503 carries Retry-After"
            );
            out.refused_503 += 1;
        } else {
            out.closed_without_answer += 1;
        }
    }
    out
}

/// Polls until a new client is admitted; returns how long it took.
async fn admitted_again(gw: &Gateway) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(mut c) = Client::try_connect(gw.ws, Encoding::Json).await {
            assert!(c.roundtrip(1).await.is_empty());
            return start.elapsed();
        }
        assert!(start.elapsed() < WAIT, "no new client admitted after the flood");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_past_the_descriptor_limit_is_refused_and_subscribers_keep_receiving() {
    const LIMIT: u64 = 512;
    const FLOOD: usize = 2000;
    let gw = Gateway::launch(Launch {
        args: &["--fd-reserve", "128", "--handshake-timeout", "2s"],
        nofile: Some(LIMIT),
    });
    let mut subs = subscribers(gw.ws, "alerts", 20).await;

    let (mut flood_sockets, connect_failed) = flood(gw.ws, FLOOD, false).await;
    // While the flood holds its sockets, publishing and delivery go on as usual.
    for n in 0..5 {
        assert_eq!(gw.publish("alerts", json!(n)).await["subscribers"], 20);
    }
    for c in subs.iter_mut() {
        for n in 0..5 {
            match c.recv().await {
                ServerFrame::Message { data, .. } => assert_eq!(data, json!(n)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let mut outcomes = classify(&mut flood_sockets, Duration::from_secs(3)).await;
    outcomes.connect_failed = connect_failed;
    let metrics = gw.metrics().await;
    let refused_headroom = metric_value(&metrics, "shardcast_connections_refused_total{reason=\"fd_headroom\"}");
    eprintln!("flood of {FLOOD}: {outcomes:?}; refused for headroom: {refused_headroom}");
    assert!(
        outcomes.upgraded < LIMIT as usize,
        "admitted past the limit: {outcomes:?}"
    );
    assert!(outcomes.refused_503 >= 64, "few clean refusals: {outcomes:?}");
    assert!(
        refused_headroom >= (outcomes.refused_503 + outcomes.closed_without_answer) as f64 * 0.9,
        "refusals counted: {refused_headroom} for {outcomes:?}"
    );
    assert_eq!(
        metric_value(&metrics, "shardcast_connections_refused_total{reason=\"fd_exhausted\"}"),
        0.0,
        "the reserve kept accept() from ever running out of descriptors"
    );
    assert!(metric_value(&metrics, "shardcast_open_fds") < LIMIT as f64);

    // The flood stops: new clients are admitted within a couple of recounts.
    drop(flood_sockets);
    let took = admitted_again(&gw).await;
    eprintln!("admitted again {took:?} after the flood stopped");
    assert!(took < Duration::from_secs(3), "recovery took {took:?}");
    assert!(gw.wait_metric("shardcast_fd_headroom", |v| v > 128.0).await > 128.0);
    for (i, c) in subs.iter_mut().enumerate() {
        assert!(c.roundtrip(i as u64).await.is_empty(), "subscriber {i} survived");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reserve_accept_hits_emfile_and_the_gateway_recovers() {
    const LIMIT: u64 = 160;
    let gw = Gateway::launch(Launch {
        args: &["--fd-reserve", "0", "--handshake-timeout", "1s", "--shards", "2"],
        nofile: Some(LIMIT),
    });
    let mut sub = gw.connect(Encoding::Json).await;
    sub.subscribe(1, "alerts").await;

    // Silent sockets: each admitted one holds a descriptor until the handshake timeout.
    let (flood_sockets, _) = flood(gw.ws, 600, true).await;
    let start = Instant::now();
    let stats = tokio::task::spawn_blocking({
        let pid = gw.pid();
        move || {
            let mut max_fds = 0;
            let mut cpu_start = None;
            while start.elapsed() < Duration::from_millis(800) {
                max_fds = max_fds.max(proc_sample(pid).fds);
                cpu_start.get_or_insert_with(|| cpu_ticks(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            (max_fds, cpu_ticks(pid) - cpu_start.unwrap_or(0))
        }
    })
    .await
    .unwrap();
    let (max_fds, ticks) = stats;
    eprintln!("descriptors peaked at {max_fds} of {LIMIT}; {ticks} CPU ticks in 0.8 s while exhausted");
    assert!(max_fds as u64 >= LIMIT - 2, "the flood did not exhaust the descriptors");
    // 100 ticks a second is one core; a spinning accept loop would burn most of the 80.
    assert!(
        ticks < 60,
        "the accept loop spins while out of descriptors: {ticks} ticks"
    );

    // The handshake timeout (1 s) ends the admitted silent sockets; then the flood stops.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(start.elapsed())).await;
    drop(flood_sockets);
    let took = admitted_again(&gw).await;
    eprintln!("admitted again {took:?} after the flood stopped");
    let exhausted = gw
        .metric("shardcast_connections_refused_total{reason=\"fd_exhausted\"}")
        .await;
    assert!(exhausted >= 1.0, "EMFILE on accept was counted");
    assert!(
        gw.metric("shardcast_connections_refused_total{reason=\"handshake_timeout\"}")
            .await
            >= 100.0
    );
    // The subscriber was never touched.
    assert_eq!(gw.publish("alerts", json!("after")).await["subscribers"], 1);
    assert!(matches!(sub.recv().await, ServerFrame::Message { .. }));
}

/// User plus system CPU time of a process, in clock ticks (/proc/PID/stat fields 14, 15).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After the name, field 3 of stat is index 0 here: utime is index 11, stime 12.
    field(11) + field(12)
}
