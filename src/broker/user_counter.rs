//! Each user's connections across instances, for `--max-connections-per-user`: a
//! place is taken when an authenticated connection opens and given back when it
//! closes. Without Redis the count is this instance's ([`LocalUserCounter`]); with
//! Redis it is the cluster's (`redis::RedisUserCounter`). Only connects and closes
//! of authenticated connections ask, and only where a limit is configured: never
//! the publish path.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use super::BrokerError;

/// A place-taking request in flight: true if the place was taken.
pub type CounterFuture = Pin<Box<dyn Future<Output = Result<bool, BrokerError>> + Send>>;

/// Counts each user's connections against a limit.
pub trait UserCounter: Send + Sync + 'static {
    /// Takes a place for one more connection of `user`, unless the user already
    /// holds the limit.
    fn acquire(&self, user: Arc<str>) -> CounterFuture;
    /// Gives back a place taken by [`acquire`](UserCounter::acquire).
    fn release(&self, user: Arc<str>);
}

/// The count of this instance alone. Shards on different threads share one map
/// behind a mutex, held for one hash-map update per connect or close.
#[derive(Debug, Default)]
pub struct LocalUserCounter {
    limit: u32,
    counts: Mutex<HashMap<Arc<str>, u32>>,
}

impl LocalUserCounter {
    /// A counter of at most `limit` connections per user.
    pub fn new(limit: u32) -> LocalUserCounter {
        LocalUserCounter {
            limit,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, user: Arc<str>) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(user).or_insert(0);
        if *count >= self.limit {
            return false;
        }
        *count += 1;
        true
    }
}

impl UserCounter for LocalUserCounter {
    fn acquire(&self, user: Arc<str>) -> CounterFuture {
        Box::pin(std::future::ready(Ok(self.take(user))))
    }

    fn release(&self, user: Arc<str>) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&user);
            }
        }
    }
}
