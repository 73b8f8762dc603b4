//! The crash harness: a client in a child process (`im-crash-client`) against a vendor in
//! another process (`im-vendor-sim`, or a running Prosody), killed with SIGKILL at seeded
//! points (during login and sync, mid-send, between a batch and its acknowledgement, mid-ack)
//! and restarted on the same store, then judged on the ledgers the children append to.
//!
//! Two clients run at once: a *sender* that queues numbered messages with `ImClient::send`
//! and a *receiver* that reads them through a durable subscription and acknowledges them in
//! seeded random batches. Each appends one line per step to its ledger with a plain
//! `O_APPEND` write, which survives SIGKILL (no flush is needed or done). After the last kill
//! point both are run to completion (the sender drains its outbox; a third child lists what
//! the vendor stored), and [`check_ledgers`] demands:
//!
//! * every `send()` that returned `Ok` was stored once by the vendor and reached the
//!   receiver exactly once (at one position); an unconfirmed send reaches it at most once;
//! * the positions handed out are contiguous from 1, each always with the same message;
//! * after each restart the subscription resumes right after the acknowledged position:
//!   never an event whose `ack` had returned, never skipping one the app had not
//!   acknowledged;
//! * whatever the vendor stored reached the receiver; nothing stays in the outbox.
//!
//! The ledger lines are the [`SenderEntry`], [`ReceiverEntry`] and [`VendorEntry`] types, so
//! the client binary and the checker share one format. A failure names its seed
//! ([`CrashError`]); `IM_CRASH_SEED` replays a seed's plan (victims, triggers, delays, batch
//! sizes), though not the exact interleaving of two processes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The name of the receiver's durable subscription.
pub const SUBSCRIPTION: &str = "crash-ledger";

/// How long the final run waits without the receiver acknowledging anything new.
const STALL: Duration = Duration::from_secs(20);

/// The environment variable that replays a seed.
pub const SEED_ENV: &str = "IM_CRASH_SEED";

/// The seed to use: `IM_CRASH_SEED` when set (and a number), else a fresh random one.
pub fn seed_from_env() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random)
}

// ---------------------------------------------------------------------------------------
// Ledger lines
// ---------------------------------------------------------------------------------------

/// Replaces line breaks so a value stays on its ledger line.
pub fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Replaces whitespace so a value is one field of a ledger line.
pub fn one_word(s: &str) -> String {
    let w: String = s
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if w.is_empty() { "-".into() } else { w }
}

/// A line of the sender's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEntry {
    /// An incarnation started (`start TAG`).
    Start {
        /// The incarnation's tag.
        tag: String,
    },
    /// `send()` is about to be called with this content (`attempt CONTENT`).
    Attempt(String),
    /// `send()` returned `Ok` for this content (`confirmed CONTENT`).
    Confirmed(String),
    /// The final run found the outbox empty (`outbox-empty`).
    OutboxEmpty,
    /// The final run gave up with this item still queued (`stuck CONTENT STATUS`).
    Stuck {
        /// The queued message's content.
        content: String,
        /// Its status, as debug text.
        status: String,
    },
}

impl fmt::Display for SenderEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SenderEntry::Start { tag } => write!(f, "start {}", one_word(tag)),
            SenderEntry::Attempt(c) => write!(f, "attempt {}", one_word(c)),
            SenderEntry::Confirmed(c) => write!(f, "confirmed {}", one_word(c)),
            SenderEntry::OutboxEmpty => write!(f, "outbox-empty"),
            SenderEntry::Stuck { content, status } => {
                write!(f, "stuck {} {}", one_word(content), one_line(status))
            }
        }
    }
}

impl FromStr for SenderEntry {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        let word = |what: &str| {
            if rest.is_empty() || rest.contains(' ') {
                Err(format!(
                    "bad sender ledger line {line:?}: expected `{what} WORD`"
                ))
            } else {
                Ok(rest.to_string())
            }
        };
        Ok(match kind {
            "start" => SenderEntry::Start {
                tag: word("start")?,
            },
            "attempt" => SenderEntry::Attempt(word("attempt")?),
            "confirmed" => SenderEntry::Confirmed(word("confirmed")?),
            "outbox-empty" => SenderEntry::OutboxEmpty,
            "stuck" => {
                let (content, status) = rest.split_once(' ').unwrap_or((rest, ""));
                SenderEntry::Stuck {
                    content: content.to_string(),
                    status: status.to_string(),
                }
            }
            _ => return Err(format!("unknown sender ledger line {line:?}")),
        })
    }
}

/// A line of the receiver's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEntry {
    /// An incarnation opened the subscription, which reported this acknowledged position
    /// (`open TAG ACKED`).
    Open {
        /// The incarnation's tag.
        tag: String,
        /// `DurableSubscription::acked()` right after opening.
        acked: u64,
    },
    /// An event handed out by `next_batch` (`event POSITION ORIGIN SENDER CONTENT`).
    Event {
        /// Its position.
        position: u64,
        /// How it arrived (`online`, `offline`, `history`).
        origin: String,
        /// Who sent it.
        sender: String,
        /// Its text.
        content: String,
    },
    /// `ack(position)` is about to be called (`acking POSITION`).
    Acking(u64),
    /// `ack(position)` returned `Ok` (`acked POSITION`).
    Acked(u64),
    /// The final run stopped cleanly at this acknowledged position (`stopped ACKED`).
    Stopped {
        /// `acked()` at the end.
        acked: u64,
    },
}

fn number(line: &str, s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("bad number {s:?} in ledger line {line:?}"))
}

impl fmt::Display for ReceiverEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiverEntry::Open { tag, acked } => write!(f, "open {} {acked}", one_word(tag)),
            ReceiverEntry::Event {
                position,
                origin,
                sender,
                content,
            } => write!(
                f,
                "event {position} {} {} {}",
                one_word(origin),
                one_word(sender),
                one_word(content)
            ),
            ReceiverEntry::Acking(p) => write!(f, "acking {p}"),
            ReceiverEntry::Acked(p) => write!(f, "acked {p}"),
            ReceiverEntry::Stopped { acked } => write!(f, "stopped {acked}"),
        }
    }
}

impl FromStr for ReceiverEntry {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let fields: Vec<&str> = line.split(' ').collect();
        Ok(match fields.as_slice() {
            ["open", tag, acked] => ReceiverEntry::Open {
                tag: (*tag).to_string(),
                acked: number(line, acked)?,
            },
            ["event", position, origin, sender, content] => ReceiverEntry::Event {
                position: number(line, position)?,
                origin: (*origin).to_string(),
                sender: (*sender).to_string(),
                content: (*content).to_string(),
            },
            ["acking", p] => ReceiverEntry::Acking(number(line, p)?),
            ["acked", p] => ReceiverEntry::Acked(number(line, p)?),
            ["stopped", acked] => ReceiverEntry::Stopped {
                acked: number(line, acked)?,
            },
            _ => return Err(format!("unknown receiver ledger line {line:?}")),
        })
    }
}

/// A line of the vendor audit: one message the vendor stored in the conversation
/// (`stored SERVER_ID SENDER CONTENT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorEntry {
    /// The vendor's id.
    pub server_id: String,
    /// Who sent it.
    pub sender: String,
    /// Its text.
    pub content: String,
}

impl fmt::Display for VendorEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stored {} {} {}",
            one_word(&self.server_id),
            one_word(&self.sender),
            one_word(&self.content)
        )
    }
}

impl FromStr for VendorEntry {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        match line.split(' ').collect::<Vec<_>>().as_slice() {
            ["stored", id, sender, content] => Ok(VendorEntry {
                server_id: (*id).to_string(),
                sender: (*sender).to_string(),
                content: (*content).to_string(),
            }),
            _ => Err(format!("unknown vendor audit line {line:?}")),
        }
    }
}

/// Parses a ledger's complete lines. A last line without its newline is a write the kill
/// interrupted (or one still being written) and is ignored; an empty line is skipped.
pub fn parse_ledger<T: FromStr<Err = String>>(text: &str) -> Result<Vec<T>, String> {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::parse)
        .collect()
}

// ---------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------

