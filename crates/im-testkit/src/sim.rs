//! Deterministic simulation: several clients (`ImClient` on a crash-faithful store, each
//! read by a `DurableSubscription`) talk through the in-process vendor wrapped in
//! [`FaultyVendor`], under one seed, in paused tokio time, while a random schedule drops
//! connections, duplicates, reorders and loses pushes, loses send acknowledgements, fails
//! calls, expires tokens, kicks sessions and crashes clients. After each schedule the ledger
//! is checked: 0 lost, 0 duplicated at the app, per-conversation order, unread counts
//! consistent with what was seen and marked read. `cargo xtask sim --schedules N` runs it.
//!
//! One seed drives everything: the base seed and a schedule's index give the schedule's
//! seed ([`schedule_seed`]), from which the users, groups, step list, fault choices, crash
//! losses and the app's reading pace all derive. Reconnect and retry jitter is off in the
//! sim (the client's jitter draws from the thread's generator, which no seed reaches); what
//! is left of run-to-run variation is tokio's `select!` branch order when several branches
//! are ready at once, so a replay reproduces the schedule exactly and, almost always, the
//! failure.
//!
//! A crash follows the [`im_arch::Store`] durability contract: [`CrashStore`] keeps the
//! log of writes, marks what each completed flush covered (a flush takes 1 ms of virtual
//! time, so crashes land inside flushes too), and a crash keeps the flushed prefix plus a
//! random part of the unflushed suffix, then the client restarts on the rebuilt store.
//! The app side reuses the crash harness's ledger checker ([`crate::crash::check_ledgers`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use im_arch::{
    ArchError, ClientConfig, ConversationState, DurableEvent, DurableSubscription, ImClient,
    Jitter, MemoryStore, OutboxItem, SendStatus, Store, SyncCursor, TokenProvider,
};
use im_service::memory::{MemoryClient, MemoryVendor, MemoryVendorConfig, VendorOp};
use im_service::{
    ClientMsgId, Clock, Content, ConversationId, Credentials, GroupId, Message, Origin,
    ServerMsgId, ServiceError, Timestamp, Token, UserId, Vendor,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use crate::crash::{ReceiverEntry, SenderEntry, VendorEntry, check_ledgers};
use crate::faulty::{FaultyVendor, LoseFilter, PushFaults};

/// The durable subscription every simulated app reads.
pub const SUBSCRIPTION: &str = "sim-ledger";

/// Virtual time one store flush takes (a crash can land inside it).
const FLUSH_TIME: Duration = Duration::from_millis(1);

/// Virtual time the final phase may take before what is missing counts as stuck.
const SETTLE_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// Wall-clock start of the vendor's clock (fixed, so a replay stamps the same times).
const EPOCH_MS: i64 = 1_700_000_000_000;

/// The seed of schedule `index` of a run with base seed `base` (splitmix64).
pub fn schedule_seed(base: u64, index: u64) -> u64 {
    let mut z = base
        .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A vendor call a [`Step::FailCalls`] makes fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimOp {
    /// Login.
    Login,
    /// Pulling the offline queue.
    PullOffline,
    /// Acknowledging an offline batch.
    AckOffline,
    /// Going online.
    GoOnline,
    /// Pulling history (catch-up, gap fill).
    PullHistory,
    /// Heartbeat.
    Ping,
    /// Sending (a conversation's head, or a send while none is in flight).
    Send,
    /// A pipelined send, behind another in flight in its conversation.
    SendAfter,
}

impl SimOp {
    const ALL: [SimOp; 8] = [
        SimOp::Login,
        SimOp::PullOffline,
        SimOp::AckOffline,
        SimOp::GoOnline,
        SimOp::PullHistory,
        SimOp::Ping,
        SimOp::Send,
        SimOp::SendAfter,
    ];

    fn vendor_op(self) -> VendorOp {
        match self {
            SimOp::Login => VendorOp::Login,
            SimOp::PullOffline => VendorOp::PullOffline,
            SimOp::AckOffline => VendorOp::AckOffline,
            SimOp::GoOnline => VendorOp::GoOnline,
            SimOp::PullHistory => VendorOp::PullHistory,
            SimOp::Ping => VendorOp::Ping,
            SimOp::Send => VendorOp::Send,
            SimOp::SendAfter => VendorOp::SendAfter,
        }
    }
}

/// One step of a schedule. Users and conversations are indices into the schedule's lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The app of `user` sends a new message to conversation `conv` (`ImClient::send`).
    Send {
        /// Sender.
        user: u8,
        /// Conversation.
        conv: u8,
    },
    /// Virtual time passes.
    Advance {
        /// Milliseconds.
        ms: u32,
    },
    /// The vendor breaks every connection of `user`.
    Disconnect {
        /// Whose.
        user: u8,
    },
    /// Pushes to `user` are delivered twice with this probability (percent).
    DuplicatePushes {
        /// Whose.
        user: u8,
        /// Probability in percent (0 switches it off).
        percent: u8,
    },
    /// Consecutive pushes to `user` are swapped (or no longer).
    ReorderPushes {
        /// Whose.
        user: u8,
        /// On or off.
        on: bool,
    },
    /// The next `count` pushes to `user` are lost.
    LosePushes {
        /// Whose.
        user: u8,
        /// How many.
        count: u8,
    },
    /// The next `count` successful sends of `user` lose their acknowledgement.
    LoseSendAcks {
        /// Whose.
        user: u8,
        /// How many.
        count: u8,
    },
    /// The next `count` calls of `op` by `user`'s client fail (transient error).
    FailCalls {
        /// Whose.
        user: u8,
        /// Which call.
        op: SimOp,
        /// How many.
        count: u8,
    },
    /// `user`'s token is cut to `ttl_ms`: the vendor warns at 80% and expires it; the
    /// client refreshes it through its token provider.
    ExpireToken {
        /// Whose.
        user: u8,
        /// Remaining life.
        ttl_ms: u32,
    },
    /// `user` logs in on a second device (kicking the client), which then goes away; the
    /// app logs in again.
    Kick {
        /// Whose.
        user: u8,
    },
    /// `user`'s client process dies and restarts on its store: the unflushed writes are
    /// kept up to `keep_percent` percent of them (a prefix), the rest is lost.
    Crash {
        /// Whose.
        user: u8,
        /// Share of the unflushed suffix that survives.
        keep_percent: u8,
    },
    /// Like [`Step::Crash`], while a `send` to `conv` is still flushing (never confirmed).
    CrashMidSend {
        /// Whose.
        user: u8,
        /// Conversation of the interrupted send.
        conv: u8,
        /// Share of the unflushed suffix that survives.
        keep_percent: u8,
    },
    /// The app of `user` marks conversation `conv` read.
    MarkRead {
        /// Whose.
        user: u8,
        /// Conversation.
        conv: u8,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Send { user, conv } => write!(f, "send u{user} -> c{conv}"),
            Step::Advance { ms } => write!(f, "advance {ms} ms"),
            Step::Disconnect { user } => write!(f, "disconnect u{user}"),
            Step::DuplicatePushes { user, percent } => {
                write!(f, "duplicate pushes to u{user} at {percent}%")
            }
            Step::ReorderPushes { user, on } => write!(f, "reorder pushes to u{user}: {on}"),
            Step::LosePushes { user, count } => write!(f, "lose next {count} pushes to u{user}"),
            Step::LoseSendAcks { user, count } => {
                write!(f, "lose next {count} send acks of u{user}")
            }
            Step::FailCalls { user, op, count } => {
                write!(f, "fail next {count} {op:?} calls of u{user}")
            }
            Step::ExpireToken { user, ttl_ms } => {
                write!(f, "expire u{user}'s token in {ttl_ms} ms")
            }
            Step::Kick { user } => write!(f, "kick u{user} (second login elsewhere)"),
            Step::Crash { user, keep_percent } => {
                write!(f, "crash u{user}, keep {keep_percent}% of unflushed writes")
            }
            Step::CrashMidSend {
                user,
                conv,
                keep_percent,
            } => write!(
                f,
                "crash u{user} mid-send to c{conv}, keep {keep_percent}% of unflushed writes"
            ),
            Step::MarkRead { user, conv } => write!(f, "u{user} marks c{conv} read"),
        }
    }
}

