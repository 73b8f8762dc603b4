//! `MemoryVendor`: a complete IM vendor in process memory, for tests and the demo's fastest
//! mode. It behaves like a rented vendor, not like a mock: tokens expire, a second login
//! kicks the first (unless it models a multi-device vendor), absent users get an offline
//! queue that must be acknowledged, history is cut by a retention window, resends are
//! recognised by client id, and live pushes start only after the client declares itself
//! online.
//!
//! The message lifecycle ([`LifecyclePolicy`], [`MessageChange`]) lives here too, and as
//! this vendor is the storage engine of the reference server its behaviour is the
//! reference semantics:
//!
//! - **Current state.** A recall or edit rewrites the stored message ([`MessageChange::apply`]):
//!   a recalled message's content is gone from the store, the offline queues and every later
//!   history page, which show [`Content::Recalled`]. A message deleted for a user is omitted
//!   from that user's history and offline queue only.
//! - **Revisions.** Every change (delete for me included) takes the message's next revision,
//!   so a receiver that holds revision *n* ignores anything not newer.
//! - **Who hears of a change.** A recall or edit goes live to the online sessions of every
//!   member of the conversation (except users who deleted the message for themselves), a
//!   delete for me to the caller's other online sessions; never to the session that made
//!   the change (it has the returned change). Each concerned user's change feed records it.
//! - **Read receipts.** [`Vendor::mark_read`] keeps the user's read position per conversation
//!   (it only moves forward) and reports it to the peers' and the caller's other sessions.
//! - **Change feed.** Per user, an append-only log of changes and receipts that concern it,
//!   read with [`Vendor::pull_changes`]. What is recorded between a session's last pull and
//!   its [`Vendor::go_online`] is pushed then, as offline messages that raced the offline
//!   pull are. It is bounded: [`MemoryVendor::sweep`] drops entries older than the
//!   retention, and past [`MemoryVendorConfig::change_feed_max`] entries per user the oldest
//!   go as new ones arrive. A cursor older than what is kept reads everything kept; what was
//!   dropped is in the messages themselves, which history returns in their current state
//!   (or no more, past retention).
//! - **Several devices.** With [`MemoryVendorConfig::multi_device`] sessions of one user
//!   coexist. A send reaches the sender's other *online* sessions as a push whose sender is
//!   the user; devices that are not online get no offline copy of their own user's sends
//!   (the offline queue is per user, and the sending device must not pull its own message
//!   back): a device that comes back learns them, like everything its user's other devices
//!   received live meanwhile, from history ([`HistoryScope::All`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::mpsc;

use crate::capabilities::{Capabilities, Capability};
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::error::{KickReason, ServiceError};
use crate::lifecycle::{
    ChangeBatch, ChangeCursor, ChangeKind, ChangeRefusal, LifecyclePolicy, MessageChange,
    ReadReceipt,
};
use crate::model::{
    ClientMsgId, Content, ConversationId, GroupId, Message, OutgoingMessage, Seq, ServerMsgId,
    Timestamp, Token, UserId,
};
use crate::vendor::{
    Credentials, EventStream, HistoryPage, HistoryQuery, HistoryRange, HistoryScope, OfflineAck,
    OfflineBatch, PageCursor, SendReceipt, Session, Vendor, VendorEvent,
};
use crate::{Result, ServiceError as E};

/// Settings of a [`MemoryVendor`]; the defaults follow common vendor defaults.
#[derive(Debug, Clone)]
pub struct MemoryVendorConfig {
    /// How long history and offline messages are kept (RongCloud's default: 7 days).
    pub retention: Option<Duration>,
    /// Largest accepted content in bytes.
    pub max_message_bytes: usize,
    /// Most messages per offline batch (RongCloud: 200).
    pub offline_batch_max: u32,
    /// Most messages per history page.
    pub history_page_max: u32,
    /// Whether a second login of a user kicks the first connection (ignored when
    /// `multi_device` is set).
    pub kick_on_second_login: bool,
    /// Whether sessions of one user coexist as devices ([`Capability::MultiDevice`]): no
    /// kick, and a send reaches the sender's other online sessions. Off by default: a second
    /// login kicks the first, as before.
    pub multi_device: bool,
    /// The rules for recall and edit.
    pub lifecycle: LifecyclePolicy,
    /// Most entries per change-feed pull.
    pub change_batch_max: u32,
    /// Most entries one user's change feed keeps (the oldest go first, like entries past
    /// retention: a cursor older than what is kept reads everything kept).
    pub change_feed_max: usize,
    /// Capacity of each client's event queue. A client that lets it fill up is disconnected
    /// (as a server drops a slow consumer); its messages stay in the offline queue.
    pub event_buffer: usize,
    /// Share of a token's life after which `TokenWillExpire` fires (Easemob: 80%).
    pub token_warning_ratio: f64,
    /// Most messages kept in memory over all conversations (`None`: no cap, only the
    /// retention). Past it the oldest go as new ones arrive, from history and the offline
    /// queues alike, as if their retention had ended: history pages report the raised
    /// horizon ([`MemoryVendor::horizon`]), so a client reads the gap as retention, not
    /// loss. A message costs about 1 KB, so the default holds about 0.5 GB.
    pub max_stored_messages: Option<usize>,
    /// Whether an accepted login runs [`MemoryVendor::sweep`] first (on by default: an
    /// in-process vendor on a manual clock has no other schedule). A server that sweeps on
    /// its own schedule turns it off, so one user's login never holds the one lock for a
    /// pass over every stored message (a reconnect storm would make that thousands).
    pub sweep_on_login: bool,
}

impl Default for MemoryVendorConfig {
    fn default() -> Self {
        Self {
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            max_message_bytes: 16 * 1024,
            offline_batch_max: 200,
            history_page_max: 100,
            kick_on_second_login: true,
            multi_device: false,
            lifecycle: LifecyclePolicy::default(),
            change_batch_max: 200,
            change_feed_max: 10_000,
            event_buffer: 1024,
            token_warning_ratio: 0.8,
            max_stored_messages: Some(500_000),
            sweep_on_login: true,
        }
    }
}

/// The operations fault injection can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VendorOp {
    /// [`Vendor::login`].
    Login,
    /// [`Vendor::send`].
    Send,
    /// [`Vendor::pull_offline`].
    PullOffline,
    /// [`Vendor::ack_offline`].
    AckOffline,
    /// [`Vendor::go_online`].
    GoOnline,
    /// [`Vendor::pull_history`].
    PullHistory,
    /// [`Vendor::ping`].
    Ping,
    /// [`Vendor::recall`], [`Vendor::edit`] and [`Vendor::delete_for_me`].
    Change,
    /// [`Vendor::mark_read`].
    MarkRead,
    /// [`Vendor::pull_changes`].
    PullChanges,
    /// [`Vendor::send_after`], a pipelined send: failed apart from [`VendorOp::Send`], so
    /// that "the next `n` sends fail" still means the head of a conversation's sends (the
    /// one a client sends without naming a predecessor).
    SendAfter,
}

