//! `im-test-suite`: runs the case library against a vendor target and writes the reports
//! (`cargo xtask test-suite` runs this). Exits non-zero when any case fails.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use im_testkit::cases::{Category, Target, catalogue, markdown};
use im_testkit::runner;

#[derive(Parser)]
#[command(name = "im-test-suite", about = "Run the im-layers case library")]
struct Args {
    /// Target vendor: memory or reference.
    #[arg(long, default_value = "memory")]
    vendor: String,
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
    /// Print the vendor matrix (README.md's capability table) instead of running.
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
    let Some(target) = Target::parse(&args.vendor) else {
        bail!("unknown vendor {:?} (memory, reference)", args.vendor);
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
        for c in &cases {
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
        return Ok(());
    }
    eprintln!("running {} cases against {}", cases.len(), target.name());
    let total = cases.len();
    let mut done = 0;
    let results = runner::run(
        target,
        &cases,
        args.parallel,
        Duration::from_secs(args.timeout),
        |r| {
            done += 1;
            eprintln!("[{done}/{total}] {} {:?}", r.id, r.outcome);
        },
    )
    .await;
    print!("{}", runner::table(&results));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
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
    if runner::totals(&results).failed > 0 {
        bail!("some cases failed");
    }
    Ok(())
}