/// A deliberate defect, to show that the checks catch one (`im-sim --sabotage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// A crash also loses the last flushed write (a store that breaks its contract).
    CrashLosesFlushed,
    /// The app acknowledges one event more than it processed after each batch is read
    /// (it loses it if it crashes before the next batch).
    AppSkipsAck,
}

/// One random schedule: who takes part and what happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The schedule's seed (every random choice of the run derives from it).
    pub seed: u64,
    /// Number of users (2–4).
    pub users: u8,
    /// Conversations: members by user index (direct ones have two).
    pub conversations: Vec<Vec<u8>>,
    /// The steps, in order; a shrunk reproduction keeps a subset.
    pub steps: Vec<Step>,
    /// A deliberate defect, if any.
    pub sabotage: Option<Sabotage>,
    /// Whether the final phase sends one more message per member and conversation, so
    /// that every lost push shows as a hole the online client must fill (half the
    /// schedules); otherwise every connection is dropped once and the clients catch up
    /// (and unread counts are checked without the read position every own message moves).
    pub final_messages: bool,
}

impl Schedule {
    /// The schedule of `seed`.
    pub fn generate(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let users: u8 = rng.random_range(2..=4);
        let mut conversations: Vec<Vec<u8>> = Vec::new();
        for a in 0..users {
            for b in a + 1..users {
                if conversations.is_empty() || rng.random_bool(0.7) {
                    conversations.push(vec![a, b]);
                }
            }
        }
        let groups = if users >= 3 {
            rng.random_range(1..=2)
        } else {
            0
        };
        for _ in 0..groups {
            let mut members: Vec<u8> = (0..users).filter(|_| rng.random_bool(0.8)).collect();
            for u in 0..users {
                if members.len() >= 3 {
                    break;
                }
                if !members.contains(&u) {
                    members.push(u);
                }
            }
            members.sort_unstable();
            conversations.push(members);
        }
        let final_messages = rng.random_bool(0.5);
        let count = rng.random_range(10..=40);
        let steps = (0..count)
            .map(|_| random_step(&mut rng, users, &conversations))
            .collect();
        Self {
            seed,
            users,
            conversations,
            steps,
            sabotage: None,
            final_messages,
        }
    }

    /// The same schedule keeping only the steps at `keep` (indices into `steps`).
    pub fn with_steps(&self, keep: &[usize]) -> Self {
        Self {
            steps: keep
                .iter()
                .filter_map(|i| self.steps.get(*i).cloned())
                .collect(),
            ..self.clone()
        }
    }
}

fn random_step(rng: &mut StdRng, users: u8, conversations: &[Vec<u8>]) -> Step {
    let user = rng.random_range(0..users);
    let mine: Vec<u8> = conversations
        .iter()
        .enumerate()
        .filter(|(_, m)| m.contains(&user))
        .filter_map(|(i, _)| u8::try_from(i).ok())
        .collect();
    let conv = if mine.is_empty() {
        None
    } else {
        Some(mine[rng.random_range(0..mine.len())])
    };
    let keep_percent = *[0u8, 0, 50, 100].get(rng.random_range(0..4)).unwrap_or(&0);
    let roll = rng.random_range(0..100);
    match (roll, conv) {
        (0..=34, Some(conv)) => Step::Send { user, conv },
        (35..=49, _) => Step::Advance {
            ms: match rng.random_range(0..3) {
                0 => rng.random_range(0..5),
                1 => rng.random_range(10..500),
                _ => rng.random_range(1_000..90_000),
            },
        },
        (50..=57, Some(conv)) => Step::MarkRead { user, conv },
        (58..=63, _) => Step::Disconnect { user },
        (64..=67, _) => Step::DuplicatePushes {
            user,
            percent: *[0u8, 30, 100].get(rng.random_range(0..3)).unwrap_or(&0),
        },
        (68..=71, _) => Step::ReorderPushes {
            user,
            on: rng.random_bool(0.7),
        },
        (72..=76, _) => Step::LosePushes {
            user,
            count: rng.random_range(1..=3),
        },
        (77..=80, _) => Step::LoseSendAcks {
            user,
            count: rng.random_range(1..=2),
        },
        (81..=87, _) => Step::FailCalls {
            user,
            op: SimOp::ALL[rng.random_range(0..SimOp::ALL.len())],
            count: rng.random_range(1..=6),
        },
        (88..=90, _) => Step::ExpireToken {
            user,
            ttl_ms: rng.random_range(1..=20_000),
        },
        (91..=93, _) => Step::Kick { user },
        (94..=96, _) | (_, None) => Step::Crash { user, keep_percent },
        (_, Some(conv)) => Step::CrashMidSend {
            user,
            conv,
            keep_percent,
        },
    }
}

/// What one run of a schedule showed.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Every broken rule (empty: the schedule passed).
    pub violations: Vec<String>,
    /// Messages sent (`send` returned `Ok`).
    pub confirmed: usize,
    /// Events the apps acknowledged, over all users.
    pub delivered: usize,
    /// Client restarts after crashes.
    pub crashes: usize,
    /// Virtual time the schedule took.
    pub virtual_time: Duration,
    /// A hash of every ledger line (the apps' and the senders'): equal for two runs that
    /// saw the same thing in the same order.
    pub fingerprint: u64,
}

