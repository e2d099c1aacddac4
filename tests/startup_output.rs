//! What a person sees when the gateway starts, with its output piped (a terminal
//! multiplexer, `docker logs`, a CI log): the exact URLs to connect to on stdout,
//! and no ANSI colour codes anywhere.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts the gateway with human logs and both outputs piped; returns the first two
/// stdout lines and what stderr had by then.
fn start_and_read(args: &[&str]) -> (Vec<String>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "human",
            "--log",
            "info",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shardcast");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let start = Instant::now();
    while lines.len() < 2 && start.elapsed() < Duration::from_secs(10) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(line);
        }
    }
    let _ = child.kill();
    let mut stderr = String::new();
    let _ = child.stderr.take().expect("stderr").read_to_string(&mut stderr);
    let _ = child.wait();
    (lines, stderr)
}

/// The port of the URL in an announcement line, 0 if there is none.
fn port_of(line: &str) -> u16 {
    let host_port = line.split("://").nth(1).and_then(|r| r.split('/').next()).unwrap_or("");
    host_port.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
}

#[test]
fn piped_output_has_the_urls_and_no_colour() {
    let (lines, stderr) = start_and_read(&["--listen", "127.0.0.1:0"]);
    assert_eq!(lines.len(), 2, "stdout: {lines:?}; stderr: {stderr}");
    let ws = lines[0].strip_prefix("WebSocket: ws://127.0.0.1:").expect(&lines[0]);
    assert!(ws.ends_with("/ws") && port_of(&lines[0]) > 0, "{lines:?}");
    let admin = lines[1].strip_prefix("Admin API: http://127.0.0.1:").expect(&lines[1]);
    assert!(admin.ends_with('/') && port_of(&lines[1]) > 0, "{lines:?}");
    // The URLs are the bound ports, as the logs say.
    let listening = stderr
        .lines()
        .find(|l| l.contains("listening"))
        .expect("listening log line");
    assert!(
        listening.contains(&format!("ws=127.0.0.1:{}", port_of(&lines[0]))),
        "{listening}"
    );
    for out in [lines.join("\n"), stderr] {
        assert!(!out.contains("\x1b["), "ANSI escape in piped output: {out:?}");
    }
}

#[test]
fn a_wildcard_listen_address_is_announced_on_loopback_with_its_path() {
    let (lines, stderr) = start_and_read(&["--listen", "0.0.0.0:0", "--ws-path", "/socket"]);
    assert_eq!(lines.len(), 2, "stdout: {lines:?}; stderr: {stderr}");
    assert!(lines[0].starts_with("WebSocket: ws://127.0.0.1:"), "{lines:?}");
    assert!(lines[0].ends_with("/socket"), "{lines:?}");
    assert!(port_of(&lines[0]) > 0, "{lines:?}");
}
