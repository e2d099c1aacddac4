//! The scenarios (idle, fanout, corking, channels, compression, storm,
//! auth_connect) and what they measure. Each runs every selected server back to back at each size: start the
//! server pinned to the gateway CPUs, spawn the load-generator fleet pinned to the
//! others, measure, stop both. Every step is bounded in time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::BenchError;
use crate::fleet::{FleetPlan, LoadGenFleet};
use crate::http_client;
use crate::proc_stats::{self, ProcessSample};
use crate::publisher::{run_publisher, PayloadShape, PublishLoad, PublishProgress};
use crate::record::{merge_runs, ScenarioRecord};
use crate::servers::{ServerKind, ServerOptions, ServerUnderTest};
use crate::tokens::{AuthKeys, TokenScheme};

/// Options shared by every scenario.
#[derive(Debug, Clone)]
pub struct Harness {
    /// How to start the servers.
    pub servers: ServerOptions,
    /// Servers to measure, in order.
    pub targets: Vec<ServerKind>,
    /// CPUs of the load generators (and of this process).
    pub loadgen_cpus: Vec<usize>,
    /// Most sockets per load-generator process.
    pub per_worker: usize,
    /// Connects per second in total.
    pub connect_rate: f64,
    /// Upgrades in flight per worker.
    pub max_in_flight: usize,
    /// Bound on one server's run at one size.
    pub time_limit: Duration,
    /// Where results go.
    pub out_dir: PathBuf,
    /// Count a run as failed when a connection did not subscribe or a delivery is
    /// missing (for the smoke test; a loaded full run may lose slow consumers).
    pub strict: bool,
    /// Pre-minted connection tokens the clients send in a `connect` frame (none:
    /// anonymous clients).
    pub token_file: Option<PathBuf>,
    /// Runs of each server at each size; figures are the median, with min and max.
    pub repeats: usize,
    /// shardcast's subscribers speak MessagePack (`shardcast.v1.msgpack`).
    pub msgpack: bool,
    /// Clients offer permessage-deflate and inflate what arrives compressed.
    pub offer_deflate: bool,
}

/// Fanout and channels publishing knobs.
#[derive(Debug, Clone)]
pub struct PublishKnobs {
    /// Fixed rate, publications per second (0 skips the fixed-rate phase).
    pub rate: f64,
    /// When set, the fixed rate is this many deliveries per second (overrides `rate`).
    pub offered_deliveries: Option<f64>,
    /// Seconds of the fixed-rate phase.
    pub fixed_seconds: f64,
    /// Seconds of the max-rate phase (0 skips it).
    pub max_seconds: f64,
    /// Publications per request.
    pub batch: usize,
    /// Concurrent HTTP connections of the publisher.
    pub http_connections: usize,
    /// Size of `data`, bytes.
    pub payload_bytes: usize,
    /// What `data` looks like.
    pub shape: PayloadShape,
    /// Most publications per phase.
    pub max_publications: u64,
}

/// One scenario at one size, to run against each server.
pub(crate) enum Job<'k> {
    Idle(usize),
    Publish {
        scenario: &'static str,
        conns: usize,
        channels: usize,
        knobs: &'k PublishKnobs,
    },
    Storm(usize),
    /// N clients connect (with `scheme`'s tokens) and subscribe; CPU per connect.
    Connect(usize, TokenScheme),
}

/// Figures a scenario run produced, and whether anything failed.
#[derive(Default)]
pub struct Outcome {
    /// Records, one per server, size and phase.
    pub records: Vec<ScenarioRecord>,
    /// Server runs that failed.
    pub failures: usize,
}

pub(crate) fn progress_line(tag: &str, fleet: &LoadGenFleet, server: &ServerUnderTest, total: usize) {
    let s = server.sample();
    eprintln!(
        "[{tag}] subscribed {}/{total}, delivered {}, server RSS {:.1} MiB, server CPU {:.1} s",
        fleet.subscribed(),
        fleet.delivered(),
        s.rss_bytes as f64 / 1048576.0,
        s.cpu_seconds
    );
}

impl Harness {
    pub(crate) fn plan(
        &self,
        server: &ServerUnderTest,
        connections: usize,
        prefix: &str,
        channels: usize,
    ) -> FleetPlan {
        FleetPlan {
            targets: server.ws.clone(),
            path: server.kind.ws_path(),
            protocol: match server.kind {
                ServerKind::Shardcast if self.msgpack => crate::worker_protocol::WireProtocol::ShardcastMsgPack,
                kind => kind.wire_protocol(),
            },
            connections,
            channel_prefix: prefix.into(),
            channels,
            per_worker: self.per_worker,
            connect_rate: self.connect_rate,
            max_in_flight: self.max_in_flight,
            attempts: 5,
            cpus: self.loadgen_cpus.clone(),
            deadline: self.time_limit + Duration::from_secs(30),
            token_file: self.token_file.clone(),
            history: Default::default(),
            offer_deflate: self.offer_deflate,
        }
    }

    async fn run_job(&self, server: &ServerUnderTest, job: &Job<'_>) -> Result<Vec<ScenarioRecord>, BenchError> {
        match job {
            Job::Idle(n) => self.idle_once(server, *n).await,
            Job::Publish {
                scenario,
                conns,
                channels,
                knobs,
            } => self.publish_scenario(server, scenario, *conns, *channels, knobs).await,
            Job::Storm(n) => self.storm_once(server, *n).await,
            Job::Connect(n, scheme) => self.connect_once(server, *n, *scheme).await,
        }
    }

