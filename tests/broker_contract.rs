//! The broker contract: one set of cases, written once, run against every broker
//! implementation: the in-process bus (two joined instances), Redis, and Redis
//! Cluster (three masters). Each case takes two instances, `a` and `b`, on the same
//! implementation. A broker feature (history, presence) adds its cases here:
//! history's offsets, reads and idempotency keys, presence's members, occupancy,
//! and forgetting a dead instance.
//!
//! A case that an implementation cannot exercise (an in-process bus has no
//! connection to lose) says so through [`Fixture::outage`] returning false, and the
//! suite prints which cases were not applicable instead of passing them silently.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use shardcast::broker::instances::{InstanceInfo, InstanceRegistry};
use shardcast::broker::memory::InProcessBus;
use shardcast::broker::redis::{RedisBroker, RedisSettings};
use shardcast::broker::user_counter::UserCounter;
use shardcast::broker::{
    Broker, BrokerEvent, BrokerMetrics, BrokerSink, HistoryPolicy, HistoryQuery, Position, PresenceChange,
    PresenceMember, PublishOptions,
};
use shardcast::payload::Payload;

/// How long a case waits for something that must not arrive.
const QUIET: Duration = Duration::from_millis(300);

/// A sink that queues every event for the case to read.
struct EventQueue(flume::Sender<BrokerEvent>);

impl BrokerSink for EventQueue {
    fn event(&self, event: BrokerEvent) {
        let _ = self.0.send(event);
    }
}

/// One instance: its broker, its per-user connection count, and what it emitted.
struct Instance {
    broker: Arc<dyn Broker>,
    users: Arc<dyn UserCounter>,
    events: flume::Receiver<BrokerEvent>,
}

/// The per-user limit the fixtures' counters enforce.
const USER_LIMIT: u32 = 2;

fn event_queue() -> (Arc<dyn BrokerSink>, flume::Receiver<BrokerEvent>) {
    let (tx, rx) = flume::unbounded();
    (Arc::new(EventQueue(tx)), rx)
}

