//! The channel rules: per namespace (the part of a channel name before the
//! separator), who may subscribe and who may publish, and whether `<ns>:#<user>`
//! channels belong to one user. One function per operation decides every
//! subscribe and every client publish. The same tables say which channels keep
//! history (PROTOCOL.md 19.1), so one place maps a channel to its namespace.

use std::collections::HashMap;

use serde::Deserialize;

use super::Identity;

/// Who may subscribe to a namespace's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeRule {
    /// Every connection, anonymous ones included.
    #[default]
    Anyone,
    /// Every connection with a user.
    Authenticated,
    /// A user whose `channels` claim matches, or who holds a subscription token.
    Granted,
}

/// Who may publish on a namespace's channels from a client (on a gateway that
/// allows client publishing at all, `--allow-client-publish`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishRule {
    /// Every connection.
    #[default]
    Anyone,
    /// Nobody.
    Nobody,
    /// Every connection with a user.
    Authenticated,
    /// A user whose `publish` claim matches.
    Granted,
}

/// Members a `presence` reply lists at most where the namespace does not say
/// (Pusher's limit).
pub const DEFAULT_PRESENCE_MAX: u32 = 100;

/// One namespace's rules (a `[namespaces."<name>"]` table of the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceRules {
    /// Who may subscribe.
    #[serde(default)]
    pub subscribe: SubscribeRule,
    /// Who may publish from a client.
    #[serde(default)]
    pub publish: PublishRule,
    /// Whether `<ns><sep>#<user>` channels belong to that user alone.
    #[serde(default)]
    pub user_limited: bool,
    /// Publications kept per channel (0: no history); the gateway's default if absent.
    #[serde(default)]
    pub history_size: Option<u32>,
    /// Seconds the history outlives the channel's last publication.
    #[serde(default)]
    pub history_ttl: Option<u64>,
    /// Most publications one recovery returns.
    #[serde(default)]
    pub recover_max: Option<u32>,
    /// Whether its channels' subscribers are members of their presence (PROTOCOL.md 21).
    #[serde(default)]
    pub presence: bool,
    /// Most members a `presence` reply lists (default 100).
    #[serde(default)]
    pub presence_max: Option<u32>,
}

/// How a channel keeps history, once the namespace's table and the gateway's
/// defaults are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    /// Publications kept (0: no history).
    pub size: u32,
    /// Seconds the history outlives the channel's last publication (at least 1).
    pub ttl_secs: u64,
    /// Most publications one recovery returns.
    pub recover_max: u32,
}

impl Default for HistorySettings {
    fn default() -> HistorySettings {
        HistorySettings {
            size: 0,
            ttl_secs: 300,
            recover_max: 10_000,
        }
    }
}

/// Why the rules refused an operation (told to the client; counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

/// The rules of every namespace.
#[derive(Debug, Clone)]
pub struct ChannelRules {
    separator: String,
    default: NamespaceRules,
    namespaces: HashMap<String, NamespaceRules>,
    history: HistorySettings,
}

impl Default for ChannelRules {
    fn default() -> ChannelRules {
        ChannelRules::new(":", HashMap::new())
    }
}

impl ChannelRules {
    /// Rules with this separator; `namespaces[""]`, if present, is the default.
    pub fn new(separator: &str, mut namespaces: HashMap<String, NamespaceRules>) -> ChannelRules {
        let default = namespaces.remove("").unwrap_or_default();
        ChannelRules {
            separator: separator.to_owned(),
            default,
            namespaces,
            history: HistorySettings::default(),
        }
    }

    /// The same rules with these history settings for what a namespace leaves unset.
    pub fn with_history_defaults(mut self, history: HistorySettings) -> ChannelRules {
        self.history = history;
        self
    }

    /// How `channel` keeps history; none when it keeps none.
    pub fn history(&self, channel: &str) -> Option<HistorySettings> {
        let rules = self.of(self.split(channel).0);
        let settings = HistorySettings {
            size: rules.history_size.unwrap_or(self.history.size),
            ttl_secs: rules.history_ttl.unwrap_or(self.history.ttl_secs).max(1),
            recover_max: rules.recover_max.unwrap_or(self.history.recover_max),
        };
        (settings.size > 0).then_some(settings)
    }

    /// Whether `channel` has presence, and how many members a `presence` reply
    /// lists at most; none without presence (PROTOCOL.md 21).
    pub fn presence(&self, channel: &str) -> Option<u32> {
        let rules = self.of(self.split(channel).0);
        rules
            .presence
            .then(|| rules.presence_max.unwrap_or(DEFAULT_PRESENCE_MAX))
    }

    /// How long an idempotency key is remembered on `channel` (PROTOCOL.md 19.9).
    pub fn idempotency_window_secs(&self, channel: &str) -> u64 {
        let rules = self.of(self.split(channel).0);
        rules.history_ttl.unwrap_or(self.history.ttl_secs).max(1)
    }