/// One broken rule found in the ledgers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A confirmed send, or a message the vendor stored, never reached the receiver (or
    /// never reached the vendor).
    Lost(String),
    /// A message reached the receiver at two positions, was handed out twice in one run, or
    /// was stored twice by the vendor.
    Duplicated(String),
    /// Something stayed queued: the outbox did not empty, or the subscription ended with
    /// unacknowledged events.
    Stuck(String),
    /// A position the app never acknowledged was never handed out (or was jumped over).
    Skipped(String),
    /// An event handed out again after its acknowledgement had returned.
    RedeliveredAcknowledged(String),
    /// One position carried two different messages.
    Inconsistent(String),
    /// A message nobody sent, or from someone else.
    Unknown(String),
}

impl Violation {
    /// The rule's name, as printed.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Lost(_) => "lost",
            Violation::Duplicated(_) => "duplicated",
            Violation::Stuck(_) => "stuck",
            Violation::Skipped(_) => "skipped",
            Violation::RedeliveredAcknowledged(_) => "redelivered acknowledged",
            Violation::Inconsistent(_) => "inconsistent",
            Violation::Unknown(_) => "unknown",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Violation::Lost(d)
            | Violation::Duplicated(d)
            | Violation::Stuck(d)
            | Violation::Skipped(d)
            | Violation::RedeliveredAcknowledged(d)
            | Violation::Inconsistent(d)
            | Violation::Unknown(d) => d,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.detail())
    }
}

/// What the ledgers show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Every broken rule, in the order found.
    pub violations: Vec<Violation>,
    /// Sends that returned `Ok`.
    pub confirmed: usize,
    /// Sends attempted (some killed before `send()` returned).
    pub attempted: usize,
    /// Distinct messages the receiver got.
    pub delivered: usize,
    /// Of those, sends that never returned `Ok` (killed after queuing durably).
    pub unconfirmed_delivered: usize,
    /// Events handed out again after a restart because they had not been acknowledged
    /// (allowed, and expected when a kill lands between a batch and its `ack`).
    pub redelivered_unacknowledged: usize,
    /// Restarts of the receiver (incarnations after the first).
    pub receiver_restarts: usize,
    /// Distinct messages the vendor stored, when audited.
    pub vendor_stored: Option<usize>,
}

impl Verdict {
    /// How many violations of `kind` (a [`Violation::kind`] name).
    pub fn count(&self, kind: &str) -> usize {
        self.violations.iter().filter(|v| v.kind() == kind).count()
    }

    /// Whether every rule held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = [
            "lost",
            "duplicated",
            "stuck",
            "skipped",
            "redelivered acknowledged",
            "inconsistent",
            "unknown",
        ];
        let counts: Vec<String> = kinds
            .iter()
            .map(|k| format!("{} {k}", self.count(k)))
            .collect();
        write!(
            f,
            "{} ({} confirmed, {} delivered)",
            counts.join(", "),
            self.confirmed,
            self.delivered
        )?;
        for kind in kinds {
            let of_kind: Vec<&Violation> = self
                .violations
                .iter()
                .filter(|v| v.kind() == kind)
                .collect();
            for v in of_kind.iter().take(15) {
                write!(f, "\n  {v}")?;
            }
            if of_kind.len() > 15 {
                write!(f, "\n  … and {} more {kind}", of_kind.len() - 15)?;
            }
        }
        Ok(())
    }
}

/// `position a` or `positions a..=b`.
fn positions(a: u64, b: u64) -> String {
    if a == b {
        format!("position {a}")
    } else {
        format!("positions {a}..={b}")
    }
}

/// Checks the ledgers of one campaign: the sender's, the receiver's, and (when audited) the
/// vendor's list of what it stored. `sender_user` is the sender's account: events from
/// anyone else are [`Violation::Unknown`]. `finished` says the campaign ran its final phase,
/// so the outbox must have been reported empty and the subscription fully acknowledged.
/// `Err` is a malformed ledger (a harness bug, not a client's).
pub fn check_ledgers(
    sender_ledger: &str,
    receiver_ledger: &str,
    vendor_audit: Option<&str>,
    sender_user: &str,
    finished: bool,
) -> Result<Verdict, String> {
    let sender: Vec<SenderEntry> = parse_ledger(sender_ledger)?;
    let receiver: Vec<ReceiverEntry> = parse_ledger(receiver_ledger)?;
    let mut verdict = Verdict::default();
    let v = &mut verdict.violations;

    let mut attempted = BTreeSet::new();
    let mut confirmed = BTreeSet::new();
    let mut outbox_empty = false;
    for e in &sender {
        match e {
            SenderEntry::Attempt(c) => {
                if !attempted.insert(c.clone()) {
                    return Err(format!("the sender attempted {c} twice (harness bug)"));
                }
            }
            SenderEntry::Confirmed(c) => {
                if !attempted.contains(c) {
                    return Err(format!("{c} confirmed without an attempt line"));
                }
                confirmed.insert(c.clone());
            }
            SenderEntry::OutboxEmpty => outbox_empty = true,
            SenderEntry::Stuck { content, status } => v.push(Violation::Stuck(format!(
                "{content} still in the outbox at the end ({status})"
            ))),
            SenderEntry::Start { .. } => {}
        }
    }
    if finished && !outbox_empty {
        v.push(Violation::Stuck(
            "the sender's final run never reported an empty outbox".into(),
        ));
    }
    verdict.attempted = attempted.len();
    verdict.confirmed = confirmed.len();

    // The receiver's ledger, in order. `acked_lo`: the highest position whose `ack` had
    // returned (durable by contract); `acking_hi`: the highest the app ever asked to
    // acknowledge. After a restart the subscription must resume in (acked_lo, acking_hi + 1].
    let mut acked_lo = 0u64;
    let mut acking_hi = 0u64;
    let mut next: Option<u64> = None;
    let mut tag = String::new();
    let mut incarnations = 0usize;
    let mut by_position: BTreeMap<u64, String> = BTreeMap::new();
    let mut by_content: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut jumped: BTreeSet<u64> = BTreeSet::new();
    for e in &receiver {
        match e {
            ReceiverEntry::Open { tag: t, acked } => {
                incarnations += 1;
                tag.clone_from(t);
                if *acked < acked_lo {
                    v.push(Violation::RedeliveredAcknowledged(format!(
                        "run {t} reopened the subscription at acknowledged position {acked}, \
                         but ack({acked_lo}) had returned before the kill"
                    )));
                }
                if *acked > acking_hi {
                    v.push(Violation::Skipped(format!(
                        "run {t} reopened the subscription at acknowledged position {acked}, \
                         but the app never acknowledged beyond {acking_hi}: {} \
                         taken as acknowledged",
                        positions(acking_hi + 1, *acked)
                    )));
                }
                next = Some(acked + 1);
            }
            ReceiverEntry::Event {
                position,
                sender,
                content,
                ..
            } => {
                let Some(expected) = next else {
                    return Err(format!("event {position} before any open line"));
                };
                let p = *position;
                if p <= acked_lo {
                    v.push(Violation::RedeliveredAcknowledged(format!(
                        "position {p} ({content}) handed out again in run {tag} although \
                         ack({acked_lo}) had returned"
                    )));
                } else if p < expected {
                    v.push(Violation::Duplicated(format!(
                        "position {p} ({content}) handed out twice in run {tag}"
                    )));
                } else if p > expected {
                    v.push(Violation::Skipped(format!(
                        "run {tag} handed out position {p} after {}: {} skipped",
                        expected - 1,
                        positions(expected, p - 1)
                    )));
                    jumped.extend(expected..p);
                }
                next = Some(expected.max(p + 1));
                match by_position.get(&p) {
                    Some(c) if c != content => v.push(Violation::Inconsistent(format!(
                        "position {p} carried {c} and later {content}"
                    ))),
                    Some(_) => verdict.redelivered_unacknowledged += 1,
                    None => {
                        by_position.insert(p, content.clone());
                    }
                }
                by_content.entry(content.clone()).or_default().insert(p);
                if sender != sender_user {
                    v.push(Violation::Unknown(format!(
                        "position {p} ({content}) came from {sender}, not {sender_user}"
                    )));
                }
            }
            ReceiverEntry::Acking(p) => {
                if next.is_none_or(|n| *p >= n) {
                    return Err(format!("acking {p} beyond what run {tag} was handed"));
                }
                acking_hi = acking_hi.max(*p);
            }
            ReceiverEntry::Acked(p) => acked_lo = acked_lo.max(*p),
            ReceiverEntry::Stopped { .. } => {}
        }
    }
    verdict.receiver_restarts = incarnations.saturating_sub(1);

    let last = by_position.keys().next_back().copied().unwrap_or(0);
    let missing: Vec<u64> = (1..=last)
        .filter(|p| !by_position.contains_key(p) && !jumped.contains(p))
        .collect();
    for chunk in missing.chunk_by(|a, b| a + 1 == *b) {
        if let (Some(a), Some(b)) = (chunk.first(), chunk.last()) {
            v.push(Violation::Skipped(format!(
                "{} never handed out (the last one is {last})",
                positions(*a, *b)
            )));
        }
    }
    for (content, positions) in &by_content {
        if positions.len() > 1 {
            v.push(Violation::Duplicated(format!(
                "{content} delivered at positions {positions:?}"
            )));
        }
        if !attempted.contains(content) {
            v.push(Violation::Unknown(format!(
                "{content} delivered but never sent"
            )));
        }
    }
    if finished && acked_lo < last {
        v.push(Violation::Stuck(format!(
            "the subscription ended with {} handed out, never acknowledged",
            positions(acked_lo + 1, last)
        )));
    }
    // Delivered means acknowledged: an event handed out but never acknowledged (its run was
    // killed first) must be handed out again, or it is lost to the app.
    let acked = acknowledged(&receiver);
    verdict.delivered = acked.len();
    verdict.unconfirmed_delivered = acked.iter().filter(|c| !confirmed.contains(*c)).count();
    let missing = |c: &str| -> &'static str {
        if by_content.contains_key(c) {
            "it was handed out but never acknowledged, and never handed out again"
        } else {
            "the durable subscriber never got it"
        }
    };

    // The vendor's list, when audited: what it stored (content → its ids).
    let stored: Option<BTreeMap<String, BTreeSet<String>>> = match vendor_audit {
        None => None,
        Some(audit) => {
            let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for s in parse_ledger::<VendorEntry>(audit)?
                .into_iter()
                .filter(|s| s.sender == sender_user)
            {
                ids.entry(s.content).or_default().insert(s.server_id);
            }
            Some(ids)
        }
    };
    // One loss per message, saying where it went missing.
    for c in &confirmed {
        if acked.contains(c) {
            continue;
        }
        let detail = match &stored {
            Some(ids) if !ids.contains_key(c) => "the vendor never stored it".to_string(),
            Some(_) => format!("the vendor stored it, {}", missing(c)),
            None => missing(c).to_string(),
        };
        v.push(Violation::Lost(format!(
            "{c}: send() returned Ok; {detail}"
        )));
    }
    if let Some(ids) = &stored {
        verdict.vendor_stored = Some(ids.len());
        for (content, ids_of) in ids {
            // The same id twice is one message (an archive may list a resend under the
            // same id); two ids are two messages.
            if ids_of.len() > 1 {
                v.push(Violation::Duplicated(format!(
                    "{content} stored by the vendor as {} messages {ids_of:?}",
                    ids_of.len()
                )));
            }
            if !acked.contains(content) && !confirmed.contains(content) {
                v.push(Violation::Lost(format!(
                    "{content}: stored by the vendor (its send() had not returned); {}",
                    missing(content)
                )));
            }
        }
        for c in by_content.keys() {
            if !ids.contains_key(c) {
                v.push(Violation::Unknown(format!(
                    "{c} delivered, but the vendor has no such message"
                )));
            }
        }
    }
    Ok(verdict)
}