impl Outcome {
    /// Whether every rule held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs one schedule on a fresh current-thread runtime with paused time.
pub fn run_schedule(schedule: &Schedule) -> Outcome {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Outcome {
                violations: vec![format!("harness: cannot build a runtime: {e}")],
                ..Outcome::default()
            };
        }
    };
    let outcome = runtime.block_on(async {
        let started = tokio::time::Instant::now();
        let mut world = World::new(schedule).await;
        for step in &schedule.steps {
            world.step(step).await;
            world.watchdog().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut outcome = world.settle_and_check().await;
        outcome.virtual_time = started.elapsed();
        world.shutdown();
        outcome
    });
    drop(runtime);
    outcome
}

/// Shrinks a failing schedule: drops chunks of steps (delta debugging) while `fails`
/// still holds, at most `budget` runs. Returns the kept step indices.
pub fn shrink(
    schedule: &Schedule,
    mut fails: impl FnMut(&Schedule) -> bool,
    budget: usize,
) -> Vec<usize> {
    let mut keep: Vec<usize> = (0..schedule.steps.len()).collect();
    let mut runs = 0;
    let mut n = 2usize;
    while keep.len() >= 2 && runs < budget {
        let chunk = keep.len().div_ceil(n);
        let mut reduced = false;
        for start in (0..keep.len()).step_by(chunk) {
            if runs >= budget {
                break;
            }
            let candidate: Vec<usize> = keep
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < start || *i >= start + chunk)
                .map(|(_, s)| *s)
                .collect();
            runs += 1;
            if fails(&schedule.with_steps(&candidate)) {
                keep = candidate;
                n = n.saturating_sub(1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if n >= keep.len() {
                break;
            }
            n = (n * 2).min(keep.len());
        }
    }
    // The empty schedule last (the final phase alone may fail).
    if keep.len() == 1 && runs < budget && fails(&schedule.with_steps(&[])) {
        keep.clear();
    }
    keep
}

// ---------------------------------------------------------------------------------------
// The crash-faithful store
// ---------------------------------------------------------------------------------------

/// One write, as the disk log keeps it.
#[derive(Clone)]
enum Write {
    Messages(Vec<Message>),
    Commit(
        Vec<(ConversationId, SyncCursor)>,
        Vec<(ServerMsgId, Origin)>,
    ),
    SetSubscription(String, u64),
    RemoveSubscription(String),
    BeginDelivery(Vec<ServerMsgId>),
    SyncMark(Timestamp),
    PutOutbox(OutboxItem),
    RemoveOutbox(ClientMsgId),
    ConversationState(ConversationState),
    Change(im_service::MessageChange),
    ChangeCursor(im_service::ChangeCursor),
    ReadReceipt(im_service::ReadReceipt),
}

impl Write {
    async fn apply(&self, store: &MemoryStore) -> Result<(), ArchError> {
        match self {
            Write::Messages(m) => store.put_messages(m).await.map(|_| ()),
            Write::Commit(c, j) => store.commit_delivery(c, j).await.map(|_| ()),
            Write::SetSubscription(n, p) => store.set_subscription(n, *p).await,
            Write::RemoveSubscription(n) => store.remove_subscription(n).await,
            Write::BeginDelivery(ids) => store.begin_delivery(ids).await,
            Write::SyncMark(t) => store.set_sync_mark(*t).await,
            Write::PutOutbox(i) => store.put_outbox(i).await,
            Write::RemoveOutbox(id) => store.remove_outbox(id).await,
            Write::ConversationState(s) => store.put_conversation_state(s).await,
            Write::Change(c) => store.apply_change(c).await.map(|_| ()),
            Write::ChangeCursor(c) => store.set_change_cursor(c).await,
            Write::ReadReceipt(r) => store.put_read_receipt(r).await.map(|_| ()),
        }
    }
}

/// What survives a process: the log of writes and how much of it completed flushes cover.
#[derive(Default)]
struct Disk {
    log: Vec<Write>,
    flushed: usize,
}

/// A [`Store`] that forwards to a [`MemoryStore`] and can crash faithfully to the
/// durability contract: after [`CrashStore::crash`] the old instance is dead (every call
/// pends forever, as in a killed process) and the returned one holds the flushed writes
/// plus a prefix of the unflushed ones.
pub struct CrashStore {
    mem: MemoryStore,
    disk: Arc<Mutex<Disk>>,
    alive: AtomicBool,
}

impl Default for CrashStore {
    fn default() -> Self {
        Self {
            mem: MemoryStore::new(),
            disk: Arc::new(Mutex::new(Disk::default())),
            alive: AtomicBool::new(true),
        }
    }
}

impl CrashStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn disk(&self) -> parking_lot::MutexGuard<'_, Disk> {
        // Every holder completes its change before unlocking; poison carries no torn state.
        self.disk.lock()
    }

    /// Kills this instance and returns the store the restarted process finds: the flushed
    /// writes and `keep_percent` percent (rounded down) of the unflushed ones, in order.
    /// With `lose_flushed` the last flushed write is lost too (a broken store, for the
    /// sabotage check).
    pub async fn crash(&self, keep_percent: u8, lose_flushed: bool) -> Result<Self, ArchError> {
        self.alive.store(false, Ordering::SeqCst);
        let log = {
            let mut disk = self.disk();
            let unflushed = disk.log.len() - disk.flushed;
            let mut keep = disk.flushed + unflushed * usize::from(keep_percent.min(100)) / 100;
            if lose_flushed && keep > 0 && keep == disk.flushed {
                keep -= 1;
            }
            disk.log.truncate(keep);
            disk.flushed = keep;
            disk.log.clone()
        };
        let mem = MemoryStore::new();
        for w in &log {
            w.apply(&mem).await?;
        }
        Ok(Self {
            mem,
            disk: self.disk.clone(),
            alive: AtomicBool::new(true),
        })
    }

    /// A killed process does nothing more: every call of a dead instance pends forever.
    async fn gate(&self) {
        if !self.alive.load(Ordering::SeqCst) {
            futures::future::pending::<()>().await;
        }
    }

    fn record(&self, w: Write) {
        if self.alive.load(Ordering::SeqCst) {
            self.disk().log.push(w);
        }
    }
}

#[async_trait]
impl Store for CrashStore {
    async fn flush(&self) -> Result<(), ArchError> {
        self.gate().await;
        let upto = self.disk().log.len();
        tokio::time::sleep(FLUSH_TIME).await;
        self.gate().await;
        let mut disk = self.disk();
        disk.flushed = disk.flushed.max(upto.min(disk.log.len()));
        Ok(())
    }

