//! The presence scenario (issue #13, "presence join/leave rate per second through
//! Redis with 3 instances"): how many presence joins and leaves per second shardcast
//! sustains with several gateway instances sharing one redis-server, whether every
//! join and leave reaches the other members exactly once, and what each costs in
//! gateway and Redis CPU.
//!
//! Everything runs in this process, on its one runtime, speaking the Pusher
//! protocol (PROTOCOL.md 20.4) on `/app/<key>`: on every presence channel one
//! observer member per instance stays subscribed throughout; churner connections,
//! spread round-robin over the instances, join channels as new users and leave them
//! again, at each offered rate and then as fast as their join round trips allow.
//! The observers count every `member_added` and `member_removed` per user, and time
//! `member_added` from the churner's subscribe when it crossed instances.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clock::monotonic_ns;
use crate::error::{BenchError, IoContext};
use crate::latency::LatencyRecorder;
use crate::proc_stats;
use crate::pusher_wire::{channel_auth, PONG};
use crate::record::{merge_runs, ScenarioRecord};
use crate::scenarios::{judge_limit, Harness, Outcome, Pace};
use crate::servers::{ServerKind, ServerUnderTest};
use crate::ws_client::WsClient;

/// The one Pusher app the gateways are configured with.
const APP_ID: &str = "bench";
const APP_KEY: &str = "bench-key";
const APP_SECRET: &str = "bench-secret";
/// Channels per observer connection (the gateway's default limit is 128).
const CHANNELS_PER_OBSERVER: usize = 100;
/// Longest wait for a connection's `connection_established`, an observer's
/// subscriptions, or a churner's join acknowledgement.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// After every expected event arrived: how long to keep listening for duplicates.
const DUPLICATE_GRACE: Duration = Duration::from_millis(300);

/// Options of the presence scenario.
#[derive(Args, Clone, Debug)]
pub struct PresenceArgs {
    /// Presence channels the churners join; each has one observer member per instance.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Churner connections, round-robin over the instances; each holds one
    /// membership at a time, so they bound the max-rate phase.
    #[arg(long, default_value_t = 60)]
    pub churners: usize,
    /// Offered joins + leaves per second, one phase each.
    #[arg(long, value_delimiter = ',', default_value = "100,500,2000")]
    pub rates: Vec<f64>,
    /// Seconds of each fixed-rate phase.
    #[arg(long, default_value_t = 5.0)]
    pub fixed_seconds: f64,
    /// Seconds of the max-rate phase (0 skips it).
    #[arg(long, default_value_t = 5.0)]
    pub max_seconds: f64,
    /// Milliseconds a churner stays a member once its join is acknowledged.
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
    /// Most seconds to wait after a phase for the observers' last events.
    #[arg(long, default_value_t = 5.0)]
    pub settle_seconds: f64,
    /// Seconds of idle CPU measured before the phases (every client connected),
    /// subtracted for the per-operation cost above idle (0 skips it).
    #[arg(long, default_value_t = 2.0)]
    pub idle_seconds: f64,
}

/// The presence channel of index `n`.
fn channel_name(n: usize) -> String {
    format!("presence-bench-{n}")
}

/// A churner's user id: its phase and its join's number, unique in the run.
fn churn_user(phase: u32, k: u64) -> String {
    format!("p{phase}u{k}")
}

/// The phase and join number of a churner's user id (none for an observer's).
fn parse_churn_user(user: &str) -> Option<(u32, u64)> {
    let (phase, k) = user.strip_prefix('p')?.split_once('u')?;
    Some((phase.parse().ok()?, k.parse().ok()?))
}

/// One frame from the gateway, as Pusher sends it (`data` a JSON string for
/// channel events, an object for `pusher:error`).
#[derive(Deserialize)]
struct PusherEvent {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Value,
}

impl PusherEvent {
    /// `data` parsed, when it came as JSON text.
    fn data_json<T: for<'de> Deserialize<'de>>(&self) -> Option<T> {
        serde_json::from_str(self.data.as_str()?).ok()
    }

    fn is_on(&self, channel: &str) -> bool {
        self.channel.as_deref() == Some(channel)
    }
}

/// `data` of `member_added` / `member_removed`; `user_info` is what the churner
/// put in its channel data: when it sent the subscribe and on which instance.
#[derive(Deserialize)]
struct MemberData {
    user_id: Value,
    #[serde(default)]
    user_info: Option<SentStamp>,
}

