//! `im-crash`: runs one crash-harness campaign (`im_testkit::crash`) and prints its summary
//! line; `cargo xtask crash --runs N` builds and runs it. Finds `im-crash-client` next to
//! its own executable and `im-vendor-sim` through `im_testkit::vendor_sim_bin`. Exits
//! non-zero, naming the seed, on failure.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use im_testkit::crash::{
    Account, CrashConfig, CrashStoreKind, check_work_dir, run_campaign, seed_from_env,
};
use im_testkit::harness::{XMPP_DOMAIN, prosody_addr, prosody_running, register_xmpp_user};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Log,
    Sled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VendorKind {
    Reference,
    Xmpp,
}

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "im-crash",
    about = "Kill a client with SIGKILL at seeded points and check that nothing is lost or duplicated"
)]
struct Args {
    /// Kill points (SIGKILLs) before the final run.
    #[arg(long, default_value_t = 200)]
    runs: u32,
    /// Seed (default: $IM_CRASH_SEED, else random).
    #[arg(long)]
    seed: Option<u64>,
    /// The vendor: im-vendor-sim (started here) or the Prosody at --addr.
    #[arg(long, value_enum, default_value = "reference")]
    vendor: VendorKind,
    /// Prosody's address (default: $IM_PROSODY_ADDR, else 127.0.0.1:5222).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Most messages queued over the campaign (default: 40 per kill point; xmpp: 10).
    #[arg(long)]
    messages: Option<u64>,
    /// The sender's largest pause between sends, in milliseconds.
    #[arg(long)]
    pace_ms: Option<u64>,
    /// The clients' durable store.
    #[arg(long, value_enum, default_value = "log")]
    store: StoreKind,
    /// Keep the work directory (stores, ledgers, logs) after a success too.
    #[arg(long)]
    keep: bool,
    /// Only check the ledgers of a kept work directory again (with --sender-user).
    #[arg(long, requires = "sender_user")]
    check: Option<PathBuf>,
    /// The sender's account in the directory given to --check.
    #[arg(long)]
    sender_user: Option<String>,
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let path = exe
        .parent()
        .context("executable without a directory")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first (`cargo build -p im-testkit --bins`)",
            path.display()
        );
    }
    Ok(path)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let (Some(dir), Some(user)) = (&args.check, &args.sender_user) {
        let verdict = check_work_dir(dir, user).map_err(anyhow::Error::msg)?;
        println!("{verdict}");
        if !verdict.passed() {
            std::process::exit(1);
        }
        return Ok(());
    }
    let seed = args.seed.unwrap_or_else(seed_from_env);
    let client = sibling("im-crash-client")?;
    let mut config = match args.vendor {
        VendorKind::Reference => {
            CrashConfig::reference(im_testkit::vendor_sim_bin()?, client, args.runs, seed)
        }
        VendorKind::Xmpp => {
            let addr = args.addr.unwrap_or_else(prosody_addr);
            if args.addr.is_none() && !prosody_running() {
                bail!("no Prosody at {addr}: run `tests/prosody/prosody.sh start`");
            }
            let suffix = format!("{:08x}", rand::random::<u32>());
            let sender = Account::new(format!("crash-a-{suffix}"), format!("pw-a-{suffix}"));
            let receiver = Account::new(format!("crash-b-{suffix}"), format!("pw-b-{suffix}"));
            for a in [&sender, &receiver] {
                register_xmpp_user(&a.user, &a.token, None)
                    .await
                    .map_err(anyhow::Error::msg)?;
            }
            CrashConfig::xmpp(addr, XMPP_DOMAIN, sender, receiver, client, args.runs, seed)
        }
    };
    if let Some(m) = args.messages {
        config.max_messages = m;
    }
    if let Some(p) = args.pace_ms {
        config.sender_pace_ms = p;
    }
    config.store = match args.store {
        StoreKind::Log => CrashStoreKind::Log,
        StoreKind::Sled => CrashStoreKind::Sled,
    };
    config.keep_work_dir = args.keep;
    config.verbose = true;
    eprintln!(
        "crash harness ({}, {} store): {} kill points, seed {seed}, work dir {}",
        config.vendor.name(),
        config.store.name(),
        config.kill_points,
        config.work_dir.display()
    );
    let result = tokio::task::spawn_blocking(move || run_campaign(&config)).await?;
    match result {
        Ok(summary) => {
            println!("{summary}");
            println!("  kills by phase: {}", summary.kills_line());
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
