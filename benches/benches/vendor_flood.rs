//! The reference vendor under a wrong-password flood and under idle sockets (issue 22,
//! acceptance 4), in one run. The server (`ReferenceServer`, default `ServerConfig`) runs in
//! process on a tokio runtime of its own, with 200,000 offline messages queued for 1,000
//! users who are not the pair. Two chats run through the whole run, over the `reference`
//! adapter as `throughput`'s bare stack (`Vendor::send`, received from the push stream),
//! on a runtime of their own: a closed loop of one message in flight (as fast as the
//! machine lets it), and a chat at an app's pace (one message every 5 ms, 200 msgs/s, about
//! the pair). The attacker has a runtime of one thread (as another machine would).
//!
//! 1. **baseline**: `--secs` seconds (default 3) with nothing else going on;
//! 2. three floods of 10,000 wrong-password logins from raw sockets (the wire protocol
//!    spoken directly: `HelloV2`, `Login`, read the answer), 64 at a time:
//!    * **control**: against a second, empty server the chats do not use (what any flood
//!      costs them on this machine's cores: the attacker's and the kernel's TCP work);
//!    * **many peers**: against the chats' server, each attempt from one of 500 loopback
//!      addresses (127.1.x.y, 20 attempts each, within the per-peer throttle's burst) and
//!      under a name of its own (the 1,000 neighbours' names, then unknown names), so every
//!      attempt reaches the credential check;
//!    * **one peer**: from 127.0.0.1 over the 1,000 real names (the throttles answer most).
//!
//!    Each flood is cut into 10 chunks, each followed by as long a quiet span; the chats'
//!    rates while flooded over their rates while quiet are the ratios (the goal:
//!    ≥ 0.8), so the other processes of a shared machine weigh on both sides alike;
//! 3. **idle sockets**: 10,000 TCP connections that never say a word (from 100 loopback
//!    addresses; as many as the open-file limit allows, raised with `prlimit` up to the
//!    hard limit), then a new login through the adapter, timed.
//!
//! Printed and written as figures for `cargo xtask bench --bench vendor_flood`: the rates,
//! p50/p99/max latencies, CPU of the server, chat and attacker threads, and how the
//! attempts were answered (`AuthFailed`, `RateLimited`, closed …). Checked, not timed:
//! the chats lose nothing (every message received once, in order, in its own conversation)
//! and no flood attempt is accepted; either fails the run.

// A benchmark binary: a panic is how it reports a broken invariant.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use im_benches::load::reference::RawReference;
use im_benches::load::{LoadError, Payload};
use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::{
    Content, ConversationId, Credentials, OutgoingMessage, ServiceError, Timestamp, Token, UserId,
    Vendor, VendorEvent,
};
use im_vendor_sim::{ReferenceServer, ServerConfig};

/// Offline messages queued before the run, over [`HOLDERS`] users.
const QUEUED: usize = 200_000;
const HOLDERS: usize = 1_000;
/// Login attempts of each flood, and how many run at once.
const ATTEMPTS: usize = 10_000;
const FLOOD_CONCURRENCY: usize = 64;
/// Distinct source addresses of the many-peers flood (attempts per address = 20, the
/// per-peer throttle's default burst).
const FLOOD_PEERS: usize = 500;
/// Idle unauthenticated sockets, and the source addresses they come from.
const IDLE: usize = 10_000;
const IDLE_PEERS: usize = 100;
/// The goal for the pair's rate under a flood.
const GOAL_RATIO: f64 = 0.8;
const DEFAULT_SECS: f64 = 3.0;
/// Spans each flood is cut into.
const CHUNKS: usize = 10;
/// The paced chat's interval.
const PACE: Duration = Duration::from_millis(5);
/// Pause between phases, outside every window.
const GAP: Duration = Duration::from_millis(500);

/// A loopback address of its own for peer `n` (127.1.0.0/16 and up, away from 127.0.0.1).
fn peer_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (n / 250 / 250) as u8,
        (n / 250 % 250) as u8,
        (n % 250 + 1) as u8,
    ))
}

/// What the pair received: (arrival, latency), in order.
type Arrivals = Arc<Mutex<Vec<(Instant, Duration)>>>;