#[derive(Deserialize, Clone, Copy)]
struct SentStamp {
    /// CLOCK_MONOTONIC nanoseconds at the subscribe.
    t: u64,
    /// The churner's instance.
    gw: usize,
}

/// A Pusher client connection: a WebSocket on `/app/<key>` and its socket id.
struct PusherSocket {
    ws: WsClient,
    socket_id: String,
}

impl PusherSocket {
    /// Connects to one instance and waits for `pusher:connection_established`.
    async fn connect(instance: std::net::SocketAddr) -> Result<PusherSocket, BenchError> {
        let path = format!("/app/{APP_KEY}?protocol=7&client=shardcast-bench&version=1");
        let ws = WsClient::connect(instance, None, &path, "", false).await?;
        let mut socket = PusherSocket {
            ws,
            socket_id: String::new(),
        };
        let event = tokio::time::timeout(STEP_TIMEOUT, socket.next_event())
            .await
            .map_err(|_| BenchError::Timeout("pusher:connection_established".into()))??;
        #[derive(Deserialize)]
        struct Established {
            socket_id: String,
        }
        match (event.event.as_str(), event.data_json::<Established>()) {
            ("pusher:connection_established", Some(e)) => socket.socket_id = e.socket_id,
            _ => {
                return Err(BenchError::Protocol(format!(
                    "expected pusher:connection_established, got {} {}",
                    event.event, event.data
                )))
            }
        }
        Ok(socket)
    }

    /// The next event, answering the gateway's `pusher:ping` on the way.
    async fn next_event(&mut self) -> Result<PusherEvent, BenchError> {
        loop {
            let frame = self.ws.next_frame().await?;
            let event: PusherEvent = serde_json::from_slice(self.ws.payload(&frame))
                .map_err(|e| BenchError::Protocol(format!("not a Pusher event: {e}")))?;
            if event.event == "pusher:ping" {
                self.ws.send_text(PONG).await?;
                continue;
            }
            return Ok(event);
        }
    }

    /// Sends a signed presence subscription as `user` with `user_info`.
    async fn subscribe(&mut self, channel: &str, user: &str, user_info: &Value) -> Result<(), BenchError> {
        let channel_data = json!({"user_id": user, "user_info": user_info}).to_string();
        let auth = channel_auth(APP_KEY, APP_SECRET, &self.socket_id, channel, Some(&channel_data));
        let frame = json!({"event": "pusher:subscribe", "data": {
            "channel": channel, "auth": auth, "channel_data": channel_data,
        }});
        self.ws.send_text(frame.to_string().as_bytes()).await
    }

    async fn unsubscribe(&mut self, channel: &str) -> Result<(), BenchError> {
        let frame = json!({"event": "pusher:unsubscribe", "data": {"channel": channel}});
        self.ws.send_text(frame.to_string().as_bytes()).await
    }

    /// Waits for the answer to a subscription of `channel`: true when it succeeded,
    /// false when it was refused. Other channels' events are skipped.
    async fn subscription_answer(&mut self, channel: &str) -> Result<bool, BenchError> {
        loop {
            let event = self.next_event().await?;
            match event.event.as_str() {
                "pusher_internal:subscription_succeeded" if event.is_on(channel) => return Ok(true),
                "pusher:subscription_error" if event.is_on(channel) => return Ok(false),
                _ => {}
            }
        }
    }
}

/// What the observers saw, shared by their tasks.
#[derive(Default)]
struct ObserverTally {
    /// (observer, phase, join number) → [member_added, member_removed] received.
    seen: HashMap<(usize, u32, u64), [u32; 2]>,
    /// Per phase: subscribe to `member_added` at an observer on another instance.
    crossing: HashMap<u32, LatencyRecorder>,
}

/// An observer connection: its instance and the channels it is a member of.
#[derive(Clone, Copy)]
struct ObserverPlace {
    instance: usize,
    first_channel: usize,
    channels: usize,
}

impl ObserverPlace {
    fn covers(&self, channel: usize) -> bool {
        (self.first_channel..self.first_channel + self.channels).contains(&channel)
    }
}

