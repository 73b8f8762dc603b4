//! `Shared`: the state one client's facade, supervisor, sync engine, send queue,
//! conversation API, timeline and durable subscriptions have in common, behind one `Arc`.
//!
//! Every field says what it is for and which modules change it. Fields set once at build
//! time are never replaced; the others are changed only by the modules named on them, and
//! their locks are never held across an `.await` except `next_position` (see there).
//! This module imports only leaves (store, events, bus, history, config, conversation
//! list, retry): the modules that use `Shared` import it, never the other way round.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use im_service::{
    ClientMsgId, Clock, ConversationId, Credentials, Message, ServerMsgId, ServiceError, Vendor,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};

use crate::bus::Bus;
use crate::config::{ClientConfig, TokenProvider};
use crate::conversation_list::ConversationList;
use crate::error::ArchError;
use crate::events::{ClientEvent, ConnectionState};
use crate::history::{HistoryGap, HistorySource, HistoryWindow};
use crate::store::{OutboxItem, Store};

/// Everything the facade and the client's tasks share.
pub(crate) struct Shared {
    /// The vendor connection. Set at build; used by the supervisor (login, heartbeats), the
    /// sync engine (pulls, acks), the send queue (sends) and the conversation API (read
    /// receipts).
    pub(crate) vendor: Arc<dyn Vendor>,
    /// The local store. Set at build; written by the sync engine (messages, cursors,
    /// journal), the send queue (outbox), the conversation API (conversation state), the
    /// timeline and history (fetched pages) and durable subscriptions (positions).
    pub(crate) store: Arc<dyn Store>,
    /// The tunables. Set at build, never changed.
    pub(crate) config: ClientConfig,
    /// Which source serves each history window. Set at build; read by `ImClient::history`
    /// and the timeline.
    pub(crate) sources: HashMap<HistoryWindow, Arc<dyn HistorySource>>,
    /// Measures history windows (the vendor's clock in tests). Set at build.
    pub(crate) clock: Arc<dyn Clock>,
    /// Fresh tokens on expiry, if the app gave a provider. Set at build; used by the
    /// supervisor.
    pub(crate) provider: Option<Arc<dyn TokenProvider>>,
    /// Who logs in, with which token. The token is replaced by the facade
    /// (`ImClient::set_token`) and the supervisor (token refresh); the user never changes.
    /// Read by the supervisor (login), the sync engine and the send queue (who "me" is).
    pub(crate) credentials: Mutex<Credentials>,
    /// The bus every event is published on, by every module. It never waits for a reader.
    pub(crate) distributor: Bus<ClientEvent>,
    /// The connection state. Changed by the supervisor ([`Shared::set_state`],
    /// [`Shared::stop`]) and reset to `Disconnected` by the facade when `login` starts a
    /// supervisor; the send queue sends only while it is `Online`.
    pub(crate) state: watch::Sender<ConnectionState>,
    /// Whether the app says the device has a network (reachability). Changed by the facade
    /// (`ImClient::set_network_available`); while it is `false` the supervisor makes no
    /// connection attempt.
    pub(crate) network: watch::Sender<bool>,
    /// Wakes the send queue's task (new item, resend, cancel). Notified by the send queue's
    /// API.
    pub(crate) outbox_wake: Notify,
    /// New outbox items on their way to the send queue's task (durable already). Pushed by
    /// the send queue's `send`; `resend` and `cancel` ask the task to reload instead.
    pub(crate) outbox_fresh: OutboxFresh,
    /// The next outbox position; loaded from the store on first use. Changed by the send
    /// queue's `send` only. A tokio mutex held across the store read that loads it, so two
    /// first sends cannot both take position 1.
    pub(crate) next_position: tokio::sync::Mutex<Option<u64>>,
    /// Own sent messages, acknowledged by the vendor, on their way to the supervisor's
    /// sequencer. The send queue's task sends on it.
    pub(crate) own_sent: mpsc::UnboundedSender<Message>,
    /// The receiving end of `own_sent` while no supervisor holds it: the facade hands it to
    /// the supervisor at `login` and takes it back when the supervisor stops.
    pub(crate) own_sent_rx: Mutex<Option<mpsc::UnboundedReceiver<Message>>>,
    /// The conversation list. Rebuilt from the store by the conversation API when the
    /// supervisor starts, updated by the sync engine per delivered message and by the
    /// conversation API per user setting.
    pub(crate) conversations: Mutex<ConversationList>,
    /// Whether delivered messages go to the journal (a durable subscription is registered).
    /// Set by the sync engine when it loads (registered subscriptions found) and by
    /// durable subscriptions when one opens; read by the sync engine per delivery.
    pub(crate) journal_on: AtomicBool,
    /// The journal's head as last committed; wakes durable subscriptions. Raised (never
    /// lowered) by `durable::publish_head`, called by the sync engine after each commit
    /// and by durable subscriptions when one opens.
    pub(crate) journal_head: watch::Sender<u64>,
    /// Why the supervisor stopped for good, typed (`login()` answers with it). Set by the
    /// supervisor ([`Shared::stop`]), cleared by the facade when `login` starts a new one.
    pub(crate) stopped_by: Mutex<Option<ArchError>>,
    /// How far the vendor's clock and ours differed at the last login, in milliseconds (0
    /// until measured): history gaps no longer than this are clock noise, not gaps. Set by
    /// the supervisor at each login; read through [`Shared::is_real_gap`].
    pub(crate) clock_skew_ms: AtomicU64,
    /// Client ids of the latest messages this process sent and the vendor acknowledged (at
    /// most [`SENT_HERE_KEPT`]), so that the sync engine stores such a message quietly
    /// however it comes back (the UI shows its local echo): with several devices my
    /// messages also come from elsewhere, and only these are this device's. Pushed by the
    /// send queue; read by the sync engine.
    pub(crate) sent_here: Mutex<SentHere>,
    /// Read receipts the vendor has not taken yet (the read is already durable here): per
    /// conversation, the newest message read while the session was away or failing. Put by
    /// the conversation API's `mark_read`; sent and cleared by the supervisor each time it
    /// goes online.
    pub(crate) pending_receipts: Mutex<HashMap<ConversationId, ServerMsgId>>,
}

