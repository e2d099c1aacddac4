//! History and recovery against real gateway processes (PROTOCOL.md 19): a
//! subscriber gets every publication exactly once and in order across a SIGKILL of
//! its gateway and a new process on the same port (two gateways on one
//! redis-server, the publications going through the other one), and a restart of an
//! in-process gateway, which loses the history, is reported as
//! [`ClientEvent::Stale`]; idempotent publishes (WebSocket and admin API), `latest`
//! and `history` get the gateway's answers. Each test passes without running, saying
//! so, where the gateway binary predates history (no `--history-size`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, gateway_bin, wait_event, within, Gateway, WAIT};
use futures_util::StreamExt;
use serde_json::json;
use shardcast_client::{
    Client, ClientEvent, Encoding, Error, GapReason, HistoryOptions, ReconnectPolicy, StaleSource, SubscribeOptions,
};

/// Short delays, so that tests do not wait out production backoff.
fn quick_policy() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        ..ReconnectPolicy::default()
    }
}

/// Whether the gateway binary has history; if not, says why the test does not run.
fn history_supported() -> bool {
    let help = Command::new(gateway_bin())
        .arg("--help")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let supported = String::from_utf8_lossy(&help).contains("--history-size");
    if !supported {
        eprintln!(
            "skipped: the gateway binary {} has no --history-size flag (it predates history, issue #12)",
            gateway_bin().display()
        );
    }
    supported
}

