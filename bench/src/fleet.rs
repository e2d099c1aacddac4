//! `LoadGenFleet`: the parent's side of the load-generator worker processes. It
//! splits the connections into workers of at most `per_worker` sockets (a process
//! may hold at most 20,000 descriptors here), gives each its own source addresses,
//! spawns them pinned to the load-generator CPUs, and merges what they report.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cpu_pinning;
use crate::error::{BenchError, IoContext};
use crate::latency::LatencyRecorder;
use crate::proc_stats::{self, ProcessSample};
use crate::worker_protocol::{FailureCounts, WireProtocol, WorkerCommand, WorkerEvent, WorkerSpec};

/// Source addresses available: 127.0.0.2 ..= 127.0.0.254.
const SOURCE_POOL: std::ops::RangeInclusive<u8> = 2..=254;

/// How to split and run the load generators for one scenario.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    /// WebSocket addresses of the server(s) under test.
    pub targets: Vec<SocketAddr>,
    /// WebSocket path.
    pub path: String,
    /// What the clients speak.
    pub protocol: WireProtocol,
    /// Total connections.
    pub connections: usize,
    /// Channel name prefix.
    pub channel_prefix: String,
    /// Channels the connections are spread over (connection g → channel g % channels).
    pub channels: usize,
    /// Most sockets per worker process.
    pub per_worker: usize,
    /// Total connects per second across workers (0: unpaced).
    pub connect_rate: f64,
    /// Upgrades in flight per worker.
    pub max_in_flight: usize,
    /// Attempts per connection.
    pub attempts: u32,
    /// CPUs for the workers.
    pub cpus: Vec<usize>,
    /// Workers exit by themselves after this long.
    pub deadline: Duration,
    /// Pre-minted connection tokens, one line per connection (none: anonymous).
    pub token_file: Option<PathBuf>,
    /// Follow offsets; resubscribe with `recover`; move to the next target after a
    /// storm (see [`WorkerSpec`]).
    pub history: HistoryClients,
    /// Clients offer permessage-deflate and inflate what arrives compressed.
    pub offer_deflate: bool,
}

/// How the clients treat channel history (history scenarios; all off elsewhere).
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryClients {
    /// Follow each connection's offsets.
    pub track_offsets: bool,
    /// Resubscribe with `recover` after a storm.
    pub recover: bool,
    /// Connect to the next target after each storm.
    pub failover: bool,
}

/// What the workers reported at the end of the connect phase.
#[derive(Debug, Clone, Default)]
pub struct ReadySummary {
    /// Connections subscribed.
    pub subscribed: usize,
    /// Failures on the way.
    pub failures: FailureCounts,
    /// Seconds from the first connect to the last subscription acknowledged.
    pub connect_seconds: f64,
}

/// Merged answer to a `report` command.
pub struct FleetReport {
    /// Message frames received.
    pub delivered: u64,
    /// Bytes those frames took on the wire.
    pub wire_bytes: u64,
    /// How many of them arrived compressed.
    pub compressed: u64,
    /// All workers' latencies.
    pub latency: LatencyRecorder,
    /// All workers' failures.
    pub failures: FailureCounts,
    /// Workers' resident memory, summed.
    pub rss_bytes: u64,
}

/// Merged result of a storm.
#[derive(Debug, Clone, Default)]
pub struct StormSummary {
    /// Connections subscribed again.
    pub resubscribed: usize,
    /// Failures during the storm.
    pub failures: FailureCounts,
    /// Seconds from the first worker's drop to the last re-subscription anywhere.
    pub seconds: f64,
}

struct WorkerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// Running worker processes.
pub struct LoadGenFleet {
    workers: Vec<WorkerProcess>,
    events: mpsc::UnboundedReceiver<(usize, Result<WorkerEvent, String>)>,
    progress: Vec<(usize, u64)>,
}

