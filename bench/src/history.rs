//! The history and recovery scenarios (issue #12, PROTOCOL.md 19), run together so
//! that their ratios compare runs taken minutes apart on the same machine:
//! - `publish`: publications per second at max rate with history off and on, in
//!   process and through Redis, in batches and as concurrent single publishes, in
//!   interleaved rounds (medians, and the median of each round's on/off ratio);
//!   through Redis also how many publications reach Redis per read it makes
//!   (1 or less would mean one round trip per publication).
//! - `memory`: the RSS a gateway holding N channels × M retained publications
//!   gains, less what the same gateway with history off gains from the same
//!   publications, per publication and over its payload.
//! - `recovery`: reconnect storms with and without `recover`, while publications
//!   keep coming: clients dropping their connections to one gateway, and a gateway
//!   SIGKILLed with its clients moving to a second one that shares Redis. Every
//!   client checks the offsets it receives for holes and duplicates.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::time::Instant;

use crate::error::BenchError;
use crate::fleet::{HistoryClients, LoadGenFleet};
use crate::http_client::{self, ApiClient};
use crate::proc_stats;
use crate::publisher::{run_publisher, PayloadShape, PublishLoad, PublishProgress};
use crate::record::ScenarioRecord;
use crate::scenarios::{judge_limit, progress_line, CpuWindow, Harness, Outcome, Pace, PublishKnobs};
use crate::servers::{ServerKind, ServerUnderTest};
use crate::stream_cursor::OffsetCounts;
use crate::worker_protocol::{WorkerCommand, WorkerEvent};

/// A part of the history scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HistoryPart {
    /// Publications per second, history on and off.
    Publish,
    /// Memory per retained publication.
    Memory,
    /// Reconnect storms with and without recovery.
    Recovery,
}

/// Options of the history scenario.
#[derive(Args, Clone, Debug)]
pub struct HistoryArgs {
    /// Parts to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "publish,memory,recovery")]
    pub parts: Vec<HistoryPart>,
    /// Publications kept per channel where history is on (`--history-size`).
    #[arg(long, default_value_t = 100)]
    pub history_size: u32,
    /// Size of each publication's data, bytes.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// publish: channels published to, one subscriber each.
    #[arg(long, default_value_t = 1000)]
    pub publish_channels: usize,
    /// publish: publications per request of the batched runs (at most 1000).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// publish: HTTP connections of the batched runs.
    #[arg(long, default_value_t = 2)]
    pub batch_connections: usize,
    /// publish: HTTP connections of the single-publication runs, each with one
    /// request in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrent_singles: usize,
    /// publish: seconds of max-rate publishing per run.
    #[arg(long, default_value_t = 5.0)]
    pub publish_seconds: f64,
    /// publish: rounds of every configuration, interleaved.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// memory: channels × publications retained per channel, e.g. 10000x100.
    #[arg(long, value_delimiter = ',', default_value = "1000x100,10000x100")]
    pub memory: Vec<String>,
    /// recovery: clients (ten per channel).
    #[arg(long, default_value_t = 19000)]
    pub storm_connections: usize,
    /// recovery: publications per second per channel while the storm runs.
    #[arg(long, default_value_t = 1.0)]
    pub storm_rate_per_channel: f64,
    /// recovery: seconds of steady publishing before the storm; the live phase after
    /// it lasts half as long, and the wait for the last deliveries three quarters.
    #[arg(long, default_value_t = 2.0)]
    pub storm_settle_seconds: f64,
}

/// Where a configuration keeps its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    InProcess,
    Redis,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::InProcess => "in-process",
            Store::Redis => "Redis",
        }
    }
}

/// One configuration of the publish part.
#[derive(Debug, Clone, Copy)]
struct PublishConfig {
    store: Store,
    singles: bool,
    history: bool,
}

/// How the clients of a storm lose their connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StormKind {
    /// The clients drop them (the gateway and its history stay).
    Drop,
    /// Their gateway is SIGKILLed; they reconnect to the second gateway.
    Kill,
}

impl Harness {
    /// Runs the history scenario's parts.
    pub async fn history(&self, args: &HistoryArgs) -> Outcome {
        let mut outcome = Outcome::default();
        if self.targets.iter().any(|t| *t != ServerKind::Shardcast) {
            eprintln!("history: only shardcast keeps history; the other servers are skipped");
        }
        for part in &args.parts {
            match part {
                HistoryPart::Publish => self.history_publish(args, &mut outcome).await,
                HistoryPart::Memory => self.history_memory(args, &mut outcome).await,
                HistoryPart::Recovery => self.history_recovery(args, &mut outcome).await,
            }
        }
        let load = loadavg();
        for r in &mut outcome.records {
            r.set("loadavg_1m_at_end", load);
        }
        outcome
    }

