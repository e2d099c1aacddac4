//! The load-balancer configs in deploy/, run for real in front of real gateways
//! (nginx through the harness's `Nginx`, HAProxy here):
//! nginx (stickiness by client address) and HAProxy (stickiness by cookie, active
//! readiness checks). The files are used as shipped, with only the marked
//! upstream and listen lines rewritten to loopback ports.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use shardcast_proto::{close, ServerFrame};

/// The HAProxy process, stopped on drop.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: a killed nginx master leaves its workers behind.
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while !matches!(self.child.try_wait(), Ok(Some(_))) && start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_haproxy(gateways: &[&Gateway]) -> Proxy {
    let dir = scratch_dir("haproxy");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let servers: Vec<String> = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| format!("    server gw{i} {} cookie gw{i}", g.ws))
        .collect();
    let config = replace_marked(&deploy_file("deploy/haproxy/haproxy.cfg"), "servers", &servers);
    let config = replace_marked(&config, "bind", &[format!("    bind {addr}")]);
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let check = Command::new("haproxy")
        .args(["-c", "-f", path.to_str().unwrap()])
        .output()
        .expect("haproxy");
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let mut child = Command::new("haproxy")
        .args(["-db", "-f", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (apt-get install haproxy)");
    wait_listening(addr, &mut child);
    Proxy { child, addr, dir }
}

/// Connects through a proxy, failing the test if it cannot.
async fn via(proxy: SocketAddr, source: IpAddr, cookie: Option<&str>) -> (Client, Option<String>) {
    connect_via(proxy, source, cookie)
        .await
        .expect("upgrade through the proxy")
}

fn source(i: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 10 + i])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keeps_clients_sticky_and_moves_them_when_a_gateway_leaves() {
    let mut cluster = ProxiedCluster::start(3, &[&FAST_HEARTBEATS[..], &["--drain-window", "500ms"]].concat()).await;
    let proxy = &cluster.nginx;
    let gws = &mut cluster.gateways;

    // Two clients from each of 12 source addresses: both land on the same gateway.
    let mut clients: Vec<(u8, Client)> = Vec::new();
    for i in 0..12u8 {
        let (mut a, _) = via(proxy.addr, source(i), None).await;
        let (mut b, _) = via(proxy.addr, source(i), None).await;
        assert_eq!(a.node, b.node, "same source address, same gateway");
        a.subscribe(1, "lb").await;
        b.subscribe(1, "lb").await;
        clients.push((i, a));
        clients.push((i, b));
    }
    let nodes: std::collections::HashSet<String> = clients.iter().map(|(_, c)| c.node.clone()).collect();
    assert!(nodes.len() >= 2, "12 addresses spread over the gateways: {nodes:?}");

    let publisher = gws[0].as_ref().unwrap();
    assert_eq!(publisher.publish("lb", json!("through nginx")).await["ok"], true);
    for (_, c) in clients.iter_mut() {
        assert!(matches!(c.recv().await, ServerFrame::Message { .. }));
    }

    // Drain the gateway holding the first client; its clients come back through nginx elsewhere.
    let leaving_node = clients[0].1.node.clone();
    let leaving = index_of_node(gws, &leaving_node).expect("the first client's gateway");
    let mut leaving_gw = gws[leaving].take().unwrap();
    leaving_gw.signal(libc::SIGTERM);
    let mut moved = 0;
    for (i, c) in clients.iter_mut() {
        if c.node != leaving_node {
            continue;
        }
        let (code, _) = c.expect_close().await;
        assert_eq!(code, close::GOING_AWAY);
        let (mut again, _) = via(proxy.addr, source(*i), None).await;
        assert_ne!(again.node, leaving_node, "reconnected to a remaining gateway");
        again.subscribe(1, "lb").await;
        *c = again;
        moved += 1;
    }
    assert!(moved >= 2);
    assert_eq!(leaving_gw.wait_exit(Duration::from_secs(5)), Some(0));

    // The cluster count converges on the remaining gateways.
    let remaining = gws.iter().flatten().next().unwrap();
    let start = Instant::now();
    loop {
        let view: serde_json::Value =
            serde_json::from_str(&remaining.http("GET", "/api/cluster", None).await.1).unwrap();
        if view["total_connections"] == 24 && view["instances"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(start.elapsed() < WAIT, "cluster view did not converge: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(remaining.publish("lb", json!("after the move")).await["ok"], true);
    for (_, c) in clients.iter_mut() {
        match c.recv().await {
            ServerFrame::Message { data, .. } => assert_eq!(data, json!("after the move")),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_sticks_by_cookie_and_skips_a_draining_gateway() {
    let redis = RedisServer::start();
    let args = ["--redis", &redis.url(), "--drain-window", "3s"];
    let gws = [Gateway::start(&args), Gateway::start(&args)];
    for gw in &gws {
        gw.wait_ready(200).await;
    }
    let proxy = start_haproxy(&[&gws[0], &gws[1]]);
    // Wait for HAProxy's checks to see both servers up (rise 2 at 1 s intervals).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (first, cookie) = via(proxy.addr, source(0), None).await;
    let cookie = cookie.expect("HAProxy sets its server cookie on the upgrade response");
    assert!(cookie.starts_with("SCSERVER="), "{cookie}");
    let mut keep = vec![first];
    for _ in 0..4 {
        let (c, _) = via(proxy.addr, source(1), Some(&cookie)).await;
        assert_eq!(c.node, keep[0].node, "the cookie pins the gateway");
        keep.push(c);
    }

    // Drain the pinned gateway: readiness turns 503, HAProxy stops sending it clients.
    let pinned = if gws[0].node_id_from_logs() == keep[0].node {
        &gws[0]
    } else {
        &gws[1]
    };
    pinned.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (moved, _) = via(proxy.addr, source(1), Some(&cookie)).await;
    assert_ne!(
        moved.node, keep[0].node,
        "a draining gateway gets no new clients, cookie or not"
    );
}