/// Checks the ledgers a finished campaign left in `dir` (a kept work directory) again.
pub fn check_work_dir(dir: &Path, sender_user: &str) -> Result<Verdict, String> {
    let audit = dir.join("vendor.audit");
    let audit = audit.exists().then(|| read(&audit)).transpose()?;
    check_ledgers(
        &read(&dir.join("sender.ledger"))?,
        &read(&dir.join("receiver.ledger"))?,
        audit.as_deref(),
        sender_user,
        true,
    )
}

/// The messages the app acknowledged: an event counts once an `ack` covering its position
/// returned in the same run, or the next run reopened past it (the run was killed after its
/// `ack` became durable). A handed-out event whose run was killed before does not count.
fn acknowledged(entries: &[ReceiverEntry]) -> BTreeSet<String> {
    let mut done = BTreeSet::new();
    let mut pending: Vec<(u64, &str)> = Vec::new();
    let mut settle = |pending: &mut Vec<(u64, &str)>, up_to: u64| {
        pending.retain(|(position, content)| {
            let covered = *position <= up_to;
            if covered {
                done.insert((*content).to_string());
            }
            !covered
        });
    };
    for e in entries {
        match e {
            ReceiverEntry::Open { acked, .. } => {
                settle(&mut pending, *acked);
                pending.clear();
            }
            ReceiverEntry::Event {
                position, content, ..
            } => pending.push((*position, content)),
            ReceiverEntry::Acked(p) => settle(&mut pending, *p),
            ReceiverEntry::Acking(_) | ReceiverEntry::Stopped { .. } => {}
        }
    }
    done
}

/// The contents the receiver has acknowledged so far, for the final wait.
fn acknowledged_contents(receiver_ledger: &str) -> Result<BTreeSet<String>, String> {
    Ok(acknowledged(&parse_ledger(receiver_ledger)?))
}

// ---------------------------------------------------------------------------------------
// The campaign
// ---------------------------------------------------------------------------------------

/// Which durable store the clients keep (`im-crash-client --store-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrashStoreKind {
    /// `im_arch::LogStore`, the default.
    #[default]
    Log,
    /// `im_arch::SledStore`.
    Sled,
}

impl CrashStoreKind {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CrashStoreKind::Log => "log",
            CrashStoreKind::Sled => "sled",
        }
    }
}

/// Which vendor the clients talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashVendor {
    /// `im-vendor-sim`, started by the campaign and kept up for its whole length.
    Reference,
    /// A running XMPP server (Prosody) whose accounts exist already.
    Xmpp {
        /// Its client port.
        addr: SocketAddr,
        /// Its domain.
        domain: String,
    },
    /// A running Matrix homeserver (Synapse) whose accounts exist already.
    Matrix {
        /// Its client-API port (plain HTTP).
        addr: SocketAddr,
        /// Its server name.
        server_name: String,
    },
}

impl CrashVendor {
    /// `reference` or `xmpp`.
    pub fn name(&self) -> &'static str {
        match self {
            CrashVendor::Reference => "reference",
            CrashVendor::Xmpp { .. } => "xmpp",
            CrashVendor::Matrix { .. } => "matrix",
        }
    }
}

/// An account: user and token (password on XMPP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user id (XMPP: the local part).
    pub user: String,
    /// The token.
    pub token: String,
}

impl Account {
    /// `user` with `token`.
    pub fn new(user: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            token: token.into(),
        }
    }
}

/// One campaign's settings.
#[derive(Debug, Clone)]
pub struct CrashConfig {
    /// The vendor.
    pub vendor: CrashVendor,
    /// The clients' store.
    pub store: CrashStoreKind,
    /// SIGKILLs to deliver before the final run.
    pub kill_points: u32,
    /// Seed of every random choice of the driver and the children.
    pub seed: u64,
    /// Most messages the sender queues over the whole campaign.
    pub max_messages: u64,
    /// The sender's largest pause between two sends, in milliseconds (seeded, uniform).
    pub sender_pace_ms: u64,
    /// The sender's account.
    pub sender: Account,
    /// The receiver's account.
    pub receiver: Account,
    /// The `im-vendor-sim` binary (used with [`CrashVendor::Reference`]).
    pub vendor_sim: PathBuf,
    /// The `im-crash-client` binary.
    pub client: PathBuf,
    /// Where stores, ledgers and child logs go (created; removed after a success unless
    /// `keep_work_dir`; always kept after a failure).
    pub work_dir: PathBuf,
    /// Keep the work directory after a success too.
    pub keep_work_dir: bool,
    /// How long a kill waits for the phase it aims at before it strikes anyway.
    pub trigger_timeout: Duration,
    /// How long the final run may take to drain the outbox and deliver everything.
    pub drain_timeout: Duration,
    /// The whole campaign's limit: beyond it, the campaign fails as hung.
    pub overall_timeout: Duration,
    /// Progress lines on stderr.
    pub verbose: bool,
}