    /// This harness for one shardcast configuration: history size (0: off), one
    /// gateway or more, through Redis or not.
    fn history_harness(&self, redis: bool, gateways: usize, history_size: u32) -> Harness {
        let mut h = self.clone();
        h.targets = vec![ServerKind::Shardcast];
        h.servers.via_redis = redis;
        h.servers.gateways = gateways;
        h.servers
            .shardcast_args
            .extend(["--history-size".to_owned(), history_size.to_string()]);
        h
    }

    async fn history_publish(&self, args: &HistoryArgs, outcome: &mut Outcome) {
        let mut configs = Vec::new();
        for store in [Store::InProcess, Store::Redis] {
            for singles in [false, true] {
                for history in [false, true] {
                    configs.push(PublishConfig {
                        store,
                        singles,
                        history,
                    });
                }
            }
        }
        let label = |c: &PublishConfig| {
            format!(
                "{} · {} · history {}",
                if c.singles {
                    format!("{} concurrent singles", args.concurrent_singles)
                } else {
                    format!("batches of {}", args.batch.clamp(1, 1000))
                },
                c.store.name(),
                if c.history { "on" } else { "off" }
            )
        };
        // Rounds interleave the configurations, so drift in what the rest of the
        // machine does falls on all of them alike.
        let mut runs: Vec<(usize, usize, ScenarioRecord)> = Vec::new();
        for round in 1..=args.rounds.max(1) {
            for (i, c) in configs.iter().enumerate() {
                let harness = self.history_harness(
                    c.store == Store::Redis,
                    1,
                    if c.history { args.history_size } else { 0 },
                );
                let knobs = PublishKnobs {
                    rate: 0.0,
                    offered_deliveries: None,
                    fixed_seconds: 0.0,
                    max_seconds: args.publish_seconds,
                    batch: if c.singles { 1 } else { args.batch.clamp(1, 1000) },
                    http_connections: if c.singles {
                        args.concurrent_singles
                    } else {
                        args.batch_connections
                    },
                    payload_bytes: args.payload_bytes,
                    shape: PayloadShape::Padding,
                    max_publications: 100_000_000,
                };
                eprintln!("== history publish round {round}: {} ==", label(c));
                match harness.publish_once(args.publish_channels, &knobs).await {
                    Ok(mut rec) => {
                        rec.phase = label(c);
                        eprintln!(
                            "   {:.0} publications/s, {:.1} µs server CPU each, other processes {:.0}% of the machine [{}]",
                            rec.get("publications_per_second").unwrap_or(f64::NAN),
                            rec.get("server_cpu_us_per_publication").unwrap_or(f64::NAN),
                            rec.get("other_cpu_util").unwrap_or(f64::NAN) * 100.0,
                            rec.limited_by
                        );
                        if self.strict
                            && (rec.get("published").unwrap_or(0.0) <= 0.0
                                || rec.get("publish_errors").unwrap_or(0.0) > 0.0)
                        {
                            eprintln!("!! history publish {}: {:?}", rec.phase, rec.notes);
                            outcome.failures += 1;
                        }
                        runs.push((i, round, rec));
                    }
                    Err(e) => {
                        eprintln!("!! history publish {}: {e}", label(c));
                        outcome.failures += 1;
                    }
                }
            }
        }
        for (i, c) in configs.iter().enumerate() {
            let mine: Vec<&(usize, usize, ScenarioRecord)> = runs.iter().filter(|r| r.0 == i).collect();
            let Some(mut rec) = median_run(&mine) else { continue };
            // Per-publication figures: each one's median over the rounds.
            let by_thread: Vec<String> = mine
                .iter()
                .flat_map(|r| r.2.figures.keys())
                .filter(|k| k.starts_with(THREAD_FIGURE))
                .cloned()
                .collect();
            for key in PER_PUBLICATION_FIGURES
                .iter()
                .copied()
                .chain(by_thread.iter().map(String::as_str))
            {
                let values: Vec<f64> = mine.iter().filter_map(|r| r.2.get(key)).collect();
                if let Some(m) = median(&values) {
                    rec.set(key, m);
                }
            }
            if c.history {
                // The ratio of each round's on and off runs, then their median: for the
                // rate, and for publications per CPU-second of the gateway and its Redis
                // (which share the server's core), steadier on a busy machine.
                let off = configs
                    .iter()
                    .position(|o| o.store == c.store && o.singles == c.singles && !o.history);
                for (key, name) in [
                    ("publications_per_second", "vs_history_off"),
                    ("publications_per_stack_cpu_second", "cpu_vs_history_off"),
                ] {
                    let ratios: Vec<f64> = mine
                        .iter()
                        .filter_map(|(_, round, on)| {
                            let off = runs.iter().find(|r| Some(r.0) == off && r.1 == *round)?;
                            Some(on.get(key)? / off.2.get(key)?)
                        })
                        .collect();
                    if let Some(m) = median(&ratios) {
                        rec.set(name, m);
                        rec.set(
                            &format!("{name}_min"),
                            ratios.iter().copied().fold(f64::INFINITY, f64::min),
                        );
                        rec.set(&format!("{name}_max"), ratios.iter().copied().fold(0.0, f64::max));
                    }
                }
            }
            outcome.records.push(rec);
        }
    }

