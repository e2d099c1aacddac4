//! Bad input from clients: each gets its documented error frame or close code, is
//! counted, and leaves the gateway (and usually the connection) healthy.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use shardcast_proto::{close, ClientFrame, Encoding, ErrorCode, ServerFrame};

async fn expect_error(c: &mut Client, id: Option<u64>, code: ErrorCode) {
    match c.recv().await {
        ServerFrame::Error {
            id: got,
            code: got_code,
            message,
        } => {
            assert_eq!((got, got_code), (id, code), "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn request_errors_keep_the_connection_open() {
    let gw = Gateway::start(&["--max-channel-len", "16", "--max-channels-per-connection", "2"]);
    let mut bystander = gw.connect(Encoding::Json).await;
    bystander.subscribe(1, "news").await;

    let mut c = gw.connect(Encoding::Json).await;
    c.send_raw(b"{\"op\":\"subscribe\"".to_vec()).await;
    expect_error(&mut c, None, ErrorCode::BadRequest).await;
    c.send_raw(br#"{"op":"teleport","id":5}"#.to_vec()).await;
    expect_error(&mut c, Some(5), ErrorCode::UnknownOp).await;
    for bad in ["has space", "", "waaaaaaaaaaaaaay-too-long", "semi;colon"] {
        c.send(&ClientFrame::Subscribe {
            id: Some(6),
            channel: bad.into(),
            token: None,
            latest: false,
            recover: None,
        })
        .await;
        expect_error(&mut c, Some(6), ErrorCode::BadChannel).await;
    }
    c.send(&ClientFrame::Unsubscribe {
        id: Some(7),
        channel: "never".into(),
    })
    .await;
    expect_error(&mut c, Some(7), ErrorCode::NotSubscribed).await;
    c.subscribe(8, "one").await;
    c.subscribe(9, "two").await;
    c.send(&ClientFrame::Subscribe {
        id: Some(10),
        channel: "three".into(),
        token: None,
        latest: false,
        recover: None,
    })
    .await;
    expect_error(&mut c, Some(10), ErrorCode::TooManyChannels).await;
    c.ws.send(tokio_tungstenite::tungstenite::Message::Binary(vec![0x80].into()))
        .await
        .unwrap();
    expect_error(&mut c, None, ErrorCode::BadRequest).await;
    assert!(c.roundtrip(11).await.is_empty(), "connection still answers");

    let mut m = gw.connect(Encoding::MsgPack).await;
    m.send_raw(vec![0xc1, 0x00]).await;
    expect_error(&mut m, None, ErrorCode::BadRequest).await;
    m.send_raw(rmp_serde::to_vec_named(&json!({"op": "teleport", "id": 3})).unwrap())
        .await;
    expect_error(&mut m, Some(3), ErrorCode::UnknownOp).await;
    assert!(m.roundtrip(4).await.is_empty());

    assert_eq!(gw.publish("news", json!("still here")).await["subscribers"], 1);
    assert!(matches!(bystander.recv().await, ServerFrame::Message { .. }));
    assert_eq!(
        gw.metric("shardcast_client_errors_total{code=\"bad_request\"}").await,
        3.0
    );
    assert_eq!(
        gw.metric("shardcast_client_errors_total{code=\"unknown_op\"}").await,
        2.0
    );
    assert_eq!(
        gw.metric("shardcast_client_errors_total{code=\"bad_channel\"}").await,
        4.0
    );
    assert_eq!(
        gw.metric("shardcast_client_errors_total{code=\"too_many_channels\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn framing_errors_close_with_their_codes() {
    let gw = Gateway::start(&["--max-message-bytes", "1024"]);
    let mut bystander = gw.connect(Encoding::Json).await;
    bystander.subscribe(1, "news").await;

    let mut big = RawClient::connect(gw.ws).await;
    big.send_frame(0x81, &vec![b' '; 2000], true).await;
    assert_eq!(big.expect_close().await, close::MESSAGE_TOO_BIG);

    let mut unmasked = RawClient::connect(gw.ws).await;
    unmasked.send_frame(0x81, b"{}", false).await;
    assert_eq!(unmasked.expect_close().await, close::PROTOCOL_ERROR);

    let mut utf8 = RawClient::connect(gw.ws).await;
    utf8.send_frame(0x81, &[0xff, 0xfe, 0xfd], true).await;
    assert_eq!(utf8.expect_close().await, close::INVALID_PAYLOAD);

    let mut opcode = RawClient::connect(gw.ws).await;
    opcode.send_frame(0x83, b"x", true).await;
    assert_eq!(opcode.expect_close().await, close::PROTOCOL_ERROR);

    // A fragmented message whose parts add up past the limit.
    let mut frags = RawClient::connect(gw.ws).await;
    frags.send_frame(0x01, &[b' '; 600], true).await;
    frags.send_frame(0x80, &[b' '; 600], true).await;
    assert_eq!(frags.expect_close().await, close::MESSAGE_TOO_BIG);

    assert_eq!(gw.publish("news", json!(1)).await["subscribers"], 1);
    assert!(matches!(bystander.recv().await, ServerFrame::Message { .. }));
    assert_eq!(
        gw.metric("shardcast_client_errors_total{code=\"message_too_big\"}")
            .await,
        2.0
    );
    assert_eq!(
        gw.metric("shardcast_client_errors_total{code=\"protocol_error\"}")
            .await,
        2.0
    );
    assert_eq!(
        gw.metric("shardcast_client_errors_total{code=\"invalid_utf8\"}").await,
        1.0
    );
    let closed = gw
        .wait_metric("shardcast_disconnections_total{reason=\"message_too_big\"}", |v| {
            v >= 2.0
        })
        .await;
    assert_eq!(closed, 2.0);
}

#[tokio::test]
async fn fragmented_and_pinged_messages_work() {
    let gw = Gateway::start(&[]);
    let mut raw = RawClient::connect(gw.ws).await;
    let sub = br#"{"op":"subscribe","id":1,"channel":"frag"}"#;
    raw.send_frame(0x01, &sub[..10], true).await;
    raw.send_frame(0x89, b"hi", true).await;
    raw.send_frame(0x80, &sub[10..], true).await;
    assert_eq!(raw.read_frame().await, (0xA, b"hi".to_vec()), "pong echoes the ping");
    assert_eq!(raw.read_frame().await, (0x1, br#"{"type":"ack","id":1}"#.to_vec()));
    raw.send_frame(0x88, &1000u16.to_be_bytes(), true).await;
    assert_eq!(
        raw.expect_close().await,
        1000,
        "close is answered with the client's code"
    );
}

#[tokio::test]
async fn non_websocket_requests_get_http_answers() {
    let gw = Gateway::start(&[]);
    assert_eq!(http(gw.ws, "GET", "/ws", None, &[]).await.0, 426);
    assert_eq!(http(gw.ws, "GET", "/elsewhere", None, &[]).await.0, 404);
    assert_eq!(http(gw.ws, "POST", "/ws", None, &[]).await.0, 405);
    assert_eq!(http(gw.ws, "GET", "/health/ready", None, &[]).await.0, 200);
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Protocol", "shardcast.v9.json"),
    ];
    assert_eq!(
        http(gw.ws, "GET", "/ws", None, &upgrade).await.0,
        400,
        "unknown subprotocol"
    );
    let mut garbage = tokio::net::TcpStream::connect(gw.ws).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    garbage
        .write_all(b"\x16\x03\x01 definitely not http\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    garbage.read_to_end(&mut out).await.unwrap();
    assert_eq!(parse_http(&out).0, 400);
    assert!(
        gw.metric("shardcast_connections_refused_total{reason=\"bad_handshake\"}")
            .await
            >= 5.0
    );
    let mut c = gw.connect(Encoding::Json).await;
    assert!(c.roundtrip(1).await.is_empty(), "gateway still serves WebSockets");
}
