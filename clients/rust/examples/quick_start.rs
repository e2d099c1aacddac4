//! The README's quick start: subscribe to `news`, publish to it through the admin
//! API, print the message that arrives, and close. Run a gateway on the default
//! ports first (or point `SHARDCAST_URL` and `SHARDCAST_ADMIN` at another one):
//!
//! ```sh
//! cargo run -p shardcast &
//! cargo run -p shardcast-client --example quick_start
//! ```
//!
//! `tests/readme.rs` checks that the README shows this file as it is (without this
//! header) and runs it against a gateway.

use futures_util::StreamExt;
use shardcast_client::{AdminClient, Client, ClientEvent, Encoding};

#[tokio::main]
async fn main() -> Result<(), shardcast_client::Error> {
    // The gateway's default addresses, unless the environment names others.
    let url = std::env::var("SHARDCAST_URL").unwrap_or_else(|_| "ws://127.0.0.1:8000/ws".into());
    let admin_url = std::env::var("SHARDCAST_ADMIN").unwrap_or_else(|_| "http://127.0.0.1:8001".into());

    // Connects in the background and keeps reconnecting until closed.
    let (client, mut events) = Client::builder(url).encoding(Encoding::MsgPack).build_with_events()?;

    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                ClientEvent::Disconnected {
                    code,
                    reason,
                    will_reconnect,
                    ..
                } => eprintln!("lost ({code} {reason}), reconnecting: {will_reconnect}"),
                ClientEvent::Reconnecting { attempt, delay, .. } => eprintln!("retry #{attempt} in {delay:?}"),
                other => eprintln!("{other:?}"),
            }
        }
    });

    // Resolves once the gateway has acknowledged the subscription. Every publication
    // it accepts after that point is delivered.
    let mut news = client.subscribe("news").await?;

    // Publishing normally goes through the admin HTTP API, from the backend.
    let admin = AdminClient::new(&admin_url)?;
    let receipt = admin.publish("news", &serde_json::json!({"text": "hello"})).await?;
    println!("delivered to {} connection(s) on that instance", receipt.subscribers);

    // A Subscription is a Stream of Messages; a loop over it runs until the client
    // stops. This program takes the first message and closes.
    if let Some(message) = news.next().await {
        println!("{} #{}: {}", message.channel, message.seq, message.data);
        // Or into your own type: message.data_as::<MyEvent>()
    }
    client.close().await;
    Ok(())
}
