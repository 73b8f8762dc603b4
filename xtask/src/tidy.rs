//! Source-tree invariants checked as tests (the rust-analyzer "tidy" idea): every Rust file
//! says what it is for on its first line, no library names a concrete vendor where the
//! architecture forbids it, no file imports a file that imports it back ([`import_cycles`]),
//! and the toolchain is not older than the workspace's `rust-version`
//! ([`rust_version_problem`]).

mod imports;

use std::fs;
use std::path::{Path, PathBuf};

pub use imports::{FileRefs, file_refs, import_cycles};

/// All `.rs` files under the project's source folders.
pub fn rust_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["crates", "xtask", "tests", "benches"] {
        walk(&root.join(dir), &mut out);
    }
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files whose first line is not a `//!` module doc.
pub fn files_without_module_doc(root: &Path) -> Vec<PathBuf> {
    rust_files(root)
        .into_iter()
        .filter(|p| {
            fs::read_to_string(p)
                .map_or(true, |s| !s.lines().next().unwrap_or("").starts_with("//!"))
        })
        .collect()
}

/// Lines in `im-arch` (and the business logic) that name a concrete vendor adapter.
pub fn vendor_names_in_arch(root: &Path) -> Vec<String> {
    const FORBIDDEN: &[&str] = &[
        "MemoryVendor",
        "MemoryClient",
        "im_service::memory",
        "ReferenceClient",
        "Xmpp",
        "im_service::xmpp",
        "im_service::matrix",
        "MatrixVendor",
        "FaultProxy",
    ];
    let mut hits = Vec::new();
    let mut files = Vec::new();
    walk(&root.join("crates/im-arch/src"), &mut files);
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        // Unit tests may use any vendor; only the library code is checked.
        let library = text.split("#[cfg(test)]").next().unwrap_or("");
        for (i, line) in library.lines().enumerate() {
            // Doc examples and comments may show a concrete vendor; code may not.
            if line.trim_start().starts_with("//") {
                continue;
            }
            if FORBIDDEN.iter().any(|w| line.contains(w)) {
                hits.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    hits
}

/// Lines of the business demo, outside its wiring module, that import a vendor adapter, a
/// server of the test tier or the archive crate, or match on a vendor error: business code
/// speaks `im-arch` and `im-qc` only.
pub fn adapter_names_in_demo(root: &Path) -> Vec<String> {
    const FORBIDDEN: &[&str] = &[
        "im_service::memory",
        "im_service::reference",
        "im_testkit",
        "im_vendor_sim",
        "im_archive",
        "MemoryVendor",
        "ReferenceVendor",
        "ReferenceServer",
        "ServiceError",
        "ErrorClass",
        "Xmpp",
        "im_service::xmpp",
        "im_service::matrix",
        "MatrixVendor",
        "FaultProxy",
    ];
    let mut hits = Vec::new();
    let mut files = Vec::new();
    walk(&root.join("crates/im-business-demo/src"), &mut files);
    for f in files {
        if f.file_name().is_some_and(|n| n == "wiring.rs") {
            continue;
        }
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if FORBIDDEN.iter().any(|w| line.contains(w)) {
                hits.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    hits
}

/// `rustc --version` of the toolchain building the workspace (`$RUSTC`, else `rustc`).
pub fn rustc_version() -> anyhow::Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = std::process::Command::new(&rustc)
        .arg("--version")
        .output()
        .map_err(|e| anyhow::anyhow!("running {rustc} --version: {e}"))?;
    if !out.status.success() {
        anyhow::bail!("{rustc} --version failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `(major, minor, patch)` of `1.95`, `1.95.0`, or the version in `rustc 1.95.0 (… date)`
/// (pre-release suffixes such as `-nightly` ignored).
pub fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let word = text
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let word = word.split('-').next()?;
    let mut parts = word.split('.').map(|p| p.parse::<u64>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().unwrap_or(Some(0))?;
    Some((major, minor, patch))
}

/// The workspace's `rust-version` (from `[workspace.package]` of the root manifest).
pub fn workspace_rust_version(manifest: &str) -> Option<String> {
    manifest.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "rust-version").then(|| value.trim().trim_matches('"').to_string())
    })
}

/// Why the toolchain cannot stand for the workspace's `rust-version` claim: the claim is
/// missing or unreadable, or the toolchain is older than it. `None` when all is well.
pub fn rust_version_problem(root: &Path) -> anyhow::Result<Option<String>> {
    let manifest = fs::read_to_string(root.join("Cargo.toml"))?;
    let Some(claimed) = workspace_rust_version(&manifest) else {
        return Ok(Some("Cargo.toml has no rust-version".into()));
    };
    let rustc = rustc_version()?;
    Ok(version_problem(&claimed, &rustc))
}

/// [`rust_version_problem`] on the two strings.
pub fn version_problem(claimed: &str, rustc: &str) -> Option<String> {
    let Some(want) = parse_version(claimed) else {
        return Some(format!("rust-version {claimed:?} does not parse"));
    };
    let Some(have) = parse_version(rustc) else {
        return Some(format!("`rustc --version` said {rustc:?}"));
    };
    (have < want).then(|| {
        format!("the toolchain ({rustc}) is older than the workspace's rust-version {claimed}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rust_file_starts_with_a_module_doc() {
        let missing = files_without_module_doc(&crate::project_root());
        assert!(
            missing.is_empty(),
            "files without a `//!` first line: {missing:#?}"
        );
    }

    #[test]
    fn im_arch_never_names_a_concrete_vendor() {
        let hits = vendor_names_in_arch(&crate::project_root());
        assert!(hits.is_empty(), "im-arch names a vendor: {hits:#?}");
    }

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(parse_version("1.95"), Some((1, 95, 0)));
        assert_eq!(
            parse_version("rustc 1.95.0 (59807616e 2026-04-14)"),
            Some((1, 95, 0))
        );
        assert_eq!(
            parse_version("rustc 1.96.0-nightly (abc 2026-05-01)"),
            Some((1, 96, 0))
        );
        assert_eq!(parse_version("rustc"), None);
        assert_eq!(version_problem("1.95", "rustc 1.95.0 (x 2026-04-14)"), None);
        assert_eq!(version_problem("1.85", "rustc 1.95.1 (x 2026-04-14)"), None);
        assert!(version_problem("1.95", "rustc 1.94.9 (x 2026-01-01)").is_some());
        assert!(version_problem("one", "rustc 1.95.0").is_some());
        assert_eq!(
            workspace_rust_version(
                "[workspace.package]\nedition = \"2024\"\nrust-version = \"1.95\"\n"
            ),
            Some("1.95".into())
        );
    }

    /// The toolchain that builds (and tests) the workspace is not older than the
    /// `rust-version` it claims: the claim states what CI checks, no more.
    #[test]
    fn the_toolchain_is_not_older_than_rust_version() {
        let problem = rust_version_problem(&crate::project_root()).unwrap();
        assert_eq!(problem, None);
    }

    #[test]
    fn no_file_imports_a_file_that_imports_it_back() {
        let cycles = import_cycles(&crate::project_root());
        assert!(
            cycles.is_empty(),
            "{} import cycle(s) between files (move the shared item to a module both use, \
             or turn the dependency around):\n{}",
            cycles.len(),
            cycles.join("\n")
        );
    }

    #[test]
    fn the_demo_names_vendors_only_in_its_wiring_module() {
        let hits = adapter_names_in_demo(&crate::project_root());
        assert!(hits.is_empty(), "business code names a vendor: {hits:#?}");
    }
}