/// A redis-server on a loopback port, without persistence; killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let server = RedisServer { child, port };
        let started = Instant::now();
        while !server.answers_ping() {
            assert!(started.elapsed() < WAIT, "redis-server did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn recovers_across_a_gateway_kill(encoding: Encoding) {
    if !history_supported() {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url();
    let args = ["--redis", url.as_str(), "--history-size", "100"];
    let listen = format!("127.0.0.1:{}", free_port());
    let subscribed = Gateway::start_at(&listen, &args);
    let publishing = Gateway::start(&args);
    let (client, mut events) = Client::builder(subscribed.ws_url())
        .encoding(encoding)
        .reconnect(quick_policy())
        .build_with_events()
        .expect("client");
    let mut feed = within("subscribe", client.subscribe("feed")).await.expect("subscribed");

    const COUNT: u64 = 150;
    let admin = publishing.admin();
    let publisher = tokio::spawn(async move {
        for n in 1..=COUNT {
            // A gateway logs "listening" before its Redis connection is up, and refuses
            // publishes (503) until it is: retried, with a key, so never published twice.
            let key = format!("feed-{n}");
            let mut refusals = 0;
            while let Err(error) = admin.publish_with_key("feed", &json!(n), &key).await {
                refusals += 1;
                assert!(refusals < 250, "publish {n}: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut received = Vec::new();
    while received.len() < 30 {
        received.push(within("a message", feed.next()).await.expect("open"));
    }
    // A crash: no close frame, no retry hint.
    drop(subscribed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _subscribed = Gateway::start_at(&listen, &args);
    while received.len() < COUNT as usize {
        received.push(within("a message", feed.next()).await.expect("open"));
    }
    within("the publisher", publisher).await.expect("published");

    let data: Vec<u64> = received.iter().map(|m| m.data.as_u64().expect("a number")).collect();
    assert_eq!(data, (1..=COUNT).collect::<Vec<_>>());
    let offsets: Vec<u64> = received.iter().map(|m| m.offset.expect("an offset")).collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    wait_event(
        &mut events,
        |e| matches!(e, ClientEvent::Subscribed { channel, resubscribed: true } if channel == "feed"),
    )
    .await;
    client.close().await;
    let mut stale = Vec::new();
    while let Some(event) = events.recv().await {
        if matches!(event, ClientEvent::Stale { .. }) {
            stale.push(event);
        }
    }
    assert_eq!(stale, []);
}

#[tokio::test]
async fn recovers_across_a_gateway_kill_json() {
    recovers_across_a_gateway_kill(Encoding::Json).await;
}

#[tokio::test]
async fn recovers_across_a_gateway_kill_msgpack() {
    recovers_across_a_gateway_kill(Encoding::MsgPack).await;
}

#[tokio::test]
async fn a_restart_that_loses_the_history_is_reported_stale() {
    if !history_supported() {
        return;
    }
    let args = ["--history-size", "100", "--drain-window", "200ms"];
    let listen = format!("127.0.0.1:{}", free_port());
    let mut gateway = Gateway::start_at(&listen, &args);
    let (client, mut events) = Client::builder(gateway.ws_url())
        .reconnect(quick_policy())
        .build_with_events()
        .expect("client");
    let mut feed = within("subscribe", client.subscribe("feed")).await.expect("subscribed");
    within("publish", gateway.admin().publish("feed", &json!("before")))
        .await
        .expect("publish");
    let before = within("a message", feed.next()).await.expect("open");
    assert_eq!((before.offset, before.data), (Some(1), json!("before")));
    gateway.terminate();
    let gateway = Gateway::start_at(&listen, &args);
    let stale = wait_event(&mut events, |e| matches!(e, ClientEvent::Stale { .. })).await;
    assert_eq!(
        stale,
        ClientEvent::Stale {
            channel: "feed".to_owned(),
            reason: GapReason::EpochChanged,
            source: StaleSource::Recover
        }
    );
    within("publish", gateway.admin().publish("feed", &json!("after")))
        .await
        .expect("publish");
    let after = within("a message", feed.next()).await.expect("open");
    assert_eq!((after.offset, after.data), (Some(1), json!("after")));
    assert_ne!(after.epoch, before.epoch);
    client.close().await;
}

#[tokio::test]
async fn idempotent_publishes_latest_and_history_against_a_gateway() {
    if !history_supported() {
        return;
    }
    let gateway = Gateway::start(&["--history-size", "100", "--allow-client-publish"]);
    let client = Client::builder(gateway.ws_url())
        .reconnect(quick_policy())
        .build()
        .expect("client");
    within("connect", client.wait_connected()).await.expect("connected");
    let admin = gateway.admin();

    let first = within("publish", admin.publish_with_key("prices:eur", &json!(1.08), "tick-1"))
        .await
        .expect("publish");
    assert_eq!((first.offset, first.duplicate), (Some(1), false));
    let again = within("publish", admin.publish_with_key("prices:eur", &json!(1.08), "tick-1"))
        .await
        .expect("publish");
    assert_eq!(
        (again.offset, &again.epoch, again.duplicate),
        (Some(1), &first.epoch, true)
    );
    let published = within("publish", client.publish_with_key("prices:eur", &json!(1.09), "tick-2"))
        .await
        .expect("publish");
    assert_eq!(
        (published.offset, &published.epoch, published.duplicate),
        (Some(2), &first.epoch, false)
    );
    let retried = within("publish", client.publish_with_key("prices:eur", &json!(1.09), "tick-2"))
        .await
        .expect("publish");
    assert!(retried.duplicate && retried.offset == Some(2), "{retried:?}");

    let mut latest = within(
        "subscribe",
        client.subscribe_with("prices:eur", SubscribeOptions::default().latest()),
    )
    .await
    .expect("subscribed");
    let message = within("the latest publication", latest.next()).await.expect("open");
    assert_eq!((message.offset, message.data), (Some(2), json!(1.09)));

    let history = within(
        "history",
        client.history("prices:eur", HistoryOptions::default().limit(1)),
    )
    .await
    .expect("history");
    assert_eq!(
        (history.offset, Some(&history.epoch), history.complete),
        (2, first.epoch.as_ref(), false)
    );
    assert_eq!(history.publications.len(), 1);
    let epoch = history.epoch.clone();
    let since = within(
        "history",
        client.history("prices:eur", HistoryOptions::default().since(1, epoch)),
    )
    .await
    .expect("history");
    assert!(since.complete);
    assert_eq!(
        since
            .publications
            .iter()
            .map(|p| (p.offset, p.data.clone()))
            .collect::<Vec<_>>(),
        [(2, json!(1.09))]
    );
    // --history-size applies to every channel: one never published to has an empty history.
    let news = within("history", client.history("news", HistoryOptions::default()))
        .await
        .expect("history");
    assert_eq!((news.offset, news.publications.len()), (0, 0));
    client.close().await;
}

#[tokio::test]
async fn history_of_a_channel_without_history_is_no_history() {
    let gateway = Gateway::start(&[]);
    let client = Client::connect(gateway.ws_url()).expect("client");
    within("connect", client.wait_connected()).await.expect("connected");
    let refused = within("history", client.history("news", HistoryOptions::default())).await;
    if history_supported() {
        assert!(
            matches!(&refused, Err(Error::NoHistory { channel, .. }) if channel == "news"),
            "{refused:?}"
        );
    }
    client.close().await;
}
