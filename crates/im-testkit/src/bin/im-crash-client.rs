//! `im-crash-client`: one incarnation of a crash-harness client (`im_testkit::crash`), made
//! to be killed with SIGKILL at any moment and started again on the same store.
//!
//! Roles:
//! * `sender`: queues `--count` messages `TAG:I` (I from `--start`) with `ImClient::send`,
//!   appending `attempt` before and `confirmed` after each `Ok` to its ledger; then idles.
//!   In a seeded half of the runs it starts queuing while `login()` is still running, so
//!   confirmed messages wait in the outbox, kept only by the store.
//!   On `finish` (a line on stdin) it stops sending and waits until the outbox is empty
//!   (`outbox-empty`, exit 0) or lists what is stuck (exit 3).
//! * `receiver`: opens the durable subscription before logging in, then appends each batch's
//!   events, `acking P`, calls `ack(P)`, and appends `acked P`. On `stop` it logs out (exit 0).
//! * `audit`: lists every message the vendor stored in the conversation with the peer (raw
//!   vendor history, logged in as `--user`), one `stored` line each.
//!
//! Ledger lines are single `O_APPEND` writes, which survive SIGKILL. Phase markers
//! (`phase WORD …`) on stdout let the driver aim its kills. A closed stdin (the driver died)
//! ends the process.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use im_arch::{ClientConfig, ImClient, LogStore, SendStatus, SledStore, Store};
use im_service::matrix::{MatrixConfig, MatrixVendor};
use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::xmpp::{XmppConfig, XmppVendor};
use im_service::{
    Content, ConversationId, Credentials, HistoryQuery, Origin, Token, UserId, Vendor,
};
use im_testkit::crash::{ReceiverEntry, SUBSCRIPTION, SenderEntry, VendorEntry};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VendorKind {
    Reference,
    Xmpp,
    Matrix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Log,
    Sled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Sender,
    Receiver,
    Audit,
}

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(name = "im-crash-client", about = "A crash-harness client incarnation")]
struct Args {
    /// Which vendor adapter.
    #[arg(long, value_enum)]
    vendor: VendorKind,
    /// The vendor's address.
    #[arg(long)]
    addr: SocketAddr,
    /// XMPP domain (Matrix: the server name).
    #[arg(long, default_value = "im.test")]
    domain: String,
    /// This client's account.
    #[arg(long)]
    user: String,
    /// Its token (XMPP: password).
    #[arg(long)]
    token: String,
    /// The other side of the direct conversation.
    #[arg(long)]
    peer: String,
    /// The store directory (kept across incarnations).
    #[arg(long)]
    store: PathBuf,
    /// Which durable store keeps it.
    #[arg(long, value_enum, default_value = "log")]
    store_kind: StoreKind,
    /// What this client does.
    #[arg(long, value_enum)]
    role: Role,
    /// The ledger file (appended to).
    #[arg(long)]
    ledger: PathBuf,
    /// This incarnation's tag (unique in the campaign).
    #[arg(long, default_value = "t")]
    tag: String,
    /// Seed of this incarnation's random choices (pacing, batch sizes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sender: number of the first message.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Sender: messages to queue.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Sender: largest pause between sends, in milliseconds.
    #[arg(long, default_value_t = 4)]
    pace_ms: u64,
    /// Receiver: largest batch asked of `next_batch`.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Sender: how long the final drain may take, in seconds.
    #[arg(long, default_value_t = 60)]
    drain_secs: u64,
}

/// The append-only ledger: one `write` per line, no buffering, no flush.
struct Ledger(std::fs::File);

impl Ledger {
    fn open(path: &PathBuf) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self(file))
    }

    fn write(&mut self, entry: impl std::fmt::Display) -> Result<()> {
        let line = format!("{entry}\n");
        self.0.write_all(line.as_bytes()).context("ledger write")
    }
}

/// A phase marker for the driver.
fn phase(text: std::fmt::Arguments<'_>) {
    println!("phase {text}");
}

