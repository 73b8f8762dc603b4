//! `ImClient`, the facade: the client's builder and every public method, each a thin door
//! into the module that owns the concern. The supervisor (`supervisor`) owns the vendor
//! connection and runs the sync engine (`sync`); the send queue, the conversation API, the
//! timeline and durable subscriptions are siblings at the crate root. They share one
//! [`Shared`]; nothing imports this module back.

mod supervisor;
mod sync;

use std::collections::HashMap;
use std::sync::Arc;

use im_service::{
    Capability, ClientMsgId, Clock, Content, ConversationId, Credentials, EventStream, Message,
    MessageChange, PageCursor, ReadReceipt, ServerMsgId, Token, Vendor,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use self::supervisor::{Command, Leftovers, supervise};
use crate::bus::{Bus, BusStream, DeliveryPolicy, Filter};
use crate::config::{ClientConfig, TokenProvider};
use crate::conversation_list::ConversationSummary;
use crate::durable::DurableSubscription;
use crate::error::ArchError;
use crate::events::{ClientEvent, ConnectionState};
use crate::history::{HistoryResult, HistorySource, HistoryWindow, VendorHistory};
use crate::memory_store::MemoryStore;
use crate::shared::Shared;
use crate::store::{MessageRevision, OutboxItem, Store};
use crate::timeline::TimelinePage;
use crate::{conversations, durable, lifecycle, send_queue, timeline};

/// A stream of the client's events (shared, `Arc`ed); dropping it unsubscribes.
pub type Subscription = BusStream<ClientEvent>;

/// Builds an [`ImClient`].
pub struct ImClientBuilder {
    vendor: Arc<dyn Vendor>,
    credentials: Credentials,
    provider: Option<Arc<dyn TokenProvider>>,
    store: Arc<dyn Store>,
    config: ClientConfig,
    sources: HashMap<HistoryWindow, Arc<dyn HistorySource>>,
    clock: Arc<dyn Clock>,
}

impl ImClientBuilder {
    /// The clock history windows are measured with (default: the system clock). Use the
    /// vendor's clock when it is shifted, as tests do.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the local store (default: in memory).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = store;
        self
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Fetches a fresh token when the current one expires, instead of stopping.
    pub fn token_provider(mut self, provider: Arc<dyn TokenProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Serves `window` from `source` (default: the vendor for `Recent` and `Middle`, none for
    /// `Old`). Pass `None` to serve it from nowhere (its requests return gaps).
    pub fn history_source(
        mut self,
        window: HistoryWindow,
        source: Option<Arc<dyn HistorySource>>,
    ) -> Self {
        match source {
            Some(s) => self.sources.insert(window, s),
            None => self.sources.remove(&window),
        };
        self
    }

    /// Builds the client (not yet logged in).
    pub fn build(self) -> ImClient {
        let events = self.vendor.take_events();
        let shared = Arc::new(Shared::new(
            self.vendor,
            self.store,
            self.config,
            self.sources,
            self.clock,
            self.provider,
            self.credentials,
        ));
        ImClient {
            shared,
            events: Mutex::new(events),
            task: Mutex::new(None),
            login_gate: tokio::sync::Mutex::new(None),
        }
    }
}

/// The running supervisor task and its command channel.
struct Running {
    commands: mpsc::Sender<Command>,
    /// Hands back what a later `login` needs when the supervisor stops.
    handle: JoinHandle<Leftovers>,
    /// The send queue's task; stops with the supervisor.
    sender: JoinHandle<()>,
}

/// An IM client on any vendor: login, supervision, ACK-online sync, history.
///
/// The supervisor reconnects by itself with capped, jittered backoff
/// ([`ClientConfig::reconnect`]). Apps that know when the device has no network (the
/// platform's reachability) say so with [`ImClient::set_network_available`]: while it is
/// down no connection attempt is made, and when it is back the client reconnects after a
/// short jittered delay.
///
/// Complete programs against real servers are the examples `quickstart` (two clients on the
/// reference vendor over TCP, each with a [`LogStore`](crate::LogStore)) and
/// `xmpp_quickstart` (the same on Prosody) in `crates/im-arch/examples/`; README.md's
/// "Examples" section says how to start their servers. In process:
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use im_arch::{ClientEvent, ImClient};
/// use im_service::memory::MemoryVendor;
/// use im_service::UserId;
///
/// let vendor = MemoryVendor::default();
/// let creds = vendor.register_user(&UserId::new("alice"));
/// let client = ImClient::builder(Arc::new(vendor.client()), creds).build();
/// let mut events = client.subscribe();
/// client.login().await?;
/// assert!(client.state().is_online());
/// client.logout().await;
/// # Ok::<(), im_arch::ArchError>(())
/// # });
/// ```
pub struct ImClient {
    shared: Arc<Shared>,
    /// The vendor's event stream until the supervisor takes it.
    events: Mutex<Option<EventStream>>,
    task: Mutex<Option<Running>>,
    /// One `login`/`logout` at a time starts or stops the supervisor. What it guards is a
    /// supervisor on its way out: it stays here, not in a local variable, until its
    /// leftovers (the vendor's event stream) are back, so a `login()` or `logout()` whose
    /// caller gives up (a timeout around it) loses nothing; the next call finishes the job.
    login_gate: tokio::sync::Mutex<Option<Running>>,
}

impl ImClient {
    /// Starts building a client for `credentials` on `vendor`.
    pub fn builder(vendor: Arc<dyn Vendor>, credentials: Credentials) -> ImClientBuilder {
        let mut sources: HashMap<HistoryWindow, Arc<dyn HistorySource>> = HashMap::new();
        if vendor.capabilities().supports(Capability::HistoryByTime) {
            let own: Arc<dyn HistorySource> = Arc::new(VendorHistory(vendor.clone()));
            sources.insert(HistoryWindow::Recent, own.clone());
            sources.insert(HistoryWindow::Middle, own);
        }
        ImClientBuilder {
            vendor,
            credentials,
            provider: None,
            store: Arc::new(MemoryStore::new()),
            config: ClientConfig::default(),
            sources,
            clock: Arc::new(im_service::SystemClock),
        }
    }

    /// A new live subscription to everything the client publishes, with a queue of
    /// `subscriber_capacity` events. The client never waits for it: a reader that falls
    /// that far behind gets [`ClientEvent::Lagged`] and can take a fresh snapshot from the
    /// store; a reader that must see every message once, across crashes, opens a
    /// [`DurableSubscription`](crate::DurableSubscription) instead.
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_with(
            Filter::all(),
            DeliveryPolicy::DropOldest {
                capacity: self.shared.config.subscriber_capacity,
            },
        )
    }

    /// A live subscription to the events `filter` passes, with a queue of the policy's
    /// capacity: a chat screen takes one conversation with [`DeliveryPolicy::DropOldest`].
    /// The client's bus never waits for a reader ([`Bus::never_waiting`]), so a
    /// [`DeliveryPolicy::Reliable`] queue that fills up drops its oldest event too, and its
    /// reader is told with [`ClientEvent::Lagged`]: size it for the bursts it must absorb.
    pub fn subscribe_with(&self, filter: Filter, policy: DeliveryPolicy) -> Subscription {
        self.shared.distributor.subscribe(filter, policy)
    }

    /// The bus the client publishes on (to publish app events or count subscribers).
    pub fn bus(&self) -> &Bus<ClientEvent> {
        &self.shared.distributor
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.shared.state.borrow().clone()
    }

    /// A watch of the connection state.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.subscribe()
    }

    /// The local store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Starts the supervisor (if not running) and waits until the client is online or has
    /// stopped for good. Never waits for subscribers: it returns when the client is online
    /// whether or not anyone reads its events.
    ///
    /// Logging in again on the same client works after [`ImClient::logout`], a kick, token
    /// expiry or a refused login. The error says why the client stopped:
    /// [`ArchError::AuthFailed`], [`ArchError::UnknownUser`], [`ArchError::Kicked`],
    /// [`ArchError::TokenExpired`], [`ArchError::LoggedOut`], [`ArchError::GaveUp`] (after
    /// `max_reconnect_attempts`) or [`ArchError::Permanent`] (another refusal).
    pub async fn login(&self) -> Result<(), ArchError> {
        let mut state = self.shared.state.subscribe();
        {
            let mut retiring = self.login_gate.lock().await;
            // A supervisor that stopped for good hands back the vendor's event stream. One
            // that has published its terminal state may not have returned yet: it is on its
            // way out, so wait for it rather than mistake it for a running one (whose old
            // terminal state the wait below would then report).
            let stopping = self.shared.state.borrow().is_terminal();
            {
                let mut task = self.task.lock();
                if matches!(task.as_ref(), Some(r) if stopping || r.handle.is_finished()) {
                    *retiring = task.take();
                }
            }
            self.reclaim(&mut retiring).await?;
            let mut task = self.task.lock();
            if task.is_none() {
                let events = self.events.lock().take();
                // Only gone when a supervisor panicked (its stream went with it).
                let Some(events) = events else {
                    return Err(ArchError::Stopped);
                };
                *self.shared.stopped_by.lock() = None;
                let (tx, rx) = mpsc::channel(8);
                let user = self.shared.credentials().user;
                let span = tracing::info_span!("im_client", user = %user, vendor = self.shared.vendor.name());
                self.shared
                    .state
                    .send_replace(ConnectionState::Disconnected);
                let own = self.shared.own_sent_rx.lock().take();
                let sender =
                    tokio::spawn(send_queue::run(self.shared.clone()).instrument(span.clone()));
                let handle =
                    tokio::spawn(supervise(self.shared.clone(), events, rx, own).instrument(span));
                *task = Some(Running {
                    commands: tx,
                    handle,
                    sender,
                });
            }
        }
        loop {
            let now = state.borrow_and_update().clone();
            match now {
                ConnectionState::Online => return Ok(()),
                s if s.is_terminal() => return Err(self.shared.stop_reason(&s)),
                _ => {}
            }
            if state.changed().await.is_err() {
                return Err(ArchError::Stopped);
            }
        }
    }

    /// Replaces the token the client logs in with (the app renewed it, e.g. after
    /// [`ArchError::TokenExpired`] or [`ArchError::AuthFailed`]); the next (re)connect uses
    /// it. The user stays the same: one client, one store, one account.
    pub fn set_token(&self, token: Token) {
        self.shared.credentials.lock().token = token;
    }

    /// Tells the client whether the device has a network, as the platform's reachability
    /// reports it (default: available).
    ///
    /// While the network is known down the supervisor makes **no connection attempt**: a
    /// client that loses its connection (or is between attempts, or has not connected yet)
    /// waits in [`ConnectionState::Disconnected`] instead of burning its backoff on a dead
    /// link, and [`ImClient::reconnect_now`] does not override that. Attempts made before the
    /// network went down do not count towards `max_reconnect_attempts` afterwards: when it
    /// comes back the backoff starts over. A live connection is not closed by marking the
    /// network down (reachability flaps during a Wi-Fi/cellular handover while the
    /// connection may survive); heartbeats decide whether it is dead.
    ///
    /// When the network comes back the client reconnects promptly but not at once: it waits
    /// a delay drawn like the first reconnect's (`reconnect.delay(1)`, full jitter over
    /// `[0, reconnect.base]` by default) in [`ConnectionState::Reconnecting`], so a fleet that
    /// regains the network together does not hit the vendor in one instant.
    /// [`ImClient::login`] called while the network is down waits for it the same way (it
    /// returns once online or stopped for good, as always).
    pub fn set_network_available(&self, available: bool) {
        let changed = self.shared.network.send_if_modified(|now| {
            let changed = *now != available;
            *now = available;
            changed
        });
        if changed {
            tracing::info!(available, "network availability");
        }
    }

    /// Whether the client takes the network to be available (see
    /// [`ImClient::set_network_available`]).
    pub fn network_available(&self) -> bool {
        *self.shared.network.borrow()
    }

    /// Asks the supervisor to drop the connection and reconnect now (e.g. the app learned
    /// the network is back). While the network is marked down (see
    /// [`ImClient::set_network_available`]) the reconnect waits until it is back.
    pub async fn reconnect_now(&self) {
        let tx = self.task.lock().as_ref().map(|r| r.commands.clone());
        if let Some(tx) = tx {
            let _ = tx.send(Command::Reconnect).await;
        }
    }

    /// Logs out and stops the supervisor.
    pub async fn logout(&self) {
        let mut retiring = self.login_gate.lock().await;
        if let Some(r) = self.task.lock().take() {
            *retiring = Some(r);
        }
        if let Err(e) = self.reclaim(&mut retiring).await {
            tracing::warn!(error = %e, "the supervisor ended abnormally");
        }
    }

    /// Stops the supervisor in `retiring` (if any) and its send queue's task, waits for
    /// both, and takes back the vendor's event stream and the own-sent channel for the next
    /// login. Cancel-safe: every wait polls the handles in place, and the slot is emptied
    /// only after the leftovers are back, so a caller that gives up leaves the work to the
    /// next `login`/`logout`.
    async fn reclaim(&self, retiring: &mut Option<Running>) -> Result<(), ArchError> {
        let Some(r) = retiring.as_mut() else {
            return Ok(());
        };
        // Ask it to log out and wait for that. One that stopped on its own has dropped its
        // command receiver, so both fail at once; a logout whose caller gave up before its
        // command went out is finished here.
        let (tx, rx) = oneshot::channel();
        if r.commands.send(Command::Logout(tx)).await.is_ok() {
            let _ = rx.await;
        }
        r.sender.abort();
        // Wait until the aborted task is gone, so that it no longer holds the store (a
        // store reopened right after logout must find its directory unlocked). A handle
        // already awaited to its end (by a call that then gave up) is not polled again.
        if !r.sender.is_finished() {
            let _ = (&mut r.sender).await;
        }
        let left = (&mut r.handle).await;
        // Nothing awaits from here on: the slot empties exactly when the leftovers land.
        *retiring = None;
        match left {
            Ok(left) => {
                *self.events.lock() = Some(left.events);
                *self.shared.own_sent_rx.lock() = left.own;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "the supervisor task failed");
                Err(ArchError::Stopped)
            }
        }
    }

    /// One page of a conversation's history in `window`, persisted locally. Ranges no
    /// configured source can serve are returned as gaps.
    pub async fn history(
        &self,
        conversation: &ConversationId,
        window: HistoryWindow,
        limit: u32,
        cursor: Option<PageCursor>,
    ) -> Result<HistoryResult, ArchError> {
        timeline::window_page(&self.shared, conversation, window, limit, cursor).await
    }
}

