//! `shardcast-bench`: the benchmark harness's command line. Each scenario is a
//! subcommand that runs shardcast and the baselines back to back and writes its
//! figures to `<out>/<scenario>.json`, then regenerates `<out>/summary.md` and the
//! charts. `floor` runs the floor server; `worker` is the load-generator process
//! the scenarios spawn (not for direct use).

mod chart;
mod clock;
mod cpu_pinning;
mod error;
mod fleet;
mod floor;
mod history;
mod http_client;
mod latency;
mod loadgen;
mod permessage_deflate;
mod presence_churn;
mod proc_stats;
mod publisher;
mod pusher_wire;
mod record;
mod report;
mod scenarios;
mod servers;
mod stream_cursor;
mod tokens;
mod worker_protocol;
mod ws_client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};

use crate::error::BenchError;
use crate::publisher::PayloadShape;
use crate::record::{MachineInfo, ResultsFile};
use crate::scenarios::{CompressionMode, Harness, Outcome, PublishKnobs};
use crate::servers::{ServerKind, ServerOptions};

#[derive(Parser)]
#[command(
    name = "shardcast-bench",
    about = "Benchmarks shardcast against a floor server and a Node.js stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N subscribed idle connections: server RSS and kernel memory per connection, connect rate.
    Idle {
        #[command(flatten)]
        common: CommonArgs,
        /// Connection counts to measure, one run each.
        #[arg(long, value_delimiter = ',', default_value = "5000,10000,19000")]
        connections: Vec<usize>,
    },
    /// One channel with S subscribers: fixed-rate then max-rate publishing.
    Fanout {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        publish: PublishArgs,
        /// Subscriber counts to measure, one run each.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,18000")]
        subscribers: Vec<usize>,
    },
    /// One channel, S subscribers, each of a few fixed publication rates: what
    /// corking (one write per socket per busy turn) does to latency and CPU.
    Corking {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        publish: PublishArgs,
        /// Subscriber counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        subscribers: Vec<usize>,
        /// Publications per second offered, one run each (the fixed phase's length
        /// is --fixed-seconds; there is no max-rate phase).
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        rates: Vec<f64>,
    },
    /// One channel, S subscribers offering permessage-deflate as browsers do, a
    /// ~2 KB JSON document per publication: shardcast `--compression on` (compressed
    /// once per publication) against Node `ws` with perMessageDeflate (compressed per
    /// socket), then both uncompressed; fixed-rate then max-rate publishing.
    Compression {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        publish: PublishArgs,
        /// Subscriber counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "5000")]
        subscribers: Vec<usize>,
        /// Server compression settings to run, in order.
        #[arg(long, value_delimiter = ',', default_value = "on,off")]
        modes: Vec<CompressionMode>,
    },
    /// Many channels with few subscribers each, random publishes in batches.
    Channels {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        publish: PublishArgs,
        /// Number of channels.
        #[arg(long, default_value_t = 9000)]
        channels: usize,
        /// Subscribers per channel.
        #[arg(long, default_value_t = 2)]
        subscribers_per_channel: usize,
    },
    /// Drop all N clients at once and reconnect them: time until all are subscribed again.
    Storm {
        #[command(flatten)]
        common: CommonArgs,
        /// Connection counts to measure, one run each.
        #[arg(long, value_delimiter = ',', default_value = "19000")]
        connections: Vec<usize>,
    },
    /// Connect cost of token verification: shardcast without a token, with HS256 and
    /// with RS256 tokens (N clients each), then one-channel fanout without and with
    /// HS256 tokens.
    AuthConnect {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        publish: PublishArgs,
        /// Clients per configuration, each with its own `sub`.
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// Subscribers of the fanout comparison (0 skips it).
        #[arg(long, default_value_t = 5000)]
        fanout_subscribers: usize,
        /// Runs of each configuration, interleaved, merged into one figure each.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// History and recovery (shardcast only): publications per second with history
    /// on and off, in-process and through Redis; memory per retained publication;
    /// reconnect storms with and without `recover`, clients dropping and a gateway
    /// killed.
    History {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        history: history::HistoryArgs,
    },
    /// Presence churn (shardcast only, through Redis): Pusher members joining and
    /// leaving presence channels at fixed rates, then at max rate, with observer
    /// members on every instance checking each join and leave arrives exactly once.
    Presence {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        presence: presence_churn::PresenceArgs,
    },
    /// Rewrites summary.md and the SVG charts from the results files in a directory.
    Report {
        /// Results directory.
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
    },
    /// Runs the floor server (upgrade + pre-built frames, no protocol work).
    Floor {
        /// WebSocket address.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Publish API address.
        #[arg(long, default_value = "127.0.0.1:0")]
        admin_listen: SocketAddr,
        /// Event-loop threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// A load-generator worker process (spawned by the scenarios).
    #[command(hide = true)]
    Worker {
        /// The worker's spec, JSON.
        #[arg(long)]
        spec: String,
    },
}

#[derive(Args, Clone)]
struct CommonArgs {
    /// Servers to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "shardcast,floor,node,socketio")]
    targets: Vec<ServerKind>,
    /// The shardcast binary.
    #[arg(long, default_value = "target/release/shardcast")]
    shardcast_bin: PathBuf,
    /// Extra shardcast argument (repeatable), e.g. --shardcast-arg=--max-queue-bytes=4194304.
    #[arg(long = "shardcast-arg", allow_hyphen_values = true)]
    shardcast_args: Vec<String>,
    /// shardcast processes; above 1 they share publications through Redis (--via-redis).
    #[arg(long, default_value_t = 1)]
    gateways: usize,
    /// Start a Redis and pass `--redis` to shardcast (needs the gateway's Redis broker).
    #[arg(long)]
    via_redis: bool,
    /// Directory of the Node.js baseline (server.js, node_modules).
    #[arg(long, default_value = "bench/node")]
    node_dir: PathBuf,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// The Sockudo binary (the `sockudo` target); a bare name is looked up on PATH.
    #[arg(long, default_value = "sockudo")]
    sockudo_bin: PathBuf,
    /// Node cluster workers (0: one per gateway CPU); above 19k connections Node needs
    /// several, as each process holds at most 20,000 descriptors.
    #[arg(long, default_value_t = 0)]
    node_workers: usize,
    /// CPUs for the server under test (shards / Node workers = their count).
    #[arg(long, default_value = "0")]
    gateway_cpus: String,
    /// CPUs for the load generators and this process.
    #[arg(long, default_value = "1")]
    loadgen_cpus: String,
    /// Most sockets per load-generator process (a process may hold 20,000 descriptors).
    #[arg(long, default_value_t = 10_000)]
    per_worker: usize,
    /// Connects per second, all workers together (0: unpaced).
    #[arg(long, default_value_t = 5000.0)]
    connect_rate: f64,
    /// Upgrades in flight per worker.
    #[arg(long, default_value_t = 1000)]
    max_in_flight: usize,
    /// Time limit of one server's run at one size, seconds.
    #[arg(long, default_value_t = 120)]
    time_limit: u64,
    /// Results directory.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Results file name (default: the scenario's name).
    #[arg(long)]
    name: Option<String>,
    /// Fail when a connection did not subscribe or a delivery went missing (smoke test).
    #[arg(long)]
    strict: bool,
    /// Runs of each server at each size: figures are the median, with min-max.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// shardcast's subscribers speak MessagePack (shardcast.v1.msgpack) instead of JSON.
    #[arg(long)]
    msgpack: bool,
}

#[derive(Args, Clone)]
struct PublishArgs {
    /// Fixed publish rate, publications per second (0 skips the fixed-rate phase).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Fixed rate given as deliveries per second instead: the publication rate is this
    /// divided by the subscribers per channel, so every size gets the same load.
    #[arg(long)]
    offered_deliveries: Option<f64>,
    /// Seconds of fixed-rate publishing.
    #[arg(long, default_value_t = 8.0)]
    fixed_seconds: f64,
    /// Seconds of max-rate publishing (0 skips it).
    #[arg(long, default_value_t = 8.0)]
    max_seconds: f64,
    /// Publications per HTTP request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Concurrent HTTP connections of the publisher.
    #[arg(long, default_value_t = 2)]
    http_connections: usize,
    /// Size of each publication's data, bytes [default: 64; compression: 2048].
    #[arg(long)]
    payload_bytes: Option<usize>,
    /// Most publications per phase.
    #[arg(long, default_value_t = 10_000_000)]
    max_publications: u64,
}

impl PublishArgs {
    fn knobs(&self) -> PublishKnobs {
        self.knobs_with_payload(64)
    }

    /// The knobs, with `payload_bytes` when `--payload-bytes` is not given.
    fn knobs_with_payload(&self, payload_bytes: usize) -> PublishKnobs {
        PublishKnobs {
            rate: self.rate,
            offered_deliveries: self.offered_deliveries,
            fixed_seconds: self.fixed_seconds,
            max_seconds: self.max_seconds,
            batch: self.batch.clamp(1, 1000),
            http_connections: self.http_connections,
            payload_bytes: self.payload_bytes.unwrap_or(payload_bytes),
            shape: PayloadShape::Padding,
            max_publications: self.max_publications,
        }
    }
}

impl CommonArgs {
    fn harness(&self) -> Result<Harness, BenchError> {
        let gateway_cpus = cpu_pinning::parse_cpu_list(&self.gateway_cpus)?;
        let loadgen_cpus = cpu_pinning::parse_cpu_list(&self.loadgen_cpus)?;
        if gateway_cpus.iter().any(|c| loadgen_cpus.contains(c)) {
            eprintln!("warning: gateway and load-generator CPUs overlap; figures will include their contention");
        }
        if self.per_worker > 18_000 {
            return Err(BenchError::Options(
                "--per-worker above 18000 would exceed the 20,000-descriptor limit".into(),
            ));
        }
        if self
            .targets
            .iter()
            .any(|t| matches!(t, ServerKind::Shardcast | ServerKind::ShardcastPusher))
            && !self.shardcast_bin.exists()
        {
            return Err(BenchError::Options(format!(
                "{} not found: build it with `cargo build --release --bin shardcast`",
                self.shardcast_bin.display()
            )));
        }
        let mut shardcast_args = vec!["--drain-window".to_owned(), "1s".to_owned()];
        shardcast_args.extend(self.shardcast_args.iter().cloned());
        Ok(Harness {
            servers: ServerOptions {
                shardcast_bin: self.shardcast_bin.clone(),
                shardcast_args,
                gateways: self.gateways,
                via_redis: self.via_redis,
                node_dir: self.node_dir.clone(),
                redis_server: self.redis_server.clone(),
                node_workers: self.node_workers,
                cpus: gateway_cpus,
                compression: false,
                sockudo_bin: self.sockudo_bin.clone(),
            },
            targets: self.targets.clone(),
            loadgen_cpus,
            per_worker: self.per_worker,
            connect_rate: self.connect_rate,
            max_in_flight: self.max_in_flight,
            time_limit: Duration::from_secs(self.time_limit),
            out_dir: self.out.clone(),
            strict: self.strict,
            token_file: None,
            repeats: self.repeats.max(1),
            msgpack: self.msgpack,
            offer_deflate: false,
        })
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Worker { spec } => serde_json::from_str(&spec)
            .map_err(BenchError::from)
            .and_then(loadgen::run_worker),
        Command::Floor {
            listen,
            admin_listen,
            threads,
        } => floor::run_floor(floor::FloorOptions {
            listen,
            admin_listen,
            threads,
        }),
        Command::Report { results } => report::write_report(&results),
        scenario => run_scenario(scenario),
    };
    match result {
        Ok(()) => {}
        Err(e) => {
            eprintln!("shardcast-bench: {e}");
            std::process::exit(1);
        }
    }
}

fn run_scenario(command: Command) -> Result<(), BenchError> {
    let (name, common) = match &command {
        Command::Idle { common, .. } => ("idle", common),
        Command::Fanout { common, .. } => ("fanout", common),
        Command::Channels { common, .. } => ("channels", common),
        Command::Corking { common, .. } => ("corking", common),
        Command::Compression { common, .. } => ("compression", common),
        Command::Storm { common, .. } => ("storm", common),
        Command::AuthConnect { common, .. } => ("auth_connect", common),
        Command::History { common, .. } => ("history", common),
        Command::Presence { common, .. } => ("presence", common),
        _ => return Err(BenchError::Options("not a scenario".into())),
    };
    let harness = common.harness()?;
    // Pin before the runtime exists so this process (the publisher) stays off the
    // server's cores along with the load generators it spawns.
    if let Err(e) = cpu_pinning::pin_current_thread(&harness.loadgen_cpus) {
        eprintln!("warning: cannot pin the harness to {:?}: {e}", harness.loadgen_cpus);
    }
    eprintln!(
        "shardcast-bench {name}: servers pinned to CPU {}, load generators and publisher pinned to CPU {} (of {} online)",
        cpu_pinning::format_cpu_list(&harness.servers.cpus),
        cpu_pinning::format_cpu_list(&harness.loadgen_cpus),
        cpu_pinning::online_cpus()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Io {
            context: "build the runtime".into(),
            source: e,
        })?;
    let outcome: Outcome = runtime.block_on(async {
        match &command {
            Command::Idle { connections, .. } => harness.idle(connections).await,
            Command::Fanout {
                subscribers, publish, ..
            } => harness.fanout(subscribers, &publish.knobs()).await,
            Command::Channels {
                channels,
                subscribers_per_channel,
                publish,
                ..
            } => {
                harness
                    .channels(*channels, *subscribers_per_channel, &publish.knobs())
                    .await
            }
            Command::Corking {
                subscribers,
                rates,
                publish,
                ..
            } => harness.corking(subscribers, rates, &publish.knobs()).await,
            Command::Compression {
                subscribers,
                modes,
                publish,
                ..
            } => {
                harness
                    .compression(subscribers, modes, &publish.knobs_with_payload(2048))
                    .await
            }
            Command::Storm { connections, .. } => harness.storm(connections).await,
            Command::AuthConnect {
                connections,
                fanout_subscribers,
                rounds,
                publish,
                ..
            } => {
                harness
                    .auth_connect(*connections, *fanout_subscribers, *rounds, &publish.knobs())
                    .await
            }
            Command::History { history, .. } => harness.history(history).await,
            Command::Presence { presence, .. } => harness.presence(presence).await,
            _ => Outcome::default(),
        }
    });
    let file = ResultsFile {
        machine: MachineInfo::current(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        finished_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        gateway_cpus: harness.servers.cpus.clone(),
        loadgen_cpus: harness.loadgen_cpus.clone(),
        records: outcome.records,
    };
    let file_name = common.name.clone().unwrap_or_else(|| name.to_owned());
    file.write(&harness.out_dir, &file_name)?;
    report::write_report(&harness.out_dir)?;
    eprintln!(
        "results: {}/{file_name}.json, summary: {}/summary.md",
        harness.out_dir.display(),
        harness.out_dir.display()
    );
    if outcome.failures > 0 {
        return Err(BenchError::Options(format!(
            "{} server run(s) failed",
            outcome.failures
        )));
    }
    Ok(())
}