impl LoadGenFleet {
    /// Spawns the workers; they start connecting at once.
    pub fn spawn(plan: &FleetPlan) -> Result<LoadGenFleet, BenchError> {
        if plan.connections == 0 {
            return Err(BenchError::Options("no connections to open".into()));
        }
        let count = plan.connections.div_ceil(plan.per_worker.max(1));
        let pool: Vec<u8> = SOURCE_POOL.collect();
        let ips_each = (pool.len() / count).max(1);
        let exe = std::env::current_exe().context(|| "find our own executable".into())?;
        let (tx, events) = mpsc::unbounded_channel();
        let mut workers = Vec::with_capacity(count);
        let mut first = 0;
        for index in 0..count {
            let connections = (plan.connections - first).div_ceil(count - index);
            let source_ips = pool
                .iter()
                .skip(index * ips_each)
                .take(ips_each)
                .map(|&last| Ipv4Addr::new(127, 0, 0, last))
                .collect();
            let spec = WorkerSpec {
                index,
                targets: plan.targets.clone(),
                path: plan.path.clone(),
                subprotocol: match plan.protocol {
                    WireProtocol::Shardcast => "shardcast.v1.json".into(),
                    WireProtocol::ShardcastMsgPack => "shardcast.v1.msgpack".into(),
                    WireProtocol::SocketIo | WireProtocol::Pusher => String::new(),
                },
                protocol: plan.protocol,
                first_connection: first,
                connections,
                channel_prefix: plan.channel_prefix.clone(),
                channels: plan.channels,
                source_ips,
                connect_rate: plan.connect_rate / count as f64,
                max_in_flight: plan.max_in_flight,
                attempts: plan.attempts,
                cpus: plan.cpus.clone(),
                deadline_secs: plan.deadline.as_secs().max(1),
                progress_ms: 50,
                token_file: plan.token_file.clone(),
                track_offsets: plan.history.track_offsets,
                recover: plan.history.recover,
                failover: plan.history.failover,
                offer_deflate: plan.offer_deflate,
            };
            first += connections;
            let mut cmd = Command::new(&exe);
            cmd.arg("worker")
                .arg("--spec")
                .arg(serde_json::to_string(&spec)?)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            cpu_pinning::pin_command(&mut cmd, &plan.cpus);
            let mut child = cmd.spawn().context(|| format!("spawn load-generator worker {index}"))?;
            let stdout = child.stdout.take();
            let stdin = child.stdin.take();
            let tx = tx.clone();
            if let Some(stdout) = stdout {
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        let event = serde_json::from_str::<WorkerEvent>(&line)
                            .map_err(|e| format!("bad event line {line:?}: {e}"));
                        if tx.send((index, event)).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send((index, Err("exited".into())));
                });
            }
            workers.push(WorkerProcess { child, stdin });
        }
        Ok(LoadGenFleet {
            progress: vec![(0, 0); workers.len()],
            workers,
            events,
        })
    }

    /// Number of worker processes.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Process ids of the workers.
    pub fn pids(&self) -> Vec<i32> {
        self.workers.iter().map(|w| w.child.id() as i32).collect()
    }

    /// CPU time and memory of the workers.
    pub fn sample(&self) -> ProcessSample {
        proc_stats::sample_processes(&self.pids())
    }

    /// Subscribed connections, as of the latest progress events.
    pub fn subscribed(&self) -> usize {
        self.progress.iter().map(|p| p.0).sum()
    }

    /// Messages delivered since the last reset, as of the latest progress events.
    pub fn delivered(&self) -> u64 {
        self.progress.iter().map(|p| p.1).sum()
    }

    /// Sends a command to every worker.
    pub fn broadcast(&mut self, cmd: WorkerCommand) -> Result<(), BenchError> {
        let line = serde_json::to_string(&cmd)?;
        for (index, w) in self.workers.iter_mut().enumerate() {
            if let Some(stdin) = w.stdin.as_mut() {
                writeln!(stdin, "{line}").map_err(|e| BenchError::Worker {
                    index,
                    message: format!("cannot send {cmd:?}: {e}"),
                })?;
            }
        }
        if matches!(cmd, WorkerCommand::Reset) {
            for p in &mut self.progress {
                p.1 = 0;
            }
        }
        Ok(())
    }

    /// Waits up to `limit` for the next non-progress event, folding progress events
    /// into the counters on the way. `Ok(None)` when the time is up.
    pub async fn next_event(&mut self, limit: Duration) -> Result<Option<(usize, WorkerEvent)>, BenchError> {
        let until = Instant::now() + limit;
        loop {
            let got = tokio::time::timeout_at(until, self.events.recv()).await;
            match got {
                Err(_) => return Ok(None),
                Ok(None) => {
                    return Err(BenchError::Worker {
                        index: 0,
                        message: "all workers gone".into(),
                    })
                }
                Ok(Some((index, Err(message)))) => return Err(BenchError::Worker { index, message }),
                Ok(Some((index, Ok(WorkerEvent::Progress { subscribed, delivered })))) => {
                    if let Some(p) = self.progress.get_mut(index) {
                        *p = (subscribed, delivered);
                    }
                }
                Ok(Some((index, Ok(WorkerEvent::Failed { message })))) => {
                    return Err(BenchError::Worker { index, message })
                }
                Ok(Some((index, Ok(event)))) => return Ok(Some((index, event))),
            }
        }
    }

    /// Folds in progress events for `limit` (nothing else is expected meanwhile).
    pub async fn pump(&mut self, limit: Duration) -> Result<(), BenchError> {
        let until = Instant::now() + limit;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if let Some((index, event)) = self.next_event(left).await? {
                return Err(BenchError::Worker {
                    index,
                    message: format!("unexpected event {event:?}"),
                });
            }
        }
        Ok(())
    }

    /// Waits for every worker's `ready`, calling `on_progress` about once a second.
    pub async fn wait_ready(
        &mut self,
        limit: Duration,
        mut on_progress: impl FnMut(&LoadGenFleet),
    ) -> Result<ReadySummary, BenchError> {
        let until = Instant::now() + limit;
        let mut pending = self.workers.len();
        let mut summary = ReadySummary::default();
        let (mut first, mut last) = (u64::MAX, 0u64);
        let mut next_progress = Instant::now();
        while pending > 0 {
            let now = Instant::now();
            if now >= until {
                return Err(BenchError::Timeout(format!(
                    "connect phase: {} of {} workers ready after {:?}",
                    self.workers.len() - pending,
                    self.workers.len(),
                    limit
                )));
            }
            if now >= next_progress {
                on_progress(self);
                next_progress = now + Duration::from_secs(1);
            }
            let wait = (until - now).min(Duration::from_millis(250));
            match self.next_event(wait).await? {
                None => {}
                Some((
                    _,
                    WorkerEvent::Ready {
                        subscribed,
                        failures,
                        first_ns,
                        last_ns,
                    },
                )) => {
                    pending -= 1;
                    summary.subscribed += subscribed;
                    summary.failures.add(&failures);
                    if first_ns > 0 {
                        first = first.min(first_ns);
                    }
                    last = last.max(last_ns);
                }
                Some((index, other)) => {
                    return Err(BenchError::Worker {
                        index,
                        message: format!("unexpected event {other:?}"),
                    })
                }
            }
        }
        on_progress(self);
        summary.connect_seconds = last.saturating_sub(first) as f64 / 1e9;
        Ok(summary)
    }

    /// Asks every worker for its report and merges them.
    pub async fn report(&mut self, limit: Duration) -> Result<FleetReport, BenchError> {
        self.broadcast(WorkerCommand::Report)?;
        let mut out = FleetReport {
            delivered: 0,
            wire_bytes: 0,
            compressed: 0,
            latency: LatencyRecorder::new(),
            failures: FailureCounts::default(),
            rss_bytes: 0,
        };
        for _ in 0..self.workers.len() {
            match self.next_event(limit).await? {
                Some((
                    _,
                    WorkerEvent::Report {
                        delivered,
                        wire_bytes,
                        compressed,
                        latency,
                        failures,
                        rss_bytes,
                    },
                )) => {
                    out.delivered += delivered;
                    out.wire_bytes += wire_bytes;
                    out.compressed += compressed;
                    out.latency.merge(&latency);
                    out.failures.add(&failures);
                    out.rss_bytes += rss_bytes;
                }
                Some((index, other)) => {
                    return Err(BenchError::Worker {
                        index,
                        message: format!("expected a report, got {other:?}"),
                    })
                }
                None => return Err(BenchError::Timeout("worker reports".into())),
            }
        }
        Ok(out)
    }

    /// Drops and reconnects every connection at once; waits for all to be back.
    pub async fn storm(
        &mut self,
        limit: Duration,
        mut on_progress: impl FnMut(&LoadGenFleet),
    ) -> Result<StormSummary, BenchError> {
        self.broadcast(WorkerCommand::Storm)?;
        let until = Instant::now() + limit;
        let mut out = StormSummary::default();
        let (mut first, mut last) = (u64::MAX, 0u64);
        let mut pending = self.workers.len();
        let mut next_progress = Instant::now() + Duration::from_secs(1);
        while pending > 0 {
            let now = Instant::now();
            if now >= until {
                return Err(BenchError::Timeout(format!(
                    "storm: {pending} workers not back after {limit:?}"
                )));
            }
            if now >= next_progress {
                on_progress(self);
                next_progress = now + Duration::from_secs(1);
            }
            match self.next_event((until - now).min(Duration::from_millis(250))).await? {
                None => {}
                Some((
                    _,
                    WorkerEvent::StormDone {
                        resubscribed,
                        failures,
                        start_ns,
                        last_ns,
                    },
                )) => {
                    pending -= 1;
                    out.resubscribed += resubscribed;
                    out.failures.add(&failures);
                    first = first.min(start_ns);
                    last = last.max(last_ns);
                }
                Some((index, other)) => {
                    return Err(BenchError::Worker {
                        index,
                        message: format!("expected storm_done, got {other:?}"),
                    })
                }
            }
        }
        out.seconds = last.saturating_sub(first) as f64 / 1e9;
        Ok(out)
    }

    /// Tells the workers to quit and reaps them (killing any that linger).
    pub fn shutdown(mut self) {
        self.stop_workers();
    }

    fn stop_workers(&mut self) {
        let _ = self.broadcast(WorkerCommand::Quit);
        for w in &mut self.workers {
            // Closing stdin is a second way of saying quit.
            w.stdin = None;
        }
        let until = std::time::Instant::now() + Duration::from_secs(5);
        for w in &mut self.workers {
            loop {
                match w.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if std::time::Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = w.child.kill();
                        let _ = w.child.wait();
                        break;
                    }
                }
            }
        }
        self.workers.clear();
    }
}

impl Drop for LoadGenFleet {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.stop_workers();
        }
    }
}
