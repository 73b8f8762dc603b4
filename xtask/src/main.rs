//! `cargo xtask`: the project's task runner (layer check, CI gates, benchmarks).

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
