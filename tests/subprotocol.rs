//! Subprotocol negotiation as strict clients see it: the 101 response echoes the
//! client's own token byte for byte (RFC 6455 4.2.2), so a client offering
//! `Shardcast.V1.MsgPack` gets exactly that back, and Python `websockets`, which
//! fails the connection on any other spelling, connects.

mod common;

use std::process::Command;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends an upgrade offering `offer` and returns the response head.
async fn upgrade_head(gw: &Gateway, offer: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(gw.ws).await.expect("connect");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {offer}\r\n\r\n",
        gw.ws
    );
    stream.write_all(req.as_bytes()).await.expect("send upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    (String::from_utf8(head).expect("ASCII head"), stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chosen_subprotocol_is_echoed_as_the_client_spelled_it() {
    let gw = Gateway::start(&[]);
    for (offer, echoed, opcode) in [
        ("Shardcast.V1.MsgPack", "Shardcast.V1.MsgPack", 2),
        ("chat, SHARDCAST.v1.json ,shardcast.v1.msgpack", "SHARDCAST.v1.json", 1),
        ("shardcast.v1.msgpack", "shardcast.v1.msgpack", 2),
    ] {
        let (head, stream) = upgrade_head(&gw, offer).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let line = format!("\r\nSec-WebSocket-Protocol: {echoed}\r\n");
        assert!(head.contains(&line), "offer {offer:?}: expected {line:?} in {head}");
        // The encoding follows the token: the welcome is binary for MessagePack.
        let mut raw = RawClient { stream };
        assert_eq!(raw.read_frame().await.0, opcode, "welcome frame type for {offer:?}");
    }
}

/// Python `websockets` (tests/run.sh installs it) checks that the server's
/// subprotocol is one of the offered values, case-sensitively.
const PY_CLIENT: &str = r#"
import sys
from websockets.sync.client import connect
with connect(sys.argv[1], subprotocols=["Shardcast.V1.MsgPack"], open_timeout=5) as ws:
    welcome = ws.recv(timeout=5)
    print(ws.subprotocol, type(welcome).__name__)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_connects_with_a_mixed_case_offer() {
    let gw = Gateway::start(&[]);
    let url = format!("ws://{}/ws", gw.ws);
    let out = tokio::task::spawn_blocking(move || Command::new("python3").args(["-c", PY_CLIENT, &url]).output())
        .await
        .expect("join")
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'websockets'"),
        "install the client: python3 -m pip install websockets==13.1 (tests/run.sh does)"
    );
    assert!(out.status.success(), "python websockets failed: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Shardcast.V1.MsgPack bytes"
    );
}
