//! `cargo xtask`: the project's task runner (layer check, CI gates, benchmarks, crash soak).

use std::process::Command;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use xtask::{cargo, project_root};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "im-layers project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check the crate graph against the layer rule.
    Layers,
    /// Everything CI gates on: fmt, clippy, docs, layers, tests.
    Ci,
    /// Run the standardized case library against a vendor target (args go to
    /// `im-test-suite`: --vendor memory|reference, --category, --filter, --list).
    TestSuite {
        /// Arguments passed through.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the crash harness: a client in a child process SIGKILLed at N seeded points and
    /// restarted on its store, then 0 lost / 0 duplicated / 0 stuck checked (debug build;
    /// prints the summary line, or the failure with its seed).
    Crash {
        /// Kill points.
        #[arg(long, default_value_t = 200)]
        runs: u32,
        /// Seed to replay (default: $IM_CRASH_SEED, else random).
        #[arg(long)]
        seed: Option<u64>,
        /// `reference` (im-vendor-sim, started by the run) or `xmpp` (Prosody at
        /// $IM_PROSODY_ADDR).
        #[arg(long, default_value = "reference", value_parser = ["reference", "xmpp"])]
        vendor: String,
        /// Further `im-crash` flags (--messages, --pace-ms, --addr, --keep).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the criterion benchmarks (release build) and print a summary table with each
    /// result's ratio to its same-run baseline; extra args go to `cargo bench`.
    Bench {
        /// Only these benchmark targets (e.g. `distribution`); all when none.
        #[arg(long = "bench")]
        benches: Vec<String>,
        /// Arguments passed through, e.g. a benchmark filter.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

/// Builds the binaries the crash harness runs as children (found beside the driver).
fn build_crash_binaries() -> Result<()> {
    run(&[
        "build",
        "-q",
        "-p",
        "im-testkit",
        "--bin",
        "im-vendor-sim",
        "--bin",
        "im-crash-client",
    ])
}

fn run(args: &[&str]) -> Result<()> {
    run_with(args, &[])
}

/// `cargo args` with extra environment variables.
fn run_with(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
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

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Layers => xtask::layers::run(),
        Task::Ci => {
            run(&["fmt", "--all", "--check"])?;
            run(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            run_with(
                &["doc", "--workspace", "--no-deps", "-q"],
                &[("RUSTDOCFLAGS", "-D warnings")],
            )?;
            xtask::layers::run()?;
            run(&["test", "--workspace"])
        }
        Task::TestSuite { args } => {
            // The CRASH cases run `im-crash-client` and `im-vendor-sim` found beside the
            // suite's binary: build them first.
            build_crash_binaries()?;
            let mut all = vec![
                "run",
                "-q",
                "-p",
                "im-testkit",
                "--bin",
                "im-test-suite",
                "--",
            ];
            all.extend(args.iter().map(String::as_str));
            run(&all)
        }
        Task::Crash {
            runs,
            seed,
            vendor,
            args,
        } => {
            // The driver finds both children next to itself: build them first.
            build_crash_binaries()?;
            let runs = runs.to_string();
            let seed = seed.map(|s| s.to_string());
            let mut all = vec![
                "run",
                "-q",
                "-p",
                "im-testkit",
                "--bin",
                "im-crash",
                "--",
                "--runs",
                runs.as_str(),
                "--vendor",
                vendor.as_str(),
            ];
            if let Some(seed) = &seed {
                all.extend(["--seed", seed.as_str()]);
            }
            all.extend(args.iter().map(String::as_str));
            run(&all)
        }
        Task::Bench { benches, args } => {
            let started = std::time::SystemTime::now();
            let mut all = vec!["bench", "-p", "im-benches"];
            for b in &benches {
                all.extend(["--bench", b.as_str()]);
            }
            if !args.is_empty() {
                all.push("--");
                all.extend(args.iter().map(String::as_str));
            }
            run(&all)?;
            let dir = xtask::bench::criterion_dir(&project_root());
            println!("\n## Summary of this run\n");
            print!(
                "{}",
                xtask::bench::table(&xtask::bench::collect(&dir, started)?)
            );
            let figures = xtask::bench::figures(&dir, started)?;
            if !figures.is_empty() {
                println!("\n| figure | value |\n|---|---|");
                for f in figures {
                    println!("| {} | {:.3} |", f.name, f.value);
                }
            }
            Ok(())
        }
    }
}
