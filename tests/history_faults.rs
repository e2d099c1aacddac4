//! History under faults (issue #12), with real processes: a gateway SIGKILLed
//! behind nginx, redis-server killed and restarted with and without persistence,
//! redis-server hung (SIGSTOP), and a Redis Cluster. The measure everywhere is the
//! same: every publication the API answered 2xx for reaches every subscriber
//! exactly once, in offset order; what history cannot cover is said explicitly.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use shardcast_proto::{decode_server, ClientFrame, Encoding, GapReason, ServerFrame, StreamPosition};
use tokio_tungstenite::tungstenite::Message;

const HISTORY: [&str; 2] = ["--history-size", "20000"];

/// What one subscriber saw: each `data.n` with its offset and epoch, and gaps.
#[derive(Default, Debug)]
struct Seen {
    /// n -> how many times it arrived.
    counts: BTreeMap<u64, u32>,
    /// The last (offset, epoch), for `recover` and for the order check.
    last: Option<(u64, String)>,
    out_of_order: Vec<String>,
    gaps: Vec<Option<GapReason>>,
    reconnects: u32,
    not_recovered: u32,
}

impl Seen {
    fn message(&mut self, offset: Option<u64>, epoch: Option<String>, data: &Value) {
        if let Some(n) = data["n"].as_u64() {
            *self.counts.entry(n).or_default() += 1;
        }
        if let (Some(offset), Some(epoch)) = (offset, epoch) {
            if let Some((last, last_epoch)) = &self.last {
                if *last_epoch == epoch && offset != last + 1 {
                    self.out_of_order.push(format!("{last} then {offset}"));
                }
            }
            self.last = Some((offset, epoch));
        }
    }
}

/// Subscribes `channel` on an open client (with `recover` from `seen.last`) and
/// reads until the connection ends or `stop` is set; returns when it ends.
async fn follow(c: &mut Client, channel: &str, seen: &Mutex<Seen>, stop: &std::sync::atomic::AtomicBool) {
    let recover = seen
        .lock()
        .unwrap()
        .last
        .clone()
        .map(|(offset, epoch)| StreamPosition { offset, epoch });
    let resumed = recover.is_some();
    c.send(&ClientFrame::Subscribe {
        id: Some(1),
        channel: channel.into(),
        token: None,
        recover,
        latest: false,
    })
    .await;
    loop {
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let msg = match tokio::time::timeout(Duration::from_millis(200), c.ws.next()).await {
            Err(_) => continue,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Ok(Message::Text(t)))) => t.as_bytes().to_vec(),
            Ok(Some(Ok(Message::Binary(b)))) => b.to_vec(),
            Ok(Some(Ok(_))) => continue,
        };
        let frame = decode_server(c.encoding, &msg).expect("decodable");
        let mut seen = seen.lock().unwrap();
        match frame {
            ServerFrame::Message {
                offset, epoch, data, ..
            } => seen.message(offset, epoch, &data),
            ServerFrame::Ack {
                id: Some(1),
                offset,
                epoch,
                recovered,
                ..
            } => {
                if resumed && recovered != Some(true) {
                    seen.not_recovered += 1;
                }
                if seen.last.is_none() || recovered == Some(false) {
                    // Start (or restart) from the position of this subscription.
                    seen.last = offset.zip(epoch);
                }
            }
            ServerFrame::Gap { reason, .. } => seen.gaps.push(reason),
            _ => {}
        }
    }
}

/// Publishes `{"n": n}` every `every` until `until`; returns the n answered 2xx
/// and the slowest non-2xx answer.
async fn publish_stream(admin: SocketAddr, channel: &str, every: Duration, until: Instant) -> (Vec<u64>, Duration) {
    let mut accepted = Vec::new();
    let mut slowest_failure = Duration::ZERO;
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let body = json!({"channel": channel, "data": {"n": n}}).to_string();
        let start = Instant::now();
        let (status, _) = http(admin, "POST", "/api/publish", Some(&body), &[]).await;
        if status == 200 {
            accepted.push(n);
        } else {
            slowest_failure = slowest_failure.max(start.elapsed());
        }
        tokio::time::sleep(every).await;
    }
    (accepted, slowest_failure)
}

