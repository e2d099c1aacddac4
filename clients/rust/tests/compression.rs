//! permessage-deflate against a real gateway: with `--compression on` the client's
//! offer is accepted and a publication arrives compressed and is inflated; with the
//! offer turned off, or the gateway's compression off, the same publication arrives
//! uncompressed; and publications of every size arrive whole and in order. A raw
//! fake gateway sends what the real one never does: a compression bomb, which ends
//! the client with 1009 (its close frame sent to the gateway) instead of an allocation.

mod common;

use common::{wait_event, within, Gateway};
use flate2::{Compress, Compression, FlushCompress};
use futures_util::StreamExt;
use serde_json::{json, Value};
use shardcast_client::{inflated_messages, Client, ClientEvent, Encoding, ReconnectPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

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

/// An unmasked server frame; `rsv1` marks it compressed.
fn server_frame(rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | if rsv1 { 0x40 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= 0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// 16 MiB of zeros, deflated to some 16 KB, its trailing 00 00 ff ff removed.
fn bomb() -> Vec<u8> {
    let zeros = vec![0u8; 16 * 1024 * 1024];
    let mut compressor = Compress::new(Compression::best(), false);
    let mut out = Vec::with_capacity(64 * 1024);
    compressor
        .compress_vec(&zeros, &mut out, FlushCompress::Sync)
        .expect("deflate");
    assert_eq!(compressor.total_in() as usize, zeros.len(), "the buffer was big enough");
    out.truncate(out.len() - 4);
    out
}

#[tokio::test]
async fn a_compression_bomb_ends_the_client_with_1009() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("address"));
    let (client, mut events) = Client::builder(url)
        // Inflated messages are bounded like any other incoming message.
        .websocket_config(WebSocketConfig::default().max_message_size(Some(1024 * 1024)))
        .reconnect(ReconnectPolicy {
            max_attempts: Some(1),
            ..ReconnectPolicy::default()
        })
        .build_with_events()
        .expect("client");
    let (mut socket, _) = within("a connection", listener.accept()).await.expect("accept");
    let mut request = Vec::new();
    while !request.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        within("the request", socket.read_exact(&mut byte)).await.expect("read");
        request.push(byte[0]);
    }
    let request = String::from_utf8(request).expect("ASCII head");
    assert!(
        request.contains("permessage-deflate; client_no_context_takeover"),
        "{request}"
    );
    let key = request
        .lines()
        .find_map(|l| {
            l.strip_prefix("Sec-WebSocket-Key: ")
                .or_else(|| l.strip_prefix("sec-websocket-key: "))
        })
        .expect("a key");
    let welcome = json!({"type": "welcome", "version": 1, "node": "fake", "shard": 0,
        "ping_interval_ms": 25000, "encoding": "json"});
    let mut wire = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: shardcast.v1.json\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n",
        derive_accept_key(key.trim().as_bytes())
    )
    .into_bytes();
    wire.extend(server_frame(false, 0x1, welcome.to_string().as_bytes()));
    wire.extend(server_frame(true, 0x1, &bomb()));
    within("the upgrade and the bomb", socket.write_all(&wire))
        .await
        .expect("write");

    let disconnected = wait_event(&mut events, |e| matches!(e, ClientEvent::Disconnected { .. })).await;
    assert!(
        matches!(
            disconnected,
            ClientEvent::Disconnected {
                code: 1009,
                will_reconnect: false,
                ..
            }
        ),
        "{disconnected:?}"
    );
    // The client's close frame: masked, opcode 8, code 1009.
    let mut head = [0u8; 6];
    within("the close frame", socket.read_exact(&mut head))
        .await
        .expect("read");
    assert_eq!((head[0], head[1] & 0x80), (0x88, 0x80));
    let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
    within("the close frame", socket.read_exact(&mut payload))
        .await
        .expect("read");
    let code = [payload[0] ^ head[2], payload[1] ^ head[3]];
    assert_eq!(u16::from_be_bytes(code), 1009);
    client.close().await;
}