    pub(crate) async fn for_each_server(&self, scenario: &str, size: usize, outcome: &mut Outcome, job: Job<'_>) {
        for &target in &self.targets {
            let repeats = self.repeats.max(1);
            let mut runs = Vec::new();
            for run in 1..=repeats {
                eprintln!("== {scenario} {size} on {} (run {run} of {repeats}) ==", target.name());
                if let Some(records) = self.run_once(scenario, size, target, &job, outcome).await {
                    runs.push(records);
                }
            }
            if runs.is_empty() {
                continue;
            }
            let mut records = merge_runs(runs);
            // Server processes sharing the clients: shardcast gateways or
            // Node workers (charts compare single-process runs only).
            let gateways = match target {
                ServerKind::Shardcast | ServerKind::ShardcastPusher => self.servers.gateways.max(1),
                ServerKind::Node | ServerKind::SocketIo => match self.servers.node_workers {
                    0 => self.servers.cpus.len(),
                    n => n,
                },
                ServerKind::Floor | ServerKind::Sockudo => 1,
            };
            for r in &mut records {
                r.set("gateways", gateways as f64);
                if self.msgpack && target == ServerKind::Shardcast {
                    r.notes.push("subscribers speak MessagePack".into());
                }
                if r.mark_if_busy() {
                    eprintln!(
                        "!! {scenario} {size} {} {}: BUSY machine, figures marked",
                        target.name(),
                        r.phase
                    );
                }
            }
            for r in &records {
                eprintln!("   {}", summary_line(r));
                if let Some(problem) = self.strict.then(|| strict_problem(r)).flatten() {
                    eprintln!("!! {scenario} {size} {}: {problem}", target.name());
                    outcome.failures += 1;
                }
            }
            outcome.records.extend(records);
        }
    }

