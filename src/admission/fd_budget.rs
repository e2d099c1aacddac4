//! File-descriptor headroom: raising RLIMIT_NOFILE at start, counting open
//! descriptors, and admitting a new socket only while enough stay free for the
//! process to keep working (logs, Redis reconnects, the admin port, refusals).
//!
//! Counting `/proc/self/fd` costs a directory scan, so it runs a few times a second
//! off the hot path; between scans each admitted socket is added to the last count.
//! Closes are only seen at the next scan, which errs on the safe side.

use std::sync::atomic::{AtomicUsize, Ordering};

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
    counted: AtomicUsize,
    admitted_since: AtomicUsize,
}

impl FdBudget {
    /// A budget for `limit` descriptors keeping `reserve` of them free.
    pub fn new(limit: usize, reserve: usize) -> FdBudget {
        FdBudget {
            limit,
            reserve,
            counted: AtomicUsize::new(count_open_fds().unwrap_or(0)),
            admitted_since: AtomicUsize::new(0),
        }
    }

    /// Records a fresh count of open descriptors.
    pub fn record_count(&self, open: usize) {
        self.counted.store(open, Ordering::Relaxed);
        self.admitted_since.store(0, Ordering::Relaxed);
    }

    /// The descriptor limit this budget works against.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Open descriptors by the last count plus the sockets admitted since.
    pub fn estimated_open(&self) -> usize {
        self.counted.load(Ordering::Relaxed) + self.admitted_since.load(Ordering::Relaxed)
    }

    /// Descriptors left before the limit, by the current estimate.
    pub fn headroom(&self) -> usize {
        self.limit.saturating_sub(self.estimated_open())
    }

    /// Takes one descriptor for a new socket if the reserve stays intact.
    pub fn try_admit(&self) -> bool {
        if self.headroom() <= self.reserve {
            return false;
        }
        self.admitted_since.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_until_the_reserve() {
        let b = FdBudget::new(100, 10);
        b.record_count(85);
        assert!(b.try_admit());
        assert!(b.try_admit());
        assert!(b.try_admit());
        assert!(b.try_admit());
        assert_eq!(b.headroom(), 11);
        assert!(b.try_admit());
        assert!(!b.try_admit());
        b.record_count(50);
        assert!(b.try_admit());
    }

    #[test]
    fn counts_real_descriptors() {
        assert!(count_open_fds().unwrap() >= 3);
        assert!(resident_memory_bytes().unwrap() > 0);
    }
}
