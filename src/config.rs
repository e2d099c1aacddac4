//! Gateway configuration: command-line flags, their `SHARDCAST_*` environment
//! variables, and an optional TOML file, in that order of precedence.
//!
//! The TOML file uses the flag names as keys (`max-connections = 10000` or
//! `max_connections = 10000`); a key whose environment variable is set is left to
//! the environment, so the precedence stays flags > environment > file > defaults.

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Whether clients may negotiate permessage-deflate, and from what message size
/// the gateway compresses what it sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Never negotiated.
    Off,
    /// Negotiated; messages of at least this many bytes go compressed.
    From(usize),
}

impl Compression {
    /// The smallest message sent compressed; none when compression is off.
    pub fn min_bytes(self) -> Option<usize> {
        match self {
            Compression::Off => None,
            Compression::From(n) => Some(n),
        }
    }
}

/// Parses `--compression`: `off`, `on`, or a minimum size in bytes.
pub fn parse_compression(s: &str) -> Result<Compression, String> {
    match s.trim() {
        "off" | "false" => Ok(Compression::Off),
        "on" | "true" => Ok(Compression::From(0)),
        n => n
            .parse()
            .map(Compression::From)
            .map_err(|_| format!("`{s}`: compression is off, on, or a minimum message size in bytes")),
    }
}

/// Everything the gateway can be told at start.
#[derive(Debug, Clone, Parser)]
#[command(name = "shardcast", version, about = "A per-core sharded WebSocket fan-out gateway")]
pub struct Config {
    /// Address of the public WebSocket port (also answers /health/live and /health/ready for load balancers).
    #[arg(long, env = "SHARDCAST_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// Address of the admin port: publish API, health, metrics. Keep it private.
    #[arg(long, env = "SHARDCAST_ADMIN_LISTEN", default_value = "127.0.0.1:8001")]
    pub admin_listen: SocketAddr,

    /// URL path of the WebSocket endpoint.
    #[arg(long, env = "SHARDCAST_WS_PATH", default_value = "/ws")]
    pub ws_path: String,

    /// Number of shards (event-loop threads); 0 means one per CPU core.
    #[arg(long, env = "SHARDCAST_SHARDS", default_value_t = 0)]
    pub shards: usize,

    /// API keys for the admin API (`Authorization: Bearer <key>`), comma-separated:
    /// any of them is accepted, so a key can be rotated without downtime. Unset means no check.
    #[arg(long, env = "SHARDCAST_API_KEY", hide_env_values = true, value_delimiter = ',')]
    pub api_key: Vec<String>,

    /// Refuse new WebSocket upgrades (HTTP 503) above this many connections; 0 means no limit.
    #[arg(long, env = "SHARDCAST_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// File descriptors kept free: upgrades are refused (HTTP 503) once headroom falls below this.
    #[arg(long, env = "SHARDCAST_FD_RESERVE", default_value_t = 128)]
    pub fd_reserve: usize,

    /// Largest client message and publish payload, in bytes (bigger ones close with 1009 or get 413).
    #[arg(long, env = "SHARDCAST_MAX_MESSAGE_BYTES", default_value_t = 65536)]
    pub max_message_bytes: usize,

    /// Subscriptions one connection may hold.
    #[arg(long, env = "SHARDCAST_MAX_CHANNELS_PER_CONNECTION", default_value_t = 128)]
    pub max_channels_per_connection: usize,

    /// Longest channel name, in bytes.
    #[arg(long, env = "SHARDCAST_MAX_CHANNEL_LEN", default_value_t = shardcast_proto::DEFAULT_MAX_CHANNEL_LEN)]
    pub max_channel_len: usize,

    /// permessage-deflate (RFC 7692): `off`, `on`, or a size in bytes (on, for messages of at least that many bytes; smaller ones go uncompressed).
    #[arg(long, env = "SHARDCAST_COMPRESSION", default_value = "off", value_parser = parse_compression)]
    pub compression: Compression,

    /// Gather a busy shard's deliveries into one write per socket per turn (true/false; off is for comparisons).
    #[arg(long, env = "SHARDCAST_CORKING", default_value_t = true, action = clap::ArgAction::Set)]
    pub corking: bool,

    /// Outbound bytes queued for one connection before it is closed as a slow consumer (code 4000).
    #[arg(long, env = "SHARDCAST_MAX_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub max_queue_bytes: usize,