/// Sending: the persistent send queue (`send_queue`).
impl ImClient {
    /// Queues a message: it is persisted and announced as `Sending` before this returns,
    /// and goes out as soon as the client is online. Oversized content is refused here.
    pub async fn send(
        &self,
        conversation: ConversationId,
        content: Content,
    ) -> Result<ClientMsgId, ArchError> {
        send_queue::send(&self.shared, conversation, content).await
    }

    /// Puts a failed item back in the queue (same client id).
    pub async fn resend(&self, id: &ClientMsgId) -> Result<(), ArchError> {
        send_queue::resend(&self.shared, id).await
    }

    /// Removes an unsent item from the queue, releasing the ones behind it.
    pub async fn cancel(&self, id: &ClientMsgId) -> Result<(), ArchError> {
        send_queue::cancel(&self.shared, id).await
    }

    /// The queue as it stands, in enqueue order (for a UI that shows why a message waits).
    pub async fn outbox(&self) -> Result<Vec<OutboxItem>, ArchError> {
        send_queue::outbox(&self.shared).await
    }
}

/// The conversation list and its user settings (`conversations`). Every setting is
/// durable when its call returns.
impl ImClient {
    /// Rows `offset..offset + limit` of the conversation list, pinned first, newest first.
    pub fn conversations(&self, offset: usize, limit: usize) -> Vec<ConversationSummary> {
        conversations::page(&self.shared, offset, limit)
    }

