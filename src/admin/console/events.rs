//! The console's live feed: `GET /console/events`, a Server-Sent Events stream
//! with one JSON snapshot a second. A snapshot is `/api/stats` and `/api/cluster`
//! as those endpoints compute them, plus what the page shows beside them from the
//! metrics registry: descriptors, shard loop lag, publish and delivery rates,
//! drops by reason and the broker's state. Rates and lag are per interval, so
//! each stream keeps the previous reading of the counters it differences.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::StreamBody;
use hyper::body::Frame;
use prometheus::core::Collector;
use serde_json::{json, Value};

use super::super::api::{stats_body, AdminContext};
use super::super::cluster::shard_lag_totals;

/// How often a snapshot is sent.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Counter readings at one instant, the base of the next interval's rates.
#[derive(Default, Clone)]
struct Reading {
    at: Option<Instant>,
    published: BTreeMap<String, f64>,
    delivered: f64,
    received: f64,
    dropped: BTreeMap<String, f64>,
    /// Per shard: (sum of lag seconds, samples).
    lag: BTreeMap<String, (f64, u64)>,
}

impl Reading {
    fn take(ctx: &AdminContext) -> Reading {
        let m = &ctx.metrics;
        let lag = shard_lag_totals(m).into_iter().collect();
        Reading {
            at: Some(Instant::now()),
            published: counters_by_label(&m.messages_published),
            delivered: m.messages_delivered.get() as f64,
            received: m.redis_messages_received.get() as f64,
            dropped: counters_by_label(&m.messages_dropped),
            lag,
        }
    }
}

/// The first label's value of a series (every vector here has one label).
fn label(metric: &prometheus::proto::Metric) -> String {
    metric
        .get_label()
        .first()
        .map(|l| l.value().to_owned())
        .unwrap_or_default()
}

fn counters_by_label(vec: &prometheus::IntCounterVec) -> BTreeMap<String, f64> {
    vec.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| (label(metric), metric.get_counter().get_value()))
        .collect()
}

/// One snapshot, with rates over the interval since `before` (null on the first).
fn snapshot(ctx: &AdminContext, before: &Reading, now: &Reading) -> Value {
    let m = &ctx.metrics;
    let secs = match (before.at, now.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let rate = |new: f64, old: Option<f64>| match old {
        Some(old) if secs > 0.0 => json!(((new - old).max(0.0) / secs * 10.0).round() / 10.0),
        _ => Value::Null,
    };
    let published: serde_json::Map<String, Value> = now
        .published
        .iter()
        .map(|(source, n)| (source.clone(), rate(*n, before.published.get(source).copied())))
        .collect();
    let dropped: serde_json::Map<String, Value> = now
        .dropped
        .iter()
        .map(|(reason, n)| {
            let per_s = rate(*n, before.dropped.get(reason).copied());
            (reason.clone(), json!({"total": *n as u64, "per_s": per_s}))
        })
        .collect();
    let mut lag: Vec<(usize, Value)> = now
        .lag
        .iter()
        .map(|(shard, (sum, count))| {
            let mean_ms = match before.lag.get(shard) {
                Some((old_sum, old_count)) if count > old_count => {
                    let ms = (sum - old_sum) / (count - old_count) as f64 * 1000.0;
                    json!((ms * 100.0).round() / 100.0)
                }
                _ => Value::Null,
            };
            (shard.parse().unwrap_or(usize::MAX), mean_ms)
        })
        .collect();
    lag.sort_by_key(|(shard, _)| *shard);
    let subscriptions: f64 = m
        .subscriptions
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|series| series.get_gauge().get_value())
        .sum();
    let before_delivered = before.at.map(|_| before.delivered);
    let before_received = before.at.map(|_| before.received);
    json!({
        "at_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        "interval_ms": PERIOD.as_millis() as u64,
        "stats": stats_body(ctx),
        "cluster": serde_json::to_value(&*ctx.cluster.snapshot()).unwrap_or_default(),
        "draining": ctx.state.is_draining(),
        "fd": {
            "open": ctx.budget.estimated_open(),
            "limit": ctx.budget.limit(),
            "headroom": ctx.budget.headroom(),
            "reserve": m.fd_reserve.get(),
        },
        "memory_bytes": m.resident_memory.get(),
        "subscriptions": subscriptions as u64,
        "shard_lag_ms": lag.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "rates": {
            "published_per_s": published,
            "delivered_per_s": rate(now.delivered, before_delivered),
        },
        "dropped": dropped,
        "broker": {
            "kind": if ctx.cluster.is_local() { "in-process" } else { "redis" },
            "up": ctx.state.broker_up(),
            "reconnects": m.redis_reconnects.get(),
            "subscriptions": m.redis_subscriptions.get(),
            "received_per_s": rate(now.received, before_received),
        },
    })
}

/// The body of `GET /console/events`: a snapshot now and every [`PERIOD`] after,
/// for as long as `still_allowed` holds (a session that expires ends its feed).
pub fn stream(
    ctx: Arc<AdminContext>,
    still_allowed: impl Fn() -> bool + Send + 'static,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send> {
    let mut interval = tokio::time::interval(PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The browser waits this long before reconnecting a dropped feed.
    let first = Some(Bytes::from_static(b"retry: 2000\n\n"));
    let state = (ctx, interval, Reading::default(), first, still_allowed);
    StreamBody::new(stream::unfold(
        state,
        |(ctx, mut interval, before, first, allowed)| async move {
            if let Some(preamble) = first {
                return Some((Ok(Frame::data(preamble)), (ctx, interval, before, None, allowed)));
            }
            interval.tick().await;
            if !allowed() {
                return None;
            }
            let now = Reading::take(&ctx);
            let event = format!("data: {}\n\n", snapshot(&ctx, &before, &now));
            Some((Ok(Frame::data(Bytes::from(event))), (ctx, interval, now, None, allowed)))
        },
    ))
}