/// Waits until `seen` holds every accepted n, then checks each came exactly once.
async fn expect_all_once(name: &str, seen: &Mutex<Seen>, accepted: &[u64]) {
    let start = Instant::now();
    loop {
        let missing: Vec<u64> = {
            let s = seen.lock().unwrap();
            accepted.iter().copied().filter(|n| !s.counts.contains_key(n)).collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "{name}: {} accepted publications never arrived, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = seen.lock().unwrap();
    let doubled: Vec<_> = s.counts.iter().filter(|(_, c)| **c > 1).map(|(n, _)| *n).collect();
    assert!(doubled.is_empty(), "{name}: delivered twice: {doubled:?}");
    assert!(
        s.out_of_order.is_empty(),
        "{name}: out of offset order: {:?}",
        s.out_of_order
    );
}

fn source(i: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 60 + i])
}

/// A gateway SIGKILLed behind nginx while a publisher sends one publication every
/// 5 ms: its subscribers reconnect (with `recover`) to the others and end with
/// every publication exactly once, in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_subscribers_recover_everything_through_nginx() {
    let mut cluster = ProxiedCluster::start(3, &HISTORY).await;
    let proxy = cluster.nginx.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut followers = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..12u8 {
        let (c, _) = connect_via(proxy, source(i), None)
            .await
            .expect("connect through nginx");
        nodes.push(c.node.clone());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = stop.clone();
        let task_seen = seen.clone();
        followers.push((
            seen,
            tokio::spawn(async move {
                let mut c = c;
                loop {
                    follow(&mut c, "ticker", &task_seen, &stop).await;
                    if stop.load(std::sync::atomic::Ordering::Acquire) {
                        return;
                    }
                    task_seen.lock().unwrap().reconnects += 1;
                    let start = Instant::now();
                    c = loop {
                        match connect_via(proxy, source(i), None).await {
                            Ok((c, _)) => break c,
                            Err(e) => assert!(start.elapsed() < WAIT, "no reconnect: {e}"),
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    };
                }
            }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim_node = nodes[0].clone();
    let victim = index_of_node(&cluster.gateways, &victim_node).expect("victim");
    let on_victim = nodes.iter().filter(|n| **n == victim_node).count();
    let publisher = cluster.gateways[(victim + 1) % 3].as_ref().expect("publisher").admin;
    let until = Instant::now() + Duration::from_secs(4);
    let stream = tokio::spawn(publish_stream(publisher, "ticker", Duration::from_millis(5), until));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.gateways[victim].take().expect("victim").signal(libc::SIGKILL);
    let (accepted, _) = stream.await.expect("publisher");
    assert!(accepted.len() > 300, "only {} publications accepted", accepted.len());
    for (k, (seen, _)) in followers.iter().enumerate() {
        expect_all_once(&format!("subscriber {k}"), seen, &accepted).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let mut moved = 0;
    for (seen, task) in followers {
        task.await.expect("follower");
        let s = seen.lock().unwrap();
        assert_eq!(s.not_recovered, 0, "every re-subscribe recovered");
        moved += usize::from(s.reconnects > 0);
    }
    assert_eq!(moved, on_victim, "the victim's subscribers, and only they, reconnected");
    eprintln!(
        "{} publications, {on_victim} subscribers moved, 0 lost, 0 doubled",
        accepted.len()
    );
}

/// Two gateways on one redis-server; subscribers on both; a publication every 5 ms
/// through the first while redis-server is killed and restarted. Without
/// persistence the epoch changes (said by a gap frame on open connections, and by
/// `recovered: false` to a re-subscribe); with `appendonly yes` nothing changes.
/// Either way nothing the API answered 2xx for is lost on open connections, and a
/// publish during the outage is answered within the publish timeout.
async fn redis_restart(persistent: bool) {
    let extra: &[&str] = if persistent {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &[]
    };
    let mut redis = RedisServer::start_with(free_port(), extra);
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend(HISTORY);
    let gws = ready_gateways(2, &args).await;
    let (a, b) = (gws[0].as_ref().expect("a"), gws[1].as_ref().expect("b"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut followers = Vec::new();
    for gw in [a, b] {
        let mut c = gw.connect(Encoding::Json).await;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (task_seen, stop) = (seen.clone(), stop.clone());
        followers.push((
            seen,
            tokio::spawn(async move { follow(&mut c, "prices", &task_seen, &stop).await }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let epoch_before = followers[0].0.lock().unwrap().last.clone().map(|(_, e)| e);
    let until = Instant::now() + Duration::from_secs(5);
    let stream = tokio::spawn(publish_stream(a.admin, "prices", Duration::from_millis(5), until));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.restart();
    let (accepted, slowest_failure) = stream.await.expect("publisher");
    assert!(
        slowest_failure < Duration::from_millis(1500),
        "a publish during the outage waited {slowest_failure:?}"
    );
    for (k, (seen, _)) in followers.iter().enumerate() {
        expect_all_once(&format!("subscriber on gateway {k}"), seen, &accepted).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    for (seen, task) in &mut followers {
        task.await.expect("follower");
        let s = seen.lock().unwrap();
        let epoch_changed = s.gaps.contains(&Some(GapReason::EpochChanged));
        assert_eq!(
            epoch_changed, !persistent,
            "epoch change announced iff history was lost: {:?}",
            s.gaps
        );
        assert!(
            !s.gaps.iter().any(|g| *g != Some(GapReason::EpochChanged)),
            "no other gap on a channel with history: {:?}",
            s.gaps
        );
    }
    // A subscriber that was away since before the restart.
    let since = StreamPosition {
        offset: 1,
        epoch: epoch_before.expect("an epoch before the restart"),
    };
    let mut late = b.connect(Encoding::Json).await;
    late.send(&ClientFrame::Subscribe {
        id: Some(9),
        channel: "prices".into(),
        token: None,
        recover: Some(since),
        latest: false,
    })
    .await;
    loop {
        if let ServerFrame::Ack {
            id: Some(9), recovered, ..
        } = late.recv().await
        {
            assert_eq!(recovered, Some(persistent), "recovery across the restart");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_without_persistence_starts_a_new_epoch_and_loses_nothing_accepted() {
    redis_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_appendonly_recovers_fully() {
    redis_restart(true).await;
}

/// redis-server hung (SIGSTOP), not dead: a publish is answered within the publish
/// timeout with `timeout` (outcome unknown), not with "not delivered"; it does go
/// out when Redis resumes, and a retry with the same idempotency key does not
/// deliver it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_is_an_unknown_outcome_and_a_keyed_retry_is_safe() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend(HISTORY);
    let gws = ready_gateways(2, &args).await;
    let (a, b) = (gws[0].as_ref().expect("a"), gws[1].as_ref().expect("b"));
    let mut sub = b.connect(Encoding::Json).await;
    sub.subscribe_history(1, "orders").await;
    for (channel, key) in [("orders", "order-1"), ("plain:orders", "order-2")] {
        let body = json!({"channel": channel, "data": {"n": 1}, "idempotency_key": key}).to_string();
        redis.signal(libc::SIGSTOP);
        let start = Instant::now();
        let (status, reply) = a.http("POST", "/api/publish", Some(&body)).await;
        let waited = start.elapsed();
        redis.signal(libc::SIGCONT);
        assert_eq!(status, 504, "{reply}");
        let reply: Value = serde_json::from_str(&reply).expect("json");
        assert_eq!(reply["error"]["code"], "timeout");
        assert_eq!(reply["results"][0]["outcome"], "unknown");
        assert!(waited < Duration::from_millis(1500), "answered after {waited:?}");
        // The retry, once Redis is back: published once in all.
        let start = Instant::now();
        let retried = loop {
            let (status, reply) = a.http("POST", "/api/publish", Some(&body)).await;
            if status == 200 {
                break reply;
            }
            assert!(start.elapsed() < WAIT, "retry never succeeded: {reply}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let retried: Value = serde_json::from_str(&retried).expect("json");
        assert_eq!(
            retried["duplicate"], true,
            "the hung publish went out when Redis resumed: {retried}"
        );
    }
    let got = sub.recv().await;
    assert!(matches!(got, ServerFrame::Message { offset: Some(1), .. }), "{got:?}");
    assert!(sub.roundtrip(5).await.is_empty(), "delivered once");
    assert!(a.metric("shardcast_publish_outcome_unknown_total").await >= 2.0);
    assert!(a.metric("shardcast_publish_duplicates_total").await >= 2.0);
}

/// Redis Cluster, three masters: offsets and recovery on channels of every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_works_on_every_master_of_a_cluster() {
    let nodes = RedisServer::start_cluster();
    let url = nodes[0].url();
    let mut args = vec!["--redis", url.as_str(), "--redis-cluster"];
    args.extend(HISTORY);
    let gws = ready_gateways(2, &args).await;
    let (a, b) = (gws[0].as_ref().expect("a"), gws[1].as_ref().expect("b"));
    let channels: Vec<String> = (0..24).map(|i| format!("cluster-{i}")).collect();
    let masters: std::collections::HashSet<String> = channels
        .iter()
        .map(|c| nodes[0].owner_of(&format!("shardcast:{c}")))
        .collect();
    assert_eq!(masters.len(), 3, "the channels span every master");
    let mut c = b.connect(Encoding::Json).await;
    let mut positions = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        positions.push(c.subscribe_history(i as u64 + 1, ch).await);
    }
    for ch in &channels {
        a.publish(ch, json!({"n": 1})).await;
    }
    let mut last = BTreeMap::new();
    for _ in &channels {
        if let ServerFrame::Message {
            channel,
            offset: Some(offset),
            epoch: Some(epoch),
            ..
        } = c.recv().await
        {
            last.insert(channel, (offset, epoch));
        }
    }
    c.close().await;
    for ch in &channels {
        for n in 2..=4 {
            a.publish(ch, json!({ "n": n })).await;
        }
    }
    let mut back = b.connect(Encoding::Json).await;
    for (i, ch) in channels.iter().enumerate() {
        let (offset, epoch) = last.get(ch).cloned().expect("a position per channel");
        assert_eq!(offset, positions[i].0 + 1);
        back.send(&ClientFrame::Subscribe {
            id: Some(100 + i as u64),
            channel: ch.clone(),
            token: None,
            recover: Some(StreamPosition { offset, epoch }),
            latest: false,
        })
        .await;
        let mut got = Vec::new();
        while got.len() < 4 {
            match back.recv().await {
                ServerFrame::Ack { recovered, .. } => {
                    assert_eq!(recovered, Some(true), "{ch}");
                    got.push(0);
                }
                ServerFrame::Message { data, .. } => got.push(data["n"].as_u64().expect("n")),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, [0, 2, 3, 4], "{ch}: recovered in order");
    }
}

/// A subscriber offline for 30 s while 1,000 publications go out through another
/// instance recovers all of them; one offline past the history size is told
/// `recovered: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_offline_with_a_thousand_publications_recovers_them_all() {
    let redis = RedisServer::start();
    let url = redis.url();
    let args = ["--redis", url.as_str(), "--history-size", "1000"];
    let gws = ready_gateways(2, &args).await;
    let (a, b) = (gws[0].as_ref().expect("a"), gws[1].as_ref().expect("b"));
    let mut c = b.connect(Encoding::Json).await;
    let (top, epoch) = c.subscribe_history(1, "log").await;
    let mut lagging = b.connect(Encoding::Json).await;
    lagging.subscribe_history(1, "log").await;
    c.close().await;
    lagging.close().await;
    let offline = Instant::now();
    for n in 1..=1000u64 {
        let reply = a.publish("log", json!({ "n": n })).await;
        assert_eq!(reply["ok"], true, "{reply}");
        // 1,000 publications spread over the 30 seconds.
        let due = Duration::from_millis(30 * n);
        if let Some(wait) = due.checked_sub(offline.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    assert!(offline.elapsed() >= Duration::from_secs(30));
    let mut back = b.connect(Encoding::Json).await;
    back.send(&ClientFrame::Subscribe {
        id: Some(2),
        channel: "log".into(),
        token: None,
        recover: Some(StreamPosition {
            offset: top,
            epoch: epoch.clone(),
        }),
        latest: false,
    })
    .await;
    let mut next = top + 1;
    while next <= top + 1000 {
        match back.recv().await {
            ServerFrame::Ack { recovered, .. } => assert_eq!(recovered, Some(true)),
            ServerFrame::Message { offset, data, .. } => {
                assert_eq!(offset, Some(next));
                assert_eq!(data["n"], next - top);
                next += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // Past the history: 1,000 more, and a position 1,000 back is gone.
    for n in 1001..=1010u64 {
        a.publish("log", json!({ "n": n })).await;
    }
    let mut late = b.connect(Encoding::Json).await;
    late.send(&ClientFrame::Subscribe {
        id: Some(3),
        channel: "log".into(),
        token: None,
        recover: Some(StreamPosition { offset: top, epoch }),
        latest: false,
    })
    .await;
    match late.recv().await {
        ServerFrame::Ack { recovered, .. } => assert_eq!(recovered, Some(false), "past the history size"),
        other => panic!("{other:?}"),
    }
}
