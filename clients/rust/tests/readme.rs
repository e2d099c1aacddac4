//! README.md against the code: every code block in it is either an example program
//! that runs against a real gateway, a `shardcast-cli` transcript that is replayed,
//! or skipped for a stated reason, so that the README cannot drift from the crate.
//!
//! The convention: an HTML comment on the line before a block's opening fence (the
//! rendered README does not show it) says what the block is.
//!
//! - `<!-- example: NAME.rs -->` before a ```rust block: the block is
//!   `examples/NAME.rs` byte for byte, less the file's leading `//!` header (which
//!   says how to run it). If the file has a `// README: begin` line and a
//!   `// README: end` line, the block is the lines between them instead, with the
//!   marker's indentation removed: the rest of the file is what a fragment needs to
//!   run. Every such example runs against a gateway and must exit 0. The examples
//!   read the gateway's address from `SHARDCAST_URL` and `SHARDCAST_ADMIN`, and
//!   default to the gateway's defaults.
//! - `<!-- test: transcript (NOTE) -->` before a ```console block: each
//!   `$ shardcast-cli ARGS` line runs against a gateway on which one client is
//!   subscribed to `news`, and what it prints (stdout, then stderr) must be the lines
//!   that follow it. The test adds `--url` and `--admin`, so the commands keep the
//!   default addresses. ARGS are plain words and '…'-quoted ones, with an optional
//!   `# comment`.
//! - `<!-- test: skip (REASON) -->` before any block: not tested, for REASON,
//!   which must be given.
//!
//! Every fenced block needs one, except ```toml and ```text blocks, which are data
//! and synopses rather than code to run.
//!
//! The test runs the examples compiled by `cargo test` (in
//! `<target>/debug/examples/`). `cargo test --test readme` does not build them, so
//! the test builds them itself (`cargo build -p shardcast-client --features cli
//! --examples`) when one is missing or older than the sources it is built from.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::SystemTime;

use common::{within, Gateway};
use tokio::process::Command;

/// Languages of fenced blocks that need no marker.
const UNCHECKED_LANGUAGES: [&str; 2] = ["toml", "text"];

/// A fenced code block of the README.
struct Block {
    /// The 1-based line of its opening fence.
    line: usize,
    /// The info string after the opening fence (`rust`, `console`, …).
    language: String,
    /// The marker comment on the line before the fence, without `<!--` and `-->`.
    marker: Option<String>,
    /// The lines between the fences, each ending in `\n`.
    text: String,
}

