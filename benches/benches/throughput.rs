//! Throughput and latency of the whole stack on loopback (issue 22), in one run: N senders →
//! N receivers over the reference vendor (its server in process on a runtime of its own, the
//! clients over TCP through the `reference` adapter), 100-byte messages, a closed loop of K
//! messages in flight per pair (a message is in flight from the sender's call until the
//! receiving app has it; each arrival lets the pair send one more), each message counted
//! when the receiving side's app sees it. Three stacks, each on a fresh server:
//!
//! * `bare adapter`: `Vendor::send` on a `ReferenceClient`, received from the receiver's
//!   vendor push stream (`take_events`, `VendorEvent::MessagePushed`). The baseline.
//! * `ImClient + MemoryStore`: `ImClient::send` on both ends, received as
//!   `ClientEvent::Message` from `ImClient::subscribe`.
//! * `ImClient + LogStore`: the same on the default durable store, a `LogStore` per client
//!   in its own directory on the real disk; the goals are checked on this row.
//! * `ImClient + SledStore`: the same on a durable `SledStore` per client, each in its own
//!   directory on the real disk (`tempfile`, not sled's `temporary`, which is `/dev/shm` on
//!   Linux and skips sled's syncs).
//!
//! Two loads: light (10 pairs × 1 in flight) and heavy (100 pairs × 10 in flight). After a
//! warm-up of one second, messages received during the measured window (default 10 s,
//! `-- --secs S`) give msgs/s and the send → receive latency (same process, one clock)
//! percentiles. The ratios to the bare adapter of the same load are printed and written as
//! figures (`cargo xtask bench --bench throughput` prints them), with the goals:
//! ≥ 0.5× at light load, ≥ 0.3× at heavy load, p99 at light load ≤ 2 ms (reported, not
//! asserted).
//!
//! Not a criterion benchmark: criterion times repeated iterations, and a closed loop over a
//! fixed window with a latency distribution is one long iteration. What it checks rather
//! than times: every message reaches its own receiver exactly once (none unknown, none
//! twice, none missing 30 s after the window, none arriving in a quiet period after the last
//! one, none in another pair's conversation) and no send fails; any of these fails the run.

// A benchmark binary: a panic is how it reports a broken invariant.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use im_arch::{ClientEvent, ImClient, LogStore, MemoryStore, SledStore, Store, Subscription};
use im_benches::{HEAVY, LIGHT, Load};
use im_service::reference::{ReferenceClient, ReferenceConfig, ReferenceVendor};
use im_service::{
    Content, ConversationId, Credentials, EventStream, OutgoingMessage, Timestamp, UserId, Vendor,
    VendorEvent,
};
use im_vendor_sim::{ReferenceServer, ServerConfig};
use tokio::runtime::Runtime;

/// Bytes of text in every message (its sequence number, zero-padded, then filler).
const BODY: usize = 100;
/// Digits of the sequence number at the start of each body.
const SEQ_DIGITS: usize = 20;
/// Sent but not counted, before the measured window.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long after the window the last messages may take before the run fails.
const DRAIN: Duration = Duration::from_secs(30);
/// After a pair's last message: a message arriving within this is one too many.
const QUIET: Duration = Duration::from_millis(300);
/// Name of the server runtime's threads (to tell its CPU time from the load generator's).
const SERVER_THREADS: &str = "server";
/// The measured window unless `--secs` says otherwise.
const DEFAULT_SECS: f64 = 10.0;

/// The goals (reported against, not asserted).
const GOAL_LIGHT_RATIO: f64 = 0.5;
const GOAL_HEAVY_RATIO: f64 = 0.3;
const GOAL_LIGHT_P99_MS: f64 = 2.0;

/// What sits between the load generator and the vendor.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stack {
    Bare,
    Memory,
    Log,
    Sled,
}

impl Stack {
    const ALL: [Stack; 4] = [Stack::Bare, Stack::Memory, Stack::Log, Stack::Sled];

    fn label(self) -> &'static str {
        match self {
            Stack::Bare => "bare adapter",
            Stack::Memory => "ImClient + MemoryStore",
            Stack::Log => "ImClient + LogStore (durable, default)",
            Stack::Sled => "ImClient + SledStore (durable)",
        }
    }
}

/// Body of message `seq`: its number first, so the receiver knows which one it got.
fn body(seq: usize) -> String {
    let mut text = format!("{seq:0SEQ_DIGITS$}");
    text.extend(std::iter::repeat_n('x', BODY - SEQ_DIGITS));
    text
}

