//! `cargo xtask`: the project's task runner (layer check, CI gates, benchmarks, crash soak).

use std::process::Command;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use xtask::{build_crash_binaries, cargo, project_root, run_cargo, run_sim, testkit_bin};

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
    /// Everything CI gates on, in order, each step timed: toolchain and `rust-version`, fmt,
    /// clippy, docs, `im-service` per adapter feature, layers (and
    /// `../shared/tools/check-layers` if present), tests with the crash harness summary, the
    /// simulation (2,000), the case library per vendor with its JUnit reports checked, and
    /// README.md's examples against the servers they need (xmpp parts need $IM_PROSODY_ADDR;
    /// `.ci/run` starts Prosody and calls this).
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
    /// Mutation testing over the delivery-rule modules of im-arch: cargo-mutants (installed
    /// if missing; results and survivors in `target/mutants/mutants.out/`), or with
    /// `--curated` the hand-written mutations in `xtask/mutations/`, each of which must fail
    /// the named tests it lists (run in a worktree of HEAD: commit first).
    Mutants {
        /// Run the curated patches instead of cargo-mutants.
        #[arg(long)]
        curated: bool,
        /// With `--curated`: only patches whose name contains this.
        #[arg(long, default_value = "")]
        filter: String,
        /// Only these delivery modules (file stems: sequencer, client, durable, send_queue,
        /// retry, conversations, history, bus); all when none.
        #[arg(long = "module")]
        modules: Vec<String>,
        /// With `--curated`: seconds before one command counts as a hang.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Arguments passed to cargo-mutants (e.g. `--shard 1/4`, `--list`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the deterministic simulation (`im-sim`, debug build): N random schedules of
    /// clients, a vendor and faults under one seed, each ledger-checked; a failure prints
    /// its seed, a shrunk step list and the replay command.
    Sim {
        /// Number of schedules.
        #[arg(long, default_value_t = 1000)]
        schedules: u64,
        /// Base seed (default: random, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Replay only this schedule of the seed.
        #[arg(long)]
        schedule_index: Option<u64>,
        /// With `--schedule-index`: keep only these steps (comma-separated, or `none`).
        #[arg(long)]
        steps: Option<String>,
        /// Further `im-sim` flags (--verbose, --no-shrink, --progress-every N).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the decoder fuzz targets (wire frames both ways, webhook callbacks, XMPP stanzas,
    /// store entries of im-arch and im-archive, the archive's HTTP API) for N minutes in
    /// total, debug build (overflow checks on), fresh seeds; prints per target the inputs
    /// tried and failures.
    /// A failure prints its seed and minimal input (replay: `IM_FUZZ_SEED=<seed> cargo
    /// test -p <crate> --test <file>`).
    Fuzz {
        /// Minutes over all targets together (split evenly between them; build time not
        /// counted).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
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
    run_cargo(args, &[])
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Layers => xtask::layers::run(),
        Task::Ci => xtask::ci::run(),
        Task::TestSuite { args } => {
            // The CRASH cases run `im-crash-client` and `im-vendor-sim` found beside the
            // suite's binary: build them first.
            build_crash_binaries()?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&testkit_bin("im-test-suite", &args))
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
            let mut all = vec!["--runs", runs.as_str(), "--vendor", vendor.as_str()];
            if let Some(seed) = &seed {
                all.extend(["--seed", seed.as_str()]);
            }
            all.extend(args.iter().map(String::as_str));
            run(&testkit_bin("im-crash", &all))
        }
        Task::Mutants {
            curated,
            filter,
            modules,
            timeout,
            args,
        } => {
            if curated {
                xtask::mutants::run_curated(
                    &project_root(),
                    &filter,
                    std::time::Duration::from_secs(timeout),
                )
            } else {
                xtask::mutants::run_cargo_mutants(&project_root(), &modules, &args)
            }
        }
        Task::Sim {
            schedules,
            seed,
            schedule_index,
            steps,
            args,
        } => {
            let schedules = schedules.to_string();
            let seed = seed.map(|s| s.to_string());
            let index = schedule_index.map(|i| i.to_string());
            let mut all = vec!["--schedules", schedules.as_str()];
            if let Some(seed) = &seed {
                all.extend(["--seed", seed.as_str()]);
            }
            if let Some(index) = &index {
                all.extend(["--schedule-index", index.as_str()]);
            }
            if let Some(steps) = &steps {
                all.extend(["--steps", steps.as_str()]);
            }
            all.extend(args.iter().map(String::as_str));
            run_sim(&all)
        }
        Task::Fuzz { minutes } => {
            use std::io::BufRead;
            // (crate, test file, features): one test binary per crate with outside input.
            let binaries = [
                ("im-service", "fuzz_decoders", "reference,webhook,xmpp"),
                ("im-arch", "fuzz_store", ""),
                ("im-archive", "fuzz_callbacks", ""),
            ];
            let base = |package: &'static str, test: &'static str, features: &'static str| {
                // Debug build on purpose: overflow checks stay on (two of the panics the
                // targets found were overflows), and it shares `cargo test`'s build.
                let mut args = vec!["test", "-q", "-p", package, "--test", test];
                if !features.is_empty() {
                    args.extend(["--features", features]);
                }
                args
            };
            // Build first, then count the targets (`fuzz_*` tests) to split the time.
            let mut targets = 0usize;
            for (package, test, features) in binaries {
                let mut list = base(package, test, features);
                list.extend(["--", "--list"]);
                eprintln!("$ cargo {}", list.join(" "));
                let out = Command::new(cargo())
                    .args(&list)
                    .current_dir(project_root())
                    .stderr(std::process::Stdio::inherit())
                    .output()?;
                if !out.status.success() {
                    bail!("cargo {} failed ({})", list.join(" "), out.status);
                }
                targets += String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.starts_with("fuzz_") && l.ends_with(": test"))
                    .count();
            }
            if targets == 0 {
                bail!("no fuzz targets found");
            }
            let per_target = minutes.max(0.0) * 60.0 / targets as f64;
            println!("fuzz: {targets} targets, {per_target:.1} s each ({minutes} min in total)");
            let started = std::time::Instant::now();
            let mut rows: Vec<(String, u64, u64)> = Vec::new();
            let mut failed = Vec::new();
            for (package, test, features) in binaries {
                let mut args = base(package, test, features);
                args.extend(["--", "--nocapture", "--test-threads=1"]);
                eprintln!("$ IM_FUZZ_SECONDS={per_target:.1} cargo {}", args.join(" "));
                let mut child = Command::new(cargo())
                    .args(&args)
                    .env("IM_FUZZ_SECONDS", format!("{per_target:.3}"))
                    .env_remove("IM_FUZZ_SEED")
                    .current_dir(project_root())
                    .stdout(std::process::Stdio::piped())
                    .spawn()?;
                if let Some(out) = child.stdout.take() {
                    for line in std::io::BufReader::new(out).lines() {
                        let line = line?;
                        println!("{line}");
                        // "fuzz target NAME: I inputs, F failures in T s"
                        // (`-q` prints a test's dot in front of the line.)
                        let counts = line
                            .split_once("fuzz target ")
                            .map(|(_, r)| r)
                            .filter(|r| r.contains(" inputs, "));
                        if let Some(rest) = counts {
                            let mut words = rest.split_whitespace();
                            let name = words.next().unwrap_or("?").trim_end_matches(':');
                            let inputs = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                            let failures = words.nth(1).and_then(|w| w.parse().ok()).unwrap_or(0);
                            rows.push((name.to_string(), inputs, failures));
                        }
                    }
                }
                if !child.wait()?.success() {
                    failed.push(format!("{package}/{test}"));
                }
            }
            println!("\n| fuzz target | inputs | failures |\n|---|---:|---:|");
            for (name, inputs, failures) in &rows {
                println!("| {name} | {inputs} | {failures} |");
            }
            let total: u64 = rows.iter().map(|r| r.1).sum();
            println!(
                "fuzz: {total} inputs over {} targets in {:.0} s; {} binaries failed",
                rows.len(),
                started.elapsed().as_secs_f64(),
                failed.len()
            );
            if !failed.is_empty() {
                bail!("fuzz targets failed in {}", failed.join(", "));
            }
            Ok(())
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
