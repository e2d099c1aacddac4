//! The report writer: turns the results files of a directory into `summary.md`
//! (one table per scenario, with shardcast's advantage over each baseline) and the
//! SVG charts BENCHMARKS.md links to.

use std::fmt::Write;
use std::path::Path;

use crate::chart::{LineChart, Series};
use crate::error::{BenchError, IoContext};
use crate::record::{ResultsFile, ScenarioRecord};
use crate::servers::ServerKind;

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.abs() >= 1e6 => format!("{:.2}M", v / 1e6),
        Some(v) if v.abs() >= 1e4 => format!("{:.1}k", v / 1e3),
        Some(v) => format!("{v:.digits$}"),
        None => "–".into(),
    }
}

/// A figure as the median with its min-max over repeated runs, when the record
/// merges several ("119.0k (112.3k–121.9k)"), else the figure alone.
pub(crate) fn fig(r: &ScenarioRecord, name: &str, digits: usize) -> String {
    match r.range(name) {
        Some((lo, hi)) if r.get("runs").unwrap_or(1.0) > 1.0 => format!(
            "{} ({}–{})",
            fmt(r.get(name), digits),
            fmt(Some(lo), digits),
            fmt(Some(hi), digits)
        ),
        _ => fmt(r.get(name), digits),
    }
}

/// shardcast's figure relative to a baseline's: >1 means shardcast is better.
fn advantage(shardcast: Option<f64>, baseline: Option<f64>, higher_is_better: bool) -> Option<f64> {
    let (s, b) = (shardcast?, baseline?);
    let r = if higher_is_better { s / b } else { b / s };
    (r.is_finite() && r > 0.0).then_some(r)
}

/// The server column: "shardcast ×3 via Redis", "node ×3 workers" for multi-process runs.
fn server_name(r: &ScenarioRecord) -> String {
    match r.get("gateways") {
        Some(g) if g > 1.0 && r.target == ServerKind::Shardcast => format!("shardcast ×{g:.0} via Redis"),
        Some(g) if g > 1.0 => format!("{} ×{g:.0} workers", r.target.name()),
        _ => r.target.name().to_owned(),
    }
}

fn find<'a>(records: &'a [ScenarioRecord], like: &ScenarioRecord, target: ServerKind) -> Option<&'a ScenarioRecord> {
    records
        .iter()
        .find(|r| r.target == target && r.size == like.size && r.phase == like.phase && r.scenario == like.scenario)
}

/// The "shardcast advantage" cell of a row: shardcast's `shardcast_key` figure from
/// its row of the same size and phase against this row's `key`; empty on shardcast's
/// own rows. Sockudo's rows compare with shardcast's Pusher endpoint when the run
/// has it (the same protocol and publish API), else with native shardcast.
fn advantage_cell(
    records: &[ScenarioRecord],
    r: &ScenarioRecord,
    (shardcast_key, key): (&str, &str),
    higher_is_better: bool,
    digits: usize,
) -> String {
    if r.target == ServerKind::Shardcast {
        return String::new();
    }
    let sc = match r.target {
        ServerKind::Sockudo => find(records, r, ServerKind::ShardcastPusher),
        _ => None,
    }
    .or_else(|| find(records, r, ServerKind::Shardcast));
    fmt(
        advantage(sc.and_then(|s| s.get(shardcast_key)), r.get(key), higher_is_better),
        digits,
    ) + "×"
}

/// The deliveries-per-CPU figure comparable across servers: for the Node baselines
/// the whole stack (workers and their Redis) is the denominator.
fn deliveries_per_cpu_key(t: ServerKind) -> &'static str {
    match t {
        ServerKind::Node | ServerKind::SocketIo => "deliveries_per_stack_cpu_second",
        _ => "deliveries_per_server_cpu_second",
    }
}

fn idle_table(records: &[ScenarioRecord]) -> String {
    let mut out = String::from(
        "| connections | server | subscribed | server RSS / conn (B) | kernel socket slabs / conn (B) | kernel TCP buffers / conn (B) | connect rate (/s) | shardcast advantage (RSS) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        let adv = advantage_cell(records, r, ("rss_per_connection", "rss_per_connection"), false, 1);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.size,
            server_name(r),
            fmt(r.get("connections"), 0),
            fig(r, "rss_per_connection", 0),
            fmt(r.get("kernel_socket_slabs_per_connection"), 0),
            fmt(r.get("kernel_tcp_buffers_per_connection"), 0),
            fmt(r.get("connect_rate"), 0),
            adv
        );
    }
    out
}

