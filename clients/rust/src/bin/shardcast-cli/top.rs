//! `shardcast-cli top`: the cluster (every instance's connections) and the asked
//! instance's shards, readiness, channels and descriptor headroom, read from the
//! admin API every interval and redrawn in place, for a host with no browser.
//!
//! On a terminal it draws on the alternate screen with four VT100 sequences
//! (alternate screen, hidden cursor, cursor home, erase), which every terminal
//! emulator in use understands, and leaves the last frame on the normal screen
//! when it ends. Piped, it prints one frame after another.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shardcast_client::{AdminClient, ClusterView, Error, InstanceStats};

use super::{cluster_table, CliError};

const ENTER: &str = "\x1b[?1049h\x1b[?25l";
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";
const HOME: &str = "\x1b[H";
/// Erases to the end of the line (after each line) and of the screen (after the frame).
const ERASE_LINE: &str = "\x1b[K";
const ERASE_BELOW: &str = "\x1b[J";

/// Redraws every `interval` until Ctrl-C, or after `count` frames.
pub async fn top(admin: &AdminClient, admin_url: &str, interval: Duration, count: Option<u64>) -> Result<(), CliError> {
    let terminal = std::io::stdout().is_terminal();
    let mut out = std::io::stdout();
    if terminal {
        write_out(&mut out, ENTER)?;
    }
    let result = tokio::select! {
        result = frames(admin, admin_url, interval, count, terminal, &mut out) => result,
        _ = tokio::signal::ctrl_c() => Ok(None),
    };
    if terminal {
        write_out(&mut out, LEAVE)?;
    }
    match result {
        Ok(Some(last)) if terminal => write_out(&mut out, &format!("{last}\n")),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Draws the frames; returns the last one.
async fn frames(
    admin: &AdminClient,
    admin_url: &str,
    interval: Duration,
    count: Option<u64>,
    terminal: bool,
    out: &mut std::io::Stdout,
) -> Result<Option<String>, CliError> {
    let mut drawn = 0u64;
    let mut last = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while count.map_or(true, |limit| drawn < limit) {
        ticker.tick().await;
        let figures = match tokio::try_join!(admin.cluster(), admin.stats()) {
            Ok(figures) => Ok(figures),
            // A wrong key will not fix itself: stop and say so.
            Err(e @ Error::Api { status: 401, .. }) => return Err(CliError::from(e)),
            // During an incident the gateway may come and go: keep trying.
            Err(e) => Err(e),
        };
        let frame = render(admin_url, interval, &figures, now_ms());
        if terminal {
            let lines: String = frame.lines().map(|l| format!("{l}{ERASE_LINE}\r\n")).collect();
            write_out(out, &format!("{HOME}{lines}{ERASE_BELOW}"))?;
        } else {
            write_out(out, &format!("{frame}\n\n"))?;
        }
        last = Some(frame);
        drawn += 1;
    }
    Ok(last)
}

fn write_out(out: &mut std::io::Stdout, text: &str) -> Result<(), CliError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CliError::Output)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One frame: a title line, the cluster table, then the instance's own figures.
fn render(
    admin_url: &str,
    interval: Duration,
    figures: &Result<(ClusterView, InstanceStats), Error>,
    now_ms: u64,
) -> String {
    let secs = now_ms / 1000;
    let clock = format!("{:02}:{:02}:{:02} UTC", secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = format!(
        "shardcast top  {admin_url}  {clock}  every {:.1} s, Ctrl-C to quit\n\n",
        interval.as_secs_f64()
    );
    let (cluster, stats) = match figures {
        Ok(figures) => figures,
        Err(e) => {
            out.push_str(&format!("admin API unreachable: {e}\n(retrying)"));
            return out;
        }
    };
    out.push_str(&cluster_table(cluster));
    out.push_str(&format!(
        "\n\nTHIS INSTANCE {}  {}\nconnections {} conn   channels {} ch   fd headroom {} fds\n\n",
        stats.node,
        if stats.ready { "ready" } else { "NOT READY" },
        stats.connections,
        stats.channels,
        stats.fd_headroom
    ));
    let widest = stats.shards.iter().copied().max().unwrap_or(0).max(1);
    out.push_str("SHARD  CONNECTIONS\n");
    for (i, connections) in stats.shards.iter().enumerate() {
        // A bar of up to 30 cells, scaled to the busiest shard.
        let bar = "#".repeat((connections * 30 / widest) as usize);
        let line = format!("{:>5}  {connections:>11}  {bar}", format!("#{i}"));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> (ClusterView, InstanceStats) {
        let cluster = serde_json::from_value(serde_json::json!({
            "instances": [
                {"node": "a", "ws": "127.0.0.1:1", "connections": 3, "at_ms": 1_000},
                {"node": "b", "ws": "127.0.0.1:2", "connections": 4, "at_ms": 1_000},
            ],
            "total_connections": 7,
            "fresh": true,
        }))
        .expect("cluster");
        let stats = serde_json::from_value(serde_json::json!({
            "node": "a", "connections": 3, "shards": [1, 2], "channels": 5, "fd_headroom": 900, "ready": true,
        }))
        .expect("stats");
        (cluster, stats)
    }

    #[test]
    fn a_frame_shows_the_cluster_and_each_shard() {
        let frame = render("http://h:1", Duration::from_secs(1), &Ok(figures()), 3_723_000);
        assert!(frame.starts_with("shardcast top  http://h:1  01:02:03 UTC"), "{frame}");
        assert!(frame.contains("total: 7 connections on 2 instances"), "{frame}");
        assert!(frame.contains("THIS INSTANCE a  ready"), "{frame}");
        assert!(
            frame.contains("connections 3 conn   channels 5 ch   fd headroom 900 fds"),
            "{frame}"
        );
        assert!(frame.contains("   #0            1  ###############\n"), "{frame}");
        assert!(
            frame.ends_with("   #1            2  ##############################"),
            "{frame}"
        );
    }

    #[test]
    fn an_unreachable_gateway_is_a_line_not_an_exit() {
        let error = Error::Timeout {
            op: "admin API request",
            timeout: Duration::from_secs(1),
        };
        let frame = render("http://h:1", Duration::from_secs(1), &Err(error), 0);
        assert!(frame.contains("admin API unreachable"), "{frame}");
    }
}
