//! Token verification: a JWS checked against keys and an algorithm list that come
//! from configuration only. The token's `alg` header merely selects among the
//! configured algorithms, and the key is chosen by the algorithm's family, so
//! `alg: none` and an HS* token "signed" with a configured public key are refused
//! before any signature is computed. Keys from a JWKS URL are chosen by the token's
//! `kid` among the set already fetched ([`super::jwks`]): verifying never waits for
//! the network.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::jwks::JwksSource;
use super::{AuthError, Identity, Pattern};

/// Longest token accepted, in bytes (checked before any parsing).
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Longest user id (`sub`), in bytes.
const MAX_SUB_BYTES: usize = 128;

/// Largest `info` object, as JSON text.
const MAX_INFO_BYTES: usize = 1024;

/// Most patterns in a `channels` or `publish` claim.
const MAX_PATTERNS: usize = 256;

/// What verifies tokens: keys per algorithm family, the accepted algorithms, and
/// the claim checks.
pub struct TokenVerifier {
    hmac: Option<DecodingKey>,
    public: Option<(KeyFamily, DecodingKey)>,
    jwks: Option<Arc<JwksSource>>,
    /// The claim checks, one per accepted algorithm: jsonwebtoken 9 refuses a key
    /// when any algorithm of a `Validation` is of another family, so a list that
    /// mixes families (HS256,RS256) is checked one algorithm at a time.
    validations: Vec<Validation>,
    leeway: u64,
}