    async fn put_messages(&self, messages: &[Message]) -> Result<Vec<bool>, ArchError> {
        self.gate().await;
        let r = self.mem.put_messages(messages).await?;
        self.record(Write::Messages(messages.to_vec()));
        Ok(r)
    }

    async fn message(&self, id: &ServerMsgId) -> Result<Option<Message>, ArchError> {
        self.gate().await;
        self.mem.message(id).await
    }

    async fn latest(
        &self,
        conversation: &ConversationId,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        self.gate().await;
        self.mem.latest(conversation, limit).await
    }

    async fn cursor(&self, conversation: &ConversationId) -> Result<Option<SyncCursor>, ArchError> {
        self.gate().await;
        self.mem.cursor(conversation).await
    }

    async fn commit_delivery(
        &self,
        cursors: &[(ConversationId, SyncCursor)],
        journal: &[(ServerMsgId, Origin)],
    ) -> Result<u64, ArchError> {
        self.gate().await;
        let r = self.mem.commit_delivery(cursors, journal).await?;
        self.record(Write::Commit(cursors.to_vec(), journal.to_vec()));
        Ok(r)
    }

    async fn journal_head(&self) -> Result<u64, ArchError> {
        self.gate().await;
        self.mem.journal_head().await
    }

    async fn journal_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DurableEvent>, ArchError> {
        self.gate().await;
        self.mem.journal_after(after, limit).await
    }

    async fn subscriptions(&self) -> Result<Vec<(String, u64)>, ArchError> {
        self.gate().await;
        self.mem.subscriptions().await
    }

    async fn set_subscription(&self, name: &str, position: u64) -> Result<(), ArchError> {
        self.gate().await;
        self.mem.set_subscription(name, position).await?;
        self.record(Write::SetSubscription(name.to_string(), position));
        Ok(())
    }

    async fn remove_subscription(&self, name: &str) -> Result<(), ArchError> {
        self.gate().await;
        self.mem.remove_subscription(name).await?;
        self.record(Write::RemoveSubscription(name.to_string()));
        Ok(())
    }

    async fn begin_delivery(&self, ids: &[ServerMsgId]) -> Result<(), ArchError> {
        self.gate().await;
        self.mem.begin_delivery(ids).await?;
        self.record(Write::BeginDelivery(ids.to_vec()));
        Ok(())
    }

    async fn in_flight(&self) -> Result<Vec<ServerMsgId>, ArchError> {
        self.gate().await;
        self.mem.in_flight().await
    }

    async fn cursors(&self) -> Result<Vec<(ConversationId, SyncCursor)>, ArchError> {
        self.gate().await;
        self.mem.cursors().await
    }

    async fn sync_mark(&self) -> Result<Option<Timestamp>, ArchError> {
        self.gate().await;
        self.mem.sync_mark().await
    }

    async fn set_sync_mark(&self, mark: Timestamp) -> Result<(), ArchError> {
        self.gate().await;
        self.mem.set_sync_mark(mark).await?;
        self.record(Write::SyncMark(mark));
        Ok(())
    }

    async fn apply_change(
        &self,
        change: &im_service::MessageChange,
    ) -> Result<im_arch::ChangeOutcome, ArchError> {
        self.gate().await;
        let outcome = self.mem.apply_change(change).await?;
        self.record(Write::Change(change.clone()));
        Ok(outcome)
    }

    async fn revision(
        &self,
        id: &ServerMsgId,
    ) -> Result<Option<im_arch::MessageRevision>, ArchError> {
        self.gate().await;
        self.mem.revision(id).await
    }

    async fn change_cursor(&self) -> Result<Option<im_service::ChangeCursor>, ArchError> {
        self.gate().await;
        self.mem.change_cursor().await
    }

    async fn set_change_cursor(&self, cursor: &im_service::ChangeCursor) -> Result<(), ArchError> {
        self.gate().await;
        self.mem.set_change_cursor(cursor).await?;
        self.record(Write::ChangeCursor(cursor.clone()));
        Ok(())
    }

    async fn put_read_receipt(&self, receipt: &im_service::ReadReceipt) -> Result<bool, ArchError> {
        self.gate().await;
        let newer = self.mem.put_read_receipt(receipt).await?;
        self.record(Write::ReadReceipt(receipt.clone()));
        Ok(newer)
    }

    async fn read_receipts(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<im_service::ReadReceipt>, ArchError> {
        self.gate().await;
        self.mem.read_receipts(conversation).await
    }

    async fn page_before(
        &self,
        conversation: &ConversationId,
        before: Option<&Message>,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        self.gate().await;
        self.mem.page_before(conversation, before, limit).await
    }

    async fn page_after(
        &self,
        conversation: &ConversationId,
        after: &Message,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        self.gate().await;
        self.mem.page_after(conversation, after, limit).await
    }

    async fn put_outbox(&self, item: &OutboxItem) -> Result<(), ArchError> {
        self.gate().await;
        self.mem.put_outbox(item).await?;
        self.record(Write::PutOutbox(item.clone()));
        Ok(())
    }

    async fn remove_outbox(&self, id: &ClientMsgId) -> Result<(), ArchError> {
        self.gate().await;
        self.mem.remove_outbox(id).await?;
        self.record(Write::RemoveOutbox(id.clone()));
        Ok(())
    }

    async fn outbox(&self) -> Result<Vec<OutboxItem>, ArchError> {
        self.gate().await;
        self.mem.outbox().await
    }

    async fn put_conversation_state(&self, state: &ConversationState) -> Result<(), ArchError> {
        self.gate().await;
        self.mem.put_conversation_state(state).await?;
        self.record(Write::ConversationState(state.clone()));
        Ok(())
    }

    async fn conversation_states(&self) -> Result<Vec<ConversationState>, ArchError> {
        self.gate().await;
        self.mem.conversation_states().await
    }
}

// ---------------------------------------------------------------------------------------
// The world
// ---------------------------------------------------------------------------------------

/// The vendor's clock: a fixed epoch plus the (paused) tokio time since the start.
#[derive(Debug, Clone)]
struct SimClock {
    start: tokio::time::Instant,
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        let ms = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX / 2);
        Timestamp::from_millis(EPOCH_MS + ms)
    }
}

/// Tokens from the "company backend": fresh, never-expiring ones; the latest per user is
/// what a restarted app logs in with.
struct SimTokens {
    vendor: MemoryVendor,
    current: Mutex<HashMap<UserId, Token>>,
}

impl SimTokens {
    fn current(&self, user: &UserId) -> Option<Token> {
        self.current.lock().get(user).cloned()
    }
}

#[async_trait]
impl TokenProvider for SimTokens {
    async fn token(&self, user: &UserId) -> Result<Token, ServiceError> {
        let token = self.vendor.issue_token(user, None)?;
        self.current.lock().insert(user.clone(), token.clone());
        Ok(token)
    }
}

