//! Running a Python snippet for what a test needs from a library nobody here
//! wrote: PyJWT minting tokens, `cryptography` making keys (tests/run.sh installs
//! both).

use std::process::Command;

/// Runs `script` with `args` under python3 and returns its trimmed stdout; panics,
/// with Python's stderr, when it fails.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 (tests/run.sh installs PyJWT[crypto])");
    assert!(
        out.status.success(),
        "python failed (is PyJWT[crypto] installed? tests/run.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}
