//! Token keys from a JSON Web Key Set URL (RFC 7517): the set is fetched over
//! HTTPS or HTTP (hyper's HTTP/1 client, rustls for TLS) at start, refreshed on a schedule and, at most once
//! per [`REFETCH_MIN_INTERVAL`], when a token names a `kid` the set lacks. The
//! fetching runs on the control runtime; a shard only reads the current set (an
//! `Arc` swapped whole, behind a lock held for a pointer copy) and, for an unknown
//! `kid`, asks for a refetch without waiting for it. A failed fetch keeps the last
//! good set.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::ACCEPT;
use hyper::{Method, StatusCode};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus::IntCounter;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

use super::AuthError;
use crate::outbound::{self, OutboundError, OutboundUrl};

/// The shortest time between two fetches that an unknown `kid` asks for: tokens
/// with made-up key ids cannot make the gateway hammer the key server.
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(2);

/// After a failed fetch, the next try comes this soon (or at the refresh interval,
/// if that is sooner).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// Time one fetch may take, connect to last body byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest key set document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a key set could not be fetched or used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The server could not be reached, or the exchange failed.
    #[error("{0}")]
    Outbound(#[from] OutboundError),
    /// The server answered with something other than 200.
    #[error("HTTP status {0}")]
    Status(StatusCode),
    /// The body could not be read, or is larger than 1 MiB.
    #[error("body: {0}")]
    Body(String),
    /// The fetch took longer than its timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The body is not a key set.
    #[error("not a JWKS document: {0}")]
    Json(#[from] serde_json::Error),
    /// The set holds no RSA or EC signing key with a `kid`.
    #[error("no usable key (RSA or EC P-256/P-384 with a `kid`) in the set")]
    NoKeys,
}

/// One verification key of the set.
pub struct JwkKey {
    key: DecodingKey,
    kind: JwkKind,
    alg: Option<Algorithm>,
}

/// What a key can verify: its type, and for EC keys its curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JwkKind {
    Rsa,
    P256,
    P384,
}

impl JwkKey {
    /// Whether this key verifies `alg`: RSA keys RS*/PS*, a P-256 key ES256, a P-384
    /// key ES384; and when the key names its `alg`, only that one.
    pub fn verifies(&self, alg: Algorithm) -> bool {
        let kind_fits = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.kind == JwkKind::Rsa,
            Algorithm::ES256 => self.kind == JwkKind::P256,
            Algorithm::ES384 => self.kind == JwkKind::P384,
            _ => false,
        };
        kind_fits && self.alg.map_or(true, |a| a == alg)
    }

    /// The key, for jsonwebtoken.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

/// A key set, by `kid`.
#[derive(Default)]
pub struct JwkKeys {
    by_kid: HashMap<String, JwkKey>,
}

impl JwkKeys {
    /// The usable keys of a JWKS document: RSA and EC (P-256, P-384) keys with a
    /// `kid` whose `use`, if given, is `sig`. Other keys (symmetric ones above all,
    /// which would let a public document sign tokens) are skipped, as are entries
    /// this parser does not understand, so one odd key does not void the set.
    pub fn parse(json: &[u8]) -> Result<JwkKeys, JwksError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(json)?;
        let mut by_kid = HashMap::new();
        for value in document.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|u| *u != PublicKeyUse::Signature)
            {
                continue;
            }
            let kind = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => JwkKind::Rsa,
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => JwkKind::P256,
                    EllipticCurve::P384 => JwkKind::P384,
                    _ => continue,
                },
                _ => continue,
            };
            // A JWK `alg` this crate cannot verify with (RSA-OAEP, ...) makes the key
            // unusable for tokens rather than unrestricted.
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(a) => match a.to_string().parse::<Algorithm>() {
                    Ok(alg) => Some(alg),
                    Err(_) => continue,
                },
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            by_kid.insert(kid, JwkKey { key, kind, alg });
        }
        if by_kid.is_empty() {
            return Err(JwksError::NoKeys);
        }
        Ok(JwkKeys { by_kid })
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&JwkKey> {
        self.by_kid.get(kid)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    /// Whether the set holds no key (before the first good fetch).
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }
}

/// The series a key source updates: `shardcast_jwks_refreshes_total{result}`.
#[derive(Clone)]
pub struct JwksCounters {
    /// Fetches that replaced the set.
    pub ok: IntCounter,
    /// Fetches that failed (the last good set stays).
    pub error: IntCounter,
}