/// What the app of one user recorded (the crash harness's receiver ledger, with senders).
type Ledger = Arc<Mutex<Vec<ReceiverEntry>>>;

/// One user's running client and app.
struct Node {
    client: Arc<ImClient>,
    /// The app's pending `login()` (never cancelled: a dropped `login` future can lose the
    /// vendor's event stream while it reclaims a stopped supervisor).
    login: JoinHandle<()>,
    vendor: Arc<FaultyVendor<MemoryClient>>,
    store: Arc<CrashStore>,
    app: JoinHandle<()>,
    faults: PushFaults,
    incarnation: u32,
}

struct World {
    rng: StdRng,
    vendor: MemoryVendor,
    clock: SimClock,
    tokens: Arc<SimTokens>,
    users: Vec<UserId>,
    conversations: Vec<ConversationId>,
    members: Vec<Vec<u8>>,
    nodes: Vec<Node>,
    ledgers: Vec<Ledger>,
    /// Sender ledgers per user (attempt / confirmed lines).
    sent: Vec<Vec<SenderEntry>>,
    /// Next message number per user.
    next_message: Vec<u32>,
    /// The conversation each message text was queued for.
    queued: HashMap<String, usize>,
    /// Per (user, conversation): the sequence the app marked read up to.
    marked: HashMap<(usize, usize), u64>,
    sabotage: Option<Sabotage>,
    /// Whether the final phase sends one message per member and conversation.
    final_messages: bool,
    crashes: usize,
    harness_errors: Vec<String>,
}

fn config() -> ClientConfig {
    let mut config = ClientConfig::default();
    // No seed reaches the client's jitter (it draws from the thread's generator): off.
    config.reconnect.jitter = Jitter::None;
    config.retry.backoff.jitter = Jitter::None;
    config
}

fn text_of(m: &Message) -> String {
    match &m.content {
        Content::Text(t) => t.clone(),
        Content::Custom { type_tag, .. } => type_tag.clone(),
        Content::Recalled { .. } => String::new(),
    }
}

/// The user index encoded in a message's text (`u{user}m{n}`).
fn author_of(content: &str) -> Option<usize> {
    content
        .strip_prefix('u')?
        .split(['m', 'f'])
        .next()?
        .parse()
        .ok()
}

impl World {
    async fn new(schedule: &Schedule) -> Self {
        let clock = SimClock {
            start: tokio::time::Instant::now(),
        };
        let vendor =
            MemoryVendor::with_clock(MemoryVendorConfig::default(), Arc::new(clock.clone()));
        let tokens = Arc::new(SimTokens {
            vendor: vendor.clone(),
            current: Mutex::new(HashMap::new()),
        });
        let users: Vec<UserId> = (0..schedule.users)
            .map(|i| UserId::new(format!("u{i}")))
            .collect();
        for u in &users {
            let creds = vendor.register_user(u);
            tokens.current.lock().insert(u.clone(), creds.token);
        }
        let mut harness_errors = Vec::new();
        let conversations: Vec<ConversationId> = schedule
            .conversations
            .iter()
            .enumerate()
            .map(|(i, members)| match members.as_slice() {
                [a, b] => ConversationId::direct(&users[*a as usize], &users[*b as usize]),
                _ => {
                    let group = GroupId::new(format!("g{i}"));
                    let ids: Vec<UserId> =
                        members.iter().map(|m| users[*m as usize].clone()).collect();
                    if let Err(e) = vendor.create_group(&group, &ids) {
                        harness_errors.push(format!("harness: create group: {e}"));
                    }
                    ConversationId::Group(group)
                }
            })
            .collect();
        let mut world = Self {
            rng: StdRng::seed_from_u64(schedule.seed ^ 0x5EED),
            vendor,
            clock,
            tokens,
            users: users.clone(),
            conversations,
            members: schedule.conversations.clone(),
            nodes: Vec::new(),
            ledgers: (0..users.len()).map(|_| Ledger::default()).collect(),
            sent: vec![Vec::new(); users.len()],
            next_message: vec![0; users.len()],
            queued: HashMap::new(),
            marked: HashMap::new(),
            sabotage: schedule.sabotage,
            final_messages: schedule.final_messages,
            crashes: 0,
            harness_errors,
        };
        for i in 0..users.len() {
            let node = world.start(i, Arc::new(CrashStore::new()), 0).await;
            world.nodes.push(node);
        }
        world
    }

    /// Starts user `i`'s client (incarnation `incarnation`) on `store`, opens its durable
    /// subscription, starts its app and its login (without waiting for it).
    async fn start(&mut self, i: usize, store: Arc<CrashStore>, incarnation: u32) -> Node {
        let user = self.users[i].clone();
        let token = self
            .tokens
            .current(&user)
            .unwrap_or_else(|| Token::new("missing"));
        let vendor = Arc::new(FaultyVendor::new(
            Arc::new(self.vendor.client()),
            self.rng.random(),
        ));
        let client = ImClient::builder(
            vendor.clone(),
            Credentials {
                user: user.clone(),
                token,
            },
        )
        .store(store.clone())
        .config(config())
        .token_provider(self.tokens.clone())
        .clock(Arc::new(self.clock.clone()))
        .build();
        let client = Arc::new(client);
        let ledger = self.ledgers[i].clone();
        let app = match client.durable_subscription(SUBSCRIPTION).await {
            Ok(sub) => {
                push(
                    &ledger,
                    ReceiverEntry::Open {
                        tag: format!("u{i}.{incarnation}"),
                        acked: sub.acked(),
                    },
                );
                tokio::spawn(app(
                    sub,
                    ledger,
                    StdRng::seed_from_u64(self.rng.random()),
                    self.sabotage,
                ))
            }
            Err(e) => {
                self.harness_errors
                    .push(format!("u{i}: cannot open the durable subscription: {e}"));
                tokio::spawn(async {})
            }
        };
        let login = spawn_login(&client);
        Node {
            client,
            login,
            vendor,
            store,
            app,
            faults: PushFaults::default(),
            incarnation,
        }
    }

    fn node(&mut self, user: u8) -> Option<&mut Node> {
        self.nodes.get_mut(user as usize)
    }

    /// A new message from `user` to `conv`: recorded before `send`, confirmed after `Ok`.
    fn next_text(&mut self, user: usize, conv: usize, flush_round: bool) -> String {
        self.next_message[user] += 1;
        let n = self.next_message[user];
        let text = if flush_round {
            format!("u{user}f{n}")
        } else {
            format!("u{user}m{n}")
        };
        self.sent[user].push(SenderEntry::Attempt(text.clone()));
        self.queued.insert(text.clone(), conv);
        text
    }