    /// One max-rate publishing run on a fresh gateway; Redis's read count around it.
    async fn publish_once(&self, channels: usize, knobs: &PublishKnobs) -> Result<ScenarioRecord, BenchError> {
        let server = ServerUnderTest::start(ServerKind::Shardcast, &self.servers)?;
        let redis = server.redis.as_ref().map(|r| r.addr);
        let reads0 = redis.and_then(redis_reads);
        let switches0 = context_switches(&server.pids());
        let threads0 = thread_cpu(&server.pids());
        let run = tokio::time::timeout(
            self.time_limit,
            self.publish_scenario(&server, "history_publish", channels, channels, knobs),
        )
        .await;
        let reads1 = redis.and_then(redis_reads);
        let switches = context_switches(&server.pids()).saturating_sub(switches0);
        let threads = thread_cpu(&server.pids());
        let log = server.log_tail();
        server.stop();
        let records = match run {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                for line in log.iter().rev().take(5) {
                    eprintln!("   server log: {line}");
                }
                return Err(e);
            }
            Err(_) => return Err(BenchError::Timeout("history publish run".into())),
        };
        let mut rec = records
            .into_iter()
            .last()
            .ok_or_else(|| BenchError::Options("the publish run measured nothing".into()))?;
        let published = rec.get("published").unwrap_or(0.0);
        let per = |k: &str| rec.get(k).unwrap_or(0.0) * 1e6 / published.max(1.0);
        let (server_us, redis_us) = (per("server_cpu_seconds"), per("redis_cpu_seconds"));
        rec.set("server_cpu_us_per_publication", server_us);
        rec.set(
            "publications_per_stack_cpu_second",
            1e6 / (server_us + redis_us).max(1e-9),
        );
        // Thread handoffs show here: on a pinned core each one is a context switch.
        rec.set(
            "server_context_switches_per_publication",
            switches as f64 / published.max(1.0),
        );
        // Where the gateway's CPU went, by thread name (the history store is the
        // `inprocess-bus` thread's; `shard-N` encodes and writes the deliveries).
        for (name, cpu) in &threads {
            let spent = cpu - threads0.get(name).copied().unwrap_or(0.0);
            rec.set(&format!("{THREAD_FIGURE}{name}"), spent * 1e6 / published.max(1.0));
        }
        if let (Some(a), Some(b)) = (reads0, reads1) {
            rec.set("redis_reads", b - a);
            rec.set("publications_per_redis_read", published / (b - a).max(1.0));
            rec.set("redis_cpu_us_per_publication", redis_us);
        }
        Ok(rec)
    }

    async fn history_memory(&self, args: &HistoryArgs, outcome: &mut Outcome) {
        for spec in &args.memory {
            let Some((n, m)) = spec
                .split_once('x')
                .and_then(|(n, m)| Some((n.trim().parse::<usize>().ok()?, m.trim().parse::<u32>().ok()?)))
            else {
                eprintln!("!! history memory: {spec:?} is not CHANNELSxPUBLICATIONS");
                outcome.failures += 1;
                continue;
            };
            let mut pair = Vec::new();
            for history in [false, true] {
                let harness = self.history_harness(false, 1, if history { m } else { 0 });
                eprintln!(
                    "== history memory {n}×{m}, history {} ==",
                    if history { "on" } else { "off" }
                );
                match tokio::time::timeout(self.time_limit, harness.memory_once(n, m, args.payload_bytes, history))
                    .await
                {
                    Ok(Ok(rec)) => pair.push(rec),
                    Ok(Err(e)) => {
                        eprintln!("!! history memory {n}×{m}: {e}");
                        outcome.failures += 1;
                    }
                    Err(_) => {
                        eprintln!("!! history memory {n}×{m}: time limit reached");
                        outcome.failures += 1;
                    }
                }
            }
            if let [off, on] = pair.as_mut_slice() {
                let count = (n as f64) * f64::from(m);
                let gained = |r: &ScenarioRecord| r.get("rss_gained_bytes").unwrap_or(0.0);
                let per = (gained(on) - gained(off)) / count;
                on.set("bytes_per_publication", per);
                on.set("overhead_bytes_per_publication", per - args.payload_bytes as f64);
                eprintln!(
                    "   {n}×{m}: RSS {:.1} MiB with history, {:.1} MiB without; {per:.0} B per retained publication ({:.0} B over its {} B payload)",
                    on.get("rss_after_bytes").unwrap_or(0.0) / 1048576.0,
                    off.get("rss_after_bytes").unwrap_or(0.0) / 1048576.0,
                    per - args.payload_bytes as f64,
                    args.payload_bytes
                );
                if on.get("store_publications").is_some_and(|s| s < count) {
                    on.notes.push(format!(
                        "the gateway's shardcast_history_publications reads {} for {count} retained publications",
                        on.get("store_publications").unwrap_or(0.0)
                    ));
                }
            }
            outcome.records.extend(pair);
        }
    }

    /// Publishes `m` publications to each of `n` channels (no subscribers) on a fresh
    /// gateway and records its RSS before and after.
    async fn memory_once(
        &self,
        n: usize,
        m: u32,
        payload_bytes: usize,
        history: bool,
    ) -> Result<ScenarioRecord, BenchError> {
        let server = ServerUnderTest::start(ServerKind::Shardcast, &self.servers)?;
        let phase = format!("{n}×{m} history {}", if history { "on" } else { "off" });
        let mut rec = ScenarioRecord::new("history_memory", ServerKind::Shardcast, n, &phase);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = server.sample();
        let busy = MachineWindow::start(&server);
        // A JSON string of exactly `payload_bytes` bytes: what the store keeps.
        let data = format!("\"{}\"", "x".repeat(payload_bytes.saturating_sub(2)));
        let total = n * m as usize;
        let per_request = (900_000 / (payload_bytes + 40)).clamp(1, 1000);
        let mut client = ApiClient::connect(server.admin).await?;
        let mut next = 0;
        while next < total {
            let count = per_request.min(total - next);
            let mut body = String::with_capacity(count * (payload_bytes + 40) + 2);
            body.push('[');
            for i in next..next + count {
                if i > next {
                    body.push(',');
                }
                // Consecutive publications go to consecutive channels, so every
                // channel ends with exactly `m`.
                let _ = write!(body, r#"{{"channel":"mem-{}","data":{data}}}"#, i % n);
            }
            body.push(']');
            match client.request("POST", "/api/publish", body.as_bytes()).await? {
                (200, _) => {}
                (status, body) => {
                    return Err(BenchError::Api {
                        status,
                        body: String::from_utf8_lossy(&body).chars().take(300).collect(),
                    })
                }
            }
            next += count;
        }
        let fill_seconds = busy.at.elapsed().as_secs_f64();
        busy.finish(&server, &mut rec);
        // Settle: let the bus thread and the allocator finish.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = server.sample();
        let metrics = http_client::get(server.admin, "/metrics").await.unwrap_or_default();
        server.stop();
        rec.set("channels", n as f64);
        rec.set("retained_per_channel", f64::from(m));
        rec.set("publications", total as f64);
        rec.set("payload_bytes", payload_bytes as f64);
        rec.set("fill_seconds", fill_seconds);
        rec.set("rss_before_bytes", before.rss_bytes as f64);
        rec.set("rss_after_bytes", after.rss_bytes as f64);
        rec.set("rss_gained_bytes", after.rss_bytes as f64 - before.rss_bytes as f64);
        if let Some(v) = metric_value(&metrics, "shardcast_history_publications") {
            rec.set("store_publications", v);
        }
        if let Some(v) = metric_value(&metrics, "shardcast_history_channels") {
            rec.set("store_channels", v);
        }
        Ok(rec)
    }

    async fn history_recovery(&self, args: &HistoryArgs, outcome: &mut Outcome) {
        let n = args.storm_connections;
        let channels = (n / 10).max(1);
        let rate = (args.storm_rate_per_channel * channels as f64).max(1.0);
        let mut records = Vec::new();
        for kind in [StormKind::Drop, StormKind::Kill] {
            for recover in [false, true] {
                let harness = match kind {
                    StormKind::Drop => self.history_harness(false, 1, args.history_size),
                    StormKind::Kill => self.history_harness(true, 2, args.history_size),
                };
                let what = format!("{} · recover {}", kind.label(), if recover { "on" } else { "off" });
                eprintln!("== history storm {n}: {what} ==");
                let server = match ServerUnderTest::start(ServerKind::Shardcast, &harness.servers) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("!! history storm {what}: {e}");
                        outcome.failures += 1;
                        continue;
                    }
                };
                let storm = StormSpec {
                    kind,
                    recover,
                    connections: n,
                    channels,
                    rate,
                    payload_bytes: args.payload_bytes,
                    settle: Duration::from_secs_f64(args.storm_settle_seconds.max(0.1)),
                };
                let run = tokio::time::timeout(harness.time_limit, harness.storm_with_history(&server, &storm)).await;
                match run {
                    Ok(Ok(mut rec)) => {
                        rec.phase = what.clone();
                        rec.set("gateways", harness.servers.gateways as f64);
                        eprintln!(
                            "   {:.0}/{n} back in {:.2} s; recovered {:.0}, not recovered {:.0}; missed {:.0}, duplicated {:.0} [{}]",
                            rec.get("resubscribed").unwrap_or(0.0),
                            rec.get("storm_seconds").unwrap_or(f64::NAN),
                            rec.get("recovered").unwrap_or(0.0),
                            rec.get("not_recovered").unwrap_or(0.0),
                            rec.get("missed").unwrap_or(0.0),
                            rec.get("duplicates").unwrap_or(0.0),
                            rec.limited_by
                        );
                        if let Some(problem) = self.strict.then(|| storm_problem(&rec, recover)).flatten() {
                            eprintln!("!! history storm {what}: {problem}");
                            outcome.failures += 1;
                        }
                        records.push((kind, recover, rec));
                    }
                    Ok(Err(e)) => {
                        eprintln!("!! history storm {what}: {e}");
                        for line in server.log_tail().iter().rev().take(5) {
                            eprintln!("   server log: {line}");
                        }
                        outcome.failures += 1;
                    }
                    Err(_) => {
                        eprintln!("!! history storm {what}: time limit reached");
                        outcome.failures += 1;
                    }
                }
                server.stop();
            }
        }
        // Each storm with recovery against the same storm without it.
        let baselines: Vec<(StormKind, f64)> = records
            .iter()
            .filter(|(_, recover, _)| !recover)
            .filter_map(|(kind, _, r)| Some((*kind, r.get("storm_seconds")?)))
            .collect();
        for (kind, recover, rec) in &mut records {
            if let (true, Some((_, base))) = (*recover, baselines.iter().find(|(k, _)| k == kind)) {
                if let Some(s) = rec.get("storm_seconds") {
                    rec.set("vs_no_recover", s / base.max(1e-9));
                }
            }
        }
        outcome.records.extend(records.into_iter().map(|(_, _, r)| r));
    }

    /// One storm while publications keep coming: clients connected and positioned,
    /// then dropped (or their gateway killed), reconnected (to the second gateway
    /// after a kill), with or without `recover`; counted back once each has received
    /// what its recovery returned.
    async fn storm_with_history(
        &self,
        server: &ServerUnderTest,
        storm: &StormSpec,
    ) -> Result<ScenarioRecord, BenchError> {
        let n = storm.connections;
        let mut rec = ScenarioRecord::new("history_storm", ServerKind::Shardcast, n, "storm");
        let mut plan = self.plan(server, n, "recovery-", storm.channels);
        plan.history = HistoryClients {
            track_offsets: true,
            recover: storm.recover,
            failover: storm.kind == StormKind::Kill,
        };
        let mut fleet = LoadGenFleet::spawn(&plan)?;
        let tag = format!("history storm {n}");
        let ready = fleet
            .wait_ready(self.time_limit, |f| progress_line(&tag, f, server, n))
            .await?;
        // After a kill, publications go on through the surviving gateway.
        let admin = match storm.kind {
            StormKind::Kill => *server
                .admins
                .get(1)
                .ok_or_else(|| BenchError::Options("the kill storm needs two gateways".into()))?,
            StormKind::Drop => server.admin,
        };
        let progress = Arc::new(PublishProgress::default());
        let load = PublishLoad {
            rate: Some(storm.rate),
            duration: self.time_limit,
            max_publications: u64::MAX,
            batch: 1,
            http_connections: 2,
            payload_bytes: storm.payload_bytes,
            shape: PayloadShape::Padding,
            channel_prefix: "recovery-".into(),
            channels: storm.channels,
            deliveries_per_publication: (n / storm.channels.max(1)) as u64,
            window_deliveries: u64::MAX,
        };
        let publisher = tokio::spawn(run_publisher(admin, load, progress.clone()));
        // Every connection receives a few publications, so it has a position.
        fleet.pump(storm.settle).await?;
        let window = CpuWindow::start(server, &fleet);
        // After a kill only the second gateway (and Redis) is the server: the
        // killed one's CPU time cannot be read once it is gone.
        let survivor = server.pids().get(1).copied();
        let survivor_cpu0 = survivor.map(|p| proc_stats::sample_process(p).cpu_seconds);
        let published_before = progress.published.load(Ordering::Relaxed);
        let killed_at = Instant::now();
        if storm.kind == StormKind::Kill && !server.kill_process(0) {
            return Err(BenchError::Options("cannot SIGKILL the first gateway".into()));
        }
        let result = fleet
            .storm(self.time_limit, |f| progress_line(&tag, f, server, n))
            .await?;
        let since_kill = killed_at.elapsed().as_secs_f64();
        let wall = window.finish(server, &fleet, &mut rec);
        if let (StormKind::Kill, Some(pid), Some(cpu0)) = (storm.kind, survivor, survivor_cpu0) {
            let s = proc_stats::sample_process(pid).cpu_seconds - cpu0;
            let r = rec.get("redis_cpu_seconds").unwrap_or(0.0);
            rec.set("server_cpu_seconds", s);
            rec.set(
                "server_cpu_util",
                (s + r) / wall / self.servers.cpus.len().max(1) as f64,
            );
        }
        let published_during = progress.published.load(Ordering::Relaxed) - published_before;
        // Live publications after the storm, then the last deliveries.
        fleet.pump(storm.settle / 2).await?;
        progress.stop.store(true, Ordering::Relaxed);
        let published = publisher
            .await
            .map_err(|e| BenchError::Options(format!("publisher task failed: {e}")))??;
        fleet.pump(storm.settle * 3 / 4).await?;
        let counts = offset_counts(&mut fleet).await?;
        fleet.shutdown();
        rec.set("connections", ready.subscribed as f64);
        rec.set("channels", storm.channels as f64);
        rec.set("resubscribed", result.resubscribed as f64);
        rec.set("storm_seconds", result.seconds);
        rec.set("seconds_since_kill", since_kill);
        rec.set("reconnect_rate", result.resubscribed as f64 / result.seconds.max(1e-9));
        rec.set("refused", result.failures.refused as f64);
        rec.set("io_errors", result.failures.io_errors as f64);
        rec.set("timeouts", result.failures.timeouts as f64);
        rec.set("gave_up", result.failures.gave_up as f64);
        rec.set("offered_publications_per_second", storm.rate);
        rec.set("published", published.published as f64);
        rec.set("published_during_storm", published_during as f64);
        rec.set("publish_errors", published.errors as f64);
        rec.set("recovered", counts.recovered as f64);
        rec.set("not_recovered", counts.not_recovered as f64);
        rec.set("missed", counts.missed as f64);
        rec.set("duplicates", counts.duplicates as f64);
        rec.set("messages_with_offset", counts.with_offset as f64);
        if let Ok(first) = progress.first_error.lock() {
            if let Some(e) = first.as_ref() {
                rec.notes.push(format!("first publish error: {e}"));
            }
        }
        rec.limited_by = judge_limit(&rec, Pace::Reconnects);
        Ok(rec)
    }
}

