//! `shardcast-cli`: a command-line client of a shardcast gateway. `sub` prints the
//! messages of channels as JSON lines and stays connected across gateway restarts,
//! `pub` publishes through the admin HTTP API, `stats` prints an instance's stats
//! or the cluster's connection counts, `top` ([`top`]) keeps those figures on
//! screen, refreshed in place. Status goes to stderr, data to stdout, so the
//! output pipes cleanly into tools such as `jq`.

#[path = "shardcast-cli/top.rs"]
mod top;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use shardcast_client::{AdminClient, Client, ClientEvent, ClusterView, Encoding, Error};

/// A client stop with this code had no close frame behind it: the reason says it all.
const ABNORMAL_CLOSURE: u16 = 1006;

/// Command-line client of a shardcast WebSocket gateway.
#[derive(Debug, Parser)]
#[command(name = "shardcast-cli", version, about, long_about = None)]
struct Cli {
    /// The gateway's WebSocket endpoint (ws:// only; for TLS, use a proxy in front).
    #[arg(long, global = true, value_name = "URL", default_value = "ws://127.0.0.1:8000/ws")]
    url: String,

    /// The gateway's admin API, used by `pub` and `stats` (plain http:// only: the admin port has no TLS).
    #[arg(long, global = true, value_name = "URL", default_value = "http://127.0.0.1:8001")]
    admin: String,

    /// The admin API key, sent as `Authorization: Bearer <key>`.
    #[arg(long, global = true, env = "SHARDCAST_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// The WebSocket frame encoding for `sub`.
    #[arg(long, global = true, value_enum, default_value_t = EncodingArg::Json)]
    encoding: EncodingArg,

    /// Diagnostics on stderr: a tracing filter such as `info` or `shardcast_client=debug`.
    #[arg(long, global = true, value_name = "FILTER", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EncodingArg {
    /// shardcast.v1.json: JSON text frames.
    Json,
    /// shardcast.v1.msgpack: MessagePack binary frames.
    Msgpack,
}

