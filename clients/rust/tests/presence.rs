//! Presence (PROTOCOL.md 21) against a real gateway whose `room` namespace has
//! `presence = true`, with HS256 tokens minted here (their `sub` is the member,
//! their `info` what the others see): a member hears another's join once as a
//! [`ClientEvent::Join`], [`Client::presence`] lists both members, a member that
//! closes is announced as leaving once, and the refusals are typed errors.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{wait_event, within, Gateway};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use shardcast_client::{Client, ClientEvent, Encoding, Error, ErrorCode, EventStream};

const SECRET: &str = "rust-client-presence-secret";
const CHANNEL: &str = "room:lobby";
/// How long "once" is watched for a second announcement.
const QUIET: Duration = Duration::from_millis(400);

/// A connection token for `user`, whose `info` claim is its display name.
fn token(user: &str, name: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 600;
    let claims = json!({"sub": user, "exp": exp, "info": {"name": name}});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// A gateway whose `room` namespace has presence, and whose `team` namespace needs a grant.
fn gateway(test: &str) -> Gateway {
    let dir = std::env::temp_dir().join(format!("shardcast-client-presence-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        "[namespaces.room]\npresence = true\n\n[namespaces.team]\nsubscribe = \"granted\"\npresence = true\n",
    )
    .expect("config");
    Gateway::start(&["--token-hmac-secret", SECRET, "--config", path.to_str().expect("utf-8")])
}

fn client(gateway: &Gateway, user: &str, name: &str, encoding: Encoding) -> (Client, EventStream) {
    Client::builder(gateway.ws_url())
        .token(token(user, name))
        .encoding(encoding)
        .build_with_events()
        .expect("client")
}

/// The joins and leaves that arrive within [`QUIET`].
async fn presence_events_within_quiet(events: &mut EventStream) -> Vec<ClientEvent> {
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(QUIET, events.recv()).await {
        if matches!(event, ClientEvent::Join { .. } | ClientEvent::Leave { .. }) {
            seen.push(event);
        }
    }
    seen
}

/// The members as (user, info), sorted by user.
fn members(presence: &shardcast_client::Presence) -> Vec<(String, Value)> {
    let mut members: Vec<(String, Value)> = presence
        .members
        .iter()
        .map(|m| (m.user.clone(), m.info.clone()))
        .collect();
    members.sort_by(|a, b| a.0.cmp(&b.0));
    members
}

#[tokio::test]
async fn joins_and_leaves_are_announced_once_and_members_listed() {
    let gateway = gateway("members");
    let (ann, mut ann_events) = client(&gateway, "ann", "Ann", Encoding::Json);
    let _ann_lobby = within("ann's subscribe", ann.subscribe(CHANNEL))
        .await
        .expect("subscribe");
    let (bob, _bob_events) = client(&gateway, "bob", "Bob", Encoding::MsgPack);
    let _bob_lobby = within("bob's subscribe", bob.subscribe(CHANNEL))
        .await
        .expect("subscribe");

    // Ann hears of Bob's join (her own may come before it, or not at all: it can be
    // announced before her subscription is acknowledged).
    let bob_joined = wait_event(
        &mut ann_events,
        |e| matches!(e, ClientEvent::Join { user, .. } if user == "bob"),
    )
    .await;
    assert_eq!(
        bob_joined,
        ClientEvent::Join {
            channel: CHANNEL.to_owned(),
            user: "bob".to_owned(),
            info: json!({"name": "Bob"}),
        }
    );
    let more = presence_events_within_quiet(&mut ann_events).await;
    assert!(
        !more
            .iter()
            .any(|e| matches!(e, ClientEvent::Join { user, .. } if user == "bob")),
        "bob announced twice: {more:?}"
    );

    // Bob joined after Ann: he learns of her from the member list.
    for who in [&ann, &bob] {
        let presence = within("presence", who.presence(CHANNEL)).await.expect("presence");
        assert_eq!((presence.channel.as_str(), presence.count), (CHANNEL, 2));
        assert_eq!(
            members(&presence),
            [
                ("ann".to_owned(), json!({"name": "Ann"})),
                ("bob".to_owned(), json!({"name": "Bob"})),
            ]
        );
    }

    bob.close().await;
    let bob_left = wait_event(&mut ann_events, |e| matches!(e, ClientEvent::Leave { .. })).await;
    assert_eq!(
        bob_left,
        ClientEvent::Leave {
            channel: CHANNEL.to_owned(),
            user: "bob".to_owned(),
        }
    );
    let more = presence_events_within_quiet(&mut ann_events).await;
    assert!(more.is_empty(), "more than one leave: {more:?}");
    let presence = within("presence", ann.presence(CHANNEL)).await.expect("presence");
    assert_eq!(members(&presence), [("ann".to_owned(), json!({"name": "Ann"}))]);
    ann.close().await;
}

#[tokio::test]
async fn refusals_are_typed_errors() {
    let gateway = gateway("refusals");
    let (ann, _events) = client(&gateway, "ann", "Ann", Encoding::Json);
    within("the connection", ann.wait_connected()).await.expect("connected");

    let error = within("presence", ann.presence("news")).await.expect_err("no presence");
    assert!(
        matches!(&error, Error::Server { op: "presence", code: ErrorCode::BadChannel, channel: Some(c), .. } if c == "news"),
        "{error:?}"
    );
    let error = within("presence", ann.presence("team:a"))
        .await
        .expect_err("not granted");
    assert!(
        matches!(&error, Error::PermissionDenied { code: ErrorCode::PermissionDenied, channel, .. } if channel == "team:a"),
        "{error:?}"
    );
    assert!(matches!(
        ann.presence("#lobby").await,
        Err(Error::InvalidChannel { .. })
    ));
    ann.close().await;
    assert!(ann.presence(CHANNEL).await.is_err());
}