/// The chatting pair: a closed loop of one message in flight until `stop`, every message
/// checked received once in its own conversation. Returns how many were sent.
async fn chat(
    vendor: ReferenceVendor,
    from: Credentials,
    to: Credentials,
    epoch: Instant,
    arrivals: Arrivals,
    stop: Arc<AtomicBool>,
    pace: Option<Duration>,
) -> Result<u64, String> {
    let sender = vendor.client();
    sender
        .login(&from)
        .await
        .map_err(|e| format!("pair login: {e}"))?;
    let receiver = Arc::new(vendor.client());
    let mut events = receiver.take_events().ok_or("no event stream")?;
    receiver
        .login(&to)
        .await
        .map_err(|e| format!("pair login: {e}"))?;
    receiver
        .go_online()
        .await
        .map_err(|e| format!("go_online: {e}"))?;
    // The receiver only receives: it pings as an app does (the server closes a connection
    // that says nothing for its idle timeout, 60 s).
    let pinger = tokio::spawn({
        let receiver = receiver.clone();
        let stop = stop.clone();
        async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(5)).await;
                receiver
                    .ping()
                    .await
                    .map_err(|e| format!("the receiver's ping: {e}"))?;
            }
            Ok::<(), String>(())
        }
    });
    let conversation = ConversationId::direct(&from.user, &to.user);
    let mut seq = 0u64;
    loop {
        let text = Payload::now(seq, epoch).encode();
        let message = OutgoingMessage::new(
            conversation.clone(),
            Content::text(text),
            Timestamp::from_millis(0),
        );
        sender
            .send(&message)
            .await
            .map_err(|e| format!("pair send {seq}: {e}"))?;
        let received = loop {
            let event = tokio::time::timeout(Duration::from_secs(30), events.next())
                .await
                .map_err(|_| format!("message {seq} not received within 30 s"))?;
            match event {
                Some(VendorEvent::MessagePushed(m)) => break m,
                Some(e @ (VendorEvent::ConnectionLost { .. } | VendorEvent::Kicked(_))) => {
                    return Err(format!("the pair's receiver lost its session: {e:?}"));
                }
                Some(_) => {}
                None => return Err("the pair's push stream ended".into()),
            }
        };
        if received.conversation != conversation {
            return Err(format!(
                "a message of {} reached the pair",
                received.conversation
            ));
        }
        let Content::Text(text) = &received.content else {
            return Err("content the pair did not send".into());
        };
        let payload = Payload::decode(text.as_bytes()).map_err(|e| e.to_string())?;
        if payload.seq != seq {
            return Err(format!("expected message {seq}, received {}", payload.seq));
        }
        arrivals
            .lock()
            .unwrap()
            .push((Instant::now(), payload.latency(epoch)));
        seq += 1;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(pace) = pace {
            tokio::time::sleep_until((epoch + pace * seq as u32).into()).await;
        }
    }
    pinger.await.map_err(|e| format!("pinger: {e}"))??;
    drop(sender.logout().await);
    drop(receiver.logout().await);
    Ok(seq)
}

/// The pair's rate and latency over `[from, to)`.
struct WindowStats {
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn window(arrivals: &Arrivals, from: Instant, to: Instant) -> WindowStats {
    windows(arrivals, &[(from, to)])
}

/// The pair's rate and latency over several spans taken together.
fn windows(arrivals: &Arrivals, spans: &[(Instant, Instant)]) -> WindowStats {
    let mut lat: Vec<Duration> = arrivals
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| spans.iter().any(|(from, to)| at >= from && at < to))
        .map(|(_, l)| *l)
        .collect();
    let secs: f64 = spans.iter().map(|(f, t)| (*t - *f).as_secs_f64()).sum();
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
        }
    };
    WindowStats {
        msgs_per_s: lat.len() as f64 / secs,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    }
}

/// How the server answered one flood attempt.
fn outcome(result: Result<(), LoadError>) -> String {
    match result {
        Ok(()) => "ACCEPTED".into(),
        Err(LoadError::Reference(ServiceError::AuthFailed(_))) => "AuthFailed".into(),
        Err(LoadError::Reference(ServiceError::RateLimited { .. })) => "RateLimited".into(),
        Err(LoadError::Reference(e)) => format!("refused: {}", variant(&e)),
        Err(LoadError::Fatal(e)) => format!("closed with Fatal({})", variant(&e)),
        Err(LoadError::Closed(_)) => "closed without an answer".into(),
        Err(LoadError::Io(e)) => format!("I/O error ({:?})", e.kind()),
        Err(e) => format!("other: {e}"),
    }
}