    /// Unread messages over all conversations that are not muted.
    pub fn total_unread(&self) -> u64 {
        conversations::total_unread(&self.shared)
    }

    /// Marks a conversation read, and tells the vendor where it supports read receipts.
    pub async fn mark_read(&self, conversation: &ConversationId) -> Result<(), ArchError> {
        conversations::mark_read(&self.shared, conversation).await
    }

    /// Pins or unpins a conversation.
    pub async fn set_pinned(&self, conversation: &ConversationId, pinned: bool) {
        conversations::set_pinned(&self.shared, conversation, pinned).await;
    }

    /// Mutes or unmutes a conversation.
    pub async fn set_muted(&self, conversation: &ConversationId, muted: bool) {
        conversations::set_muted(&self.shared, conversation, muted).await;
    }

    /// Saves (`Some`) or clears (`None`) a conversation's draft.
    pub async fn set_draft(&self, conversation: &ConversationId, draft: Option<String>) {
        conversations::set_draft(&self.shared, conversation, draft).await;
    }
}

/// Message details: the timeline from the store and the history windows (`timeline`).
impl ImClient {
    /// Up to `limit` messages older than `before` (the newest when `None`), newest first.
    /// When the store runs out, older pages continue through the history windows, are
    /// persisted, and whatever no source can serve is reported as a gap.
    pub async fn timeline_before(
        &self,
        conversation: &ConversationId,
        before: Option<&Message>,
        limit: usize,
    ) -> Result<TimelinePage, ArchError> {
        timeline::page_before(&self.shared, conversation, before, limit).await
    }

