//! `im-storm`: memory figures of many idle connected clients against one `im-vendor-sim`
//! process — the client process's resident memory per `ImClient` and the server process's
//! per connection (RSS deltas from `/proc`), optionally followed by a reconnect storm of the
//! whole fleet (every connection dropped at once; the spread of the reconnects and the time
//! until all are online again).
//!
//! ```sh
//! cargo run --release -p im-testkit --bin im-storm -- --clients 10000
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use im_arch::{Backoff, ClientConfig, ImClient, Jitter};
use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::{Credentials, Vendor};
use im_testkit::{VendorSimControl, vendor_sim_bin};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "im-storm",
    about = "Idle-connection memory figures (and an optional reconnect storm) against one im-vendor-sim"
)]
struct Args {
    /// Idle connected clients.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Measure bare reference-adapter connections (a logged-in `ReferenceClient` each)
    /// instead of full `ImClient`s.
    #[arg(long)]
    adapter_only: bool,
    /// Seconds to let the fleet idle before the measurement.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Logins started at once while connecting the fleet.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// After the measurement, drop every connection at once and report the reconnects
    /// (full jitter; ceiling of the first delay `--base-ms`, cap `--cap-ms`).
    #[arg(long)]
    storm: bool,
    /// Ceiling of the first reconnect delay, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    base_ms: u64,
    /// Backoff cap, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    cap_ms: u64,
    /// The `im-vendor-sim` binary (default: `$IM_VENDOR_SIM_BIN`, else built through cargo
    /// when run by cargo, else next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

/// Resident memory of a process in KiB, from `/proc/<pid>/status` (`self` for this one).
fn rss_kib(pid: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// What keeps a connected client alive: a full client or a bare adapter connection.
enum Idle {
    Client(ImClient),
    Adapter(im_service::reference::ReferenceClient),
}

fn credentials(i: usize) -> Credentials {
    Credentials::new(format!("u{i}"), format!("secret-{i}"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let n = args.clients;
    if let Some(limit) = open_files_limit()
        && limit < n as u64 + 200
    {
        bail!("open-file limit {limit} is too low for {n} connections: raise it (ulimit -n)");
    }
    let server_bin = match args.server_bin.clone() {
        Some(p) => p,
        None => vendor_sim_bin()?,
    };
    let dir = std::env::temp_dir().join(format!("im-storm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let users_file = dir.join("users.txt");
    let mut accounts = String::new();
    for i in 0..n {
        accounts.push_str(&format!("u{i}:secret-{i}\n"));
    }
    std::fs::write(&users_file, accounts)?;
    let mut sim = VendorSimControl::start(
        &server_bin,
        &users_file,
        n + 100,
        Duration::from_secs(3600),
        Stdio::inherit(),
    )
    .await?;
    let pid = sim.pid().context("server pid")?.to_string();
    let vendor = ReferenceVendor::discover(sim.addr(), ReferenceConfig::default()).await?;
    let config = ClientConfig {
        reconnect: Backoff {
            base: Duration::from_millis(args.base_ms),
            max: Duration::from_millis(args.cap_ms),
            jitter: Jitter::Full,
        },
        ..ClientConfig::default()
    };

    // Baselines: the server with its accounts and no connection; this process with its
    // runtime and no client.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server_before = rss_kib(&pid)?;
    let client_before = rss_kib("self")?;
    let started = Instant::now();
    let mut fleet: Vec<Arc<Idle>> = Vec::with_capacity(n);
    for chunk_start in (0..n).step_by(args.concurrency.max(1)) {
        let chunk_end = (chunk_start + args.concurrency.max(1)).min(n);
        let mut logins = Vec::new();
        for i in chunk_start..chunk_end {
            let idle = if args.adapter_only {
                Idle::Adapter(vendor.client())
            } else {
                Idle::Client(
                    ImClient::builder(Arc::new(vendor.client()), credentials(i))
                        .config(config.clone())
                        .build(),
                )
            };
            let idle = Arc::new(idle);
            fleet.push(idle.clone());
            logins.push(async move {
                match &*idle {
                    Idle::Client(c) => c.login().await.map_err(|e| anyhow::anyhow!("u{i}: {e}")),
                    Idle::Adapter(a) => a
                        .login(&credentials(i))
                        .await
                        .map(|_| ())
                        .map_err(|e| anyhow::anyhow!("u{i}: {e}")),
                }
            });
        }
        for r in futures::future::join_all(logins).await {
            r?;
        }
    }
    let connect_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let stats = sim.stats().await?;
    let server_after = rss_kib(&pid)?;
    let client_after = rss_kib("self")?;
    let per_client = (client_after.saturating_sub(client_before)) as f64 * 1024.0 / n as f64;
    let per_conn = (server_after.saturating_sub(server_before)) as f64 * 1024.0 / n as f64;
    let what = if args.adapter_only {
        "bare reference-adapter connections"
    } else {
        "ImClients (MemoryStore, default config)"
    };
    println!(
        "{n} idle {what} connected in {:.1} s; server says: {stats:?}",
        connect_time.as_secs_f64()
    );
    println!("| process | RSS before | RSS with {n} idle | per client / connection |");
    println!("|---|---|---|---|");
    println!(
        "| client (this process) | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
        mib(client_before),
        mib(client_after),
        per_client / 1024.0
    );
    println!(
        "| server (im-vendor-sim) | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
        mib(server_before),
        mib(server_after),
        per_conn / 1024.0
    );

    if args.storm {
        let clients: Vec<&ImClient> = fleet
            .iter()
            .filter_map(|i| match &**i {
                Idle::Client(c) => Some(c),
                Idle::Adapter(_) => None,
            })
            .collect();
        if clients.is_empty() {
            bail!("--storm needs ImClients (drop --adapter-only)");
        }
        storm(&mut sim, &clients).await?;
    }

    for idle in &fleet {
        if let Idle::Client(c) = &**idle {
            c.logout().await;
        }
    }
    sim.kill().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Drops every connection and reports when each client tried again and when all were
/// online again.
async fn storm(sim: &mut VendorSimControl, clients: &[&ImClient]) -> Result<()> {
    let ms_of = |t: SystemTime| -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    sim.record_logins().await?;
    let dropped = ms_of(sim.drop_all().await?);
    let started = Instant::now();
    // Wait until every client has left Online and come back (overall deadline 120 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut first: HashMap<String, u64> = HashMap::new();
    while first.len() < clients.len() {
        for (user, at) in sim.logins().await? {
            first.entry(user).or_insert(ms_of(at));
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "only {} of {} clients tried to reconnect within 120 s",
                first.len(),
                clients.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then until each is Online again or has stopped for good (a kick, …), same deadline.
    let mut stopped: Vec<(usize, im_arch::ConnectionState)> = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let mut watch = c.watch_state();
        loop {
            let now = watch.borrow_and_update().clone();
            if now == im_arch::ConnectionState::Online {
                break;
            }
            if now.is_terminal() {
                stopped.push((i, now));
                break;
            }
            match tokio::time::timeout_at(deadline, watch.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("client {i} gone"),
                Err(_) => bail!("client {i} not online again within 120 s: {now:?}"),
            }
        }
    }
    let all_online = started.elapsed();
    let mut offsets: Vec<u64> = first
        .values()
        .map(|ms| ms.saturating_sub(dropped))
        .collect();
    offsets.sort_unstable();
    let n = offsets.len();
    let pct = |p: usize| offsets[(n * p / 100).min(n - 1)];
    let mut buckets: HashMap<u64, usize> = HashMap::new();
    for o in &offsets {
        *buckets.entry(o / 100).or_default() += 1;
    }
    let fullest = buckets.values().copied().max().unwrap_or(0);
    println!(
        "storm: {n} clients dropped at once; first attempt after the drop p1 {} ms, p50 {} ms, p99 {} ms, last {} ms; fullest 100 ms bucket {fullest} ({:.1} %); all settled (online or stopped) {:.1} s after the drop",
        pct(1),
        pct(50),
        pct(99),
        offsets[n - 1],
        100.0 * fullest as f64 / n as f64,
        all_online.as_secs_f64()
    );
    if !stopped.is_empty() {
        bail!(
            "{} of {} clients stopped for good instead of reconnecting; first few {:?}",
            stopped.len(),
            clients.len(),
            &stopped[..stopped.len().min(5)]
        );
    }
    Ok(())
}
