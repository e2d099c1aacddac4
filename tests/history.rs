//! History and recovery (PROTOCOL.md 19) against real gateways: offsets on every
//! message, recovery after a reconnect (in-process and through Redis, across a
//! gateway kill), `recovered: false` past the history, the race of recovery with
//! live publications, `latest`, the `history` op and API, and idempotent publishing.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use shardcast_proto::{ClientFrame, Encoding, ServerFrame, StreamPosition};

const HISTORY: &[&str] = &["--history-size", "2000", "--shards", "2"];

/// Subscribes with `recover` (and `latest`); returns the ack's fields.
async fn subscribe_with(
    c: &mut Client,
    id: u64,
    channel: &str,
    recover: Option<StreamPosition>,
    latest: bool,
) -> (Option<u64>, Option<String>, Option<bool>) {
    c.send(&ClientFrame::Subscribe {
        id: Some(id),
        channel: channel.into(),
        token: None,
        recover,
        latest,
    })
    .await;
    loop {
        match c.recv().await {
            ServerFrame::Ack {
                id: Some(got),
                offset,
                epoch,
                recovered,
                ..
            } if got == id => return (offset, epoch, recovered),
            ServerFrame::Message { .. } => panic!("a message before the subscribe's ack"),
            _ => continue,
        }
    }
}

/// The next `message`: (offset, epoch, data).
async fn message(c: &mut Client) -> (u64, String, Value) {
    loop {
        if let ServerFrame::Message {
            offset: Some(offset),
            epoch: Some(epoch),
            data,
            ..
        } = c.recv().await
        {
            return (offset, epoch, data);
        }
    }
}

