//! Readings from /proc: a process tree's resident memory and CPU time, the machine's
//! busy CPU time, and the kernel's slab and TCP buffer memory. Every reading is a
//! plain snapshot; scenarios subtract two of them.

use std::collections::BTreeMap;
use std::fs;

use serde::{Deserialize, Serialize};

/// Memory and CPU time of a set of processes, summed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcessSample {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// Kernel clock ticks per second (the unit of /proc CPU times).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as f64
    } else {
        100.0
    }
}

/// The fields of /proc/PID/stat after the command name, which may itself hold spaces
/// and parentheses; index 0 is field 3 (state) of proc(5).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// One process's reading; a process that has exited reads as zero.
pub fn sample_process(pid: i32) -> ProcessSample {
    let rss_bytes = fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_size());
    let cpu_seconds = stat_fields(pid)
        .and_then(|f| {
            // utime and stime are fields 14 and 15 of proc(5).
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) as f64 / clock_ticks_per_second())
        })
        .unwrap_or(0.0);
    ProcessSample { rss_bytes, cpu_seconds }
}

/// The sum over several processes.
pub fn sample_processes(pids: &[i32]) -> ProcessSample {
    pids.iter()
        .map(|&p| sample_process(p))
        .fold(ProcessSample::default(), |a, b| ProcessSample {
            rss_bytes: a.rss_bytes + b.rss_bytes,
            cpu_seconds: a.cpu_seconds + b.cpu_seconds,
        })
}

/// `pid` and all its descendants (Node's cluster workers are children of the primary).
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut parents: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            // Field 4 (ppid) is index 1 after the command name.
            if let Some(ppid) = stat_fields(child).and_then(|f| f.get(1)?.parse::<i32>().ok()) {
                parents.entry(ppid).or_default().push(child);
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = parents.get(&tree[i]) {
            tree.extend(kids);
        }
        i += 1;
    }
    tree
}

/// Busy CPU seconds of the whole machine (all CPUs), from /proc/stat.
pub fn machine_busy_seconds() -> f64 {
    let Ok(text) = fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, x)| x)
        .sum();
    busy as f64 / clock_ticks_per_second()
}

/// Kernel memory that grows with sockets.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct KernelMemorySample {
    /// `Slab:` of /proc/meminfo, bytes: all slab caches (noisy on a shared machine).
    pub slab_bytes: u64,
    /// The socket-related slab caches of /proc/slabinfo (TCP, sock_inode_cache,
    /// bind buckets, epoll items, files), bytes.
    pub socket_slab_bytes: u64,
    /// `TCP: mem` of /proc/net/sockstat: pages held by TCP socket buffers, in bytes.
    pub tcp_buffer_bytes: u64,
    /// `TCP: inuse` of /proc/net/sockstat.
    pub tcp_sockets: u64,
}

/// Slab caches whose object count follows the number of TCP sockets.
const SOCKET_SLABS: &[&str] = &[
    "TCP",
    "sock_inode_cache",
    "tcp_bind_bucket",
    "tcp_bind2_bucket",
    "eventpoll_epi",
    "eventpoll_pwq",
    "filp",
    "dentry",
];

/// Reads the kernel's socket memory now.
pub fn sample_kernel_memory() -> KernelMemorySample {
    let mut out = KernelMemorySample::default();
    if let Ok(text) = fs::read_to_string("/proc/meminfo") {
        if let Some(kb) = text
            .lines()
            .find(|l| l.starts_with("Slab:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        {
            out.slab_bytes = kb * 1024;
        }
    }
    // /proc/slabinfo is root-only; without it the figure stays 0 and reports say so.
    if let Ok(text) = fs::read_to_string("/proc/slabinfo") {
        for line in text.lines().skip(2) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 && SOCKET_SLABS.contains(&f[0]) {
                let objs: u64 = f[2].parse().unwrap_or(0);
                let size: u64 = f[3].parse().unwrap_or(0);
                out.socket_slab_bytes += objs * size;
            }
        }
    }
    if let Ok(text) = fs::read_to_string("/proc/net/sockstat") {
        if let Some(line) = text.lines().find(|l| l.starts_with("TCP:")) {
            let f: Vec<&str> = line.split_whitespace().collect();
            for pair in f[1..].chunks(2) {
                if let [k, v] = pair {
                    let v: u64 = v.parse().unwrap_or(0);
                    match *k {
                        "inuse" => out.tcp_sockets = v,
                        "mem" => out.tcp_buffer_bytes = v * page_size(),
                        _ => {}
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = sample_process(std::process::id() as i32);
        assert!(s.rss_bytes > 0);
        assert!(process_tree(std::process::id() as i32).contains(&(std::process::id() as i32)));
    }

    #[test]
    fn missing_process_reads_zero() {
        let s = sample_process(i32::MAX);
        assert_eq!(s.rss_bytes, 0);
        assert_eq!(s.cpu_seconds, 0.0);
    }
}
