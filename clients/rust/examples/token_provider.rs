//! The README's "Tokens" section: a client whose token provider asks the
//! application's backend for a connection token (here it reads `$SHARDCAST_TOKEN`,
//! a token signed as in `examples/sign_token.rs`), which the client sends as
//! `Authorization: Bearer` on every connect and refreshes before it expires. It
//! connects, prints the user the gateway welcomed, and closes. Run a gateway with
//! `--token-hmac-secret` first (or point `SHARDCAST_URL` at another):
//!
//! ```sh
//! cargo run -p shardcast -- --token-hmac-secret s3cret &
//! SHARDCAST_TOKEN=<a token signed with s3cret> cargo run -p shardcast-client --example token_provider
//! ```
//!
//! `tests/readme.rs` checks that the README shows the lines between the `README:`
//! markers as they are, and runs this program against a gateway.

use shardcast_client::{BoxError, Client};

/// Stands in for the call to the application's backend for a connection token.
async fn fetch_token() -> Result<Option<String>, BoxError> {
    Ok(Some(std::env::var("SHARDCAST_TOKEN")?))
}

/// Stands in for the call for a channel's subscription token (none here: no channel needs one).
async fn fetch_subscription_token(_channel: String) -> Result<Option<String>, BoxError> {
    Ok(None)
}

#[tokio::main]
async fn main() -> Result<(), shardcast_client::Error> {
    let url = std::env::var("SHARDCAST_URL").unwrap_or_else(|_| "ws://127.0.0.1:8000/ws".into());
    // README: begin
    let client = Client::builder(url)
        // Called before every connect and before the token expires (a `refresh`).
        .token_provider_async(fetch_token)
        // Only for channels the connection token does not grant (None: no token needed).
        .subscription_token_provider_async(fetch_subscription_token)
        .build()?;
    // README: end

    client.wait_connected().await?;
    let user = client.welcome().and_then(|w| w.user).unwrap_or_default();
    println!("connected as {user}");
    client.close().await;
    Ok(())
}