async fn publish_n(gw: &Gateway, channel: &str, range: std::ops::Range<u64>) {
    for n in range {
        let reply = gw.publish(channel, json!({ "n": n })).await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_to_the_same_gateway_recovers_what_it_missed() {
    let gw = Gateway::start(HISTORY);
    let mut c = gw.connect(Encoding::Json).await;
    let (top, epoch, recovered) = subscribe_with(&mut c, 1, "news", None, false).await;
    assert_eq!(
        (top, recovered),
        (Some(0), None),
        "a plain subscribe's ack carries the position"
    );
    let epoch = epoch.expect("epoch");
    publish_n(&gw, "news", 1..4).await;
    let mut last = 0;
    for n in 1..4u64 {
        let (offset, e, data) = message(&mut c).await;
        assert_eq!((offset, e.as_str(), data["n"].as_u64()), (n, epoch.as_str(), Some(n)));
        last = offset;
    }
    c.close().await;
    publish_n(&gw, "news", 4..1004).await;

    for encoding in Encoding::ALL {
        let mut back = gw.connect(encoding).await;
        let since = StreamPosition {
            offset: last,
            epoch: epoch.clone(),
        };
        let (top, _, recovered) = subscribe_with(&mut back, 2, "news", Some(since), false).await;
        assert_eq!((top, recovered), (Some(1003), Some(true)));
        for n in 4..1004u64 {
            let (offset, _, data) = message(&mut back).await;
            assert_eq!((offset, data["n"].as_u64()), (n, Some(n)), "in order, exactly once");
        }
        back.close().await;
    }
    assert!(
        gw.metric("shardcast_recoveries_total{reason=\"ok\",result=\"recovered\"}")
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_past_the_history_or_across_epochs_is_refused() {
    let gw = Gateway::start(&["--history-size", "10"]);
    let mut c = gw.connect(Encoding::Json).await;
    let (_, epoch, _) = subscribe_with(&mut c, 1, "small", None, false).await;
    let epoch = epoch.expect("epoch");
    publish_n(&gw, "small", 1..31).await;
    let since = |offset| StreamPosition {
        offset,
        epoch: epoch.clone(),
    };
    let mut late = gw.connect(Encoding::Json).await;
    let (top, _, recovered) = subscribe_with(&mut late, 1, "small", Some(since(5)), false).await;
    assert_eq!((top, recovered), (Some(30), Some(false)), "offset 6 is no longer kept");
    let (_, _, fine) = subscribe_with(&mut late, 2, "other", Some(since(0)), false).await;
    assert_eq!(fine, Some(false), "another channel's epoch");
    let (_, _, ok) = subscribe_with(
        &mut gw.connect(Encoding::Json).await,
        1,
        "small",
        Some(since(25)),
        false,
    )
    .await;
    assert_eq!(ok, Some(true), "the last 10 are kept");
    // Nothing from history followed the refusal: the next frame is live.
    gw.publish("small", json!("live")).await;
    assert_eq!(message(&mut late).await.0, 31);
    assert!(
        gw.metric("shardcast_recoveries_total{reason=\"too_far\",result=\"not_recovered\"}")
            .await
            >= 1.0
    );
}

/// The race of PROTOCOL.md 19.4: publications arrive every few milliseconds while
/// subscribers recover; every one of them ends with every offset exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_while_publishing_has_no_hole_and_no_duplicate() {
    let gw = Gateway::start(HISTORY);
    let mut first = gw.connect(Encoding::Json).await;
    let (_, epoch, _) = subscribe_with(&mut first, 1, "race", None, false).await;
    let epoch = epoch.expect("epoch");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = tokio::spawn({
        let (admin, done) = (gw.admin, done.clone());
        async move {
            let mut n = 0u64;
            // Bounded, whatever happens to the recoveries.
            let stop = Instant::now() + Duration::from_secs(60);
            while Instant::now() < stop && !done.load(std::sync::atomic::Ordering::Acquire) {
                n += 1;
                let body = json!({"channel": "race", "data": n}).to_string();
                let (status, _) = http(admin, "POST", "/api/publish", Some(&body), &[]).await;
                assert_eq!(status, 200);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        }
    });
    let mut repetitions = 0;
    while !publishing.is_finished() && repetitions < 200 {
        repetitions += 1;
        let since = StreamPosition {
            offset: repetitions % 50,
            epoch: epoch.clone(),
        };
        let mut c = gw.connect(Encoding::Json).await;
        let (top, _, recovered) = subscribe_with(&mut c, 1, "race", Some(since.clone()), false).await;
        assert_eq!(recovered, Some(true));
        let target = top.expect("top") + 5;
        let mut seen = BTreeSet::new();
        let mut expected = since.offset + 1;
        while expected <= target {
            let (offset, _, _) = message(&mut c).await;
            assert_eq!(offset, expected, "repetition {repetitions}: no hole, no duplicate");
            assert!(seen.insert(offset));
            expected += 1;
        }
        c.close().await;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let published = publishing.await.expect("publisher");
    assert_eq!(repetitions, 200, "every repetition ran while publications kept coming");
    eprintln!("{repetitions} recoveries raced {published} publications");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_history_and_idempotency() {
    let gw = Gateway::start(&["--history-size", "5", "--allow-client-publish"]);
    publish_n(&gw, "price", 1..8).await;
    let mut c = gw.connect(Encoding::MsgPack).await;
    let (top, _, _) = subscribe_with(&mut c, 1, "price", None, true).await;
    assert_eq!(top, Some(7));
    assert_eq!(message(&mut c).await.2["n"], 7, "the latest publication at once");

    c.send(&ClientFrame::History {
        id: Some(2),
        channel: "price".into(),
        since: None,
        limit: Some(2),
    })
    .await;
    loop {
        match c.recv().await {
            ServerFrame::History {
                id: Some(2),
                offset,
                publications,
                complete,
                ..
            } => {
                assert_eq!(offset, 7);
                assert_eq!(publications.iter().map(|p| p.offset).collect::<Vec<_>>(), [6, 7]);
                assert!(!complete);
                break;
            }
            ServerFrame::Message { .. } => continue,
            other => panic!("expected history, got {other:?}"),
        }
    }
    let (status, body) = gw.http("GET", "/api/history?channel=price&since=4&epoch=x", None).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (v["publications"].as_array().map(Vec::len), v["complete"].as_bool()),
        (Some(0), Some(false))
    );
    let (status, _) = gw.http("GET", "/api/history?channel=nohist%3Ax", None).await;
    assert_eq!(status, 200, "every channel keeps history on this gateway");

    let body = json!({"channel": "price", "data": 8, "idempotency_key": "tick-8"}).to_string();
    let (_, first) = gw.http("POST", "/api/publish", Some(&body)).await;
    let (_, again) = gw.http("POST", "/api/publish", Some(&body)).await;
    let (first, again): (Value, Value) = (
        serde_json::from_str(&first).unwrap(),
        serde_json::from_str(&again).unwrap(),
    );
    assert_eq!(first["offset"], 8);
    assert_eq!(
        (again["offset"].clone(), again["duplicate"].clone()),
        (json!(8), json!(true))
    );
    assert_eq!(message(&mut c).await.0, 8);
    gw.publish("price", json!(9)).await;
    assert_eq!(message(&mut c).await.0, 9, "the retry was not delivered");
    let (status, _) = gw
        .http(
            "POST",
            "/api/publish",
            Some(r#"{"channel":"price","data":1,"idempotency_key":"bad key"}"#),
        )
        .await;
    assert_eq!(status, 400);
    // The store's size: one channel, its last 5 publications.
    gw.wait_metric("shardcast_history_publications", |v| v == 5.0).await;
    gw.wait_metric("shardcast_history_channels", |v| v == 1.0).await;
}

/// Publishing through Redis keeps working on a channel with history: a plain
/// PUBLISH is delivered without an offset; `FCALL shardcast_publish`, as
/// PROTOCOL.md 15.1 shows it for redis-cli, is numbered and recoverable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_publish_through_redis_with_and_without_history() {
    let redis = RedisServer::start();
    let url = redis.url();
    let gws = ready_gateways(1, &["--redis", url.as_str(), "--history-size", "100"]).await;
    let gw = gws[0].as_ref().expect("gateway");
    let mut c = gw.connect(Encoding::Json).await;
    let (top, epoch) = c.subscribe_history(1, "news").await;
    assert_eq!(redis.cli(&["PUBLISH", "shardcast:news", r#"{"plain":true}"#]), "1");
    match c.recv().await {
        ServerFrame::Message { offset, data, .. } => assert_eq!((offset, data), (None, json!({"plain": true}))),
        other => panic!("{other:?}"),
    }
    let reply = redis.cli(&[
        "FCALL",
        "shardcast_publish",
        "2",
        "shardcast:history:{shardcast:news}",
        "shardcast:meta:{shardcast:news}",
        "shardcast:news",
        r#"{"text":"hello"}"#,
        "100",
        "300",
    ]);
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(
        lines,
        [(top + 1).to_string().as_str(), epoch.as_str(), "0"],
        "offset, epoch, not a duplicate"
    );
    match c.recv().await {
        ServerFrame::Message {
            offset,
            epoch: got,
            data,
            ..
        } => {
            assert_eq!((offset, got.as_deref()), (Some(top + 1), Some(epoch.as_str())));
            assert_eq!(data, json!({"text": "hello"}));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_without_history_answers_no_history() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(Encoding::Json).await;
    let since = StreamPosition {
        offset: 3,
        epoch: "e".into(),
    };
    let (top, _, recovered) = subscribe_with(&mut c, 1, "plain", Some(since), false).await;
    assert_eq!((top, recovered), (None, Some(false)));
    let (status, body) = gw.http("GET", "/api/history?channel=plain", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no_history"));
}

/// Through Redis, across a gateway kill: the subscriber of the killed instance
/// reconnects to the other one and recovers everything published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_across_a_gateway_kill_through_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let args = ["--redis", url.as_str(), "--history-size", "1000"];
    let mut gws = ready_gateways(2, &args).await;
    let survivor = gws[0].take().expect("gateway");
    let mut victim = gws[1].take().expect("gateway");
    let mut c = victim.connect(Encoding::Json).await;
    let (_, epoch, _) = subscribe_with(&mut c, 1, "orders", None, false).await;
    publish_n(&survivor, "orders", 1..11).await;
    let mut last = 0;
    for _ in 1..11 {
        last = message(&mut c).await.0;
    }
    assert_eq!(last, 10);
    victim.signal(libc::SIGKILL);
    let _ = victim.wait_exit(WAIT);
    publish_n(&survivor, "orders", 11..311).await;
    let mut back = survivor.connect(Encoding::Json).await;
    let since = StreamPosition {
        offset: last,
        epoch: epoch.expect("epoch"),
    };
    let (top, _, recovered) = subscribe_with(&mut back, 1, "orders", Some(since), false).await;
    assert_eq!((top, recovered), (Some(310), Some(true)));
    for n in 11..311u64 {
        assert_eq!(message(&mut back).await.0, n);
    }
    publish_n(&survivor, "orders", 311..312).await;
    assert_eq!(message(&mut back).await.0, 311, "then the live stream");
}

/// History follows the channel rules: a namespace's own history settings, and
/// the `history` op refused where a subscribe would be; `recover_max` caps one
/// recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_set_history_and_the_rules_guard_it() {
    let dir = std::env::temp_dir().join(format!("shardcast-history-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("rules.toml");
    std::fs::write(
        &path,
        "[namespaces.feed]\nhistory_size = 50\nrecover_max = 5\n[namespaces.secret]\nsubscribe = \"authenticated\"\nhistory_size = 10\n",
    )
    .expect("rules file");
    let gw = Gateway::start(&["--config", path.to_str().expect("utf-8")]);
    let mut c = gw.connect(Encoding::Json).await;
    let (top, epoch) = c.subscribe_history(1, "feed:a").await;
    assert_eq!(top, 0);
    let (status, _) = gw.http("GET", "/api/history?channel=plain", None).await;
    assert_eq!(status, 404, "channels outside the namespace keep none");
    c.close().await;
    publish_n(&gw, "feed:a", 1..11).await;
    let mut back = gw.connect(Encoding::Json).await;
    let since = |offset| StreamPosition {
        offset,
        epoch: epoch.clone(),
    };
    let (_, _, recovered) = subscribe_with(&mut back, 1, "feed:a", Some(since(0)), false).await;
    assert_eq!(recovered, Some(false), "10 missed, at most 5 per recovery");
    let (_, _, recovered) = subscribe_with(&mut back, 2, "feed:b", Some(since(0)), false).await;
    assert_eq!(recovered, Some(false), "another channel, another epoch");
    let mut fresh = gw.connect(Encoding::Json).await;
    let (_, _, recovered) = subscribe_with(&mut fresh, 1, "feed:a", Some(since(5)), false).await;
    assert_eq!(recovered, Some(true), "5 missed: within recover_max");
    for n in 6..11u64 {
        assert_eq!(message(&mut fresh).await.0, n);
    }
    fresh
        .send(&ClientFrame::History {
            id: Some(7),
            channel: "secret:x".into(),
            since: None,
            limit: None,
        })
        .await;
    loop {
        match fresh.recv().await {
            ServerFrame::Error { id: Some(7), code, .. } => {
                assert_eq!(code, shardcast_proto::ErrorCode::PermissionDenied);
                break;
            }
            ServerFrame::Message { .. } => continue,
            other => panic!("expected permission_denied, got {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