fn seq_of(content: &Content) -> Result<usize, String> {
    match content {
        Content::Text(text) if text.len() == BODY => text[..SEQ_DIGITS]
            .parse()
            .map_err(|e| format!("a body without its sequence number: {e}")),
        other => Err(format!("content not sent by the load generator: {other:?}")),
    }
}

type SendFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

enum Sender {
    Bare(Arc<ReferenceClient>),
    Client(Arc<ImClient>),
}

impl Sender {
    /// Sends message `seq`; done when the stack's `send` returned (the vendor's receipt for
    /// the bare adapter, queued durably for `ImClient`).
    fn send(&self, conversation: &ConversationId, seq: usize) -> SendFuture {
        let conversation = conversation.clone();
        let content = Content::text(body(seq));
        match self {
            Sender::Bare(client) => {
                let client = client.clone();
                Box::pin(async move {
                    let message =
                        OutgoingMessage::new(conversation, content, Timestamp::from_millis(0));
                    client
                        .send(&message)
                        .await
                        .map(drop)
                        .map_err(|e| format!("Vendor::send failed: {e}"))
                })
            }
            Sender::Client(client) => {
                let client = client.clone();
                Box::pin(async move {
                    client
                        .send(conversation, content)
                        .await
                        .map(drop)
                        .map_err(|e| format!("ImClient::send failed: {e}"))
                })
            }
        }
    }
}

enum Receiver {
    /// The push stream, and the client that keeps the session online.
    Bare(EventStream, ReferenceClient),
    /// The app's live subscription, and the client publishing on it.
    Client(Subscription, Arc<ImClient>),
}

impl Receiver {
    /// The next message the receiving app sees: (conversation, sequence number).
    async fn next(&mut self) -> Result<(ConversationId, usize), String> {
        loop {
            match self {
                Receiver::Bare(events, _) => match events.next().await {
                    Some(VendorEvent::MessagePushed(m)) => {
                        return Ok((m.conversation.clone(), seq_of(&m.content)?));
                    }
                    Some(e @ (VendorEvent::ConnectionLost { .. } | VendorEvent::Kicked(_))) => {
                        return Err(format!("receiver lost its session: {e:?}"));
                    }
                    Some(_) => {}
                    None => return Err("the receiver's push stream ended".into()),
                },
                Receiver::Client(events, _) => match events.next().await.as_deref() {
                    Some(ClientEvent::Message(r)) => {
                        return Ok((r.message.conversation.clone(), seq_of(&r.message.content)?));
                    }
                    Some(ClientEvent::Lagged { dropped }) => {
                        return Err(format!("the receiving app lost {dropped} events (lagged)"));
                    }
                    Some(_) => {}
                    None => return Err("the receiver's subscription ended".into()),
                },
            }
        }
    }
}

struct Pair {
    sender: Sender,
    receiver: Receiver,
    conversation: ConversationId,
}

/// The measured window, shared by every pair.
#[derive(Clone, Copy)]
struct Window {
    counted_from: Instant,
    end: Instant,
}

#[derive(Default)]
struct PairOutcome {
    /// Messages received inside the window.
    counted: u64,
    /// Their send → receive latencies.
    latencies: Vec<Duration>,
    /// Every message sent, warm-up and drain included.
    sent: usize,
}

/// The closed loop of one pair: `in_flight` messages out at any time until the window
/// ends, then every one of them in, then a quiet period with nothing more.
async fn drive(pair: &mut Pair, in_flight: usize, window: Window) -> Result<PairOutcome, String> {
    let mut out = PairOutcome::default();
    // Per message, by sequence number: when it was sent, whether it arrived.
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut seen: Vec<bool> = Vec::new();
    let mut sends = FuturesUnordered::new();
    let launch = |sent_at: &mut Vec<Instant>,
                  seen: &mut Vec<bool>,
                  sends: &mut FuturesUnordered<SendFuture>| {
        let seq = sent_at.len();
        sent_at.push(Instant::now());
        seen.push(false);
        sends.push(pair.sender.send(&pair.conversation, seq));
    };
    for _ in 0..in_flight {
        launch(&mut sent_at, &mut seen, &mut sends);
    }
    let mut outstanding = in_flight;
    let deadline = tokio::time::sleep_until((window.end + DRAIN).into());
    tokio::pin!(deadline);
    while outstanding > 0 {
        tokio::select! {
            Some(sent) = sends.next() => sent?,
            received = pair.receiver.next() => {
                let now = Instant::now();
                let (conversation, seq) = received?;
                if conversation != pair.conversation {
                    return Err(format!("a message of {conversation} reached the receiver of {}",
                        pair.conversation));
                }
                let Some(at) = sent_at.get(seq) else {
                    return Err(format!("message {seq} received but never sent"));
                };
                if std::mem::replace(&mut seen[seq], true) {
                    return Err(format!("message {seq} received twice"));
                }
                outstanding -= 1;
                if now >= window.counted_from && now < window.end {
                    out.counted += 1;
                    out.latencies.push(now - *at);
                }
                if now < window.end {
                    launch(&mut sent_at, &mut seen, &mut sends);
                    outstanding += 1;
                }
            }
            () = &mut deadline => {
                return Err(format!("{outstanding} messages still not received {DRAIN:?} after \
                    the window ended"));
            }
        }
    }
    while let Some(sent) = sends.next().await {
        sent?;
    }
    match tokio::time::timeout(QUIET, pair.receiver.next()).await {
        Err(_) => {}
        Ok(Ok((_, seq))) => return Err(format!("message {seq} arrived again after the last")),
        Ok(Err(e)) => return Err(e),
    }
    out.sent = sent_at.len();
    Ok(out)
}

