//! permessage-deflate (RFC 7692, `--compression`): a strict third-party client
//! (Python `websockets`, which offers the extension by default) round-trips
//! compressed messages both ways next to a client that declined it; the gateway
//! answers an offer only when compression is on; and a compressed message that
//! inflates past `--max-message-bytes` (a zip bomb) is closed with 1009 and counted.

mod common;

use common::*;
use shardcast::ws::deflate::{deflate_frame, RSV1};
use shardcast::ws::frame::data_frame;
use shardcast_proto::{close, Encoding};
use shardcast_testkit::http_head::upgrade_request;
use shardcast_testkit::ws_frame::{self, CLIENT_MASK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Subscribes a compressing and a plain client, publishes a 2 KB payload from the
/// compressing client and one through the API, and reports what each received.
const ROUND_TRIP: &str = r#"
import asyncio, json, sys, urllib.request
import websockets

WS, ADMIN = sys.argv[1], sys.argv[2]

async def main():
    payload = {"text": "compress me " * 170}
    async with websockets.connect(WS) as deflating, websockets.connect(WS, compression=None) as plain:
        out = {"extensions": [type(e).__name__ for e in deflating.extensions],
               "plain_extensions": len(plain.extensions)}
        for ws in (deflating, plain):
            json.loads(await ws.recv())  # welcome
            await ws.send(json.dumps({"op": "subscribe", "id": 1, "channel": "zip"}))
            assert json.loads(await ws.recv())["type"] == "ack"
        await deflating.send(json.dumps({"op": "publish", "id": 2, "channel": "zip", "data": payload}))
        body = json.dumps({"channel": "zip", "data": {"api": payload}}).encode()
        urllib.request.urlopen(urllib.request.Request(ADMIN + "/api/publish", data=body,
                               headers={"Content-Type": "application/json"})).read()
        got = {"deflating": [], "plain": []}
        for name, ws in (("deflating", deflating), ("plain", plain)):
            while len(got[name]) < 2:
                m = json.loads(await ws.recv())
                if m["type"] == "message":
                    got[name].append(m["data"] == payload or m["data"] == {"api": payload})
        out.update(got)
        print(json.dumps(out))

asyncio.run(main())
"#;

#[test]
fn python_websockets_round_trips_compressed_messages() {
    let gw = Gateway::start(&["--compression", "on", "--allow-client-publish"]);
    let out = python(
        ROUND_TRIP,
        &[&format!("ws://{}/ws", gw.ws), &format!("http://{}", gw.admin)],
    );
    let out: serde_json::Value = serde_json::from_str(&out).expect("the script's JSON");
    assert_eq!(out["extensions"], serde_json::json!(["PerMessageDeflate"]), "{out}");
    assert_eq!(out["plain_extensions"], 0, "{out}");
    assert_eq!(out["deflating"], serde_json::json!([true, true]), "{out}");
    assert_eq!(out["plain"], serde_json::json!([true, true]), "{out}");
}

/// Upgrades a raw socket with `extensions` offered; returns it and the 101 head.
async fn upgrade_offering(addr: std::net::SocketAddr, extensions: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = upgrade_request(addr, "/ws", None);
    let request = format!(
        "{}Sec-WebSocket-Extensions: {extensions}\r\n\r\n",
        request.strip_suffix("\r\n").expect("a head")
    );
    stream.write_all(request.as_bytes()).await.expect("upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    (stream, String::from_utf8(head).expect("ASCII head"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_is_answered_only_when_compression_is_on() {
    let off = Gateway::start(&[]);
    let (_s, head) = upgrade_offering(off.ws, "permessage-deflate; client_max_window_bits").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-extensions"),
        "{head}"
    );

    let on = Gateway::start(&["--compression", "512"]);
    let (_s, head) = upgrade_offering(on.ws, "permessage-deflate; server_max_window_bits=10").await;
    assert!(
        head.contains(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover; server_max_window_bits=10\r\n"
        ),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_bomb_is_closed_with_1009_and_counted() {
    let gw = Gateway::start(&["--compression", "on"]);
    let (mut stream, head) = upgrade_offering(gw.ws, "permessage-deflate").await;
    assert!(head.contains("permessage-deflate"), "{head}");
    let (op, _welcome) = read_server_frame(&mut stream).await.expect("welcome");
    assert_eq!(op, 0x1);

    // 16 MiB of zeros deflates to ~16 KiB, far under the 64 KiB wire limit.
    let zeros = vec![0u8; 16 << 20];
    let compressed = deflate_frame(&data_frame(Encoding::MsgPack, &zeros), 15).expect("deflated");
    let header_len = match compressed[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let payload = &compressed[header_len..];
    assert!(payload.len() < 65_536, "{} bytes on the wire", payload.len());
    let frame = ws_frame::encode_raw(0x82 | RSV1, payload, Some(CLIENT_MASK));
    stream.write_all(&frame).await.expect("send the bomb");

    assert_eq!(read_until_close(&mut stream, WAIT).await, Some(close::MESSAGE_TOO_BIG));
    let counted = gw
        .wait_metric("shardcast_client_errors_total{code=\"inflated_too_big\"}", |v| v >= 1.0)
        .await;
    assert_eq!(counted, 1.0);
    let rss = gw.rss();
    assert!(rss < 64 << 20, "the gateway never held the inflated bomb: RSS {rss}");
}