    async fn send(&mut self, user: usize, conv: usize, flush_round: bool) {
        let text = self.next_text(user, conv, flush_round);
        let conversation = self.conversations[conv].clone();
        let node = &self.nodes[user];
        match node.client.send(conversation, Content::text(&text)).await {
            Ok(_) => self.sent[user].push(SenderEntry::Confirmed(text)),
            Err(e) => self
                .harness_errors
                .push(format!("u{user}: send of {text} refused: {e}")),
        }
    }

    async fn crash(&mut self, user: usize, keep_percent: u8) {
        let lose_flushed = self.sabotage == Some(Sabotage::CrashLosesFlushed);
        let old = self.nodes.remove(user);
        old.app.abort();
        old.login.abort();
        let store = old.store.crash(keep_percent, lose_flushed).await;
        // The dead process's vendor connection fails every call until it is gone.
        for op in SimOp::ALL {
            old.vendor.fail_next(
                op.vendor_op(),
                u32::MAX,
                ServiceError::ConnectionLost("process killed".into()),
            );
        }
        let incarnation = old.incarnation + 1;
        drop(old);
        self.crashes += 1;
        match store {
            Ok(store) => {
                let node = self.start(user, Arc::new(store), incarnation).await;
                self.nodes.insert(user, node);
            }
            Err(e) => {
                self.harness_errors
                    .push(format!("u{user}: cannot rebuild the store: {e}"));
                let node = self
                    .start(user, Arc::new(CrashStore::new()), incarnation)
                    .await;
                self.nodes.insert(user, node);
            }
        }
    }

    async fn step(&mut self, step: &Step) {
        match *step {
            Step::Send { user, conv } => self.send(user as usize, conv as usize, false).await,
            Step::Advance { ms } => {
                tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                self.vendor.sweep();
            }
            Step::Disconnect { user } => {
                let u = self.users[user as usize].clone();
                self.vendor.disconnect(&u);
            }
            Step::DuplicatePushes { user, percent } => {
                if let Some(n) = self.node(user) {
                    n.faults.duplicate = f64::from(percent) / 100.0;
                    n.vendor.set_push_faults(n.faults.clone());
                }
            }
            Step::ReorderPushes { user, on } => {
                if let Some(n) = self.node(user) {
                    n.faults.reorder = on;
                    n.vendor.set_push_faults(n.faults.clone());
                }
            }
            Step::LosePushes { user, count } => {
                if let Some(n) = self.node(user) {
                    let left = Arc::new(AtomicU32::new(u32::from(count)));
                    let lose: LoseFilter = Arc::new(move |_| {
                        left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                            .is_ok()
                    });
                    n.faults.lose = Some(lose);
                    n.vendor.set_push_faults(n.faults.clone());
                }
            }
            Step::LoseSendAcks { user, count } => {
                if let Some(n) = self.node(user) {
                    n.vendor.lose_send_acks(u32::from(count));
                }
            }
            Step::FailCalls { user, op, count } => {
                if let Some(n) = self.node(user) {
                    n.vendor.fail_next(
                        op.vendor_op(),
                        u32::from(count),
                        ServiceError::Unavailable("sim fault".into()),
                    );
                }
            }
            Step::ExpireToken { user, ttl_ms } => {
                let u = self.users[user as usize].clone();
                if let Some(token) = self.tokens.current(&u) {
                    let ttl = Duration::from_millis(u64::from(ttl_ms));
                    if let Err(e) = self.vendor.insert_token(&u, &token, Some(ttl)) {
                        self.harness_errors.push(format!("harness: token: {e}"));
                    }
                    tokio::time::sleep(ttl.mul_f64(0.85)).await;
                    self.vendor.sweep();
                    tokio::time::sleep(ttl.mul_f64(0.15) + Duration::from_millis(1)).await;
                    self.vendor.sweep();
                }
            }
            Step::Kick { user } => {
                let u = self.users[user as usize].clone();
                if let Some(token) = self.tokens.current(&u) {
                    let elsewhere = self.vendor.client();
                    let _ = elsewhere.login(&Credentials { user: u, token }).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    drop(elsewhere);
                    if let Some(n) = self.node(user)
                        && n.login.is_finished()
                    {
                        n.login = spawn_login(&n.client);
                    }
                }
            }
            Step::Crash { user, keep_percent } => self.crash(user as usize, keep_percent).await,
            Step::CrashMidSend {
                user,
                conv,
                keep_percent,
            } => {
                let text = self.next_text(user as usize, conv as usize, false);
                let conversation = self.conversations[conv as usize].clone();
                if let Some(n) = self.nodes.get(user as usize) {
                    // Cut while the send's flush is under way: never confirmed.
                    let cut = FLUSH_TIME / 2;
                    if let Ok(Ok(_)) =
                        tokio::time::timeout(cut, n.client.send(conversation, Content::text(&text)))
                            .await
                    {
                        self.sent[user as usize].push(SenderEntry::Confirmed(text));
                    }
                }
                self.crash(user as usize, keep_percent).await;
            }
            Step::MarkRead { user, conv } => {
                let conversation = self.conversations[conv as usize].clone();
                if let Some(n) = self.nodes.get(user as usize) {
                    let row = n
                        .client
                        .conversations(0, usize::MAX)
                        .into_iter()
                        .find(|r| r.id == conversation);
                    let Some(seq) = row
                        .and_then(|r| r.last_message)
                        .and_then(|m| m.seq)
                        .map(|s| s.0)
                    else {
                        return;
                    };
                    if n.client.mark_read(&conversation).await.is_ok() {
                        let e = self
                            .marked
                            .entry((user as usize, conv as usize))
                            .or_default();
                        *e = (*e).max(seq);
                    }
                }
            }
        }
    }

    /// The app logs in again when its client stopped (kicked, token expired).
    async fn watchdog(&mut self) {
        for n in &mut self.nodes {
            if n.client.state().is_terminal() && n.login.is_finished() {
                n.login = spawn_login(&n.client);
            }
        }
    }

    /// Vendor-stored messages by others in `user`'s conversations.
    fn owed_to(&self, user: usize) -> Vec<Message> {
        let me = &self.users[user];
        self.conversations
            .iter()
            .zip(&self.members)
            .filter(|(_, m)| m.contains(&(user as u8)))
            .flat_map(|(c, _)| self.vendor.stored_messages(c))
            .filter(|m| &m.sender != me)
            .collect()
    }