    /// One run of a job on a freshly started server; none if it failed (counted).
    async fn run_once(
        &self,
        scenario: &str,
        size: usize,
        target: ServerKind,
        job: &Job<'_>,
        outcome: &mut Outcome,
    ) -> Option<Vec<ScenarioRecord>> {
        let server = match ServerUnderTest::start(target, &self.servers) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("!! {scenario} {size} {}: {e}", target.name());
                outcome.failures += 1;
                return None;
            }
        };
        let result = match tokio::time::timeout(self.time_limit, self.run_job(&server, job)).await {
            Ok(Ok(records)) => Some(records),
            Ok(Err(e)) => {
                eprintln!("!! {scenario} {size} {}: {e}", target.name());
                for line in server.log_tail().iter().rev().take(5) {
                    eprintln!("   server log: {line}");
                }
                outcome.failures += 1;
                None
            }
            Err(_) => {
                eprintln!(
                    "!! {scenario} {size} {}: time limit of {:?} reached",
                    target.name(),
                    self.time_limit
                );
                outcome.failures += 1;
                None
            }
        };
        server.stop();
        result
    }

    /// Idle: N subscribed idle connections; memory per connection and connect rate.
    pub async fn idle(&self, sizes: &[usize]) -> Outcome {
        let mut outcome = Outcome::default();
        for &n in sizes {
            self.for_each_server("idle", n, &mut outcome, Job::Idle(n)).await;
        }
        outcome
    }

    async fn idle_once(&self, server: &ServerUnderTest, n: usize) -> Result<Vec<ScenarioRecord>, BenchError> {
        let mut rec = ScenarioRecord::new("idle", server.kind, n, "connect");
        // Let the server finish starting (Node's workers load modules) before the baseline.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let kernel0 = proc_stats::sample_kernel_memory();
        let before = server.sample();
        let redis0 = server.sample_redis();
        let mut fleet = LoadGenFleet::spawn(&self.plan(server, n, "idle-", (n / 10).max(1)))?;
        let tag = format!("idle {n} {}", server.kind.name());
        let mut series = vec![(0.0, before.rss_bytes as f64)];
        let ready = fleet
            .wait_ready(self.time_limit, |f| {
                let rss = server.sample().rss_bytes as f64;
                series.push((f.subscribed() as f64, rss));
                progress_line(&tag, f, server, n);
            })
            .await?;
        // Settle: let allocators and lazy per-connection work finish before reading.
        fleet.pump(Duration::from_secs(2)).await?;
        let after = server.sample();
        let redis1 = server.sample_redis();
        let kernel1 = proc_stats::sample_kernel_memory();
        let report = fleet.report(Duration::from_secs(10)).await?;
        let conns = ready.subscribed.max(1) as f64;
        series.push((ready.subscribed as f64, after.rss_bytes as f64));
        rec.series = series;
        rec.set("connections", ready.subscribed as f64);
        rec.set("failed_attempts", ready.failures.failed_attempts() as f64);
        rec.set("refused", ready.failures.refused as f64);
        rec.set("gave_up", ready.failures.gave_up as f64);
        rec.set("connect_seconds", ready.connect_seconds);
        rec.set(
            "connect_rate",
            ready.subscribed as f64 / ready.connect_seconds.max(1e-9),
        );
        rec.set("rss_before_bytes", before.rss_bytes as f64);
        rec.set("rss_after_bytes", after.rss_bytes as f64);
        rec.set(
            "rss_per_connection",
            (after.rss_bytes as f64 - before.rss_bytes as f64) / conns,
        );
        rec.set(
            "redis_rss_per_connection",
            (redis1.rss_bytes as f64 - redis0.rss_bytes as f64) / conns,
        );
        rec.set(
            "kernel_slab_per_connection",
            (kernel1.slab_bytes as f64 - kernel0.slab_bytes as f64) / conns,
        );
        rec.set(
            "kernel_socket_slabs_per_connection",
            (kernel1.socket_slab_bytes as f64 - kernel0.socket_slab_bytes as f64) / conns,
        );
        rec.set(
            "kernel_tcp_buffers_per_connection",
            (kernel1.tcp_buffer_bytes as f64 - kernel0.tcp_buffer_bytes as f64) / conns,
        );
        rec.set("loadgen_rss_per_connection", report.rss_bytes as f64 / conns);
        rec.set("server_cpu_seconds_connecting", after.cpu_seconds - before.cpu_seconds);
        rec.set("loadgen_processes", fleet.worker_count() as f64);
        rec.limited_by = format!("connect pacing at {:.0}/s", self.connect_rate);
        if ready.failures.failed_attempts() > 0 {
            rec.notes.push(format!("connect failures: {:?}", ready.failures));
        }
        fleet.shutdown();
        Ok(vec![rec])
    }

    /// Fanout: one channel with S subscribers; fixed-rate and max-rate phases.
    pub async fn fanout(&self, sizes: &[usize], knobs: &PublishKnobs) -> Outcome {
        let mut outcome = Outcome::default();
        for &s in sizes {
            let job = Job::Publish {
                scenario: "fanout",
                conns: s,
                channels: 1,
                knobs,
            };
            self.for_each_server("fanout", s, &mut outcome, job).await;
        }
        outcome
    }

    /// Corking: one channel, each subscriber count at each fixed publication rate:
    /// whether gathering a busy shard's writes costs latency at low rates and
    /// saves CPU at high ones. Each record's phase is its rate (`100/s`).
    pub async fn corking(&self, sizes: &[usize], rates: &[f64], knobs: &PublishKnobs) -> Outcome {
        let mut outcome = Outcome::default();
        for &s in sizes {
            for &rate in rates {
                let knobs = PublishKnobs {
                    rate,
                    offered_deliveries: None,
                    max_seconds: 0.0,
                    ..knobs.clone()
                };
                let job = Job::Publish {
                    scenario: "corking",
                    conns: s,
                    channels: 1,
                    knobs: &knobs,
                };
                let before = outcome.records.len();
                self.for_each_server("corking", s, &mut outcome, job).await;
                for r in &mut outcome.records[before..] {
                    r.phase = format!("{rate}/s");
                }
            }
        }
        outcome
    }

    /// Compression: one channel, S subscribers whose clients offer permessage-deflate
    /// as browsers do and inflate what arrives, a trades document
    /// ([`crate::publisher::trades_document`]) per publication; shardcast and Node
    /// `ws` with compression on (shardcast compresses a publication once, `ws` once
    /// per socket), then with it off, at each size. A record's phase is its
    /// publishing phase and `compressed` or `uncompressed`; shardcast's records get
    /// `vs_node`: its deliveries per CPU-second over Node's (workers and Redis).
    pub async fn compression(&self, sizes: &[usize], modes: &[CompressionMode], knobs: &PublishKnobs) -> Outcome {
        let mut outcome = Outcome::default();
        let mut harness = self.clone();
        harness
            .targets
            .retain(|t| matches!(t, ServerKind::Shardcast | ServerKind::Node));
        if harness.targets.len() < self.targets.len() {
            eprintln!("compression: only shardcast and Node `ws` are compared; skipping the other servers");
        }
        harness.offer_deflate = true;
        let knobs = PublishKnobs {
            shape: PayloadShape::Trades,
            ..knobs.clone()
        };
        for &s in sizes {
            for &mode in modes {
                harness.servers.compression = mode == CompressionMode::On;
                let job = Job::Publish {
                    scenario: "compression",
                    conns: s,
                    channels: 1,
                    knobs: &knobs,
                };
                let first = outcome.records.len();
                let label = format!("compression {}", mode.label());
                harness.for_each_server(&label, s, &mut outcome, job).await;
                for r in &mut outcome.records[first..] {
                    r.phase = format!("{} {}", r.phase, mode.label());
                    r.set("payload_bytes", knobs.payload_bytes as f64);
                }
            }
        }
        add_ratios_to_node(&mut outcome.records);
        for r in outcome.records.iter().filter(|r| r.get("vs_node").is_some()) {
            eprintln!(
                "   compression {} {}: shardcast {:.2}× Node per CPU-second, {:.0} vs {:.0} wire bytes per delivery",
                r.size,
                r.phase,
                r.get("vs_node").unwrap_or(f64::NAN),
                r.get("wire_bytes_per_delivery").unwrap_or(f64::NAN),
                r.get("node_wire_bytes_per_delivery").unwrap_or(f64::NAN)
            );
        }
        outcome
    }

    /// Channels: `channels` channels × `per_channel` subscribers, random publishes.
    pub async fn channels(&self, channels: usize, per_channel: usize, knobs: &PublishKnobs) -> Outcome {
        let mut outcome = Outcome::default();
        // The floor has no channels (every socket gets every publication), so it has
        // no figure to give here; its fanout figures are the per-delivery floor.
        let mut harness = self.clone();
        harness.targets.retain(|t| *t != ServerKind::Floor);
        if harness.targets.len() < self.targets.len() {
            eprintln!("channels: the floor server has no channels; skipping it (see its fanout figures)");
        }
        let conns = channels * per_channel;
        let job = Job::Publish {
            scenario: "channels",
            conns,
            channels,
            knobs,
        };
        harness.for_each_server("channels", conns, &mut outcome, job).await;
        outcome
    }

    pub(crate) async fn publish_scenario(
        &self,
        server: &ServerUnderTest,
        scenario: &str,
        conns: usize,
        channels: usize,
        knobs: &PublishKnobs,
    ) -> Result<Vec<ScenarioRecord>, BenchError> {
        let prefix = format!("{scenario}-");
        let mut fleet = LoadGenFleet::spawn(&self.plan(server, conns, &prefix, channels))?;
        let tag = format!("{scenario} {conns} {}", server.kind.name());
        let ready = fleet
            .wait_ready(self.time_limit, |f| progress_line(&tag, f, server, conns))
            .await?;
        if ready.subscribed < conns {
            eprintln!(
                "[{tag}] only {} of {conns} subscribed: {:?}",
                ready.subscribed, ready.failures
            );
        }
        fleet.pump(Duration::from_secs(1)).await?;
        let mut records = Vec::new();
        let per_publication = (ready.subscribed as u64).div_ceil(channels.max(1) as u64).max(1);
        let fixed_rate = knobs
            .offered_deliveries
            .map_or(knobs.rate, |d| d / per_publication as f64);
        let phases = [
            ("fixed", Some(fixed_rate), knobs.fixed_seconds),
            ("max", None, knobs.max_seconds),
        ];
        for (phase, rate, seconds) in phases {
            if seconds <= 0.0 || rate.is_some_and(|r| r <= 0.0) {
                continue;
            }
            let load = PublishLoad {
                rate,
                duration: Duration::from_secs_f64(seconds),
                max_publications: knobs.max_publications,
                batch: knobs.batch,
                http_connections: knobs.http_connections,
                payload_bytes: knobs.payload_bytes,
                shape: knobs.shape,
                channel_prefix: prefix.clone(),
                channels,
                deliveries_per_publication: per_publication,
                window_deliveries: (per_publication * 4).max(50_000),
            };
            let mut rec = ScenarioRecord::new(scenario, server.kind, conns, phase);
            rec.set("subscribed", ready.subscribed as f64);
            if let Some(rate) = rate {
                rec.set("offered_publications_per_second", rate);
                rec.set("offered_deliveries_per_second", rate * per_publication as f64);
            }
            rec.set("channels", channels as f64);
            self.publish_phase(server, &mut fleet, load, &mut rec, &tag).await?;
            records.push(rec);
        }
        fleet.shutdown();
        Ok(records)
    }

    async fn publish_phase(
        &self,
        server: &ServerUnderTest,
        fleet: &mut LoadGenFleet,
        load: PublishLoad,
        rec: &mut ScenarioRecord,
        tag: &str,
    ) -> Result<(), BenchError> {
        fleet.broadcast(crate::worker_protocol::WorkerCommand::Reset)?;
        // Longer than one progress interval, so no pre-reset count is still in flight.
        fleet.pump(Duration::from_millis(300)).await?;
        let metrics0 = scrape(server).await;
        let window = CpuWindow::start(server, fleet);
        let progress = Arc::new(PublishProgress::default());
        let fixed = load.rate.is_some();
        let publisher = tokio::spawn(run_publisher(server.publish_endpoint(), load.clone(), progress.clone()));
        let mut next_line = Instant::now() + Duration::from_secs(1);
        while !publisher.is_finished() {
            fleet.pump(Duration::from_millis(50)).await?;
            progress.delivered.store(fleet.delivered(), Ordering::Relaxed);
            if Instant::now() >= next_line {
                next_line += Duration::from_secs(1);
                eprintln!(
                    "[{tag} {}] published {}, delivered {}",
                    rec.phase,
                    progress.published.load(Ordering::Relaxed),
                    fleet.delivered()
                );
            }
        }
        let outcome = publisher
            .await
            .map_err(|e| BenchError::Options(format!("publisher task failed: {e}")))??;
        // Drain: wait for the last deliveries (or until they stop coming for 2 s).
        let expected = outcome.published * load.deliveries_per_publication;
        let drain_until = Instant::now() + Duration::from_secs(15);
        let mut last_count = fleet.delivered();
        let mut last_change = Instant::now();
        while fleet.delivered() < expected && Instant::now() < drain_until {
            fleet.pump(Duration::from_millis(50)).await?;
            if fleet.delivered() != last_count {
                last_count = fleet.delivered();
                last_change = Instant::now();
            } else if last_change.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        let wall = window.finish(server, fleet, rec);
        let metrics1 = scrape(server).await;
        let report = fleet.report(Duration::from_secs(10)).await?;
        let latency = report.latency.summary();
        rec.latency = Some(latency);
        rec.set("published", outcome.published as f64);
        rec.set("publish_requests", outcome.requests as f64);
        rec.set("publish_errors", outcome.errors as f64);
        rec.set("publish_seconds", outcome.seconds);
        rec.set("publications_per_second", outcome.published as f64 / wall);
        rec.set("expected_deliveries", expected as f64);
        rec.set("delivered", report.delivered as f64);
        rec.set("missing_deliveries", expected as f64 - report.delivered as f64);
        rec.set("deliveries_per_second", report.delivered as f64 / wall);
        let server_cpu = rec.get("server_cpu_seconds").unwrap_or(0.0);
        let stack_cpu = server_cpu + rec.get("redis_cpu_seconds").unwrap_or(0.0);
        rec.set(
            "deliveries_per_server_cpu_second",
            report.delivered as f64 / server_cpu.max(1e-9),
        );
        rec.set(
            "deliveries_per_stack_cpu_second",
            report.delivered as f64 / stack_cpu.max(1e-9),
        );
        rec.set("closed_by_server", report.failures.closed_by_server as f64);
        // What the clients read off the socket per delivery: compressed when it was.
        let delivered = report.delivered.max(1) as f64;
        rec.set("wire_bytes_per_delivery", report.wire_bytes as f64 / delivered);
        rec.set("compressed_share", report.compressed as f64 / delivered);
        rec.set("server_rss_bytes", server.sample().rss_bytes as f64);
        for (k, v) in metric_deltas(&metrics0, &metrics1) {
            rec.set(&format!("metric:{k}"), v);
        }
        if let Ok(first) = progress.first_error.lock() {
            if let Some(e) = first.as_ref() {
                rec.notes.push(format!("first publish error: {e}"));
            }
        }
        if report.failures.closed_by_server > 0 {
            rec.notes.push(format!(
                "{} connections closed by the server during the run",
                report.failures.closed_by_server
            ));
        }
        rec.limited_by = judge_limit(rec, if fixed { Pace::Fixed } else { Pace::Window });
        Ok(())
    }

    /// Storm: N clients drop at once and reconnect; time until all are subscribed again.
    pub async fn storm(&self, sizes: &[usize]) -> Outcome {
        let mut outcome = Outcome::default();
        for &n in sizes {
            self.for_each_server("storm", n, &mut outcome, Job::Storm(n)).await;
        }
        outcome
    }

    async fn storm_once(&self, server: &ServerUnderTest, n: usize) -> Result<Vec<ScenarioRecord>, BenchError> {
        let mut rec = ScenarioRecord::new("storm", server.kind, n, "storm");
        let mut fleet = LoadGenFleet::spawn(&self.plan(server, n, "storm-", (n / 10).max(1)))?;
        let tag = format!("storm {n} {}", server.kind.name());
        let ready = fleet
            .wait_ready(self.time_limit, |f| progress_line(&tag, f, server, n))
            .await?;
        fleet.pump(Duration::from_secs(1)).await?;
        let window = CpuWindow::start(server, &fleet);
        let metrics0 = scrape(server).await;
        let storm = fleet
            .storm(self.time_limit, |f| progress_line(&tag, f, server, n))
            .await?;
        let wall = window.finish(server, &fleet, &mut rec);
        let metrics1 = scrape(server).await;
        rec.set("connections", ready.subscribed as f64);
        rec.set("resubscribed", storm.resubscribed as f64);
        rec.set("storm_seconds", storm.seconds);
        rec.set("reconnect_rate", storm.resubscribed as f64 / storm.seconds.max(1e-9));
        rec.set("refused", storm.failures.refused as f64);
        rec.set("io_errors", storm.failures.io_errors as f64);
        rec.set("timeouts", storm.failures.timeouts as f64);
        rec.set("protocol_errors", storm.failures.protocol_errors as f64);
        rec.set("gave_up", storm.failures.gave_up as f64);
        rec.set("measured_wall_seconds", wall);
        for (k, v) in metric_deltas(&metrics0, &metrics1) {
            rec.set(&format!("metric:{k}"), v);
        }
        rec.limited_by = judge_limit(&rec, Pace::Reconnects);
        fleet.shutdown();
        Ok(vec![rec])
    }
}