    /// How often the gateway pings a connection that has been quiet (e.g. 25s, 500ms).
    #[arg(long, env = "SHARDCAST_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A connection that sends nothing (not even a pong) for this long is closed with 4001.
    #[arg(long, env = "SHARDCAST_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Time a new socket has to complete the WebSocket upgrade.
    #[arg(long, env = "SHARDCAST_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Time a closing connection gets to flush and answer our close frame.
    #[arg(long, env = "SHARDCAST_CLOSE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// On SIGTERM/SIGINT, closes are spread over this window so clients do not reconnect all at once.
    #[arg(long, env = "SHARDCAST_DRAIN_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub drain_window: Duration,

    /// Let WebSocket clients publish (`op: publish`); off by default, publishing is the API's job.
    #[arg(long, env = "SHARDCAST_ALLOW_CLIENT_PUBLISH", default_value_t = false)]
    pub allow_client_publish: bool,

    /// Redis URL (redis://host:port/db); shares publications with other instances. Unset: in-process broker.
    #[arg(long, env = "SHARDCAST_REDIS")]
    pub redis: Option<String>,

    /// Treat --redis as a Redis Cluster and use sharded pub/sub (SSUBSCRIBE/SPUBLISH, Redis 7+).
    #[arg(long, env = "SHARDCAST_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,

    /// Prefix of the Redis channel a shardcast channel maps to (`PUBLISH <prefix><channel> <payload>`).
    #[arg(long, env = "SHARDCAST_REDIS_PREFIX", default_value = "shardcast:")]
    pub redis_prefix: String,

    /// How often this instance records itself and its connection count in Redis.
    #[arg(long, env = "SHARDCAST_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// An instance whose heartbeat is older than this drops out of the cluster view.
    #[arg(long, env = "SHARDCAST_INSTANCE_TTL", default_value = "3s", value_parser = parse_duration)]
    pub instance_ttl: Duration,

    /// Testing only: also serve an echo WebSocket on this path, through the same
    /// connection code (handshake, framing, limits), for the Autobahn conformance suite.
    #[arg(long, env = "SHARDCAST_TEST_ECHO_PATH", hide = true)]
    pub test_echo_path: Option<String>,

    /// This instance's id in logs, welcome frames and cluster views; default: hostname-pid.
    #[arg(long, env = "SHARDCAST_NODE_ID")]
    pub node_id: Option<String>,

    /// Log format.
    #[arg(long, env = "SHARDCAST_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `shardcast=debug`).
    #[arg(long, env = "SHARDCAST_LOG", default_value = "info")]
    pub log: String,

    /// Shared secret for HS256/384/512 connection and subscription tokens.
    #[arg(long, env = "SHARDCAST_TOKEN_HMAC_SECRET", hide_env_values = true)]
    pub token_hmac_secret: Option<String>,

    /// PEM file with the public key for RS256/PS256 (RSA) or ES256 (EC) tokens.
    #[arg(long, env = "SHARDCAST_TOKEN_PUBLIC_KEY")]
    pub token_public_key: Option<PathBuf>,

    /// URL (https:// or http://) of a JSON Web Key Set (RFC 7517) whose RSA and EC keys verify tokens by their `kid`.
    #[arg(long, env = "SHARDCAST_TOKEN_JWKS_URL")]
    pub token_jwks_url: Option<String>,

    /// PEM file of CA certificates trusted for an https:// --token-jwks-url, besides the built-in public roots.
    #[arg(long, env = "SHARDCAST_TOKEN_JWKS_CA")]
    pub token_jwks_ca: Option<PathBuf>,

    /// How often the --token-jwks-url key set is fetched again (an unknown `kid` also triggers a fetch).
    #[arg(long, env = "SHARDCAST_TOKEN_JWKS_REFRESH", default_value = "5m", value_parser = parse_duration)]
    pub token_jwks_refresh: Duration,

    /// Accepted token algorithms, comma-separated (e.g. HS256,RS256); default: one per configured key.
    #[arg(long, env = "SHARDCAST_TOKEN_ALGORITHMS", value_delimiter = ',')]
    pub token_algorithms: Vec<String>,

    /// Required `aud` claim of tokens.
    #[arg(long, env = "SHARDCAST_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,

    /// Required `iss` claim of tokens.
    #[arg(long, env = "SHARDCAST_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,