impl StormKind {
    fn label(self) -> &'static str {
        match self {
            StormKind::Drop => "clients drop (in-process history)",
            StormKind::Kill => "gateway SIGKILLed (2 gateways, Redis history)",
        }
    }
}

/// One storm of the recovery part.
struct StormSpec {
    kind: StormKind,
    recover: bool,
    connections: usize,
    channels: usize,
    /// Publications per second, all channels together.
    rate: f64,
    payload_bytes: usize,
    /// Steady publishing before the storm.
    settle: Duration,
}

/// Why a storm record fails the smoke test, if it does.
fn storm_problem(r: &ScenarioRecord, recover: bool) -> Option<String> {
    let count = |k: &str| r.get(k).unwrap_or(0.0);
    if count("resubscribed") < r.size as f64 {
        return Some(format!("only {} of {} came back", count("resubscribed"), r.size));
    }
    if recover && (count("missed") > 0.0 || count("duplicates") > 0.0 || count("not_recovered") > 0.0) {
        return Some(format!(
            "with recovery: {} missed, {} duplicated, {} not recovered",
            count("missed"),
            count("duplicates"),
            count("not_recovered")
        ));
    }
    None
}

/// Every worker's offset counts, added up.
async fn offset_counts(fleet: &mut LoadGenFleet) -> Result<OffsetCounts, BenchError> {
    fleet.broadcast(WorkerCommand::Offsets)?;
    let mut total = OffsetCounts::default();
    for _ in 0..fleet.worker_count() {
        match fleet.next_event(Duration::from_secs(10)).await? {
            Some((_, WorkerEvent::Offsets { counts })) => total.add(&counts),
            Some((index, other)) => {
                return Err(BenchError::Worker {
                    index,
                    message: format!("expected offsets, got {other:?}"),
                })
            }
            None => return Err(BenchError::Timeout("worker offset counts".into())),
        }
    }
    Ok(total)
}

