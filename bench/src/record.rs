//! `ScenarioRecord`: one measured figure set (one scenario, one server, one size,
//! one phase), as written to `bench/results/<scenario>.json` and read back by the
//! report writer.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, IoContext};
use crate::latency::LatencySummary;
use crate::servers::ServerKind;

/// One server's figures for one scenario, size and phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioRecord {
    /// `idle`, `fanout`, `channels`, `storm`, `auth_connect`, `auth_fanout`, `presence`,
    /// or one of the history scenario's `history_publish`, `history_memory`, `history_storm`.
    pub scenario: String,
    /// Server measured.
    pub target: ServerKind,
    /// Connections (idle, storm, channels, history_storm), subscribers of the channel
    /// (fanout), or channels (history_publish, history_memory, presence).
    pub size: usize,
    /// `connect`, `fixed`, `max` or `storm`; for the auth scenario the token scheme
    /// (`none`, `hs256`, `rs256`), after the publishing phase for `auth_fanout`; for the
    /// history scenario its configuration.
    pub phase: String,
    /// Named figures (see BENCHMARKS.md for each name's meaning).
    pub figures: BTreeMap<String, f64>,
    /// Publish-to-delivery latency, for publishing phases.
    pub latency: Option<LatencySummary>,
    /// What limited the figure, judged from CPU use.
    pub limited_by: String,
    /// (connections, server RSS bytes) while connecting, for the idle chart.
    #[serde(default)]
    pub series: Vec<(f64, f64)>,
    /// Anything unusual (errors, drops, first API error).
    #[serde(default)]
    pub notes: Vec<String>,
}

impl ScenarioRecord {
    /// A record with no figures yet.
    pub fn new(scenario: &str, target: ServerKind, size: usize, phase: &str) -> Self {
        ScenarioRecord {
            scenario: scenario.into(),
            target,
            size,
            phase: phase.into(),
            figures: BTreeMap::new(),
            latency: None,
            limited_by: String::new(),
            series: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Sets a figure.
    pub fn set(&mut self, name: &str, value: f64) {
        self.figures.insert(name.into(), value);
    }

    /// A figure, if recorded.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.figures.get(name).copied().filter(|v| v.is_finite())
    }

    /// The range of a figure over repeated runs (`<name>_min`, `<name>_max`), if
    /// the record merges several.
    pub fn range(&self, name: &str) -> Option<(f64, f64)> {
        Some((self.get(&format!("{name}_min"))?, self.get(&format!("{name}_max"))?))
    }

    /// Marks a record whose window other processes disturbed: more than
    /// [`BUSY_SHARE`] of the machine went to them.
    pub fn mark_if_busy(&mut self) -> bool {
        let others = self
            .get("other_cpu_util_max")
            .or_else(|| self.get("other_cpu_util"))
            .unwrap_or(0.0);
        if others <= BUSY_SHARE {
            return false;
        }
        self.set("busy", 1.0);
        self.limited_by = format!(
            "**BUSY: other processes took {:.0}% of the machine (over {:.0}%): not a quiet measurement**; {}",
            others * 100.0,
            BUSY_SHARE * 100.0,
            self.limited_by
        );
        true
    }
}

/// The share of the machine other processes may take in a measured window before
/// its figures are marked busy.
pub const BUSY_SHARE: f64 = 0.10;

/// Merges the records of repeated runs of one job (each run's records in the same
/// order) into one: every figure the median over the runs, with `<name>_min` and
/// `<name>_max`; latency percentiles the median of each; `runs` the count.
pub fn merge_runs(runs: Vec<Vec<ScenarioRecord>>) -> Vec<ScenarioRecord> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    if runs.len() == 1 {
        return runs.into_iter().next().unwrap_or_default();
    }
    let mut merged = Vec::with_capacity(first.len());
    for (i, base) in first.iter().enumerate() {
        let same: Vec<&ScenarioRecord> = runs
            .iter()
            .filter_map(|run| run.get(i))
            .filter(|r| r.phase == base.phase && r.size == base.size)
            .collect();
        let mut out = base.clone();
        for name in base.figures.keys() {
            let mut values: Vec<f64> = same.iter().filter_map(|r| r.get(name)).collect();
            if values.is_empty() {
                continue;
            }
            values.sort_by(f64::total_cmp);
            out.set(name, median(&values));
            out.set(&format!("{name}_min"), values[0]);
            out.set(&format!("{name}_max"), values[values.len() - 1]);
        }
        let latencies: Vec<LatencySummary> = same.iter().filter_map(|r| r.latency).collect();
        if !latencies.is_empty() {
            let pick = |f: fn(&LatencySummary) -> f64| {
                let mut v: Vec<f64> = latencies.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                median(&v)
            };
            out.latency = Some(LatencySummary {
                count: latencies.iter().map(|l| l.count).sum(),
                p50_ms: pick(|l| l.p50_ms),
                p99_ms: pick(|l| l.p99_ms),
                p999_ms: pick(|l| l.p999_ms),
                max_ms: pick(|l| l.max_ms),
                mean_ms: pick(|l| l.mean_ms),
            });
        }
        out.set("runs", same.len() as f64);
        out.limited_by = format!(
            "{} (median of {} runs; first run's judgement)",
            base.limited_by,
            same.len()
        );
        for r in same.iter().skip(1) {
            for n in &r.notes {
                if !out.notes.contains(n) {
                    out.notes.push(n.clone());
                }
            }
        }
        merged.push(out);
    }
    merged
}

