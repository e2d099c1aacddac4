//! The README's backend side of authentication: signs a short-lived HS256 connection
//! token for a user, as the application's backend does (with the secret the gateway
//! was started with, `--token-hmac-secret`), then connects with it and prints the
//! user the gateway welcomed. Run a gateway with that secret first:
//!
//! ```sh
//! cargo run -p shardcast -- --token-hmac-secret s3cret &
//! SHARDCAST_TOKEN_SECRET=s3cret cargo run -p shardcast-client --example sign_token
//! ```
//!
//! `tests/readme.rs` checks that the README shows the lines between the `README:`
//! markers as they are, and runs this program against a gateway.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use shardcast_client::Client;

// README: begin
/// Signs a 5-minute token for `user`, who may also subscribe to `team:7.*`
/// (HS256: `jsonwebtoken`'s default header).
fn sign_token(secret: &str, user: &str) -> jsonwebtoken::errors::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_secs());
    let claims = json!({
        "sub": user,
        "iat": now,
        "exp": now + 300,
        "channels": ["team:7.*"],
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}
// README: end

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SHARDCAST_URL").unwrap_or_else(|_| "ws://127.0.0.1:8000/ws".into());
    let secret = std::env::var("SHARDCAST_TOKEN_SECRET")?;
    let client = Client::builder(url).token(sign_token(&secret, "42")?).build()?;
    client.wait_connected().await?;
    let user = client.welcome().and_then(|w| w.user).unwrap_or_default();
    println!("connected as {user}");
    client.close().await;
    Ok(())
}
