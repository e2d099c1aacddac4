//! History on Redis: the Redis Functions of `functions.lua` (PROTOCOL.md 15.1),
//! loaded on the command connection, and the two calls the broker makes through
//! them: a publish that is numbered, stored and published in one atomic step, and
//! an atomic read of a channel's position and history.

use std::sync::Arc;

use fred::prelude::*;
use fred::types::Value;

use crate::broker::{BrokerError, HistoryPage, HistoryQuery, Position, PublishOptions, Published};
use crate::payload::Payload;

/// The function library, as loaded (`FUNCTION LOAD REPLACE`): history and presence.
pub(super) const LIBRARY: &str = concat!(
    include_str!("functions.lua"),
    "\n",
    include_str!("presence.lua"),
    "\n",
    include_str!("occupancy.lua")
);

/// The keys of a channel's history: its stream and its hash, with the channel's
/// pub/sub name as hash tag.
pub(super) fn history_keys(prefix: &str, channel: &str) -> [String; 2] {
    [
        format!("{prefix}history:{{{prefix}{channel}}}"),
        format!("{prefix}meta:{{{prefix}{channel}}}"),
    ]
}

/// Loads the library (on every master of a cluster).
pub(super) async fn load(client: &Client, cluster: bool) -> Result<(), BrokerError> {
    let loaded: Result<Value, _> = if cluster {
        client.function_load_cluster(true, LIBRARY).await.map(|()| Value::Null)
    } else {
        client.function_load(true, LIBRARY).await
    };
    loaded.map(|_| ()).map_err(classify)
}

/// Whether an error says the library is missing (Redis restarted without it).
fn function_missing(e: &fred::error::Error) -> bool {
    e.details().contains("Function not found")
}

/// Calls a function, loading the library once if Redis lost it.
pub(super) async fn fcall(
    client: &Client,
    cluster: bool,
    name: &str,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<Value, BrokerError> {
    match client.fcall::<Value, _, _, _>(name, keys.clone(), args.clone()).await {
        Err(e) if function_missing(&e) => {
            load(client, cluster).await?;
            client.fcall(name, keys, args).await.map_err(classify)
        }
        other => other.map_err(classify),
    }
}

/// What an error tells about the command's fate: refused before it ran, or unknown.
pub(super) fn classify(e: fred::error::Error) -> BrokerError {
    use fred::error::ErrorKind;
    match e.kind() {
        // Sent, or possibly sent, and no answer: it may have run.
        ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled => BrokerError::Unknown(e.to_string()),
        ErrorKind::Cluster | ErrorKind::Routing | ErrorKind::NotFound => BrokerError::Unavailable(e.to_string()),
        _ => BrokerError::Failed(e.to_string()),
    }
}

/// Context of one call: the connection and how channels are named.
pub(super) struct HistoryCall<'a> {
    pub(super) client: &'a Client,
    pub(super) cluster: bool,
    pub(super) prefix: &'a str,
}

impl HistoryCall<'_> {
    /// `shardcast_publish`: numbers (with history), stores and publishes.
    pub(super) async fn publish(
        &self,
        channel: &str,
        payload: &Payload,
        origin: &str,
        options: &PublishOptions,
    ) -> Result<Published, BrokerError> {
        let (size, ttl) = match (options.history, &options.idempotency) {
            (Some(policy), _) => (policy.size, policy.ttl),
            (None, Some((_, window))) => (0, *window),
            (None, None) => (0, std::time::Duration::from_secs(1)),
        };
        let key = options.idempotency.as_ref().map_or("", |(k, _)| k);
        let args = vec![
            format!("{}{channel}", self.prefix),
            payload.json().get().to_owned(),
            size.to_string(),
            ttl.as_secs().max(1).to_string(),
            origin.to_owned(),
            key.to_owned(),
            if self.cluster { "1" } else { "0" }.to_owned(),
        ];
        let keys = history_keys(self.prefix, channel).to_vec();
        let reply = fcall(self.client, self.cluster, "shardcast_publish", keys, args).await?;
        let items = reply.into_array();
        let (offset, epoch, duplicate) = match items.as_slice() {
            [o, e, d] => (o.as_u64(), e.as_string(), d.as_u64()),
            _ => (None, None, None),
        };
        let (Some(offset), Some(epoch), Some(duplicate)) = (offset, epoch, duplicate) else {
            return Err(BrokerError::Failed("unexpected reply from shardcast_publish".into()));
        };
        Ok(Published {
            position: (offset > 0).then(|| Position {
                offset,
                epoch: Arc::from(epoch),
            }),
            duplicate: duplicate == 1,
        })
    }

    /// `shardcast_history`: the channel's position and the publications asked for.
    pub(super) async fn read(&self, channel: &str, query: &HistoryQuery) -> Result<HistoryPage, BrokerError> {
        let since = query.since.map_or("-1".to_owned(), |s| s.to_string());
        let args = vec![
            since,
            query.limit.to_string(),
            query.policy.ttl.as_secs().max(1).to_string(),
        ];
        let keys = history_keys(self.prefix, channel).to_vec();
        let reply = fcall(self.client, self.cluster, "shardcast_history", keys, args).await?;
        let items = reply.into_array();
        let bad = || BrokerError::Failed("unexpected reply from shardcast_history".into());
        let (Some(epoch), Some(top)) = (
            items.first().and_then(Value::as_string),
            items.get(1).and_then(Value::as_u64),
        ) else {
            return Err(bad());
        };
        let mut publications = Vec::with_capacity(items.len().saturating_sub(2) / 2);
        for pair in items[2..].chunks(2) {
            let [offset, json] = pair else { return Err(bad()) };
            let (Some(offset), Some(json)) = (offset.as_u64(), json.as_str()) else {
                return Err(bad());
            };
            // A stored entry was validated when it was published, by a gateway or
            // by the function's caller; one that does not parse is skipped, not fatal.
            if let Ok(payload) = Payload::from_json(&json) {
                publications.push((offset, payload));
            }
        }
        Ok(HistoryPage {
            epoch: Arc::from(epoch),
            top,
            publications,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_share_the_channel_slot() {
        let [stream, meta] = super::history_keys("shardcast:", "news");
        assert_eq!(stream, "shardcast:history:{shardcast:news}");
        assert_eq!(meta, "shardcast:meta:{shardcast:news}");
    }
}
