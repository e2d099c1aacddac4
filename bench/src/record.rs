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
    /// `idle`, `fanout`, `channels`, `storm`, `auth_connect`, `auth_fanout`, or one of
    /// the history scenario's `history_publish`, `history_memory`, `history_storm`.
    pub scenario: String,
    /// Server measured.
    pub target: ServerKind,
    /// Connections (idle, storm, channels, history_storm), subscribers of the channel
    /// (fanout), or channels (history_publish, history_memory).
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
