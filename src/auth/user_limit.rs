//! Connections per user on this instance, for `--max-connections-per-user`.
//!
//! Shards on different threads share one map behind a mutex. It is taken only when
//! an authenticated connection opens or closes and a limit is configured, never on
//! the publish path, and held for one hash-map update.

use std::collections::HashMap;
use std::sync::Mutex;

/// How many connections each user holds on this instance.
#[derive(Debug, Default)]
pub struct UserConnections {
    limit: u32,
    counts: Mutex<HashMap<Box<str>, u32>>,
}

impl UserConnections {
    /// Counts under `limit` connections per user; 0 means no limit (nothing counted).
    pub fn new(limit: u32) -> UserConnections {
        UserConnections {
            limit,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a place for one more connection of `user`; false when the user is at
    /// the limit. Anonymous connections (empty user) are not counted.
    pub fn acquire(&self, user: &str) -> bool {
        if self.limit == 0 || user.is_empty() {
            return true;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(user.into()).or_insert(0);
        if *count >= self.limit {
            return false;
        }
        *count += 1;
        true
    }

    /// Gives back the place of a closed connection of `user` taken by [`acquire`](Self::acquire).
    pub fn release(&self, user: &str) {
        if self.limit == 0 || user.is_empty() {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UserConnections;

    #[test]
    fn a_user_holds_at_most_the_limit() {
        let users = UserConnections::new(2);
        assert!(users.acquire("42") && users.acquire("42"));
        assert!(!users.acquire("42"));
        assert!(users.acquire("7"));
        users.release("42");
        assert!(users.acquire("42"));
        assert!(UserConnections::new(0).acquire("42"));
        assert!(users.acquire("") && users.acquire("") && users.acquire(""));
    }
}