/// A key set kept current from its URL.
pub struct JwksSource {
    url: OutboundUrl,
    /// For an https:// URL: the TLS client, with the public roots and any extra CA.
    tls: Option<TlsConnector>,
    refresh: Duration,
    keys: RwLock<Arc<JwkKeys>>,
    /// Refetch requests so far; a fetch serves every request made before it starts.
    requests: AtomicU64,
    refetch: Notify,
    counters: JwksCounters,
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksSource")
            .field("url", &self.url.display())
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl JwksSource {
    /// A source for `url`, fetched once before this returns. A bad URL is a
    /// configuration error; a failed first fetch is logged and leaves the set empty
    /// until [`JwksSource::run`] gets one.
    pub async fn start(
        url: &str,
        ca: Option<&Path>,
        refresh: Duration,
        counters: JwksCounters,
    ) -> Result<Arc<JwksSource>, AuthError> {
        let url = OutboundUrl::parse(url).map_err(|why| AuthError::Config(format!("--token-jwks-url: {why}")))?;
        let tls = if url.tls {
            let connector =
                outbound::tls_connector(ca).map_err(|why| AuthError::Config(format!("--token-jwks-ca {why}")))?;
            Some(connector)
        } else {
            None
        };
        let source = Arc::new(JwksSource {
            url,
            tls,
            refresh,
            keys: RwLock::new(Arc::new(JwkKeys::default())),
            requests: AtomicU64::new(0),
            refetch: Notify::new(),
            counters,
        });
        source.fetch().await;
        Ok(source)
    }

    /// The current set. The lock is held for an `Arc` clone only, and a poisoned
    /// lock still holds a whole set (writers only ever store a complete one).
    pub fn keys(&self) -> Arc<JwkKeys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks the refresh task for a fetch (a token named an unknown `kid`); returns
    /// at once. Requests within [`REFETCH_MIN_INTERVAL`] of the last fetch are
    /// served by one fetch at the end of that interval.
    pub fn request_refetch(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.refetch.notify_one();
    }

    /// Keeps the set current: a fetch every refresh interval (sooner after a
    /// failure), and one on request, at most one per [`REFETCH_MIN_INTERVAL`]. Runs
    /// until its task is aborted.
    pub async fn run(self: Arc<JwksSource>) {
        let mut last = Instant::now();
        let mut ok = !self.keys().is_empty();
        let mut served = 0;
        loop {
            let wait = if ok {
                self.refresh
            } else {
                self.refresh.min(RETRY_AFTER_FAILURE)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(last + wait) => {}
                _ = self.refetch.notified() => {
                    // A permit left by requests the last fetch already served.
                    if self.requests.load(Ordering::Relaxed) == served {
                        continue;
                    }
                    tokio::time::sleep_until(last + REFETCH_MIN_INTERVAL).await;
                }
            }
            served = self.requests.load(Ordering::Relaxed);
            ok = self.fetch().await;
            last = Instant::now();
        }
    }

    /// One fetch: the new set replaces the old one, or the failure is logged and
    /// counted and the old set stays. Returns whether it succeeded.
    async fn fetch(&self) -> bool {
        let fetched = match tokio::time::timeout(FETCH_TIMEOUT, get(&self.url, self.tls.as_ref())).await {
            Ok(Ok(body)) => JwkKeys::parse(&body),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(JwksError::Timeout(FETCH_TIMEOUT)),
        };
        match fetched {
            Ok(keys) => {
                info!(url = %self.url.display(), keys = keys.len(), "token key set fetched");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                self.counters.ok.inc();
                true
            }
            Err(error) => {
                warn!(url = %self.url.display(), %error, kept = self.keys().len(), "token key set fetch failed; keeping the last good set");
                self.counters.error.inc();
                false
            }
        }
    }
}

/// GETs the key set document over one HTTP/1.1 connection, through TLS for https.
async fn get(url: &OutboundUrl, tls: Option<&TlsConnector>) -> Result<Bytes, JwksError> {
    let request = url
        .request(Method::GET)
        .header(ACCEPT, "application/jwk-set+json, application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| JwksError::Body(e.to_string()))?;
    let answer = outbound::send(url, tls, request).await?;
    if answer.response.status() != StatusCode::OK {
        return Err(JwksError::Status(answer.response.status()));
    }
    answer.body(MAX_JWKS_BYTES).await.map_err(JwksError::Body)
}

#[cfg(test)]
mod tests {
    use super::*;

    // An RSA public key (RFC 7517 appendix A.1) and a P-256 key (appendix A.1).
    const RSA_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    const EC_X: &str = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4";
    const EC_Y: &str = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM";

    fn set(keys: serde_json::Value) -> Result<JwkKeys, JwksError> {
        JwkKeys::parse(serde_json::json!({ "keys": keys }).to_string().as_bytes())
    }

    #[test]
    fn keys_are_selected_by_kid_and_fit_their_algorithms() {
        let keys = set(serde_json::json!([
            {"kty": "RSA", "kid": "r", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "r-ps", "alg": "PS256", "use": "sig", "n": RSA_N, "e": "AQAB"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": EC_X, "y": EC_Y},
        ]))
        .expect("parses");
        assert_eq!(keys.len(), 3);
        let r = keys.get("r").expect("r");
        assert!(r.verifies(Algorithm::RS256) && r.verifies(Algorithm::PS512));
        assert!(!r.verifies(Algorithm::ES256) && !r.verifies(Algorithm::HS256));
        let ps = keys.get("r-ps").expect("r-ps");
        assert!(ps.verifies(Algorithm::PS256) && !ps.verifies(Algorithm::RS256));
        let e = keys.get("e").expect("e");
        assert!(e.verifies(Algorithm::ES256) && !e.verifies(Algorithm::ES384) && !e.verifies(Algorithm::RS256));
        assert!(keys.get("nope").is_none());
    }

    #[test]
    fn unusable_keys_are_skipped_and_an_empty_set_is_an_error() {
        let keys = set(serde_json::json!([
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "RSA", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": RSA_N, "e": "AQAB"},
            {"kty": "XYZ", "kid": "odd"},
            {"kty": "RSA", "kid": "good", "n": RSA_N, "e": "AQAB"},
        ]))
        .expect("one good key");
        assert_eq!(keys.len(), 1);
        assert!(keys.get("good").is_some());
        assert!(matches!(set(serde_json::json!([])), Err(JwksError::NoKeys)));
        assert!(matches!(JwkKeys::parse(b"<html>"), Err(JwksError::Json(_))));
    }
}