/// What a block's marker says it is.
#[derive(Debug, PartialEq)]
enum Marker {
    /// `example: NAME.rs`
    Example(String),
    /// `test: transcript (NOTE)`
    Transcript,
    /// `test: skip (REASON)`
    Skip,
}

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    let path = crate_dir().join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The README's fenced blocks, in order.
fn blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    let mut previous = "";
    for (index, line) in readme.lines().enumerate() {
        match open.as_mut() {
            Some(_) if line.trim_end() == "```" => blocks.extend(open.take()),
            Some(block) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            None => {
                if let Some(language) = line.strip_prefix("```") {
                    let marker = previous
                        .trim()
                        .strip_prefix("<!--")
                        .and_then(|m| m.strip_suffix("-->"))
                        .map(|m| m.trim().to_owned());
                    open = Some(Block {
                        line: index + 1,
                        language: language.trim().to_owned(),
                        marker,
                        text: String::new(),
                    });
                }
            }
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    assert!(open.is_none(), "README.md ends inside a fenced block");
    blocks
}

/// Reads a marker; `Err` says what is wrong with it.
fn parse_marker(marker: &str) -> Result<Marker, String> {
    if let Some(name) = marker.strip_prefix("example:") {
        let name = name.trim();
        return match name.strip_suffix(".rs") {
            Some(stem) if !stem.is_empty() && !stem.contains('/') => Ok(Marker::Example(name.to_owned())),
            _ => Err(format!(
                "`{marker}`: the example must be a file name NAME.rs in examples/"
            )),
        };
    }
    let Some(test) = marker.strip_prefix("test:") else {
        return Err(format!("`{marker}` is neither `example: NAME.rs` nor `test: …`"));
    };
    let test = test.trim();
    if let Some(skip) = test.strip_prefix("skip") {
        return match parenthesised(skip) {
            Some(why) if !why.is_empty() => Ok(Marker::Skip),
            _ => Err(format!("`{marker}`: a skip needs a reason, `test: skip (why)`")),
        };
    }
    match test.strip_prefix("transcript").map(str::trim) {
        Some(note) if note.is_empty() || parenthesised(note).is_some() => Ok(Marker::Transcript),
        _ => Err(format!("`{marker}`: expected `test: skip (why)` or `test: transcript`")),
    }
}

/// The text inside `( … )`, trimmed.
fn parenthesised(note: &str) -> Option<&str> {
    note.trim().strip_prefix('(')?.strip_suffix(')').map(str::trim)
}

/// The blocks that carry a marker, with it; `Err` lists missing and malformed markers.
fn markers(blocks: Vec<Block>) -> Result<Vec<(Block, Marker)>, Vec<String>> {
    let mut marked = Vec::new();
    let mut problems = Vec::new();
    for block in blocks {
        let Some(marker) = &block.marker else {
            if !UNCHECKED_LANGUAGES.contains(&block.language.as_str()) {
                problems.push(format!(
                    "line {}: a ```{} block without a marker comment (see tests/readme.rs)",
                    block.line, block.language
                ));
            }
            continue;
        };
        let marker = match parse_marker(marker) {
            Ok(marker) => marker,
            Err(problem) => {
                problems.push(format!("line {}: {problem}", block.line));
                continue;
            }
        };
        let wanted = match &marker {
            Marker::Example(_) => Some("rust"),
            Marker::Transcript => Some("console"),
            Marker::Skip => None,
        };
        match wanted {
            Some(language) if language != block.language => problems.push(format!(
                "line {}: a {marker:?} marker belongs on a ```{language} block, not ```{}",
                block.line, block.language
            )),
            _ => marked.push((block, marker)),
        }
    }
    if problems.is_empty() {
        Ok(marked)
    } else {
        Err(problems)
    }
}

/// The README's marked blocks; fails the test on a missing or malformed marker.
fn marked_blocks(readme: &str) -> Vec<(Block, Marker)> {
    markers(blocks(readme)).unwrap_or_else(|problems| panic!("README.md:\n{}", problems.join("\n")))
}

/// What the README shows of an example's source (see the module docs).
fn readme_excerpt(source: &str) -> Result<String, String> {
    let lines: Vec<&str> = source.lines().collect();
    let begin = lines.iter().position(|l| l.trim() == "// README: begin");
    let end = lines.iter().position(|l| l.trim() == "// README: end");
    let (body, indent) = match (begin, end) {
        (Some(begin), Some(end)) if begin < end => {
            let indent = lines[begin].len() - lines[begin].trim_start().len();
            (&lines[begin + 1..end], indent)
        }
        (None, None) => {
            let start = lines
                .iter()
                .position(|l| !l.starts_with("//!") && !l.trim().is_empty())
                .unwrap_or(lines.len());
            (&lines[start..], 0)
        }
        _ => return Err("needs both `// README: begin` and a later `// README: end`, or neither".into()),
    };
    let mut excerpt = String::new();
    for line in body {
        let unindented = match line.get(..indent) {
            Some(prefix) if prefix.trim().is_empty() => &line[indent..],
            _ if line.trim().is_empty() => "",
            _ => return Err(format!("a line less indented than `// README: begin`: {line:?}")),
        };
        excerpt.push_str(unindented);
        excerpt.push('\n');
    }
    Ok(excerpt)
}

/// The names (`NAME.rs`) of the examples the README shows.
fn readme_examples(readme: &str) -> Vec<String> {
    marked_blocks(readme)
        .into_iter()
        .filter_map(|(_, marker)| match marker {
            Marker::Example(name) => Some(name),
            _ => None,
        })
        .collect()
}

#[test]
fn every_code_block_is_an_example_a_transcript_or_skipped_with_a_reason() {
    let readme = readme();
    let mut problems = Vec::new();
    let mut transcripts = 0;
    for (block, marker) in marked_blocks(&readme) {
        match marker {
            Marker::Example(name) => {
                let path = crate_dir().join("examples").join(&name);
                let excerpt = std::fs::read_to_string(&path)
                    .map_err(|e| format!("read {}: {e}", path.display()))
                    .and_then(|source| readme_excerpt(&source).map_err(|e| format!("examples/{name}: {e}")));
                match excerpt {
                    Ok(excerpt) if excerpt == block.text => {}
                    Ok(excerpt) => problems.push(format!(
                        "line {}: the block differs from examples/{name}; the example has\n{excerpt}",
                        block.line
                    )),
                    Err(problem) => problems.push(format!("line {}: {problem}", block.line)),
                }
            }
            Marker::Transcript => transcripts += 1,
            Marker::Skip => {}
        }
    }
    assert!(problems.is_empty(), "README.md:\n{}", problems.join("\n\n"));
    assert!(!readme_examples(&readme).is_empty(), "the README shows no example");
    assert!(transcripts > 0, "the README has no CLI transcript");
}

#[test]
fn markers_are_read_strictly() {
    assert_eq!(
        parse_marker("example: quick_start.rs"),
        Ok(Marker::Example("quick_start.rs".into()))
    );
    assert_eq!(parse_marker("test: skip (needs a cluster)"), Ok(Marker::Skip));
    assert_eq!(parse_marker("test: transcript"), Ok(Marker::Transcript));
    assert_eq!(
        parse_marker("test: transcript (one subscriber)"),
        Ok(Marker::Transcript)
    );
    for bad in [
        "test: skip",
        "test: skip ()",
        "test: skip because",
        "example: quick_start",
        "example: ../src/lib.rs",
        "test: run",
        "a comment",
    ] {
        assert!(parse_marker(bad).is_err(), "{bad}");
    }
}

#[test]
fn an_excerpt_is_the_marked_lines_or_the_file_after_its_header() {
    let excerpt = "//! Header.\n\nfn main() {\n    let a = 1;\n    // README: begin\n    let b = a;\n\n    drop(b);\n    // README: end\n}\n";
    assert_eq!(readme_excerpt(excerpt), Ok("let b = a;\n\ndrop(b);\n".into()));
    assert_eq!(
        readme_excerpt("//! Header.\n//! More.\n\nfn main() {}\n"),
        Ok("fn main() {}\n".into())
    );
    assert!(readme_excerpt("fn main() {\n    // README: begin\n}\n").is_err());
}

/// The compiled example `NAME` (from `NAME.rs`). This test's binary is
/// `<target>/debug/deps/readme-<hash>`, and cargo puts examples in `<target>/debug/examples/`.
fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in <target>/<profile>/deps");
    profile_dir
        .join("examples")
        .join(name.trim_end_matches(".rs"))
        .with_extension(std::env::consts::EXE_EXTENSION)
}

