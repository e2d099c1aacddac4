//! Client authentication and channel permissions (PROTOCOL.md section 18): who a
//! connection is ([`Identity`], from a verified token), and what it may subscribe
//! to and publish on ([`rules::ChannelRules`]). It depends on nothing of the
//! gateway: the shard asks it, once per connect, refresh and subscribe, never per
//! message.

pub mod jwks;
pub mod rules;
pub mod verifier;

use serde_json::value::RawValue;

pub use jwks::{JwksCounters, JwksSource};
pub use rules::{ChannelRules, HistorySettings, NamespaceRules, PublishRule, Refusal, SubscribeRule};
pub use verifier::{unix_now, SubscriptionGrant, TokenVerifier, VerifierSettings, MAX_TOKEN_BYTES};

/// Why a token or a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is valid but past its `exp` (plus the leeway).
    #[error("token expired")]
    Expired,
    /// The token was refused; the reason is safe to tell the client (it never
    /// quotes the token).
    #[error("token refused: {0}")]
    Invalid(&'static str),
    /// A token was required and none was given.
    #[error("a token is required")]
    Missing,
    /// The authentication settings are unusable.
    #[error("authentication configuration: {0}")]
    Config(String),
}

impl AuthError {
    /// The `reason` label of `shardcast_auth_refusals_total`.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Expired => "expired",
            AuthError::Missing => "missing",
            AuthError::Invalid(_) | AuthError::Config(_) => "invalid",
        }
    }
}

/// The identity of every connection without a token.
pub static ANONYMOUS: Identity = Identity {
    user: String::new(),
    expires_at: None,
    channels: Vec::new(),
    publish: Vec::new(),
    info: None,
};

/// A channel pattern from a token: an exact name, or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: Box<str>,
}

impl Pattern {
    /// A pattern from its claim text.
    pub fn new(text: &str) -> Pattern {
        Pattern { text: text.into() }
    }

    /// Whether `channel` matches: equal, or for `prefix*`, starting with the
    /// prefix and at least one byte longer (`team:7.*` matches `team:7.chat`, not
    /// `team:7.`).
    pub fn matches(&self, channel: &str) -> bool {
        match self.text.strip_suffix('*') {
            Some(prefix) => channel.len() > prefix.len() && channel.starts_with(prefix),
            None => *self.text == *channel,
        }
    }
}

/// Who a connection is, from its verified token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user id (`sub`); empty for an anonymous connection.
    pub user: String,
    /// When the token expires (Unix seconds).
    pub expires_at: Option<u64>,
    /// Channels this user may subscribe to (`channels` claim).
    pub channels: Vec<Pattern>,
    /// Channels this user may publish on (`publish` claim).
    pub publish: Vec<Pattern>,
    /// Application data carried with the connection (`info` claim).
    pub info: Option<Box<RawValue>>,
}

impl Identity {
    /// Whether this is an anonymous identity (no user).
    pub fn is_anonymous(&self) -> bool {
        self.user.is_empty()
    }
}

/// Everything the shards ask about identities: the verifier (if any key is
/// configured), whether anonymous connections are allowed, and the channel rules.
pub struct Authenticator {
    verifier: Option<TokenVerifier>,
    anonymous: bool,
    rules: ChannelRules,
}

impl Authenticator {
    /// An authenticator; `anonymous: None` means "allowed when no key is configured".
    pub fn new(verifier: Option<TokenVerifier>, anonymous: Option<bool>, rules: ChannelRules) -> Authenticator {
        let anonymous = anonymous.unwrap_or(verifier.is_none());
        Authenticator {
            verifier,
            anonymous,
            rules,
        }
    }

    /// Whether connections without a token are allowed.
    pub fn allows_anonymous(&self) -> bool {
        self.anonymous
    }

    /// Whether tokens can be verified at all.
    pub fn has_keys(&self) -> bool {
        self.verifier.is_some()
    }

    /// The verifier, for its start-up description.
    pub fn verifier(&self) -> Option<&TokenVerifier> {
        self.verifier.as_ref()
    }

    /// Verifies a connection token; an empty `sub` is anonymous and refused where
    /// anonymous connections are not allowed.
    pub fn connect(&self, token: &str) -> Result<Identity, AuthError> {
        let verifier = self
            .verifier
            .as_ref()
            .ok_or(AuthError::Invalid("this gateway has no token key configured"))?;
        let identity = verifier.connection(token)?;
        if identity.is_anonymous() && !self.anonymous {
            return Err(AuthError::Invalid("anonymous connections are not allowed"));
        }
        Ok(identity)
    }

    /// Verifies a subscription token for `channel` and `user`.
    pub fn subscription(
        &self,
        token: &str,
        user: &str,
        channel: &str,
    ) -> Result<SubscriptionGrant, SubscriptionRefusal> {
        let verifier = self
            .verifier
            .as_ref()
            .ok_or(SubscriptionRefusal::Token(AuthError::Invalid(
                "this gateway has no token key configured",
            )))?;
        let grant = verifier.subscription(token).map_err(SubscriptionRefusal::Token)?;
        if grant.user != user {
            return Err(SubscriptionRefusal::Denied(
                "the subscription token is for another user",
            ));
        }
        if grant.channel != channel {
            return Err(SubscriptionRefusal::Denied(
                "the subscription token is for another channel",
            ));
        }
        Ok(grant)
    }

    /// The channel rules.
    pub fn rules(&self) -> &ChannelRules {
        &self.rules
    }
}

/// Why a subscription token did not grant a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionRefusal {
    /// The token itself was refused (`unauthorized`).
    Token(AuthError),
    /// A valid token for something else (`permission_denied`).
    Denied(&'static str),
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn patterns_match_exactly_or_by_prefix() {
        assert!(Pattern::new("news").matches("news"));
        assert!(!Pattern::new("news").matches("news2"));
        assert!(!Pattern::new("news").matches("new"));
        assert!(Pattern::new("team:7.*").matches("team:7.chat"));
        assert!(!Pattern::new("team:7.*").matches("team:7."));
        assert!(!Pattern::new("team:7.*").matches("team:70.chat"));
        assert!(Pattern::new("*").matches("anything"));
    }
}
