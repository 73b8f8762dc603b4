//! Keeps docs/ARCHITECTURE.md true to the tree: every file path and every Rust name it
//! quotes in backticks must exist, so a rename or a removal that forgets the code map fails
//! a test instead of leaving a stale claim for the next reader.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::tidy::rust_files;

/// Words in backticks that are not names in this tree: Rust keywords, primitive and std
/// types, external crates and tools the document talks about.
const NOT_OURS: &[&str] = &[
    "async",
    "await",
    "fn",
    "impl",
    "pub",
    "mod",
    "use",
    "dyn",
    "self",
    "crate",
    "super",
    "mut",
    "const",
    "static",
    "true",
    "false",
    "u8",
    "u32",
    "u64",
    "u128",
    "i64",
    "usize",
    "bool",
    "str",
    "String",
    "Vec",
    "Option",
    "Some",
    "None",
    "Ok",
    "Err",
    "Result",
    "Arc",
    "Box",
    "Mutex",
    "RwLock",
    "HashMap",
    "BTreeSet",
    "BTreeMap",
    "Stream",
    "Sink",
    "Debug",
    "Display",
    "Default",
    "Clone",
    "Send",
    "Sync",
    "Drop",
    "Future",
    "Duration",
    "Instant",
    "std",
    "tokio",
    "sled",
    "serde",
    "bincode",
    "axum",
    "reqwest",
    "mockall",
    "proptest",
    "criterion",
    "thiserror",
    "anyhow",
    "tracing",
    "parking_lot",
    "quick_junit",
    "tokio_util",
    "tokio_xmpp",
    "rand",
    "clap",
    "cargo",
    "rustc",
    "sha2",
    "hmac",
    "xtask",
    "main",
    "lib",
    "tests",
    "examples",
    "benches",
    "Cargo",
    "README",
    "LengthDelimitedCodec",
    "CancellationToken",
    "TaskTracker",
    "JoinHandle",
    "SystemTime",
    "flush_async",
    "prometheus_client",
];

/// One problem per quoted path or name that the tree does not have.
pub fn problems(root: &Path) -> Vec<String> {
    let doc = root.join("docs/ARCHITECTURE.md");
    let Ok(text) = fs::read_to_string(&doc) else {
        return vec!["docs/ARCHITECTURE.md is missing".into()];
    };
    let names = defined_names(root);
    let mut out = Vec::new();
    let mut section_crate: Option<PathBuf> = None;
    let mut in_fence = false;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if line.starts_with("## ") {
            section_crate = None;
        }
        if let Some(heading) = line.strip_prefix("### ") {
            section_crate = quoted(heading)
                .into_iter()
                .map(|q| root.join(q))
                .find(|p| p.join("Cargo.toml").exists());
        }
        for q in quoted(line) {
            if let Some(problem) = check(root, section_crate.as_deref(), &names, &q) {
                out.push(format!("docs/ARCHITECTURE.md:{}: {problem}", n + 1));
            }
        }
    }
    out
}

/// The spans between backticks on one line.
fn quoted(line: &str) -> Vec<String> {
    line.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// `None` when `q` names something that exists (or is not a path or a name at all).
fn check(root: &Path, krate: Option<&Path>, names: &HashSet<String>, q: &str) -> Option<String> {
    if looks_like_path(q) {
        let mut bases = vec![root.to_path_buf(), root.join("crates")];
        bases.extend(krate.map(Path::to_path_buf));
        let rel = q.trim_end_matches('/');
        // Inside a crate's section a file may be named from its module folder
        // (`protocol.rs` under `reference/`): any file of the crate ending so will do.
        let in_crate = krate.is_some_and(|k| {
            rust_files_under(k).iter().any(|f| {
                let f = f.to_string_lossy();
                f.ends_with(&format!("/{rel}")) || f.contains(&format!("/{rel}/"))
            })
        });
        return (!in_crate && !bases.iter().any(|b| b.join(rel).exists()))
            .then(|| format!("path `{q}` does not exist"));
    }
    let path = q.trim_end_matches("()");
    if !is_rust_path(path) {
        return None;
    }
    path.split("::")
        .filter(|seg| !NOT_OURS.contains(seg) && !seg.starts_with("im_"))
        .find(|seg| !names.contains(*seg))
        .map(|seg| format!("`{q}`: no item, variant, field or method named `{seg}` in the tree"))
}

/// Every file below `dir` (sources, tests, fixtures), for names given relative to a module.
fn rust_files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A file or folder of this repository: has a slash or a file extension, no spaces.
fn looks_like_path(q: &str) -> bool {
    !q.contains(' ')
        && !q.contains("::")
        && !q.contains('{')
        && !q.contains('*')
        && !q.starts_with("--")
        && !q.starts_with('/')
        && !q.starts_with('.')
        && !q.starts_with("../")
        && (q.contains('/')
            || [".rs", ".md", ".toml", ".sh", ".patch"]
                .iter()
                .any(|e| q.ends_with(e)))
        && !q.contains("://")
}

/// `Name`, `Type::method`, `module::Item`: identifiers joined by `::`.
fn is_rust_path(q: &str) -> bool {
    !q.is_empty()
        && q.split("::").all(|seg| {
            let mut chars = seg.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        // A lone lowercase word is prose (`login`, `send`) more often than a name: only
        // CamelCase words, snake_case words with an underscore, and paths are checked.
        && (q.contains("::")
            || q.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            || q.contains('_'))
}

/// Every identifier that appears in the workspace's Rust sources and manifests' package
/// names: a quoted name that is none of these was renamed or removed.
fn defined_names(root: &Path) -> HashSet<String> {
    let mut names = HashSet::new();
    for file in rust_files(root) {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let mut word = String::new();
        for c in text.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
            } else if !word.is_empty() {
                names.insert(std::mem::take(&mut word));
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_spans_are_found() {
        assert_eq!(quoted("a `b` c `d::e` f"), vec!["b", "d::e"]);
    }

    #[test]
    fn paths_and_names_are_told_apart() {
        assert!(looks_like_path("crates/im-arch/src/bus.rs"));
        assert!(looks_like_path("client/sync.rs"));
        assert!(!looks_like_path("Bus::subscribe"));
        assert!(!looks_like_path("--vendor reference"));
        assert!(is_rust_path("Bus::subscribe"));
        assert!(is_rust_path("SledStore"));
        assert!(is_rust_path("commit_delivery"));
        assert!(!is_rust_path("login"));
        assert!(!is_rust_path("GET /v1/history"));
    }

    #[test]
    fn a_missing_name_or_path_is_a_problem() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let names: HashSet<String> = ["Bus", "subscribe"].map(String::from).into();
        assert!(check(&root, None, &names, "Bus::subscribe").is_none());
        assert!(check(&root, None, &names, "Bus::unsubscribe_all").is_some());
        assert!(check(&root, None, &names, "docs/ARCHITECTURE.md").is_none());
        assert!(check(&root, None, &names, "docs/NOPE.md").is_some());
    }

    #[test]
    fn architecture_md_names_only_what_exists() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let problems = problems(&root);
        assert!(
            problems.is_empty(),
            "docs/ARCHITECTURE.md quotes what the tree does not have:\n{}",
            problems.join("\n")
        );
    }
}
