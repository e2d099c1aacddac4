//! The cluster-wide count of each user's connections, in Redis: one hash per user,
//! a field per instance holding that instance's count. Taking a place is one Lua
//! script (one round trip, atomic): it sums the fields of live instances (an
//! instance is live while its heartbeat record exists), drops the fields of dead
//! ones, and increments this instance's field if the sum is under the limit. A
//! killed instance's connections therefore stop counting when its heartbeat
//! expires. The hash shares the heartbeat keys' hash tag, so the script's keys sit
//! in one slot on Redis Cluster.

use std::sync::Arc;

use fred::prelude::*;
use tracing::warn;

use super::RedisClients;
use crate::broker::user_counter::{CounterFuture, UserCounter};
use crate::broker::BrokerError;

/// KEYS[1]: the user's hash. ARGV: this node, the limit, the key's TTL in
/// seconds, the heartbeat record prefix.
const ACQUIRE: &str = r#"
local key, node, limit, ttl, records = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local total = 0
local fields = redis.call('HGETALL', key)
for i = 1, #fields, 2 do
  local other, count = fields[i], tonumber(fields[i + 1])
  if other == node or redis.call('EXISTS', records .. other) == 1 then
    total = total + count
  else
    redis.call('HDEL', key, other)
  end
end
if total >= limit then
  return 0
end
redis.call('HINCRBY', key, node, 1)
redis.call('EXPIRE', key, ttl)
return 1
"#;

/// KEYS[1]: the user's hash. ARGV[1]: this node.
const RELEASE: &str = r#"
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if left <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return left
"#;

/// A user hash outlives its last update by this long, so abandoned ones vanish.
const KEY_TTL_SECS: u64 = 24 * 3600;

/// The per-user count of one instance, in Redis.
pub struct RedisUserCounter {
    clients: RedisClients,
    tag: String,
    node: String,
    limit: u32,
}

impl RedisUserCounter {
    /// A counter of at most `limit` connections per user for instance `node`, with
    /// keys under the hash tag `{prefix}`.
    pub(super) fn new(clients: RedisClients, prefix: &str, node: &str, limit: u32) -> RedisUserCounter {
        RedisUserCounter {
            clients,
            tag: format!("{{{prefix}}}"),
            node: node.to_owned(),
            limit,
        }
    }

    fn key(&self, user: &str) -> String {
        format!("{}users:{user}", self.tag)
    }
}

impl UserCounter for RedisUserCounter {
    fn acquire(&self, user: Arc<str>) -> CounterFuture {
        let key = self.key(&user);
        let Some(client) = self.clients.for_key(&key) else {
            return Box::pin(std::future::ready(Err(BrokerError::Unavailable(
                "the redis node of the user counts is not known".into(),
            ))));
        };
        let args = vec![
            self.node.clone(),
            self.limit.to_string(),
            KEY_TTL_SECS.to_string(),
            format!("{}instance:", self.tag),
        ];
        Box::pin(async move {
            let taken: i64 = client
                .eval(ACQUIRE, key, args)
                .await
                .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            Ok(taken == 1)
        })
    }

    fn release(&self, user: Arc<str>) {
        let key = self.key(&user);
        let Some(client) = self.clients.for_key(&key) else {
            warn!("could not give back a per-user connection place: its redis node is not known");
            return;
        };
        let node = self.node.clone();
        tokio::spawn(async move {
            let released: Result<i64, _> = client.eval(RELEASE, key, vec![node]).await;
            if let Err(e) = released {
                // The place stays taken until this instance's heartbeat expires.
                warn!(error = %e, "could not give back a per-user connection place in redis");
            }
        });
    }
}