/// How many of this process's acknowledged sends [`Shared::sent_here`] remembers.
pub(crate) const SENT_HERE_KEPT: usize = 1024;

/// Most items [`OutboxFresh`] holds; beyond it the sender task reloads the outbox instead
/// (a client that queues while no task runs).
pub(crate) const OUTBOX_FRESH_MAX: usize = 4096;

/// Outbox items `send` made durable and hands to the sender task, so that the task need
/// not read the whole outbox back from the store for each (see `send_queue`), or a request
/// to reload it from the store.
#[derive(Default)]
pub(crate) struct OutboxFresh {
    inner: Mutex<(Vec<OutboxItem>, bool)>,
}

impl OutboxFresh {
    /// Hands over `item` (already durable); past [`OUTBOX_FRESH_MAX`] asks for a reload.
    pub(crate) fn push(&self, item: OutboxItem) {
        let mut inner = self.inner.lock();
        if inner.1 {
            return;
        }
        if inner.0.len() >= OUTBOX_FRESH_MAX {
            inner.0.clear();
            inner.1 = true;
        } else {
            inner.0.push(item);
        }
    }

    /// Asks the sender task to reload the outbox from the store (an item changed in place).
    pub(crate) fn reload(&self) {
        self.inner.lock().1 = true;
    }

    /// Whether a reload was asked for.
    pub(crate) fn must_reload(&self) -> bool {
        self.inner.lock().1
    }

    /// Forgets the handed-over items and the reload request: called just before the
    /// sender task reads the outbox from the store.
    pub(crate) fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.0.clear();
        inner.1 = false;
    }

    /// The items handed over since the last call.
    pub(crate) fn take(&self) -> Vec<OutboxItem> {
        std::mem::take(&mut self.inner.lock().0)
    }
}

/// The latest [`SENT_HERE_KEPT`] client ids this process sent: a set to look them up in
/// (the sync engine asks once per own message coming back; a linear scan of the 1,024 ids
/// was 8% of the client's CPU under heavy load, issue 22) and their order to forget the
/// oldest.
#[derive(Default)]
pub(crate) struct SentHere {
    order: VecDeque<ClientMsgId>,
    /// Fx-hashed: the ids are this process's own, nobody else's choice.
    ids: rustc_hash::FxHashSet<ClientMsgId>,
}

impl SentHere {
    /// Whether `id` is among the remembered sends.
    pub(crate) fn contains(&self, id: &ClientMsgId) -> bool {
        self.ids.contains(id)
    }

    /// Remembers `id`, forgetting the oldest beyond [`SENT_HERE_KEPT`].
    fn note(&mut self, id: &ClientMsgId) {
        if !self.ids.insert(id.clone()) {
            return;
        }
        if self.order.len() >= SENT_HERE_KEPT
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.order.push_back(id.clone());
    }
}