    /// Ends the faults, sends one more message per member and conversation (so every lost
    /// tail shows as a hole), waits until every outbox is empty and every app has
    /// acknowledged everything it is owed, then checks the ledgers.
    async fn settle_and_check(&mut self) -> Outcome {
        for n in &mut self.nodes {
            n.faults = PushFaults::default();
            n.vendor.set_push_faults(PushFaults::default());
            n.vendor.lose_send_acks(0);
            for op in SimOp::ALL {
                n.vendor
                    .fail_next(op.vendor_op(), 0, ServiceError::Unavailable(String::new()));
            }
        }
        self.watchdog().await;
        if self.final_messages {
            // Every hole becomes visible: each client must fetch it while online (a
            // detected gap is always fetched), with no reconnect to help.
            for c in 0..self.conversations.len() {
                for u in self.members[c].clone() {
                    self.send(u as usize, c, true).await;
                }
            }
        } else {
            // Every connection drops once: each client catches up whatever tail it lost
            // (a push lost after the last message of a conversation shows as no hole).
            for u in self.users.clone() {
                self.vendor.disconnect(&u);
            }
        }
        let deadline = tokio::time::Instant::now() + SETTLE_DEADLINE;
        let mut missing: Vec<String>;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.vendor.sweep();
            self.watchdog().await;
            missing = Vec::new();
            for (i, n) in self.nodes.iter().enumerate() {
                match n.client.outbox().await {
                    Ok(items) => {
                        for item in items {
                            if let SendStatus::Failed { .. } = item.status {
                                let _ = n.client.resend(&item.message.client_id).await;
                            }
                            missing.push(format!(
                                "u{i}'s outbox still holds {} ({:?})",
                                text_of_outgoing(&item),
                                item.status
                            ));
                        }
                    }
                    Err(e) => missing.push(format!("u{i}: outbox unreadable: {e}")),
                }
                let acked = acknowledged_texts(&self.ledgers[i]);
                for m in self.owed_to(i) {
                    let t = text_of(&m);
                    if !acked.contains(&t) {
                        missing.push(format!(
                            "u{i}'s app has not acknowledged {t} (client state {:?})",
                            n.client.state()
                        ));
                    }
                }
                let entries = self.ledgers[i].lock();
                let handed = entries
                    .iter()
                    .filter_map(|e| match e {
                        ReceiverEntry::Event { position, .. } => Some(*position),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                let acked_to = entries
                    .iter()
                    .rev()
                    .find_map(|e| match e {
                        ReceiverEntry::Acked(p) => Some(*p),
                        ReceiverEntry::Open { acked, .. } => Some(*acked),
                        _ => None,
                    })
                    .unwrap_or(0);
                if acked_to < handed {
                    missing.push(format!(
                        "u{i}'s app acknowledged up to {acked_to} of {handed} handed out"
                    ));
                }
            }
            // Unread counts settle last: an own message the vendor acknowledged reaches
            // the conversation list a task hop after it leaves the outbox (the simulation,
            // seed 9835056043869791330 schedule 1501, checked in between). A count that never
            // agrees is reported at the deadline.
            if missing.is_empty() {
                for i in 0..self.nodes.len() {
                    missing.extend(self.unread_violations(i));
                }
            }
            if missing.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        // Let in-flight acks land, then stop the apps before reading the ledgers.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.check(missing)
    }

    /// The conversations user `i` is a member of, by index.
    fn conversations_of(&self, i: usize) -> BTreeSet<usize> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.contains(&(i as u8)))
            .map(|(c, _)| c)
            .collect()
    }

    /// Where `i`'s unread counts disagree with the vendor: per conversation, messages of
    /// others after the later of the read mark and `i`'s own last message, by the vendor's
    /// sequence; and the total against the rows.
    fn unread_violations(&self, i: usize) -> Vec<String> {
        let mut out = Vec::new();
        let user = &self.users[i];
        let mine = self.conversations_of(i);
        let rows = self.nodes[i].client.conversations(0, usize::MAX);
        let mut total = 0u64;
        for c in &mine {
            let conv = &self.conversations[*c];
            let msgs = self.vendor.stored_messages(conv);
            let own = msgs
                .iter()
                .filter(|m| &m.sender == user)
                .filter_map(|m| m.seq.map(|s| s.0))
                .max()
                .unwrap_or(0);
            let read = self.marked.get(&(i, *c)).copied().unwrap_or(0).max(own);
            let expected = msgs
                .iter()
                .filter(|m| &m.sender != user && m.seq.is_some_and(|s| s.0 > read))
                .count() as u64;
            let shown = rows.iter().find(|r| &r.id == conv).map_or(0, |r| r.unread);
            total += shown;
            if shown != expected {
                let listing: Vec<String> = msgs
                    .iter()
                    .map(|m| {
                        format!(
                            "seq {} {} from {} at {} ms",
                            m.seq.map_or(0, |s| s.0),
                            m.server_id,
                            m.sender,
                            m.server_time.as_millis() - EPOCH_MS
                        )
                    })
                    .collect();
                out.push(format!(
                    "u{i}: unread: c{c} shows {shown} unread, expected {expected} \
                     (others' messages after seq {read}: marked read up to {}, own \
                     last {own}; the vendor holds: {})",
                    self.marked.get(&(i, *c)).copied().unwrap_or(0),
                    listing.join(", ")
                ));
            }
        }
        let client_total = self.nodes[i].client.total_unread();
        if client_total != total {
            out.push(format!(
                "u{i}: unread: total_unread {client_total}, rows sum to {total}"
            ));
        }
        out
    }