/// Reads an observer's events into the tally until `stop`.
async fn observe(
    mut socket: PusherSocket,
    index: usize,
    place: ObserverPlace,
    tally: Arc<Mutex<ObserverTally>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), BenchError> {
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            event = socket.next_event() => event?,
        };
        let slot = match event.event.as_str() {
            "pusher_internal:member_added" => 0,
            "pusher_internal:member_removed" => 1,
            _ => continue,
        };
        let Some(member) = event.data_json::<MemberData>() else {
            continue;
        };
        let Some((phase, k)) = member.user_id.as_str().and_then(parse_churn_user) else {
            continue;
        };
        let arrived = monotonic_ns();
        let Ok(mut counts) = tally.lock() else {
            return Err(BenchError::Options("observer tally poisoned".into()));
        };
        counts.seen.entry((index, phase, k)).or_default()[slot] += 1;
        if let (0, Some(stamp)) = (slot, member.user_info) {
            if stamp.gw != place.instance {
                counts
                    .crossing
                    .entry(phase)
                    .or_default()
                    .record(arrived.saturating_sub(stamp.t));
            }
        }
    }
}

/// One phase's schedule, shared by its churners.
struct PhasePlan {
    index: u32,
    /// Offered joins + leaves per second; none for max rate.
    rate: Option<f64>,
    start: Instant,
    end: Instant,
    channels: usize,
    hold: Duration,
    /// The next join number to claim.
    next: AtomicU64,
}

impl PhasePlan {
    /// When join `k` is due, or none once the phase is over.
    fn due(&self, k: u64) -> Option<Instant> {
        let due = match self.rate {
            // Each join is followed by its leave: half the operations are joins.
            Some(rate) => self.start + Duration::from_secs_f64(k as f64 / (rate / 2.0).max(1e-9)),
            None => Instant::now(),
        };
        (due < self.end).then_some(due)
    }
}

/// What one churner did in a phase.
#[derive(Default)]
struct ChurnReport {
    /// Join numbers acknowledged (each followed by its leave).
    acked: Vec<u64>,
    /// Join numbers whose answer did not come in time (left anyway).
    unanswered: Vec<u64>,
    refused: u64,
    /// Subscribe to `subscription_succeeded`.
    ack: LatencyRecorder,
    last_leave: Option<Instant>,
    error: Option<String>,
}

/// Joins and leaves as `plan` schedules until the phase ends; gives the socket back
/// unless it broke.
async fn churn(mut socket: PusherSocket, instance: usize, plan: Arc<PhasePlan>) -> (Option<PusherSocket>, ChurnReport) {
    let mut report = ChurnReport::default();
    loop {
        let k = plan.next.fetch_add(1, Ordering::Relaxed);
        let Some(due) = plan.due(k) else {
            return (Some(socket), report);
        };
        tokio::time::sleep_until(due).await;
        let channel = channel_name(k as usize % plan.channels);
        let sent = Instant::now();
        let stamp = json!({"t": monotonic_ns(), "gw": instance});
        let answered = async {
            socket.subscribe(&channel, &churn_user(plan.index, k), &stamp).await?;
            tokio::time::timeout(STEP_TIMEOUT, socket.subscription_answer(&channel))
                .await
                .ok()
                .transpose()
        };
        match answered.await {
            Ok(Some(true)) => {
                report.ack.record(sent.elapsed().as_nanos() as u64);
                report.acked.push(k);
            }
            Ok(Some(false)) => {
                report.refused += 1;
                continue;
            }
            Ok(None) => report.unanswered.push(k),
            Err(e) => {
                report.error = Some(e.to_string());
                return (None, report);
            }
        }
        if !plan.hold.is_zero() {
            tokio::time::sleep(plan.hold).await;
        }
        if let Err(e) = socket.unsubscribe(&channel).await {
            report.error = Some(e.to_string());
            return (None, report);
        }
        report.last_leave = Some(Instant::now());
    }
}

/// The observers' counts against the joins of a phase: one event expected per
/// observer of the channel, join and kind (`member_added`, `member_removed`).
#[derive(Debug, Default, PartialEq)]
struct ExactlyOnce {
    expected: u64,
    /// Expected events received exactly once.
    exact: u64,
    /// Expected events not received.
    missing: u64,
    /// Copies received beyond the first.
    duplicates: u64,
    /// Events for users of this phase no churner had joined with, or on a channel
    /// the observer is not a member of.
    unexpected: u64,
}

