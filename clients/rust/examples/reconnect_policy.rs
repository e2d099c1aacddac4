//! The README's "Reconnecting" settings: a client with every reconnect, heartbeat
//! and timeout option spelled out, which connects, pings the gateway and closes.
//! Run a gateway on the default ports first (or point `SHARDCAST_URL` at another):
//!
//! ```sh
//! cargo run -p shardcast &
//! cargo run -p shardcast-client --example reconnect_policy
//! ```
//!
//! `tests/readme.rs` checks that the README shows the lines between the `README:`
//! markers as they are, and runs this program against a gateway.

#[tokio::main]
async fn main() -> Result<(), shardcast_client::Error> {
    let url = std::env::var("SHARDCAST_URL").unwrap_or_else(|_| "ws://127.0.0.1:8000/ws".into());
    // README: begin
    use shardcast_client::{Client, Heartbeat, ReconnectPolicy};
    use std::time::Duration;

    // `url`: the gateway's WebSocket address, such as "ws://gateway.internal:8000/ws".
    let client = Client::builder(url)
        .reconnect(ReconnectPolicy {
            initial_delay: Duration::from_millis(500), // the defaults
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            max_attempts: None,
            enabled: true,
        })
        // Ping after 10 s of silence, give up 5 s later (default: the gateway's ping interval, twice).
        .heartbeat(Heartbeat {
            enabled: true,
            interval: Some(Duration::from_secs(10)),
            timeout: Some(Duration::from_secs(5)),
        })
        .connect_timeout(Duration::from_secs(10))
        .request_timeout(Duration::from_secs(10))
        .max_message_bytes(65_536) // the gateway's --max-message-bytes
        .build()?;
    // README: end

    client.wait_connected().await?;
    println!("connected; round trip {:?}", client.ping().await?);
    client.close().await;
    Ok(())
}
