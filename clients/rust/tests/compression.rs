//! permessage-deflate against a real gateway: with `--compression on` the client's
//! offer is accepted and a publication arrives compressed and is inflated; with the
//! offer turned off, or the gateway's compression off, the same publication arrives
//! uncompressed; and publications of every size arrive whole and in order.

mod common;

use common::{within, Gateway};
use futures_util::StreamExt;
use serde_json::{json, Value};
use shardcast_client::{inflated_messages, Client, Encoding};

/// A JSON publication of about 2 KB, compressible as real payloads are.
fn publication() -> Value {
    let rows: Vec<Value> = (0..40)
        .map(|i| json!({"id": i, "symbol": "ACME", "price": 100.0 + f64::from(i) / 8.0, "side": "buy"}))
        .collect();
    json!({"rows": rows})
}

/// Subscribes through a client with `compression` on or off, publishes through the
/// HTTP API, and checks that the publication arrives whole; returns whether the
/// gateway accepted permessage-deflate.
async fn receive(gateway: &Gateway, encoding: Encoding, compression: bool) -> bool {
    let client = Client::builder(gateway.ws_url())
        .encoding(encoding)
        .compression(compression)
        .build()
        .expect("client");
    let mut ticks = within("subscribe", client.subscribe("ticks"))
        .await
        .expect("subscribed");
    let payload = publication();
    assert!(serde_json::to_string(&payload).expect("JSON").len() >= 2000);
    let receipt = within("publish", gateway.admin().publish("ticks", &payload))
        .await
        .expect("publish");
    assert_eq!(receipt.subscribers, 1);
    let message = within("the publication", ticks.next()).await.expect("stream open");
    assert_eq!(message.data, payload);
    let accepted = client.welcome().expect("welcome").compression;
    client.close().await;
    accepted
}

#[tokio::test]
async fn a_publication_arrives_compressed_and_is_inflated() {
    let gateway = Gateway::start(&["--compression", "on"]);
    let before = inflated_messages();
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        assert!(receive(&gateway, encoding, true).await, "the gateway accepts the offer");
    }
    // The publications (the gateway compresses publications; its replies go as they
    // are). The other tests of this file run meanwhile but inflate nothing.
    let inflated = inflated_messages() - before;
    assert!(inflated >= 2, "{inflated} messages arrived compressed");
}

#[tokio::test]
async fn without_the_offer_the_publication_arrives_uncompressed() {
    let gateway = Gateway::start(&["--compression", "on"]);
    assert!(!receive(&gateway, Encoding::Json, false).await);
}

#[tokio::test]
async fn a_gateway_without_compression_ignores_the_offer() {
    let gateway = Gateway::start(&["--compression", "off"]);
    assert!(!receive(&gateway, Encoding::Json, true).await);
}

/// Many publications, up to near the gateway's message size limit, back to back:
/// each is inflated on its own (the gateway agrees `server_no_context_takeover`),
/// whatever the TCP reads cut them into.
#[tokio::test]
async fn publications_of_every_size_arrive_in_order() {
    let gateway = Gateway::start(&["--compression", "on"]);
    let client = Client::builder(gateway.ws_url()).build().expect("client");
    let mut ticks = within("subscribe", client.subscribe("ticks"))
        .await
        .expect("subscribed");
    let admin = gateway.admin();
    let payloads: Vec<Value> = (0..30)
        .map(|i: usize| json!({"n": i, "text": "abcdefghij".repeat(i * i * 6)}))
        .collect();
    for payload in &payloads {
        within("publish", admin.publish("ticks", payload))
            .await
            .expect("publish");
    }
    for payload in &payloads {
        let message = within("a publication", ticks.next()).await.expect("stream open");
        assert_eq!(&message.data, payload);
    }
    client.close().await;
}
