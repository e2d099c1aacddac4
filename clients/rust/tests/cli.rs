//! The `shardcast-cli` binary against a real gateway: `sub` prints what `pub`
//! publishes as JSON lines (and survives a gateway restart), `stats` prints the
//! instance's and the cluster's figures, the API key comes from the environment,
//! failures exit non-zero with one clear message, `pub` refuses broken JSON
//! unless `--raw`, and the help lists the global options once.

mod common;

use std::process::{Output, Stdio};

use common::{free_port, within, Gateway};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// The CLI binary built with this crate (this test needs the `cli` feature).
fn cli_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shardcast-cli")
}

/// A `shardcast-cli` command with no API key from the test's environment.
fn cli(args: &[&str]) -> Command {
    let mut command = Command::new(cli_bin());
    command
        .args(args)
        .env_remove("SHARDCAST_API_KEY")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs a command to completion (a `Command` or the `&mut` its builder methods return).
async fn run(mut command: impl std::borrow::BorrowMut<Command>) -> Output {
    within("the CLI to finish", command.borrow_mut().output())
        .await
        .expect("run shardcast-cli")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `sub`, with its output read line by line.
struct Sub {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Sub {
    fn spawn(args: &[&str]) -> Sub {
        let mut child = cli(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shardcast-cli sub");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        Sub { child, stdout, stderr }
    }

    /// Reads status lines until each of `lines` has appeared, in any order.
    async fn wait_status(&mut self, lines: &[&str]) {
        let mut missing: Vec<&str> = lines.to_vec();
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(common::WAIT, async {
            while !missing.is_empty() {
                let Ok(Some(status)) = self.stderr.next_line().await else {
                    return;
                };
                missing.retain(|line| *line != status);
                seen.push(status);
            }
        })
        .await;
        assert!(missing.is_empty(), "no status line {missing:?}; saw {seen:?}");
    }

    async fn message(&mut self) -> Value {
        let line = within("a message line", self.stdout.next_line())
            .await
            .expect("read stdout")
            .expect("a line before the end of output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
    }
}

#[tokio::test]
async fn pub_reaches_a_running_sub_as_json_lines() {
    let gateway = Gateway::start(&[]);
    let (url, admin) = (gateway.ws_url(), gateway.admin_url());
    for encoding in ["json", "msgpack"] {
        let mut sub = Sub::spawn(&[
            "sub",
            "news",
            "other",
            "--count",
            "2",
            "--url",
            &url,
            "--encoding",
            encoding,
        ]);
        sub.wait_status(&["subscribed: news", "subscribed: other"]).await;

        let published = run(cli(&["--admin", &admin, "pub", "news", r#"{"text":"hi","n":1}"#])).await;
        assert!(published.status.success(), "{}", text(&published.stderr));
        let receipt: Value = serde_json::from_slice(&published.stdout).expect("JSON receipt");
        assert_eq!(receipt, json!({"ok": true, "subscribers": 1}));
        // Not JSON: sent as a JSON string.
        let published = run(cli(&["pub", "other", "plain words", "--admin", &admin])).await;
        assert!(published.status.success(), "{}", text(&published.stderr));

        assert_eq!(
            sub.message().await,
            json!({"channel": "news", "seq": 1, "data": {"text": "hi", "n": 1}}),
            "{encoding}"
        );
        assert_eq!(
            sub.message().await,
            json!({"channel": "other", "seq": 1, "data": "plain words"}),
            "{encoding}"
        );
        // --count 2 reached: it exits by itself, successfully.
        let status = within("sub to exit", sub.child.wait()).await.expect("wait");
        assert!(status.success(), "{status:?}");
    }
}

#[tokio::test]
async fn sub_reconnects_across_a_gateway_restart() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut gateway = Gateway::start_at(&listen, &["--drain-window", "200ms"]);
    let url = gateway.ws_url();
    let mut sub = Sub::spawn(&["sub", "news", "--url", &url]);
    sub.wait_status(&["subscribed: news"]).await;

    assert_eq!(gateway.terminate(), Some(0));
    let gateway = Gateway::start_at(&listen, &[]);
    sub.wait_status(&["resubscribed: news (messages published while disconnected are lost)"])
        .await;
    let published = run(cli(&["pub", "news", "42", "--admin", &gateway.admin_url()])).await;
    assert!(published.status.success(), "{}", text(&published.stderr));
    assert_eq!(sub.message().await, json!({"channel": "news", "seq": 1, "data": 42}));
    // Still running: it stays connected until interrupted.
    assert!(sub.child.try_wait().expect("try_wait").is_none());
    sub.child.start_kill().expect("kill");
    let _ = within("sub to die", sub.child.wait()).await;
}

#[tokio::test]
async fn stats_prints_the_instance_and_the_cluster() {
    let gateway = Gateway::start(&[]);
    let admin = gateway.admin_url();

    let output = run(cli(&["stats", "--admin", &admin])).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stats: Value = serde_json::from_slice(&output.stdout).expect("stats JSON");
    assert_eq!(stats["node"], gateway.node.as_str());
    assert_eq!(stats["connections"], 0);
    assert!(stats["fd_headroom"].is_number(), "every field is printed: {stats}");

    let output = run(cli(&["stats", "--cluster", "--admin", &admin])).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let table = text(&output.stdout);
    assert!(table.starts_with("NODE"), "{table}");
    assert!(table.contains(&gateway.node), "{table}");
    assert!(table.contains("total: 0 connections on 1 instance"), "{table}");

    let output = run(cli(&["stats", "--cluster", "--json", "--admin", &admin])).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let view: Value = serde_json::from_slice(&output.stdout).expect("cluster JSON");
    assert_eq!(view["instances"][0]["node"], gateway.node.as_str());
    assert_eq!(view["fresh"], true);
}

#[tokio::test]
async fn the_api_key_comes_from_the_flag_or_the_environment() {
    let gateway = Gateway::start(&["--api-key", "s3cret"]);
    let admin = gateway.admin_url();

    let refused = run(cli(&["pub", "news", "1", "--admin", &admin])).await;
    assert!(!refused.status.success());
    let message = text(&refused.stderr);
    assert!(message.contains("401") && message.contains("forbidden"), "{message}");

    let with_flag = run(cli(&["pub", "news", "1", "--admin", &admin, "--api-key", "s3cret"])).await;
    assert!(with_flag.status.success(), "{}", text(&with_flag.stderr));
    let with_env = run(cli(&["stats", "--admin", &admin]).env("SHARDCAST_API_KEY", "s3cret")).await;
    assert!(with_env.status.success(), "{}", text(&with_env.stderr));
}

#[tokio::test]
async fn failures_exit_non_zero_with_a_message() {
    let gateway = Gateway::start(&[]);

    let bad_channel = run(cli(&["sub", "no spaces", "--url", &gateway.ws_url()])).await;
    assert_eq!(bad_channel.status.code(), Some(1));
    assert!(
        text(&bad_channel.stderr).contains("invalid channel name"),
        "{}",
        text(&bad_channel.stderr)
    );

    // A wrong path is the client's fault (HTTP 404): reported, not retried forever.
    let wrong_path = format!("ws://{}/nope", gateway.ws);
    let refused = run(cli(&["sub", "news", "--url", &wrong_path])).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("HTTP 404"), "{}", text(&refused.stderr));

    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let down = run(cli(&["stats", "--admin", &unreachable])).await;
    assert_eq!(down.status.code(), Some(1));
    assert!(text(&down.stderr).contains("I/O error"), "{}", text(&down.stderr));

    let usage = run(cli(&["pub", "only-a-channel"])).await;
    assert_eq!(usage.status.code(), Some(2), "clap's usage error");

    // Data from standard input.
    let mut from_stdin = cli(&["pub", "news", "-", "--admin", &gateway.admin_url()]);
    from_stdin.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = from_stdin.spawn().expect("spawn");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(br#"{"from":"stdin"}"#).await.expect("write");
    }
    let output = within("pub from stdin", child.wait_with_output())
        .await
        .expect("output");
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[tokio::test]
async fn pub_refuses_broken_json_unless_raw() {
    let gateway = Gateway::start(&[]);
    let admin = gateway.admin_url();
    let mut sub = Sub::spawn(&["sub", "news", "--count", "1", "--url", &gateway.ws_url()]);
    sub.wait_status(&["subscribed: news"]).await;

    let refused = run(cli(&["pub", "news", "{bad json", "--admin", &admin])).await;
    assert_eq!(refused.status.code(), Some(1));
    let message = text(&refused.stderr);
    assert!(
        message.contains("not valid JSON") && message.contains("--raw"),
        "{message}"
    );
    assert!(
        refused.stdout.is_empty(),
        "nothing published: {}",
        text(&refused.stdout)
    );

    let published = run(cli(&["pub", "news", "{bad json", "--raw", "--admin", &admin])).await;
    assert!(published.status.success(), "{}", text(&published.stderr));
    // The first message the subscriber sees is the --raw one: the refused one never went out.
    assert_eq!(
        sub.message().await,
        json!({"channel": "news", "seq": 1, "data": "{bad json"})
    );
    let status = within("sub to exit", sub.child.wait()).await.expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_refused_admin_connection_names_the_address() {
    let address = format!("127.0.0.1:{}", free_port());
    let output = run(cli(&["stats", "--admin", &format!("http://{address}")])).await;
    assert_eq!(output.status.code(), Some(1));
    let message = text(&output.stderr);
    assert!(
        message.contains(&format!("cannot reach the admin API at {address}: ")),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
}

#[tokio::test]
async fn a_wrong_websocket_path_is_one_clear_message() {
    let gateway = Gateway::start(&[]);
    let wrong_path = format!("ws://{}/nope", gateway.ws);
    let output = run(cli(&["sub", "news", "--url", &wrong_path])).await;
    assert_eq!(output.status.code(), Some(1));
    // The URL is taken out first: its random port may contain "404" or "1006".
    let message = text(&output.stderr).replace(&wrong_path, "<url>");
    let about_404: Vec<&str> = message.lines().filter(|line| line.contains("404")).collect();
    assert_eq!(about_404.len(), 1, "{message}");
    assert!(
        about_404[0].starts_with("shardcast-cli: the gateway refused the WebSocket upgrade with HTTP 404"),
        "{message}"
    );
    // 1006 (no close frame) is the client's bookkeeping, not news to the user.
    assert!(!message.contains("1006"), "{message}");
}

#[tokio::test]
async fn a_wrong_or_missing_api_key_says_unauthorized() {
    let gateway = Gateway::start(&["--api-key", "s3cret"]);
    let admin = gateway.admin_url();
    for args in [
        vec!["pub", "news", "1", "--admin", &admin],
        vec!["stats", "--admin", &admin, "--api-key", "wrong"],
    ] {
        let output = run(cli(&args)).await;
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let message = text(&output.stderr);
        assert!(
            message.starts_with("shardcast-cli: unauthorized: missing or wrong API key"),
            "{args:?}: {message}"
        );
    }
}

#[tokio::test]
async fn global_options_are_listed_once_in_the_help() {
    let top = run(cli(&["--help"])).await;
    assert!(top.status.success());
    let top = text(&top.stdout);
    assert!(top.contains("--admin <URL>") && top.contains("--log <FILTER>"), "{top}");
    for subcommand in ["sub", "pub", "stats"] {
        let help = run(cli(&[subcommand, "--help"])).await;
        assert!(help.status.success(), "{}", text(&help.stderr));
        let help = text(&help.stdout);
        for global in [
            "--url <URL>",
            "--admin <URL>",
            "--api-key <",
            "--encoding <",
            "--log <FILTER>",
        ] {
            assert!(!help.contains(global), "{subcommand} --help repeats {global}: {help}");
        }
        assert!(help.contains("see `shardcast-cli --help`"), "{help}");
    }
}
