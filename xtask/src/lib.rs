//! Project tooling behind `cargo xtask`: the layer check, formatting/lint/test gates, and
//! benchmark runs. A library so its checks are unit-tested and run by `cargo test`.

pub mod arch_doc;
pub mod bench;
pub mod ci;
pub mod layers;
pub mod mutants;
pub mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

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

/// Runs `cargo args` in the project root with extra environment variables; fails on a
/// non-zero exit.
pub fn run_cargo(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(cargo())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(project_root())
        .status()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The cargo arguments that run the test tier's binary `bin` (debug build) with `args`:
/// the one spelling of `cargo run -q -p im-testkit --bin BIN -- ARGS` the tasks share.
pub fn testkit_bin<'a>(bin: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["run", "-q", "-p", "im-testkit", "--bin", bin, "--"];
    all.extend_from_slice(args);
    all
}

/// Runs the simulation binary (`im-sim`, debug build) with `args`.
pub fn run_sim(args: &[&str]) -> Result<()> {
    run_cargo(&testkit_bin("im-sim", args), &[])
}

/// Builds the binaries the crash harness runs as children (found beside the driver):
/// `im-crash-client` of the test tier and `im-vendor-sim` of its own package.
pub fn build_crash_binaries() -> Result<()> {
    run_cargo(
        &[
            "build",
            "-q",
            "-p",
            "im-testkit",
            "--bin",
            "im-crash-client",
            "-p",
            "im-vendor-sim",
            "--bin",
            "im-vendor-sim",
        ],
        &[],
    )
}
