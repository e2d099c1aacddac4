//! Operator commands that act on a user's connections on every instance
//! (`POST /api/disconnect`, `POST /api/unsubscribe`): what they say, and how they
//! travel as an opaque broker control message between instances.

use serde::{Deserialize, Serialize};

use crate::payload::Payload;

/// An operator's command about one user's connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UserCommand {
    /// Close every connection of this user (close code 4004).
    Disconnect {
        /// The user id (a token's `sub`).
        user: String,
    },
    /// End this user's subscription to a channel (`unsubscribed` frame).
    Unsubscribe {
        /// The user id.
        user: String,
        /// The channel.
        channel: String,
    },
}

impl UserCommand {
    /// The command as a broker payload.
    pub fn to_payload(&self) -> Result<Payload, serde_json::Error> {
        Payload::from_json(&serde_json::to_string(self)?)
    }

    /// A command read back from a broker payload.
    pub fn from_payload(payload: &Payload) -> Result<UserCommand, serde_json::Error> {
        serde_json::from_str(payload.json().get())
    }
}
