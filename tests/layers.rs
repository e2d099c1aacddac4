//! The layering that src/lib.rs describes, checked against the code: every
//! `crate::<module>` path in src/ is read, and each top-level module may name only
//! modules of a lower layer and the leaf modules beside them. The broker, the
//! lowest layer, may name only itself and the payload. A circle between layers, or
//! an import that points up, fails here with the file and the line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Modules any layer may use; they use no module of the crate but each other.
const LEAVES: &[&str] = &[
    "ws", "payload", "metrics", "state", "config", "auth", "pusher", "outbound",
];

/// The layers, lowest first; a module may use the ones before it.
const LAYERS: &[&str] = &["broker", "fanout", "shard", "admission", "admin", "gateway"];

/// What each module may use beyond itself.
fn allowed(module: &str) -> BTreeSet<&'static str> {
    if module == "broker" {
        return BTreeSet::from(["payload"]);
    }
    if LEAVES.contains(&module) {
        // The transport and the shared types know nothing of the gateway; a leaf
        // that calls out to a configured URL does it through `outbound`, itself a leaf.
        return if module == "outbound" {
            BTreeSet::new()
        } else {
            BTreeSet::from(["outbound"])
        };
    }
    let rank = LAYERS
        .iter()
        .position(|l| *l == module)
        .unwrap_or_else(|| panic!("src/{module} is in no layer: add it to tests/layers.rs and src/lib.rs"));
    LAYERS[..rank].iter().chain(LEAVES).copied().collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of src/ belongs to (`src/shard/task.rs` -> `shard`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_owned()),
    }
}

/// Every `crate::name` in a file's code (comments skipped), with its line number.
/// `use crate::{a, b}` groups are read too.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.push((n + 1, name));
                    }
                }
                continue;
            }
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.push((n + 1, name));
        }
    }
    found
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = top_module(&src, file) else {
            continue;
        };
        let may = allowed(&module);
        let text = std::fs::read_to_string(file).expect("read source");
        for (line, used) in crate_paths(&text) {
            if used != module && !may.contains(used.as_str()) {
                wrong.push(format!("{}:{line}: {module} uses {used}", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn every_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    for line in lib.lines() {
        if let Some(name) = line.strip_prefix("pub mod ").and_then(|l| l.strip_suffix(';')) {
            let _ = allowed(name);
        }
    }
}
