//! The README's "History and recovery": a state channel subscribed with `latest`,
//! `ClientEvent::Stale` handled by refetching, an idempotent publish and its retry,
//! and a history read. Run a gateway with history and client publishing on the
//! default ports first (or point `SHARDCAST_URL` at another):
//!
//! ```sh
//! cargo run -p shardcast -- --history-size 100 --allow-client-publish &
//! cargo run -p shardcast-client --example history
//! ```
//!
//! `tests/readme.rs` checks that the README shows the lines between the `README:`
//! markers as they are, and runs this program against a gateway.

use serde_json::{json, Value};

/// The application's source of truth for the channel, read again when publications were missed.
async fn fetch_score() -> Value {
    json!({"home": 0, "away": 0})
}

#[tokio::main]
async fn main() -> Result<(), shardcast_client::Error> {
    let url = std::env::var("SHARDCAST_URL").unwrap_or_else(|_| "ws://127.0.0.1:8000/ws".into());
    // README: begin
    use futures_util::StreamExt;
    use shardcast_client::{Client, ClientEvent, HistoryOptions, SubscribeOptions};

    let (client, mut events) = Client::builder(url).build_with_events()?;
    let mut score = fetch_score().await;
    println!("starting from {score}");

    // A state channel: its latest publication comes at once, then every later one,
    // each once and in order, reconnects included.
    let mut scores = client
        .subscribe_with("scores:match-9", SubscribeOptions::default().latest())
        .await?;

    // Publishing with an idempotency key (the HTTP API takes one too): a retry with
    // the same key, after a timeout say, is never published twice.
    let first = client
        .publish_with_key("scores:match-9", &json!({"home": 1, "away": 0}), "goal-1")
        .await?;
    let retry = client
        .publish_with_key("scores:match-9", &json!({"home": 1, "away": 0}), "goal-1")
        .await?;
    assert!(retry.duplicate && retry.offset == first.offset);

    // The channel's last 10 publications (or, with `.since(offset, epoch)`, those after a position).
    let history = client
        .history("scores:match-9", HistoryOptions::default().limit(10))
        .await?;
    println!("{} publication(s) in history", history.publications.len());

    // Publications, and the one case the application handles: what could not be recovered.
    tokio::select! {
        Some(message) = scores.next() => {
            println!("score {} at offset {:?}", message.data, message.offset);
            score = message.data;
        }
        Some(ClientEvent::Stale { channel, reason, .. }) = events.next() => {
            eprintln!("{channel}: publications were missed ({reason:?}); refetching");
            score = fetch_score().await;
        }
    }
    // README: end

    println!("current score: {score}");
    client.close().await;
    Ok(())
}