impl Harness {
    /// auth_connect: the connect cost of token verification. Three shardcast
    /// configurations on the same run (no token, `--token-hmac-secret`,
    /// `--token-public-key` with an RSA-2048 key), N clients each, every client with
    /// its own `sub`; then the one-channel fanout without and with HS256 tokens, to
    /// show that verification is per connection, not per message (0 subscribers
    /// skips it). Each is run `rounds` times, interleaved, and the rounds are merged
    /// into one record per configuration; ratios to the tokenless run are added.
    pub async fn auth_connect(
        &self,
        connections: usize,
        fanout_subscribers: usize,
        rounds: usize,
        knobs: &PublishKnobs,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        if self.targets.iter().any(|t| *t != ServerKind::Shardcast) {
            eprintln!("auth_connect: only shardcast authenticates clients; the other servers are skipped");
        }
        // Minting (RSA signing especially) happens here, before any server starts.
        let keys = match AuthKeys::generate() {
            Ok(keys) => keys,
            Err(e) => {
                eprintln!("!! auth_connect: {e}");
                outcome.failures += 1;
                return outcome;
            }
        };
        let tokens_needed = connections.max(fanout_subscribers);
        let mut configured = Vec::new();
        for scheme in [TokenScheme::None, TokenScheme::Hs256, TokenScheme::Rs256] {
            match keys.mint_file(scheme, tokens_needed) {
                Ok(token_file) => {
                    let mut harness = self.clone();
                    harness.targets = vec![ServerKind::Shardcast];
                    harness.servers.shardcast_args.extend(keys.gateway_args(scheme));
                    harness.token_file = token_file;
                    configured.push((scheme, harness));
                }
                Err(e) => {
                    eprintln!("!! auth_connect {}: {e}", scheme.name());
                    outcome.failures += 1;
                }
            }
        }
        // Rounds interleave the configurations, so drift in what the rest of the
        // machine does falls on all of them alike.
        let mut runs = Outcome::default();
        for round in 1..=rounds.max(1) {
            for (scheme, harness) in &configured {
                let label = format!("auth_connect {} round {round}", scheme.name());
                let job = Job::Connect(connections, *scheme);
                harness.for_each_server(&label, connections, &mut runs, job).await;
            }
        }
        let fanout_rounds = if fanout_subscribers > 0 { rounds.max(1) } else { 0 };
        for round in 1..=fanout_rounds {
            for (scheme, harness) in configured.iter().filter(|(s, _)| *s != TokenScheme::Rs256) {
                let first = runs.records.len();
                let job = Job::Publish {
                    scenario: "auth_fanout",
                    conns: fanout_subscribers,
                    channels: 1,
                    knobs,
                };
                let label = format!("auth_fanout {} round {round}", scheme.name());
                harness
                    .for_each_server(&label, fanout_subscribers, &mut runs, job)
                    .await;
                for r in &mut runs.records[first..] {
                    r.phase = format!("{} {}", r.phase, scheme.name());
                }
            }
        }
        outcome.failures += runs.failures;
        outcome.records = merge_rounds(runs.records, self.connect_rate);
        add_ratios_to_tokenless(&mut outcome.records);
        for r in outcome.records.iter().filter(|r| r.get("vs_none").is_some()) {
            eprintln!(
                "   {} {} {}: {:.3}× the tokenless figure",
                r.scenario,
                r.size,
                r.phase,
                r.get("vs_none").unwrap_or(f64::NAN)
            );
        }
        outcome
    }

