//! `im-test-suite`: runs the case library against a vendor target and writes the reports
//! (`cargo xtask test-suite` runs this). Exits non-zero when any case fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use im_testkit::cases::{Case, Category, Target, catalogue, markdown};
use im_testkit::runner;
use im_testkit::vendor_matrix::{self, TargetRun};

#[derive(Parser)]
#[command(name = "im-test-suite", about = "Run the im-layers case library")]
struct Args {
    /// Target vendor (memory, reference, xmpp, ...), or `all`: every target that is up, in
    /// turn, then the vendor matrix.
    #[arg(long, default_value = "memory")]
    vendor: String,
    /// With `--vendor all`: where the vendor matrix goes.
    #[arg(long, default_value = "docs/vendor-matrix.md")]
    matrix: PathBuf,
    /// essential, extended or all.
    #[arg(long, default_value = "all")]
    category: String,
    /// Only cases whose id or title contains this (case-insensitive).
    #[arg(long)]
    filter: Option<String>,
    /// Print the catalogue instead of running.
    #[arg(long)]
    list: bool,
    /// With --list: print the Markdown catalogue (docs/test-cases.md).
    #[arg(long)]
    markdown: bool,
    /// Print the declared part of the vendor matrix (capabilities and lifecycle rules per
    /// adapter) instead of running.
    #[arg(long)]
    vendor_matrix: bool,
    /// Cases run at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Seconds a case may take.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Where reports go.
    #[arg(long, default_value = "target/test-suite")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.vendor_matrix {
        print!("{}", im_testkit::vendor_matrix::markdown());
        return Ok(());
    }
    if args.list && args.markdown {
        print!("{}", markdown());
        return Ok(());
    }
    let targets: Vec<Target> = if args.vendor == "all" {
        Target::ALL.to_vec()
    } else {
        match Target::parse(&args.vendor) {
            Some(t) => vec![t],
            None => bail!(
                "unknown vendor {:?} (all, {})",
                args.vendor,
                Target::ALL.map(|t| t.name()).join(", ")
            ),
        }
    };
    let category = match args.category.as_str() {
        "essential" => Some(Category::Essential),
        "extended" => Some(Category::Extended),
        "all" => None,
        other => bail!("unknown category {other:?} (essential, extended, all)"),
    };
    let filter = args.filter.as_ref().map(|f| f.to_lowercase());
    let cases: Vec<_> = catalogue()
        .into_iter()
        .filter(|c| category.is_none_or(|k| c.category == k))
        .filter(|c| {
            filter.as_ref().is_none_or(|f| {
                c.id.to_lowercase().contains(f) || c.title.to_lowercase().contains(f)
            })
        })
        .collect();
    if args.list {
        for target in &targets {
            list(*target, &cases);
        }
        return Ok(());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut runs = Vec::new();
    let mut failed = Vec::new();
    for target in targets {
        if let Err(why) = target.up() {
            if target.required() || args.vendor != "all" {
                bail!("{} is not up: {why}", target.name());
            }
            eprintln!("{}: not run ({why})", target.name());
            runs.push((target, TargetRun::NotUp(why)));
            continue;
        }
        let results = run(target, &cases, &args).await?;
        if runner::totals(&results).failed > 0 {
            failed.push(target.name());
        }
        runs.push((target, TargetRun::Ran(results)));
    }
    if args.vendor == "all" {
        let text = vendor_matrix::document(Path::new("."), &runs)
            .context("reading the adapters' sources (run from the repository root)")?;
        std::fs::write(&args.matrix, text)
            .with_context(|| format!("writing {}", args.matrix.display()))?;
        eprintln!("vendor matrix: {}", args.matrix.display());
    }
    if !failed.is_empty() {
        bail!("some cases failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Prints the catalogue with what `target` lacks for each case.
fn list(target: Target, cases: &[Case]) {
    for c in cases {
        let missing = c.missing(target);
        println!(
            "{:<10} {:<10?} {:<8?} {}{}",
            c.id,
            c.category,
            c.layer,
            c.title,
            if missing.is_empty() {
                String::new()
            } else {
                format!("  (n/a on {}: needs {missing:?})", target.name())
            }
        );
    }
}

/// Runs `cases` on `target`, prints the table and writes the reports.
async fn run(target: Target, cases: &[Case], args: &Args) -> Result<Vec<runner::CaseResult>> {
    // On stdout: `cargo xtask ci` splits a run of several targets at these lines.
    println!("== cases on {}", target.name());
    eprintln!("running {} cases against {}", cases.len(), target.name());
    let total = cases.len();
    let mut done = 0;
    let results = runner::run(
        target,
        cases,
        args.parallel,
        Duration::from_secs(args.timeout),
        |r| {
            done += 1;
            eprintln!("[{done}/{total}] {} {:?}", r.id, r.outcome);
        },
    )
    .await;
    print!("{}", runner::table(&results));
    let stem = format!("cases-{}", target.name());
    std::fs::write(
        args.out.join(format!("{stem}.xml")),
        runner::junit(target, &results),
    )?;
    std::fs::write(
        args.out.join(format!("{stem}.html")),
        runner::html(target, &results),
    )?;
    eprintln!("reports: {}/{stem}.xml, .html", args.out.display());
    Ok(results)
}
