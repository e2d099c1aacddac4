//! Subscribing and receiving what the HTTP API publishes, in both encodings and
//! across shards.

mod common;

use common::*;
use serde_json::json;
use shardcast_proto::{ClientFrame, Encoding, ServerFrame};

/// The server's bytes for a publication equal the proto vector, in each encoding:
/// the subscribe frame is sent as the vector's exact bytes, and the message frame
/// received is compared byte for byte.
#[tokio::test]
async fn receives_http_publish_as_the_vectors_say() {
    let gw = Gateway::start(&["--shards", "2"]);
    let client_vectors = vectors("client_frames.json");
    let server_vectors = vectors("server_frames.json");
    let subscribe = vector(&client_vectors, "subscribe");
    let message = vector(&server_vectors, "message");
    let ack = vector(&server_vectors, "ack");
    let mut keep = Vec::new();
    for encoding in Encoding::ALL {
        let mut c = gw.connect(encoding).await;
        let (sub_bytes, ack_bytes, msg_bytes) = match encoding {
            Encoding::Json => (
                subscribe["json"].as_str().unwrap().as_bytes().to_vec(),
                ack["json"].as_str().unwrap().as_bytes().to_vec(),
                message["json"].as_str().unwrap().as_bytes().to_vec(),
            ),
            Encoding::MsgPack => (
                unhex(subscribe["msgpack_hex"].as_str().unwrap()),
                unhex(ack["msgpack_hex"].as_str().unwrap()),
                unhex(message["msgpack_hex"].as_str().unwrap()),
            ),
        };
        c.send_raw(sub_bytes).await;
        assert_eq!(c.recv_bytes().await, ack_bytes, "{encoding:?} ack");
        // The vector's message is seq 1 on channel "news": publish its data once per
        // encoding on a fresh gateway-wide channel state.
        if encoding == Encoding::Json {
            let reply = gw.publish("news", message["value"]["data"].clone()).await;
            assert_eq!(reply["subscribers"], 1);
            assert_eq!(c.recv_bytes().await, msg_bytes, "{encoding:?} message");
        } else {
            let reply = gw.publish("news", message["value"]["data"].clone()).await;
            assert_eq!(reply["subscribers"], 2, "both clients are subscribed now");
            let got = c.recv().await;
            assert_eq!(
                got,
                ServerFrame::Message {
                    channel: "news".into(),
                    seq: 2,
                    data: message["value"]["data"].clone(),
                    epoch: None,
                    offset: None,
                }
            );
            // Same bytes as the vector but for the sequence number.
            let mut expected = shardcast_proto::decode_server(Encoding::MsgPack, &msg_bytes).unwrap();
            if let ServerFrame::Message { seq, .. } = &mut expected {
                *seq = 2;
            }
            assert_eq!(got, expected);
        }
        keep.push(c);
    }
}

