//! Offline sync (issue 22, acceptance point 2): N messages over C conversations queued at the
//! reference vendor for a user who is away, then `ImClient::login` → `Online` with every one
//! of them delivered to the app exactly once, on a store from [`STORES`]. Timed from the call
//! to `login` until the app has seen the last message (and `login` has returned), three
//! repetitions each on a fresh server and a fresh store; the median is printed and written as
//! figures (`cargo xtask bench --bench offline_sync`), with the goals (100,000 in
//! < 2 s, 10,000 in < 0.25 s, on a durable store) reported, not asserted.
//!
//! The messages are queued through the server's own vendor in process (one sender per
//! conversation, each a direct conversation with the user), not timed. The user's client
//! talks to the server over TCP through the `reference` adapter, as an app would.
//!
//! What it checks rather than times: every message reaches the app once (none twice, none
//! unknown, none missing 60 s after the login started, none arriving in a quiet period after
//! the last) and the vendor's offline queue is empty afterwards; any of these fails the run.
//!
//! `-- --reps R` sets the repetitions (default 3), `-- --store NAME` runs only that store,
//! and a filter argument (as criterion takes them) runs only the sizes whose name
//! (`offline_sync 100000` / `offline_sync 10000`) contains it.

// A benchmark binary: a panic is how it reports a broken invariant.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use im_arch::{
    ClientConfig, ClientEvent, DeliveryPolicy, Filter, ImClient, LogStore, MemoryStore, SledStore,
    Store,
};
use im_service::memory::MemoryVendor;
use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::{Content, ConversationId, OutgoingMessage, UserId, Vendor};
use im_vendor_sim::{ReferenceServer, ServerConfig};
use tokio::runtime::Runtime;

/// The stores a run is measured on: a name and how to open one in an empty directory. Add a
/// store here and every size runs on it too.
type OpenStore = fn(&Path) -> Result<Arc<dyn Store>, String>;
const STORES: &[(&str, OpenStore)] = &[
    ("MemoryStore", |_| Ok(Arc::new(MemoryStore::new()))),
    ("LogStore", |dir| {
        LogStore::open(dir)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| format!("LogStore::open: {e}"))
    }),
    ("SledStore", |dir| {
        SledStore::open(dir)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| format!("SledStore::open: {e}"))
    }),
];
/// The stores that count for the goals (durable).
const DURABLE: &[&str] = &["SledStore", "LogStore"];

/// Queued messages, over how many conversations, and the goal (seconds, on a durable store).
#[derive(Clone, Copy)]
struct Size {
    messages: usize,
    conversations: usize,
    goal_secs: f64,
}

const SIZES: [Size; 2] = [
    Size {
        messages: 10_000,
        conversations: 1_000,
        goal_secs: 0.25,
    },
    Size {
        messages: 100_000,
        conversations: 1_000,
        goal_secs: 2.0,
    },
];

/// How long a sync may take before the run fails.
const DEADLINE: Duration = Duration::from_secs(60);
/// After the last message: one more arriving within this is one too many.
const QUIET: Duration = Duration::from_millis(300);

const ME: &str = "me";

fn body(conversation: usize, seq: usize) -> String {
    format!("{conversation:06}:{seq:08}")
}

fn parse(content: &Content) -> Result<(usize, usize), String> {
    let Content::Text(text) = content else {
        return Err(format!("content not sent by the bench: {content:?}"));
    };
    let (c, s) = text
        .split_once(':')
        .ok_or_else(|| format!("a body not sent by the bench: {text:?}"))?;
    Ok((
        c.parse().map_err(|e| format!("{text:?}: {e}"))?,
        s.parse().map_err(|e| format!("{text:?}: {e}"))?,
    ))
}