impl CrashConfig {
    /// A campaign on the reference vendor with the defaults: at most 40 messages per kill point,
    /// accounts `alice`/`bob` with distinct tokens, a fresh work directory under the temp dir.
    pub fn reference(vendor_sim: PathBuf, client: PathBuf, kill_points: u32, seed: u64) -> Self {
        Self::new(
            CrashVendor::Reference,
            Account::new("alice", "tok-alice"),
            Account::new("bob", "tok-bob"),
            vendor_sim,
            client,
            kill_points,
            seed,
        )
    }

    /// A campaign on an XMPP server with existing accounts. The sender is paced to about
    /// 25 messages a second (at most 10 per kill point), below what the XMPP adapter
    /// delivers one conversation at a time (each send waits for the server's
    /// stream-management ack), so the outbox does not pile up.
    pub fn xmpp(
        addr: SocketAddr,
        domain: impl Into<String>,
        sender: Account,
        receiver: Account,
        client: PathBuf,
        kill_points: u32,
        seed: u64,
    ) -> Self {
        let mut config = Self::new(
            CrashVendor::Xmpp {
                addr,
                domain: domain.into(),
            },
            sender,
            receiver,
            PathBuf::new(),
            client,
            kill_points,
            seed,
        );
        config.sender_pace_ms = 80;
        config.max_messages = u64::from(kill_points.max(10)) * 10;
        config
    }

    /// A campaign on a Matrix homeserver with existing accounts, paced like XMPP's.
    pub fn matrix(
        addr: SocketAddr,
        server_name: impl Into<String>,
        sender: Account,
        receiver: Account,
        client: PathBuf,
        kill_points: u32,
        seed: u64,
    ) -> Self {
        let vendor = CrashVendor::Matrix {
            addr,
            server_name: server_name.into(),
        };
        let mut config = Self::new(
            vendor,
            sender,
            receiver,
            PathBuf::new(),
            client,
            kill_points,
            seed,
        );
        config.sender_pace_ms = 80;
        config.max_messages = u64::from(kill_points.max(10)) * 10;
        config
    }

    fn new(
        vendor: CrashVendor,
        sender: Account,
        receiver: Account,
        vendor_sim: PathBuf,
        client: PathBuf,
        kill_points: u32,
        seed: u64,
    ) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let work_dir = std::env::temp_dir().join(format!(
            "im-crash-{}-{seed}-{}-{nanos}",
            vendor.name(),
            std::process::id()
        ));
        Self {
            vendor,
            store: CrashStoreKind::default(),
            kill_points,
            seed,
            max_messages: u64::from(kill_points.max(10)) * 40,
            sender_pace_ms: 12,
            sender,
            receiver,
            vendor_sim,
            client,
            work_dir,
            keep_work_dir: false,
            trigger_timeout: Duration::from_millis(1500),
            drain_timeout: Duration::from_secs(90),
            overall_timeout: Duration::from_secs(180 + 3 * u64::from(kill_points)),
            verbose: false,
        }
    }
}

/// What a passed campaign did.
#[derive(Debug, Clone)]
pub struct CrashSummary {
    /// `reference` or `xmpp`.
    pub vendor: &'static str,
    /// The seed.
    pub seed: u64,
    /// SIGKILLs delivered before the final run.
    pub kill_points: u32,
    /// Kills by victim and the phase it was last seen in (`receiver/mid-ack` …).
    pub kills_by_phase: BTreeMap<String, u32>,
    /// The ledgers' verdict (no violations).
    pub verdict: Verdict,
    /// Wall time of the campaign.
    pub elapsed: Duration,
}

impl fmt::Display for CrashSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.verdict;
        write!(
            f,
            "crash harness ({}): {} kill points, {} lost, {} duplicated, {} stuck, seed {} \
             ({} confirmed sends, {} delivered, {} unconfirmed delivered, {} redelivered \
             unacknowledged, {:.1} s)",
            self.vendor,
            self.kill_points,
            v.count("lost"),
            v.count("duplicated"),
            v.count("stuck"),
            self.seed,
            v.confirmed,
            v.delivered,
            v.unconfirmed_delivered,
            v.redelivered_unacknowledged,
            self.elapsed.as_secs_f64()
        )
    }
}

impl CrashSummary {
    /// The kills by phase, one `victim/phase: n` per entry.
    pub fn kills_line(&self) -> String {
        self.kills_by_phase
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a campaign failed.
#[derive(Debug)]
pub enum CrashProblem {
    /// The ledgers break a rule.
    Violations(Box<Verdict>),
    /// The harness could not run the campaign (a child did not start or died on its own, a
    /// wait passed its deadline, an I/O error).
    Harness(String),
}

impl fmt::Display for CrashProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrashProblem::Violations(v) => write!(f, "{v}"),
            CrashProblem::Harness(h) => write!(f, "{h}"),
        }
    }
}

/// A failed campaign, with the seed that replays it.
#[derive(Debug, thiserror::Error)]
#[error(
    "crash harness ({vendor}) FAILED with seed {seed} (replay: {SEED_ENV}={seed}) after {kills} \
     kill point(s): {problem}\n  ledgers, kill log and child logs kept in {}",
    work_dir.display()
)]
pub struct CrashError {
    /// `reference` or `xmpp`.
    pub vendor: &'static str,
    /// The seed.
    pub seed: u64,
    /// Kill points delivered before the failure.
    pub kills: u32,
    /// What went wrong.
    pub problem: CrashProblem,
    /// The kept work directory.
    pub work_dir: PathBuf,
}

/// The two clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Sender,
    Receiver,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
        }
    }
}

/// What the reader threads report.
enum Report {
    Line { role: Role, run: u32, text: String },
    Eof { role: Role, run: u32 },
}

/// A child process, killed and reaped however the campaign ends.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One running client incarnation and the phases it announced.
struct Running {
    proc: Proc,
    run: u32,
    phases: BTreeMap<String, u32>,
    last_phase: String,
    /// Set when the driver told it to finish: its exit is then expected.
    exit_expected: bool,
    exited: bool,
}

/// What a kill aims at.
#[derive(Debug, Clone)]
enum Trigger {
    /// This long after the decision.
    Delay(Duration),
    /// When the victim announced `phase WORD` `nth` more times, then after `then`.
    Phase {
        word: &'static str,
        nth: u32,
        then: Duration,
        /// Counted from the incarnation's start rather than from now.
        from_start: bool,
    },
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Delay(d) => write!(f, "after {} ms", d.as_millis()),
            Trigger::Phase {
                word, nth, then, ..
            } => write!(f, "{nth}. `{word}` + {} ms", then.as_millis()),
        }
    }
}

/// A name for the phase a victim was last seen in.
fn phase_label(role: Role, last: &str) -> &'static str {
    match (role, last) {
        (_, "" | "open") => "startup",
        (_, "login") => "login/sync",
        (Role::Sender, "send") => "mid-send",
        (Role::Sender, "confirmed") => "after-send",
        (Role::Sender, "sent-all") => "idle",
        (Role::Receiver, "batch") => "before-ack",
        (Role::Receiver, "ack") => "mid-ack",
        (Role::Receiver, "acked") => "after-ack",
        _ => "online",
    }
}

struct Campaign<'a> {
    cfg: &'a CrashConfig,
    rng: StdRng,
    started: Instant,
    tx: mpsc::Sender<Report>,
    rx: mpsc::Receiver<Report>,
    vendor_proc: Option<Proc>,
    vendor_addr: Option<SocketAddr>,
    sender: Option<Running>,
    receiver: Option<Running>,
    next_run: u32,
    kills: u32,
    kills_by_phase: BTreeMap<String, u32>,
    kill_log: std::fs::File,
    last_victim: Option<Role>,
    sent_all: bool,
}