fn variant(e: &ServiceError) -> String {
    format!("{e:?}")
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or("")
        .to_string()
}

/// One wrong-password login over a raw socket.
async fn attempt(addr: SocketAddr, source: Option<IpAddr>, user: String) -> Result<(), LoadError> {
    let mut conn = RawReference::connect(addr, source).await?;
    conn.login(&Credentials {
        user: UserId::new(user),
        token: Token::new("wrong-password"),
    })
    .await
    .map(drop)
}

/// Runs the attempts numbered `attempts`, [`FLOOD_CONCURRENCY`] at a time; `who(i)` says where attempt
/// `i` comes from and which name it tries. Returns the answers counted by kind.
async fn flood(
    addr: SocketAddr,
    who: Arc<dyn Fn(usize) -> (Option<IpAddr>, String) + Send + Sync>,
    attempts: std::ops::Range<usize>,
) -> BTreeMap<String, usize> {
    let next = Arc::new(AtomicUsize::new(attempts.start));
    let end = attempts.end;
    let tasks: Vec<_> = (0..FLOOD_CONCURRENCY)
        .map(|_| {
            let next = next.clone();
            let who = who.clone();
            tokio::spawn(async move {
                let mut counts = BTreeMap::<String, usize>::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        return counts;
                    }
                    let (source, user) = who(i);
                    *counts
                        .entry(outcome(attempt(addr, source, user).await))
                        .or_default() += 1;
                }
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for task in tasks {
        for (k, v) in task.await.unwrap() {
            *counts.entry(k).or_default() += v;
        }
    }
    counts
}

/// Raises this process's soft open-file limit towards `want` (at most the hard limit) with
/// `prlimit` (util-linux; the workspace forbids the `unsafe` a direct `setrlimit` needs).
/// Returns the soft limit in force afterwards, as `/proc/self/limits` reads it.
fn raise_fd_limit(want: u64) -> Option<u64> {
    // (soft, hard); "unlimited" reads as u64::MAX.
    let read = || {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let mut n = line
            .split_whitespace()
            .skip(3)
            .map(|n| n.parse::<u64>().unwrap_or(u64::MAX));
        Some((n.next()?, n.next()?))
    };
    let (soft, hard) = read()?;
    let target = want.min(hard);
    if soft < target {
        let status = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={target}:"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            println!(
                "vendor_flood: could not raise the open-file limit from {soft} to {target} (prlimit)"
            );
        }
    }
    read().map(|(soft, _)| soft)
}

/// CPU time (user + system) used so far by the threads named `name` (Linux `/proc`; zero
/// elsewhere).
fn cpu_of(name: &str) -> Duration {
    // `utime` and `stime`: the 12th and 13th fields after the command's closing parenthesis,
    // in clock ticks (100 a second on Linux).
    let ticks = |stat: &str| -> u64 {
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return 0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let at = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        at(11) + at(12)
    };
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == name {
                total += std::fs::read_to_string(task.path().join("stat")).map_or(0, |s| ticks(&s));
            }
        }
    }
    Duration::from_millis(total * 10)
}

/// CPU of the server's, the pair's and the attacker's threads.
#[derive(Clone, Copy)]
struct Cpu([Duration; 3]);

impl Cpu {
    fn now() -> Self {
        Cpu([cpu_of("server"), cpu_of("pair"), cpu_of("attacker")])
    }