/// Checks that each observer of an acknowledged join's channel got its
/// `member_added` and `member_removed` once (`unanswered` joins are not counted,
/// nor held against the observers).
fn exactly_once(
    tally: &ObserverTally,
    places: &[ObserverPlace],
    phase: u32,
    channels: usize,
    acked: &[u64],
    unanswered: &[u64],
) -> ExactlyOnce {
    let mut out = ExactlyOnce::default();
    for &k in acked {
        for (o, place) in places.iter().enumerate() {
            if !place.covers(k as usize % channels) {
                continue;
            }
            let counts = tally.seen.get(&(o, phase, k)).copied().unwrap_or_default();
            for n in counts {
                out.expected += 1;
                match n {
                    0 => out.missing += 1,
                    1 => out.exact += 1,
                    n => out.duplicates += u64::from(n - 1),
                }
            }
        }
    }
    let known: std::collections::HashSet<u64> = acked.iter().chain(unanswered).copied().collect();
    for (&(o, p, k), counts) in &tally.seen {
        let covered = places.get(o).is_some_and(|place| place.covers(k as usize % channels));
        if p == phase && (!known.contains(&k) || !covered) {
            out.unexpected += u64::from(counts[0] + counts[1]);
        }
    }
    out
}

/// CPU seconds per second the gateways and Redis spend with every client
/// connected and nothing happening (heartbeats, timers).
#[derive(Default, Clone, Copy)]
struct IdleCpu {
    gateways: f64,
    redis: f64,
}

/// CPU readings at the start of a phase.
struct CpuMark {
    at: Instant,
    gateways: f64,
    redis: f64,
    harness: f64,
    machine: f64,
}

impl CpuMark {
    fn now(server: &ServerUnderTest) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            gateways: server.sample().cpu_seconds,
            redis: server.sample_redis().cpu_seconds,
            harness: proc_stats::sample_process(std::process::id() as i32).cpu_seconds,
            machine: proc_stats::machine_busy_seconds(),
        }
    }

    /// The gateways' and Redis's CPU seconds per second since the mark.
    fn idle(&self, server: &ServerUnderTest) -> IdleCpu {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        IdleCpu {
            gateways: (server.sample().cpu_seconds - self.gateways) / wall,
            redis: (server.sample_redis().cpu_seconds - self.redis) / wall,
        }
    }

    /// Records the CPU figures since the mark, per operation for `ops`, also above
    /// `idle`; the cores' utilisation is over the `busy` seconds of the window (the
    /// churn and the wait for its last events, not the idle grace after them).
    fn finish(
        &self,
        server: &ServerUnderTest,
        harness: &Harness,
        (ops, busy): (f64, f64),
        idle: IdleCpu,
        rec: &mut ScenarioRecord,
    ) {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let busy = busy.clamp(1e-9, wall);
        let g = server.sample().cpu_seconds - self.gateways;
        let r = server.sample_redis().cpu_seconds - self.redis;
        let h = proc_stats::sample_process(std::process::id() as i32).cpu_seconds - self.harness;
        let m = proc_stats::machine_busy_seconds() - self.machine;
        let per_op = |cpu: f64| cpu * 1e6 / ops.max(1.0);
        rec.set("wall_seconds", wall);
        rec.set("gateway_cpu_seconds", g);
        rec.set("redis_cpu_seconds", r);
        rec.set("harness_cpu_seconds", h);
        rec.set("gateway_cpu_us_per_op", per_op(g));
        rec.set("redis_cpu_us_per_op", per_op(r));
        rec.set("stack_cpu_us_per_op", per_op(g + r));
        rec.set("ops_per_stack_cpu_second", ops / (g + r).max(1e-9));
        rec.set("idle_gateway_cpu_util", idle.gateways);
        rec.set("idle_redis_cpu_util", idle.redis);
        rec.set("gateway_cpu_us_per_op_above_idle", per_op(g - idle.gateways * wall));
        rec.set("redis_cpu_us_per_op_above_idle", per_op(r - idle.redis * wall));
        rec.set(
            "server_cpu_util",
            (g + r) / busy / harness.servers.cpus.len().max(1) as f64,
        );
        rec.set("loadgen_cpu_util", h / busy / harness.loadgen_cpus.len().max(1) as f64);
        rec.set(
            "other_cpu_util",
            (m - g - r - h).max(0.0) / wall / crate::cpu_pinning::online_cpus() as f64,
        );
    }
}

/// The connections of one run, kept across its phases.
struct PresenceRun {
    places: Vec<ObserverPlace>,
    tally: Arc<Mutex<ObserverTally>>,
    stop: watch::Sender<bool>,
    observers: JoinSet<Result<(), BenchError>>,
    /// Churner sockets with their instance.
    churners: Vec<(usize, PusherSocket)>,
}