    async fn connect_once(
        &self,
        server: &ServerUnderTest,
        n: usize,
        scheme: TokenScheme,
    ) -> Result<Vec<ScenarioRecord>, BenchError> {
        let mut rec = ScenarioRecord::new("auth_connect", server.kind, n, scheme.name());
        // Let the server finish starting before the window opens.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let metrics0 = scrape(server).await;
        // Opened before the workers exist, so their whole life is in it.
        let window = CpuWindow::start_before_fleet(server);
        let mut fleet = LoadGenFleet::spawn(&self.plan(server, n, "auth-", (n / 10).max(1)))?;
        let tag = format!("auth_connect {n} {}", scheme.name());
        let ready = fleet
            .wait_ready(self.time_limit, |f| progress_line(&tag, f, server, n))
            .await?;
        window.finish(server, &fleet, &mut rec);
        let metrics1 = scrape(server).await;
        let server_cpu = rec.get("server_cpu_seconds").unwrap_or(0.0);
        let connected = ready.subscribed as f64;
        rec.set("connections", connected);
        rec.set("failed_attempts", ready.failures.failed_attempts() as f64);
        rec.set("gave_up", ready.failures.gave_up as f64);
        rec.set("connect_seconds", ready.connect_seconds);
        rec.set("connect_rate", connected / ready.connect_seconds.max(1e-9));
        rec.set("connects_per_server_cpu_second", connected / server_cpu.max(1e-9));
        rec.set("server_cpu_us_per_connect", server_cpu * 1e6 / connected.max(1.0));
        for (k, v) in metric_deltas(&metrics0, &metrics1) {
            rec.set(&format!("metric:{k}"), v);
        }
        if ready.failures.failed_attempts() > 0 {
            rec.notes.push(format!("connect failures: {:?}", ready.failures));
        }
        rec.limited_by = judge_limit(&rec, Pace::Connects(self.connect_rate));
        fleet.shutdown();
        Ok(vec![rec])
    }
}

