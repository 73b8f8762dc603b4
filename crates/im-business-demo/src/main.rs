//! `cargo run -p im-business-demo`: a customer-service chat among tenants and housekeepers,
//! run end to end on a rented IM vendor (by default the reference vendor in process, with
//! the company archive fed by its callbacks; `--vendor xmpp --addr HOST:PORT` a real XMPP
//! server, see `wiring.rs`), through a scripted working day with a vendor outage, shown in
//! the terminal as it happens. `--json` prints a machine-readable summary;
//! the exit code is 0 only when every check of the summary holds. `--dashboard` serves QC's
//! live dashboard page while the day plays (and after it, until Ctrl-C).

mod business_time;
mod day;
mod desk;
mod desk_runtime;
mod panel;
mod wiring;

use std::net::SocketAddr;

use anyhow::Result;
use clap::Parser;
use im_service::UserId;

/// Command-line flags of the demo.
#[derive(Debug, Parser)]
#[command(about = "im-layers demo: tenants and housekeepers chat through a rented IM vendor")]
struct Args {
    /// The vendor to rent.
    #[arg(long, value_enum, default_value_t = wiring::VendorChoice::Reference)]
    vendor: wiring::VendorChoice,
    /// Where the embedded reference vendor listens (default: a free port on 127.0.0.1), or
    /// the XMPP server's client port (`--vendor xmpp`).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// The server's domain of the accounts: the XMPP domain (default `im.test`) or the
    /// Matrix server name (default `localhost`), as the test servers of `tests/` use.
    #[arg(long)]
    domain: Option<String>,
    /// The Matrix homeserver's URL (`--vendor matrix`).
    #[arg(long)]
    url: Option<String>,
    /// The server's admin command that creates an account, run as `CMD USER PASSWORD` (or
    /// with `{user}`, `{password}`, `{domain}` in CMD replaced). Default for XMPP:
    /// `$IM_DEMO_REGISTER`, else `bash tests/prosody/prosody.sh register` of this source tree.
    #[arg(long, value_name = "CMD")]
    register_with: Option<String>,
    /// Number of tenants (housekeepers: one per three tenants, at least one).
    #[arg(long, default_value_t = 6)]
    users: usize,
    /// Pace of the script: pauses between steps are 300 ms divided by this.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Seed of the scripted day.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// You are the first housekeeper: type your answers (Enter sends the quick reply).
    #[arg(long)]
    interactive: bool,
    /// Print only a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// Serve QC's live dashboard (and `/metrics`) on ADDR while the day plays, default
    /// 127.0.0.1 on a free port; its address is printed on stderr. After the day it stays
    /// up, showing how the day ended, until Ctrl-C.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
    dashboard: Option<SocketAddr>,
    /// The bearer token the dashboard requires (open it as `http://ADDR/#token=TOKEN`).
    #[arg(
        long,
        env = "IM_QC_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    dashboard_token: Option<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let tenants = args.users.max(1);
    let housekeepers = tenants.div_ceil(3).max(1);
    let prefix = args.vendor.account_prefix();
    let options = desk_runtime::DayOptions {
        tenants,
        housekeepers,
        prefix,
        seed: args.seed,
        speed: args.speed,
        live: !args.json,
        interactive: args.interactive,
        dashboard: args.dashboard.map(|addr| desk_runtime::DashboardOptions {
            addr,
            token: args.dashboard_token.clone(),
        }),
    };
    let users: Vec<UserId> = options
        .tenant_ids()
        .into_iter()
        .chain(options.housekeeper_ids())
        .collect();
    let target = wiring::Target {
        addr: args.addr,
        domain: args.domain,
        url: args.url,
        register_with: args.register_with,
    };
    let env = wiring::Environment::start(args.vendor, &target, &users).await?;
    let (summary, dashboard) = desk_runtime::run(env, options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    if let Some(server) = dashboard {
        eprintln!("the day is over; the dashboard stays up until Ctrl-C");
        until_stopped().await;
        server.shutdown().await;
    }
    if !summary.ok {
        anyhow::bail!("the run's checks did not hold (see the summary)");
    }
    Ok(())
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM.
async fn until_stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

fn print_summary(s: &desk_runtime::Summary) {
    println!("\n=== summary ===");
    println!(
        "messages: {} sent, {} received, {} missing, {} duplicates",
        s.messages_sent, s.messages_received, s.missing, s.duplicates
    );
    println!(
        "outage: detected {} (after {} ms), alert fired {}, resolved {} (after {} ms)",
        s.outage.detected,
        s.outage.detected_after_ms.unwrap_or(0),
        s.outage.alert_fired,
        s.outage.resolved,
        s.outage.resolved_after_ms.unwrap_or(0)
    );
    println!(
        "response rate: measured {} , script {:.1}% ({} of {} questions answered in time, {} escalations)",
        s.measured_response_rate
            .map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0)),
        s.expected_response_rate * 100.0,
        s.expected_answered_in_time,
        s.questions,
        s.escalations
    );
    println!(
        "recalls: {} wrong replies recalled ({} in the script), {} reached the tenant once, {} shown as recalled",
        s.recalls.done,
        s.recalls.expected,
        s.recalls.reached_tenant_once,
        s.recalls.shown_as_recalled
    );
    println!(
        "seen: {} replies read by tenants, {} reported seen once {:?}",
        s.seen.replies_read, s.seen.reported_once, s.seen.by_housekeeper
    );
    let d = &s.two_devices;
    println!(
        "two devices ({}): {} sent from the phone ({} shown once on the desk), {} from the desk ({} shown once on the phone), {} reads synced of {}",
        d.housekeeper.as_deref().unwrap_or("-"),
        d.replies_from_second,
        d.shown_once_on_first,
        d.replies_from_first,
        d.shown_once_on_second,
        d.reads_synced,
        d.reads
    );
    if let Some(a) = s.archived {
        println!("company archive: {a} messages kept");
    }
    println!("business time: {}", s.business_time);
    println!("outage injected by: {}", s.outage.method);
    if let Some(p) = &s.outage.proxy {
        println!(
            "fault proxy: {} connections dropped, {} refused while down",
            p.dropped, p.refused
        );
    }
    for n in &s.not_applicable {
        println!("check {}: not applicable ({})", n.check, n.reason);
    }
    println!("alerts fired: {:?}", s.alerts_fired);
    println!("all checks: {}", if s.ok { "ok" } else { "FAILED" });
}