impl PresenceRun {
    /// Observers on every instance (members of every channel) and the churners.
    async fn connect(server: &ServerUnderTest, args: &PresenceArgs) -> Result<PresenceRun, BenchError> {
        let (stop, stopped) = watch::channel(false);
        let mut run = PresenceRun {
            places: Vec::new(),
            tally: Arc::default(),
            stop,
            observers: JoinSet::new(),
            churners: Vec::new(),
        };
        for (instance, &addr) in server.ws.iter().enumerate() {
            for first_channel in (0..args.channels).step_by(CHANNELS_PER_OBSERVER) {
                let place = ObserverPlace {
                    instance,
                    first_channel,
                    channels: CHANNELS_PER_OBSERVER.min(args.channels - first_channel),
                };
                let mut socket = PusherSocket::connect(addr).await?;
                let user = format!("observer-{instance}-{first_channel}");
                for c in first_channel..first_channel + place.channels {
                    let channel = channel_name(c);
                    socket.subscribe(&channel, &user, &json!({})).await?;
                    let answer = tokio::time::timeout(STEP_TIMEOUT, socket.subscription_answer(&channel))
                        .await
                        .map_err(|_| BenchError::Timeout(format!("observer subscription to {channel}")))??;
                    if !answer {
                        return Err(BenchError::Protocol(format!("observer refused on {channel}")));
                    }
                }
                let index = run.places.len();
                run.places.push(place);
                let task = observe(socket, index, place, run.tally.clone(), stopped.clone());
                run.observers.spawn(task);
            }
        }
        for j in 0..args.churners {
            let instance = j % server.ws.len().max(1);
            run.churners
                .push((instance, PusherSocket::connect(server.ws[instance]).await?));
        }
        Ok(run)
    }

    /// Stops the observers; the first error any of them met, if one did.
    async fn finish(mut self) -> Result<(), BenchError> {
        let _ = self.stop.send(true);
        let mut first = Ok(());
        while let Some(done) = self.observers.join_next().await {
            if let (Ok(Err(e)), Ok(())) = (done, &first) {
                first = Err(e);
            }
        }
        first
    }
}

impl Harness {
    /// Runs the presence scenario on shardcast (the only target with presence).
    pub async fn presence(&self, args: &PresenceArgs) -> Outcome {
        let mut outcome = Outcome::default();
        if self.targets.iter().any(|t| *t != ServerKind::Shardcast) {
            eprintln!("presence: only shardcast is measured; the other servers are skipped");
        }
        if self.servers.gateways < 2 {
            eprintln!("presence: with one gateway no event crosses instances (pass --gateways 3)");
        }
        let config = match write_app_config() {
            Ok(path) => path,
            Err(e) => {
                eprintln!("!! presence: {e}");
                outcome.failures += 1;
                return outcome;
            }
        };
        let mut harness = self.clone();
        harness.servers.via_redis = true;
        harness
            .servers
            .shardcast_args
            .extend(["--config".to_owned(), config.display().to_string()]);
        let repeats = self.repeats.max(1);
        let mut runs = Vec::new();
        for run in 1..=repeats {
            eprintln!(
                "== presence {} channels, shardcast ×{} via Redis (run {run} of {repeats}) ==",
                args.channels,
                harness.servers.gateways.max(1)
            );
            match tokio::time::timeout(self.time_limit, harness.presence_once(args)).await {
                Ok(Ok(records)) => runs.push(records),
                Ok(Err(e)) => {
                    eprintln!("!! presence: {e}");
                    outcome.failures += 1;
                }
                Err(_) => {
                    eprintln!("!! presence: time limit of {:?} reached", self.time_limit);
                    outcome.failures += 1;
                }
            }
        }
        let _ = std::fs::remove_file(&config);
        let mut records = merge_runs(runs);
        for r in &mut records {
            r.set("gateways", harness.servers.gateways.max(1) as f64);
            if r.mark_if_busy() {
                eprintln!("!! presence {}: BUSY machine, figures marked", r.phase);
            }
            if let Some(problem) = self.strict.then(|| strict_problem(r)).flatten() {
                eprintln!("!! presence {}: {problem}", r.phase);
                outcome.failures += 1;
            }
        }
        eprintln!("{}", presence_table(&records));
        outcome.records = records;
        outcome
    }

