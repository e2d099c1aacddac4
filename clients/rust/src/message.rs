//! [`Message`]: one publication delivered on a subscribed channel.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One publication on a subscribed channel.
///
/// Serialises as `{"channel":..,"seq":..,"data":..}` (with `offset` and `epoch` on a
/// channel with history), the shape of the protocol's `message` frame without its `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The channel it was published on.
    pub channel: String,
    /// +1 per publication delivered on this channel by this gateway instance. Only
    /// meaningful within one unbroken subscription: it restarts or jumps after a reconnect.
    /// 0 for a publication recovered from history.
    pub seq: u64,
    /// On a channel with history: the publication's offset, +1 per publication of the
    /// channel within its epoch (PROTOCOL.md 19.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// With `offset`: the channel's epoch (one unbroken history of the channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The published JSON value (MessagePack payloads are decoded into the same model).
    pub data: Value,
}

impl Message {
    /// Deserialises the payload into an application type.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }
}