/// Whether the server compresses (the compression scenario runs each setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionMode {
    /// shardcast `--compression on`, Node `ws` with `perMessageDeflate: true`.
    On,
    /// Both without compression (the clients still offer it; the servers decline).
    Off,
}

impl CompressionMode {
    /// The word a record's phase carries.
    pub fn label(self) -> &'static str {
        match self {
            CompressionMode::On => "compressed",
            CompressionMode::Off => "uncompressed",
        }
    }
}

/// Sets, on each shardcast record with a Node record of the same size and phase,
/// `vs_node` (deliveries per CPU-second, each with its Redis, shardcast ÷ Node),
/// `vs_node_workers` (against Node's workers alone) and Node's wire bytes per
/// delivery as `node_wire_bytes_per_delivery`.
fn add_ratios_to_node(records: &mut [ScenarioRecord]) {
    let nodes: Vec<ScenarioRecord> = records
        .iter()
        .filter(|r| r.target == ServerKind::Node)
        .cloned()
        .collect();
    for r in records.iter_mut().filter(|r| r.target == ServerKind::Shardcast) {
        let Some(node) = nodes.iter().find(|n| n.size == r.size && n.phase == r.phase) else {
            continue;
        };
        // Under one clock tick of CPU (a tiny smoke run) there is no ratio to give.
        let measured = |x: &ScenarioRecord| x.get("server_cpu_seconds").is_some_and(|s| s > 0.0);
        if !measured(r) || !measured(node) {
            continue;
        }
        let ratio = |ours: Option<f64>, theirs: Option<f64>| Some(ours? / theirs.filter(|v| *v > 0.0)?);
        let pairs = [
            ("vs_node", "deliveries_per_stack_cpu_second"),
            ("vs_node_workers", "deliveries_per_server_cpu_second"),
        ];
        for (name, key) in pairs {
            if let Some(x) = ratio(r.get(key), node.get(key)) {
                r.set(name, x);
            }
        }
        if let Some(bytes) = node.get("wire_bytes_per_delivery") {
            r.set("node_wire_bytes_per_delivery", bytes);
        }
    }
}

/// Figures that add up over the rounds of one configuration.
const ADDITIVE_FIGURES: &[&str] = &[
    "connections",
    "failed_attempts",
    "gave_up",
    "connect_seconds",
    "wall_seconds",
    "server_cpu_seconds",
    "redis_cpu_seconds",
    "loadgen_cpu_seconds",
    "harness_cpu_seconds",
    "subscribed",
    "published",
    "publish_requests",
    "publish_errors",
    "publish_seconds",
    "expected_deliveries",
    "delivered",
    "missing_deliveries",
    "closed_by_server",
];

/// Folds the rounds of each auth configuration (same scenario, size and phase) into
/// one record: counts and CPU seconds summed, rates recomputed from the sums, CPU
/// shares averaged over wall time, the per-CPU figure's range across rounds kept as
/// `per_cpu_min`/`per_cpu_max`, and the latency of the round with the worst p99.
fn merge_rounds(runs: Vec<ScenarioRecord>, connect_rate: f64) -> Vec<ScenarioRecord> {
    let mut groups: Vec<Vec<ScenarioRecord>> = Vec::new();
    for r in runs {
        match groups
            .iter_mut()
            .find(|g| g[0].scenario == r.scenario && g[0].size == r.size && g[0].phase == r.phase)
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .map(|rounds| {
            let mut m = rounds[0].clone();
            let sum = |k: &str| rounds.iter().filter_map(|r| r.get(k)).sum::<f64>();
            let keys: Vec<String> = rounds
                .iter()
                .flat_map(|r| r.figures.keys())
                .filter(|k| ADDITIVE_FIGURES.contains(&k.as_str()) || k.starts_with("metric:"))
                .cloned()
                .collect();
            for k in keys {
                m.set(&k, sum(&k));
            }
            let wall = sum("wall_seconds").max(1e-9);
            for k in ["server_cpu_util", "loadgen_cpu_util", "other_cpu_util"] {
                let weighted: f64 = rounds
                    .iter()
                    .map(|r| r.get(k).unwrap_or(0.0) * r.get("wall_seconds").unwrap_or(0.0))
                    .sum();
                m.set(k, weighted / wall);
            }
            let per_cpu: Vec<f64> = rounds.iter().filter_map(per_cpu_figure).collect();
            m.set("per_cpu_min", per_cpu.iter().copied().fold(f64::INFINITY, f64::min));
            m.set("per_cpu_max", per_cpu.iter().copied().fold(0.0, f64::max));
            m.set("rounds", rounds.len() as f64);
            let server_cpu = sum("server_cpu_seconds").max(1e-9);
            let pace = if m.scenario == "auth_connect" {
                let connected = sum("connections");
                m.set("connect_rate", connected / sum("connect_seconds").max(1e-9));
                m.set("connects_per_server_cpu_second", connected / server_cpu);
                m.set("server_cpu_us_per_connect", server_cpu * 1e6 / connected.max(1.0));
                Pace::Connects(connect_rate)
            } else {
                let delivered = sum("delivered");
                let stack_cpu = server_cpu + sum("redis_cpu_seconds");
                m.set("deliveries_per_second", delivered / wall);
                m.set("publications_per_second", sum("published") / wall);
                m.set("deliveries_per_server_cpu_second", delivered / server_cpu);
                m.set("deliveries_per_stack_cpu_second", delivered / stack_cpu.max(1e-9));
                m.latency = rounds
                    .iter()
                    .filter_map(|r| r.latency)
                    .max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms));
                if m.phase.starts_with("fixed") {
                    Pace::Fixed
                } else {
                    Pace::Window
                }
            };
            m.limited_by = judge_limit(&m, pace);
            m.notes = rounds.iter().flat_map(|r| r.notes.iter().cloned()).collect();
            m
        })
        .collect()
}