/// Queues `size` for [`ME`] on `vendor` (the server's, in process): sender `c` sends its
/// share in its direct conversation with me.
async fn queue(vendor: &MemoryVendor, size: Size) -> Result<(), String> {
    let me = UserId::new(ME);
    vendor.register_user(&me);
    let per = size.messages / size.conversations;
    for c in 0..size.conversations {
        let who = UserId::new(format!("s{c}"));
        let creds = vendor.register_user(&who);
        let client = vendor.client();
        client
            .login(&creds)
            .await
            .map_err(|e| format!("login: {e}"))?;
        let conversation = ConversationId::direct(&who, &me);
        for s in 0..per {
            let message = OutgoingMessage::new(
                conversation.clone(),
                Content::text(body(c, s)),
                vendor.now(),
            );
            client
                .send(&message)
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
        client.logout().await.map_err(|e| format!("logout: {e}"))?;
    }
    let queued = vendor.offline_len(&me);
    if queued != per * size.conversations {
        return Err(format!("{queued} queued, not {}", per * size.conversations));
    }
    Ok(())
}

/// One sync: queue, then log in and wait until the app has every message. Returns the time
/// from `login` to the last message (or `login`'s return, whichever is later).
fn once(
    rt: &Runtime,
    server_rt: &Runtime,
    open: OpenStore,
    size: Size,
) -> Result<Duration, String> {
    let server = server_rt
        .block_on(ReferenceServer::start(ServerConfig::default()))
        .map_err(|e| format!("server: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    // Opened off the runtime's threads: opening a durable store is blocking I/O.
    let store = open(&dir.path().join("store"))?;
    let result = rt.block_on(async {
        queue(server.vendor(), size).await?;
        let creds = server.vendor().register_user(&UserId::new(ME));
        let vendor = ReferenceVendor::discover(server.addr(), ReferenceConfig::default())
            .await
            .map_err(|e| format!("discover: {e}"))?;
        let client = ImClient::builder(Arc::new(vendor.client()), creds)
            .store(store)
            .config(ClientConfig::default())
            .build();
        // Subscribed before login, as an app does, with room for every message: a reader
        // that lags would lose events, which this bench would report as missing.
        let mut events = client.subscribe_with(
            Filter::all(),
            DeliveryPolicy::DropOldest {
                capacity: 2 * size.messages + 1024,
            },
        );
        let per = size.messages / size.conversations;
        let mut seen = vec![false; size.messages];
        let mut count = 0;
        let start = Instant::now();
        let login = client.login();
        tokio::pin!(login);
        let mut logged_in = false;
        let deadline = tokio::time::sleep(DEADLINE);
        tokio::pin!(deadline);
        while count < size.messages || !logged_in {
            tokio::select! {
                r = &mut login, if !logged_in => {
                    r.map_err(|e| format!("login: {e}"))?;
                    logged_in = true;
                }
                ev = events.next() => match ev.as_deref() {
                    Some(ClientEvent::Message(r)) => {
                        let (c, s) = parse(&r.message.content)?;
                        let i = c * per + s;
                        if c >= size.conversations || s >= per {
                            return Err(format!("message {c}:{s} was never queued"));
                        }
                        if std::mem::replace(&mut seen[i], true) {
                            return Err(format!("message {c}:{s} delivered twice"));
                        }
                        count += 1;
                    }
                    Some(ClientEvent::Lagged { dropped }) => {
                        return Err(format!("the app lost {dropped} events (lagged)"));
                    }
                    Some(_) => {}
                    None => return Err("the subscription ended".into()),
                },
                () = &mut deadline => {
                    return Err(format!("{count} of {} delivered after {DEADLINE:?}",
                        size.messages));
                }
            }
        }
        let took = start.elapsed();
        loop {
            match tokio::time::timeout(QUIET, events.next()).await {
                Err(_) => break,
                Ok(Some(ev)) => {
                    if let ClientEvent::Message(r) = &*ev {
                        return Err(format!(
                            "{:?} arrived again after the last",
                            r.message.content
                        ));
                    }
                }
                Ok(None) => return Err("the subscription ended".into()),
            }
        }
        let left = server.vendor().offline_len(&UserId::new(ME));
        if left != 0 {
            return Err(format!("{left} messages still queued at the vendor"));
        }
        client.logout().await;
        Ok(took)
    });
    server_rt.block_on(server.shutdown());
    drop(dir);
    result
}

/// The command line (read by `im_benches::BenchArgs`): `--reps R`, `--store NAME`
/// (repeatable), filters.
struct Args {
    reps: usize,
    stores: Vec<String>,
    bench: im_benches::BenchArgs,
}

impl Args {
    fn parse() -> Args {
        let bench = im_benches::BenchArgs::parse(std::env::args().skip(1), &["--reps", "--store"]);
        let reps = bench.value::<usize>("--reps").unwrap_or(3);
        assert!(reps > 0, "--reps takes a positive number");
        let stores = bench.values_of("--store").map(String::from).collect();
        Args {
            reps,
            stores,
            bench,
        }
    }

    fn runs(&self, size: Size, store: &str) -> bool {
        self.bench
            .selects(&format!("offline_sync {}", size.messages))
            && (self.stores.is_empty() || self.stores.iter().any(|s| s == store))
    }
}

fn main() {
    let args = Args::parse();
    let server_rt = im_benches::runtime("server", None);
    let rt = im_benches::runtime("client", None);
    let mut figures = Vec::new();
    let mut goals = Vec::new();
    for size in SIZES {
        for (name, open) in STORES {
            if !args.runs(size, name) {
                continue;
            }
            let label = format!(
                "offline_sync {} messages / {} conversations, {name}",
                size.messages, size.conversations
            );
            let mut times: Vec<Duration> = (0..args.reps)
                .map(|_| {
                    once(&rt, &server_rt, *open, size).unwrap_or_else(|e| panic!("{label}: {e}"))
                })
                .collect();
            times.sort_unstable();
            let median = times[times.len() / 2].as_secs_f64();
            let all: Vec<String> = times
                .iter()
                .map(|t| format!("{:.3}", t.as_secs_f64()))
                .collect();
            println!(
                "{label}: median {median:.3} s ({:.0} msgs/s; runs {} s)",
                size.messages as f64 / median,
                all.join(", ")
            );
            figures.push((format!("{label}: seconds (median)"), median));
            figures.push((format!("{label}: msgs/s"), size.messages as f64 / median));
            if DURABLE.contains(name) {
                goals.push(format!(
                    "{} offline messages synced durably ({name}) in < {} s: {} ({median:.3} s)",
                    size.messages,
                    size.goal_secs,
                    if median < size.goal_secs {
                        "met"
                    } else {
                        "NOT met"
                    }
                ));
            }
        }
    }
    for goal in &goals {
        println!("goal (issue 22): {goal}");
    }
    if figures.is_empty() {
        println!("offline_sync: filtered out");
        return;
    }
    im_benches::write_figures("offline_sync", &figures).unwrap();
}
