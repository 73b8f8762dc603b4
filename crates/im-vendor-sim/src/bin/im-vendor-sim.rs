//! `im-vendor-sim`: the reference vendor as a standalone server, with accounts from flags
//! or a file and every fault settable from the command line; with `--control`, driven
//! line by line from stdin (drop every connection, count and time login attempts), as the
//! reconnect-storm test and `im-storm` do. The message lifecycle's rules (recall window,
//! edit window, who may edit) and several devices per user are flags too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use im_service::memory::{MemoryVendorConfig, VendorOp};
use im_service::{EditPermission, LifecyclePolicy, ServiceError, Token, UserId};
use im_vendor_sim::{CallbackConfig, Faults, ReferenceServer, ServerConfig};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "im-vendor-sim",
    about = "Reference IM vendor with fault injection"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// An account as `user:token` (repeatable).
    #[arg(long = "user")]
    users: Vec<String>,
    /// A file with one `user:token` per line (`#` starts a comment line).
    #[arg(long)]
    users_file: Option<PathBuf>,
    /// Token lifetime in seconds for accounts from flags or file (default: never expires).
    #[arg(long)]
    token_ttl_secs: Option<u64>,
    /// History retention in days (0 = keep forever).
    #[arg(long, default_value_t = 7)]
    retention_days: u64,
    /// Largest message content in bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    max_message_bytes: usize,
    /// Close connections silent for this many seconds.
    #[arg(long, default_value_t = 60)]
    idle_timeout_secs: u64,
    /// Maximum simultaneous connections.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Close a connection that has not logged in this many seconds after it was accepted.
    #[arg(long, default_value_t = 10)]
    login_timeout_secs: u64,
    /// Most connections waiting to log in at once (a newcomer past it closes the oldest).
    #[arg(long, default_value_t = 4096)]
    max_unauthenticated: usize,
    /// Most messages kept in memory (0 = no cap, only the retention); past it the oldest
    /// go, as if their retention had ended.
    #[arg(long, default_value_t = 500_000)]
    max_stored_messages: usize,
    /// Several devices per user: a second login of a user does not kick the first, and a
    /// send from one device reaches the user's other online devices (declares MultiDevice
    /// instead of KickOnSecondLogin).
    #[arg(long)]
    multi_device: bool,
    /// How long after sending a message its sender may recall it, in seconds (0 = no
    /// limit).
    #[arg(long, default_value_t = 120)]
    recall_window_secs: u64,
    /// How long after sending a message it may be edited, in seconds (0 = no limit).
    #[arg(long, default_value_t = 0)]
    edit_window_secs: u64,
    /// Who may edit a message: its sender only, or any member of the conversation.
    #[arg(long, value_enum, default_value_t = EditBy::Sender)]
    edit_by: EditBy,
    /// Seed for the fault generators.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fault: close each connection after it sent N frames.
    #[arg(long)]
    drop_after_frames: Option<u64>,
    /// Fault: probability of dropping the connection at each frame.
    #[arg(long, default_value_t = 0.0)]
    drop_probability: f64,
    /// Fault: delay each frame by this many milliseconds.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Fault: probability of pushing a message twice.
    #[arg(long, default_value_t = 0.0)]
    duplicate_pushes: f64,
    /// Fault: swap consecutive pushes.
    #[arg(long)]
    reorder_pushes: bool,
    /// Fault: never answer heartbeats.
    #[arg(long)]
    ignore_heartbeats: bool,
    /// Fault: fail the next COUNT requests of OP with an error of CLASS, as
    /// `OP:COUNT:CLASS` (OP: login, send, pull-offline, ack-offline, go-online, pull-history,
    /// ping, change (recall, edit, delete for me), mark-read, pull-changes, send-after (a pipelined send); CLASS: transient,
    /// rate-limited, permanent). Repeatable.
    #[arg(long)]
    fail_next: Vec<String>,
    /// Fault: full outage of this many seconds, starting this many seconds after start
    /// (`START:LENGTH`).
    #[arg(long)]
    outage: Option<String>,
    /// POST signed callbacks of every stored message to this URL.
    #[arg(long)]
    callback_url: Option<String>,
    /// Secret for callback signatures (required with --callback-url).
    #[arg(long, env = "IM_CALLBACK_SECRET")]
    callback_secret: Option<String>,
    /// Read commands from stdin, one per line, each answered with one line on stdout:
    /// `drop-all` (break every connection; answers `dropped UNIX_MS`), `record-logins`
    /// (start timing login requests; `recording`), `logins` (the recorded ones since the
    /// last call: `logins N USER=UNIX_MS …`), `stats` (`stats open=N accepted=N logins=N`),
    /// `quit`. The server stops when stdin closes.
    #[arg(long)]
    control: bool,
}

/// `--edit-by`: who may edit a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EditBy {
    /// Only its sender.
    Sender,
    /// Any member of the conversation.
    Any,
}