    /// Cores used since `earlier` over `secs`: "server 85%, pair 40%, attacker 95%".
    fn since(&self, earlier: Cpu, secs: f64) -> String {
        let pct = |i: usize| (self.0[i] - earlier.0[i]).as_secs_f64() / secs * 100.0;
        format!(
            "CPU: server {:.0}%, pair {:.0}%, attacker {:.0}%",
            pct(0),
            pct(1),
            pct(2)
        )
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `--secs S` (the pair's baseline window, default 3 s); `None` when criterion-style
/// filters leave this benchmark out.
fn parse_args() -> Option<f64> {
    let args = im_benches::BenchArgs::parse(std::env::args().skip(1), &["--secs"]);
    let secs = args.value::<f64>("--secs").unwrap_or(DEFAULT_SECS).max(0.1);
    args.selects("vendor_flood").then_some(secs)
}

fn main() {
    let Some(secs) = parse_args() else {
        println!("vendor_flood: filtered out");
        return;
    };
    // The idle sockets need a descriptor each here, and the server up to its unauthenticated
    // share (4,096) more; the pair, the floods' sockets closing, and the runtime some more.
    let fd_limit = raise_fd_limit(65_536);
    let idle_target = fd_limit.map_or(IDLE, |n| IDLE.min(n.saturating_sub(6_000) as usize));
    if idle_target < IDLE {
        println!(
            "vendor_flood: the open-file limit ({fd_limit:?}) leaves room for {idle_target} idle \
             sockets, not {IDLE}"
        );
    }
    // Three runtimes, as three machines would be (on this one's cores): the server, the
    // pair's clients, and the attacker on one thread (it cannot take both cores from the
    // others by scheduling alone).
    let server_rt = im_benches::runtime("server", Some(2));
    let load_rt = im_benches::runtime("pair", Some(2));
    let attacker_rt = im_benches::runtime("attacker", Some(1));
    println!(
        "vendor_flood: load average {} at start, open-file limit {fd_limit:?}",
        load_average()
    );
    let server = server_rt
        .block_on(ReferenceServer::start(ServerConfig::default()))
        .unwrap();
    let addr = server.addr();

    // 200,000 offline messages for 1,000 users who are not the pair.
    let started = Instant::now();
    let holders: Vec<Credentials> = (0..HOLDERS)
        .map(|i| server.vendor().register_user(&UserId::new(format!("h{i}"))))
        .collect();
    let filler = server.vendor().register_user(&UserId::new("filler"));
    load_rt.block_on(async {
        let client = server.vendor().client();
        client.login(&filler).await.unwrap();
        for i in 0..QUEUED {
            let to = &holders[i % HOLDERS].user;
            let message = OutgoingMessage::new(
                ConversationId::direct(&filler.user, to),
                Content::text(Payload::now(i as u64, started).encode()),
                Timestamp::from_millis(0),
            );
            client.send(&message).await.unwrap();
        }
        client.logout().await.unwrap();
    });
    let queued: usize = holders
        .iter()
        .map(|h| server.vendor().offline_len(&h.user))
        .sum();
    assert_eq!(queued, QUEUED, "offline messages queued");
    println!(
        "queued {queued} offline messages for {HOLDERS} users in {:.1?}",
        started.elapsed()
    );

    // The pair chats through the whole run.
    let alice = server.vendor().register_user(&UserId::new("alice"));
    let bob = server.vendor().register_user(&UserId::new("bob"));
    let epoch = Instant::now();
    let arrivals: Arrivals = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let vendor = load_rt
        .block_on(ReferenceVendor::discover(addr, ReferenceConfig::default()))
        .unwrap();
    let pair = load_rt.spawn(chat(
        vendor.clone(),
        alice,
        bob,
        epoch,
        arrivals.clone(),
        stop.clone(),
        None,
    ));
    // Beside it, a chat at an app's pace: one message every 5 ms (200 msgs/s, about the
    // issue's pair), on its own connections.
    let carol = server.vendor().register_user(&UserId::new("carol"));
    let dave = server.vendor().register_user(&UserId::new("dave"));
    let paced_arrivals: Arrivals = Arc::default();
    let paced = load_rt.spawn(chat(
        vendor.clone(),
        carol,
        dave,
        epoch,
        paced_arrivals.clone(),
        stop.clone(),
        Some(PACE),
    ));
    let sleep = |d: Duration| load_rt.block_on(async { tokio::time::sleep(d).await });
    sleep(Duration::from_secs(1)); // warm-up
    let base_from = Instant::now();
    let cpu_from = Cpu::now();
    sleep(Duration::from_secs_f64(secs));
    let base = window(&arrivals, base_from, Instant::now());
    println!(
        "baseline ({secs} s, nothing else): pair {:.0} msgs/s, p50 {:.3} ms, p99 {:.3} ms, \
         max {:.1} ms; {}",
        base.msgs_per_s,
        base.p50_ms,
        base.p99_ms,
        base.max_ms,
        Cpu::now().since(cpu_from, secs)
    );
    let mut figures = vec![
        (
            "vendor_flood baseline: pair msgs/s".to_string(),
            base.msgs_per_s,
        ),
        (
            "vendor_flood baseline: pair p99 (ms)".to_string(),
            base.p99_ms,
        ),
    ];
    let mut goals = Vec::new();

    let names: Arc<Vec<String>> = Arc::new(
        holders
            .iter()
            .map(|h| h.user.as_str().to_string())
            .collect(),
    );
    // The control: the same flood against a second, empty server that the pair does not
    // use. What it costs the pair is the machine's (the attacker's and the kernel's TCP
    // work on the same two cores), not the pair's server's.
    let control = server_rt
        .block_on(ReferenceServer::start(ServerConfig::default()))
        .unwrap();
    let kinds = [
        (
            "many peers, against another server (control)",
            control.addr(),
        ),
        ("many peers", addr),
        ("one peer", addr),
    ];
    for (label, target) in kinds {
        // Its own addresses and names: the throttles start afresh, as for a new attacker.
        let who: Arc<dyn Fn(usize) -> (Option<IpAddr>, String) + Send + Sync> =
            if label.starts_with("many peers") {
                let names = names.clone();
                let first_peer = if target == addr { 0 } else { FLOOD_PEERS };
                Arc::new(move |i| {
                    let name = names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("nobody{i}"));
                    (Some(peer_ip(first_peer + i % FLOOD_PEERS)), name)
                })
            } else {
                let names = names.clone();
                Arc::new(move |i| (None, names[i % names.len()].clone()))
            };
        // Flood and quiet alternate in short spans (a chunk of attempts, then as long
        // with nothing), so the other processes of a shared machine weigh on both alike.
        let mut flooded = Vec::new();
        let mut quiet = Vec::new();
        let mut counts = BTreeMap::<String, usize>::new();
        let cpu_from = Cpu::now();
        let chunk = ATTEMPTS / CHUNKS;
        for c in 0..CHUNKS {
            let from = Instant::now();
            let answers =
                attacker_rt.block_on(flood(target, who.clone(), c * chunk..(c + 1) * chunk));
            let to = Instant::now();
            for (k, v) in answers {
                *counts.entry(k).or_default() += v;
            }
            flooded.push((from, to));
            sleep(to - from);
            quiet.push((to, Instant::now()));
        }
        let flood_secs: f64 = flooded.iter().map(|(f, t)| (*t - *f).as_secs_f64()).sum();
        let cpu = Cpu::now().since(cpu_from, 2.0 * flood_secs);
        let during = windows(&arrivals, &flooded);
        let before = windows(&arrivals, &quiet);
        let ratio = during.msgs_per_s / before.msgs_per_s;
        let paced_during = windows(&paced_arrivals, &flooded);
        let paced_before = windows(&paced_arrivals, &quiet);
        let paced_ratio = paced_during.msgs_per_s / paced_before.msgs_per_s;
        let answers: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!(
            "flood, {label}: {ATTEMPTS} wrong-password logins in {flood_secs:.2} s ({:.0}/s, \
             {FLOOD_CONCURRENCY} at a time, {CHUNKS} chunks between as long quiet spans): {}\n  \
             pair while flooded {:.0} msgs/s (p50 {:.3} ms, p99 {:.3} ms, max {:.1} ms), while \
             quiet {:.0} msgs/s (p50 {:.3} ms, p99 {:.3} ms, max {:.1} ms): {ratio:.2}; {cpu} \
             (both spans)\n  paced chat while flooded {:.0} msgs/s (p99 {:.3} ms, max {:.1} \
             ms), while quiet {:.0} msgs/s (p99 {:.3} ms): {paced_ratio:.2}",
            ATTEMPTS as f64 / flood_secs,
            answers.join(", "),
            during.msgs_per_s,
            during.p50_ms,
            during.p99_ms,
            during.max_ms,
            before.msgs_per_s,
            before.p50_ms,
            before.p99_ms,
            before.max_ms,
            paced_during.msgs_per_s,
            paced_during.p99_ms,
            paced_during.max_ms,
            paced_before.msgs_per_s,
            paced_before.p99_ms,
        );
        assert!(
            !counts.contains_key("ACCEPTED"),
            "a wrong password was accepted"
        );
        let name = format!("vendor_flood {label}");
        for (answer, n) in &counts {
            figures.push((format!("{name}: answered {answer}"), *n as f64));
        }
        figures.push((format!("{name}: attempts/s"), ATTEMPTS as f64 / flood_secs));
        figures.push((format!("{name}: pair msgs/s quiet"), before.msgs_per_s));
        figures.push((format!("{name}: pair msgs/s flooded"), during.msgs_per_s));
        figures.push((format!("{name}: pair flooded vs quiet (×)"), ratio));
        figures.push((format!("{name}: pair p99 flooded (ms)"), during.p99_ms));
        figures.push((
            format!("{name}: paced chat flooded vs quiet (×)"),
            paced_ratio,
        ));
        figures.push((
            format!("{name}: paced chat p99 flooded (ms)"),
            paced_during.p99_ms,
        ));
        if target == addr {
            goals.push(format!(
                "closed-loop pair under the {label} flood ≥ {GOAL_RATIO} of its rate: {} \
                 ({ratio:.2})",
                met(ratio >= GOAL_RATIO)
            ));
            goals.push(format!(
                "paced chat under the {label} flood ≥ {GOAL_RATIO} of its rate: {} \
                 ({paced_ratio:.2})",
                met(paced_ratio >= GOAL_RATIO)
            ));
        }
    }
    server_rt.block_on(control.shutdown());

    // 10,000 idle sockets, then a new login.
    sleep(GAP);
    let opened_from = Instant::now();
    let idle: Vec<_> = attacker_rt.block_on(async {
        let mut sockets = Vec::with_capacity(idle_target);
        let mut failed = BTreeMap::<String, usize>::new();
        let mut connecting = futures::stream::iter(0..idle_target)
            .map(|i| im_benches::load::connect(addr, Some(peer_ip(FLOOD_PEERS + i % IDLE_PEERS))))
            .buffer_unordered(256);
        while let Some(result) = connecting.next().await {
            match result {
                Ok(s) => sockets.push(s),
                Err(e) => *failed.entry(e.to_string()).or_default() += 1,
            }
        }
        if !failed.is_empty() {
            println!("idle sockets that failed to connect: {failed:?}");
        }
        sockets
    });
    let opened = opened_from.elapsed();
    sleep(Duration::from_millis(200));
    let open_on_server = server.connections();
    let login_from = Instant::now();
    let login = load_rt.block_on(async {
        let client = vendor.client();
        let newcomer = server.vendor().register_user(&UserId::new("newcomer"));
        let result = tokio::time::timeout(Duration::from_secs(30), client.login(&newcomer)).await;
        drop(client.logout().await);
        result
    });
    let login_ms = login_from.elapsed().as_secs_f64() * 1e3;
    let idle_window = window(&arrivals, opened_from, Instant::now());
    let login_ok = matches!(login, Ok(Ok(_)));
    println!(
        "idle sockets: {} of {IDLE} opened in {opened:.2?} (the server holds {open_on_server} \
         connections: it closes the oldest waiting to log in past its unauthenticated share); \
         a new login then {} in {login_ms:.1} ms; pair meanwhile {:.0} msgs/s",
        idle.len(),
        match &login {
            Ok(Ok(_)) => "succeeded".to_string(),
            Ok(Err(e)) => format!("FAILED ({e})"),
            Err(_) => "TIMED OUT".to_string(),
        },
        idle_window.msgs_per_s,
    );
    figures.push((
        "vendor_flood idle: sockets opened".to_string(),
        idle.len() as f64,
    ));
    figures.push((
        "vendor_flood idle: server connections".to_string(),
        open_on_server as f64,
    ));
    figures.push(("vendor_flood idle: new login (ms)".to_string(), login_ms));
    goals.push(format!(
        "a new login with {} idle unauthenticated sockets: {} ({login_ms:.1} ms)",
        idle.len(),
        met(login_ok && idle.len() == IDLE)
    ));
    drop(idle);

    stop.store(true, Ordering::Relaxed);
    let sent = load_rt
        .block_on(pair)
        .unwrap()
        .unwrap_or_else(|e| panic!("the pair: {e}"));
    println!("the pair sent {sent} messages, each received once, in order");
    let paced_sent = load_rt
        .block_on(paced)
        .unwrap()
        .unwrap_or_else(|e| panic!("the paced chat: {e}"));
    println!("the paced chat sent {paced_sent} messages, each received once, in order");
    server_rt.block_on(server.shutdown());
    println!("load average {} at the end", load_average());
    for goal in &goals {
        println!("goal (issue 22): {goal}");
    }
    im_benches::write_figures("vendor_flood", &figures).unwrap();
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "NOT met" }
}
