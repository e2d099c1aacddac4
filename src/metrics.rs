//! The gateway's Prometheus metrics: one registry, every series prefixed
//! `shardcast_`. Shards keep handles to their own labelled series, so updating a
//! metric on a hot path is one atomic operation, never a registry lookup.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use shardcast_proto::ErrorCode;

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections, per shard.
    pub connections: IntGaugeVec,
    /// Sockets handed to a shard for the upgrade.
    pub connections_accepted: IntCounter,
    /// Connections refused before or at the upgrade, by reason.
    pub connections_refused: IntCounterVec,
    /// Closed connections, by reason.
    pub disconnections: IntCounterVec,
    /// Subscriptions held, per shard.
    pub subscriptions: IntGaugeVec,
    /// Channels with at least one subscriber on this instance.
    pub channels: IntGauge,
    /// Publications accepted, by source (api, client, broker).
    pub messages_published: IntCounterVec,
    /// Frames delivered to subscribers (one per subscriber per publication).
    pub messages_delivered: IntCounter,
    /// Messages lost, by reason (slow_consumer, bad_payload, ...).
    pub messages_dropped: IntCounterVec,
    /// Client requests answered with an error or close, by code.
    pub client_errors: IntCounterVec,
    /// Subscribes with `recover`, by result (recovered, not_recovered) and reason.
    pub recoveries: IntCounterVec,
    /// Publications delivered from the history store (recoveries, `latest`, catch-up).
    pub history_served: IntCounter,
    /// Store reads of the router's catch-up, by result (started, read, failed).
    pub catchups: IntCounterVec,
    /// Publications dropped because their offset was delivered already.
    pub history_duplicates: IntCounter,
    /// Publishes answered from the idempotency window (not published again).
    pub publish_duplicates: IntCounter,
    /// Gap frames' occasions, by reason (PROTOCOL.md 19.5).
    pub gaps: IntCounterVec,
    /// Pusher HTTP API requests refused, by reason (signature, timestamp, ...).
    pub pusher_api_refusals: IntCounterVec,
    /// Webhook requests, by result (PROTOCOL.md 20.7).
    pub webhook_requests: IntCounterVec,
    /// Webhook events dropped, by reason.
    pub webhook_dropped: IntCounterVec,
    /// Webhook events queued.
    pub webhook_queued: IntCounter,
    /// Occupancy changes the broker kept refusing, given up.
    pub occupancy_dropped: IntCounter,
    /// Pusher WebSocket requests refused, by reason (PROTOCOL.md 20.2, 20.3).
    pub pusher_refusals: IntCounterVec,
    /// Publishes whose broker outcome is not known (timeouts), by source.
    pub publish_unknown: IntCounter,
    /// Channels in the in-process history store.
    pub history_channels: IntGauge,
    /// Publications in the in-process history store.
    pub history_publications: IntGauge,
    /// Authentication and permission refusals, by reason.
    pub auth_refusals: IntCounterVec,
    /// Fetches of the --token-jwks-url key set, by result (ok, error).
    pub jwks_refreshes: IntCounterVec,
    /// Open file descriptors of the process.
    pub open_fds: IntGauge,
    /// RLIMIT_NOFILE (soft) of the process.
    pub fd_limit: IntGauge,
    /// Descriptors left before the limit.
    pub fd_headroom: IntGauge,
    /// Lateness of a periodic timer on each shard: the event-loop lag.
    pub shard_loop_lag: HistogramVec,
    /// Resident set size of the process.
    pub resident_memory: IntGauge,
    /// 1 while the broker is connected and usable.
    pub broker_up: IntGauge,
    /// 1 while the instance is ready (accepting, broker up, not draining).
    pub ready: IntGauge,
    /// Redis connections re-established after a loss.
    pub redis_reconnects: IntCounter,
    /// Messages received from Redis pub/sub (each instance gets one per publication it wants).
    pub redis_messages_received: IntCounter,
    /// Channels this instance is subscribed to on Redis.
    pub redis_subscriptions: IntGauge,
    /// Redis Cluster hash slots whose master is not in sync (publishes there are refused).
    pub redis_degraded_slots: IntGauge,
    /// Connections on all live instances, by their last heartbeats.
    pub cluster_connections: IntGauge,
    /// Live instances, by their heartbeats.
    pub cluster_instances: IntGauge,
    /// Always 1; its labels carry the version, so dashboards can follow a rollout.
    pub build_info: IntGaugeVec,
    /// `--fd-reserve`: the headroom below which upgrades are refused.
    pub fd_reserve: IntGauge,
    /// `--max-connections` (0: no cap).
    pub max_connections: IntGauge,
    /// Time from a publication reaching a shard to its last local subscriber write.
    pub fanout_duration: Histogram,
    /// Vectored writes that ended a shard's busy turn (one per socket per turn).
    pub corked_writes: IntCounter,
    /// Frames those writes completed.
    pub corked_frames: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(format!("shardcast_{name}"), help);
        let gauge_vec = |name, help, labels: &[&str]| IntGaugeVec::new(opts(name, help), labels);
        let counter_vec = |name, help, labels: &[&str]| IntCounterVec::new(opts(name, help), labels);
        let m = Metrics {
            connections: gauge_vec("connections", "Open WebSocket connections, per shard.", &["shard"])?,
            connections_accepted: IntCounter::with_opts(opts(
                "connections_accepted_total",
                "Sockets accepted and handed to a shard for the upgrade.",
            ))?,
            connections_refused: counter_vec(
                "connections_refused_total",
                "Connections refused, by reason (fd_headroom, fd_exhausted, max_connections, draining, bad_handshake, handshake_timeout, rate_limited).",
                &["reason"],
            )?,
            disconnections: counter_vec(
                "disconnections_total",
                "Closed connections, by reason.",
                &["reason"],
            )?,
            subscriptions: gauge_vec("subscriptions", "Subscriptions held, per shard.", &["shard"])?,
            channels: IntGauge::with_opts(opts("channels", "Channels with at least one local subscriber."))?,
            messages_published: counter_vec(
                "messages_published_total",
                "Publications accepted, by source (api, client, broker).",
                &["source"],
            )?,
            messages_delivered: IntCounter::with_opts(opts(
                "messages_delivered_total",
                "Message frames delivered to subscribers.",
            ))?,
            messages_dropped: counter_vec(
                "messages_dropped_total",
                "Messages lost, by reason.",
                &["reason"],
            )?,
            client_errors: counter_vec(
                "client_errors_total",
                "Client requests answered with an error frame or an error close, by code.",
                &["code"],
            )?,
            recoveries: counter_vec(
                "recoveries_total",
                "Subscribes with recover, by result and reason.",
                &["result", "reason"],
            )?,
            history_served: IntCounter::with_opts(opts("history_served_total", "Publications delivered from the history store."))?,
            catchups: counter_vec(
                "catchups_total",
                "History reads of the server-side catch-up and hole filling, by result.",
                &["result"],
            )?,
            history_duplicates: IntCounter::with_opts(opts("history_duplicates_total", "Publications dropped because their offset was delivered already."))?,
            publish_duplicates: IntCounter::with_opts(opts("publish_duplicates_total", "Publishes answered from the idempotency window, not published again."))?,
            gaps: counter_vec(
                "gaps_total",
                "Losses history could not cover, announced by gap frames, by reason.",
                &["reason"],
            )?,
            pusher_api_refusals: counter_vec(
                "pusher_api_refusals_total",
                "Pusher HTTP API requests refused, by reason: missing, wrong_key, version, timestamp, body_md5, signature.",
                &["reason"],
            )?,
            webhook_requests: counter_vec(
                "webhook_requests_total",
                "Pusher webhook requests, by result (delivered, failed: an attempt retried or given up).",
                &["result"],
            )?,
            webhook_dropped: counter_vec(
                "webhook_events_dropped_total",
                "Pusher webhook events dropped, by reason (queue_full, gave_up).",
                &["reason"],
            )?,
            webhook_queued: IntCounter::with_opts(opts("webhook_events_queued_total", "Pusher webhook events queued for sending."))?,
            occupancy_dropped: IntCounter::with_opts(opts("occupancy_changes_dropped_total", "Channel occupancy changes the broker refused for 30 s, given up (their webhooks may be missing)."))?,
            pusher_refusals: counter_vec(
                "pusher_refusals_total",
                "Pusher WebSocket subscriptions and client events refused, by reason: signature, channel, permission, client_event.",
                &["reason"],
            )?,
            publish_unknown: IntCounter::with_opts(opts("publish_outcome_unknown_total", "Publishes whose broker did not answer within the publish timeout."))?,
            history_channels: IntGauge::with_opts(opts("history_channels", "Channels in the in-process history store."))?,
            history_publications: IntGauge::with_opts(opts("history_publications", "Publications in the in-process history store."))?,
            auth_refusals: counter_vec(
                "auth_refusals_total",
                "Refused tokens, subscribes, client publishes and connections, by reason (expired, invalid, missing, query_token, permission_denied, rate_limited, too_many_connections).",
                &["reason"],
            )?,
            jwks_refreshes: counter_vec(
                "jwks_refreshes_total",
                "Fetches of the token key set (--token-jwks-url), by result (ok, error).",
                &["result"],
            )?,
            open_fds: IntGauge::with_opts(opts("open_fds", "Open file descriptors."))?,
            fd_limit: IntGauge::with_opts(opts("fd_limit", "RLIMIT_NOFILE soft limit."))?,
            fd_headroom: IntGauge::with_opts(opts("fd_headroom", "File descriptors left before the limit."))?,
            shard_loop_lag: HistogramVec::new(
                HistogramOpts::new(
                    "shardcast_shard_loop_lag_seconds",
                    "How late a periodic timer fires on each shard (event-loop lag).",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
                &["shard"],
            )?,
            resident_memory: IntGauge::with_opts(opts(
                "process_resident_memory_bytes",
                "Resident set size of the gateway process.",
            ))?,
            broker_up: IntGauge::with_opts(opts("broker_up", "1 while the broker is connected."))?,
            ready: IntGauge::with_opts(opts("ready", "1 while the instance reports ready."))?,
            fanout_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "shardcast_fanout_duration_seconds",
                    "Time for a shard to write one publication to all its local subscribers.",
                )
                .buckets(vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5]),
            )?,
            build_info: gauge_vec("build_info", "Always 1; labelled with the gateway's version.", &["version"])?,
            fd_reserve: IntGauge::with_opts(opts(
                "fd_reserve",
                "Configured descriptor reserve: upgrades are refused below this headroom.",
            ))?,
            max_connections: IntGauge::with_opts(opts(
                "max_connections",
                "Configured connection cap (0: none).",
            ))?,
            redis_reconnects: IntCounter::with_opts(opts(
                "redis_reconnects_total",
                "Redis connections re-established after a loss.",
            ))?,
            redis_messages_received: IntCounter::with_opts(opts(
                "redis_messages_received_total",
                "Messages received from Redis pub/sub.",
            ))?,
            redis_subscriptions: IntGauge::with_opts(opts(
                "redis_subscriptions",
                "Channels this instance wants subscribed on Redis.",
            ))?,
            redis_degraded_slots: IntGauge::with_opts(opts(
                "redis_degraded_slots",
                "Redis Cluster hash slots whose master is down or not in sync; their channels' publishes are refused.",
            ))?,
            cluster_connections: IntGauge::with_opts(opts(
                "cluster_connections",
                "WebSocket connections on all live instances (from heartbeats).",
            ))?,
            cluster_instances: IntGauge::with_opts(opts(
                "cluster_instances",
                "Live instances (from heartbeats).",
            ))?,
            corked_writes: IntCounter::with_opts(opts(
                "corked_writes_total",
                "Vectored writes of the deliveries a busy shard gathered for one socket in one turn.",
            ))?,
            corked_frames: IntCounter::with_opts(opts(
                "corked_frames_total",
                "Frames completed by those corked writes.",
            ))?,
            registry,
        };
        m.register_all()?;
        m.touch_known_labels();
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Ok(m)
    }

    fn register_all(&self) -> Result<(), prometheus::Error> {
        let r = &self.registry;
        r.register(Box::new(self.connections.clone()))?;
        r.register(Box::new(self.connections_accepted.clone()))?;
        r.register(Box::new(self.connections_refused.clone()))?;
        r.register(Box::new(self.disconnections.clone()))?;
        r.register(Box::new(self.subscriptions.clone()))?;
        r.register(Box::new(self.channels.clone()))?;
        r.register(Box::new(self.messages_published.clone()))?;
        r.register(Box::new(self.messages_delivered.clone()))?;
        r.register(Box::new(self.messages_dropped.clone()))?;
        r.register(Box::new(self.client_errors.clone()))?;
        r.register(Box::new(self.recoveries.clone()))?;
        r.register(Box::new(self.history_served.clone()))?;
        r.register(Box::new(self.catchups.clone()))?;
        r.register(Box::new(self.history_duplicates.clone()))?;
        r.register(Box::new(self.publish_duplicates.clone()))?;
        r.register(Box::new(self.gaps.clone()))?;
        r.register(Box::new(self.pusher_api_refusals.clone()))?;
        r.register(Box::new(self.pusher_refusals.clone()))?;
        r.register(Box::new(self.publish_unknown.clone()))?;
        r.register(Box::new(self.webhook_requests.clone()))?;
        r.register(Box::new(self.webhook_dropped.clone()))?;
        r.register(Box::new(self.webhook_queued.clone()))?;
        r.register(Box::new(self.occupancy_dropped.clone()))?;
        r.register(Box::new(self.history_channels.clone()))?;
        r.register(Box::new(self.history_publications.clone()))?;
        r.register(Box::new(self.auth_refusals.clone()))?;
        r.register(Box::new(self.jwks_refreshes.clone()))?;
        r.register(Box::new(self.open_fds.clone()))?;
        r.register(Box::new(self.fd_limit.clone()))?;
        r.register(Box::new(self.fd_headroom.clone()))?;
        r.register(Box::new(self.shard_loop_lag.clone()))?;
        r.register(Box::new(self.resident_memory.clone()))?;
        r.register(Box::new(self.broker_up.clone()))?;
        r.register(Box::new(self.ready.clone()))?;
        r.register(Box::new(self.fanout_duration.clone()))?;
        r.register(Box::new(self.build_info.clone()))?;
        r.register(Box::new(self.fd_reserve.clone()))?;
        r.register(Box::new(self.max_connections.clone()))?;
        r.register(Box::new(self.redis_reconnects.clone()))?;
        r.register(Box::new(self.redis_messages_received.clone()))?;
        r.register(Box::new(self.redis_subscriptions.clone()))?;
        r.register(Box::new(self.redis_degraded_slots.clone()))?;
        r.register(Box::new(self.cluster_connections.clone()))?;
        r.register(Box::new(self.cluster_instances.clone()))?;
        r.register(Box::new(self.corked_writes.clone()))?;
        r.register(Box::new(self.corked_frames.clone()))?;
        Ok(())
    }

    /// Creates the series of every label value the gateway uses, at zero, so
    /// dashboards and alerts see them before the first event (and rate() works).
    fn touch_known_labels(&self) {
        for reason in [
            "fd_headroom",
            "fd_exhausted",
            "max_connections",
            "draining",
            "bad_handshake",
            "handshake_timeout",
            "unauthorized",
            "token_in_url",
            "too_many_connections",
            "rate_limited",
        ] {
            self.connections_refused.with_label_values(&[reason]);
        }
        for reason in [
            "client_close",
            "eof",
            "io_error",
            "slow_consumer",
            "idle_timeout",
            "protocol_error",
            "message_too_big",
            "invalid_payload",
            "going_away",
            "close_timeout",
            "unauthorized",
            "token_expired",
            "operator",
            "too_many_connections",
        ] {
            self.disconnections.with_label_values(&[reason]);
        }
        for source in ["api", "client", "broker"] {
            self.messages_published.with_label_values(&[source]);
        }
        for reason in ["slow_consumer", "bad_payload", "broker_lag", "encode_failed"] {
            self.messages_dropped.with_label_values(&[reason]);
        }
        for reason in [
            "expired",
            "invalid",
            "missing",
            "query_token",
            "permission_denied",
            "rate_limited",
            "too_many_connections",
        ] {
            self.auth_refusals.with_label_values(&[reason]);
        }
        for reason in ["signature", "channel", "permission", "client_event"] {
            self.pusher_refusals.with_label_values(&[reason]);
        }
        for result in ["ok", "error"] {
            self.jwks_refreshes.with_label_values(&[result]);
        }
        let protocol_codes = ErrorCode::ALL_SENT.iter().map(|c| c.as_str());
        let framing_codes = ["protocol_error", "invalid_utf8", "message_too_big"];
        for code in protocol_codes.chain(framing_codes) {
            self.client_errors.with_label_values(&[code]);
        }
    }

    /// The registry, for components (the Redis broker) that add their own series.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every series in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on metric families with invalid names,
        // which registration already rejected.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
