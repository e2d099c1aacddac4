//! The README's quick start: subscribe to `news`, publish to it through the admin
//! API, and print what arrives. Run a gateway on the default ports first:
//!
//! ```sh
//! cargo run -p shardcast &
//! cargo run -p shardcast-client --example subscribe
//! ```

use futures_util::StreamExt;
use shardcast_client::{AdminClient, Client, ClientEvent, Encoding};

#[tokio::main]
async fn main() -> Result<(), shardcast_client::Error> {
    // Connects in the background and keeps reconnecting until closed.
    let (client, mut events) = Client::builder("ws://127.0.0.1:8000/ws")
        .encoding(Encoding::MsgPack)
        .build_with_events()?;

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
    let admin = AdminClient::new("http://127.0.0.1:8001")?;
    let receipt = admin.publish("news", &serde_json::json!({"text": "hello"})).await?;
    println!("delivered to {} connection(s) on that instance", receipt.subscribers);

    while let Some(message) = news.next().await {
        println!("{} #{}: {}", message.channel, message.seq, message.data);
    }
    Ok(())
}
