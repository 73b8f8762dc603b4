//! `im-sim`: runs N random schedules of the deterministic simulation (`im_testkit::sim`)
//! under one seed, prints progress and a summary line, and for a failing schedule its seed,
//! a shrunk step list and the command line that replays it. Exit code 1 on any failure.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;
use im_testkit::sim::{Sabotage, Schedule, run_schedule, schedule_seed, shrink};

/// Deterministic simulation of clients, a vendor and faults under one seed.
#[derive(Parser)]
#[command(name = "im-sim")]
struct Args {
    /// Number of schedules to run.
    #[arg(long, default_value_t = 1000)]
    schedules: u64,
    /// Base seed (default: random; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Run only the schedule with this index (a replay).
    #[arg(long)]
    schedule_index: Option<u64>,
    /// With `--schedule-index`: keep only these step indices (comma-separated, `none` for
    /// no step), as a shrunk reproduction prints them.
    #[arg(long)]
    steps: Option<String>,
    /// Print each step of a replayed schedule.
    #[arg(long)]
    verbose: bool,
    /// Do not shrink a failing schedule.
    #[arg(long)]
    no_shrink: bool,
    /// Most runs spent shrinking the first failure.
    #[arg(long, default_value_t = 300)]
    shrink_budget: usize,
    /// Print progress every this many schedules.
    #[arg(long, default_value_t = 500)]
    progress_every: u64,
    /// Put a deliberate defect in (to see the checks catch it): `crash-loses-flushed` or
    /// `app-skips-ack`.
    #[arg(long, hide = true)]
    sabotage: Option<String>,
}

fn sabotage(name: Option<&str>) -> Result<Option<Sabotage>> {
    Ok(match name {
        None => None,
        Some("crash-loses-flushed") => Some(Sabotage::CrashLosesFlushed),
        Some("app-skips-ack") => Some(Sabotage::AppSkipsAck),
        Some(other) => bail!("unknown sabotage {other:?}"),
    })
}

fn schedule(seed: u64, index: u64, sabotage: Option<Sabotage>) -> Schedule {
    let mut s = Schedule::generate(schedule_seed(seed, index));
    s.sabotage = sabotage;
    s
}

fn print_steps(s: &Schedule, keep: &[usize]) {
    for i in keep {
        if let Some(step) = s.steps.get(*i) {
            println!("  {i:>3}: {step}");
        }
    }
}

fn replay_line(seed: u64, index: u64, keep: &[usize], sabotage: Option<&str>) -> String {
    let steps: Vec<String> = keep.iter().map(usize::to_string).collect();
    let mut line = format!("cargo xtask sim --seed {seed} --schedule-index {index}");
    if steps.is_empty() {
        line.push_str(" --steps none");
    } else {
        line.push_str(&format!(" --steps {}", steps.join(",")));
    }
    if let Some(s) = sabotage {
        line.push_str(&format!(" --sabotage {s}"));
    }
    line
}

fn main() -> Result<ExitCode> {
    let args = Args::parse();
    let sab = sabotage(args.sabotage.as_deref())?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let started = Instant::now();

    if let Some(index) = args.schedule_index {
        let full = schedule(seed, index, sab);
        let keep: Vec<usize> = match args.steps.as_deref() {
            Some("none") | Some("") => Vec::new(),
            Some(list) => {
                let mut keep = Vec::new();
                for part in list.split(',') {
                    match part.trim().parse::<usize>() {
                        Ok(i) if i < full.steps.len() => keep.push(i),
                        _ => bail!("--steps: {part:?} is not a step index of this schedule"),
                    }
                }
                keep
            }
            None => (0..full.steps.len()).collect(),
        };
        let s = full.with_steps(&keep);
        println!(
            "sim: replaying schedule {index} of seed {seed} (schedule seed {}): {} users, \
             conversations {:?}, {} of {} steps",
            full.seed,
            full.users,
            full.conversations,
            keep.len(),
            full.steps.len()
        );
        if args.verbose {
            print_steps(&full, &keep);
        }
        let outcome = run_schedule(&s);
        for v in &outcome.violations {
            println!("  {v}");
        }
        println!(
            "sim: 1 schedules, {} failures, seed {seed}, {:.1} s ({} confirmed sends, {} \
             deliveries, {} crashes, {:.0} s virtual, fingerprint {:016x})",
            usize::from(!outcome.passed()),
            started.elapsed().as_secs_f64(),
            outcome.confirmed,
            outcome.delivered,
            outcome.crashes,
            outcome.virtual_time.as_secs_f64(),
            outcome.fingerprint
        );
        return Ok(if outcome.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    eprintln!("sim: {} schedules, seed {seed}", args.schedules);
    let mut failures: Vec<u64> = Vec::new();
    let (mut confirmed, mut delivered, mut crashes) = (0usize, 0usize, 0usize);
    for index in 0..args.schedules {
        let s = schedule(seed, index, sab);
        let outcome = run_schedule(&s);
        confirmed += outcome.confirmed;
        delivered += outcome.delivered;
        crashes += outcome.crashes;
        if !outcome.passed() {
            println!(
                "sim: schedule {index} FAILED (seed {seed}, schedule seed {}, {} users, \
                 conversations {:?}, {} steps):",
                s.seed,
                s.users,
                s.conversations,
                s.steps.len()
            );
            for v in outcome.violations.iter().take(20) {
                println!("  {v}");
            }
            if failures.is_empty() && !args.no_shrink {
                let keep = shrink(&s, |c| !run_schedule(c).passed(), args.shrink_budget);
                println!(
                    "sim: shrunk to {} of {} steps (then the final phase: faults off, {}, \
                     drain, check):",
                    keep.len(),
                    s.steps.len(),
                    if s.final_messages {
                        "one message per member and conversation"
                    } else {
                        "every connection dropped once"
                    }
                );
                print_steps(&s, &keep);
                let again = run_schedule(&s.with_steps(&keep));
                for v in again.violations.iter().take(10) {
                    println!("  {v}");
                }
                println!(
                    "sim: replay: {}",
                    replay_line(seed, index, &keep, args.sabotage.as_deref())
                );
            } else {
                println!(
                    "sim: replay: {}",
                    replay_line(
                        seed,
                        index,
                        &(0..s.steps.len()).collect::<Vec<_>>(),
                        args.sabotage.as_deref()
                    )
                );
            }
            failures.push(index);
        }
        let done = index + 1;
        if args.progress_every > 0 && done % args.progress_every == 0 && done < args.schedules {
            eprintln!(
                "sim: {done}/{} schedules, {} failures, {:.1} s",
                args.schedules,
                failures.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    if !failures.is_empty() {
        let shown: Vec<String> = failures.iter().take(20).map(u64::to_string).collect();
        println!("sim: failing schedule indices: {}", shown.join(", "));
    }
    println!(
        "sim: {} schedules, {} failures, seed {seed}, {:.1} s ({confirmed} confirmed sends, \
         {delivered} deliveries, {crashes} crashes)",
        args.schedules,
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