/// The newest modification time among `path` and, for a directory, everything in it.
fn newest_mtime(path: &Path) -> SystemTime {
    let own = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let children = std::fs::read_dir(path).into_iter().flatten().flatten();
    children
        .map(|entry| newest_mtime(&entry.path()))
        .fold(own, SystemTime::max)
}

/// Builds the examples when one is missing or older than a source it is built from
/// (cargo itself only builds them for a `cargo test` without target filters).
fn build_examples_if_stale(names: &[String]) {
    let workspace = crate_dir().join("../..");
    let sources = [
        crate_dir().join("src"),
        crate_dir().join("examples"),
        crate_dir().join("Cargo.toml"),
        workspace.join("proto/src"),
        workspace.join("proto/Cargo.toml"),
        workspace.join("Cargo.lock"),
    ];
    let newest_source = sources
        .iter()
        .map(|p| newest_mtime(p))
        .fold(SystemTime::UNIX_EPOCH, SystemTime::max);
    let stale = names.iter().any(
        |name| match std::fs::metadata(example_bin(name)).and_then(|m| m.modified()) {
            Ok(built) => built < newest_source,
            Err(_) => true,
        },
    );
    if !stale {
        return;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = StdCommand::new(cargo)
        .args(["build", "-p", "shardcast-client", "--features", "cli", "--examples"])
        .current_dir(crate_dir())
        .status()
        .expect("run cargo build for the examples");
    assert!(status.success(), "building the examples failed");
}

/// Runs a command to completion within the harness's bound, with no API key from the test's environment.
async fn run(command: &mut Command) -> Output {
    let output = command
        .env_remove("SHARDCAST_API_KEY")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    within("the command to finish", output).await.expect("run the command")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `--token-hmac-secret` of the gateway the examples run against.
const TOKEN_SECRET: &str = "readme-secret";

/// Lines an example must print on stdout, besides exiting 0.
fn expected_stdout(example: &str) -> &'static [&'static str] {
    match example {
        "quick_start.rs" => &[
            "delivered to 1 connection(s) on that instance",
            r#"news #1: {"text":"hello"}"#,
        ],
        "token_provider.rs" | "sign_token.rs" => &["connected as 42"],
        "history.rs" => &["1 publication(s) in history", r#"current score: {"away":0,"home":1}"#],
        _ => &[],
    }
}

#[tokio::test]
async fn readme_examples_run_against_a_gateway() {
    let names = readme_examples(&readme());
    build_examples_if_stale(&names);
    // Tokens are checked (the authentication examples), anonymous clients allowed (the
    // others); history and client publishing on (the history example).
    let gateway = Gateway::start(&[
        "--token-hmac-secret",
        TOKEN_SECRET,
        "--allow-anonymous",
        "true",
        "--history-size",
        "100",
        "--allow-client-publish",
    ]);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 300;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "42", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
    )
    .expect("sign a token");
    for name in &names {
        let output = run(Command::new(example_bin(name))
            .env("SHARDCAST_URL", gateway.ws_url())
            .env("SHARDCAST_ADMIN", gateway.admin_url())
            .env("SHARDCAST_TOKEN", &token)
            .env("SHARDCAST_TOKEN_SECRET", TOKEN_SECRET))
        .await;
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(
            output.status.success(),
            "examples/{name}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        );
        for line in expected_stdout(name) {
            assert!(
                stdout.lines().any(|l| l == *line),
                "examples/{name} did not print {line:?}; stdout:\n{stdout}"
            );
        }
    }
}

/// Splits a transcript command into words: plain words and '…'-quoted ones, up to a
/// `# comment`. Anything else a shell would interpret is refused, so that what the
/// README shows is exactly what runs.
fn shell_words(command: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = command.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return Ok(words);
        };
        if first == '#' {
            return Ok(words);
        }
        let mut word = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            match c {
                '\'' => loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("an unclosed quote in {command:?}")),
                    }
                },
                '"' | '\\' | '$' | '`' | '|' | '&' | ';' | '<' | '>' | '(' | ')' | '*' | '?' | '~' => {
                    return Err(format!("{c:?} in {command:?}: a transcript command is plain words"))
                }
                c => word.push(c),
            }
        }
        words.push(word);
    }
}

