//! Heartbeat records in Redis. Keys share one hash tag, `{<prefix>}`, so they live
//! in one slot and the commands work unchanged on Redis Cluster.

use std::time::Duration;

use fred::prelude::*;

use super::RedisClients;
use crate::broker::instances::{InstanceInfo, InstanceRegistry, RegistryFuture};
use crate::broker::BrokerError;

/// The instance records of one cluster, in Redis.
pub struct RedisInstances {
    clients: RedisClients,
    /// Key prefix, a hash tag such as `{shardcast:}`.
    tag: String,
}

impl RedisInstances {
    /// Records kept with `client` under keys starting with the hash tag `{prefix}`.
    pub(super) fn new(clients: RedisClients, prefix: &str) -> RedisInstances {
        RedisInstances {
            clients,
            tag: format!("{{{prefix}}}"),
        }
    }

    fn members_key(&self) -> String {
        format!("{}instances", self.tag)
    }

    fn record_key(&self, node: &str) -> String {
        format!("{}instance:{node}", self.tag)
    }

    /// Writes this instance's record and reads every live one; records of members
    /// whose key expired are pruned from the member set.
    async fn write_and_read(&self, me: &InstanceInfo, ttl: Duration) -> Result<Vec<InstanceInfo>, BrokerError> {
        let record = serde_json::to_string(me).map_err(|e| BrokerError::Failed(e.to_string()))?;
        self.exchange(me, record, ttl)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    async fn exchange(
        &self,
        me: &InstanceInfo,
        record: String,
        ttl: Duration,
    ) -> Result<Vec<InstanceInfo>, fred::error::Error> {
        let members_key = self.members_key();
        let client = &self
            .clients
            .for_key(&members_key)
            .ok_or_else(|| fred::error::Error::new(fred::error::ErrorKind::Unknown, "redis node not known"))?;
        let ttl_ms = ttl.as_millis() as i64;
        let () = client
            .set(
                self.record_key(&me.node),
                record,
                Some(Expiration::PX(ttl_ms)),
                None,
                false,
            )
            .await?;
        let _: i64 = client.sadd(&members_key, me.node.as_str()).await?;
        let members: Vec<String> = client.smembers(&members_key).await?;
        if members.is_empty() {
            return Ok(vec![me.clone()]);
        }
        let keys: Vec<String> = members.iter().map(|m| self.record_key(m)).collect();
        let records: Vec<Option<String>> = client.mget(keys).await?;
        let mut live = Vec::with_capacity(members.len());
        let mut expired = Vec::new();
        for (member, record) in members.into_iter().zip(records) {
            match record.and_then(|r| serde_json::from_str::<InstanceInfo>(&r).ok()) {
                Some(info) => live.push(info),
                None => expired.push(member),
            }
        }
        if !expired.is_empty() {
            let _: i64 = client.srem(&members_key, expired).await?;
        }
        Ok(live)
    }

    /// Removes this instance's record and membership.
    async fn remove(&self, node: &str) -> Result<(), BrokerError> {
        let fail = |e: fred::error::Error| BrokerError::Unavailable(e.to_string());
        let client = self
            .clients
            .for_key(&self.members_key())
            .ok_or_else(|| BrokerError::Unavailable("redis node not known".into()))?;
        let _: i64 = client.del(self.record_key(node)).await.map_err(fail)?;
        let _: i64 = client.srem(self.members_key(), node).await.map_err(fail)?;
        Ok(())
    }
}

impl InstanceRegistry for RedisInstances {
    fn is_local(&self) -> bool {
        false
    }

    fn heartbeat<'a>(&'a self, me: &'a InstanceInfo, ttl: Duration) -> RegistryFuture<'a, Vec<InstanceInfo>> {
        Box::pin(self.write_and_read(me, ttl))
    }

    fn leave<'a>(&'a self, node: &'a str) -> RegistryFuture<'a, ()> {
        Box::pin(self.remove(node))
    }
}
