//! The README's "Tokens" hook: a client that sends `$SHARDCAST_TOKEN` (if set) as
//! the `token` query parameter of every connect, connects and closes. Run a gateway
//! on the default ports first (or point `SHARDCAST_URL` at another):
//!
//! ```sh
//! cargo run -p shardcast &
//! SHARDCAST_TOKEN=secret cargo run -p shardcast-client --example token_provider
//! ```
//!
//! `tests/readme.rs` checks that the README shows the lines between the `README:`
//! markers as they are, and runs this program against a gateway.

use shardcast_client::Client;

#[tokio::main]
async fn main() -> Result<(), shardcast_client::Error> {
    let url = std::env::var("SHARDCAST_URL").unwrap_or_else(|_| "ws://127.0.0.1:8000/ws".into());
    // README: begin
    let client = Client::builder(url)
        .token_provider(|| std::env::var("SHARDCAST_TOKEN").ok())
        // or .token_provider_async(|| async { fetch_token().await })
        .build()?;
    // README: end

    client.wait_connected().await?;
    println!("connected");
    client.close().await;
    Ok(())
}