/// Where the verifier's keys and rules come from.
#[derive(Debug, Clone, Default)]
pub struct VerifierSettings {
    /// Shared secret for HS256/384/512.
    pub hmac_secret: Option<Vec<u8>>,
    /// A PEM public key (RSA for RS*/PS*, EC for ES*).
    pub public_key_pem: Option<Vec<u8>>,
    /// A key set from a JWKS URL, for RS*/PS*/ES* tokens that carry a `kid`.
    pub jwks: Option<Arc<JwksSource>>,
    /// Accepted algorithms, by name (`HS256`, `RS256`, `PS256`, `ES256`, ...); empty
    /// means one per configured key (HS256 for a secret, RS256 or ES256 for a key,
    /// RS256 for a key set).
    pub algorithms: Vec<String>,
    /// Required `aud`, if any.
    pub audience: Option<String>,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Clock leeway for `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
}

/// The claims of a connection or subscription token that the gateway reads.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    channel: Option<String>,
}

/// A verified subscription token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionGrant {
    /// The user it was issued to.
    pub user: String,
    /// The channel it grants.
    pub channel: String,
    /// When it expires (Unix seconds).
    pub expires_at: u64,
}

impl TokenVerifier {
    /// A verifier, or why the configuration cannot make one.
    pub fn new(settings: &VerifierSettings) -> Result<TokenVerifier, AuthError> {
        let config = |m: String| AuthError::Config(m);
        let hmac = settings.hmac_secret.as_deref().map(DecodingKey::from_secret);
        let public = match settings.public_key_pem.as_deref() {
            None => None,
            Some(pem) => Some(
                DecodingKey::from_rsa_pem(pem)
                    .map(|k| (KeyFamily::Rsa, k))
                    .or_else(|_| DecodingKey::from_ec_pem(pem).map(|k| (KeyFamily::Ec, k)))
                    .map_err(|e| config(format!("the public key is neither an RSA nor an EC PEM key: {e}")))?,
            ),
        };
        let mut algorithms = Vec::new();
        for name in &settings.algorithms {
            let alg: Algorithm = name
                .trim()
                .parse()
                .map_err(|_| config(format!("unknown token algorithm `{name}`")))?;
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            if hmac.is_some() {
                algorithms.push(Algorithm::HS256);
            }
            match &public {
                Some((KeyFamily::Rsa, _)) => algorithms.push(Algorithm::RS256),
                Some((KeyFamily::Ec, _)) => algorithms.push(Algorithm::ES256),
                _ => {}
            }
            if settings.jwks.is_some() && !algorithms.contains(&Algorithm::RS256) {
                algorithms.push(Algorithm::RS256);
            }
        }
        for alg in &algorithms {
            let keyed = match family(*alg) {
                KeyFamily::Hmac => hmac.is_some(),
                KeyFamily::Ed => false,
                family => settings.jwks.is_some() || matches!(&public, Some((f, _)) if *f == family),
            };
            if !keyed {
                return Err(config(format!("no key is configured for the token algorithm {alg:?}")));
            }
        }
        if algorithms.is_empty() {
            return Err(config("no token key is configured".into()));
        }
        let mut validation = Validation::new(algorithms[0]);
        validation.leeway = settings.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &settings.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &settings.issuer {
            validation.set_issuer(&[iss]);
        }
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut one = validation.clone();
                one.algorithms = vec![*alg];
                one
            })
            .collect();
        Ok(TokenVerifier {
            hmac,
            public,
            jwks: settings.jwks.clone(),
            validations,
            leeway: settings.leeway_secs,
        })
    }

    /// Verifies a connection token.
    pub fn connection(&self, token: &str) -> Result<Identity, AuthError> {
        let claims = self.verify(token)?;
        if claims.sub.len() > MAX_SUB_BYTES {
            return Err(AuthError::Invalid("`sub` is longer than 128 bytes"));
        }
        if claims.channels.len() > MAX_PATTERNS || claims.publish.len() > MAX_PATTERNS {
            return Err(AuthError::Invalid("too many channel patterns"));
        }
        if claims.info.as_ref().is_some_and(|i| i.get().len() > MAX_INFO_BYTES) {
            return Err(AuthError::Invalid("`info` is larger than 1024 bytes"));
        }
        Ok(Identity {
            user: claims.sub,
            expires_at: Some(claims.exp),
            channels: claims.channels.iter().map(|p| Pattern::new(p)).collect(),
            publish: claims.publish.iter().map(|p| Pattern::new(p)).collect(),
            info: claims.info,
        })
    }

    /// Verifies a subscription token.
    pub fn subscription(&self, token: &str) -> Result<SubscriptionGrant, AuthError> {
        let claims = self.verify(token)?;
        let channel = claims
            .channel
            .ok_or(AuthError::Invalid("a subscription token needs a `channel` claim"))?;
        Ok(SubscriptionGrant {
            user: claims.sub,
            channel,
            expires_at: claims.exp,
        })
    }

    fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid("token larger than 8192 bytes"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("malformed token"))?;
        let validation = self
            .validations
            .iter()
            .find(|v| v.algorithms.contains(&header.alg))
            .ok_or(AuthError::Invalid("token algorithm not accepted"))?;
        // The key follows the algorithm's family: an HS* token is only ever checked
        // against the shared secret, never against a public key's bytes. With a key
        // set, a public-key token's `kid` picks the key; one without a `kid` falls
        // back to the PEM key, if any.
        let jwk_keys;
        let key = match (family(header.alg), &self.jwks, &header.kid) {
            (KeyFamily::Hmac, _, _) => self.hmac.as_ref(),
            (_, Some(jwks), Some(kid)) => {
                jwk_keys = jwks.keys();
                match jwk_keys.get(kid) {
                    Some(jwk) if jwk.verifies(header.alg) => Some(jwk.decoding_key()),
                    Some(_) => return Err(AuthError::Invalid("token algorithm does not fit its key")),
                    None => {
                        // Refused now; the refetch makes the next attempt work if
                        // the issuer has published the key meanwhile.
                        jwks.request_refetch();
                        return Err(AuthError::Invalid("unknown key id (kid)"));
                    }
                }
            }
            (_, Some(_), None) if self.public.is_none() => {
                return Err(AuthError::Invalid("token has no key id (kid)"));
            }
            (family, _, _) => self.public.as_ref().filter(|(f, _)| *f == family).map(|(_, k)| k),
        }
        .ok_or(AuthError::Invalid("token algorithm not accepted"))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::Invalid("token not yet valid (nbf)"),
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
            ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience"),
            ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer"),
            ErrorKind::InvalidAlgorithm => AuthError::Invalid("token algorithm not accepted"),
            ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid("a required claim is missing"),
            _ => AuthError::Invalid("malformed token"),
        })?;
        if data.claims.iat.is_some_and(|iat| iat > unix_now() + self.leeway) {
            return Err(AuthError::Invalid("token issued in the future (iat)"));
        }
        Ok(data.claims)
    }

    /// The accepted algorithms, for the start-up log.
    pub fn algorithms(&self) -> Vec<String> {
        let set: HashSet<String> = self
            .validations
            .iter()
            .flat_map(|v| &v.algorithms)
            .map(|a| format!("{a:?}"))
            .collect();
        let mut names: Vec<String> = set.into_iter().collect();
        names.sort();
        names
    }

    /// The clock leeway, in seconds.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }
}

/// Which kind of key an algorithm verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> KeyFamily {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyFamily::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => KeyFamily::Ec,
        Algorithm::EdDSA => KeyFamily::Ed,
        _ => KeyFamily::Rsa,
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