/// The lifecycle rules the flags describe (0 seconds: no window).
fn lifecycle_policy(args: &Args) -> LifecyclePolicy {
    let window = |secs: u64| (secs > 0).then(|| Duration::from_secs(secs));
    LifecyclePolicy {
        recall_window: window(args.recall_window_secs),
        edit_window: window(args.edit_window_secs),
        edit_permission: match args.edit_by {
            EditBy::Sender => EditPermission::Sender,
            EditBy::Any => EditPermission::AnyMember,
        },
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms(t: std::time::SystemTime) -> u128 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The answer to one `--control` command; `None` for `quit`.
fn control(server: &ReferenceServer, command: &str) -> Option<String> {
    Some(match command.trim() {
        "drop-all" => {
            server.drop_all_connections();
            format!("dropped {}", unix_ms(std::time::SystemTime::now()))
        }
        "record-logins" => {
            server.record_logins();
            "recording".into()
        }
        "logins" => {
            let logins = server.take_logins();
            let mut line = format!("logins {}", logins.len());
            for l in &logins {
                line.push_str(&format!(" {}={}", l.user, unix_ms(l.at)));
            }
            line
        }
        "stats" => format!(
            "stats open={} accepted={} logins={}",
            server.connections(),
            server.accepted_connections(),
            server.login_attempts()
        ),
        "quit" => return None,
        other => format!("error unknown command {other:?}"),
    })
}

/// Serves `--control` commands from stdin until `quit` or the end of stdin.
async fn control_loop(server: &ReferenceServer) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Blocking reads on a thread of their own (tokio's stdin would need another feature).
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        match control(server, &line) {
            Some(answer) => println!("{answer}"),
            None => return,
        }
    }
}

fn parse_fail_next(spec: &str) -> Result<(VendorOp, u32, ServiceError)> {
    let mut parts = spec.split(':');
    let (Some(op), Some(count), Some(class), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("--fail-next takes OP:COUNT:CLASS, got {spec:?}");
    };
    let op = match op {
        "login" => VendorOp::Login,
        "send" => VendorOp::Send,
        "pull-offline" => VendorOp::PullOffline,
        "ack-offline" => VendorOp::AckOffline,
        "go-online" => VendorOp::GoOnline,
        "pull-history" => VendorOp::PullHistory,
        "ping" => VendorOp::Ping,
        "change" => VendorOp::Change,
        "mark-read" => VendorOp::MarkRead,
        "pull-changes" => VendorOp::PullChanges,
        "send-after" => VendorOp::SendAfter,
        other => bail!("unknown operation {other:?}"),
    };
    let error = match class {
        "transient" => ServiceError::Server {
            code: 503,
            message: "injected transient failure".into(),
        },
        "rate-limited" => ServiceError::RateLimited {
            retry_after: Duration::from_secs(1),
        },
        "permanent" => ServiceError::InvalidRequest("injected permanent failure".into()),
        other => bail!("unknown error class {other:?}"),
    };
    Ok((op, count.parse().context("COUNT")?, error))
}

fn parse_account(line: &str) -> Result<(UserId, Token)> {
    let (user, token) = line
        .trim()
        .split_once(':')
        .with_context(|| format!("expected user:token, got {line:?}"))?;
    if user.is_empty() || token.is_empty() {
        bail!("empty user or token in {line:?}");
    }
    Ok((UserId::new(user), Token::new(token)))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // stdout carries the one machine-readable line (the bound address); logs go to stderr.
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let lifecycle = lifecycle_policy(&args);
    let faults = Faults {
        drop_after_frames: args.drop_after_frames,
        drop_probability: args.drop_probability,
        frame_delay: args.delay_ms.map(Duration::from_millis),
        duplicate_push_probability: args.duplicate_pushes,
        reorder_pushes: args.reorder_pushes,
        ignore_heartbeats: args.ignore_heartbeats,
        ..Faults::none()
    };
    let callbacks = match (args.callback_url, args.callback_secret) {
        (Some(url), Some(secret)) => Some(CallbackConfig::new(url, secret.into_bytes())),
        (Some(_), None) => bail!("--callback-url needs --callback-secret (or IM_CALLBACK_SECRET)"),
        _ => None,
    };
    let config = ServerConfig {
        listen: args.listen,
        vendor: MemoryVendorConfig {
            retention: (args.retention_days > 0)
                .then(|| Duration::from_secs(args.retention_days * 86_400)),
            max_message_bytes: args.max_message_bytes,
            multi_device: args.multi_device,
            lifecycle,
            max_stored_messages: (args.max_stored_messages > 0).then_some(args.max_stored_messages),
            ..MemoryVendorConfig::default()
        },
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        max_connections: args.max_connections,
        login_timeout: Duration::from_secs(args.login_timeout_secs),
        max_unauthenticated: args.max_unauthenticated,
        callbacks,
        faults,
        seed: args.seed,
        ..ServerConfig::default()
    };
    let mut accounts = Vec::new();
    for u in &args.users {
        accounts.push(parse_account(u)?);
    }
    if let Some(path) = &args.users_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for line in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            accounts.push(parse_account(line)?);
        }
    }
    let server = ReferenceServer::start(config)
        .await
        .context("starting the server")?;
    for spec in &args.fail_next {
        let (op, count, error) = parse_fail_next(spec)?;
        server.fail_next(op, count, error);
    }
    let ttl = args.token_ttl_secs.map(Duration::from_secs);
    for (user, token) in &accounts {
        server.vendor().register_user(user);
        server
            .vendor()
            .insert_token(user, token, ttl)
            .with_context(|| format!("account {user}"))?;
    }
    println!(
        "im-vendor-sim listening on {} with {} account(s)",
        server.addr(),
        accounts.len()
    );
    if let Some(spec) = args.outage {
        let (start, len) = spec
            .split_once(':')
            .context("--outage takes START:LENGTH in seconds")?;
        let (start, len): (u64, u64) = (start.parse()?, len.parse()?);
        tokio::time::sleep(Duration::from_secs(start)).await;
        tracing::warn!(seconds = len, "injected outage");
        server.outage(Duration::from_secs(len));
    }
    if args.control {
        tokio::select! {
            stop = tokio::signal::ctrl_c() => stop.context("waiting for ctrl-c")?,
            () = control_loop(&server) => {}
        }
    } else {
        tokio::signal::ctrl_c()
            .await
            .context("waiting for ctrl-c")?;
    }
    println!("shutting down");
    server.shutdown().await;
    Ok(())
}