impl Instance {
    /// The next publication on `channel` within `limit`, skipping gaps and other channels.
    async fn publication(&self, channel: &str, limit: Duration) -> Option<Payload> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.events.recv_async()).await {
                Ok(Ok(BrokerEvent::Publication {
                    channel: c, payload, ..
                })) if &*c == channel => return Some(payload),
                Ok(Ok(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Waits within `limit` for a gap event that covers `channel`: of every
    /// channel, or of a list (one cluster master's) holding it.
    async fn gap(&self, channel: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match tokio::time::timeout(left, self.events.recv_async()).await {
                Ok(Ok(BrokerEvent::Gap)) => return true,
                Ok(Ok(BrokerEvent::ChannelsGap { channels })) if channels.iter().any(|c| &**c == channel) => {
                    return true
                }
                _ => {}
            }
        }
        false
    }

    async fn wait_ready(&self, ready: bool) {
        let start = Instant::now();
        while self.broker.is_ready() != ready {
            assert!(
                start.elapsed() < WAIT * 3,
                "{} never became ready={ready}",
                self.broker.kind()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn drain(&self) {
        while self.events.try_recv().is_ok() {}
    }
}

/// Two instances on one implementation, and what the implementation can do to them.
struct Fixture {
    a: Instance,
    b: Instance,
    redis: Vec<RedisServer>,
}

impl Fixture {
    fn in_process() -> Fixture {
        let bus = InProcessBus::new().expect("bus thread");
        let join = || {
            let (sink, events) = event_queue();
            Instance {
                broker: Arc::new(bus.join(sink)),
                users: bus.user_counter(USER_LIMIT),
                events,
            }
        };
        Fixture {
            a: join(),
            b: join(),
            redis: Vec::new(),
        }
    }

    async fn redis(servers: Vec<RedisServer>, cluster: bool) -> Fixture {
        let url = servers[0].url();
        let start = |origin: &'static str| {
            let (sink, events) = event_queue();
            let settings = RedisSettings {
                url: url.clone(),
                cluster,
                prefix: "contract:".into(),
                origin: origin.into(),
                max_payload: 64 * 1024,
            };
            let metrics = BrokerMetrics::unregistered().expect("metrics");
            let redis = RedisBroker::start(settings, sink, metrics).expect("redis broker");
            // An instance counts as alive while its heartbeat record exists.
            let instances = redis.instances();
            tokio::spawn(async move {
                let me = InstanceInfo {
                    node: origin.into(),
                    ws: "127.0.0.1:0".into(),
                    admin: "127.0.0.1:0".into(),
                    health: Default::default(),
                    connections: 0,
                    at_ms: 0,
                };
                while instances.heartbeat(&me, Duration::from_secs(60)).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            let users = Arc::new(redis.user_counter(USER_LIMIT));
            Instance {
                broker: redis,
                users,
                events,
            }
        };
        let fixture = Fixture {
            a: start("node-a"),
            b: start("node-b"),
            redis: servers,
        };
        fixture.a.wait_ready(true).await;
        fixture.b.wait_ready(true).await;
        fixture
    }

    /// Cuts every instance off the broker and brings it back with no data; false
    /// if the implementation has no connection to lose.
    async fn outage(&mut self) -> bool {
        if self.redis.is_empty() {
            return false;
        }
        for server in &mut self.redis {
            server.kill();
        }
        self.a.wait_ready(false).await;
        for server in &mut self.redis {
            server.restart();
        }
        if self.redis.len() > 1 {
            // A restarted cluster node keeps its nodes.conf: wait until it serves again.
            RedisServer::wait_cluster_ok(&self.redis);
        }
        true
    }

    /// Subscribes `b` to `channel` and waits until `a`'s publications reach it (a
    /// broker may take a subscription asynchronously); what was sent to settle is
    /// drained.
    async fn subscribed(&self, channel: &str) {
        self.b.broker.subscribe(Arc::from(channel)).await.expect("subscribe");
        let start = Instant::now();
        loop {
            publish(&self.a, channel, r#""settle""#).await;
            if self.b.publication(channel, Duration::from_millis(100)).await.is_some() {
                break;
            }
            assert!(start.elapsed() < WAIT * 3, "{channel} never subscribed");
        }
        tokio::time::sleep(QUIET).await;
        self.b.drain();
    }
}

async fn publish(from: &Instance, channel: &str, json: &str) {
    let payload = Payload::from_json(json).expect("valid json");
    from.broker
        .publish(Arc::from(channel), payload, PublishOptions::default())
        .await
        .expect("publish");
}

const POLICY: HistoryPolicy = HistoryPolicy {
    size: 5,
    ttl: Duration::from_secs(60),
};

fn with_history(key: Option<&str>) -> PublishOptions {
    PublishOptions {
        history: Some(POLICY),
        idempotency: key.map(|k| (Arc::from(k), Duration::from_secs(60))),
    }
}

/// The next positioned publication on `channel`.
async fn positioned(on: &Instance, channel: &str) -> (Position, Payload) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("a positioned publication in time");
        match tokio::time::timeout(left, on.events.recv_async()).await {
            Ok(Ok(BrokerEvent::Publication {
                channel: c,
                payload,
                position: Some(position),
            })) if &*c == channel => return (position, payload),
            Ok(Ok(_)) => continue,
            _ => panic!("no positioned publication on {channel}"),
        }
    }
}

// ---- the cases ----

async fn other_instances_receive(f: &mut Fixture) {
    f.subscribed("contract.receive").await;
    publish(&f.a, "contract.receive", r#"{"n":1}"#).await;
    let got = f.b.publication("contract.receive", WAIT).await.expect("b receives");
    assert_eq!(got.json().get(), r#"{"n":1}"#);
}

async fn no_echo_of_own_publication(f: &mut Fixture) {
    f.a.broker
        .subscribe(Arc::from("contract.echo"))
        .await
        .expect("subscribe");
    f.subscribed("contract.echo").await;
    f.a.drain();
    publish(&f.a, "contract.echo", r#""mine""#).await;
    assert!(f.b.publication("contract.echo", WAIT).await.is_some(), "b receives");
    assert!(
        f.a.publication("contract.echo", QUIET).await.is_none(),
        "{}: an instance received its own publication",
        f.a.broker.kind()
    );
}

async fn unsubscribe_stops_delivery(f: &mut Fixture) {
    f.subscribed("contract.unsub").await;
    f.b.broker
        .unsubscribe(Arc::from("contract.unsub"))
        .await
        .expect("unsubscribe");
    // The unsubscribe may be applied asynchronously too: after a settling pause,
    // nothing may arrive.
    tokio::time::sleep(QUIET).await;
    f.b.drain();
    for i in 0..5 {
        publish(&f.a, "contract.unsub", &i.to_string()).await;
    }
    assert!(
        f.b.publication("contract.unsub", QUIET).await.is_none(),
        "{}: delivered after unsubscribe",
        f.b.broker.kind()
    );
}

async fn payload_forms_round_trip(f: &mut Fixture) {
    f.subscribed("contract.forms").await;
    let long = format!("\"{}\"", "x".repeat(32 * 1024));
    let forms = [
        r#"{"a":[1,2.5,-3e10,true,false,null],"b":{"c":"d"}}"#,
        r#""unicode: é ✓ 𝄞 \" \\ \n""#,
        "0",
        "-1.5e-7",
        "null",
        "[]",
        r#"[[[[[[[[[[1]]]]]]]]]]"#,
        long.as_str(),
    ];
    for json in forms {
        publish(&f.a, "contract.forms", json).await;
    }
    for json in forms {
        let got = f.b.publication("contract.forms", WAIT).await.expect("delivered");
        assert_eq!(
            got.json().get(),
            json,
            "{}: payload changed in transit",
            f.b.broker.kind()
        );
    }
}

async fn control_reaches_the_others_not_oneself(f: &mut Fixture) {
    // Control messages need no subscription: every instance hears them from its start.
    let payload = Payload::from_json(r#"{"op":"disconnect","user":"42"}"#).expect("json");
    let start = Instant::now();
    let got = loop {
        f.a.broker.broadcast_control(payload.clone()).await.expect("broadcast");
        let event = tokio::time::timeout(Duration::from_millis(200), f.b.events.recv_async()).await;
        if let Ok(Ok(BrokerEvent::Control { payload })) = event {
            break payload;
        }
        assert!(start.elapsed() < WAIT, "{}: control never arrived", f.b.broker.kind());
    };
    assert_eq!(got.json().get(), payload.json().get());
    tokio::time::sleep(QUIET).await;
    let echoed = f.a.events.drain().any(|e| matches!(e, BrokerEvent::Control { .. }));
    assert!(
        !echoed,
        "{}: an instance received its own control message",
        f.a.broker.kind()
    );
}

async fn a_user_is_counted_across_instances(f: &mut Fixture) {
    let user: Arc<str> = Arc::from("contract-user");
    assert!(f.a.users.acquire(user.clone()).await.expect("count"));
    assert!(f.b.users.acquire(user.clone()).await.expect("count"));
    assert!(
        !f.a.users.acquire(user.clone()).await.expect("count"),
        "{}: a third place past the limit of two",
        f.a.broker.kind()
    );
    assert!(f.b.users.acquire(Arc::from("someone-else")).await.expect("count"));
    // A place given back (asynchronously, for some) can be taken again.
    f.b.users.release(user.clone());
    let start = Instant::now();
    while !f.a.users.acquire(user.clone()).await.expect("count") {
        assert!(
            start.elapsed() < WAIT,
            "{}: a released place never came back",
            f.a.broker.kind()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn readiness_follows_connection(f: &mut Fixture) -> bool {
    assert!(f.a.broker.is_ready() && f.b.broker.is_ready(), "ready when connected");
    if !f.outage().await {
        return false;
    }
    f.a.wait_ready(true).await;
    f.b.wait_ready(true).await;
    true
}

async fn gap_after_outage_then_delivery(f: &mut Fixture) -> bool {
    f.subscribed("contract.gap").await;
    if !f.outage().await {
        return false;
    }
    assert!(
        f.b.gap("contract.gap", WAIT * 3).await,
        "{}: no gap after an outage",
        f.b.broker.kind()
    );
    f.a.wait_ready(true).await;
    f.b.wait_ready(true).await;
    // Re-subscribed before the gap was announced: a publication now arrives.
    let start = Instant::now();
    loop {
        publish(&f.a, "contract.gap", r#""after""#).await;
        if f.b
            .publication("contract.gap", Duration::from_millis(200))
            .await
            .is_some()
        {
            break;
        }
        assert!(start.elapsed() < WAIT, "no delivery after the outage");
    }
    true
}

/// History: offsets are assigned by the store, shared by every instance, strictly
/// increasing; the publisher learns the same position the others receive.
async fn offsets_are_shared_and_increasing(f: &mut Fixture) {
    let ch = "contract.offsets";
    f.subscribed(ch).await;
    let mut last: Option<Position> = None;
    for n in 0..4 {
        let publisher = if n % 2 == 0 { &f.a } else { &f.b };
        let payload = Payload::from_json(&n.to_string()).expect("json");
        let published = publisher
            .broker
            .publish(Arc::from(ch), payload, with_history(None))
            .await
            .expect("publish with history");
        let position = published.position.expect("a position");
        if n % 2 == 0 {
            let (seen, payload) = positioned(&f.b, ch).await;
            assert_eq!(seen, position, "b sees the offset a was given");
            assert_eq!(payload.json().get(), n.to_string());
        }
        if let Some(prev) = &last {
            assert_eq!(position.epoch, prev.epoch);
            assert_eq!(position.offset, prev.offset + 1);
        }
        last = Some(position);
    }
}

/// History: a read returns the position and the retained publications after an
/// offset, bounded by the size; the latest one alone without `since`.
async fn history_reads_what_was_kept(f: &mut Fixture) {
    let ch: Arc<str> = Arc::from("contract.history");
    let query = |since, limit| HistoryQuery {
        since,
        limit,
        policy: POLICY,
    };
    let empty = f.a.broker.history(ch.clone(), query(None, 10)).await.expect("read");
    assert_eq!((empty.top, empty.publications.len()), (0, 0));
    for n in 1..=7 {
        let payload = Payload::from_json(&n.to_string()).expect("json");
        let p =
            f.a.broker
                .publish(ch.clone(), payload, with_history(None))
                .await
                .expect("publish");
        assert_eq!(p.position.expect("position").offset, n);
    }
    let page = f.b.broker.history(ch.clone(), query(Some(0), 100)).await.expect("read");
    assert_eq!(
        page.epoch, empty.epoch,
        "a read before the first publication fixes the epoch"
    );
    assert_eq!(page.top, 7);
    let offsets: Vec<u64> = page.publications.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, [3, 4, 5, 6, 7], "the latest {} kept", POLICY.size);
    let after = f.b.broker.history(ch.clone(), query(Some(5), 1)).await.expect("read");
    assert_eq!(after.publications.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [6]);
    let latest = f.b.broker.history(ch.clone(), query(None, 1)).await.expect("read");
    assert_eq!(latest.publications[0].0, 7);
    assert_eq!(latest.publications[0].1.json().get(), "7");
}

/// An idempotency key publishes once: the retry is answered with the first
/// position, and nobody receives it twice.
async fn an_idempotency_key_publishes_once(f: &mut Fixture) {
    let ch = "contract.idempotent";
    f.subscribed(ch).await;
    let payload = Payload::from_json("1").expect("json");
    let first =
        f.a.broker
            .publish(Arc::from(ch), payload.clone(), with_history(Some("k-1")))
            .await
            .expect("publish");
    let again =
        f.a.broker
            .publish(Arc::from(ch), payload.clone(), with_history(Some("k-1")))
            .await
            .expect("retry");
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.position, again.position);
    positioned(&f.b, ch).await;
    assert!(
        f.b.publication(ch, QUIET).await.is_none(),
        "the retry was not published"
    );
    let plain = PublishOptions {
        history: None,
        idempotency: Some((Arc::from("k-2"), Duration::from_secs(60))),
    };
    let once =
        f.a.broker
            .publish(Arc::from(ch), payload.clone(), plain.clone())
            .await
            .expect("publish");
    let twice = f.a.broker.publish(Arc::from(ch), payload, plain).await.expect("retry");
    assert!(!once.duplicate && twice.duplicate && once.position.is_none());
    assert!(f.b.publication(ch, WAIT).await.is_some());
    assert!(
        f.b.publication(ch, QUIET).await.is_none(),
        "a key works without history too"
    );
}

/// The next presence change on `channel` within `limit`.
async fn presence_change(on: &Instance, channel: &str, limit: Duration) -> Option<PresenceChange> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, on.events.recv_async()).await {
            Ok(Ok(BrokerEvent::Presence { channel: c, change })) if &*c == channel => return Some(change),
            Ok(Ok(_)) => continue,
            _ => return None,
        }
    }
}

/// Presence: a user is one member however many connections and instances it
/// has; its join and its leave are announced once, to the other instances.
async fn presence_counts_users_not_connections(f: &mut Fixture) {
    let ch = "presence-contract";
    f.subscribed(ch).await;
    f.a.broker.subscribe(Arc::from(ch)).await.expect("subscribe");
    tokio::time::sleep(QUIET).await;
    f.a.drain();
    let ann = || PresenceMember {
        user: Arc::from("ann"),
        info: Payload::from_json(r#"{"name":"Ann"}"#).expect("json"),
    };
    let channel: Arc<str> = Arc::from(ch);
    assert!(
        f.a.broker.presence_join(channel.clone(), ann()).await.expect("join"),
        "ann's first connection"
    );
    match presence_change(&f.b, ch, WAIT).await {
        Some(PresenceChange::Joined(m)) => {
            assert_eq!((&*m.user, m.info.json().get()), ("ann", r#"{"name":"Ann"}"#));
        }
        other => panic!("{}: expected ann to join, got {other:?}", f.b.broker.kind()),
    }
    assert!(
        !f.a.broker.presence_join(channel.clone(), ann()).await.expect("join"),
        "a second tab"
    );
    assert!(
        !f.b.broker.presence_join(channel.clone(), ann()).await.expect("join"),
        "another instance"
    );
    assert!(presence_change(&f.b, ch, QUIET).await.is_none(), "announced once");
    let members =
        f.b.broker
            .presence_members(channel.clone(), 100)
            .await
            .expect("members");
    assert_eq!(members.iter().map(|m| &*m.user).collect::<Vec<_>>(), ["ann"]);
    let ann_id: Arc<str> = Arc::from("ann");
    assert!(!f
        .a
        .broker
        .presence_leave(channel.clone(), ann_id.clone())
        .await
        .expect("leave"));
    assert!(!f
        .a
        .broker
        .presence_leave(channel.clone(), ann_id.clone())
        .await
        .expect("leave"));
    assert!(presence_change(&f.a, ch, QUIET).await.is_none(), "still on b");
    assert!(
        f.b.broker.presence_leave(channel.clone(), ann_id).await.expect("leave"),
        "her last connection"
    );
    match presence_change(&f.a, ch, WAIT).await {
        Some(PresenceChange::Left(user)) => assert_eq!(&*user, "ann"),
        other => panic!("{}: expected ann to leave, got {other:?}", f.a.broker.kind()),
    }
    assert!(f
        .a
        .broker
        .presence_members(channel, 100)
        .await
        .expect("members")
        .is_empty());
}

/// Occupancy: a channel is occupied by its first instance and vacated by its last,
/// each seen by exactly one instance; saying it twice changes nothing.
async fn occupancy_changes_once_cluster_wide(f: &mut Fixture) {
    let ch: Arc<str> = Arc::from("occupancy-contract");
    let (a, b) = (&f.a.broker, &f.b.broker);
    assert!(a.occupancy(ch.clone(), true).await.expect("occupy"), "a occupies it");
    assert!(
        !a.occupancy(ch.clone(), true).await.expect("occupy"),
        "a again: no change"
    );
    assert!(
        !b.occupancy(ch.clone(), true).await.expect("occupy"),
        "b joins an occupied channel"
    );
    assert!(!a.occupancy(ch.clone(), false).await.expect("vacate"), "b still has it");
    assert!(
        !a.occupancy(ch.clone(), false).await.expect("vacate"),
        "a again: no change"
    );
    assert!(b.occupancy(ch.clone(), false).await.expect("vacate"), "b vacates it");
    assert!(a.occupancy(ch.clone(), true).await.expect("occupy"), "occupied anew");
}

/// A dead instance's occupancy and presence are removed by another, once: false
/// where instances cannot die apart (one process's in-process bus).
async fn a_dead_instance_is_forgotten(f: &mut Fixture) -> bool {
    if f.redis.is_empty() {
        return false;
    }
    let (occupied, present): (Arc<str>, Arc<str>) = (Arc::from("forget-occupied"), Arc::from("forget-present"));
    f.subscribed(&present).await;
    assert!(f.a.broker.occupancy(occupied.clone(), true).await.expect("occupy"));
    let bob = PresenceMember {
        user: Arc::from("bob"),
        info: Payload::from_json("{}").expect("json"),
    };
    assert!(f.a.broker.presence_join(present.clone(), bob).await.expect("join"));
    assert!(matches!(
        presence_change(&f.b, &present, WAIT).await,
        Some(PresenceChange::Joined(_))
    ));
    let forgotten = f.b.broker.forget_instance(Arc::from("node-a")).await.expect("forget");
    assert_eq!(forgotten.vacated, vec![occupied.clone()]);
    assert_eq!(forgotten.left, vec![(present.clone(), Arc::from("bob"))]);
    match presence_change(&f.b, &present, WAIT).await {
        Some(PresenceChange::Left(user)) => assert_eq!(&*user, "bob"),
        other => panic!("expected bob to leave, got {other:?}"),
    }
    let again = f.b.broker.forget_instance(Arc::from("node-a")).await.expect("forget");
    assert!(
        again.vacated.is_empty() && again.left.is_empty(),
        "forgotten once: {again:?}"
    );
    assert!(
        f.b.broker.occupancy(occupied, true).await.expect("occupy"),
        "vacated for good"
    );
    true
}

/// Runs every case against fixtures made by `make`, one fixture per case so that a
/// case's outage cannot disturb the next.
async fn run_contract<F, Fut>(name: &str, make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Fixture>,
{
    other_instances_receive(&mut make().await).await;
    no_echo_of_own_publication(&mut make().await).await;
    unsubscribe_stops_delivery(&mut make().await).await;
    payload_forms_round_trip(&mut make().await).await;
    control_reaches_the_others_not_oneself(&mut make().await).await;
    a_user_is_counted_across_instances(&mut make().await).await;
    offsets_are_shared_and_increasing(&mut make().await).await;
    history_reads_what_was_kept(&mut make().await).await;
    an_idempotency_key_publishes_once(&mut make().await).await;
    presence_counts_users_not_connections(&mut make().await).await;
    occupancy_changes_once_cluster_wide(&mut make().await).await;
    let mut not_applicable = Vec::new();
    if !a_dead_instance_is_forgotten(&mut make().await).await {
        not_applicable.push("a_dead_instance_is_forgotten (one process)");
    }
    if !readiness_follows_connection(&mut make().await).await {
        not_applicable.push("readiness_follows_connection (outage)");
    }
    if !gap_after_outage_then_delivery(&mut make().await).await {
        not_applicable.push("gap_after_outage_then_delivery");
    }
    if !not_applicable.is_empty() {
        eprintln!("{name}: not applicable (no connection to lose): {not_applicable:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_in_process() {
    run_contract("in-process", || async { Fixture::in_process() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_redis() {
    run_contract("redis", || async {
        Fixture::redis(vec![RedisServer::start()], false).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_redis_cluster() {
    run_contract("redis-cluster", || async {
        Fixture::redis(RedisServer::start_cluster(), true).await
    })
    .await;
}