/// CPU use of the server and of everything else over a window without load
/// generators (the memory part's fill).
struct MachineWindow {
    at: Instant,
    server: f64,
    harness: f64,
    machine: f64,
}

impl MachineWindow {
    fn start(server: &ServerUnderTest) -> MachineWindow {
        MachineWindow {
            at: Instant::now(),
            server: server.sample().cpu_seconds + server.sample_redis().cpu_seconds,
            harness: proc_stats::sample_process(std::process::id() as i32).cpu_seconds,
            machine: proc_stats::machine_busy_seconds(),
        }
    }

    fn finish(&self, server: &ServerUnderTest, rec: &mut ScenarioRecord) {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let s = server.sample().cpu_seconds + server.sample_redis().cpu_seconds - self.server;
        let h = proc_stats::sample_process(std::process::id() as i32).cpu_seconds - self.harness;
        let m = proc_stats::machine_busy_seconds() - self.machine;
        rec.set("server_cpu_seconds", s);
        rec.set(
            "other_cpu_util",
            (m - s - h).max(0.0) / wall / crate::cpu_pinning::online_cpus() as f64,
        );
    }
}

/// Context switches (voluntary and not) of every thread of these processes so far.
fn context_switches(pids: &[i32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            total += status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    total
}

/// CPU seconds of every thread of these processes so far, summed by thread name.
fn thread_cpu(pids: &[i32]) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            // `tid (comm) state ...`: utime and stime are fields 14 and 15.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            *out.entry(stat[open + 1..close].to_owned()).or_insert(0.0) +=
                (ticks(11) + ticks(12)) / proc_stats::clock_ticks_per_second();
        }
    }
    out
}