/// The auth scenario's headline figure of a record: connects or deliveries per
/// server CPU-second.
fn per_cpu_figure(r: &ScenarioRecord) -> Option<f64> {
    match r.scenario.as_str() {
        "auth_connect" => r.get("connects_per_server_cpu_second"),
        _ => r.get("deliveries_per_server_cpu_second"),
    }
}

/// Sets `vs_none` (per-CPU figure ÷ the tokenless run's) on every token run of the
/// auth scenario, and for connects `token_cpu_us_per_connect`: the server CPU a token
/// adds to a connect (its `connect` frame, the verification, the identity).
fn add_ratios_to_tokenless(records: &mut [ScenarioRecord]) {
    // A phase is the scheme ("hs256"), or the publishing phase and the scheme ("max hs256").
    let baselines: Vec<ScenarioRecord> = records
        .iter()
        .filter(|r| r.phase.rsplit(' ').next() == Some("none"))
        .cloned()
        .collect();
    for r in records.iter_mut() {
        let scheme = r.phase.rsplit(' ').next().unwrap_or_default();
        if scheme == "none" {
            continue;
        }
        let base_phase = format!("{}none", &r.phase[..r.phase.len() - scheme.len()]);
        let Some(base) = baselines
            .iter()
            .find(|b| b.scenario == r.scenario && b.size == r.size && b.phase == base_phase)
        else {
            continue;
        };
        if let (Some(x), Some(b)) = (per_cpu_figure(r), per_cpu_figure(base)) {
            r.set("vs_none", x / b);
        }
        if let (Some(x), Some(b)) = (
            r.get("server_cpu_us_per_connect"),
            base.get("server_cpu_us_per_connect"),
        ) {
            r.set("token_cpu_us_per_connect", x - b);
        }
    }
}

/// CPU readings at the start of a measured window.
pub(crate) struct CpuWindow {
    at: Instant,
    server: ProcessSample,
    redis: ProcessSample,
    loadgen: ProcessSample,
    harness: ProcessSample,
    machine: f64,
}

impl CpuWindow {
    pub(crate) fn start(server: &ServerUnderTest, fleet: &LoadGenFleet) -> CpuWindow {
        CpuWindow {
            loadgen: fleet.sample(),
            ..CpuWindow::start_before_fleet(server)
        }
    }

    /// A window opened before the load generators are spawned (they start at zero).
    fn start_before_fleet(server: &ServerUnderTest) -> CpuWindow {
        CpuWindow {
            at: Instant::now(),
            server: server.sample(),
            redis: server.sample_redis(),
            loadgen: ProcessSample::default(),
            harness: proc_stats::sample_process(std::process::id() as i32),
            machine: proc_stats::machine_busy_seconds(),
        }
    }

    /// Records CPU figures for the window into `rec`; returns its wall seconds.
    pub(crate) fn finish(&self, server: &ServerUnderTest, fleet: &LoadGenFleet, rec: &mut ScenarioRecord) -> f64 {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let s = server.sample().cpu_seconds - self.server.cpu_seconds;
        let r = server.sample_redis().cpu_seconds - self.redis.cpu_seconds;
        let l = fleet.sample().cpu_seconds - self.loadgen.cpu_seconds;
        let h = proc_stats::sample_process(std::process::id() as i32).cpu_seconds - self.harness.cpu_seconds;
        let m = proc_stats::machine_busy_seconds() - self.machine;
        let server_cores = server_cpu_count(server) as f64;
        let loadgen_cores = fleet_cpu_count() as f64;
        rec.set("wall_seconds", wall);
        rec.set("server_cpu_seconds", s);
        rec.set("redis_cpu_seconds", r);
        rec.set("loadgen_cpu_seconds", l);
        rec.set("harness_cpu_seconds", h);
        rec.set("server_cpu_util", (s + r) / wall / server_cores);
        rec.set("loadgen_cpu_util", (l + h) / wall / loadgen_cores);
        let others = (m - s - r - l - h).max(0.0);
        rec.set(
            "other_cpu_util",
            others / wall / crate::cpu_pinning::online_cpus() as f64,
        );
        wall
    }
}

fn server_cpu_count(server: &ServerUnderTest) -> usize {
    affinity_count(server.pids().first().copied().unwrap_or(0))
}

fn fleet_cpu_count() -> usize {
    affinity_count(0)
}

/// CPUs in a process's affinity mask (0: this process).
fn affinity_count(pid: i32) -> usize {
    // SAFETY: an all-zero cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return 1;
    }
    // SAFETY: CPU_COUNT reads the set we own.
    (unsafe { libc::CPU_COUNT(&set) } as usize).max(1)
}

/// What set the pace of a measured window when no core was saturated.
#[derive(Clone, Copy)]
pub(crate) enum Pace {
    /// A fixed publish rate.
    Fixed,
    /// Max-rate publishing: HTTP round trips and the undelivered-frames window.
    Window,
    /// A reconnect storm: handshake round trips, backoff after refusals.
    Reconnects,
    /// Paced connects at this total rate per second (0: unpaced).
    Connects(f64),
    /// Presence churners joining as fast as their join round trips allow.
    Churn,
}

/// What limited a publishing or storm figure, judged from CPU use in the window.
pub(crate) fn judge_limit(rec: &ScenarioRecord, pace: Pace) -> String {
    let server = rec.get("server_cpu_util").unwrap_or(0.0);
    let loadgen = rec.get("loadgen_cpu_util").unwrap_or(0.0);
    let others = rec.get("other_cpu_util").unwrap_or(0.0);
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    let mut why = if server >= 0.85 {
        format!("server CPU ({} of its cores)", pct(server))
    } else if loadgen >= 0.85 {
        format!("load-generator CPU ({} of its cores)", pct(loadgen))
    } else {
        let pacing;
        let pace = match pace {
            Pace::Fixed => "the offered rate",
            Pace::Window => "publish round trips and the delivery window",
            Pace::Reconnects => "handshake round trips and retry backoff",
            Pace::Connects(rate) if rate > 0.0 => {
                pacing = format!("connect pacing at {rate:.0}/s");
                &pacing
            }
            Pace::Connects(_) => "handshake round trips and upgrades in flight",
            Pace::Churn => "the churners' join round trips (one membership each at a time)",
        };
        format!(
            "{pace} (no core saturated: server {}, loadgen {})",
            pct(server),
            pct(loadgen)
        )
    };
    if others >= 0.15 {
        why.push_str(&format!("; other processes used {} of the machine", pct(others)));
    }
    why
}