/// Runs one campaign: starts the vendor (reference), runs and kills the clients, runs them to
/// completion and checks the ledgers. Every child is killed and reaped when this returns.
pub fn run_campaign(cfg: &CrashConfig) -> Result<CrashSummary, CrashError> {
    let started = Instant::now();
    let fail = |kills: u32, problem: CrashProblem| CrashError {
        vendor: cfg.vendor.name(),
        seed: cfg.seed,
        kills,
        problem,
        work_dir: cfg.work_dir.clone(),
    };
    std::fs::create_dir_all(&cfg.work_dir).map_err(|e| {
        fail(
            0,
            CrashProblem::Harness(format!("cannot create {}: {e}", cfg.work_dir.display())),
        )
    })?;
    let kill_log = std::fs::File::create(cfg.work_dir.join("kills.log")).map_err(|e| {
        fail(
            0,
            CrashProblem::Harness(format!("cannot create kills.log: {e}")),
        )
    })?;
    let (tx, rx) = mpsc::channel();
    let mut campaign = Campaign {
        cfg,
        rng: StdRng::seed_from_u64(cfg.seed),
        started,
        tx,
        rx,
        vendor_proc: None,
        vendor_addr: None,
        sender: None,
        receiver: None,
        next_run: 0,
        kills: 0,
        kills_by_phase: BTreeMap::new(),
        kill_log,
        last_victim: None,
        sent_all: false,
    };
    let result = campaign.run();
    let kills = campaign.kills;
    let kills_by_phase = std::mem::take(&mut campaign.kills_by_phase);
    // Every child is killed and reaped here, before the verdict is returned.
    drop(campaign);
    match result {
        Ok(verdict) if verdict.passed() => {
            if !cfg.keep_work_dir {
                let _ = std::fs::remove_dir_all(&cfg.work_dir);
            }
            Ok(CrashSummary {
                vendor: cfg.vendor.name(),
                seed: cfg.seed,
                kill_points: kills,
                kills_by_phase,
                verdict,
                elapsed: started.elapsed(),
            })
        }
        Ok(verdict) => Err(fail(kills, CrashProblem::Violations(Box::new(verdict)))),
        Err(problem) => Err(fail(kills, CrashProblem::Harness(problem))),
    }
}