    /// One run: start the gateways and Redis, connect, run every phase, stop.
    async fn presence_once(&self, args: &PresenceArgs) -> Result<Vec<ScenarioRecord>, BenchError> {
        if args.channels == 0 || args.churners == 0 {
            return Err(BenchError::Options("--channels and --churners must be above 0".into()));
        }
        let server = ServerUnderTest::start(ServerKind::Shardcast, &self.servers)?;
        let result = self.presence_phases(&server, args).await;
        if result.is_err() {
            for line in server.log_tail().iter().rev().take(5) {
                eprintln!("   server log: {line}");
            }
        }
        server.stop();
        result
    }

    async fn presence_phases(
        &self,
        server: &ServerUnderTest,
        args: &PresenceArgs,
    ) -> Result<Vec<ScenarioRecord>, BenchError> {
        let mut run = PresenceRun::connect(server, args).await?;
        let mut idle = IdleCpu::default();
        if args.idle_seconds > 0.0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mark = CpuMark::now(server);
            tokio::time::sleep(Duration::from_secs_f64(args.idle_seconds)).await;
            idle = mark.idle(server);
            eprintln!(
                "[presence idle] gateways {:.1}%, Redis {:.1}% of a core",
                idle.gateways * 100.0,
                idle.redis * 100.0
            );
        }
        let mut phases: Vec<(Option<f64>, f64)> = args
            .rates
            .iter()
            .filter(|r| **r > 0.0)
            .map(|&r| (Some(r), args.fixed_seconds))
            .collect();
        if args.max_seconds > 0.0 {
            phases.push((None, args.max_seconds));
        }
        let mut records = Vec::new();
        for (index, (rate, seconds)) in phases.into_iter().enumerate() {
            let rec = self
                .presence_phase(server, args, &mut run, idle, (index as u32, rate, seconds))
                .await?;
            records.push(rec);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        run.finish().await?;
        Ok(records)
    }