/// The 1-minute load average of the machine.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A series' value in a Prometheus text exposition (the first line of that name).
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == name || series.starts_with(&format!("{name}{{"))).then(|| value.parse().ok())?
    })
}

/// `total_reads_processed` of a Redis (`INFO stats`): the read events it served.
fn redis_reads(addr: SocketAddr) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"INFO stats\r\n").ok()?;
    let mut text = Vec::new();
    let mut buf = [0u8; 8192];
    // A bulk reply: `$<len>\r\n<text>\r\n`; read until the field is in.
    while !text.windows(22).any(|w| w == b"total_reads_processed:") || !text.ends_with(b"\r\n") {
        let got = s.read(&mut buf).ok()?;
        if got == 0 || text.len() > 1 << 16 {
            break;
        }
        text.extend_from_slice(&buf[..got]);
    }
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Prefix of the per-thread figures: server CPU µs per publication by thread name.
const THREAD_FIGURE: &str = "thread_cpu_us_per_publication:";

/// Figures of the publish part reported as their median over the rounds.
const PER_PUBLICATION_FIGURES: [&str; 5] = [
    "server_cpu_us_per_publication",
    "redis_cpu_us_per_publication",
    "server_context_switches_per_publication",
    "publications_per_redis_read",
    "publications_per_stack_cpu_second",
];