impl Campaign<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.cfg.work_dir.join(name)
    }

    fn slot(&mut self, role: Role) -> &mut Option<Running> {
        match role {
            Role::Sender => &mut self.sender,
            Role::Receiver => &mut self.receiver,
        }
    }

    fn log(&mut self, line: &str) {
        let _ = writeln!(
            self.kill_log,
            "{:>8.3}s {line}",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn check_overall(&self) -> Result<(), String> {
        if self.started.elapsed() > self.cfg.overall_timeout {
            return Err(format!(
                "the campaign passed its overall limit of {} s (hung?)",
                self.cfg.overall_timeout.as_secs()
            ));
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Verdict, String> {
        self.start_vendor()?;
        self.spawn(Role::Receiver)?;
        self.spawn(Role::Sender)?;
        for k in 1..=self.cfg.kill_points {
            self.check_overall()?;
            self.kill_point(k)?;
            if self.cfg.verbose && k % 25 == 0 {
                eprintln!(
                    "crash harness ({}): {k}/{} kill points, {:.1} s",
                    self.cfg.vendor.name(),
                    self.cfg.kill_points,
                    self.started.elapsed().as_secs_f64()
                );
            }
        }
        self.finish()
    }

    fn start_vendor(&mut self) -> Result<(), String> {
        match &self.cfg.vendor {
            CrashVendor::Xmpp { addr, .. } | CrashVendor::Matrix { addr, .. } => {
                self.vendor_addr = Some(*addr);
                Ok(())
            }
            CrashVendor::Reference => {
                let log = self.log_file("vendor-sim.stderr")?;
                let mut cmd = Command::new(&self.cfg.vendor_sim);
                cmd.args(["--listen", "127.0.0.1:0", "--retention-days", "0"])
                    .args(["--seed", &self.cfg.seed.to_string()])
                    .args([
                        "--user",
                        &format!("{}:{}", self.cfg.sender.user, self.cfg.sender.token),
                    ])
                    .args([
                        "--user",
                        &format!("{}:{}", self.cfg.receiver.user, self.cfg.receiver.token),
                    ])
                    .env(
                        "RUST_LOG",
                        std::env::var("IM_CRASH_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
                    )
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(log);
                let mut child = cmd
                    .spawn()
                    .map_err(|e| format!("cannot start {}: {e}", self.cfg.vendor_sim.display()))?;
                let stdout = child.stdout.take();
                self.vendor_proc = Some(Proc { child, stdin: None });
                let stdout = stdout.ok_or("im-vendor-sim has no stdout")?;
                let (atx, arx) = mpsc::channel();
                std::thread::spawn(move || {
                    let mut lines = BufReader::new(stdout).lines();
                    let first = lines.next();
                    let _ = atx.send(first);
                    // Keep draining so the server never writes into a closed pipe.
                    for _ in lines {}
                });
                let line = match arx.recv_timeout(Duration::from_secs(20)) {
                    Ok(Some(Ok(line))) => line,
                    Ok(other) => {
                        return Err(format!(
                            "im-vendor-sim did not announce its address ({other:?}); see {}",
                            self.path("vendor-sim.stderr").display()
                        ));
                    }
                    Err(_) => return Err("im-vendor-sim did not start within 20 s".into()),
                };
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.parse::<SocketAddr>().ok())
                    .ok_or_else(|| format!("no address in im-vendor-sim's line {line:?}"))?;
                self.vendor_addr = Some(addr);
                self.log(&format!("vendor im-vendor-sim on {addr}"));
                Ok(())
            }
        }
    }

    fn log_file(&self, name: &str) -> Result<std::fs::File, String> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .map_err(|e| format!("cannot open {name}: {e}"))
    }

    /// Arguments every client run takes.
    fn client_args(
        &self,
        role: &str,
        account: &Account,
        peer: &Account,
    ) -> Result<Vec<String>, String> {
        let addr = self.vendor_addr.ok_or("no vendor address")?;
        let mut args = vec![
            "--role".to_string(),
            role.to_string(),
            "--addr".into(),
            addr.to_string(),
            "--user".into(),
            account.user.clone(),
            "--token".into(),
            account.token.clone(),
            "--peer".into(),
            peer.user.clone(),
            "--store-kind".into(),
            self.cfg.store.name().into(),
        ];
        match &self.cfg.vendor {
            CrashVendor::Reference => args.extend(["--vendor".into(), "reference".into()]),
            CrashVendor::Xmpp { domain, .. } => args.extend([
                "--vendor".into(),
                "xmpp".into(),
                "--domain".into(),
                domain.clone(),
            ]),
            CrashVendor::Matrix { server_name, .. } => args.extend([
                "--vendor".into(),
                "matrix".into(),
                "--domain".into(),
                server_name.clone(),
            ]),
        }
        Ok(args)
    }

    /// Starts a new incarnation of `role` on its store.
    fn spawn(&mut self, role: Role) -> Result<(), String> {
        self.next_run += 1;
        let run = self.next_run;
        let tag = format!("{}{run}", &role.name()[..1]);
        let (account, peer) = match role {
            Role::Sender => (&self.cfg.sender, &self.cfg.receiver),
            Role::Receiver => (&self.cfg.receiver, &self.cfg.sender),
        };
        let mut args = self.client_args(role.name(), account, peer)?;
        let ledger = self.path(&format!("{}.ledger", role.name()));
        args.extend([
            "--store".into(),
            self.path(&format!("{}.store", role.name()))
                .display()
                .to_string(),
            "--ledger".into(),
            ledger.display().to_string(),
            "--tag".into(),
            tag.clone(),
            "--seed".into(),
            self.rng.random::<u64>().to_string(),
        ]);
        if role == Role::Sender {
            let text = std::fs::read_to_string(&ledger).unwrap_or_default();
            let attempted = parse_ledger::<SenderEntry>(&text)?
                .iter()
                .filter(|e| matches!(e, SenderEntry::Attempt(_)))
                .count() as u64;
            let remaining = self.cfg.max_messages.saturating_sub(attempted);
            args.extend([
                "--start".into(),
                attempted.to_string(),
                "--count".into(),
                remaining.to_string(),
                "--pace-ms".into(),
                self.cfg.sender_pace_ms.to_string(),
            ]);
        }
        let log = self.log_file(&format!("{}.stderr", role.name()))?;
        let mut child = Command::new(&self.cfg.client)
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("IM_CRASH_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.cfg.client.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let proc = Proc { child, stdin };
        let stdout = stdout.ok_or("the client has no stdout")?;
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(text) = line else { break };
                if tx.send(Report::Line { role, run, text }).is_err() {
                    return;
                }
            }
            let _ = tx.send(Report::Eof { role, run });
        });
        self.log(&format!("start {} run {run} ({tag})", role.name()));
        *self.slot(role) = Some(Running {
            proc,
            run,
            phases: BTreeMap::new(),
            last_phase: String::new(),
            exit_expected: false,
            exited: false,
        });
        Ok(())
    }

    /// Handles reports until `until`. A client that exits unasked fails the campaign.
    fn pump_until(&mut self, until: Instant) -> Result<(), String> {
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            match self.rx.recv_timeout(until - now) {
                Ok(report) => self.handle(report)?,
                Err(mpsc::RecvTimeoutError::Timeout) => return Ok(()),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("report channel closed".into());
                }
            }
        }
    }

    fn pump_for(&mut self, d: Duration) -> Result<(), String> {
        self.pump_until(Instant::now() + d)
    }

    fn handle(&mut self, report: Report) -> Result<(), String> {
        match report {
            Report::Line { role, run, text } => {
                let mut sent_all = false;
                if let Some(r) = self.slot(role).as_mut().filter(|r| r.run == run)
                    && let Some(phase) = text.strip_prefix("phase ")
                {
                    let word = phase.split(' ').next().unwrap_or("").to_string();
                    sent_all = word == "sent-all";
                    *r.phases.entry(word.clone()).or_default() += 1;
                    r.last_phase = word;
                }
                if sent_all {
                    self.sent_all = true;
                }
                Ok(())
            }
            Report::Eof { role, run } => {
                let path = self.path(&format!("{}.stderr", role.name()));
                let Some(r) = self.slot(role).as_mut().filter(|r| r.run == run) else {
                    return Ok(()); // an incarnation the driver killed
                };
                r.exited = true;
                if r.exit_expected {
                    return Ok(());
                }
                let status = match r.proc.child.try_wait() {
                    Ok(Some(s)) => s.to_string(),
                    _ => "stdout closed".into(),
                };
                let phase = r.last_phase.clone();
                Err(format!(
                    "the {} (run {run}) exited on its own ({status}) after phase `{phase}`; \
                     its log ends:\n{}",
                    role.name(),
                    tail(&path, 25)
                ))
            }
        }
    }

    fn phase_count(&self, role: Role, word: &str) -> u32 {
        let r = match role {
            Role::Sender => &self.sender,
            Role::Receiver => &self.receiver,
        };
        r.as_ref()
            .and_then(|r| r.phases.get(word).copied())
            .unwrap_or(0)
    }

    /// Waits until `role` announced `word` at least `target` times; `false` on timeout.
    fn wait_phase(
        &mut self,
        role: Role,
        word: &str,
        target: u32,
        until: Instant,
    ) -> Result<bool, String> {
        loop {
            if self.phase_count(role, word) >= target {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(false);
            }
            match self.rx.recv_timeout(until - now) {
                Ok(report) => self.handle(report)?,
                Err(mpsc::RecvTimeoutError::Timeout) => return Ok(false),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("report channel closed".into());
                }
            }
        }
    }

    fn ms(&mut self, range: std::ops::RangeInclusive<u64>) -> Duration {
        Duration::from_millis(self.rng.random_range(range))
    }

    /// A trigger for a victim that was just restarted: during store open, login or sync.
    fn startup_trigger(&mut self) -> Trigger {
        if self.rng.random_bool(0.25) {
            let then = self.ms(0..=10);
            Trigger::Phase {
                word: "open",
                nth: 1,
                then,
                from_start: true,
            }
        } else {
            let then = self.ms(0..=60);
            Trigger::Phase {
                word: "login",
                nth: 1,
                then,
                from_start: true,
            }
        }
    }

    /// A trigger for a victim in its steady state.
    fn steady_trigger(&mut self, role: Role) -> Trigger {
        let roll: f64 = self.rng.random();
        let phase = |word, nth, then| Trigger::Phase {
            word,
            nth,
            then,
            from_start: false,
        };
        match role {
            Role::Sender if !self.sent_all && roll < 0.45 => {
                let nth = self.rng.random_range(1..=40);
                let then = self.ms(0..=2);
                phase("send", nth, then)
            }
            Role::Sender if !self.sent_all && roll < 0.7 => {
                let nth = self.rng.random_range(1..=40);
                phase("confirmed", nth, Duration::ZERO)
            }
            // Once everything is sent, no batch is coming: only delays remain.
            Role::Receiver if !self.sent_all && roll < 0.35 => {
                let nth = self.rng.random_range(1..=6);
                let then = self.ms(0..=2);
                phase("batch", nth, then)
            }
            Role::Receiver if !self.sent_all && roll < 0.7 => {
                let nth = self.rng.random_range(1..=6);
                let then = self.ms(0..=1);
                phase("ack", nth, then)
            }
            _ => Trigger::Delay(self.ms(0..=400)),
        }
    }

    fn kill_point(&mut self, k: u32) -> Result<(), String> {
        // Often the last victim again, while it recovers: kills during startup, login, sync.
        let chained = match self.last_victim {
            Some(v) if self.rng.random_bool(0.35) => Some(v),
            _ => None,
        };
        let victim = chained.unwrap_or_else(|| {
            if self.rng.random_bool(0.5) {
                Role::Sender
            } else {
                Role::Receiver
            }
        });
        let trigger = match chained {
            Some(_) => self.startup_trigger(),
            None => self.steady_trigger(victim),
        };
        let until = Instant::now() + self.cfg.trigger_timeout;
        let mut missed = false;
        match &trigger {
            Trigger::Delay(d) => self.pump_for(*d)?,
            Trigger::Phase {
                word,
                nth,
                then,
                from_start,
            } => {
                let base = if *from_start {
                    0
                } else {
                    self.phase_count(victim, word)
                };
                missed = !self.wait_phase(victim, word, base + nth, until)?;
                self.pump_for(*then)?;
            }
        }
        let running = self
            .slot(victim)
            .take()
            .ok_or_else(|| format!("no running {}", victim.name()))?;
        let Running {
            mut proc,
            run,
            last_phase,
            ..
        } = running;
        // SIGKILL, never a polite shutdown; then reap it so the store's lock is free.
        proc.child
            .kill()
            .map_err(|e| format!("cannot kill the {}: {e}", victim.name()))?;
        let status = proc.child.wait().map_err(|e| format!("wait: {e}"))?;
        drop(proc);
        self.kills += 1;
        let label = phase_label(victim, &last_phase);
        *self
            .kills_by_phase
            .entry(format!("{}/{label}", victim.name()))
            .or_default() += 1;
        self.log(&format!(
            "kill {k}: {} run {run} on {trigger}{} in phase `{last_phase}` ({label}); {status}",
            victim.name(),
            if missed {
                " (not reached: struck anyway)"
            } else {
                ""
            },
        ));
        let pause = match victim {
            Role::Sender => self.ms(0..=100),
            // A receiver that stays away a while comes back to an offline backlog to sync.
            Role::Receiver => self.ms(0..=400),
        };
        self.pump_for(pause)?;
        self.spawn(victim)?;
        self.last_victim = Some(victim);
        Ok(())
    }

    fn tell(&mut self, role: Role, command: &str) -> Result<(), String> {
        let r = self
            .slot(role)
            .as_mut()
            .ok_or_else(|| format!("no running {}", role.name()))?;
        r.exit_expected = true;
        let stdin = r
            .proc
            .stdin
            .as_mut()
            .ok_or_else(|| format!("the {} has no stdin", role.name()))?;
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("cannot tell the {} to {command}: {e}", role.name()))
    }

    /// Waits for `role` to exit after it was told to; kills it past `until`.
    fn wait_exit(&mut self, role: Role, until: Instant) -> Result<bool, String> {
        loop {
            let exited = self.slot(role).as_ref().is_none_or(|r| r.exited);
            if exited {
                if let Some(mut r) = self.slot(role).take() {
                    let _ = r.proc.child.wait();
                }
                return Ok(true);
            }
            if Instant::now() >= until {
                self.slot(role).take();
                return Ok(false);
            }
            self.pump_for(Duration::from_millis(50))?;
        }
    }

    /// The final run: the sender drains its outbox, the vendor is audited, the receiver gets
    /// and acknowledges everything; then the ledgers are checked.
    fn finish(&mut self) -> Result<Verdict, String> {
        self.log("final run");
        let until = Instant::now() + self.cfg.drain_timeout;
        self.tell(Role::Sender, "finish")?;
        let drained = self.wait_exit(Role::Sender, until)?;
        self.log(if drained {
            "the sender's final run ended"
        } else {
            "the sender did not finish in time"
        });
        let audit = self.audit()?;
        let sender_text = read(&self.path("sender.ledger"))?;
        // Everything the vendor stored must reach the receiver (a confirmed send the vendor
        // does not have is lost already: waiting for it would only delay the verdict).
        let target: BTreeSet<String> = parse_ledger::<VendorEntry>(&audit)?
            .into_iter()
            .filter(|s| s.sender == self.cfg.sender.user)
            .map(|s| s.content)
            .collect();
        // Wait until the receiver acknowledged all of it, then a little longer, so a late
        // duplicate has its chance to show. No progress for a long while ends the wait.
        let mut complete = false;
        let mut progress = (0usize, Instant::now());
        while Instant::now() < until {
            let acked = acknowledged_contents(&read(&self.path("receiver.ledger"))?)?;
            if target.is_subset(&acked) {
                complete = true;
                break;
            }
            if acked.len() != progress.0 {
                progress = (acked.len(), Instant::now());
            } else if progress.1.elapsed() > STALL {
                self.log("the receiver made no progress: giving up the final wait");
                break;
            }
            self.pump_for(Duration::from_millis(100))?;
        }
        if complete {
            self.log(&format!(
                "the receiver acknowledged all {} stored",
                target.len()
            ));
            self.pump_for(Duration::from_millis(500))?;
        } else {
            self.log("the receiver did not get everything in time");
        }
        self.tell(Role::Receiver, "stop")?;
        self.wait_exit(Role::Receiver, Instant::now() + Duration::from_secs(15))?;
        self.log("checking");
        check_ledgers(
            &sender_text,
            &read(&self.path("receiver.ledger"))?,
            Some(&audit),
            &self.cfg.sender.user,
            true,
        )
    }

    /// Lists what the vendor stored in the conversation (a third child, as the sender).
    fn audit(&mut self) -> Result<String, String> {
        let ledger = self.path("vendor.audit");
        let mut args = self.client_args("audit", &self.cfg.sender, &self.cfg.receiver)?;
        args.extend(["--ledger".into(), ledger.display().to_string()]);
        args.extend([
            "--store".into(),
            self.path("audit.store").display().to_string(),
        ]);
        let log = self.log_file("audit.stderr")?;
        let child = Command::new(&self.cfg.client)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start the audit: {e}"))?;
        let mut proc = Proc { child, stdin: None };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            match proc.child.try_wait() {
                Ok(Some(s)) if s.success() => break,
                Ok(Some(s)) => {
                    return Err(format!(
                        "the vendor audit failed ({s}); its log ends:\n{}",
                        tail(&self.path("audit.stderr"), 25)
                    ));
                }
                Ok(None) if Instant::now() < until => {
                    self.pump_for(Duration::from_millis(50))?;
                }
                Ok(None) => return Err("the vendor audit did not end within 60 s".into()),
                Err(e) => return Err(format!("wait for the audit: {e}")),
            }
        }
        self.log("vendor audited");
        read(&ledger)
    }
}

