//! Presence for native clients (PROTOCOL.md 21): in a namespace with `presence =
//! true`, a connection with a token joins a channel's members as its user, with
//! the token's `info`; other subscribers get `join` and `leave` frames once per
//! user (a second connection of a user is not announced); an anonymous subscriber
//! sees the members without being one; the `presence` operation lists them, and
//! is refused where the namespace has no presence. Tokens are signed by the
//! `jsonwebtoken` crate, as an app's backend would sign them.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use shardcast_proto::{ClientFrame, Encoding, ErrorCode, ServerFrame};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "presence-test-secret-presence-test-secret";

fn token(user: &str, name: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 600;
    let claims = json!({"sub": user, "exp": exp, "info": {"name": name}});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

/// A connection with `token` in its upgrade (none: anonymous).
async fn connect(gw: &Gateway, token: Option<&str>) -> Client {
    let mut req = format!("ws://{}/ws", gw.ws).into_client_request().expect("request");
    if let Some(t) = token {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().expect("header"));
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await.expect("upgrade");
    Client::after_upgrade(ws, Encoding::Json).await
}

/// The next frame that is not a `pong`, or none within `d`.
async fn next_within(c: &mut Client, d: Duration) -> Option<ServerFrame> {
    tokio::time::timeout(d, c.recv()).await.ok()
}

async fn presence(c: &mut Client, id: u64, channel: &str) -> ServerFrame {
    c.send(&ClientFrame::Presence {
        id: Some(id),
        channel: channel.into(),
    })
    .await;
    c.recv().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_users_announced_once_and_listed() {
    let dir = std::env::temp_dir().join(format!("shardcast-presence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gw.toml");
    std::fs::write(&path, "[namespaces.room]\npresence = true\npresence_max = 2\n").expect("config");
    let gw = Gateway::start(&[
        "--config",
        path.to_str().expect("utf-8"),
        "--token-hmac-secret",
        SECRET,
        "--allow-anonymous",
        "true",
    ]);
    let quiet = Duration::from_millis(400);

    let mut ann = connect(&gw, Some(&token("ann", "Ann"))).await;
    ann.subscribe(1, "room:lobby").await;
    let mut bob = connect(&gw, Some(&token("bob", "Bob"))).await;
    bob.subscribe(1, "room:lobby").await;
    // Ann hears of Bob's join. Her own join may come first, or not at all: it can
    // be announced before her subscription is live, like a publication before an ack.
    let bob_join = loop {
        match next_within(&mut ann, Duration::from_secs(5)).await {
            Some(ServerFrame::Join { user, .. }) if user == "ann" => continue,
            Some(ServerFrame::Join { channel, user, info }) => break (channel, user, info),
            other => panic!("expected bob's join, got {other:?}"),
        }
    };
    assert_eq!(
        bob_join,
        ("room:lobby".to_owned(), "bob".to_owned(), json!({"name": "Bob"}))
    );

    // A second connection of a member, and an anonymous subscriber: no join.
    let mut ann_again = connect(&gw, Some(&token("ann", "Ann"))).await;
    ann_again.subscribe(1, "room:lobby").await;
    let mut watcher = connect(&gw, None).await;
    watcher.subscribe(1, "room:lobby").await;
    // (Bob is told of his own join too, as every subscriber is.)
    for c in [&mut bob, &mut ann] {
        while let Some(frame) = next_within(c, quiet).await {
            assert!(
                !matches!(&frame, ServerFrame::Join { user, .. } if user == "ann"),
                "ann announced twice: {frame:?}"
            );
        }
    }

    match presence(&mut watcher, 7, "room:lobby").await {
        ServerFrame::Presence {
            id,
            channel,
            count,
            members,
        } => {
            assert_eq!((id, channel.as_str(), count), (Some(7), "room:lobby", 2));
            let mut users: Vec<(String, Value)> = members.into_iter().map(|m| (m.user, m.info)).collect();
            users.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(
                users,
                [
                    ("ann".to_owned(), json!({"name": "Ann"})),
                    ("bob".to_owned(), json!({"name": "Bob"}))
                ]
            );
        }
        other => panic!("expected the presence reply, got {other:?}"),
    }
    match presence(&mut watcher, 8, "news").await {
        ServerFrame::Error { id, code, .. } => assert_eq!((id, code), (Some(8), ErrorCode::BadChannel)),
        other => panic!("expected bad_channel for a namespace without presence, got {other:?}"),
    }

    // Ann's first connection goes: she is still a member. Bob goes: he leaves.
    ann.close().await;
    assert!(
        !matches!(next_within(&mut watcher, quiet).await, Some(ServerFrame::Leave { .. })),
        "ann still has a connection"
    );
    bob.close().await;
    match next_within(&mut watcher, Duration::from_secs(5)).await {
        Some(ServerFrame::Leave { channel, user }) => {
            assert_eq!((channel.as_str(), user.as_str()), ("room:lobby", "bob"))
        }
        other => panic!("expected bob's leave, got {other:?}"),
    }
    drop(ann_again);
}
