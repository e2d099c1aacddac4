//! The client against a real gateway: subscriptions receive what the HTTP API
//! publishes, in both encodings; subscriptions share channels and unsubscribe;
//! client publishing, pings, and the gateway's refusals as typed errors.

mod common;

use std::time::Duration;

use common::{within, Gateway};
use futures_util::StreamExt;
use serde_json::json;
use shardcast_client::{Client, ConnectionState, Encoding, Error, ErrorCode};

async fn subscribe_and_receive(encoding: Encoding) {
    let gateway = Gateway::start(&[]);
    let client = Client::builder(gateway.ws_url())
        .encoding(encoding)
        .build()
        .expect("client");
    let mut news = within("subscribe", client.subscribe("news")).await.expect("subscribed");
    assert_eq!(client.state(), ConnectionState::Connected);
    let welcome = client.welcome().expect("welcome");
    assert_eq!((welcome.encoding, welcome.version), (encoding, 1));
    assert_eq!(welcome.node, gateway.node);

    let admin = gateway.admin();
    let payloads = [
        json!({"text": "hello", "n": 1, "price": 1.0825, "tags": ["a", null, true], "nested": {"big": u64::MAX}}),
        json!("a string"),
        json!(null),
        json!(-42),
    ];
    for payload in &payloads {
        let receipt = within("publish", admin.publish("news", payload))
            .await
            .expect("publish");
        assert_eq!(receipt.subscribers, 1);
    }
    for (i, payload) in payloads.iter().enumerate() {
        let message = within("a message", news.next()).await.expect("stream open");
        assert_eq!(message.channel, "news");
        assert_eq!(message.seq, i as u64 + 1, "consecutive seq within one subscription");
        assert_eq!(&message.data, payload, "{encoding:?}");
    }
    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct Greeting {
        text: String,
    }
    within("publish", admin.publish("news", &json!({"text": "typed"})))
        .await
        .expect("publish");
    let message = within("a message", news.next()).await.expect("stream open");
    assert_eq!(
        message.data_as::<Greeting>().expect("typed"),
        Greeting { text: "typed".into() }
    );

    within("close", client.close()).await;
    assert_eq!(client.state(), ConnectionState::Closed);
    assert_eq!(
        within("end of stream", news.next()).await,
        None,
        "streams end with the client"
    );
    assert!(matches!(
        client.subscribe("news").await,
        Err(Error::Closed { code: None, .. })
    ));
}

#[tokio::test]
async fn subscription_receives_http_publications_in_json() {
    subscribe_and_receive(Encoding::Json).await;
}

#[tokio::test]
async fn subscription_receives_http_publications_in_msgpack() {
    subscribe_and_receive(Encoding::MsgPack).await;
}

#[tokio::test]
async fn subscriptions_share_a_channel_and_unsubscribe() {
    let gateway = Gateway::start(&[]);
    let admin = gateway.admin();
    let client = Client::connect(gateway.ws_url()).expect("client");
    let mut first = within("subscribe", client.subscribe("shared")).await.expect("first");
    let mut second = within("subscribe", client.subscribe("shared")).await.expect("second");
    let mut other = within("subscribe", client.subscribe("other")).await.expect("other");

    // One connection: the gateway counts one subscriber however many streams share it.
    let receipt = within("publish", admin.publish("shared", &1)).await.expect("publish");
    assert_eq!(receipt.subscribers, 1);
    assert_eq!(within("first", first.next()).await.expect("open").data, json!(1));
    assert_eq!(within("second", second.next()).await.expect("open").data, json!(1));

    // Dropping one stream keeps the channel for the other.
    drop(first);
    within("publish", admin.publish("shared", &2)).await.expect("publish");
    assert_eq!(within("second", second.next()).await.expect("open").data, json!(2));

    // The last one unsubscribes on the gateway; once acknowledged nothing more is delivered.
    within("unsubscribe", second.unsubscribe()).await.expect("unsubscribed");
    let receipt = within("publish", admin.publish("shared", &3)).await.expect("publish");
    assert_eq!(receipt.subscribers, 0);

    // Other channels are untouched, and messages are routed per channel.
    within("publish", admin.publish("other", &"o")).await.expect("publish");
    let message = within("other", other.next()).await.expect("open");
    assert_eq!((message.channel.as_str(), message.data), ("other", json!("o")));

    // Subscribing again after unsubscribing works, and a new subscription starts fresh.
    let mut again = within("subscribe", client.subscribe("shared")).await.expect("again");
    within("publish", admin.publish("shared", &4)).await.expect("publish");
    assert_eq!(within("again", again.next()).await.expect("open").data, json!(4));
    client.close().await;
}