fn publish_table(records: &[ScenarioRecord]) -> String {
    let mut out = String::from(
        "| size | phase | server | deliveries/s | deliveries / server CPU-s | incl. Redis | p50 ms | p99 ms | p99.9 ms | max ms | missing | shardcast advantage (per CPU-s) | limited by |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        // shardcast's side counts its Redis too (equal to its server figure without one).
        let keys = ("deliveries_per_stack_cpu_second", deliveries_per_cpu_key(r.target));
        let adv = advantage_cell(records, r, keys, true, 2);
        let l = r.latency.unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            r.size,
            r.phase,
            server_name(r),
            fig(r, "deliveries_per_second", 0),
            fig(r, "deliveries_per_server_cpu_second", 0),
            if r.get("redis_cpu_seconds").unwrap_or(0.0) > 0.0 {
                fmt(r.get("deliveries_per_stack_cpu_second"), 0)
            } else {
                String::new()
            },
            l.p50_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms,
            fmt(r.get("missing_deliveries"), 0),
            adv,
            r.limited_by
        );
    }
    out
}

/// The compression scenario: per size and phase (fixed or max, compressed or not),
/// shardcast and Node, with the bytes a delivery took on the wire and shardcast's
/// figure per CPU-second over Node's on shardcast's row.
fn compression_table(records: &[ScenarioRecord]) -> String {
    let mut out = String::from(
        "| subscribers | phase | server | deliveries/s | deliveries / server CPU-s | incl. Redis | wire bytes / delivery | compressed | p50 ms | p99 ms | missing | server RSS MiB | shardcast / Node per CPU-s | limited by |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        let l = r.latency.unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} |",
            r.size,
            r.phase,
            server_name(r),
            fig(r, "deliveries_per_second", 0),
            fig(r, "deliveries_per_server_cpu_second", 0),
            if r.get("redis_cpu_seconds").unwrap_or(0.0) > 0.0 {
                fmt(r.get("deliveries_per_stack_cpu_second"), 0)
            } else {
                String::new()
            },
            fmt(r.get("wire_bytes_per_delivery"), 0),
            r.get("compressed_share")
                .map_or("–".into(), |s| format!("{:.0}%", s * 100.0)),
            l.p50_ms,
            l.p99_ms,
            fmt(r.get("missing_deliveries"), 0),
            fmt(r.get("server_rss_bytes").map(|b| b / 1048576.0), 0),
            r.get("vs_node").map_or(String::new(), |v| format!("**{v:.2}×**")),
            r.limited_by
        );
    }
    out
}

fn storm_table(records: &[ScenarioRecord]) -> String {
    let mut out = String::from(
        "| connections | server | back and subscribed | seconds | refused (503) | I/O errors + timeouts | gave up | shardcast advantage (time) | limited by |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        let adv = advantage_cell(records, r, ("storm_seconds", "storm_seconds"), false, 2);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.size,
            server_name(r),
            fmt(r.get("resubscribed"), 0),
            fmt(r.get("storm_seconds"), 2),
            fmt(r.get("refused"), 0),
            fmt(
                Some(r.get("io_errors").unwrap_or(0.0) + r.get("timeouts").unwrap_or(0.0)),
                0
            ),
            fmt(r.get("gave_up"), 0),
            adv,
            r.limited_by
        );
    }
    out
}

/// Order of the auth scenario's token schemes: the tokenless baseline first.
fn scheme_rank(phase: &str) -> usize {
    match phase.rsplit(' ').next() {
        Some("none") => 0,
        Some("hs256") => 1,
        _ => 2,
    }
}

/// "min–max" of the per-CPU figure over an auth configuration's rounds.
fn range_over_rounds(r: &ScenarioRecord) -> String {
    format!("{}–{}", fmt(r.get("per_cpu_min"), 0), fmt(r.get("per_cpu_max"), 0))
}