/// The in-process vendor ("server side"). Cheap to clone; clones share all state.
///
/// ```
/// # tokio_test_block_on(async {
/// use im_service::memory::MemoryVendor;
/// use im_service::{Content, ConversationId, OutgoingMessage, Timestamp, UserId, Vendor};
///
/// let vendor = MemoryVendor::default();
/// let (alice, bob) = (UserId::new("alice"), UserId::new("bob"));
/// let alice_creds = vendor.register_user(&alice);
/// vendor.register_user(&bob);
///
/// let client = vendor.client();
/// client.login(&alice_creds).await?;
/// let msg = OutgoingMessage::new(ConversationId::direct(&alice, &bob), Content::text("hi"),
///                                Timestamp::from_millis(0));
/// let receipt = client.send(&msg).await?;
/// assert!(!receipt.duplicate);
/// assert_eq!(vendor.offline_len(&bob), 1); // bob is away: queued for him
/// # Ok::<(), im_service::ServiceError>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryVendor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryVendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryVendor")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Stamps messages, expires tokens, cuts history.
    clock: Arc<dyn Clock>,
    /// Settings fixed at construction.
    config: MemoryVendorConfig,
    /// Declared capabilities (derived from the config).
    caps: Capabilities,
    /// Everything mutable. A std mutex: it is never held across an `.await`.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    users: HashMap<UserId, UserRecord>,
    groups: HashMap<GroupId, BTreeSet<UserId>>,
    conversations: HashMap<ConversationId, ConversationRecord>,
    /// Every stored message by its global position (the server id's number): the order of
    /// an all-conversations history query.
    log: BTreeMap<u64, ConversationId>,
    next_global: u64,
    tokens: HashMap<String, TokenRecord>,
    sessions: HashMap<u64, SessionRecord>,
    /// Sessions the server ended, with the error their client sees on its next call.
    ended: HashMap<u64, ServiceError>,
    next_session: u64,
    next_client: u64,
    /// Fault injection: the next N calls of an operation fail with the given error.
    faults: HashMap<VendorOp, (u32, ServiceError)>,
    /// Listeners told about every newly stored message (vendor callbacks feed on this).
    store_listeners: Vec<mpsc::UnboundedSender<Message>>,
    /// Listeners told about every stored change, in order.
    change_listeners: Vec<mpsc::UnboundedSender<MessageChange>>,
    /// Just after the newest message dropped by [`MemoryVendorConfig::max_stored_messages`]:
    /// the horizon the cap raised (see [`MemoryVendor::horizon`]).
    cap_horizon: Option<Timestamp>,
    /// Nothing the retention drops (a message, a deletion for one user, a change-feed
    /// entry) is older than this (`None`: nothing stored): a sweep whose horizon is not
    /// past it has nothing to drop and passes over nothing, instead of every stored
    /// message under the one lock every second. Lowered by every insertion ([`note_time`]),
    /// set to the oldest survivor by each pass ([`prune`]).
    oldest: Option<Timestamp>,
    /// Sweeps that passed over the stored messages (see [`MemoryVendor::retention_passes`]).
    retention_passes: u64,
}

#[derive(Default)]
struct UserRecord {
    /// Offline queue by queue position.
    offline: BTreeMap<u64, Message>,
    next_offline: u64,
    sessions: BTreeSet<u64>,
    /// Messages this user deleted for themselves, with the change that did it (a repeated
    /// delete answers with it instead of a new revision).
    deleted: HashMap<ServerMsgId, MessageChange>,
    /// Read position per conversation: the global position of the newest message read,
    /// and the receipt that reported it.
    read: HashMap<ConversationId, (u64, ReadReceipt)>,
    /// The change feed by position (see [`FeedEntry`]).
    feed: BTreeMap<u64, FeedEntry>,
    /// Position of the newest entry ever appended (0: none); the end a fresh cursor names.
    feed_end: u64,
}

/// One entry of a user's change feed.
struct FeedEntry {
    /// When it was recorded (the retention sweep drops entries older than the horizon).
    at: Timestamp,
    /// The session that caused it (it is never pushed back to that session).
    origin: u64,
    item: FeedItem,
}

/// What a change-feed entry carries; also what is pushed live.
#[derive(Clone)]
enum FeedItem {
    Change(MessageChange),
    Receipt(ReadReceipt),
}

impl FeedItem {
    fn event(&self) -> VendorEvent {
        match self {
            FeedItem::Change(c) => VendorEvent::MessageChanged(c.clone()),
            FeedItem::Receipt(r) => VendorEvent::ReadReceipt(r.clone()),
        }
    }
}

#[derive(Default)]
struct ConversationRecord {
    /// Messages by global position (equal to sequence order within the conversation).
    messages: BTreeMap<u64, Message>,
    /// Idempotency index: (sender, client id) → global position.
    by_client: HashMap<(UserId, ClientMsgId), u64>,
    next_seq: u64,
    /// Revision of each changed message by global position (absent: never changed).
    revisions: HashMap<u64, u32>,
}

struct TokenRecord {
    user: UserId,
    issued_at: Timestamp,
    expires_at: Option<Timestamp>,
}

struct SessionRecord {
    user: UserId,
    token: String,
    online: bool,
    warned: bool,
    events: mpsc::Sender<VendorEvent>,
    /// The change-feed position this session last pulled up to, if it pulled at all:
    /// [`Vendor::go_online`] pushes what was recorded after it, so nothing falls between
    /// the last pull and the first live push.
    feed_seen: Option<u64>,
}

impl Default for MemoryVendor {
    fn default() -> Self {
        Self::new(MemoryVendorConfig::default())
    }
}