fn text_of(content: &Content) -> String {
    match content {
        Content::Text(t) => t.clone(),
        Content::Custom { type_tag, .. } => format!("<custom:{type_tag}>"),
        Content::Recalled { .. } => "<recalled>".to_string(),
    }
}

fn origin_name(o: Origin) -> &'static str {
    match o {
        Origin::Online => "online",
        Origin::Offline => "offline",
        Origin::History => "history",
    }
}

async fn vendor(args: &Args) -> Result<Arc<dyn Vendor>> {
    Ok(match args.vendor {
        VendorKind::Reference => {
            let v = ReferenceVendor::discover(args.addr, ReferenceConfig::default())
                .await
                .context("reaching the reference vendor")?;
            Arc::new(v.client())
        }
        VendorKind::Xmpp => {
            Arc::new(XmppVendor::new(XmppConfig::new(args.addr, &args.domain)).client())
        }
        VendorKind::Matrix => {
            let config = MatrixConfig::new(format!("http://{}", args.addr), &args.domain);
            Arc::new(MatrixVendor::new(config).client())
        }
    })
}

fn credentials(args: &Args) -> Credentials {
    Credentials {
        user: UserId::new(&args.user),
        token: Token::new(&args.token),
    }
}

/// Reads commands from stdin (on a thread: blocking reads); a closed stdin (the driver is
/// gone) ends the process.
fn commands() -> watch::Receiver<String> {
    let (tx, rx) = watch::channel(String::new());
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.trim().to_string());
        }
        eprintln!("im-crash-client: stdin closed, exiting");
        std::process::exit(4);
    });
    rx
}

async fn client(args: &Args) -> Result<ImClient> {
    phase(format_args!("open"));
    let store: Arc<dyn Store> = match args.store_kind {
        StoreKind::Log => Arc::new(LogStore::open(&args.store).context("opening the store")?),
        StoreKind::Sled => Arc::new(SledStore::open(&args.store).context("opening the store")?),
    };
    Ok(ImClient::builder(vendor(args).await?, credentials(args))
        .store(store)
        .config(ClientConfig::default())
        .build())
}