/// What one stack measured under one load.
struct Measured {
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    sent: usize,
    /// CPU used during the window, in cores (1.0 = one core busy): the server's runtime,
    /// and everything else in the process (the clients and the load generator).
    server_cores: f64,
    client_cores: f64,
}

/// The clients of one run, logged in (and the receivers online); the `ImClient`s take their
/// stores from `stores`, two per pair.
async fn connect(
    server: &ReferenceServer,
    stack: Stack,
    load: Load,
    stores: &mut Vec<Arc<dyn Store>>,
) -> Result<Vec<Pair>, String> {
    let vendor = ReferenceVendor::discover(server.addr(), ReferenceConfig::default())
        .await
        .map_err(|e| format!("discover: {e}"))?;
    let mut stores = stores.drain(..);
    let mut pairs = Vec::with_capacity(load.pairs);
    for i in 0..load.pairs {
        let from: Credentials = server.vendor().register_user(&UserId::new(format!("s{i}")));
        let to: Credentials = server.vendor().register_user(&UserId::new(format!("r{i}")));
        let conversation = ConversationId::direct(&from.user, &to.user);
        let (sender, receiver) = match stack {
            Stack::Bare => {
                let sender = vendor.client();
                sender
                    .login(&from)
                    .await
                    .map_err(|e| format!("login: {e}"))?;
                let receiver = vendor.client();
                let events = receiver.take_events().ok_or("no event stream")?;
                receiver
                    .login(&to)
                    .await
                    .map_err(|e| format!("login: {e}"))?;
                receiver
                    .go_online()
                    .await
                    .map_err(|e| format!("go_online: {e}"))?;
                (
                    Sender::Bare(Arc::new(sender)),
                    Receiver::Bare(events, receiver),
                )
            }
            Stack::Memory | Stack::Log | Stack::Sled => {
                let mut client = |creds: Credentials| {
                    let store = stores.next().expect("a store per client");
                    Arc::new(
                        ImClient::builder(Arc::new(vendor.client()), creds)
                            .store(store)
                            .build(),
                    )
                };
                let sender = client(from);
                let receiver = client(to);
                // Subscribed before login, as an app does: nothing goes by unseen.
                let events = receiver.subscribe();
                sender.login().await.map_err(|e| format!("login: {e}"))?;
                receiver.login().await.map_err(|e| format!("login: {e}"))?;
                (Sender::Client(sender), Receiver::Client(events, receiver))
            }
        };
        pairs.push(Pair {
            sender,
            receiver,
            conversation,
        });
    }
    Ok(pairs)
}

/// Logs every client out (the `ImClient`s' supervisors stop) and drops them.
async fn disconnect(pairs: Vec<Pair>) {
    for pair in pairs {
        match &pair.sender {
            // Refused logouts do not matter here: the server is shut down next.
            Sender::Bare(client) => drop(client.logout().await),
            Sender::Client(client) => client.logout().await,
        }
        match &pair.receiver {
            Receiver::Bare(_, client) => drop(client.logout().await),
            Receiver::Client(_, client) => client.logout().await,
        }
    }
}

