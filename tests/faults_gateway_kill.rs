//! Fault injection: one of three gateway instances killed with SIGKILL (no drain, no
//! close frames) behind nginx running deploy/nginx/nginx.conf. Its clients see their
//! connection end, reconnect through nginx with backoff, land on the remaining
//! instances and re-subscribe within a stated bound; the other clients notice nothing.
//!
//! Two fleets: raw clients with a reconnect loop of the test's own (so they can come
//! from many source addresses and spread over the instances), and the project's Rust
//! client (clients/rust), whose own reconnect, backoff and re-subscribe do the work.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use shardcast_proto::ServerFrame;
use shardcast_testkit::xorshift::XorShift;
use tokio_tungstenite::tungstenite::Message;

/// Every client of the killed instance is back and re-subscribed within this.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);
/// Backoff base and cap of the test's reconnect loop (PROTOCOL.md recommends 500 ms / 30 s).
const BACKOFF_BASE_MS: u64 = 100;
const BACKOFF_CAP_MS: u64 = 2000;

fn source(i: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 40 + i])
}

/// Connects and subscribes, retrying with full-jitter backoff; returns the client and
/// how many attempts failed first.
async fn reconnect(proxy: SocketAddr, from: IpAddr, channel: &str, seed: u64) -> (Client, u32) {
    let mut failures = 0u32;
    let mut rng = XorShift::for_stream(seed);
    let start = Instant::now();
    loop {
        match connect_via(proxy, from, None).await {
            Ok((mut c, _)) => {
                c.subscribe(1, channel).await;
                return (c, failures);
            }
            Err(e) => {
                assert!(start.elapsed() < WAIT, "no reconnect after {failures} attempts: {e}");
                let ceiling = BACKOFF_CAP_MS.min(BACKOFF_BASE_MS << failures.min(10));
                tokio::time::sleep(Duration::from_millis(rng.below(ceiling + 1))).await;
                failures += 1;
            }
        }
    }
}

