//! Connect attempts per source address (`--connect-rate-per-ip`): a token bucket
//! per address, of `n` tokens refilled at `n` a second, kept by the acceptor alone
//! (one task, so no lock).
//!
//! A bucket is stored as the instant it is full again (the generic cell rate
//! algorithm's form of a token bucket): taking a token pushes that instant
//! `1/n` s later, and a take that would push it more than one second (the whole
//! capacity) past now is refused. One instant per address, and a full bucket is the
//! same as no entry, so full buckets are dropped on the periodic sweep.
//!
//! The table is bounded: an attacker with many source addresses (an IPv6 prefix
//! holds billions) must not grow it without bound. Past [`MAX_TRACKED_ADDRESSES`]
//! addresses, each seen within about the last second, an address not in the table
//! is refused until a sweep makes room: the instance is then taking connects from
//! more distinct addresses a second than any reconnect wave of its own clients
//! would bring.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Addresses tracked at once; at about 40 bytes an entry plus the hash table's
/// slack, a few megabytes at most.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// How often buckets that are full again are dropped.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// The least time between two sweeps forced by a full table, so that a flood of new
/// addresses cannot make every accept scan the whole table.
const MIN_FORCED_SWEEP_GAP: Duration = Duration::from_millis(100);

/// The token buckets of every source address that connected lately.
#[derive(Debug)]
pub struct ConnectRate {
    /// Time one token takes to come back: `1/n` s.
    interval: Duration,
    /// Time an empty bucket takes to fill: `n` intervals (about one second).
    capacity: Duration,
    /// When each address's bucket is full again; absent means full.
    full_at: HashMap<IpAddr, Instant>,
    /// Most addresses tracked at once.
    max_tracked: usize,
    last_sweep: Instant,
}

impl ConnectRate {
    /// Buckets of `per_second` connects, refilled at `per_second` a second; `None`
    /// for 0 (no limit).
    pub fn new(per_second: u32, now: Instant) -> Option<ConnectRate> {
        ConnectRate::with_max_tracked(per_second, MAX_TRACKED_ADDRESSES, now)
    }

    /// As [`ConnectRate::new`], tracking at most `max_tracked` addresses.
    pub fn with_max_tracked(per_second: u32, max_tracked: usize, now: Instant) -> Option<ConnectRate> {
        if per_second == 0 {
            return None;
        }
        let interval = Duration::from_secs(1) / per_second;
        Some(ConnectRate {
            interval,
            capacity: interval * per_second,
            full_at: HashMap::new(),
            max_tracked,
            last_sweep: now,
        })
    }

    /// Takes a token from `addr`'s bucket: true if there was one (the connect may
    /// go on), false if the address is over its rate (or new while the table is
    /// full).
    pub fn try_acquire(&mut self, addr: IpAddr, now: Instant) -> bool {
        if now.saturating_duration_since(self.last_sweep) >= SWEEP_PERIOD {
            self.sweep(now);
        }
        // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d.
        let addr = addr.to_canonical();
        let known = self.full_at.get(&addr).copied();
        let full_at = match known {
            Some(at) => at.max(now),
            None if self.has_room(now) => now,
            None => return false,
        };
        let next = full_at + self.interval;
        if next.saturating_duration_since(now) > self.capacity {
            return false;
        }
        self.full_at.insert(addr, next);
        true
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.full_at.len()
    }

    /// Whether a new address fits in the table, sweeping it first when it is full
    /// (at most once every [`MIN_FORCED_SWEEP_GAP`]).
    fn has_room(&mut self, now: Instant) -> bool {
        if self.full_at.len() < self.max_tracked {
            return true;
        }
        if now.saturating_duration_since(self.last_sweep) < MIN_FORCED_SWEEP_GAP {
            return false;
        }
        self.sweep(now);
        self.full_at.len() < self.max_tracked
    }

    /// Drops the buckets that are full again, and the memory a flood left behind.
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        self.full_at.retain(|_, at| *at > now);
        if self.full_at.capacity() > 4 * self.full_at.len().max(1024) {
            self.full_at.shrink_to(2 * self.full_at.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn admitted(rate: &mut ConnectRate, addr: IpAddr, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| rate.try_acquire(addr, now)).count()
    }

    #[test]
    fn zero_means_no_limit() {
        assert!(ConnectRate::new(0, Instant::now()).is_none());
    }

    #[test]
    fn a_burst_gets_the_capacity_then_the_refill() {
        let t0 = Instant::now();
        let mut rate = ConnectRate::new(5, t0).expect("limit");
        assert_eq!(admitted(&mut rate, A, t0, 20), 5);
        // Another address has its own bucket.
        assert_eq!(admitted(&mut rate, B, t0, 20), 5);
        // A token a fifth of a second, none before.
        assert_eq!(admitted(&mut rate, A, t0 + Duration::from_millis(199), 3), 0);
        assert_eq!(admitted(&mut rate, A, t0 + Duration::from_millis(200), 3), 1);
        // Full again after a second of quiet, never more than full.
        assert_eq!(admitted(&mut rate, A, t0 + Duration::from_secs(10), 20), 5);
    }

    #[test]
    fn a_steady_rate_within_the_limit_is_never_refused() {
        let t0 = Instant::now();
        let mut rate = ConnectRate::new(3, t0).expect("limit");
        for i in 0..300 {
            assert!(rate.try_acquire(A, t0 + Duration::from_secs(1) / 3 * i), "connect {i}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_share_the_ipv4_bucket() {
        let t0 = Instant::now();
        let mut rate = ConnectRate::new(2, t0).expect("limit");
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert!(rate.try_acquire(A, t0));
        assert!(rate.try_acquire(mapped, t0));
        assert!(!rate.try_acquire(A, t0));
        assert_eq!(rate.tracked(), 1);
    }

    #[test]
    fn full_buckets_are_dropped_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut rate = ConnectRate::with_max_tracked(10, 100, t0).expect("limit");
        let addr = |i: u32| IpAddr::V6(Ipv6Addr::from(u128::from(i) + 1));
        for i in 0..100 {
            assert!(rate.try_acquire(addr(i), t0));
        }
        // Full of addresses seen just now: a new one waits for room.
        assert!(!rate.try_acquire(addr(100), t0));
        assert!(!rate.try_acquire(addr(100), t0 + Duration::from_millis(50)));
        // Known addresses keep their buckets meanwhile.
        assert!(rate.try_acquire(addr(0), t0));
        // Once those buckets have refilled, a forced sweep makes room.
        let later = t0 + Duration::from_millis(300);
        assert!(rate.try_acquire(addr(100), later));
        assert_eq!(rate.tracked(), 1);
        // The periodic sweep empties the table once every bucket is full.
        assert!(rate.try_acquire(addr(101), later + SWEEP_PERIOD * 2));
        assert_eq!(rate.tracked(), 1);
    }
}