/// One stack under one load, on a fresh server.
fn measure(
    load_rt: &Runtime,
    server_rt: &Runtime,
    stack: Stack,
    load: Load,
    secs: f64,
) -> Result<Measured, String> {
    let server = server_rt
        .block_on(ReferenceServer::start(ServerConfig::default()))
        .map_err(|e| format!("server: {e}"))?;
    // Opened here, off the runtime's threads: opening a sled store is blocking I/O.
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    if stack != Stack::Bare {
        for i in 0..2 * load.pairs {
            stores.push(match stack {
                Stack::Sled => Arc::new(open_sled(&dir.path().join(format!("c{i}")))?),
                Stack::Log => Arc::new(
                    LogStore::open(dir.path().join(format!("c{i}")))
                        .map_err(|e| format!("LogStore::open: {e}"))?,
                ),
                _ => Arc::new(MemoryStore::new()),
            });
        }
    }
    let pairs = load_rt.block_on(connect(&server, stack, load, &mut stores))?;

    let start = Instant::now();
    let window = Window {
        counted_from: start + WARM_UP,
        end: start + WARM_UP + Duration::from_secs_f64(secs),
    };
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|mut pair| {
            load_rt.spawn(async move {
                let outcome = drive(&mut pair, load.in_flight, window).await;
                (pair, outcome)
            })
        })
        .collect();
    // CPU over the measured window only (setup and drain excluded).
    let (cpu_from, cpu_to) = load_rt.block_on(async {
        tokio::time::sleep_until(window.counted_from.into()).await;
        let from = cpu_time();
        tokio::time::sleep_until(window.end.into()).await;
        (from, cpu_time())
    });
    let server_cores = (cpu_to.0 - cpu_from.0).as_secs_f64() / secs;
    let client_cores = ((cpu_to.1 - cpu_from.1) - (cpu_to.0 - cpu_from.0)).as_secs_f64() / secs;
    let mut pairs = Vec::new();
    let mut outcomes = Vec::new();
    for task in tasks {
        let (pair, outcome) = load_rt
            .block_on(task)
            .map_err(|e| format!("pair task: {e}"))?;
        pairs.push(pair);
        outcomes.push(outcome);
    }
    load_rt.block_on(disconnect(pairs));
    server_rt.block_on(server.shutdown());
    drop(dir);

    let mut latencies = Vec::new();
    let mut counted = 0;
    let mut sent = 0;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome.map_err(|e| format!("pair {i}: {e}"))?;
        counted += outcome.counted;
        sent += outcome.sent;
        latencies.extend(outcome.latencies);
    }
    latencies.sort_unstable();
    Ok(Measured {
        msgs_per_s: counted as f64 / secs,
        p50_ms: im_benches::percentile_ms(&latencies, 0.50),
        p99_ms: im_benches::percentile_ms(&latencies, 0.99),
        sent,
        server_cores,
        client_cores,
    })
}

/// CPU time (user + system) used so far: (the server's runtime threads, the whole
/// process), from `/proc` (Linux; zeros elsewhere). The table was read with the
/// load generator's CPU against the server's, which this keeps apart in one process.
fn cpu_time() -> (Duration, Duration) {
    // `utime` and `stime` of a `stat` line, the 12th and 13th fields after the command
    // name's closing parenthesis; in clock ticks (100 per second on Linux).
    fn ticks(stat: &str) -> u64 {
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return 0;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(11) + field(12)
    }
    let to_time = |t: u64| Duration::from_millis(t * 10);
    let process = std::fs::read_to_string("/proc/self/stat").map_or(0, |s| ticks(&s));
    let mut server = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == SERVER_THREADS {
                server +=
                    std::fs::read_to_string(task.path().join("stat")).map_or(0, |s| ticks(&s));
            }
        }
    }
    (to_time(server), to_time(process))
}

fn open_sled(path: &Path) -> Result<SledStore, String> {
    SledStore::open(path).map_err(|e| format!("SledStore::open: {e}"))
}

/// The command line (read by `im_benches::BenchArgs`): `--secs S` (the measured window per
/// stack and load; a short one for a smoke run), `--stack bare|memory|log|sled` (repeatable:
/// only these stacks, for profiling one; ratios need `bare` too) and filters as criterion
/// takes them (`cargo xtask bench -- NAME` passes one to every benchmark binary): with any,
/// only the loads whose name `throughput light` / `throughput heavy` contains one run.
struct Args {
    secs: f64,
    stacks: Vec<Stack>,
    bench: im_benches::BenchArgs,
}

impl Args {
    fn parse() -> Args {
        let bench = im_benches::BenchArgs::parse(std::env::args().skip(1), &["--secs", "--stack"]);
        let secs = bench.value::<f64>("--secs").unwrap_or(DEFAULT_SECS);
        assert!(secs > 0.0, "--secs takes a positive number of seconds");
        let stacks = bench
            .values_of("--stack")
            .map(|name| match name {
                "bare" => Stack::Bare,
                "memory" => Stack::Memory,
                "log" => Stack::Log,
                "sled" => Stack::Sled,
                other => panic!("--stack takes bare, memory, log or sled, not {other:?}"),
            })
            .collect();
        Args {
            secs,
            stacks,
            bench,
        }
    }