impl Shared {
    /// Reports a store failure during `op` (`what` for the log line) as
    /// [`ClientEvent::StoreFailed`]: the one way a background step tells the app that a
    /// write did not happen.
    pub(crate) async fn report_store_failure(
        &self,
        op: &'static str,
        what: &str,
        error: ArchError,
    ) {
        tracing::warn!(op, error = %error, "{what}");
        self.distributor
            .publish(ClientEvent::StoreFailed { op, error })
            .await;
    }

    /// The shared state of a client built from these parts, disconnected, with an empty
    /// conversation list for the credentials' user.
    pub(crate) fn new(
        vendor: Arc<dyn Vendor>,
        store: Arc<dyn Store>,
        config: ClientConfig,
        sources: HashMap<HistoryWindow, Arc<dyn HistorySource>>,
        clock: Arc<dyn Clock>,
        provider: Option<Arc<dyn TokenProvider>>,
        credentials: Credentials,
    ) -> Self {
        let (own_tx, own_rx) = mpsc::unbounded_channel();
        let me = credentials.user.clone();
        Self {
            vendor,
            store,
            config,
            sources,
            clock,
            provider,
            credentials: Mutex::new(credentials),
            // The supervisor never waits for a reader: a full queue drops its oldest event
            // and tells its reader (lossless readers use durable subscriptions).
            distributor: Bus::never_waiting(),
            state: watch::channel(ConnectionState::Disconnected).0,
            network: watch::channel(true).0,
            outbox_wake: Notify::new(),
            outbox_fresh: OutboxFresh::default(),
            next_position: tokio::sync::Mutex::new(None),
            own_sent: own_tx,
            own_sent_rx: Mutex::new(Some(own_rx)),
            conversations: Mutex::new(ConversationList::new(me)),
            journal_on: AtomicBool::new(false),
            journal_head: watch::channel(0).0,
            stopped_by: Mutex::new(None),
            clock_skew_ms: AtomicU64::new(0),
            sent_here: Mutex::new(SentHere::default()),
            pending_receipts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `gap` is more than the clock skew measured at login: a vendor whose clock
    /// runs a few milliseconds ahead puts its retention horizon that much inside a window,
    /// which is not a range anyone lost.
    pub(crate) fn is_real_gap(&self, gap: &HistoryGap) -> bool {
        let skew = self.clock_skew_ms.load(Ordering::Relaxed);
        gap.to.as_millis().saturating_sub(gap.from.as_millis()) > skew as i64
    }

    /// Remembers that this process sent `id` (see [`Shared::sent_here`]).
    pub(crate) fn note_sent_here(&self, id: &ClientMsgId) {
        self.sent_here.lock().note(id);
    }

    /// Ends in terminal `state` for the typed reason `cause` (what `login()` answers).
    pub(crate) async fn stop(&self, state: ConnectionState, cause: ArchError) {
        *self.stopped_by.lock() = Some(cause);
        self.set_state(state).await;
    }

    /// The typed reason for terminal state `state`.
    pub(crate) fn stop_reason(&self, state: &ConnectionState) -> ArchError {
        if let Some(cause) = self.stopped_by.lock().clone() {
            return cause;
        }
        match state {
            ConnectionState::Kicked(r) => ArchError::Kicked(r.clone()),
            ConnectionState::TokenExpired => ArchError::TokenExpired,
            ConnectionState::LoggedOut => ArchError::LoggedOut,
            other => ArchError::Unavailable(format!("{other:?}")),
        }
    }

    /// Moves to `state` and announces it.
    pub(crate) async fn set_state(&self, state: ConnectionState) {
        tracing::info!(state = ?state, "connection state");
        self.state.send_replace(state.clone());
        self.distributor.publish(ClientEvent::State(state)).await;
    }

    /// The current credentials (a copy: the lock is not held).
    pub(crate) fn credentials(&self) -> Credentials {
        self.credentials.lock().clone()
    }

    /// Runs `f` under the client's retry policy, announcing each failed attempt.
    pub(crate) async fn retry<T, Fut>(
        &self,
        op: &'static str,
        f: impl FnMut() -> Fut,
    ) -> Result<T, ArchError>
    where
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        self.config
            .retry
            .run(
                op,
                |a| async move {
                    self.distributor.publish(ClientEvent::Retry(a)).await;
                },
                f,
            )
            .await
    }
}