    fn check(&self, missing: Vec<String>) -> Outcome {
        let mut outcome = Outcome {
            crashes: self.crashes,
            fingerprint: self.fingerprint(),
            ..Outcome::default()
        };
        let v = &mut outcome.violations;
        v.extend(self.harness_errors.iter().cloned());
        for m in missing.iter().take(10) {
            v.push(format!(
                "stuck: after {} s of virtual time: {m}",
                SETTLE_DEADLINE.as_secs()
            ));
        }
        outcome.confirmed = self
            .sent
            .iter()
            .flatten()
            .filter(|e| matches!(e, SenderEntry::Confirmed(_)))
            .count();
        // Where each text is: conversation index, sequence, sender index.
        let mut stored: HashMap<String, (usize, u64, usize)> = HashMap::new();
        for (c, conv) in self.conversations.iter().enumerate() {
            for m in self.vendor.stored_messages(conv) {
                let t = text_of(&m);
                let seq = m.seq.map_or(0, |s| s.0);
                if let Some(a) = author_of(&t) {
                    stored.insert(t, (c, seq, a));
                }
            }
        }
        for (i, user) in self.users.iter().enumerate() {
            let mine = self.conversations_of(i);
            // The crash harness's checker, with every peer as one "sender" and this user's
            // own sends as unconfirmed (their echo may come back once, need not).
            let mut sender = String::new();
            for (j, entries) in self.sent.iter().enumerate() {
                for e in entries {
                    let text = match e {
                        SenderEntry::Attempt(t) | SenderEntry::Confirmed(t) => t,
                        _ => continue,
                    };
                    let Some(&c) = self.queued.get(text) else {
                        continue;
                    };
                    if !mine.contains(&c) {
                        continue;
                    }
                    if j == i && matches!(e, SenderEntry::Confirmed(_)) {
                        continue;
                    }
                    sender.push_str(&format!("{e}\n"));
                }
            }
            sender.push_str(&format!("{}\n", SenderEntry::OutboxEmpty));
            let entries = self.ledgers[i].lock().clone();
            let mut receiver = String::new();
            for e in &entries {
                let line = match e {
                    ReceiverEntry::Event {
                        position,
                        origin,
                        content,
                        ..
                    } => ReceiverEntry::Event {
                        position: *position,
                        origin: origin.clone(),
                        sender: "peer".into(),
                        content: content.clone(),
                    },
                    other => other.clone(),
                };
                receiver.push_str(&format!("{line}\n"));
                // A reopened subscription's position is acknowledged durably, whether or
                // not the `ack` that wrote it returned before the crash.
                if let ReceiverEntry::Open { acked, .. } = e
                    && *acked > 0
                {
                    receiver.push_str(&format!("{}\n", ReceiverEntry::Acked(*acked)));
                }
            }
            let mut audit = String::new();
            for c in &mine {
                for m in self.vendor.stored_messages(&self.conversations[*c]) {
                    if &m.sender != user {
                        audit.push_str(&format!(
                            "{}\n",
                            VendorEntry {
                                server_id: m.server_id.to_string(),
                                sender: "peer".into(),
                                content: text_of(&m),
                            }
                        ));
                    }
                }
            }
            match check_ledgers(&sender, &receiver, Some(&audit), "peer", missing.is_empty()) {
                Ok(verdict) => {
                    outcome.delivered += verdict.delivered;
                    for x in verdict.violations {
                        // The audit lists others' messages only; my own stored ones may
                        // come back to my app once (after a crash lost their local copy).
                        let shown = x.to_string();
                        let own_stored = x.kind() == "unknown"
                            && shown
                                .strip_prefix("unknown: ")
                                .and_then(|d| d.split(' ').next())
                                .is_some_and(|t| author_of(t) == Some(i) && stored.contains_key(t));
                        if !own_stored {
                            v.push(format!("u{i}: {shown}"));
                        }
                    }
                }
                Err(e) => v.push(format!("u{i}: harness: malformed ledger: {e}")),
            }
            // Per-conversation order: along the journal positions, each conversation's
            // sequences rise.
            let mut by_position: BTreeMap<u64, String> = BTreeMap::new();
            for e in &entries {
                if let ReceiverEntry::Event {
                    position, content, ..
                } = e
                {
                    by_position
                        .entry(*position)
                        .or_insert_with(|| content.clone());
                }
            }
            let mut last: HashMap<usize, (u64, u64, String)> = HashMap::new();
            for (position, text) in &by_position {
                let Some(&(c, seq, _)) = stored.get(text) else {
                    continue;
                };
                if let Some((p0, s0, t0)) = last.get(&c)
                    && *s0 >= seq
                {
                    v.push(format!(
                        "u{i}: order: in c{c}, {t0} (seq {s0}) at position {p0} before \
                             {text} (seq {seq}) at position {position}"
                    ));
                }
                last.insert(c, (*position, seq, text.clone()));
            }
            // Unread (checked once everything else settled; the settle loop waited for it).
            if missing.is_empty() {
                v.extend(self.unread_violations(i));
            }
        }
        outcome
    }

    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for l in &self.ledgers {
            for e in l.lock().iter() {
                e.to_string().hash(&mut h);
            }
        }
        for e in self.sent.iter().flatten() {
            e.to_string().hash(&mut h);
        }
        h.finish()
    }

    fn shutdown(&mut self) {
        for n in self.nodes.drain(..) {
            n.app.abort();
            n.login.abort();
        }
    }
}

/// Starts `login()` in its own task (the app waits for it without ever cancelling it).
fn spawn_login(client: &Arc<ImClient>) -> JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move {
        let _ = client.login().await;
    })
}

fn text_of_outgoing(item: &OutboxItem) -> String {
    match &item.message.content {
        Content::Text(t) => t.clone(),
        Content::Custom { type_tag, .. } => type_tag.clone(),
        Content::Recalled { .. } => String::new(),
    }
}

fn push(ledger: &Ledger, entry: ReceiverEntry) {
    ledger.lock().push(entry);
}

/// Texts whose events the app acknowledged (an `ack` covering them returned, or a later
/// open started past them).
fn acknowledged_texts(ledger: &Ledger) -> BTreeSet<String> {
    let entries = ledger.lock();
    let mut done = BTreeSet::new();
    let mut pending: Vec<(u64, String)> = Vec::new();
    for e in entries.iter() {
        let up_to = match e {
            ReceiverEntry::Event {
                position, content, ..
            } => {
                pending.push((*position, content.clone()));
                continue;
            }
            ReceiverEntry::Acked(p) => *p,
            ReceiverEntry::Open { acked, .. } => *acked,
            _ => continue,
        };
        pending.retain(|(p, c)| {
            if *p <= up_to {
                done.insert(c.clone());
                false
            } else {
                true
            }
        });
        if matches!(e, ReceiverEntry::Open { .. }) {
            pending.clear();
        }
    }
    done
}

/// The app: reads the durable subscription in random batches, records each event, thinks
/// a little, acknowledges (sometimes in two steps), forever.
async fn app(
    mut sub: DurableSubscription,
    ledger: Ledger,
    mut rng: StdRng,
    sabotage: Option<Sabotage>,
) {
    loop {
        let max = rng.random_range(1..=8);
        let Ok(batch) = sub.next_batch(max).await else {
            return;
        };
        for e in &batch {
            push(
                &ledger,
                ReceiverEntry::Event {
                    position: e.position,
                    origin: format!("{:?}", e.origin).to_lowercase(),
                    sender: e.message.sender.to_string(),
                    content: text_of(&e.message),
                },
            );
        }
        let Some(last) = batch.last().map(|e| e.position) else {
            continue;
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
        let first = batch.first().map_or(last, |e| e.position);
        let mut targets = vec![last];
        if last > first && rng.random_bool(0.3) {
            targets.insert(0, rng.random_range(first..last));
        }
        for p in targets {
            push(&ledger, ReceiverEntry::Acking(p));
            if sub.ack(p).await.is_err() {
                return;
            }
            push(&ledger, ReceiverEntry::Acked(p));
        }
        if sabotage == Some(Sabotage::AppSkipsAck) {
            // Acknowledge what has not been processed yet: one event may be handed out
            // and lost. (The store refuses positions not handed out: ask for one more.)
            if let Ok(more) = sub.next_batch(1).await
                && let Some(e) = more.first()
            {
                let _ = sub.ack(e.position).await;
            }
        }
    }
}