/// The median of sorted, non-empty values.
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The machine the figures were taken on, recorded with every results file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineInfo {
    /// Online CPUs.
    pub cpus: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal, bytes.
    pub memory_bytes: u64,
    /// `uname -sr`.
    pub kernel: String,
    /// Per-process descriptor limit (soft, hard).
    pub nofile: (u64, u64),
}

impl MachineInfo {
    /// Reads this machine's description.
    pub fn current() -> MachineInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        let kernel = ["ostype", "osrelease"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .collect::<Vec<_>>()
            .join(" ");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
        MachineInfo {
            cpus: crate::cpu_pinning::online_cpus(),
            cpu_model,
            memory_bytes,
            kernel,
            nofile: (lim.rlim_cur, lim.rlim_max),
        }
    }
}

/// A results file: the machine, the command and its records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultsFile {
    /// Where it ran.
    pub machine: MachineInfo,
    /// The command line.
    pub command: String,
    /// Seconds since the Unix epoch when it finished.
    pub finished_unix: u64,
    /// CPUs the servers were pinned to.
    pub gateway_cpus: Vec<usize>,
    /// CPUs the load generators were pinned to.
    pub loadgen_cpus: Vec<usize>,
    /// The figures.
    pub records: Vec<ScenarioRecord>,
}

impl ResultsFile {
    /// Writes `dir/<name>.json`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(), BenchError> {
        std::fs::create_dir_all(dir).context(|| format!("create {}", dir.display()))?;
        let path = dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, text).context(|| format!("write {}", path.display()))
    }

    /// Reads every `*.json` results file in `dir`, in name order.
    pub fn read_all(dir: &Path) -> Result<Vec<(String, ResultsFile)>, BenchError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(dir).context(|| format!("read {}", dir.display()))?;
        let mut paths: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).context(|| format!("read {}", path.display()))?;
            let file: ResultsFile = serde_json::from_str(&text)?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((name, file));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(deliveries: f64, others: f64, p99: f64) -> Vec<ScenarioRecord> {
        let mut r = ScenarioRecord::new("fanout", ServerKind::Shardcast, 1000, "max");
        r.set("deliveries_per_second", deliveries);
        r.set("other_cpu_util", others);
        r.latency = Some(LatencySummary {
            p99_ms: p99,
            ..LatencySummary::default()
        });
        vec![r]
    }

    #[test]
    fn repeated_runs_merge_into_median_and_range() {
        let merged = merge_runs(vec![
            run(100.0, 0.02, 9.0),
            run(300.0, 0.05, 1.0),
            run(200.0, 0.01, 5.0),
        ]);
        let r = &merged[0];
        assert_eq!(r.get("deliveries_per_second"), Some(200.0));
        assert_eq!(r.range("deliveries_per_second"), Some((100.0, 300.0)));
        assert_eq!(r.get("runs"), Some(3.0));
        assert_eq!(r.latency.map(|l| l.p99_ms), Some(5.0));
    }

    #[test]
    fn a_window_others_took_over_ten_percent_of_is_marked() {
        let mut quiet = merge_runs(vec![run(1.0, 0.05, 1.0), run(1.0, 0.08, 1.0)]);
        assert!(!quiet[0].mark_if_busy());
        let mut busy = merge_runs(vec![run(1.0, 0.05, 1.0), run(1.0, 0.3, 1.0)]);
        assert!(busy[0].mark_if_busy(), "the worst run decides");
        assert!(busy[0].limited_by.contains("BUSY"));
        assert_eq!(busy[0].get("busy"), Some(1.0));
    }
}