fn read(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The last `n` lines of a log file, indented.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender ledger with `n` confirmed sends `s1:0..n`, and the outbox reported empty.
    fn sent(n: u64) -> String {
        let mut s = String::from("start s1\n");
        for i in 0..n {
            s.push_str(&format!("attempt s1:{i}\nconfirmed s1:{i}\n"));
        }
        s.push_str("outbox-empty\n");
        s
    }

    fn event(p: u64, content: &str) -> String {
        format!("event {p} online alice {content}\n")
    }

    /// One receiver run that got and acknowledged `s1:0..n` at positions 1..=n.
    fn received(n: u64) -> String {
        let mut r = String::from("open r1 0\n");
        for i in 0..n {
            r.push_str(&event(i + 1, &format!("s1:{i}")));
        }
        r.push_str(&format!("acking {n}\nacked {n}\nstopped {n}\n"));
        r
    }

    fn check(sender: &str, receiver: &str) -> Verdict {
        check_ledgers(sender, receiver, None, "alice", true).unwrap()
    }

    fn kinds(v: &Verdict) -> Vec<&'static str> {
        v.violations.iter().map(Violation::kind).collect()
    }

    #[test]
    fn ledger_lines_round_trip() {
        let s = [
            SenderEntry::Start { tag: "s1".into() },
            SenderEntry::Attempt("s1:0".into()),
            SenderEntry::Confirmed("s1:0".into()),
            SenderEntry::OutboxEmpty,
            SenderEntry::Stuck {
                content: "s1:0".into(),
                status: "Failed { reason: \"x y\" }".into(),
            },
        ];
        for e in s {
            assert_eq!(e.to_string().parse::<SenderEntry>(), Ok(e));
        }
        let r = [
            ReceiverEntry::Open {
                tag: "r2".into(),
                acked: 7,
            },
            ReceiverEntry::Event {
                position: 8,
                origin: "offline".into(),
                sender: "alice".into(),
                content: "s1:3".into(),
            },
            ReceiverEntry::Acking(8),
            ReceiverEntry::Acked(8),
            ReceiverEntry::Stopped { acked: 8 },
        ];
        for e in r {
            assert_eq!(e.to_string().parse::<ReceiverEntry>(), Ok(e));
        }
        let v = VendorEntry {
            server_id: "m 1".into(),
            sender: "alice".into(),
            content: "s1:0".into(),
        };
        let parsed: VendorEntry = v.to_string().parse().unwrap();
        assert_eq!(parsed.server_id, "m_1");
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let entries: Vec<SenderEntry> = parse_ledger("attempt a\nconfir").unwrap();
        assert_eq!(entries, vec![SenderEntry::Attempt("a".into())]);
        assert!(parse_ledger::<SenderEntry>("bogus line\n").is_err());
    }

    #[test]
    fn a_clean_campaign_passes() {
        let v = check(&sent(5), &received(5));
        assert!(v.passed(), "{v}");
        assert_eq!((v.confirmed, v.delivered), (5, 5));
    }

    #[test]
    fn a_restart_that_redelivers_the_unacknowledged_passes() {
        // Killed after events 1..=3 were written and ack(3) was asked for but had not
        // returned: the next run may reopen at 0 or 3 (the ack may have become durable).
        let mut r = String::from("open r1 0\n");
        r += &event(1, "s1:0");
        r += &event(2, "s1:1");
        r += &event(3, "s1:2");
        r += "acking 3\n";
        for reopened in [0, 3] {
            let mut r = format!("{r}open r2 {reopened}\n");
            for p in reopened + 1..=4 {
                r += &event(p, &format!("s1:{}", p - 1));
            }
            r += "acking 4\nacked 4\n";
            let v = check(&sent(4), &r);
            assert!(v.passed(), "reopened at {reopened}: {v}");
            assert_eq!(v.redelivered_unacknowledged, 3 - reopened as usize);
        }
    }

    #[test]
    fn a_lost_confirmed_send_is_reported() {
        let v = check(&sent(3), &received(2));
        assert_eq!(kinds(&v), vec!["lost"], "{v}");
        assert!(v.violations[0].to_string().contains("s1:2"));
    }

    #[test]
    fn a_message_at_two_positions_is_a_duplicate() {
        let mut r = String::from("open r1 0\n");
        r += &event(1, "s1:0");
        r += &event(2, "s1:1");
        r += &event(3, "s1:0");
        r += "acking 3\nacked 3\n";
        let v = check(&sent(2), &r);
        assert_eq!(kinds(&v), vec!["duplicated"], "{v}");
    }

    #[test]
    fn a_skipped_position_is_reported() {
        let mut r = String::from("open r1 0\n");
        r += &event(1, "s1:0");
        r += &event(3, "s1:1");
        r += "acking 3\nacked 3\n";
        let v = check(&sent(2), &r);
        assert_eq!(kinds(&v), vec!["skipped"], "{v}");
    }

    #[test]
    fn a_position_advanced_before_the_ack_is_a_skip() {
        // Events 1..=2 were handed out and written, but the kill came before the app
        // acknowledged them; the next run reopens at 2 anyway (the position moved when the
        // batch was handed out) and never hands them out again.
        let mut r = String::from("open r1 0\n");
        r += &event(1, "s1:0");
        r += &event(2, "s1:1");
        r += "open r2 2\n";
        r += &event(3, "s1:2");
        r += "acking 3\nacked 3\n";
        let v = check(&sent(3), &r);
        assert_eq!(kinds(&v), vec!["skipped"], "{v}");
        // The same bug when the subscription reports the right position but still resumes
        // after the batch.
        let mut r = String::from("open r1 0\n");
        r += &event(1, "s1:0");
        r += &event(2, "s1:1");
        r += "open r2 0\n";
        r += &event(3, "s1:2");
        r += "acking 3\nacked 3\n";
        let v = check(&sent(3), &r);
        // s1:0 and s1:1 were never acknowledged: lost to the app too.
        assert_eq!(kinds(&v), vec!["skipped", "lost", "lost"], "{v}");
    }

    #[test]
    fn a_redelivered_acknowledged_event_is_reported() {
        let mut r = String::from("open r1 0\n");
        r += &event(1, "s1:0");
        r += &event(2, "s1:1");
        r += "acking 2\nacked 2\n";
        r += "open r2 1\n";
        r += &event(2, "s1:1");
        r += "acking 2\nacked 2\n";
        let v = check(&sent(2), &r);
        assert_eq!(
            kinds(&v),
            vec!["redelivered acknowledged", "redelivered acknowledged"],
            "{v}"
        );
        // Reported even when the subscription claims the right position.
        let mut r = String::from("open r1 0\n");
        r += &event(1, "s1:0");
        r += "acking 1\nacked 1\n";
        r += "open r2 1\n";
        r += &event(1, "s1:0");
        r += "acking 1\nacked 1\n";
        let v = check(&sent(1), &r);
        assert_eq!(kinds(&v), vec!["redelivered acknowledged"], "{v}");
    }

    #[test]
    fn a_stuck_outbox_is_reported() {
        let s = sent(2).replace("outbox-empty\n", "stuck s1:1 Failed\n");
        let v = check(&s, &received(2));
        assert_eq!(kinds(&v), vec!["stuck", "stuck"], "{v}");
        // Not finished: no claim about the outbox or the last acknowledgement.
        let s = sent(2).replace("outbox-empty\n", "");
        let v = check_ledgers(&s, &received(2), None, "alice", false).unwrap();
        assert!(v.passed(), "{v}");
    }

    #[test]
    fn unacknowledged_events_at_the_end_are_stuck() {
        let r = "open r1 0\nevent 1 online alice s1:0\n";
        let v = check(&sent(1), r);
        assert_eq!(kinds(&v), vec!["stuck", "lost"], "{v}");
    }

    #[test]
    fn an_event_handed_out_but_never_acknowledged_nor_redelivered_is_lost() {
        // Handed out at 2, killed before the ack; the next run hands out 2 again, but as
        // another message, and s1:1 never comes back.
        let mut r = String::from("open r1 0\n");
        r += &event(1, "s1:0");
        r += "acking 1\nacked 1\n";
        r += &event(2, "s1:1");
        r += "acking 2\n";
        r += "open r2 1\n";
        r += &event(2, "s1:2");
        r += "acking 2\nacked 2\n";
        let v = check(&sent(3), &r);
        assert_eq!(kinds(&v), vec!["inconsistent", "lost"], "{v}");
        assert!(
            v.violations[1].to_string().contains("never acknowledged"),
            "{v}"
        );
        assert_eq!(v.delivered, 2);
    }

    #[test]
    fn a_message_at_one_position_changing_is_inconsistent() {
        let mut r = String::from("open r1 0\n");
        r += &event(1, "s1:0");
        r += "open r2 0\n";
        r += &event(1, "s1:1");
        r += "acking 1\nacked 1\n";
        let v = check(&sent(2), &r);
        // s1:0 was never acknowledged and never comes back: lost to the app as well.
        assert_eq!(kinds(&v), vec!["inconsistent", "lost"], "{v}");
    }

    #[test]
    fn unconfirmed_sends_may_arrive_once() {
        let s = "attempt s1:0\nconfirmed s1:0\nattempt s1:1\nstart s2\noutbox-empty\n";
        let v = check(s, &received(2));
        assert!(v.passed(), "{v}");
        assert_eq!(v.unconfirmed_delivered, 1);
        // … but not twice, and never one nobody sent.
        let mut r = String::from("open r1 0\n");
        r += &event(1, "s1:0");
        r += &event(2, "s1:1");
        r += &event(3, "s1:1");
        r += &event(4, "x:9");
        r += "acking 4\nacked 4\n";
        let v = check(s, &r);
        assert_eq!(kinds(&v), vec!["duplicated", "unknown"], "{v}");
    }

    #[test]
    fn the_vendor_audit_is_checked() {
        let audit = "stored m1 alice s1:0\nstored m2 alice s1:1\nstored m2 alice s1:1\n";
        let v = check_ledgers(&sent(2), &received(2), Some(audit), "alice", true).unwrap();
        assert!(v.passed(), "{v}");
        assert_eq!(v.vendor_stored, Some(2));
        // Stored twice under two ids; stored but never delivered; confirmed, never stored.
        let audit = "stored m1 alice s1:0\nstored m3 alice s1:0\nstored m2 alice s1:2\n";
        let s = "attempt s1:0\nconfirmed s1:0\nattempt s1:1\nconfirmed s1:1\nattempt s1:2\n\
                 outbox-empty\n";
        let v = check_ledgers(s, &received(2), Some(audit), "alice", true).unwrap();
        assert_eq!(kinds(&v), vec!["duplicated", "lost", "unknown"], "{v}");
        // A confirmed send missing everywhere is one loss, not two.
        let v = check_ledgers(
            &sent(3),
            &received(2),
            Some("stored m1 alice s1:0\nstored m2 alice s1:1\n"),
            "alice",
            true,
        )
        .unwrap();
        assert_eq!(kinds(&v), vec!["lost"], "{v}");
        assert!(v.violations[0].to_string().contains("never stored"), "{v}");
    }

    #[test]
    fn the_failure_names_its_seed() {
        let e = CrashError {
            vendor: "reference",
            seed: 42,
            kills: 7,
            problem: CrashProblem::Violations(Box::new(check(&sent(1), &received(0)))),
            work_dir: PathBuf::from("/tmp/x"),
        };
        let text = e.to_string();
        assert!(text.contains("seed 42"), "{text}");
        assert!(text.contains("IM_CRASH_SEED=42"), "{text}");
        assert!(text.contains("1 lost"), "{text}");
        assert!(text.contains("lost: s1:0"), "{text}");
    }
}
