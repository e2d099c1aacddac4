//! The Pusher apps a gateway serves (`[pusher.apps."<id>"]` tables of the config
//! file): each an id, a key (public, in the client's URL), a secret (signs channel
//! auth and API requests), and its limits.

use std::collections::HashMap;

use serde::Deserialize;

/// Pusher's default limit of members per presence channel.
pub const DEFAULT_MAX_PRESENCE_MEMBERS: u32 = 100;

/// One app, as configured.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PusherApp {
    /// The app id (`/apps/<id>/...` in the HTTP API).
    #[serde(skip)]
    pub id: String,
    /// The app key (`/app/<key>` on the WebSocket endpoint).
    pub key: String,
    /// The app secret.
    pub secret: String,
    /// Whether clients may send `client-*` events on private and presence channels.
    #[serde(default)]
    pub client_events: bool,
    /// Members per presence channel at most.
    #[serde(default = "default_max_presence_members")]
    pub max_presence_members: u32,
    /// What the app's channels are prefixed with to become shardcast channels.
    #[serde(default)]
    pub channel_prefix: String,
}

fn default_max_presence_members() -> u32 {
    DEFAULT_MAX_PRESENCE_MEMBERS
}

/// The secret never reaches a log through `{:?}`.
impl std::fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherApp")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("client_events", &self.client_events)
            .field("max_presence_members", &self.max_presence_members)
            .field("channel_prefix", &self.channel_prefix)
            .finish_non_exhaustive()
    }
}

impl PusherApp {
    /// The shardcast channel of one of the app's channels (PROTOCOL.md 20.2).
    pub fn shardcast_channel(&self, channel: &str) -> String {
        format!("{}{channel}", self.channel_prefix)
    }

    /// An app with Pusher's defaults.
    pub fn new(id: &str, key: &str, secret: &str) -> PusherApp {
        PusherApp {
            id: id.to_owned(),
            key: key.to_owned(),
            secret: secret.to_owned(),
            client_events: false,
            max_presence_members: DEFAULT_MAX_PRESENCE_MEMBERS,
            channel_prefix: String::new(),
        }
    }
}

/// Why the apps' configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppsError {
    /// A table did not have an app's shape.
    #[error("[pusher.apps.{id:?}]: {message}")]
    Shape {
        /// The app id.
        id: String,
        /// What was wrong.
        message: String,
    },
    /// Two apps share a key: a client's URL would not say which it means.
    #[error("apps {0:?} and {1:?} share a key")]
    DuplicateKey(String, String),
    /// An empty key or secret.
    #[error("[pusher.apps.{0:?}]: key and secret must not be empty")]
    Empty(String),
}

/// Every configured app, found by key (WebSocket) or by id (HTTP API).
#[derive(Debug, Clone, Default)]
pub struct PusherApps {
    by_key: HashMap<String, PusherApp>,
    key_of_id: HashMap<String, String>,
}

impl PusherApps {
    /// The apps of a `[pusher.apps]` table.
    pub fn from_table(table: &toml::Table) -> Result<PusherApps, AppsError> {
        let mut apps = PusherApps::default();
        for (id, value) in table {
            let mut app: PusherApp = value
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| AppsError::Shape {
                    id: id.clone(),
                    message: e.message().to_owned(),
                })?;
            app.id = id.clone();
            apps.add(app)?;
        }
        Ok(apps)
    }

    /// Adds an app.
    pub fn add(&mut self, app: PusherApp) -> Result<(), AppsError> {
        if app.key.is_empty() || app.secret.is_empty() {
            return Err(AppsError::Empty(app.id));
        }
        if let Some(other) = self.by_key.get(&app.key) {
            return Err(AppsError::DuplicateKey(other.id.clone(), app.id));
        }
        self.key_of_id.insert(app.id.clone(), app.key.clone());
        self.by_key.insert(app.key.clone(), app);
        Ok(())
    }

    /// The app whose key a client's URL names.
    pub fn by_key(&self, key: &str) -> Option<&PusherApp> {
        self.by_key.get(key)
    }

    /// The app an API path names.
    pub fn by_id(&self, id: &str) -> Option<&PusherApp> {
        self.key_of_id.get(id).and_then(|k| self.by_key.get(k))
    }

    /// Every app.
    pub fn iter(&self) -> impl Iterator<Item = &PusherApp> {
        self.by_key.values()
    }

    /// Whether any app is configured (the endpoint exists only then).
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_are_found_by_key_and_id_and_keys_are_unique() {
        let table: toml::Table = toml::from_str(
            "[one]\nkey = \"k1\"\nsecret = \"s1\"\nclient_events = true\n[two]\nkey = \"k2\"\nsecret = \"s2\"\n",
        )
        .unwrap();
        let apps = PusherApps::from_table(&table).unwrap();
        assert_eq!(apps.by_key("k1").map(|a| a.id.as_str()), Some("one"));
        assert_eq!(apps.by_id("two").map(|a| a.key.as_str()), Some("k2"));
        assert!(apps.by_key("k1").unwrap().client_events);
        assert_eq!(apps.by_id("two").unwrap().max_presence_members, 100);
        assert!(
            !format!("{:?}", apps.by_key("k1").unwrap()).contains("s1"),
            "no secret in Debug"
        );
        let dup: toml::Table =
            toml::from_str("[a]\nkey = \"k\"\nsecret = \"s\"\n[b]\nkey = \"k\"\nsecret = \"t\"\n").unwrap();
        assert!(matches!(PusherApps::from_table(&dup), Err(AppsError::DuplicateKey(..))));
        let unknown: toml::Table = toml::from_str("[a]\nkey = \"k\"\nsecret = \"s\"\nsecrte = 1\n").unwrap();
        assert!(matches!(PusherApps::from_table(&unknown), Err(AppsError::Shape { .. })));
    }
}
