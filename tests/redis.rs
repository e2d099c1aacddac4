//! Scale-out through a real redis-server: every subscriber on every instance gets
//! every publication exactly once, whoever published it (an instance's API, or any
//! application with plain PUBLISH); one Redis message per instance per publication;
//! Redis going away keeps sockets open and comes back with every subscription.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use shardcast_proto::{ClientFrame, Encoding, ServerFrame};

fn redis_args(redis: &RedisServer) -> Vec<String> {
    vec![
        "--redis".into(),
        redis.url(),
        "--heartbeat-interval".into(),
        "300ms".into(),
        "--instance-ttl".into(),
        "1s".into(),
    ]
}

fn start_gateways(redis: &RedisServer, n: usize, extra: &[&str]) -> Vec<Gateway> {
    let args = redis_args(redis);
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    (0..n).map(|_| Gateway::start(&all)).collect()
}

async fn expect_message(c: &mut Client, channel: &str, data: serde_json::Value) -> u64 {
    loop {
        match c.recv().await {
            ServerFrame::Message {
                channel: ch,
                seq,
                data: d,
                ..
            } => {
                assert_eq!((ch.as_str(), &d), (channel, &data));
                return seq;
            }
            // An instance whose Redis connection dropped (a loaded machine can make the
            // client time out and reconnect) rightly announces a possible gap.
            ServerFrame::Gap { .. } => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_gets_api_and_redis_publishes_once() {
    let redis = RedisServer::start();
    let gws = start_gateways(&redis, 3, &[]);
    let mut clients = Vec::new();
    for gw in &gws {
        gw.wait_ready(200).await;
        let mut c = gw.connect(Encoding::Json).await;
        c.subscribe(1, "news").await;
        clients.push(c);
    }

    let reply = gws[0].publish("news", json!({"from": "api"})).await;
    assert_eq!(
        reply["subscribers"], 1,
        "local subscribers of the instance that took the call"
    );
    for c in clients.iter_mut() {
        assert_eq!(expect_message(c, "news", json!({"from": "api"})).await, 1);
    }

    assert_eq!(
        redis.cli(&["PUBLISH", "shardcast:news", r#"{"from":"redis-cli"}"#]),
        "3"
    );
    assert_eq!(redis.cli(&["PUBLISH", "shardcast:news", "!abc"]), "3");
    assert_eq!(redis.cli(&["PUBLISH", "shardcast:news", "not json"]), "3");
    for c in clients.iter_mut() {
        assert_eq!(expect_message(c, "news", json!({"from": "redis-cli"})).await, 2);
        assert_eq!(expect_message(c, "news", json!({"$bin": "YWJj"})).await, 3);
        assert!(
            c.roundtrip(9).await.is_empty(),
            "no duplicate, and the bad payload delivered nothing"
        );
    }
    for gw in &gws {
        let bad = gw
            .wait_metric("shardcast_messages_dropped_total{reason=\"bad_payload\"}", |v| v >= 1.0)
            .await;
        assert_eq!(bad, 1.0);
        assert!(
            gw.http("GET", "/health/ready", None).await.0 == 200,
            "a bad payload breaks nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_message_per_instance_per_publication() {
    let redis = RedisServer::start();
    let gws = start_gateways(&redis, 2, &[]);
    for gw in &gws {
        gw.wait_ready(200).await;
    }
    let mut crowd = subscribers(gws[0].ws, "big", 1000).await;
    let mut lone = gws[1].connect(Encoding::Json).await;
    lone.subscribe(1, "big").await;
    let before = gws[0].metric("shardcast_redis_messages_received_total").await;
    for n in 0..10 {
        gws[1].publish("big", json!(n)).await;
    }
    for n in 0..10 {
        expect_message(&mut lone, "big", json!(n)).await;
    }
    for c in crowd.iter_mut() {
        for n in 0..10 {
            expect_message(c, "big", json!(n)).await;
        }
    }
    let after = gws[0].metric("shardcast_redis_messages_received_total").await;
    assert_eq!(
        after - before,
        10.0,
        "10 publications crossed Redis 10 times for 1000 subscribers"
    );
    assert_eq!(gws[0].metric("shardcast_messages_delivered_total").await, 10_000.0);
    assert_eq!(
        redis.cli(&["PUBSUB", "NUMSUB", "shardcast:big"]).lines().nth(1),
        Some("2"),
        "one subscription per instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_stale_redis_subscription() {
    let redis = RedisServer::start();
    let gws = start_gateways(&redis, 1, &["--shards", "2"]);
    let gw = &gws[0];
    gw.wait_ready(200).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = gw.connect(Encoding::Json).await;
        for ch in 0..20 {
            if (ch + i) % 3 != 0 {
                c.subscribe(ch as u64, &format!("room-{ch}")).await;
            }
        }
        clients.push(c);
    }
    // Unsubscribe every client from rooms 0-9, and close two clients altogether.
    for c in clients.iter_mut() {
        for ch in 0..10u64 {
            c.send(&ClientFrame::Unsubscribe {
                id: Some(100 + ch),
                channel: format!("room-{ch}"),
            })
            .await;
        }
        c.roundtrip(999).await;
    }
    clients.pop().unwrap().close().await;
    clients.pop().unwrap().close().await;
    let expected: Vec<String> = (10..20).map(|ch| format!("shardcast:room-{ch}")).collect();
    let start = Instant::now();
    loop {
        let mut got: Vec<String> = redis
            .cli(&["PUBSUB", "CHANNELS", "shardcast:*"])
            .lines()
            // The instance's own channels (the probe and control channels, src/broker/redis/)
            // start with `#`, which no client channel may: they are not client channels.
            .filter(|c| !c.starts_with("shardcast:#"))
            .map(str::to_owned)
            .collect();
        got.sort();
        let mut want = expected.clone();
        want.sort();
        if got == want {
            break;
        }
        assert!(start.elapsed() < WAIT, "redis channels {got:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.metric("shardcast_redis_subscriptions").await, 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_sockets_and_recovers() {
    let mut redis = RedisServer::start();
    let gws = start_gateways(&redis, 1, &[]);
    let gw = &gws[0];
    gw.wait_ready(200).await;
    let mut c = gw.connect(Encoding::Json).await;
    c.subscribe(1, "ticker").await;
    assert_eq!(redis.cli(&["PUBLISH", "shardcast:ticker", "1"]), "1");
    expect_message(&mut c, "ticker", json!(1)).await;

    redis.kill();
    gw.wait_ready(503).await;
    assert_eq!(gw.http("GET", "/health/live", None).await.0, 200, "liveness stays up");
    // A publish while Redis is down reaches local subscribers and says it did not reach the others.
    let body = json!({"channel": "ticker", "data": 2}).to_string();
    let (status, text) = gw.http("POST", "/api/publish", Some(&body)).await;
    assert_eq!(status, 503, "{text}");
    let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["error"]["code"], "unavailable");
    assert_eq!(reply["results"][0]["subscribers"], 1);
    expect_message(&mut c, "ticker", json!(2)).await;
    // A new subscription while Redis is down is taken, and made on Redis once it is back.
    c.subscribe(2, "late").await;

    redis.restart();
    gw.wait_ready(200).await;
    // Publications made through other instances during the outage never reached this
    // one: each subscribed channel gets a gap frame on the open connection.
    let mut gaps = std::collections::BTreeSet::new();
    while gaps.len() < 2 {
        match c.recv().await {
            ServerFrame::Gap { channel, .. } => gaps.insert(channel),
            other => panic!("expected gap frames, got {other:?}"),
        };
    }
    assert_eq!(gaps.into_iter().collect::<Vec<_>>(), ["late", "ticker"]);

    assert_eq!(
        redis.cli(&["PUBLISH", "shardcast:ticker", "3"]),
        "1",
        "re-subscribed after the restart"
    );
    expect_message(&mut c, "ticker", json!(3)).await;
    assert_eq!(redis.cli(&["PUBLISH", "shardcast:late", "4"]), "1");
    expect_message(&mut c, "late", json!(4)).await;
    assert!(
        c.roundtrip(5).await.is_empty(),
        "the same socket stayed open throughout"
    );
    assert!(gw.metric("shardcast_redis_reconnects_total").await >= 1.0);
    assert_eq!(gw.metric("shardcast_disconnections_total{reason=\"eof\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_view_counts_every_instance() {
    let redis = RedisServer::start();
    let mut gws = start_gateways(&redis, 3, &[]);
    let mut clients = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        gw.wait_ready(200).await;
        for _ in 0..=i {
            clients.push(gw.connect(Encoding::Json).await);
        }
    }
    let cluster = |gw: &Gateway| {
        let admin = gw.admin;
        async move {
            serde_json::from_str::<serde_json::Value>(&http(admin, "GET", "/api/cluster", None, &[]).await.1).unwrap()
        }
    };
    let start = Instant::now();
    while cluster(&gws[0]).await["total_connections"] != 6 {
        assert!(start.elapsed() < WAIT, "cluster view: {}", cluster(&gws[0]).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = cluster(&gws[2]).await;
    assert_eq!(view["instances"].as_array().unwrap().len(), 3, "{view}");
    assert_eq!(
        gws[1].wait_metric("shardcast_cluster_connections", |v| v == 6.0).await,
        6.0
    );

    // A killed instance drops out within its TTL.
    let dead = gws.remove(2);
    drop(dead);
    let start = Instant::now();
    while cluster(&gws[0]).await["total_connections"] != 3 || cluster(&gws[1]).await["total_connections"] != 3 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "cluster view: {}",
            cluster(&gws[0]).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster(&gws[1]).await["instances"].as_array().unwrap().len(), 2);
}