#[tokio::test]
async fn clients_on_different_shards_each_receive_once() {
    let gw = Gateway::start(&["--shards", "2"]);
    let mut on_shard: [Option<Client>; 2] = [None, None];
    let mut spare = Vec::new();
    for _ in 0..16 {
        let c = gw.connect(Encoding::Json).await;
        let slot = &mut on_shard[c.shard as usize];
        if slot.is_none() {
            *slot = Some(c);
        } else {
            spare.push(c);
        }
        if on_shard.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some(mut a), Some(mut b)] = on_shard else {
        panic!("connections did not spread over both shards")
    };
    assert_ne!(a.shard, b.shard);
    a.subscribe(1, "scores").await;
    b.subscribe(1, "scores").await;
    for n in 1..=3u64 {
        let reply = gw.publish("scores", json!({"n": n})).await;
        assert_eq!(reply["subscribers"], 2);
    }
    for c in [&mut a, &mut b] {
        for n in 1..=3u64 {
            assert_eq!(
                c.recv().await,
                ServerFrame::Message {
                    channel: "scores".into(),
                    seq: n,
                    data: json!({"n": n}),
                    epoch: None,
                    offset: None,
                }
            );
        }
        assert!(
            c.roundtrip(99).await.is_empty(),
            "no duplicate after the three messages"
        );
    }
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_empty_channels_reach_zero() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(Encoding::Json).await;
    c.subscribe(1, "weather").await;
    assert_eq!(gw.publish("weather", json!("sun")).await["subscribers"], 1);
    assert!(matches!(c.recv().await, ServerFrame::Message { .. }));
    c.send(&ClientFrame::Unsubscribe {
        id: Some(2),
        channel: "weather".into(),
    })
    .await;
    assert_eq!(c.recv().await, ServerFrame::ack(Some(2)));
    assert_eq!(gw.publish("weather", json!("rain")).await["subscribers"], 0);
    assert!(c.roundtrip(3).await.is_empty(), "nothing arrives after unsubscribe");
    assert_eq!(
        gw.publish("nobody-listens", json!(1)).await,
        json!({"ok": true, "subscribers": 0})
    );
    assert_eq!(gw.metric("shardcast_channels").await, 0.0);
}

#[tokio::test]
async fn batch_publish_and_api_key() {
    let gw = Gateway::start(&["--api-key", "s3cret"]);
    let mut c = gw.connect(Encoding::MsgPack).await;
    c.subscribe(1, "a").await;
    c.subscribe(2, "b").await;
    let body = json!([{"channel": "a", "data": 1}, {"channel": "b", "data": {"x": [1, 2]}}]).to_string();
    let (status, text) = http(
        gw.admin,
        "POST",
        "/api/publish",
        Some(&body),
        &[("Authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(status, 401, "{text}");
    let (status, text) = http(gw.admin, "POST", "/api/publish", Some(&body), &[]).await;
    assert_eq!(status, 401, "{text}");
    let (status, text) = http(
        gw.admin,
        "POST",
        "/api/publish",
        Some(&body),
        &[("Authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["results"][0]["subscribers"], 1);
    assert_eq!(reply["results"][1]["subscribers"], 1);
    assert_eq!(
        c.recv().await,
        ServerFrame::Message {
            channel: "a".into(),
            seq: 1,
            data: json!(1),
            epoch: None,
            offset: None,
        }
    );
    assert_eq!(
        c.recv().await,
        ServerFrame::Message {
            channel: "b".into(),
            seq: 1,
            data: json!({"x": [1, 2]}),
            epoch: None,
            offset: None,
        }
    );
    assert_eq!(
        gw.metric("shardcast_client_errors_total{code=\"unauthorized\"}").await,
        2.0
    );
}

#[tokio::test]
async fn client_publish_is_off_by_default_and_works_when_allowed() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(Encoding::Json).await;
    c.send(&ClientFrame::Publish {
        id: Some(1),
        channel: "x".into(),
        data: json!(1),
        idempotency_key: None,
    })
    .await;
    assert!(matches!(
        c.recv().await,
        ServerFrame::Error {
            id: Some(1),
            code: shardcast_proto::ErrorCode::Forbidden,
            ..
        }
    ));
    drop(gw);

    let gw = Gateway::start(&["--allow-client-publish"]);
    let mut a = gw.connect(Encoding::Json).await;
    let mut b = gw.connect(Encoding::MsgPack).await;
    b.subscribe(1, "chat").await;
    a.send(&ClientFrame::Publish {
        id: Some(7),
        channel: "chat".into(),
        data: json!({"hi": true}),
        idempotency_key: None,
    })
    .await;
    assert_eq!(a.recv().await, ServerFrame::ack(Some(7)));
    assert_eq!(
        b.recv().await,
        ServerFrame::Message {
            channel: "chat".into(),
            seq: 1,
            data: json!({"hi": true}),
            epoch: None,
            offset: None,
        }
    );
}
