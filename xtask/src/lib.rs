//! Project tooling behind `cargo xtask`: the layer check, formatting/lint/test gates, and
//! benchmark runs. A library so its checks are unit-tested and run by `cargo test`.

pub mod arch_doc;
pub mod bench;
pub mod layers;
pub mod mutants;
pub mod tidy;

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate's directory).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo binary running us (falls back to `cargo` on PATH).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}