/// Queues messages `--start..--start + --count`, stopping early on `finish`.
async fn send_all(
    args: &Args,
    client: &ImClient,
    ledger: &mut Ledger,
    rng: &mut StdRng,
    commands: &watch::Receiver<String>,
) -> Result<()> {
    let conversation = ConversationId::direct(&UserId::new(&args.user), &UserId::new(&args.peer));
    for i in args.start..args.start + args.count {
        if commands.borrow().as_str() == "finish" {
            break;
        }
        let content = format!("{}:{i}", args.tag);
        ledger.write(SenderEntry::Attempt(content.clone()))?;
        phase(format_args!("send {i}"));
        client
            .send(conversation.clone(), Content::text(content.clone()))
            .await
            .with_context(|| format!("send {content}"))?;
        ledger.write(SenderEntry::Confirmed(content))?;
        phase(format_args!("confirmed {i}"));
        let pause = rng.random_range(0..=args.pace_ms);
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
    Ok(())
}

async fn sender(args: Args) -> Result<()> {
    let mut ledger = Ledger::open(&args.ledger)?;
    ledger.write(SenderEntry::Start {
        tag: args.tag.clone(),
    })?;
    let mut commands = commands();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let client = client(&args).await?;
    // In a seeded half of the runs the app queues while the client is still logging in (as
    // apps do): those messages wait in the outbox, where only the store keeps them.
    let early = rng.random_bool(0.5);
    phase(format_args!("login"));
    let login = async {
        let r = client.login().await.context("login");
        phase(format_args!("online"));
        r
    };
    if early {
        let (logged_in, sent) = tokio::join!(
            login,
            send_all(&args, &client, &mut ledger, &mut rng, &commands)
        );
        logged_in?;
        sent?;
    } else {
        login.await?;
        send_all(&args, &client, &mut ledger, &mut rng, &commands).await?;
    }
    phase(format_args!("sent-all"));
    while commands.borrow_and_update().as_str() != "finish" {
        commands.changed().await.context("command channel")?;
    }
    phase(format_args!("draining"));
    let deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    loop {
        let outbox = client.outbox().await.context("reading the outbox")?;
        if outbox.is_empty() {
            ledger.write(SenderEntry::OutboxEmpty)?;
            phase(format_args!("drained"));
            client.logout().await;
            return Ok(());
        }
        // A failed item never leaves by itself: it is stuck at once.
        let failed = outbox
            .iter()
            .any(|i| matches!(i.status, SendStatus::Failed { .. }));
        if failed || Instant::now() >= deadline {
            for item in &outbox {
                ledger.write(SenderEntry::Stuck {
                    content: text_of(&item.message.content),
                    status: format!("{:?} after {} attempt(s)", item.status, item.attempts),
                })?;
            }
            phase(format_args!("stuck {}", outbox.len()));
            std::process::exit(3);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn receiver(args: Args) -> Result<()> {
    let mut ledger = Ledger::open(&args.ledger)?;
    let mut commands = commands();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let client = client(&args).await?;
    // Before login: the offline messages of this login are journaled for it too.
    let mut sub = client
        .durable_subscription(SUBSCRIPTION)
        .await
        .context("opening the durable subscription")?;
    ledger.write(ReceiverEntry::Open {
        tag: args.tag.clone(),
        acked: sub.acked(),
    })?;
    phase(format_args!("login"));
    client.login().await.context("login")?;
    phase(format_args!("online"));
    loop {
        let max = rng.random_range(1..=args.max_batch.max(1));
        let batch = tokio::select! {
            biased;
            _ = async {
                while commands.borrow_and_update().as_str() != "stop" {
                    if commands.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            } => break,
            batch = sub.next_batch(max) => batch.context("next_batch")?,
        };
        let Some(last) = batch.last().map(|e| e.position) else {
            bail!("next_batch returned an empty batch");
        };
        let first = batch.first().map_or(last, |e| e.position);
        for e in &batch {
            ledger.write(ReceiverEntry::Event {
                position: e.position,
                origin: origin_name(e.origin).into(),
                sender: e.message.sender.to_string(),
                content: text_of(&e.message.content),
            })?;
        }
        phase(format_args!("batch {first} {last}"));
        // The app "processes" the batch: a window for kills between the events and the ack.
        let work = rng.random_range(0..=3);
        if work > 0 {
            tokio::time::sleep(Duration::from_millis(work)).await;
        }
        ledger.write(ReceiverEntry::Acking(last))?;
        phase(format_args!("ack {last}"));
        sub.ack(last).await.context("ack")?;
        ledger.write(ReceiverEntry::Acked(last))?;
        phase(format_args!("acked {last}"));
    }
    ledger.write(ReceiverEntry::Stopped { acked: sub.acked() })?;
    phase(format_args!("stopped {}", sub.acked()));
    client.logout().await;
    Ok(())
}

async fn audit(args: Args) -> Result<()> {
    let mut ledger = Ledger::open(&args.ledger)?;
    let vendor = vendor(&args).await?;
    vendor.login(&credentials(&args)).await.context("login")?;
    let conversation = ConversationId::direct(&UserId::new(&args.user), &UserId::new(&args.peer));
    let limit = vendor.capabilities().history_page_max.clamp(1, 100);
    let mut cursor = None;
    let mut n = 0usize;
    loop {
        let query = HistoryQuery::latest(conversation.clone(), limit).after_cursor(cursor);
        let page = vendor
            .pull_history(&query)
            .await
            .context("pulling history")?;
        for m in &page.messages {
            ledger.write(VendorEntry {
                server_id: m.server_id.to_string(),
                sender: m.sender.to_string(),
                content: text_of(&m.content),
            })?;
            n += 1;
        }
        match page.next {
            Some(next) if !page.messages.is_empty() => cursor = Some(next),
            _ => break,
        }
    }
    let _ = vendor.logout().await;
    println!("audit {n} message(s)");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    match args.role {
        Role::Sender => sender(args).await,
        Role::Receiver => receiver(args).await,
        Role::Audit => audit(args).await,
    }
}