    /// A channel's namespace and the rest of its name.
    fn split<'a>(&self, channel: &'a str) -> (&'a str, &'a str) {
        match channel.split_once(self.separator.as_str()) {
            Some((ns, rest)) if !self.separator.is_empty() => (ns, rest),
            _ => ("", channel),
        }
    }

    fn of(&self, namespace: &str) -> &NamespaceRules {
        self.namespaces.get(namespace).unwrap_or(&self.default)
    }

    /// The user-boundary check shared by both operations: `Some(decision)` when the
    /// name carries a `#`, which only a user-limited namespace gives a meaning.
    fn user_boundary(&self, who: &Identity, channel: &str) -> Option<Result<(), Refusal>> {
        if !channel.contains('#') {
            return None;
        }
        let (namespace, rest) = self.split(channel);
        let rules = self.of(namespace);
        Some(match rest.strip_prefix('#') {
            Some(owner) if rules.user_limited && !owner.contains('#') => {
                if !who.is_anonymous() && owner == who.user {
                    Ok(())
                } else {
                    Err(Refusal("this channel belongs to another user"))
                }
            }
            _ => Err(Refusal(
                "`#` is only allowed as the user boundary of a user-limited namespace",
            )),
        })
    }

    /// Whether `who` may subscribe to `channel`; `token_grant` says a subscription
    /// token for this user and channel was verified.
    pub fn may_subscribe(&self, who: &Identity, channel: &str, token_grant: bool) -> Result<(), Refusal> {
        if let Some(decision) = self.user_boundary(who, channel) {
            return decision;
        }
        let rules = self.of(self.split(channel).0);
        match rules.subscribe {
            SubscribeRule::Anyone => Ok(()),
            SubscribeRule::Authenticated if !who.is_anonymous() => Ok(()),
            SubscribeRule::Authenticated => Err(Refusal("this channel needs an authenticated connection")),
            SubscribeRule::Granted if token_grant || who.channels.iter().any(|p| p.matches(channel)) => Ok(()),
            SubscribeRule::Granted => Err(Refusal("no grant for this channel in the token")),
        }
    }

    /// Whether `who` may publish on `channel` from a client.
    pub fn may_publish(&self, who: &Identity, channel: &str) -> Result<(), Refusal> {
        if let Some(decision) = self.user_boundary(who, channel) {
            return decision.and_then(|()| match self.of(self.split(channel).0).publish {
                PublishRule::Nobody => Err(Refusal("client publishing is not allowed in this namespace")),
                _ => Ok(()),
            });
        }
        match self.of(self.split(channel).0).publish {
            PublishRule::Anyone => Ok(()),
            PublishRule::Nobody => Err(Refusal("client publishing is not allowed in this namespace")),
            PublishRule::Authenticated if !who.is_anonymous() => Ok(()),
            PublishRule::Authenticated => Err(Refusal("publishing here needs an authenticated connection")),
            PublishRule::Granted if who.publish.iter().any(|p| p.matches(channel)) => Ok(()),
            PublishRule::Granted => Err(Refusal("no publish grant for this channel in the token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Pattern;

    fn user(sub: &str, channels: &[&str]) -> Identity {
        Identity {
            user: sub.into(),
            expires_at: None,
            channels: channels.iter().map(|c| Pattern::new(c)).collect(),
            publish: Vec::new(),
            info: None,
        }
    }

    fn rules() -> ChannelRules {
        let mut ns = HashMap::new();
        ns.insert(
            "notifications".to_owned(),
            NamespaceRules {
                subscribe: SubscribeRule::Granted,
                publish: PublishRule::Nobody,
                user_limited: true,
                ..NamespaceRules::default()
            },
        );
        ns.insert(
            "team".to_owned(),
            NamespaceRules {
                subscribe: SubscribeRule::Granted,
                publish: PublishRule::Granted,
                user_limited: false,
                ..NamespaceRules::default()
            },
        );
        ChannelRules::new(":", ns)
    }

    #[test]
    fn user_limited_channels_belong_to_their_user() {
        let r = rules();
        assert!(r.may_subscribe(&user("42", &[]), "notifications:#42", false).is_ok());
        assert!(r.may_subscribe(&user("42", &[]), "notifications:#43", false).is_err());
        assert!(r.may_subscribe(&user("", &[]), "notifications:#", false).is_err());
        assert!(r.may_subscribe(&user("42", &["*"]), "team:#42", false).is_err());
        assert!(r.may_subscribe(&user("42", &[]), "notifications:#42#x", false).is_err());
    }

    #[test]
    fn granted_needs_a_matching_claim_or_token() {
        let r = rules();
        assert!(r
            .may_subscribe(&user("42", &["team:7.*"]), "team:7.chat", false)
            .is_ok());
        assert!(r.may_subscribe(&user("42", &["team:7"]), "team:70", false).is_err());
        assert!(r.may_subscribe(&user("42", &[]), "team:7.chat", true).is_ok());
        assert!(r.may_subscribe(&user("", &[]), "news", false).is_ok());
    }
}