impl MemoryVendor {
    /// A vendor on the system clock.
    pub fn new(config: MemoryVendorConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A vendor on a manual clock that starts at the current time; the returned clock moves
    /// vendor time (call [`MemoryVendor::sweep`] after moving it to fire token events).
    pub fn with_manual_clock(config: MemoryVendorConfig) -> (Self, ManualClock) {
        let clock = ManualClock::starting_now();
        (Self::with_clock(config, Arc::new(clock.clone())), clock)
    }

    /// A vendor on any clock.
    pub fn with_clock(config: MemoryVendorConfig, clock: Arc<dyn Clock>) -> Self {
        let mut caps = Capabilities::none()
            .with(Capability::HistoryByTime)
            .with(Capability::HistoryBySeq)
            .with(Capability::SequenceNumbers)
            .with(Capability::ServerAcks)
            .with(Capability::OfflineQueue)
            .with(Capability::ExplicitOfflineAck)
            .with(Capability::GroupConversations)
            .with(Capability::TokenExpiry)
            .with(Capability::Heartbeat)
            .with(Capability::IdempotentSend)
            .with(Capability::OrderedSends)
            .with_retention(config.retention)
            .with_max_message_bytes(config.max_message_bytes);
        if config.multi_device {
            caps = caps.with(Capability::MultiDevice);
        } else if config.kick_on_second_login {
            caps = caps.with(Capability::KickOnSecondLogin);
        }
        caps = caps
            .with(Capability::ReadReceipts)
            .with(Capability::ReadReceiptEvents)
            .with(Capability::Recall)
            .with(Capability::Edit)
            .with(Capability::DeleteForMe)
            .with(Capability::ChangeFeed);
        caps.offline_batch_max = config.offline_batch_max;
        caps.history_page_max = config.history_page_max;
        Self {
            inner: Arc::new(Inner {
                clock,
                config,
                caps,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The vendor's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// A new client handle (one device); not logged in.
    pub fn client(&self) -> MemoryClient {
        let (tx, rx) = mpsc::channel(self.inner.config.event_buffer.max(1));
        let id = {
            let mut st = self.state();
            st.next_client += 1;
            st.next_client
        };
        MemoryClient {
            vendor: self.clone(),
            id,
            session: Mutex::new(None),
            events_tx: tx,
            events_rx: Mutex::new(Some(rx)),
        }
    }

    /// Creates an account (idempotent) and returns credentials with a token that never expires.
    pub fn register_user(&self, user: &UserId) -> Credentials {
        self.state().users.entry(user.clone()).or_default();
        let token = self.mint_token(user, None);
        Credentials {
            user: user.clone(),
            token,
        }
    }

    /// Issues a token for a registered user, valid for `ttl` (`None`: forever).
    pub fn issue_token(&self, user: &UserId, ttl: Option<Duration>) -> Result<Token> {
        if !self.state().users.contains_key(user) {
            return Err(E::UnknownUser(user.clone()));
        }
        Ok(self.mint_token(user, ttl))
    }

    /// Accepts a token chosen by the operator (tokens from a config file), valid for `ttl`.
    pub fn insert_token(&self, user: &UserId, token: &Token, ttl: Option<Duration>) -> Result<()> {
        let now = self.now();
        let mut st = self.state();
        if !st.users.contains_key(user) {
            return Err(E::UnknownUser(user.clone()));
        }
        // Tokens are keyed by their secret: one that another account holds would silently
        // move to this one and lock the other out.
        if let Some(holder) = st.tokens.get(token.expose()).map(|r| &r.user)
            && holder != user
        {
            return Err(E::InvalidRequest(format!(
                "token already belongs to user {holder}: each account needs its own token"
            )));
        }
        st.tokens.insert(
            token.expose().to_string(),
            TokenRecord {
                user: user.clone(),
                issued_at: now,
                expires_at: ttl.map(|t| now.plus(t)),
            },
        );
        Ok(())
    }

    /// The vendor's declared capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    fn mint_token(&self, user: &UserId, ttl: Option<Duration>) -> Token {
        let now = self.now();
        let secret = format!("tok-{:032x}", rand::random::<u128>());
        self.state().tokens.insert(
            secret.clone(),
            TokenRecord {
                user: user.clone(),
                issued_at: now,
                expires_at: ttl.map(|t| now.plus(t)),
            },
        );
        Token::new(secret)
    }

    /// Creates (or replaces) a group with the given registered members.
    pub fn create_group(&self, group: &GroupId, members: &[UserId]) -> Result<()> {
        let mut st = self.state();
        if let Some(unknown) = members.iter().find(|m| !st.users.contains_key(*m)) {
            return Err(E::UnknownUser(unknown.clone()));
        }
        st.groups
            .insert(group.clone(), members.iter().cloned().collect());
        Ok(())
    }

    /// Removes an account: its sessions are kicked with [`KickReason::AccountRemoved`].
    pub fn remove_user(&self, user: &UserId) {
        let mut st = self.state();
        let sessions: Vec<u64> = st
            .users
            .get(user)
            .map(|u| u.sessions.iter().copied().collect())
            .unwrap_or_default();
        for s in sessions {
            end_session(
                &mut st,
                s,
                E::Kicked(KickReason::AccountRemoved),
                Some(VendorEvent::Kicked(KickReason::AccountRemoved)),
            );
        }
        st.users.remove(user);
        st.tokens.retain(|_, t| &t.user != user);
    }

    /// Breaks every connection of `user` as a network failure would.
    pub fn disconnect(&self, user: &UserId) {
        let mut st = self.state();
        let sessions: Vec<u64> = st
            .users
            .get(user)
            .map(|u| u.sessions.iter().copied().collect())
            .unwrap_or_default();
        for s in sessions {
            let why = "connection reset by vendor".to_string();
            end_session(
                &mut st,
                s,
                E::ConnectionLost(why.clone()),
                Some(VendorEvent::ConnectionLost { reason: why }),
            );
        }
    }

    /// Makes the next `count` calls of `op` (by any client) fail with `error`.
    pub fn fail_next(&self, op: VendorOp, count: u32, error: ServiceError) {
        self.state().faults.insert(op, (count, error));
    }

    /// Fires token warnings and expiries and drops history past retention. Runs on every
    /// accepted login if [`MemoryVendorConfig::sweep_on_login`] (never for a refused one:
    /// that costs only the credential check); call it after moving a manual clock.
    pub fn sweep(&self) {
        let now = self.now();
        let ratio = self.inner.config.token_warning_ratio;
        let mut st = self.state();
        let State {
            sessions, tokens, ..
        } = &mut *st;
        let mut expired = Vec::new();
        for (id, s) in sessions.iter_mut() {
            let Some(tok) = tokens.get(&s.token) else {
                continue;
            };
            let Some(expires_at) = tok.expires_at else {
                continue;
            };
            if now >= expires_at {
                expired.push(*id);
            } else if !s.warned {
                let life = (expires_at.as_millis() - tok.issued_at.as_millis()) as f64;
                let warn_at = tok.issued_at.as_millis() + (life * ratio) as i64;
                if now.as_millis() >= warn_at {
                    s.warned = true;
                    let _ = s
                        .events
                        .try_send(VendorEvent::TokenWillExpire { expires_at });
                }
            }
        }
        for id in expired {
            end_session(
                &mut st,
                id,
                E::TokenExpired,
                Some(VendorEvent::TokenExpired),
            );
        }
        if let Some(horizon) = self.retention_horizon()
            && st.oldest.is_some_and(|oldest| oldest < horizon)
        {
            st.oldest = prune(&mut st, horizon);
            st.retention_passes += 1;
        }
    }

    /// How many sweeps had something past the retention and passed over the stored
    /// messages to drop it (administrator view); a sweep with nothing that old does not.
    pub fn retention_passes(&self) -> u64 {
        self.state().retention_passes
    }

    /// The oldest instant history is kept for, if anything limits it: the retention, or
    /// the cap on stored messages once it dropped some (whichever is later).
    pub fn horizon(&self) -> Option<Timestamp> {
        let cap = self.state().cap_horizon;
        later(self.retention_horizon(), cap)
    }

    /// The horizon of the retention alone.
    fn retention_horizon(&self) -> Option<Timestamp> {
        self.inner.config.retention.map(|r| self.now().minus(r))
    }

    /// How many messages are stored over all conversations (administrator view).
    pub fn stored_len(&self) -> usize {
        self.state().log.len()
    }

    /// All stored messages of a conversation, oldest first (administrator view for tests).
    pub fn stored_messages(&self, conversation: &ConversationId) -> Vec<Message> {
        self.state()
            .conversations
            .get(conversation)
            .map(|c| c.messages.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A feed of every message stored from now on, in storage order (duplicates of a resend
    /// are not stored and not fed). The vendor's callback dispatcher reads it. Unbounded on
    /// purpose: a storing vendor must not block senders on a slow webhook; the reader is
    /// expected to drain it promptly into its own retry queue.
    pub fn store_feed(&self) -> mpsc::UnboundedReceiver<Message> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state().store_listeners.push(tx);
        rx
    }

    /// A feed of every change stored from now on (recalls, edits and deletions for one
    /// user, whose `by` names that user), in storage order, beside [`MemoryVendor::store_feed`]:
    /// a message is fed once as sent, and its later changes here. Unbounded for the same
    /// reason as the store feed.
    pub fn change_feed(&self) -> mpsc::UnboundedReceiver<MessageChange> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state().change_listeners.push(tx);
        rx
    }

    /// The rules for recall and edit this vendor enforces.
    pub fn lifecycle(&self) -> &LifecyclePolicy {
        &self.inner.config.lifecycle
    }

    /// `user`'s read position in `conversation`, as last reported (administrator view).
    pub fn read_position(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Option<ReadReceipt> {
        self.state()
            .users
            .get(user)
            .and_then(|u| u.read.get(conversation))
            .map(|(_, r)| r.clone())
    }

    /// How many entries `user`'s change feed keeps.
    pub fn change_feed_len(&self, user: &UserId) -> usize {
        self.state().users.get(user).map_or(0, |u| u.feed.len())
    }

    /// How many messages wait in `user`'s offline queue.
    pub fn offline_len(&self, user: &UserId) -> usize {
        self.state().users.get(user).map_or(0, |u| u.offline.len())
    }

    /// Whether `user` has a connection that takes live pushes.
    pub fn is_online(&self, user: &UserId) -> bool {
        let st = self.state();
        st.users.get(user).is_some_and(|u| {
            u.sessions
                .iter()
                .any(|s| st.sessions.get(s).is_some_and(|r| r.online))
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // parking_lot: no poisoning; every mutation completes before unlocking.
        self.inner.state.lock()
    }
}

/// Removes a session its own client closed (logout, re-login, drop): nothing to report.
fn close_session(st: &mut State, id: u64) {
    if let Some(s) = st.sessions.remove(&id)
        && let Some(u) = st.users.get_mut(&s.user)
    {
        u.sessions.remove(&id);
    }
    st.ended.remove(&id);
}

/// Removes a session, remembers the error its client will see, and tells the client.
fn end_session(st: &mut State, id: u64, error: ServiceError, event: Option<VendorEvent>) {
    if let Some(s) = st.sessions.remove(&id) {
        if let Some(u) = st.users.get_mut(&s.user) {
            u.sessions.remove(&id);
        }
        if let Some(ev) = event {
            let _ = s.events.try_send(ev);
        }
        st.ended.insert(id, error);
    }
}

/// The later of two optional horizons.
fn later(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Drops the oldest stored messages beyond `cap` (by global position), from their
/// conversation and the offline queues of its members, and raises the cap's horizon past
/// them (see [`MemoryVendorConfig::max_stored_messages`]).
fn enforce_cap(st: &mut State, cap: usize) {
    while st.log.len() > cap {
        let Some((g, conversation)) = st.log.pop_first() else {
            return;
        };
        let Some(m) = st.conversations.get_mut(&conversation).and_then(|conv| {
            let m = conv.messages.remove(&g)?;
            conv.by_client
                .remove(&(m.sender.clone(), m.client_id.clone()));
            conv.revisions.remove(&g);
            Some(m)
        }) else {
            continue;
        };
        // The oldest message overall is nearly always at the head of each offline queue,
        // so this is a pop, not a scan.
        let holders: Vec<UserId> = members(st, &conversation).unwrap_or_default();
        for user in holders {
            if let Some(u) = st.users.get_mut(&user) {
                match u.offline.first_key_value() {
                    Some((p, head)) if head.server_id == m.server_id => {
                        let p = *p;
                        u.offline.remove(&p);
                    }
                    // A newer head: the queue holds nothing this old.
                    Some((_, head)) if parse_msg_id(&head.server_id).is_some_and(|h| h > g) => {}
                    Some(_) => u.offline.retain(|_, q| q.server_id != m.server_id),
                    None => {}
                }
            }
        }
        let past = m.server_time.plus(Duration::from_millis(1));
        st.cap_horizon = later(st.cap_horizon, Some(past));
    }
}

/// Records that something the retention drops was stored at `at` (see [`State::oldest`]).
fn note_time(st: &mut State, at: Timestamp) {
    st.oldest = Some(st.oldest.map_or(at, |oldest| oldest.min(at)));
}

/// Drops everything older than `horizon`; returns the time of the oldest survivor.
fn prune(st: &mut State, horizon: Timestamp) -> Option<Timestamp> {
    let State {
        conversations,
        log,
        users,
        ..
    } = st;
    let mut oldest: Option<Timestamp> = None;
    let mut keep = |at: Timestamp| {
        oldest = Some(oldest.map_or(at, |o| o.min(at)));
    };
    for conv in conversations.values_mut() {
        let old: Vec<u64> = conv
            .messages
            .iter()
            .take_while(|(_, m)| m.server_time < horizon)
            .map(|(g, _)| *g)
            .collect();
        for g in old {
            if let Some(m) = conv.messages.remove(&g) {
                conv.by_client
                    .remove(&(m.sender.clone(), m.client_id.clone()));
                conv.revisions.remove(&g);
                log.remove(&g);
            }
        }
        // Server time never goes backwards within a conversation: the first is the oldest.
        if let Some(first) = conv.messages.values().next() {
            keep(first.server_time);
        }
    }
    for u in users.values_mut() {
        let mut kept = |at: Timestamp| {
            let kept = at >= horizon;
            if kept {
                keep(at);
            }
            kept
        };
        u.offline.retain(|_, m| kept(m.server_time));
        // A change is never older than its message, so a change past the horizon concerns
        // a message that is gone as well.
        u.deleted.retain(|_, c| kept(c.at));
        u.feed.retain(|_, e| kept(e.at));
    }
    oldest
}

fn members(st: &State, conversation: &ConversationId) -> Result<Vec<UserId>> {
    match conversation {
        ConversationId::Direct { low, high } => {
            for u in [low, high] {
                if !st.users.contains_key(u) {
                    return Err(E::UnknownUser(u.clone()));
                }
            }
            Ok(if low == high {
                vec![low.clone()]
            } else {
                vec![low.clone(), high.clone()]
            })
        }
        ConversationId::Group(g) => st
            .groups
            .get(g)
            .map(|m| m.iter().cloned().collect())
            .ok_or_else(|| E::NotMember(conversation.clone())),
    }
}

fn is_member(st: &State, conversation: &ConversationId, user: &UserId) -> bool {
    match conversation {
        ConversationId::Direct { .. } => conversation.is_direct_member(user),
        ConversationId::Group(g) => st.groups.get(g).is_some_and(|m| m.contains(user)),
    }
}

/// Checks a login's credentials against the accounts and tokens; the token's expiry if
/// they hold. Touches nothing else, so a refused login costs a few lookups.
fn check_credentials(
    st: &State,
    credentials: &Credentials,
    now: Timestamp,
) -> Result<Option<Timestamp>> {
    if !st.users.contains_key(&credentials.user) {
        return Err(E::UnknownUser(credentials.user.clone()));
    }
    let Some(tok) = st.tokens.get(credentials.token.expose()) else {
        return Err(E::AuthFailed("invalid token".into()));
    };
    if tok.user != credentials.user {
        return Err(E::AuthFailed("token belongs to another user".into()));
    }
    if tok.expires_at.is_some_and(|e| now >= e) {
        return Err(E::TokenExpired);
    }
    Ok(tok.expires_at)
}

/// One device's connection to a [`MemoryVendor`]; implements [`Vendor`].
/// Dropping it closes its session.
pub struct MemoryClient {
    vendor: MemoryVendor,
    /// Identifies this handle in logs.
    id: u64,
    /// The current session, if logged in.
    session: Mutex<Option<u64>>,
    /// Sender half of this handle's event queue, attached to each session.
    events_tx: mpsc::Sender<VendorEvent>,
    /// Receiver half until [`Vendor::take_events`] takes it.
    events_rx: Mutex<Option<mpsc::Receiver<VendorEvent>>>,
}

impl std::fmt::Debug for MemoryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryClient")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MemoryClient {
    fn session_id(&self) -> Option<u64> {
        *self.session.lock()
    }

    /// Runs `f` on the state with this client's live session, after the fault and
    /// expiry checks every authenticated call shares.
    fn with_session<T>(
        &self,
        op: VendorOp,
        f: impl FnOnce(&mut State, u64, Timestamp) -> Result<T>,
    ) -> Result<T> {
        let now = self.vendor.now();
        let mut st = self.vendor.state();
        take_fault(&mut st, op)?;
        let Some(id) = self.session_id() else {
            return Err(E::NotLoggedIn);
        };
        if let Some(err) = st.ended.get(&id) {
            return Err(err.clone());
        }
        let Some(s) = st.sessions.get(&id) else {
            return Err(E::NotLoggedIn);
        };
        let expired = st
            .tokens
            .get(&s.token)
            .and_then(|t| t.expires_at)
            .is_some_and(|e| now >= e);
        if expired {
            end_session(
                &mut st,
                id,
                E::TokenExpired,
                Some(VendorEvent::TokenExpired),
            );
            return Err(E::TokenExpired);
        }
        f(&mut st, id, now)
    }

    fn user_of(st: &State, session: u64) -> Result<UserId> {
        st.sessions
            .get(&session)
            .map(|s| s.user.clone())
            .ok_or(E::NotLoggedIn)
    }

    /// Recall, edit and delete for me: checks the change, stores the message's current
    /// state under its next revision, and tells whom it concerns (module docs).
    fn change(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
        kind: ChangeKind,
    ) -> Result<MessageChange> {
        let policy = &self.vendor.inner.config.lifecycle;
        let feed_max = self.vendor.inner.config.change_feed_max;
        self.with_session(VendorOp::Change, |st, session, now| {
            let user = Self::user_of(st, session)?;
            if !is_member(st, conversation, &user) {
                return Err(E::NotMember(conversation.clone()));
            }
            let unknown = || E::ChangeRefused(ChangeRefusal::UnknownMessage);
            // A message the caller deleted for themselves is not visible to it any more;
            // deleting it again answers with the first deletion (a retry after a lost reply).
            if let Some(done) = st.users.get(&user).and_then(|u| u.deleted.get(target)) {
                return match kind {
                    ChangeKind::DeletedForMe => Ok(done.clone()),
                    _ => Err(unknown()),
                };
            }
            let global = parse_msg_id(target).ok_or_else(unknown)?;
            let members = members(st, conversation)?;
            let conv = st.conversations.get_mut(conversation).ok_or_else(unknown)?;
            let message = conv.messages.get(&global).ok_or_else(unknown)?;
            policy
                .check(message, &kind, &user, now)
                .map_err(E::ChangeRefused)?;
            let revision = conv.revisions.entry(global).or_insert(0);
            *revision += 1;
            let change = MessageChange {
                conversation: conversation.clone(),
                target: target.clone(),
                kind,
                by: user.clone(),
                // Never before its message, even if the vendor clock was set back.
                at: now.max(message.server_time),
                revision: *revision,
            };
            let concerned: Vec<UserId> = if change.kind == ChangeKind::DeletedForMe {
                note_time(st, change.at);
                if let Some(u) = st.users.get_mut(&user) {
                    u.deleted.insert(target.clone(), change.clone());
                    u.offline.retain(|_, m| &m.server_id != target);
                }
                vec![user]
            } else {
                if let Some(current) = change.apply(message) {
                    conv.messages.insert(global, current.clone());
                    for u in st.users.values_mut() {
                        for m in u.offline.values_mut() {
                            if &m.server_id == target {
                                *m = current.clone();
                            }
                        }
                    }
                }
                // Users who deleted the message for themselves no longer hear of it.
                members
                    .into_iter()
                    .filter(|m| {
                        st.users
                            .get(m)
                            .is_some_and(|u| !u.deleted.contains_key(target))
                    })
                    .collect()
            };
            st.change_listeners
                .retain(|l| l.send(change.clone()).is_ok());
            publish(
                st,
                feed_max,
                &concerned,
                session,
                &FeedItem::Change(change.clone()),
                change.at,
            );
            Ok(change)
        })
    }
}

fn take_fault(st: &mut State, op: VendorOp) -> Result<()> {
    if let Some((left, err)) = st.faults.get_mut(&op)
        && *left > 0
    {
        *left -= 1;
        let err = err.clone();
        if *left == 0 {
            st.faults.remove(&op);
        }
        return Err(err);
    }
    Ok(())
}

/// Pushes `event` to session `sid` if it takes live pushes; a session whose event queue is
/// full is dropped as a slow consumer (what it missed waits in the offline queue, history
/// and the change feed). Returns whether the event was queued.
fn push_event(st: &mut State, sid: u64, event: VendorEvent) -> bool {
    let Some(s) = st.sessions.get(&sid) else {
        return false;
    };
    if !s.online {
        return false;
    }
    if s.events.try_send(event).is_ok() {
        return true;
    }
    let why = "slow consumer: event queue full".to_string();
    end_session(
        st,
        sid,
        E::ConnectionLost(why.clone()),
        Some(VendorEvent::ConnectionLost { reason: why }),
    );
    false
}

fn sessions_of(st: &State, user: &UserId) -> Vec<u64> {
    st.users
        .get(user)
        .map(|u| u.sessions.iter().copied().collect())
        .unwrap_or_default()
}

/// Delivers a stored message: live push to online sessions, offline queue otherwise.
fn deliver(st: &mut State, message: &Message, recipients: &[UserId], sender_session: u64) {
    for user in recipients {
        let mut pushed = false;
        for sid in sessions_of(st, user) {
            if sid != sender_session
                && push_event(st, sid, VendorEvent::MessagePushed(message.clone()))
            {
                pushed = true;
            }
        }
        // The sender's own other devices are not sent an offline copy (the queue is per
        // user: the sending device would pull its own message back); they see it in
        // history.
        if !pushed
            && &message.sender != user
            && let Some(u) = st.users.get_mut(user)
        {
            u.next_offline += 1;
            let pos = u.next_offline;
            u.offline.insert(pos, message.clone());
        }
    }
}

/// Records `item` in the change feed of each of `users` and pushes it to their online
/// sessions, except `origin` (the session that caused it, which has it already).
fn publish(
    st: &mut State,
    feed_max: usize,
    users: &[UserId],
    origin: u64,
    item: &FeedItem,
    at: Timestamp,
) {
    note_time(st, at);
    for user in users {
        let Some(u) = st.users.get_mut(user) else {
            continue;
        };
        u.feed_end += 1;
        let pos = u.feed_end;
        u.feed.insert(
            pos,
            FeedEntry {
                at,
                origin,
                item: item.clone(),
            },
        );
        while u.feed.len() > feed_max.max(1) {
            u.feed.pop_first();
        }
        for sid in sessions_of(st, user) {
            if sid != origin {
                push_event(st, sid, item.event());
            }
        }
    }
}

/// The global position in a server id this vendor issued (`m:<n>`).
fn parse_msg_id(id: &ServerMsgId) -> Option<u64> {
    id.as_str().strip_prefix("m:").and_then(|n| n.parse().ok())
}

/// A change-feed cursor: the big-endian position of the last entry it covers.
fn feed_cursor(pos: u64) -> ChangeCursor {
    ChangeCursor(pos.to_be_bytes().to_vec())
}

fn parse_feed_cursor(cursor: &ChangeCursor) -> Result<u64> {
    <[u8; 8]>::try_from(cursor.0.as_slice())
        .map(u64::from_be_bytes)
        .map_err(|_| {
            E::InvalidRequest(format!(
                "malformed change cursor: {} bytes, expected 8",
                cursor.0.len()
            ))
        })
}

fn parse_cursor(cursor: &Option<PageCursor>) -> Result<u64> {
    match cursor {
        None => Ok(u64::MAX),
        Some(PageCursor(c)) => c
            .strip_prefix("m:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| E::InvalidRequest(format!("malformed history cursor {c:?}"))),
    }
}

fn in_range(m: &Message, range: &HistoryRange) -> bool {
    match *range {
        HistoryRange::Latest => true,
        HistoryRange::Seq { after, before } => {
            let Some(seq) = m.seq else { return false };
            after.is_none_or(|a| seq > a) && before.is_none_or(|b| seq < b)
        }
        HistoryRange::Time { from, to } => m.server_time >= from && m.server_time < to,
    }
}

impl MemoryClient {
    /// [`Vendor::send`], and [`Vendor::send_after`] when `after` is given: the duplicate
    /// check first (a resend answers its receipt), then the predecessor check, then the
    /// store, under the vendor's lock.
    fn store_message(
        &self,
        message: &OutgoingMessage,
        after: Option<&ClientMsgId>,
    ) -> Result<SendReceipt> {
        let max = self.vendor.inner.config.max_message_bytes;
        let cap = self.vendor.inner.config.max_stored_messages;
        let op = if after.is_some() {
            VendorOp::SendAfter
        } else {
            VendorOp::Send
        };
        self.with_session(op, |st, session, now| {
            let sender = Self::user_of(st, session)?;
            let size = message.content.size();
            if size > max {
                return Err(E::MessageTooLarge { size, max });
            }
            if matches!(message.content, Content::Recalled { .. }) {
                return Err(E::InvalidRequest(
                    "a recalled message cannot be sent: use recall".into(),
                ));
            }
            let recipients = members(st, &message.conversation)?;
            if !is_member(st, &message.conversation, &sender) {
                return Err(E::NotMember(message.conversation.clone()));
            }
            let key = (sender.clone(), message.client_id.clone());
            let conv = st
                .conversations
                .entry(message.conversation.clone())
                .or_default();
            if let Some(existing) = conv.by_client.get(&key).and_then(|g| conv.messages.get(g)) {
                return Ok(SendReceipt {
                    server_id: existing.server_id.clone(),
                    seq: existing.seq,
                    server_time: existing.server_time,
                    duplicate: true,
                });
            }
            // A pipelined send is stored only behind the one it names: if that one was
            // refused (or has not arrived), storing this one would let it overtake.
            if let Some(after) = after
                && !conv
                    .by_client
                    .contains_key(&(sender.clone(), after.clone()))
            {
                return Err(E::PredecessorNotStored(after.clone()));
            }
            st.next_global += 1;
            let global = st.next_global;
            let conv = st
                .conversations
                .entry(message.conversation.clone())
                .or_default();
            conv.next_seq += 1;
            // Server time never goes backwards within a conversation, so time order and
            // sequence order agree even if the vendor clock is set back.
            let server_time = conv
                .messages
                .values()
                .next_back()
                .map_or(now, |last| last.server_time.max(now));
            let stored = Message {
                server_id: ServerMsgId::new(format!("m:{global}")),
                client_id: message.client_id.clone(),
                conversation: message.conversation.clone(),
                sender: sender.clone(),
                seq: Some(Seq(conv.next_seq)),
                server_time,
                client_time: message.client_time,
                content: message.content.clone(),
            };
            conv.messages.insert(global, stored.clone());
            conv.by_client.insert(key, global);
            note_time(st, server_time);
            st.log.insert(global, message.conversation.clone());
            st.store_listeners
                .retain(|l| l.send(stored.clone()).is_ok());
            deliver(st, &stored, &recipients, session);
            if let Some(cap) = cap {
                enforce_cap(st, cap.max(1));
            }
            Ok(SendReceipt {
                server_id: stored.server_id,
                seq: stored.seq,
                server_time,
                duplicate: false,
            })
        })
    }
}

#[async_trait]
impl Vendor for MemoryClient {
    fn name(&self) -> &str {
        "memory"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.vendor.inner.caps
    }

    fn take_events(&self) -> Option<EventStream> {
        let rx = self.events_rx.lock().take()?;
        Some(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(vendor = "memory", client = self.id, user = %credentials.user))]
    async fn login(&self, credentials: &Credentials) -> Result<Session> {
        let config = &self.vendor.inner.config;
        let kick = config.kick_on_second_login && !config.multi_device;
        // Credentials first: a refused login costs this check only, never the sweep (a
        // wrong-password flood must not turn into work over every stored message, under
        // the one lock every other user needs).
        {
            let mut st = self.vendor.state();
            take_fault(&mut st, VendorOp::Login)?;
            check_credentials(&st, credentials, self.vendor.now())?;
        }
        if config.sweep_on_login {
            self.vendor.sweep();
        }
        let now = self.vendor.now();
        let mut st = self.vendor.state();
        // Again under this lock: the account or token may have gone while it was released.
        let expires_at = check_credentials(&st, credentials, now)?;
        let secret = credentials.token.expose();

        let mut slot = self.session.lock();
        if let Some(old) = slot.take() {
            // Re-login on the same handle replaces its own session silently.
            close_session(&mut st, old);
        }
        if kick {
            let others: Vec<u64> = st
                .users
                .get(&credentials.user)
                .map(|u| u.sessions.iter().copied().collect())
                .unwrap_or_default();
            for other in others {
                let reason = KickReason::LoggedInElsewhere;
                end_session(
                    &mut st,
                    other,
                    E::Kicked(reason.clone()),
                    Some(VendorEvent::Kicked(reason)),
                );
            }
        }
        st.next_session += 1;
        let id = st.next_session;
        st.sessions.insert(
            id,
            SessionRecord {
                user: credentials.user.clone(),
                token: secret.to_string(),
                online: false,
                warned: false,
                events: self.events_tx.clone(),
                feed_seen: None,
            },
        );
        if let Some(u) = st.users.get_mut(&credentials.user) {
            u.sessions.insert(id);
        }
        *slot = Some(id);
        Ok(Session {
            user: credentials.user.clone(),
            token_expires_at: expires_at,
            session_id: format!("mem-{id}"),
            server_time: Some(now),
        })
    }

    async fn logout(&self) -> Result<()> {
        let mut st = self.vendor.state();
        let mut slot = self.session.lock();
        if let Some(id) = slot.take() {
            close_session(&mut st, id);
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(vendor = "memory", client = self.id, conversation = %message.conversation, client_id = %message.client_id))]
    async fn send(&self, message: &OutgoingMessage) -> Result<SendReceipt> {
        self.store_message(message, None)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(vendor = "memory", client = self.id, conversation = %message.conversation, client_id = %message.client_id))]
    async fn send_after(
        &self,
        message: &OutgoingMessage,
        after: &ClientMsgId,
    ) -> Result<SendReceipt> {
        self.store_message(message, Some(after))
    }

    async fn pull_offline(&self, max: u32) -> Result<OfflineBatch> {
        if max == 0 {
            return Err(E::InvalidRequest(
                "offline batch size must be at least 1".into(),
            ));
        }
        let cap = max.min(self.vendor.inner.config.offline_batch_max) as usize;
        self.with_session(VendorOp::PullOffline, |st, session, _| {
            let user = Self::user_of(st, session)?;
            let queue = st
                .users
                .get(&user)
                .map(|u| &u.offline)
                .ok_or(E::UnknownUser(user.clone()))?;
            let batch: Vec<(u64, Message)> = queue
                .iter()
                .rev()
                .take(cap)
                .map(|(p, m)| (*p, m.clone()))
                .collect();
            let left = (queue.len() - batch.len()) as u64;
            let ack = match (batch.last(), batch.first()) {
                (Some((lo, _)), Some((hi, _))) => Some(OfflineAck {
                    token: format!("{lo}-{hi}"),
                }),
                _ => None,
            };
            Ok(OfflineBatch {
                messages: batch.into_iter().map(|(_, m)| m).collect(),
                left,
                ack,
            })
        })
    }

    async fn ack_offline(&self, ack: &OfflineAck) -> Result<()> {
        let (lo, hi) = ack
            .token
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .filter(|(a, b)| a <= b)
            .ok_or_else(|| E::InvalidRequest(format!("malformed offline ack {:?}", ack.token)))?;
        self.with_session(VendorOp::AckOffline, |st, session, _| {
            let user = Self::user_of(st, session)?;
            if let Some(u) = st.users.get_mut(&user) {
                let acked: Vec<u64> = u.offline.range(lo..=hi).map(|(p, _)| *p).collect();
                for p in acked {
                    u.offline.remove(&p);
                }
            }
            Ok(())
        })
    }

    async fn go_online(&self) -> Result<()> {
        self.with_session(VendorOp::GoOnline, |st, session, _| {
            let user = Self::user_of(st, session)?;
            // Whatever is still queued (it raced the offline pull) is pushed now, oldest
            // first; the client deduplicates against what it already pulled.
            let pending: Vec<Message> = st
                .users
                .get_mut(&user)
                .map(|u| std::mem::take(&mut u.offline).into_values().collect())
                .unwrap_or_default();
            let Some(s) = st.sessions.get_mut(&session) else {
                return Err(E::NotLoggedIn);
            };
            let was_online = std::mem::replace(&mut s.online, true);
            // Pulled while online: the live pushes covered it already.
            let seen = s.feed_seen.take().filter(|_| !was_online);
            let tx = s.events.clone();
            for (i, m) in pending.iter().enumerate() {
                if tx.try_send(VendorEvent::MessagePushed(m.clone())).is_err() {
                    // Put back what could not be pushed and drop the connection.
                    if let Some(u) = st.users.get_mut(&user) {
                        for m in &pending[i..] {
                            u.next_offline += 1;
                            let pos = u.next_offline;
                            u.offline.insert(pos, m.clone());
                        }
                    }
                    let why = "slow consumer: event queue full".to_string();
                    end_session(
                        st,
                        session,
                        E::ConnectionLost(why.clone()),
                        Some(VendorEvent::ConnectionLost { reason: why }),
                    );
                    return Ok(());
                }
            }
            // Changes recorded after this session's last feed pull raced it like the
            // messages above: pushed now, after the messages they may refer to.
            if let Some(seen) = seen {
                let missed: Vec<VendorEvent> = st
                    .users
                    .get(&user)
                    .map(|u| {
                        u.feed
                            .range(seen.saturating_add(1)..)
                            .filter(|(_, e)| e.origin != session)
                            .map(|(_, e)| e.item.event())
                            .collect()
                    })
                    .unwrap_or_default();
                for event in missed {
                    if !push_event(st, session, event) {
                        break;
                    }
                }
            }
            Ok(())
        })
    }

    async fn pull_history(&self, query: &HistoryQuery) -> Result<HistoryPage> {
        let caps = &self.vendor.inner.caps;
        if let Some(needed) = query.needs().filter(|c| !caps.supports(*c)) {
            return Err(E::Unsupported(needed));
        }
        if query.limit == 0 {
            return Err(E::InvalidRequest(
                "history page size must be at least 1".into(),
            ));
        }
        let limit = query.limit.min(caps.history_page_max) as usize;
        let before = parse_cursor(&query.cursor)?;
        let retention = self.vendor.retention_horizon();
        self.with_session(VendorOp::PullHistory, |st, session, _| {
            let horizon = later(retention, st.cap_horizon);
            let user = Self::user_of(st, session)?;
            // Messages are stored in their current state; only deletions for this user
            // are left to filter.
            let deleted = st.users.get(&user).map(|u| &u.deleted);
            let visible = |m: &Message| {
                horizon.is_none_or(|h| m.server_time >= h)
                    && in_range(m, &query.range)
                    && deleted.is_none_or(|d| !d.contains_key(&m.server_id))
            };
            let mut found: Vec<(u64, Message)> = Vec::with_capacity(limit + 1);
            match &query.scope {
                HistoryScope::Conversation(c) => {
                    if !is_member(st, c, &user) {
                        return Err(E::NotMember(c.clone()));
                    }
                    if let Some(conv) = st.conversations.get(c) {
                        found.extend(
                            conv.messages
                                .range(..before)
                                .rev()
                                .filter(|(_, m)| visible(m))
                                .take(limit + 1)
                                .map(|(g, m)| (*g, m.clone())),
                        );
                    }
                }
                HistoryScope::All => {
                    for (g, c) in st.log.range(..before).rev() {
                        if found.len() > limit {
                            break;
                        }
                        if !is_member(st, c, &user) {
                            continue;
                        }
                        if let Some(m) = st
                            .conversations
                            .get(c)
                            .and_then(|conv| conv.messages.get(g))
                            && visible(m)
                        {
                            found.push((*g, m.clone()));
                        }
                    }
                }
            }
            let more = found.len() > limit;
            found.truncate(limit);
            let next = if more {
                found.last().map(|(g, _)| PageCursor(format!("m:{g}")))
            } else {
                None
            };
            Ok(HistoryPage {
                messages: found.into_iter().map(|(_, m)| m).collect(),
                next,
                horizon,
            })
        })
    }

    async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        self.with_session(VendorOp::Ping, |_, _, _| Ok(()))?;
        Ok(started.elapsed())
    }

    /// Records the read position (it only moves forward: an older or equal one changes
    /// nothing and reports nothing) and reports it to the other members and the caller's
    /// other sessions. A read up to a message the vendor no longer keeps (past retention)
    /// changes nothing either; an id the vendor never issued, or one of another
    /// conversation, is an invalid request.
    async fn mark_read(&self, conversation: &ConversationId, up_to: &ServerMsgId) -> Result<()> {
        self.with_session(VendorOp::MarkRead, |st, session, now| {
            let user = Self::user_of(st, session)?;
            if !is_member(st, conversation, &user) {
                return Err(E::NotMember(conversation.clone()));
            }
            let foreign =
                || E::InvalidRequest(format!("no message {up_to} in conversation {conversation}"));
            let global = parse_msg_id(up_to)
                .filter(|g| *g <= st.next_global)
                .ok_or_else(foreign)?;
            match st.log.get(&global) {
                None => return Ok(()),
                Some(c) if c != conversation => return Err(foreign()),
                Some(_) => {}
            }
            let Some(up_to_time) = st
                .conversations
                .get(conversation)
                .and_then(|c| c.messages.get(&global))
                .map(|m| m.server_time)
            else {
                return Ok(());
            };
            let receipt = ReadReceipt {
                conversation: conversation.clone(),
                reader: user.clone(),
                up_to: up_to.clone(),
                up_to_time,
                at: now,
            };
            let Some(u) = st.users.get_mut(&user) else {
                return Err(E::UnknownUser(user));
            };
            if u.read.get(conversation).is_some_and(|(g, _)| *g >= global) {
                return Ok(());
            }
            u.read
                .insert(conversation.clone(), (global, receipt.clone()));
            let concerned = members(st, conversation)?;
            let feed_max = self.vendor.inner.config.change_feed_max;
            publish(
                st,
                feed_max,
                &concerned,
                session,
                &FeedItem::Receipt(receipt),
                now,
            );
            Ok(())
        })
    }

    fn lifecycle(&self) -> LifecyclePolicy {
        self.vendor.inner.config.lifecycle.clone()
    }

    async fn recall(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> Result<MessageChange> {
        self.change(conversation, target, ChangeKind::Recalled)
    }

    async fn edit(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
        content: &Content,
    ) -> Result<MessageChange> {
        let max = self.vendor.inner.config.max_message_bytes;
        let size = content.size();
        if size > max {
            return Err(E::MessageTooLarge { size, max });
        }
        if matches!(content, Content::Recalled { .. }) {
            return Err(E::InvalidRequest(
                "an edit cannot recall a message: use recall".into(),
            ));
        }
        self.change(conversation, target, ChangeKind::Edited(content.clone()))
    }

    async fn delete_for_me(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> Result<MessageChange> {
        self.change(conversation, target, ChangeKind::DeletedForMe)
    }

    /// The caller's change feed after `since` (see the module docs). A cursor beyond the
    /// feed's end (from before a restart of an in-memory vendor) reads from the start of
    /// what is kept, like one older than what is kept.
    async fn pull_changes(&self, since: Option<ChangeCursor>, max: u32) -> Result<ChangeBatch> {
        if max == 0 {
            return Err(E::InvalidRequest(
                "change batch size must be at least 1".into(),
            ));
        }
        let after = since.as_ref().map(parse_feed_cursor).transpose()?;
        let cap = max.min(self.vendor.inner.config.change_batch_max.max(1)) as usize;
        self.with_session(VendorOp::PullChanges, |st, session, _| {
            let user = Self::user_of(st, session)?;
            let u = st.users.get(&user).ok_or(E::UnknownUser(user.clone()))?;
            let Some(after) = after else {
                let end = u.feed_end;
                if let Some(s) = st.sessions.get_mut(&session) {
                    s.feed_seen = Some(end);
                }
                return Ok(ChangeBatch {
                    next: feed_cursor(end),
                    ..ChangeBatch::default()
                });
            };
            let after = if after > u.feed_end { 0 } else { after };
            let mut batch = ChangeBatch {
                next: feed_cursor(after),
                ..ChangeBatch::default()
            };
            let mut last = after;
            for (pos, entry) in u.feed.range(after.saturating_add(1)..).take(cap) {
                last = *pos;
                match &entry.item {
                    FeedItem::Change(c) => batch.changes.push(c.clone()),
                    FeedItem::Receipt(r) => batch.receipts.push(r.clone()),
                }
            }
            batch.next = feed_cursor(last);
            let left = u.feed.range(last.saturating_add(1)..).count();
            batch.left = u32::try_from(left).unwrap_or(u32::MAX);
            if let Some(s) = st.sessions.get_mut(&session) {
                s.feed_seen = Some(last);
            }
            Ok(batch)
        })
    }
}

impl Drop for MemoryClient {
    fn drop(&mut self) {
        if let Some(id) = self.session_id() {
            let mut st = self.vendor.state();
            close_session(&mut st, id);
        }
    }
}