    /// Clock leeway for the `exp`, `nbf` and `iat` claims.
    #[arg(long, env = "SHARDCAST_TOKEN_LEEWAY", default_value = "5s", value_parser = parse_duration)]
    pub token_leeway: Duration,

    /// Allow connections without a token; default: true when no token key is configured, false otherwise.
    #[arg(long, env = "SHARDCAST_ALLOW_ANONYMOUS")]
    pub allow_anonymous: Option<bool>,

    /// What separates a channel's namespace from the rest of its name (`team:7.chat` is in `team`).
    #[arg(long, env = "SHARDCAST_NAMESPACE_SEPARATOR", default_value = ":")]
    pub namespace_separator: String,

    /// Connections one user (a token's `sub`) may hold on this instance; 0 means no limit.
    #[arg(long, env = "SHARDCAST_MAX_CONNECTIONS_PER_USER", default_value_t = 0)]
    pub max_connections_per_user: u32,

    /// Subscribes one connection may make per second (`error` `rate_limited` beyond); 0 means no limit.
    #[arg(long, env = "SHARDCAST_SUBSCRIBE_RATE", default_value_t = 0)]
    pub subscribe_rate: u32,

    /// The admin address other instances use to reach this one (the web console
    /// asks each instance for a channel's subscribers); default: the bound admin address.
    #[arg(long, env = "SHARDCAST_ADMIN_ADVERTISE")]
    pub admin_advertise: Option<String>,

    /// Publications kept per channel for recovery (PROTOCOL.md 19); 0 keeps no history.
    /// Namespaces override it with `history_size` in the config file.
    #[arg(long, env = "SHARDCAST_HISTORY_SIZE", default_value_t = 0)]
    pub history_size: u32,

    /// Seconds a channel's history outlives its last publication (also the idempotency window).
    #[arg(long, env = "SHARDCAST_HISTORY_TTL", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub history_ttl: u64,

    /// Most publications one recovery or history read returns (`recovered: false` beyond).
    #[arg(long, env = "SHARDCAST_RECOVER_MAX", default_value_t = 10_000)]
    pub recover_max: u32,

    /// How long a publish waits for the broker before answering `timeout` (outcome unknown).
    #[arg(long, env = "SHARDCAST_PUBLISH_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    pub publish_timeout: Duration,

    /// Connect attempts one source address may make per second (HTTP 429 beyond); 0 means no limit.
    #[arg(long, env = "SHARDCAST_CONNECT_RATE_PER_IP", default_value_t = 0)]
    pub connect_rate_per_ip: u32,

    /// TOML file with any of the options above (flag names as keys) and the channel
    /// rules (`[namespaces."<name>"]` tables).
    #[arg(long, env = "SHARDCAST_CONFIG")]
    pub config: Option<PathBuf>,

    /// The `[namespaces]` tables of the config file, as written (read by the auth layer).
    #[arg(skip)]
    pub namespaces: toml::Table,

    /// The `[pusher.apps]` tables of the config file, as written (PROTOCOL.md 20).
    #[arg(skip)]
    pub pusher_apps: toml::Table,
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad flags or values (clap's own message, which includes `--help` hints).
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The TOML file is not valid TOML or has a value of a type we cannot pass on.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        message: String,
    },
    /// Values that each parse but do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the configuration from this process's arguments, environment and config file.
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_from(std::env::args_os())
    }

    /// Loads the configuration from the given arguments (the first is the program name).
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let first = Config::try_parse_from(&args)?;
        let config = match &first.config {
            None => first,
            Some(path) => {
                let (file, tables) = file_args(path)?;
                let mut merged = vec![args.first().cloned().unwrap_or_else(|| "shardcast".into())];
                merged.extend(file);
                merged.extend(args.iter().skip(1).cloned());
                let matches = Config::command()
                    .args_override_self(true)
                    .try_get_matches_from(merged)?;
                let mut config = Config::from_arg_matches(&matches)?;
                config.namespaces = tables.namespaces;
                config.pusher_apps = tables.pusher_apps;
                config
            }
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !self.ws_path.starts_with('/') {
            return bad("--ws-path must start with '/'");
        }
        if self.shards > 64 {
            return bad("--shards is at most 64");
        }
        if self.max_message_bytes < 128 {
            return bad("--max-message-bytes must be at least 128");
        }
        if self.redis_cluster && self.redis.is_none() {
            return bad("--redis-cluster needs --redis");
        }
        if self.heartbeat_interval.is_zero() || self.instance_ttl <= self.heartbeat_interval {
            return bad("--instance-ttl must be longer than a non-zero --heartbeat-interval");
        }
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            return bad("--idle-timeout must be longer than a non-zero --ping-interval");
        }
        if self.token_jwks_refresh < Duration::from_secs(1) {
            return bad("--token-jwks-refresh must be at least 1s");
        }
        Ok(())
    }

    /// The number of shards to run: the configured count, or one per available core.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// This instance's id: the configured one or `hostname-pid`.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "shardcast".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// The tables of a config file that are not flags, as written.
