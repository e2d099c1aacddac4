//! File-descriptor headroom: raising RLIMIT_NOFILE at start, counting open
//! descriptors, and admitting a new socket only while enough stay free for the
//! process to keep working (logs, Redis reconnects, the admin port, refusals).
//!
//! The count follows the sockets as they come and go: the shards' socket count
//! ([`GatewayState::total_sockets`], which a shard lowers as it closes one) and the
//! refused sockets still open ([`RefusedSocket`]), on top of a baseline of every
//! other descriptor (listeners, runtimes, Redis, log files). Counting
//! `/proc/self/fd` costs a directory scan, so it runs a few times a second off the
//! hot path and only corrects that baseline; admission and the gauges never wait
//! for it, so they are right the moment a flood ends. The scan itself costs time in
//! proportion to the descriptors open (most of an idle gateway's CPU with tens of
//! thousands of sockets), so a steady gateway far from its limit scans seldom:
//! see [`FdBudget::scan_due`].

use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::state::GatewayState;

/// The process's descriptor limit, before and after raising it.
#[derive(Debug, Clone, Copy)]
pub struct NofileLimit {
    /// Soft limit found at start.
    pub soft_before: u64,
    /// Hard limit (the ceiling the soft limit was raised to).
    pub hard: u64,
    /// Soft limit now in force.
    pub soft: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit.
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let soft_before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(NofileLimit {
        soft_before,
        hard: lim.rlim_max,
        soft: lim.rlim_cur,
    })
}

/// Counts this process's open descriptors.
pub fn count_open_fds() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// Resident set size of this process in bytes, from /proc/self/statm.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Decides whether one more socket may be admitted.
#[derive(Debug)]
pub struct FdBudget {
    limit: usize,
    reserve: usize,
    state: Arc<GatewayState>,
    /// Open descriptors that are neither a shard's socket nor a refused one, as of
    /// the last scan.
    baseline: AtomicIsize,
    /// Refused sockets not closed yet.
    refused: AtomicUsize,
    /// Sockets (shards' and refused) open at the last scan.
    sockets_at_scan: AtomicUsize,
}

/// The longest a steady gateway goes without scanning `/proc/self/fd`.
pub const STEADY_SCAN_PERIOD: Duration = Duration::from_secs(2);

impl FdBudget {
    /// A budget for `limit` descriptors keeping `reserve` of them free, following
    /// the shards' sockets in `state`.
    pub fn new(limit: usize, reserve: usize, state: Arc<GatewayState>) -> FdBudget {
        let budget = FdBudget {
            limit,
            reserve,
            state,
            baseline: AtomicIsize::new(0),
            refused: AtomicUsize::new(0),
            sockets_at_scan: AtomicUsize::new(0),
        };
        let _ = budget.rescan();
        budget
    }

    /// Counts `/proc/self/fd` and corrects the baseline with it; returns the count.
    /// Blocking (a directory scan): call it off the async threads.
    pub fn rescan(&self) -> std::io::Result<usize> {
        let open = count_open_fds()?;
        self.record_count(open);
        Ok(open)
    }

    /// Records a count of open descriptors taken just now.
    pub fn record_count(&self, open: usize) {
        let sockets = self.sockets();
        self.sockets_at_scan.store(sockets, Ordering::Relaxed);
        self.baseline.store(open as isize - sockets as isize, Ordering::Relaxed);
    }

    /// Whether a scan is due, `since_last` after the last one. The baseline can only
    /// be wrong by what changed while a scan ran (a socket accepted but not yet a
    /// shard's, one closing), so it is re-measured at every chance while sockets
    /// come and go, or while the headroom is short enough for an error to refuse
    /// or admit wrongly; a steady gateway far from its limit waits
    /// [`STEADY_SCAN_PERIOD`].
    pub fn scan_due(&self, since_last: Duration) -> bool {
        let churned = self.sockets() != self.sockets_at_scan.load(Ordering::Relaxed);
        let short = self.headroom() < (self.limit / 8).max(self.reserve.saturating_mul(4));
        churned || short || since_last >= STEADY_SCAN_PERIOD
    }

    /// Shards' sockets and refused sockets open now.
    fn sockets(&self) -> usize {
        self.state.total_sockets() + self.refused.load(Ordering::Relaxed)
    }

    /// The descriptor limit this budget works against.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Open descriptors now: the baseline plus the sockets open at this moment.
    pub fn estimated_open(&self) -> usize {
        (self.baseline.load(Ordering::Relaxed) + self.sockets() as isize).max(0) as usize
    }

    /// Descriptors left before the limit, by the current estimate.
    pub fn headroom(&self) -> usize {
        self.limit.saturating_sub(self.estimated_open())
    }

    /// Whether one more socket may be handed to a shard with the reserve intact.
    /// The socket is counted once the shard owns it ([`GatewayState::add_socket`]).
    pub fn try_admit(&self) -> bool {
        self.headroom() > self.reserve
    }

    /// Counts a refused socket until the returned guard is dropped with it.
    pub fn refused_socket(self: &Arc<Self>) -> RefusedSocket {
        self.refused.fetch_add(1, Ordering::Relaxed);
        RefusedSocket(self.clone())
    }
}

/// A refused socket's descriptor, counted while the guard lives; drop it with the
/// socket.
#[derive(Debug)]
pub struct RefusedSocket(Arc<FdBudget>);

impl Drop for RefusedSocket {
    fn drop(&mut self) {
        self.0.refused.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_sockets_between_scans() {
        let state = Arc::new(GatewayState::new("n".into(), 2));
        let b = Arc::new(FdBudget::new(100, 10, state.clone()));
        b.record_count(85);
        for shard in [0, 1, 0, 1] {
            assert!(b.try_admit());
            state.add_socket(shard, 1);
        }
        assert_eq!(b.headroom(), 11);
        assert!(b.try_admit());
        state.add_socket(0, 1);
        assert!(!b.try_admit());
        // A refused socket holds a descriptor until it is closed.
        let refused = b.refused_socket();
        assert_eq!(b.estimated_open(), 91);
        drop(refused);
        // Closes count at once, not at the next scan.
        state.add_socket(1, -1);
        state.add_socket(0, -1);
        assert_eq!(b.estimated_open(), 88);
        assert!(b.try_admit());
        // A scan corrects the baseline and keeps the sockets.
        b.record_count(50);
        assert_eq!(b.estimated_open(), 50);
        state.add_socket(1, 1);
        assert_eq!(b.estimated_open(), 51);
    }

    #[test]
    fn scans_seldom_only_when_steady_and_far_from_the_limit() {
        let state = Arc::new(GatewayState::new("n".into(), 1));
        let b = FdBudget::new(1000, 10, state.clone());
        b.record_count(20);
        let soon = Duration::from_millis(250);
        assert!(!b.scan_due(soon), "steady, 980 free");
        assert!(b.scan_due(STEADY_SCAN_PERIOD));
        state.add_socket(0, 1);
        assert!(b.scan_due(soon), "a socket came since the scan");
        b.record_count(21);
        assert!(!b.scan_due(soon));
        // Within an eighth of the limit, every chance.
        state.add_socket(0, 860);
        b.record_count(881);
        assert!(b.scan_due(soon), "119 free of 1000");
    }

    #[test]
    fn counts_real_descriptors() {
        assert!(count_open_fds().unwrap() >= 3);
        assert!(resident_memory_bytes().unwrap() > 0);
    }
}