impl From<EncodingArg> for Encoding {
    fn from(arg: EncodingArg) -> Self {
        match arg {
            EncodingArg::Json => Encoding::Json,
            EncodingArg::Msgpack => Encoding::MsgPack,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Subscribe to channels and print each message as a JSON line
    /// ({"channel":..,"seq":..,"data":..}); reconnects and re-subscribes by itself.
    /// Connection status goes to stderr.
    Sub {
        /// Channels to subscribe to.
        #[arg(required = true, value_name = "CHANNEL")]
        channels: Vec<String>,
        /// Exit after printing this many messages.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Print no connection status on stderr.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Publish through the admin HTTP API. DATA is sent as JSON when it is JSON and
    /// as a JSON string when it is plain text; text that starts like JSON (`{`, `[`
    /// or `"`) but does not parse is refused unless --raw is given. `-` reads DATA
    /// from standard input.
    Pub {
        /// The channel.
        channel: String,
        /// The payload.
        data: String,
        /// Send DATA as a JSON string, as it is, even when it is (or looks like) JSON.
        #[arg(long)]
        raw: bool,
    },
    /// Print the instance's stats (JSON), or with --cluster every instance's connection count.
    Stats {
        /// Show the cluster view: each instance's connections and the total.
        #[arg(long)]
        cluster: bool,
        /// Print compact JSON (for scripts) instead of the readable form.
        #[arg(long)]
        json: bool,
    },
    /// Show the cluster's and this instance's per-shard figures, refreshed in place
    /// (on a terminal; piped, one frame after another) until Ctrl-C.
    Top {
        /// Seconds between refreshes.
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
        /// Exit after this many refreshes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

/// A refresh interval: at least 0.1 s, at most an hour.
fn parse_interval(text: &str) -> Result<f64, String> {
    let secs: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.1..=3600.0).contains(&secs) {
        Ok(secs)
    } else {
        Err("expected 0.1 to 3600 seconds".to_owned())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shardcast-cli: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Sub { channels, count, quiet } => subscribe(&cli, channels, *count, *quiet).await,
            Command::Pub { channel, data, raw } => publish(&cli, channel, data, *raw).await,
            Command::Stats { cluster, json } => stats(&cli, *cluster, *json).await,
            Command::Top { interval, count } => {
                let admin = AdminClient::new(&cli.admin)?.api_key(cli.api_key.clone());
                top::top(&admin, &cli.admin, Duration::from_secs_f64(*interval), *count).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardcast-cli: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The argument parser, with the global options listed once, in the top-level help,
/// instead of again in every subcommand's.
fn command() -> clap::Command {
    let mut command = Cli::command();
    // Each subcommand gets its own hidden copy of every global option: clap then does
    // not copy the visible one in, parsing still accepts them after the subcommand
    // (`pub news 1 --admin URL`), and the subcommand's help leaves them out.
    let globals: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.is_global_set())
        .map(|arg| arg.clone().hide(true))
        .collect();
    let names: Vec<String> = command.get_subcommands().map(|sub| sub.get_name().to_owned()).collect();
    for name in names {
        command = command.mut_subcommand(name, |sub| {
            sub.args(globals.iter().cloned()).after_help(
                "Global options (--url, --admin, --api-key, --encoding, --log): see `shardcast-cli --help`.",
            )
        });
    }
    command
}

fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// What can end a command; printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Client(Error),
    /// The admin API refused the API key (or its absence).
    #[error(
        "unauthorized: missing or wrong API key (give it with --api-key or SHARDCAST_API_KEY; \
         the admin API answered HTTP {status} {code})"
    )]
    Unauthorized { status: u16, code: &'static str },
    /// The client stopped without a close frame (the upgrade was refused, the URL is
    /// unusable): the reason is the whole story, the code 1006 only noise.
    #[error("{0}")]
    Stopped(String),
    #[error("DATA starts like JSON but is not valid JSON ({0}); pass --raw to publish it as a string")]
    InvalidJson(serde_json::Error),
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    #[error("cannot read the data from standard input: {0}")]
    Input(std::io::Error),
}

impl From<Error> for CliError {
    fn from(error: Error) -> Self {
        match error {
            Error::Api {
                status: status @ 401,
                code,
                ..
            } => CliError::Unauthorized {
                status,
                code: code.as_str(),
            },
            Error::Closed {
                code: Some(ABNORMAL_CLOSURE),
                reason,
            } => CliError::Stopped(reason),
            error => CliError::Client(error),
        }
    }
}

async fn subscribe(cli: &Cli, channels: &[String], count: Option<u64>, quiet: bool) -> Result<(), CliError> {
    let (client, mut events) = Client::builder(&cli.url)
        .encoding(cli.encoding.into())
        .build_with_events()?;
    let url = cli.url.clone();
    let status = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Some(line) = describe(&url, &event).filter(|_| !quiet) {
                eprintln!("{line}");
            }
        }
    });
    let run = async {
        let subscriptions = futures_util::future::try_join_all(channels.iter().map(|c| client.subscribe(c.as_str())));
        let mut messages = futures_util::stream::select_all(subscriptions.await?);
        let mut printed = 0u64;
        let mut stdout = std::io::stdout().lock();
        while count.map_or(true, |limit| printed < limit) {
            let Some(message) = messages.next().await else {
                // Every stream ended: the client stopped for good (a close code after
                // which the protocol says not to reconnect, or a refused channel).
                return Err(CliError::from(client.stop_reason().unwrap_or(Error::Closed {
                    code: None,
                    reason: "every subscription ended".to_owned(),
                })));
            };
            let line = serde_json::to_string(&message).map_err(Error::from)?;
            // Flushed per line so that a pipe sees each message as it arrives.
            if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
                return match e.kind() {
                    // The reader went away (`| head -1`): a normal way to stop.
                    std::io::ErrorKind::BrokenPipe => Ok(()),
                    _ => Err(CliError::Output(e)),
                };
            }
            printed += 1;
        }
        Ok(())
    };
    let result = tokio::select! {
        result = run => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    client.close().await;
    // The status task ends with the client's last event.
    let _ = tokio::time::timeout(Duration::from_secs(1), status).await;
    result
}

/// A status line for stderr, or nothing for events not worth a line.
fn describe(url: &str, event: &ClientEvent) -> Option<String> {
    Some(match event {
        ClientEvent::Connecting { attempt: 0 } => format!("connecting to {url}"),
        ClientEvent::Connecting { .. } => return None,
        ClientEvent::Connected {
            node, shard, encoding, ..
        } => format!("connected to node {node} (shard {shard}, {})", encoding.subprotocol()),
        ClientEvent::Subscribed {
            channel,
            resubscribed: false,
        } => format!("subscribed: {channel}"),
        ClientEvent::Subscribed {
            channel,
            resubscribed: true,
        } => format!("resubscribed: {channel} (messages published while disconnected are lost)"),
        ClientEvent::SubscribeRefused { channel, code, message } => {
            format!("subscription refused: {channel}: {}: {message}", code.as_str())
        }
        // A failed attempt that is not retried ends the command with an error line
        // that says why; repeating it here would say it twice.
        ClientEvent::Disconnected {
            was_connected: false,
            will_reconnect: false,
            ..
        } => return None,
        ClientEvent::Disconnected { code, reason, .. } => format!("disconnected: {code} {reason}"),
        ClientEvent::Reconnecting { attempt, delay, .. } => {
            format!("reconnecting in {} ms (attempt {attempt})", delay.as_millis())
        }
        // The command ends with an error line that gives the stop's code and reason.
        ClientEvent::Closed { .. } => return None,
        _ => return None,
    })
}

async fn publish(cli: &Cli, channel: &str, data: &str, raw: bool) -> Result<(), CliError> {
    let admin = AdminClient::new(&cli.admin)?.api_key(cli.api_key.clone());
    let data = if data == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(CliError::Input)?;
        text
    } else {
        data.to_owned()
    };
    let payload = payload(&data, raw)?;
    let receipt = admin.publish_json(channel, &payload).await?;
    println!(
        "{}",
        serde_json::json!({"ok": true, "subscribers": receipt.subscribers})
    );
    Ok(())
}

