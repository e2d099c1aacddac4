//! Readings of a process from /proc, which soak and fault tests compare over time.

/// What /proc says about a process: resident memory, open descriptors, threads.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub rss_bytes: u64,
    pub fds: usize,
    pub threads: usize,
}

pub fn proc_sample(pid: i32) -> ProcSample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ProcSample {
        rss_bytes: field("VmRSS:") * 1024,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
        threads: field("Threads:") as usize,
    }
}