    fn runs(&self, load: Load) -> bool {
        self.bench.selects(&format!("throughput {}", load.name))
    }
}

fn main() {
    let args = Args::parse();
    let secs = args.secs;
    let loads: Vec<Load> = [LIGHT, HEAVY]
        .into_iter()
        .filter(|l| args.runs(*l))
        .collect();
    if loads.is_empty() {
        println!("throughput: filtered out");
        return;
    }
    // The server on threads of its own, as it would be in its own process.
    let server_rt = im_benches::runtime(SERVER_THREADS, None);
    let load_rt = im_benches::runtime("load", None);
    println!(
        "throughput: reference vendor on loopback, {BODY}-byte messages, closed loop, \
         {WARM_UP:?} warm-up then {secs} s measured per stack and load"
    );
    let mut figures = Vec::new();
    let mut table = String::from(
        "| load | stack | msgs/s | p50 (ms) | p99 (ms) | vs bare adapter (msgs/s) | CPU server \
         | CPU clients |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut goals = Vec::new();
    for load in loads {
        let load_label = format!(
            "{} ({} pairs × {} in flight)",
            load.name, load.pairs, load.in_flight
        );
        let mut bare_rate = None;
        for stack in Stack::ALL {
            if !args.stacks.is_empty() && !args.stacks.contains(&stack) {
                continue;
            }
            let m = measure(&load_rt, &server_rt, stack, load, secs)
                .unwrap_or_else(|e| panic!("{load_label}, {}: {e}", stack.label()));
            let ratio = bare_rate.map(|bare| m.msgs_per_s / bare);
            if stack == Stack::Bare {
                bare_rate = Some(m.msgs_per_s);
            }
            // CPU per message (server and clients): what a busy machine changes least.
            let cpu_us = (m.server_cores + m.client_cores) / m.msgs_per_s * 1e6;
            println!(
                "{load_label}, {}: {:.0} msgs/s, p50 {:.3} ms, p99 {:.3} ms, CPU: server \
                 {:.0}%, clients {:.0}%, {cpu_us:.1} µs per message ({} sent, each received \
                 once)",
                stack.label(),
                m.msgs_per_s,
                m.p50_ms,
                m.p99_ms,
                m.server_cores * 100.0,
                m.client_cores * 100.0,
                m.sent
            );
            table.push_str(&format!(
                "| {load_label} | {} | {:.0} | {:.3} | {:.3} | {} | {:.0}% | {:.0}% |\n",
                stack.label(),
                m.msgs_per_s,
                m.p50_ms,
                m.p99_ms,
                ratio.map_or("(baseline)".into(), |r| format!("{r:.2}")),
                m.server_cores * 100.0,
                m.client_cores * 100.0,
            ));
            let name = format!("throughput {}, {}", load.name, stack.label());
            figures.push((format!("{name}: msgs/s"), m.msgs_per_s));
            figures.push((format!("{name}: p50 (ms)"), m.p50_ms));
            figures.push((format!("{name}: p99 (ms)"), m.p99_ms));
            figures.push((format!("{name}: CPU server (cores)"), m.server_cores));
            figures.push((format!("{name}: CPU clients (cores)"), m.client_cores));
            figures.push((format!("{name}: CPU per message (µs)"), cpu_us));
            if let Some(ratio) = ratio {
                figures.push((format!("{name}: vs bare adapter (×)"), ratio));
            }
            if stack == Stack::Log {
                let goal = if load.name == "light" {
                    GOAL_LIGHT_RATIO
                } else {
                    GOAL_HEAVY_RATIO
                };
                let r = ratio.unwrap_or(f64::NAN);
                goals.push(format!(
                    "durable store vs bare adapter at {} load ≥ {goal}: {} ({r:.2})",
                    load.name,
                    met(r >= goal)
                ));
                if load.name == "light" {
                    goals.push(format!(
                        "durable store p99 at light load ≤ {GOAL_LIGHT_P99_MS} ms: {} ({:.3} ms)",
                        met(m.p99_ms <= GOAL_LIGHT_P99_MS),
                        m.p99_ms
                    ));
                }
            }
        }
    }
    println!("\n{table}");
    for goal in &goals {
        println!("goal (issue 22): {goal}");
    }
    im_benches::write_figures("throughput", &figures).unwrap();
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "NOT met" }
}