/// The auth scenario: connects per token scheme, then fanout without and with tokens,
/// each against the tokenless run (`vs_none`); p50 and p99 are the worst round's.
fn auth_tables(records: &[ScenarioRecord]) -> String {
    let mut sorted: Vec<&ScenarioRecord> = records.iter().collect();
    sorted.sort_by_key(|r| {
        (
            r.scenario != "auth_connect",
            r.size,
            r.phase.starts_with("max"),
            scheme_rank(&r.phase),
        )
    });
    let mut out = String::from(
        "| clients per round | rounds | tokens | connected | connects/s | server CPU µs / connect | connects / server CPU-s | range over rounds | vs none (per CPU-s) | token cost µs / connect (vs none) | limited by |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in sorted.iter().filter(|r| r.scenario == "auth_connect") {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.size,
            fmt(r.get("rounds"), 0),
            r.phase,
            fmt(r.get("connections"), 0),
            fmt(r.get("connect_rate"), 0),
            fmt(r.get("server_cpu_us_per_connect"), 1),
            fmt(r.get("connects_per_server_cpu_second"), 0),
            range_over_rounds(r),
            fmt(r.get("vs_none"), 2),
            fmt(r.get("token_cpu_us_per_connect"), 1),
            r.limited_by
        );
    }
    if sorted.iter().any(|r| r.scenario == "auth_fanout") {
        out.push_str(
            "\n| subscribers | rounds | phase and tokens | deliveries/s | deliveries / server CPU-s | range over rounds | vs none (per CPU-s) | p50 ms | p99 ms | missing | limited by |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
    }
    for r in sorted.iter().filter(|r| r.scenario == "auth_fanout") {
        let l = r.latency.unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} |",
            r.size,
            fmt(r.get("rounds"), 0),
            r.phase,
            fig(r, "deliveries_per_second", 0),
            fig(r, "deliveries_per_server_cpu_second", 0),
            range_over_rounds(r),
            fmt(r.get("vs_none"), 2),
            l.p50_ms,
            l.p99_ms,
            fmt(r.get("missing_deliveries"), 0),
            r.limited_by
        );
    }
    out
}

/// Every server, in chart order.
const ALL_SERVERS: [ServerKind; 6] = [
    ServerKind::Shardcast,
    ServerKind::ShardcastPusher,
    ServerKind::Floor,
    ServerKind::Node,
    ServerKind::SocketIo,
    ServerKind::Sockudo,
];

/// Charts compare single-process servers; multi-gateway runs stay in the tables.
fn single_gateway(r: &ScenarioRecord) -> bool {
    r.get("gateways").unwrap_or(1.0) <= 1.0
}

fn color(t: ServerKind) -> &'static str {
    match t {
        ServerKind::Shardcast => "#1f77b4",
        ServerKind::Floor => "#2ca02c",
        ServerKind::Node => "#d62728",
        ServerKind::SocketIo => "#9467bd",
        ServerKind::ShardcastPusher => "#17becf",
        ServerKind::Sockudo => "#ff7f0e",
    }
}

/// Reads one percentile out of a summary.
type PercentileOf = fn(&crate::latency::LatencySummary) -> f64;

fn latency_chart(records: &[ScenarioRecord]) -> LineChart {
    let mut series = Vec::new();
    for target in ALL_SERVERS {
        let rs: Vec<&ScenarioRecord> = records
            .iter()
            .filter(|r| r.scenario == "fanout" && r.phase == "fixed" && r.target == target)
            .filter(|r| single_gateway(r))
            .collect();
        if rs.is_empty() {
            continue;
        }
        let pick: [(&str, &str, PercentileOf); 3] = [
            ("p50", "2,3", |l| l.p50_ms),
            ("p99", "", |l| l.p99_ms),
            ("p99.9", "8,4", |l| l.p999_ms),
        ];
        for (name, dash, get) in pick {
            series.push(Series {
                name: format!("{} {name}", target.name()),
                color: color(target).into(),
                dash: dash.into(),
                points: rs
                    .iter()
                    .filter_map(|r| Some((r.size as f64, get(r.latency.as_ref()?))))
                    .collect(),
            });
        }
    }
    LineChart {
        title: "Publish-to-delivery latency, one channel, fixed publish rate".into(),
        x_label: "subscribers of the channel".into(),
        y_label: "latency (ms, log scale)".into(),
        log_y: true,
        series,
    }
}

fn throughput_chart(records: &[ScenarioRecord]) -> LineChart {
    let mut series = Vec::new();
    for target in ALL_SERVERS {
        let key = deliveries_per_cpu_key(target);
        let points: Vec<(f64, f64)> = records
            .iter()
            .filter(|r| r.scenario == "fanout" && r.phase == "max" && r.target == target)
            .filter(|r| single_gateway(r))
            .filter_map(|r| Some((r.size as f64, r.get(key)? / 1e3)))
            .collect();
        if !points.is_empty() {
            series.push(Series {
                name: target.name().into(),
                color: color(target).into(),
                dash: String::new(),
                points,
            });
        }
    }
    LineChart {
        title: "Deliveries per server CPU-second, one channel, max rate".into(),
        x_label: "subscribers of the channel".into(),
        y_label: "thousand deliveries per CPU-second".into(),
        log_y: false,
        series,
    }
}

fn rss_chart(records: &[ScenarioRecord]) -> LineChart {
    let mut series = Vec::new();
    for target in ALL_SERVERS {
        // The largest idle run has the most samples along the way.
        let best = records
            .iter()
            .filter(|r| r.scenario == "idle" && r.target == target && !r.series.is_empty())
            .filter(|r| single_gateway(r))
            .max_by_key(|r| r.size);
        if let Some(r) = best {
            series.push(Series {
                name: target.name().into(),
                color: color(target).into(),
                dash: String::new(),
                points: r.series.iter().map(|&(c, b)| (c, b / 1048576.0)).collect(),
            });
        }
    }
    LineChart {
        title: "Server resident memory while idle subscribed connections open".into(),
        x_label: "subscribed connections".into(),
        y_label: "server RSS (MiB)".into(),
        log_y: false,
        series,
    }
}