    /// Phase `index`: churn at `rate` (none: max) for `seconds`, wait for the
    /// observers, measure.
    async fn presence_phase(
        &self,
        server: &ServerUnderTest,
        args: &PresenceArgs,
        run: &mut PresenceRun,
        idle: IdleCpu,
        (index, rate, seconds): (u32, Option<f64>, f64),
    ) -> Result<ScenarioRecord, BenchError> {
        let phase_name = rate.map_or("max".to_owned(), |r| format!("{r:.0}/s"));
        eprintln!(
            "[presence {phase_name}] {} churners for {seconds} s",
            run.churners.len()
        );
        let cpu = CpuMark::now(server);
        let start = Instant::now();
        let plan = Arc::new(PhasePlan {
            index,
            rate,
            start,
            end: start + Duration::from_secs_f64(seconds),
            channels: args.channels,
            hold: Duration::from_millis(args.hold_ms),
            next: AtomicU64::new(0),
        });
        let mut tasks = JoinSet::new();
        for (instance, socket) in run.churners.drain(..) {
            let plan = plan.clone();
            tasks.spawn(async move { (instance, churn(socket, instance, plan).await) });
        }
        let mut acked = Vec::new();
        let mut unanswered = Vec::new();
        let (mut refused, mut errors, mut first_error) = (0u64, 0u64, None);
        let mut ack = LatencyRecorder::new();
        let mut last_leave = start;
        while let Some(done) = tasks.join_next().await {
            let Ok((instance, (socket, report))) = done else {
                errors += 1;
                continue;
            };
            if let Some(socket) = socket {
                run.churners.push((instance, socket));
            }
            acked.extend(report.acked);
            unanswered.extend(report.unanswered);
            refused += report.refused;
            ack.merge(&report.ack.to_buckets());
            last_leave = last_leave.max(report.last_leave.unwrap_or(start));
            if let Some(e) = report.error {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
        let active = last_leave.duration_since(start).as_secs_f64().max(1e-9);
        // Every join's events, or the settle bound.
        let settle_until = Instant::now() + Duration::from_secs_f64(args.settle_seconds);
        loop {
            let counts = {
                let tally = run
                    .tally
                    .lock()
                    .map_err(|_| BenchError::Options("observer tally poisoned".into()))?;
                exactly_once(&tally, &run.places, index, args.channels, &acked, &unanswered)
            };
            if counts.missing == 0 || Instant::now() >= settle_until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let settle = Instant::now().duration_since(last_leave).as_secs_f64();
        tokio::time::sleep(DUPLICATE_GRACE).await;
        let (counts, crossing) = {
            let mut tally = run
                .tally
                .lock()
                .map_err(|_| BenchError::Options("observer tally poisoned".into()))?;
            let late = exactly_once(&tally, &run.places, index, args.channels, &acked, &unanswered);
            let crossing = tally.crossing.remove(&index).unwrap_or_default();
            tally.seen.retain(|&(_, p, _), _| p != index);
            (late, crossing)
        };

        let ops = 2.0 * acked.len() as f64;
        let mut rec = ScenarioRecord::new("presence", ServerKind::Shardcast, args.channels, &phase_name);
        cpu.finish(server, self, (ops, active + settle), idle, &mut rec);
        if let Some(r) = rate {
            rec.set("offered_ops_per_second", r);
        }
        rec.set("channels", args.channels as f64);
        rec.set("churners", args.churners as f64);
        rec.set("observer_connections", run.places.len() as f64);
        rec.set("joins", acked.len() as f64);
        rec.set("leaves", acked.len() as f64);
        rec.set("joins_refused", refused as f64);
        rec.set("joins_unanswered", unanswered.len() as f64);
        rec.set("churner_errors", errors as f64);
        rec.set("active_seconds", active);
        rec.set("ops_per_second", ops / active);
        rec.set("settle_seconds", settle);
        rec.set("events_expected", counts.expected as f64);
        rec.set("events_exactly_once", counts.exact as f64);
        rec.set("events_missing", counts.missing as f64);
        rec.set("events_duplicate", counts.duplicates as f64);
        rec.set("events_unexpected", counts.unexpected as f64);
        rec.set(
            "exactly_once_fraction",
            counts.exact as f64 / (counts.expected as f64).max(1.0),
        );
        let ack = ack.summary();
        rec.set("join_ack_p50_ms", ack.p50_ms);
        rec.set("join_ack_p99_ms", ack.p99_ms);
        rec.latency = Some(crossing.summary());
        rec.limited_by = judge_limit(&rec, if rate.is_some() { Pace::Fixed } else { Pace::Churn });
        if let Some(e) = first_error {
            rec.notes.push(format!("{errors} churner(s) failed, first: {e}"));
        }
        eprintln!("   {}", presence_line(&rec));
        Ok(rec)
    }
}

/// Writes the gateways' configuration (the one Pusher app) to a temporary file.
fn write_app_config() -> Result<PathBuf, BenchError> {
    let path = std::env::temp_dir().join(format!("shardcast-bench-presence-{}.toml", std::process::id()));
    let text = format!("[pusher.apps.\"{APP_ID}\"]\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n");
    std::fs::write(&path, text).context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Why a record fails the smoke test's checks, if it does.
fn strict_problem(r: &ScenarioRecord) -> Option<String> {
    let count = |k: &str| r.get(k).unwrap_or(0.0);
    if count("joins") <= 0.0 {
        return Some("no join was acknowledged".into());
    }
    let wrong = count("events_missing") + count("events_duplicate") + count("churner_errors");
    (wrong > 0.0).then(|| {
        format!(
            "{} events missing, {} duplicated, {} churner errors",
            count("events_missing"),
            count("events_duplicate"),
            count("churner_errors")
        )
    })
}

/// One line per phase for the console.
fn presence_line(r: &ScenarioRecord) -> String {
    let f = |k: &str| r.get(k).unwrap_or(f64::NAN);
    let l = r.latency.unwrap_or_default();
    format!(
        "presence {} channels {}: {:.0} joins+leaves/s, exactly once {:.4} (missing {:.0}, duplicated {:.0}), \
         member_added across instances p50 {:.2} p99 {:.2} ms, join ack p50 {:.2} p99 {:.2} ms, \
         {:.1} µs gateway + {:.1} µs Redis CPU per op ({:.1} + {:.1} above idle) [{}]",
        r.size,
        r.phase,
        f("ops_per_second"),
        f("exactly_once_fraction"),
        f("events_missing"),
        f("events_duplicate"),
        l.p50_ms,
        l.p99_ms,
        f("join_ack_p50_ms"),
        f("join_ack_p99_ms"),
        f("gateway_cpu_us_per_op"),
        f("redis_cpu_us_per_op"),
        f("gateway_cpu_us_per_op_above_idle"),
        f("redis_cpu_us_per_op_above_idle"),
        r.limited_by
    )
}

/// The summary table of the presence scenario's records, fixed rates first.
pub fn presence_table(records: &[ScenarioRecord]) -> String {
    let mut sorted: Vec<&ScenarioRecord> = records.iter().filter(|r| r.scenario == "presence").collect();
    sorted.sort_by(|a, b| {
        let rate = |r: &ScenarioRecord| r.get("offered_ops_per_second").unwrap_or(f64::INFINITY);
        (a.size, rate(a))
            .partial_cmp(&(b.size, rate(b)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut out = String::from(
        "| channels | instances | offered joins+leaves/s | achieved/s | exactly once | missing | duplicated | member_added across instances p50 / p99 ms | join ack p50 / p99 ms | gateway CPU µs / op, above idle | Redis CPU µs / op, above idle | ops per stack CPU-s | limited by |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in sorted {
        let l = r.latency.unwrap_or_default();
        let fig = |k: &str, digits: usize| crate::report::fig(r, k, digits);
        let with_above_idle = |k: &str| match r.get(&format!("{k}_above_idle")) {
            Some(v) => format!("{}, {v:.1} above idle", fig(k, 1)),
            None => fig(k, 1),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} / {:.2} | {} / {} | {} | {} | {} | {} |",
            r.size,
            fig("gateways", 0),
            r.get("offered_ops_per_second")
                .map_or("max".into(), |v| format!("{v:.0}")),
            fig("ops_per_second", 0),
            r.get("exactly_once_fraction")
                .map_or("–".into(), |v| format!("{:.2}%", v * 100.0)),
            fig("events_missing", 0),
            fig("events_duplicate", 0),
            l.p50_ms,
            l.p99_ms,
            fig("join_ack_p50_ms", 2),
            fig("join_ack_p99_ms", 2),
            with_above_idle("gateway_cpu_us_per_op"),
            with_above_idle("redis_cpu_us_per_op"),
            fig("ops_per_stack_cpu_second", 0),
            r.limited_by
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_channel_auth_matches_pushers_example() {
        let auth = channel_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "1234.1234",
            "private-foobar",
            None,
        );
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    /// The same vector as the gateway's own test (what the `pusher` npm library signs).
    #[test]
    fn a_presence_channel_auth_signs_the_channel_data() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let auth = channel_auth(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "1234.1234",
            "presence-foobar",
            Some(data),
        );
        assert_eq!(
            auth,
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
    }

    #[test]
    fn churn_user_ids_round_trip_and_observers_are_not_churners() {
        assert_eq!(parse_churn_user(&churn_user(3, 12345)), Some((3, 12345)));
        assert_eq!(parse_churn_user("observer-0-0"), None);
        assert_eq!(parse_churn_user("pxu1"), None);
    }

    #[test]
    fn exactly_once_counts_misses_duplicates_and_strangers() {
        // Two instances, one observer each, both members of channels 0 and 1.
        let places = [
            ObserverPlace {
                instance: 0,
                first_channel: 0,
                channels: 2,
            },
            ObserverPlace {
                instance: 1,
                first_channel: 0,
                channels: 2,
            },
        ];
        let mut tally = ObserverTally::default();
        tally.seen.insert((0, 0, 0), [1, 1]);
        tally.seen.insert((1, 0, 0), [2, 1]);
        tally.seen.insert((0, 0, 1), [1, 0]);
        tally.seen.insert((1, 0, 7), [1, 1]);
        tally.seen.insert((0, 1, 9), [1, 1]);
        let counts = exactly_once(&tally, &places, 0, 2, &[0, 1], &[]);
        assert_eq!(
            counts,
            ExactlyOnce {
                expected: 8,
                exact: 4,
                missing: 3,
                duplicates: 1,
                unexpected: 2,
            }
        );
    }

    #[test]
    fn a_fixed_rate_spaces_joins_by_half_the_operations() {
        let start = Instant::now();
        let plan = PhasePlan {
            index: 0,
            rate: Some(100.0),
            start,
            end: start + Duration::from_secs(1),
            channels: 1,
            hold: Duration::ZERO,
            next: AtomicU64::new(0),
        };
        assert_eq!(plan.due(1), Some(start + Duration::from_millis(20)));
        assert_eq!(plan.due(49), Some(start + Duration::from_millis(980)));
        assert_eq!(plan.due(50), None);
    }
}