#[test]
fn shell_words_are_plain_words_and_single_quotes() {
    assert_eq!(
        shell_words(r#"shardcast-cli pub news '{"text": "hi"}'   # a comment"#),
        Ok(vec![
            "shardcast-cli".into(),
            "pub".into(),
            "news".into(),
            r#"{"text": "hi"}"#.into()
        ])
    );
    assert_eq!(shell_words("a 'b'c''"), Ok(vec!["a".into(), "bc".into()]));
    for refused in ["a | jq", "a \"b\"", "a $B", "a 'b", "a > f"] {
        assert!(shell_words(refused).is_err(), "{refused}");
    }
}

/// A step of a transcript: a command and what it prints.
struct Step {
    /// The README line of the command.
    line: usize,
    /// The command, without the `$ `.
    command: String,
    /// The lines after the command, up to the next one.
    output: Vec<String>,
}

/// The steps of a transcript block, in order.
fn transcript_steps(block: &Block) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for (index, line) in block.text.lines().enumerate() {
        match (line.strip_prefix("$ "), steps.last_mut()) {
            (Some(command), _) => steps.push(Step {
                line: block.line + 1 + index,
                command: command.to_owned(),
                output: Vec::new(),
            }),
            (None, Some(step)) => step.output.push(line.to_owned()),
            (None, None) => panic!("README.md line {}: a transcript starts with `$ `", block.line),
        }
    }
    steps
}

#[tokio::test]
async fn cli_transcripts_replay() {
    let transcripts: Vec<Block> = marked_blocks(&readme())
        .into_iter()
        .filter(|(_, marker)| *marker == Marker::Transcript)
        .map(|(block, _)| block)
        .collect();
    let gateway = Gateway::start(&[]);
    let client = shardcast_client::Client::connect(gateway.ws_url()).expect("client");
    let _news = within("subscribe", client.subscribe("news")).await.expect("subscribed");
    for block in &transcripts {
        for Step { line, command, output } in transcript_steps(block) {
            let words = shell_words(&command).unwrap_or_else(|e| panic!("README.md line {line}: {e}"));
            let Some(("shardcast-cli", args)) = words.split_first().map(|(p, a)| (p.as_str(), a)) else {
                panic!("README.md line {line}: `{command}` does not run shardcast-cli");
            };
            let ran = run(Command::new(env!("CARGO_BIN_EXE_shardcast-cli")).args(args).args([
                "--url",
                &gateway.ws_url(),
                "--admin",
                &gateway.admin_url(),
            ]))
            .await;
            let printed = text(&ran.stdout) + &text(&ran.stderr);
            assert_eq!(
                printed.lines().collect::<Vec<_>>(),
                output,
                "README.md line {line}: `{command}` ({})",
                ran.status
            );
        }
    }
    client.close().await;
}