/// The first record of each scenario, server, size and phase: a file that runs a
/// server again beside others (fanout-pusher's shardcast, fanout-msgpack) charts
/// once, from the file read first (`fanout.json` before `fanout-*.json`).
fn first_of_each(records: Vec<ScenarioRecord>) -> Vec<ScenarioRecord> {
    let mut seen = std::collections::BTreeSet::new();
    records
        .into_iter()
        .filter(|r| seen.insert((r.scenario.clone(), r.target, r.size, r.phase.clone())))
        .collect()
}

/// Writes `summary.md` and the charts for every results file in `dir`.
pub fn write_report(dir: &Path) -> Result<(), BenchError> {
    let files = ResultsFile::read_all(dir)?;
    let mut md = String::from("# Benchmark results (generated by `shardcast-bench report`)\n\n");
    let mut all: Vec<ScenarioRecord> = Vec::new();
    for (name, file) in &files {
        let m = &file.machine;
        let _ = writeln!(
            md,
            "## {name}\n\n`{}`\n\n{} CPUs ({}), {:.1} GiB, {}; servers on CPU {:?}, load generators on CPU {:?}.\n",
            file.command,
            m.cpus,
            m.cpu_model,
            m.memory_bytes as f64 / (1u64 << 30) as f64,
            m.kernel,
            file.gateway_cpus,
            file.loadgen_cpus
        );
        let mut records = file.records.clone();
        records.sort_by(|a, b| (a.size, &a.phase, a.target).cmp(&(b.size, &b.phase, b.target)));
        let scenario = records.first().map(|r| r.scenario.clone()).unwrap_or_default();
        md.push_str(&match scenario.as_str() {
            "idle" => idle_table(&records),
            "storm" => storm_table(&records),
            "compression" => compression_table(&records),
            "auth_connect" | "auth_fanout" => auth_tables(&records),
            "history_publish" | "history_memory" | "history_storm" => crate::history::history_tables(&records),
            "presence" => crate::presence_churn::presence_table(&records),
            _ => publish_table(&records),
        });
        md.push('\n');
        for r in &records {
            for n in &r.notes {
                let _ = writeln!(md, "- {} {} {} {}: {n}", r.target.name(), r.scenario, r.size, r.phase);
            }
        }
        md.push('\n');
        all.extend(records);
    }
    std::fs::write(dir.join("summary.md"), md).context(|| format!("write {}/summary.md", dir.display()))?;
    let all = first_of_each(all);
    let charts = [
        ("latency-vs-subscribers.svg", latency_chart(&all)),
        ("throughput-vs-subscribers.svg", throughput_chart(&all)),
        ("rss-vs-connections.svg", rss_chart(&all)),
    ];
    for (name, chart) in charts {
        std::fs::write(dir.join(name), chart.to_svg()).context(|| format!("write {name}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(target: ServerKind, rss: f64) -> ScenarioRecord {
        let mut r = ScenarioRecord::new("idle", target, 1000, "connect");
        r.set("rss_per_connection", rss);
        r
    }

    #[test]
    fn sockudo_is_compared_with_shardcasts_pusher_endpoint_when_the_run_has_it() {
        let key = ("rss_per_connection", "rss_per_connection");
        let all = [
            idle(ServerKind::Shardcast, 1000.0),
            idle(ServerKind::ShardcastPusher, 2000.0),
            idle(ServerKind::Sockudo, 100_000.0),
        ];
        assert_eq!(advantage_cell(&all, &all[0], key, false, 0), "");
        assert_eq!(advantage_cell(&all, &all[1], key, false, 1), "2.0×");
        assert_eq!(advantage_cell(&all, &all[2], key, false, 0), "50×");
        let without_pusher = [all[0].clone(), all[2].clone()];
        assert_eq!(
            advantage_cell(&without_pusher, &without_pusher[1], key, false, 0),
            "100×"
        );
    }

    #[test]
    fn charts_take_each_server_size_and_phase_once() {
        let mut again = idle(ServerKind::Shardcast, 3000.0);
        again.notes.push("from a later file".into());
        let kept = first_of_each(vec![
            idle(ServerKind::Shardcast, 1000.0),
            again,
            idle(ServerKind::Sockudo, 1.0),
        ]);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].get("rss_per_connection"), Some(1000.0));
    }
}