/// The median of a list (none when empty).
fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// The run of a configuration whose publication rate is the median (the lower
/// middle one for an even count), with the range over rounds added.
fn median_run(runs: &[&(usize, usize, ScenarioRecord)]) -> Option<ScenarioRecord> {
    let rate = |r: &ScenarioRecord| r.get("publications_per_second").unwrap_or(0.0);
    let mut sorted: Vec<&ScenarioRecord> = runs.iter().map(|r| &r.2).collect();
    sorted.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let mut rec = (*sorted.get((sorted.len().max(1) - 1) / 2)?).clone();
    rec.set("rounds", sorted.len() as f64);
    rec.set("publications_per_second_min", sorted.first().map_or(0.0, |r| rate(r)));
    rec.set("publications_per_second_max", sorted.last().map_or(0.0, |r| rate(r)));
    let others: Vec<f64> = sorted.iter().filter_map(|r| r.get("other_cpu_util")).collect();
    rec.set("other_cpu_util_max", others.iter().copied().fold(0.0, f64::max));
    Some(rec)
}

/// "0.912× (0.850–0.990)": a median ratio and its range over rounds.
fn ratio_cell(r: &ScenarioRecord, name: &str) -> String {
    r.get(name).map_or(String::new(), |v| {
        format!(
            "{v:.3}× ({:.3}–{:.3})",
            r.get(&format!("{name}_min")).unwrap_or(f64::NAN),
            r.get(&format!("{name}_max")).unwrap_or(f64::NAN)
        )
    })
}

