//! `shardcast-cli top` under a pseudo-terminal (python3's `pty` module gives it
//! one): it switches to the alternate screen, draws the cluster and per-shard
//! figures, and redraws them as clients come, so the live counts show; at the
//! end it restores the screen and leaves the last frame on it.

mod common;

use std::process::Stdio;

use common::{wait_event, within, Gateway};
use shardcast_client::{Client, ClientEvent};
use tokio::io::AsyncReadExt;
use tokio::process::{ChildStdout, Command};

/// Runs `argv` on a pseudo-terminal and copies what it draws to this pipe.
const ON_A_PTY: &str =
    "import os, pty, sys\nstatus = pty.spawn(sys.argv[1:])\nsys.exit(os.waitstatus_to_exitcode(status))";

/// Reads until `what` has been drawn; returns everything read so far.
async fn read_until(stdout: &mut ChildStdout, seen: &mut String, what: &str) {
    within(&format!("`{what}` on the terminal"), async {
        let mut buf = [0u8; 4096];
        while !seen.contains(what) {
            let n = stdout.read(&mut buf).await.expect("read the terminal");
            assert!(n > 0, "top ended before drawing `{what}`:\n{seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
}

async fn connect(gateway: &Gateway) -> Client {
    let (client, mut events) = Client::builder(gateway.ws_url()).build_with_events().expect("client");
    wait_event(&mut events, |e| matches!(e, ClientEvent::Connected { .. })).await;
    client
}

#[tokio::test]
async fn top_on_a_terminal_redraws_the_live_counts_in_place() {
    let gateway = Gateway::start(&[]);
    let mut clients = vec![connect(&gateway).await, connect(&gateway).await];
    let mut child = Command::new("python3")
        .args(["-c", ON_A_PTY, env!("CARGO_BIN_EXE_shardcast-cli"), "top"])
        .args(["--admin", &gateway.admin_url(), "--interval", "0.2", "--count", "40"])
        .env_remove("SHARDCAST_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs shardcast-cli top on a pty");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = String::new();

    read_until(&mut stdout, &mut seen, "total: 2 connections on 1 instance").await;
    // On a terminal: the alternate screen, then frames drawn from the top-left corner.
    assert!(seen.starts_with("\x1b[?1049h\x1b[?25l\x1b[H"), "{seen:?}");
    assert!(
        seen.contains(&format!("THIS INSTANCE {}  ready", gateway.node)),
        "{seen}"
    );
    assert!(seen.contains("connections 2 conn"), "{seen}");
    assert!(seen.contains("SHARD  CONNECTIONS"), "{seen}");

    // Three more clients: the next frames say so, without a restart.
    for _ in 0..3 {
        clients.push(connect(&gateway).await);
    }
    let before = seen.len();
    read_until(&mut stdout, &mut seen, "total: 5 connections on 1 instance").await;
    assert!(seen[before..].contains("\x1b[H"), "redrawn in place");
    assert!(seen.contains("connections 5 conn"), "{seen}");

    // Redraws continue until --count, then the screen is restored.
    let status = within("top to finish its frames", child.wait())
        .await
        .expect("wait for top");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.expect("read the rest");
    seen.push_str(&rest);
    assert!(status.success(), "{status:?}\n{seen}");
    let restored = seen.rfind("\x1b[?25h\x1b[?1049l").expect("the screen restored");
    assert!(
        seen[restored..].contains("total: 5 connections"),
        "the last frame is left on screen: {seen:?}"
    );
    for client in clients {
        client.close().await;
    }
}