#[tokio::test]
async fn client_publish_and_ping() {
    let gateway = Gateway::start(&["--allow-client-publish"]);
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let client = Client::builder(gateway.ws_url())
            .encoding(encoding)
            .build()
            .expect("client");
        let mut echo = within("subscribe", client.subscribe("echo")).await.expect("subscribed");
        within(
            "publish",
            client.publish("echo", &json!({"from": "client", "x": [1.5, null]})),
        )
        .await
        .expect("client publish");
        let message = within("echo", echo.next()).await.expect("open");
        assert_eq!(
            message.data,
            json!({"from": "client", "x": [1.5, null]}),
            "{encoding:?}"
        );
        within("publish null", client.publish("echo", &()))
            .await
            .expect("null is a payload");
        assert_eq!(within("echo", echo.next()).await.expect("open").data, json!(null));
        let rtt = within("ping", client.ping()).await.expect("pong");
        assert!(rtt < Duration::from_secs(5));
        client.close().await;
    }
}

#[tokio::test]
async fn refusals_are_typed_errors() {
    let gateway = Gateway::start(&["--max-channels-per-connection", "1", "--max-channel-len", "8"]);
    let client = Client::connect(gateway.ws_url()).expect("client");

    // Checked locally, before anything is sent.
    for bad in ["", "has space", "semi;colon", "ünï"] {
        match client.subscribe(bad).await {
            Err(Error::InvalidChannel { channel, .. }) => assert_eq!(channel, bad),
            other => panic!("{bad:?}: expected InvalidChannel, got {other:?}"),
        }
    }
    // The length limit is the gateway's: refused there.
    match within("subscribe", client.subscribe("waytoolongname")).await {
        Err(Error::Server {
            op: "subscribe",
            code: ErrorCode::BadChannel,
            channel,
            ..
        }) => assert_eq!(channel.as_deref(), Some("waytoolongname")),
        other => panic!("expected bad_channel, got {other:?}"),
    }
    let _first = within("subscribe", client.subscribe("a")).await.expect("first channel");
    match within("subscribe", client.subscribe("b")).await {
        Err(error) => assert_eq!(error.code(), Some(ErrorCode::TooManyChannels), "{error}"),
        Ok(_) => panic!("a second channel was accepted over the limit of 1"),
    }
    // Client publishing is off by default.
    match within("publish", client.publish("a", &1)).await {
        Err(Error::Server {
            op: "publish",
            code: ErrorCode::Forbidden,
            ..
        }) => {}
        other => panic!("expected forbidden, got {other:?}"),
    }
    // The connection stays usable after refusals.
    within("ping", client.ping()).await.expect("pong");
    assert_eq!(client.state(), ConnectionState::Connected);
    client.close().await;
}

#[tokio::test]
async fn admin_api_key_and_stats() {
    let gateway = Gateway::start(&["--api-key", "s3cret"]);
    let client = Client::connect(gateway.ws_url()).expect("client");
    let _news = within("subscribe", client.subscribe("news")).await.expect("subscribed");

    match within("publish", gateway.admin().publish("news", &1)).await {
        Err(Error::Api { status: 401, code, .. }) => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("expected 401 forbidden, got {other:?}"),
    }
    let admin = gateway.admin().api_key(Some("s3cret".into()));
    assert_eq!(
        within("publish", admin.publish("news", &1))
            .await
            .expect("publish")
            .subscribers,
        1
    );
    match within("publish", admin.publish("bad name", &1)).await {
        Err(Error::InvalidChannel { .. }) => {}
        other => panic!("expected a local channel check, got {other:?}"),
    }

    let stats = within("stats", admin.stats()).await.expect("stats");
    assert_eq!(stats.node, gateway.node);
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.shards.iter().sum::<u64>(), 1);
    assert!(stats.ready);
    // The cluster view is refreshed every heartbeat interval (1 s by default).
    let cluster = within("the cluster view to count the connection", async {
        loop {
            let cluster = admin.cluster().await.expect("cluster");
            if cluster.total_connections == 1 {
                return cluster;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(cluster.instances.len(), 1);
    assert_eq!(cluster.instances[0].node, gateway.node);
    client.close().await;
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let gateway = Gateway::start(&[]);
    let admin = gateway.admin();
    let client = Client::connect(gateway.ws_url()).expect("client");
    let subscription = within("subscribe", client.subscribe("x")).await.expect("subscribed");
    drop(client);
    // The subscription alone keeps the connection alive...
    assert_eq!(within("stats", admin.stats()).await.expect("stats").connections, 1);
    drop(subscription);
    // ...and once it goes too, the client closes the socket.
    within("the connection to close", async {
        while admin.stats().await.expect("stats").connections != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