/// "shardcast 17.8, shard-0 10.6, inprocess-bus 2.4": the per-thread figures that
/// are not negligible, largest first.
fn by_thread(r: &ScenarioRecord) -> String {
    let mut threads: Vec<(&str, f64)> = r
        .figures
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(THREAD_FIGURE)?, *v)))
        .filter(|(_, v)| *v >= 0.05)
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    threads
        .iter()
        .map(|(name, v)| format!("{name} {v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.0}%", v * 100.0))
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// The summary tables of the history scenario's records.
pub fn history_tables(records: &[ScenarioRecord]) -> String {
    let mut out = String::new();
    let publish: Vec<&ScenarioRecord> = records.iter().filter(|r| r.scenario == "history_publish").collect();
    if !publish.is_empty() {
        out.push_str("| configuration | publications/s (median) | range over rounds | vs history off (median of rounds) | per CPU-second vs history off | server CPU µs / publication | by thread (µs / publication) | server context switches / publication | Redis CPU µs / publication | publications per Redis read | other processes (median run, max) | limited by |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in publish {
            let _ = writeln!(
                out,
                "| {} | {} | {}–{} | {} | {} | {} | {} | {} | {} | {} | {}, {} | {} |",
                r.phase,
                num(r.get("publications_per_second"), 0),
                num(r.get("publications_per_second_min"), 0),
                num(r.get("publications_per_second_max"), 0),
                ratio_cell(r, "vs_history_off"),
                ratio_cell(r, "cpu_vs_history_off"),
                num(r.get("server_cpu_us_per_publication"), 1),
                by_thread(r),
                num(r.get("server_context_switches_per_publication"), 2),
                num(r.get("redis_cpu_us_per_publication"), 1),
                num(r.get("publications_per_redis_read"), 1),
                pct(r.get("other_cpu_util")),
                pct(r.get("other_cpu_util_max")),
                r.limited_by
            );
        }
        out.push('\n');
    }
    let memory: Vec<&ScenarioRecord> = records.iter().filter(|r| r.scenario == "history_memory").collect();
    if !memory.is_empty() {
        out.push_str("| channels × retained | history | RSS after (MiB) | RSS gained (MiB) | store holds | bytes / retained publication | over the payload | other processes |\n|---|---|---|---|---|---|---|---|\n");
        for r in memory {
            let (size, history) = r.phase.rsplit_once(" history ").unwrap_or((&r.phase, ""));
            let _ = writeln!(
                out,
                "| {size} | {history} | {:.1} | {:.1} | {} | {} | {} | {} |",
                r.get("rss_after_bytes").unwrap_or(0.0) / 1048576.0,
                r.get("rss_gained_bytes").unwrap_or(0.0) / 1048576.0,
                num(r.get("store_publications"), 0),
                num(r.get("bytes_per_publication"), 0),
                num(r.get("overhead_bytes_per_publication"), 0),
                pct(r.get("other_cpu_util"))
            );
        }
        out.push('\n');
    }
    let storms: Vec<&ScenarioRecord> = records.iter().filter(|r| r.scenario == "history_storm").collect();
    if !storms.is_empty() {
        out.push_str("| clients | storm | back | seconds | vs without recover | recovered | not recovered | missed | duplicated | published during the storm | other processes | limited by |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in storms {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.size,
                r.phase,
                num(r.get("resubscribed"), 0),
                num(r.get("storm_seconds"), 2),
                r.get("vs_no_recover").map_or(String::new(), |v| format!("{v:.2}×")),
                num(r.get("recovered"), 0),
                num(r.get("not_recovered"), 0),
                num(r.get("missed"), 0),
                num(r.get("duplicates"), 0),
                num(r.get("published_during_storm"), 0),
                pct(r.get("other_cpu_util")),
                r.limited_by
            );
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_metric_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let text = "# HELP x\nshardcast_history_publications 1200\nshardcast_history_channels{a=\"b\"} 12\n";
        assert_eq!(metric_value(text, "shardcast_history_publications"), Some(1200.0));
        assert_eq!(metric_value(text, "shardcast_history_channels"), Some(12.0));
        assert_eq!(metric_value(text, "shardcast_history"), None);
    }
}