#[derive(Default)]
struct FileTables {
    namespaces: toml::Table,
    pusher_apps: toml::Table,
}

/// A table of tables from the config file, or what is wrong with it.
fn table_of_tables(path: &Path, key: &str, value: toml::Value) -> Result<toml::Table, ConfigError> {
    match value {
        toml::Value::Table(t) if t.values().all(toml::Value::is_table) => Ok(t),
        _ => Err(ConfigError::File {
            path: path.to_path_buf(),
            message: format!("`{key}` must be a table of tables"),
        }),
    }
}

/// Turns a TOML file into `--flag=value` arguments, skipping keys whose environment
/// variable is set (the environment outranks the file); the `namespaces` and
/// `pusher.apps` tables are returned as they are.
fn file_args(path: &PathBuf) -> Result<(Vec<OsString>, FileTables), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::File {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let command = Config::command();
    let mut out = Vec::new();
    let mut tables = FileTables::default();
    for (key, value) in table {
        if key == "namespaces" {
            tables.namespaces = table_of_tables(path, "namespaces", value)?;
            continue;
        }
        if key == "pusher" {
            let mut pusher = table_of_tables(path, "pusher", value)?;
            if let Some(apps) = pusher.remove("apps") {
                tables.pusher_apps = table_of_tables(path, "pusher.apps", apps)?;
            }
            if let Some(other) = pusher.keys().next() {
                return Err(ConfigError::File {
                    path: path.clone(),
                    message: format!("unknown key `pusher.{other}`"),
                });
            }
            continue;
        }
        let flag = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()))
            .ok_or_else(|| ConfigError::File {
                path: path.clone(),
                message: format!("unknown key `{key}`"),
            })?;
        if arg.get_env().is_some_and(|env| std::env::var_os(env).is_some()) {
            continue;
        }
        if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
            // A switch takes no value: `true` sets it, `false` leaves the default.
            match value {
                toml::Value::Boolean(true) => out.push(OsString::from(format!("--{flag}"))),
                toml::Value::Boolean(false) => {}
                other => {
                    return Err(ConfigError::File {
                        path: path.clone(),
                        message: format!("`{key}` is a switch: true or false, not {other}"),
                    })
                }
            }
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(ConfigError::File {
                    path: path.clone(),
                    message: format!("`{key}` has an unsupported value {other}"),
                })
            }
        };
        out.push(OsString::from(format!("--{flag}={value}")));
    }
    Ok((out, tables))
}

/// Parses `250ms`, `10s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], s[i..].trim()));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 10s or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("`{s}`: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn switches_in_the_file_take_booleans() {
        let dir = std::env::temp_dir().join(format!("shardcast-config-switch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "allow-client-publish = true\n[namespaces.team]\nsubscribe = \"granted\"\n",
        )
        .expect("write");
        let c = Config::load_from(["shardcast", "--config", path.to_str().expect("utf-8")]).expect("loads");
        assert!(c.allow_client_publish);
        assert!(c.namespaces.contains_key("team"));
        std::fs::write(&path, "allow-client-publish = 1\n").expect("write");
        assert!(Config::load_from(["shardcast", "--config", path.to_str().expect("utf-8")]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("shardcast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        std::fs::write(&path, "max_connections = 77\nws-path = \"/socket\"\nfd_reserve = 5\n").unwrap();
        let cfg = Config::load_from(["shardcast", "--config", path.to_str().unwrap(), "--fd-reserve", "9"]).unwrap();
        assert_eq!(cfg.max_connections, 77);
        assert_eq!(cfg.ws_path, "/socket");
        assert_eq!(cfg.fd_reserve, 9);
        std::fs::write(&path, "no_such_option = 1\n").unwrap();
        let err = Config::load_from(["shardcast", "--config", path.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("unknown key"), "{err}");
    }
}