    /// Up to `limit` locally stored messages newer than `after`, oldest first.
    pub async fn timeline_after(
        &self,
        conversation: &ConversationId,
        after: &Message,
        limit: usize,
    ) -> Result<Vec<Message>, ArchError> {
        timeline::page_after(&self.shared, conversation, after, limit).await
    }

    /// A locally stored message by its vendor id.
    pub async fn message(&self, id: &ServerMsgId) -> Result<Option<Message>, ArchError> {
        self.shared.store.message(id).await
    }
}

/// The message lifecycle: recall, edit, delete for me, read state (`lifecycle`).
impl ImClient {
    /// Recalls my message `id` for everyone (within the vendor's window,
    /// [`Vendor::lifecycle`](im_service::Vendor::lifecycle)). When this returns the change is
    /// durable here and announced ([`ClientEvent::MessageChanged`]); the message shows as
    /// [`Content::Recalled`]. A refusal is [`ArchError::ChangeRefused`]; a vendor without
    /// recall answers [`ArchError::Permanent`] with `Unsupported`.
    pub async fn recall(
        &self,
        conversation: &ConversationId,
        id: &ServerMsgId,
    ) -> Result<MessageChange, ArchError> {
        lifecycle::recall(&self.shared, conversation, id).await
    }

    /// Replaces the content of message `id` (who may, and until when: the vendor's
    /// policy). Durable and announced when this returns, like [`ImClient::recall`]; the
    /// message shows once, with its latest content ([`ImClient::revision`] says it was
    /// edited).
    pub async fn edit(
        &self,
        conversation: &ConversationId,
        id: &ServerMsgId,
        content: Content,
    ) -> Result<MessageChange, ArchError> {
        lifecycle::edit(&self.shared, conversation, id, &content).await
    }

