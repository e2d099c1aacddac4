//! Tokens as the client handles them (PROTOCOL.md section 18): the hooks that
//! supply connection tokens ([`TokenProvider`]) and subscription tokens
//! ([`SubscriptionTokenProvider`]), what a JWT states about its own lifetime, and
//! when a token is due for refresh. It never verifies a token: only the gateway can.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use tokio::time::Instant;

use crate::error::BoxError;

/// What a token hook returns: a token, `None` for none, or the hook's failure.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<Option<String>, BoxError>> + Send>>;

/// Supplies a connection token: called before every connect attempt and to refresh
/// the token before it expires; `None` connects without one. The token travels in an
/// `Authorization: Bearer` header on the upgrade, never in the URL. See
/// [`ClientBuilder::token_provider_async`](crate::ClientBuilder::token_provider_async).
pub type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// Supplies the subscription token for a channel (section 18.4): called before every
/// `subscribe` the client sends and before the token expires; `None` subscribes
/// without one.
pub type SubscriptionTokenProvider = Arc<dyn Fn(String) -> TokenFuture + Send + Sync>;

/// A refresh is never scheduled later than this before the token expires (for tokens that live long enough).
pub(crate) const REFRESH_MARGIN: Duration = Duration::from_secs(10);

/// Nor sooner than this, so that a token that looks already expired (a skewed clock) cannot cause a tight loop.
pub(crate) const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);

/// A token in use: when it expires, when it was issued, and when this client got it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenLifetime {
    /// Expiry, seconds since the Unix epoch (the gateway's `expires_at`, else the token's `exp`).
    expires_at: u64,
    /// The token's `iat`, where it states one.
    issued_at: Option<u64>,
    /// When this client received the token.
    received_at: Instant,
}

impl TokenLifetime {
    /// The lifetime of `token`, received at `received_at`, given the expiry the gateway
    /// stated (else the token's own `exp`); `None` if neither says.
    pub(crate) fn of(token: &str, expires_at: Option<u64>, received_at: Instant) -> Option<TokenLifetime> {
        let claims = TokenClaims::read(token);
        Some(TokenLifetime {
            expires_at: expires_at.or(claims.expires_at)?,
            issued_at: claims.issued_at,
            received_at,
        })
    }

    /// Time left until the token expires (zero once it has). Where the token states
    /// when it was issued, its lifetime (`exp - iat`) less the time since it arrived:
    /// both ends come from the backend's clock, so a machine whose clock is off still
    /// refreshes in time. A second less, since both are whole seconds: a token may
    /// have been signed up to a second after its `iat`, which matters for short ones.
    /// Otherwise the expiry against this machine's clock.
    pub(crate) fn remaining(&self, now: Instant) -> Duration {
        match self.issued_at.filter(|&iat| self.expires_at > iat) {
            Some(iat) => Duration::from_secs(self.expires_at - iat - 1)
                .saturating_sub(now.saturating_duration_since(self.received_at)),
            None => {
                let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                Duration::from_secs(self.expires_at).saturating_sub(unix_now)
            }
        }
    }

    /// When to refresh the token, given a uniform draw in `[0, 1)` for the jitter.
    pub(crate) fn refresh_at(&self, now: Instant, unit: f64) -> Instant {
        now + refresh_delay(self.remaining(now), unit)
    }
}

/// How long to wait before refreshing a token with `remaining` time left: 80-90 % of
/// it, jittered so that clients given tokens at the same moment do not all refresh
/// together, and never later than [`REFRESH_MARGIN`] before expiry. A token with less
/// than twice the margin left is refreshed at the latest halfway through what is
/// left; and never sooner than [`MIN_REFRESH_DELAY`].
pub(crate) fn refresh_delay(remaining: Duration, unit: f64) -> Duration {
    let jittered = remaining.mul_f64(0.8 + 0.1 * unit.clamp(0.0, 1.0));
    let latest = remaining.saturating_sub(REFRESH_MARGIN).max(remaining / 2);
    jittered.min(latest).max(MIN_REFRESH_DELAY)
}

/// What a JWT states about its own lifetime (seconds since the Unix epoch); empty
/// for a token that is not a JWT.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TokenClaims {
    /// The `exp` claim.
    pub expires_at: Option<u64>,
    /// The `iat` claim.
    pub issued_at: Option<u64>,
}

impl TokenClaims {
    /// The `exp` and `iat` claims of a compact JWT, read without verifying anything.
    pub(crate) fn read(token: &str) -> TokenClaims {
        let claims = token
            .split('.')
            .nth(1)
            .and_then(|payload| URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
        let Some(claims) = claims else {
            return TokenClaims::default();
        };
        // Fractional seconds are allowed by RFC 7519; whole seconds are precise enough here.
        let time = |name: &str| {
            claims
                .get(name)
                .and_then(serde_json::Value::as_f64)
                .map(|t| t.max(0.0) as u64)
        };
        TokenClaims {
            expires_at: time("exp"),
            issued_at: time("iat"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!("eyJhbGciOiJIUzI1NiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn claims_are_read_without_verifying() {
        assert_eq!(
            TokenClaims::read(&jwt(r#"{"sub":"42","exp":1798761600,"iat":1798758000}"#)),
            TokenClaims {
                expires_at: Some(1_798_761_600),
                issued_at: Some(1_798_758_000)
            }
        );
        assert_eq!(TokenClaims::read(&jwt(r#"{"exp":12.5}"#)).expires_at, Some(12));
        for opaque in ["opaque", "a.b.c", "a..c", &jwt("[1]"), &jwt(r#"{"exp":"soon"}"#)] {
            assert_eq!(TokenClaims::read(opaque).expires_at, None, "{opaque}");
        }
    }

    #[test]
    fn refresh_is_due_at_80_to_90_percent_and_at_least_10_s_before_expiry() {
        let s = Duration::from_secs;
        assert_eq!(refresh_delay(s(300), 0.0), s(240));
        assert_eq!(refresh_delay(s(300), 1.0), s(270));
        // 90 % of 60 s would be 6 s before expiry: the margin wins.
        assert_eq!(refresh_delay(s(60), 1.0), s(50));
        // Short tokens: halfway at the latest, one second at the soonest.
        assert_eq!(refresh_delay(s(3), 1.0), Duration::from_millis(1500));
        assert_eq!(refresh_delay(Duration::ZERO, 0.5), MIN_REFRESH_DELAY);
    }

    #[test]
    fn lifetime_counts_from_arrival_where_the_token_states_its_issue() {
        let now = Instant::now();
        let token = jwt(r#"{"exp":1000,"iat":940}"#);
        // The expiry is long past by this clock, but the token lives 60 s (59 s to be safe) from its arrival.
        let lifetime = TokenLifetime::of(&token, None, now).expect("lifetime");
        assert_eq!(
            lifetime.remaining(now + Duration::from_secs(15)),
            Duration::from_secs(44)
        );
        assert!(TokenLifetime::of("opaque", None, now).is_none());
        let stated = TokenLifetime::of("opaque", Some(1), now).expect("the gateway's expiry");
        assert_eq!(stated.remaining(now), Duration::ZERO);
    }
}