/// Series of the servers' /metrics whose changes a record keeps.
const METRIC_PREFIXES: &[&str] = &[
    "shardcast_messages_delivered_total",
    "shardcast_messages_dropped_total",
    "shardcast_disconnections_total",
    "shardcast_connections_refused_total",
    "shardcast_client_errors_total",
    "shardcast_fanout_duration_seconds_sum",
    "shardcast_fanout_duration_seconds_count",
    "shardcast_corked_writes_total",
    "shardcast_corked_frames_total",
    "floor_closed_full_total",
];

/// The server's /metrics as series → value (empty for servers without it).
async fn scrape(server: &ServerUnderTest) -> BTreeMap<String, f64> {
    // Sockudo runs without its metrics server (and names its series differently).
    if matches!(
        server.kind,
        ServerKind::Node | ServerKind::SocketIo | ServerKind::Sockudo
    ) {
        return BTreeMap::new();
    }
    let Ok(text) = http_client::get(server.admin, "/metrics").await else {
        return BTreeMap::new();
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse::<f64>().ok()?))
        })
        .collect()
}

/// Non-zero changes of the kept series between two scrapes.
fn metric_deltas(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    after
        .iter()
        .filter(|(k, _)| METRIC_PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

/// Why a record fails the smoke test's checks, if it does.
fn strict_problem(r: &ScenarioRecord) -> Option<String> {
    let size = r.size as f64;
    let count = |k: &str| r.get(k).unwrap_or(0.0);
    match r.scenario.as_str() {
        "idle" if count("connections") < size => Some(format!("only {} of {size} subscribed", count("connections"))),
        "storm" if count("resubscribed") < size => Some(format!("only {} of {size} came back", count("resubscribed"))),
        "auth_connect" if count("connections") < size * count("rounds").max(1.0) => {
            Some(format!("only {} of {size} connected", count("connections")))
        }
        "fanout" | "channels" | "auth_fanout" | "corking" | "compression" if count("subscribed") < size => {
            Some(format!("only {} of {size} subscribed", count("subscribed")))
        }
        "fanout" | "channels" | "auth_fanout" | "corking" | "compression"
            if count("delivered") <= 0.0 || count("missing_deliveries") != 0.0 =>
        {
            Some(format!(
                "{} delivered, {} missing (published {})",
                count("delivered"),
                count("missing_deliveries"),
                count("published")
            ))
        }
        _ => None,
    }
}

/// One line per record for the console.
pub fn summary_line(r: &ScenarioRecord) -> String {
    let f = |k: &str| r.get(k).unwrap_or(f64::NAN);
    match r.scenario.as_str() {
        "idle" => format!(
            "{} idle {}: {:.0} subscribed, {:.0} B/conn server RSS, {:.0} B/conn kernel slab, {:.0} conn/s",
            r.target.name(),
            r.size,
            f("connections"),
            f("rss_per_connection"),
            f("kernel_socket_slabs_per_connection"),
            f("connect_rate")
        ),
        "auth_connect" => format!(
            "{} auth_connect {} {}: {:.0} connected in {:.2} s ({:.0}/s), {:.1} µs server CPU per connect, {:.0} connects per server CPU-s [{}]",
            r.target.name(),
            r.size,
            r.phase,
            f("connections"),
            f("connect_seconds"),
            f("connect_rate"),
            f("server_cpu_us_per_connect"),
            f("connects_per_server_cpu_second"),
            r.limited_by
        ),
        "storm" => format!(
            "{} storm {}: {:.0} back in {:.2} s, refused {:.0}, errors {:.0}, gave up {:.0} [{}]",
            r.target.name(),
            r.size,
            f("resubscribed"),
            f("storm_seconds"),
            f("refused"),
            f("io_errors") + f("timeouts"),
            f("gave_up"),
            r.limited_by
        ),
        _ => {
            let l = r.latency.unwrap_or_default();
            format!(
                "{} {} {} {}: {:.0} deliveries/s, {:.0} per server CPU-s, p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms, missing {:.0} [{}]",
                r.target.name(),
                r.scenario,
                r.size,
                r.phase,
                f("deliveries_per_second"),
                f("deliveries_per_server_cpu_second"),
                l.p50_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms,
                f("missing_deliveries"),
                r.limited_by
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(target: ServerKind, phase: &str, per_cpu: f64, cpu_seconds: f64) -> ScenarioRecord {
        let mut r = ScenarioRecord::new("compression", target, 5000, phase);
        r.set("deliveries_per_server_cpu_second", per_cpu);
        r.set("deliveries_per_stack_cpu_second", per_cpu * 0.99);
        r.set("server_cpu_seconds", cpu_seconds);
        r.set("wire_bytes_per_delivery", 300.0);
        r
    }

    #[test]
    fn shardcast_records_get_their_ratio_to_node_in_the_same_phase() {
        let mut records = vec![
            record(ServerKind::Shardcast, "max compressed", 200_000.0, 2.0),
            record(ServerKind::Node, "max compressed", 10_000.0, 10.0),
            record(ServerKind::Shardcast, "fixed compressed", 100_000.0, 0.0),
            record(ServerKind::Node, "fixed compressed", 10_000.0, 4.0),
            record(ServerKind::Shardcast, "max uncompressed", 100_000.0, 1.0),
        ];
        add_ratios_to_node(&mut records);
        let vs = |i: usize| records[i].get("vs_node");
        assert_eq!(vs(0), Some(200_000.0 / 10_000.0));
        assert_eq!(records[0].get("node_wire_bytes_per_delivery"), Some(300.0));
        assert_eq!(vs(1), None, "Node's own records carry no ratio");
        assert_eq!(vs(2), None, "no CPU tick measured: no ratio");
        assert_eq!(vs(4), None, "no Node record in that phase");
    }
}