/// The payload as given when it is JSON (kept byte for byte), else as a JSON string.
/// Text that starts like an object, array or string but does not parse is a typo
/// more often than a message, so it is refused unless `raw` asks for a string anyway.
fn payload(data: &str, raw: bool) -> Result<Box<RawValue>, CliError> {
    let as_string = || serde_json::value::to_raw_value(data).map_err(|e| CliError::from(Error::from(e)));
    if raw {
        return as_string();
    }
    match RawValue::from_string(data.trim().to_owned()) {
        Ok(json) => Ok(json),
        Err(e) if data.trim_start().starts_with(['{', '[', '"']) => Err(CliError::InvalidJson(e)),
        Err(_) => as_string(),
    }
}

async fn stats(cli: &Cli, cluster: bool, json: bool) -> Result<(), CliError> {
    let admin = AdminClient::new(&cli.admin)?.api_key(cli.api_key.clone());
    let text = if cluster {
        let view = admin.cluster().await?;
        if json {
            serde_json::to_string(&view).map_err(Error::from)?
        } else {
            cluster_table(&view)
        }
    } else {
        let stats = admin.stats().await?;
        if json {
            serde_json::to_string(&stats)
        } else {
            serde_json::to_string_pretty(&stats)
        }
        .map_err(Error::from)?
    };
    println!("{text}");
    Ok(())
}

fn cluster_table(view: &ClusterView) -> String {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let node_width = view.instances.iter().map(|i| i.node.len()).max().unwrap_or(0).max(4);
    let ws_width = view.instances.iter().map(|i| i.ws.len()).max().unwrap_or(0).max(2);
    let mut out = format!(
        "{:node_width$}  {:ws_width$}  {:>11}  REPORTED\n",
        "NODE", "WS", "CONNECTIONS"
    );
    for instance in &view.instances {
        let age = now_ms.saturating_sub(instance.at_ms) as f64 / 1000.0;
        out.push_str(&format!(
            "{:node_width$}  {:ws_width$}  {:>11}  {age:.1}s ago\n",
            instance.node, instance.ws, instance.connections
        ));
    }
    let count = view.instances.len();
    out.push_str(&format!(
        "total: {} connections on {count} instance{}{}",
        view.total_connections,
        if count == 1 { "" } else { "s" },
        if view.fresh {
            ""
        } else {
            " (stale: the instance could not refresh the cluster view)"
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(data: &str, raw: bool) -> String {
        payload(data, raw).expect("a payload").get().to_owned()
    }

    #[test]
    fn data_is_json_when_it_parses_and_a_string_otherwise() {
        assert_eq!(sent(r#"{"b":1,"a":2}"#, false), r#"{"b":1,"a":2}"#);
        assert_eq!(sent(" 42 ", false), "42");
        assert_eq!(sent("null", false), "null");
        assert_eq!(sent("hello world", false), r#""hello world""#);
        assert_eq!(sent("", false), r#""""#);
        // Starts like JSON, is not: refused, unless --raw.
        for broken in [r#"{"broken""#, "{bad json", " [1,", r#""unterminated"#] {
            assert!(
                matches!(payload(broken, false), Err(CliError::InvalidJson(_))),
                "{broken}"
            );
        }
        assert_eq!(sent(r#"{"broken""#, true), r#""{\"broken\"""#);
        assert_eq!(sent("42", true), r#""42""#);
    }

    #[test]
    fn global_options_are_listed_once() {
        command().debug_assert();
        let mut command = command();
        let top = command.render_long_help().to_string();
        assert!(top.contains("--admin") && top.contains("--log"), "{top}");
        let sub = command
            .find_subcommand_mut("sub")
            .expect("sub")
            .render_long_help()
            .to_string();
        assert!(!sub.contains("--admin <URL>") && sub.contains("--count"), "{sub}");
        assert!(sub.contains("see `shardcast-cli --help`"), "{sub}");
        // Still accepted after the subcommand.
        let matches = command
            .try_get_matches_from(["shardcast-cli", "pub", "news", "1", "--admin", "http://h:1"])
            .expect("parse");
        assert_eq!(Cli::from_arg_matches(&matches).expect("cli").admin, "http://h:1");
    }

    #[test]
    fn the_arguments_parse() {
        Cli::command().debug_assert();
        let cli = Cli::parse_from([
            "shardcast-cli",
            "sub",
            "a",
            "b",
            "--count",
            "2",
            "--encoding",
            "msgpack",
        ]);
        assert!(matches!(cli.encoding, EncodingArg::Msgpack));
        assert!(matches!(cli.command, Command::Sub { ref channels, count: Some(2), .. } if channels.len() == 2));
    }
}
