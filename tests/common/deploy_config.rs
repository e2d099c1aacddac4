//! The shipped configs under deploy/, rewritten for a test: only the lines between
//! markers change, so a test runs the files as shipped.

use std::path::Path;

/// A file of the repository, by its path from the root (e.g. `deploy/nginx/nginx.conf`).
pub fn deploy_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect("deploy config")
}

/// Replaces the lines between `# BEGIN name` and `# END name` with `lines`.
pub fn replace_marked(config: &str, name: &str, lines: &[String]) -> String {
    let (begin, end) = (format!("# BEGIN {name}"), format!("# END {name}"));
    let mut out = Vec::new();
    let mut skipping = false;
    for line in config.lines() {
        if line.trim() == begin {
            skipping = true;
            out.push(line.to_owned());
            out.extend(lines.iter().cloned());
        } else if line.trim() == end {
            skipping = false;
            out.push(line.to_owned());
        } else if !skipping {
            out.push(line.to_owned());
        }
    }
    out.join("\n") + "\n"
}