/// Waits for the end of a connection whose server died; any data before it is skipped.
async fn expect_connection_end(c: &mut Client) {
    loop {
        match tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("connection ends in time")
        {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gateway_clients_come_back_through_nginx_on_the_others() {
    let mut cluster = ProxiedCluster::start(3, &FAST_HEARTBEATS).await;
    let proxy = &cluster.nginx;
    let gws = &mut cluster.gateways;

    // Three clients from each of 16 source addresses.
    let mut clients: Vec<(u8, Client)> = Vec::new();
    for i in 0..16u8 {
        for _ in 0..3 {
            let (mut c, _) = connect_via(proxy.addr, source(i), None)
                .await
                .expect("connect through nginx");
            c.subscribe(1, "feed").await;
            clients.push((i, c));
        }
    }
    let victim_node = clients[0].1.node.clone();
    let victim = index_of_node(gws, &victim_node).expect("the first client's gateway");
    let on_victim = clients.iter().filter(|(_, c)| c.node == victim_node).count();
    assert!(
        on_victim >= 3 && on_victim < clients.len(),
        "{on_victim} clients on the victim"
    );

    let publisher_index = (victim + 1) % 3;
    gws[publisher_index]
        .as_ref()
        .unwrap()
        .publish("feed", json!("before"))
        .await;
    for (_, c) in clients.iter_mut() {
        assert!(matches!(c.recv().await, ServerFrame::Message { .. }));
    }

    // SIGKILL: no close frame, no drain; nginx sees the upstream sockets die.
    let killed = gws[victim].take().unwrap();
    let killed_at = Instant::now();
    killed.signal(libc::SIGKILL);

    // Every client of the victim runs its own reconnect loop, all at once, as a fleet would.
    let (moved, stayed): (Vec<_>, Vec<_>) = clients.into_iter().partition(|(_, c)| c.node == victim_node);
    let proxy_addr = proxy.addr;
    let outcomes = futures_util::future::join_all(moved.into_iter().enumerate().map(|(k, (i, mut c))| async move {
        expect_connection_end(&mut c).await;
        drop(c);
        let (again, failed) = reconnect(proxy_addr, source(i), "feed", k as u64 + 1).await;
        (i, again, failed, killed_at.elapsed())
    }))
    .await;
    let mut clients = stayed;
    let mut recoveries = Vec::new();
    let mut retries = 0u32;
    for (i, again, failed, took) in outcomes {
        assert_ne!(again.node, victim_node, "back on a live instance");
        recoveries.push(took);
        retries += failed;
        clients.push((i, again));
    }
    let slowest = recoveries.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{on_victim} clients re-subscribed elsewhere; slowest {slowest:?} after the kill, {retries} failed attempts"
    );
    assert!(
        slowest < RECOVERY_BOUND,
        "clients back after {slowest:?}, bound {RECOVERY_BOUND:?}"
    );
    drop(killed);

    // Everyone, moved or not, gets the next publication exactly once.
    let publisher = gws[publisher_index].as_ref().unwrap();
    publisher.publish("feed", json!("after")).await;
    for (_, c) in clients.iter_mut() {
        match c.recv().await {
            ServerFrame::Message { data, .. } => assert_eq!(data, json!("after")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(c.roundtrip(7).await.is_empty(), "no duplicate");
    }
    // The clients that stayed were never disconnected.
    for gw in gws.iter().flatten() {
        assert_eq!(sum_series(&gw.metrics().await, "shardcast_disconnections_total"), 0.0);
    }
    // The dead instance leaves the cluster view once its heartbeat expires.
    let start = Instant::now();
    loop {
        let view: serde_json::Value =
            serde_json::from_str(&publisher.http("GET", "/api/cluster", None).await.1).unwrap();
        if view["instances"].as_array().map(Vec::len) == Some(2) && view["total_connections"] == clients.len() {
            break;
        }
        assert!(start.elapsed() < WAIT, "cluster view did not converge: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_clients_reconnect_and_resubscribe_through_nginx_after_a_kill() {
    use shardcast_client::{Client as RustClient, ReconnectPolicy};
    const CLIENTS: usize = 20;
    let mut cluster = ProxiedCluster::start(3, &[]).await;
    let proxy = &cluster.nginx;
    let gws = &mut cluster.gateways;
    let url = format!("ws://{}/ws", proxy.addr);
    let policy = ReconnectPolicy {
        initial_delay: Duration::from_millis(BACKOFF_BASE_MS),
        max_delay: Duration::from_millis(BACKOFF_CAP_MS),
        ..ReconnectPolicy::default()
    };
    let mut fleet = Vec::new();
    for _ in 0..CLIENTS {
        let client = RustClient::builder(url.as_str())
            .reconnect(policy.clone())
            .build()
            .expect("client");
        let sub = tokio::time::timeout(WAIT, client.subscribe("feed"))
            .await
            .expect("subscribed in time")
            .expect("subscribe");
        fleet.push((client, sub));
    }
    // One source address: nginx's hash puts the whole fleet on one instance.
    let victim_node = fleet[0].0.welcome().expect("welcome").node;
    assert!(fleet
        .iter()
        .all(|(c, _)| c.welcome().map(|w| w.node) == Some(victim_node.clone())));
    let victim = index_of_node(gws, &victim_node).expect("the fleet's gateway");
    let killed = gws[victim].take().unwrap();
    let killed_at = Instant::now();
    killed.signal(libc::SIGKILL);

    // Publish on a survivor until every subscription has received one: that is when
    // each client is back, through nginx, on a live instance and re-subscribed.
    let survivor = gws.iter().flatten().next().unwrap();
    let mut pending: Vec<_> = fleet.iter_mut().map(|(_, s)| s).collect();
    let mut n = 0;
    while !pending.is_empty() {
        assert!(
            killed_at.elapsed() < RECOVERY_BOUND,
            "{} clients not back after {RECOVERY_BOUND:?}",
            pending.len()
        );
        n += 1;
        survivor.publish("feed", json!({"after": n})).await;
        // All subscriptions listen at once, so one round costs 100 ms, not 100 ms each.
        let rounds = futures_util::future::join_all(pending.into_iter().map(|sub| async move {
            let got = tokio::time::timeout(Duration::from_millis(100), sub.recv()).await;
            (matches!(got, Ok(Some(m)) if m.data.get("after").is_some()), sub)
        }))
        .await;
        pending = rounds
            .into_iter()
            .filter(|(back, _)| !back)
            .map(|(_, sub)| sub)
            .collect();
    }
    let recovered = killed_at.elapsed();
    eprintln!("{CLIENTS} Rust clients back and re-subscribed {recovered:?} after the kill");
    for (client, _) in &fleet {
        assert_ne!(
            client.welcome().map(|w| w.node),
            Some(victim_node.clone()),
            "on a live instance"
        );
    }
    drop(killed);
}