    /// Deletes message `id` for me, on all my devices; gone from this timeline and the
    /// conversation list when this returns.
    pub async fn delete_for_me(
        &self,
        conversation: &ConversationId,
        id: &ServerMsgId,
    ) -> Result<MessageChange, ArchError> {
        lifecycle::delete_for_me(&self.shared, conversation, id).await
    }

    /// What this client knows of message `id`'s changes (its revision, when it was last
    /// edited, whether it is deleted for me); `None` when it never changed here.
    pub async fn revision(&self, id: &ServerMsgId) -> Result<Option<MessageRevision>, ArchError> {
        self.shared.store.revision(id).await
    }

    /// The newest read position of each peer of `conversation` ("seen"), as the vendor
    /// reported them ([`ClientEvent::ReadBy`]).
    pub async fn read_receipts(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<ReadReceipt>, ArchError> {
        self.shared.store.read_receipts(conversation).await
    }
}

/// Durable subscriptions (`durable`).
impl ImClient {
    /// Opens the durable subscription `name`, registering it on first use (it then starts
    /// at the journal's head: it receives what is delivered from now on). Register before
    /// the first [`ImClient::login`] to receive the offline messages of that login too.
    ///
    /// Only one reader per name should be open at a time: two readers of one name would
    /// each be handed the same events.
    pub async fn durable_subscription(&self, name: &str) -> Result<DurableSubscription, ArchError> {
        durable::open(&self.shared, name).await
    }

    /// Forgets the durable subscription `name` and the journal entries only it held. When
    /// no subscription is left the client stops journaling (after its next restart).
    pub async fn remove_durable_subscription(&self, name: &str) -> Result<(), ArchError> {
        durable::remove(&self.shared, name).await
    }
}

impl Drop for ImClient {
    fn drop(&mut self) {
        if let Some(r) = self.task.lock().take() {
            r.handle.abort();
            r.sender.abort();
        }
        if let Some(r) = self.login_gate.get_mut().take() {
            r.handle.abort();
            r.sender.abort();
        }
    }
}
