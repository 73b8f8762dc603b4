//! `ImClient`: the client facade and its connection supervisor. One background task owns
//! the vendor connection: it logs in, runs the ACK-online sync, watches heartbeats and
//! vendor events, reconnects with capped, jittered backoff, and publishes everything on
//! the client's distribution stream.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use im_service::{
    Capability, Clock, ConversationId, Credentials, EventStream, HistoryQuery, HistoryRange,
    HistoryScope, Message, Origin, ReceivedMessage, Seq, ServerMsgId, ServiceError, Token, UserId,
    Vendor, VendorEvent,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::bus::{Bus, BusStream, DeliveryPolicy, Filter};
use crate::error::ArchError;
use crate::events::{ClientEvent, ConnectionState, SyncProgress};
use crate::history::{HistoryGap, HistoryResult, HistorySource, HistoryWindow, VendorHistory};
use crate::retry::{Backoff, Jitter, RetryPolicy};
use crate::sequencer::Sequencer;
use crate::store::{MemoryStore, Store, SyncCursor};

/// Where fresh tokens come from (the company backend). Called once per expiry.
#[async_trait]
pub trait TokenProvider: Send + Sync {
    /// A token for `user` that is valid now.
    async fn token(&self, user: &UserId) -> Result<Token, ServiceError>;
}

/// A stream of the client's events (shared, `Arc`ed); dropping it unsubscribes.
pub type Subscription = BusStream<ClientEvent>;

/// Tunables of the client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Time between heartbeats while online.
    pub heartbeat_interval: Duration,
    /// A heartbeat unanswered for this long counts as missed.
    pub heartbeat_timeout: Duration,
    /// Consecutive misses that mean the connection is dead.
    pub max_missed_heartbeats: u32,
    /// Delays between reconnect attempts.
    pub reconnect: Backoff,
    /// Give up reconnecting after this many attempts (`None`: never).
    pub max_reconnect_attempts: Option<u32>,
    /// Retries of pulls, acks and going online.
    pub retry: RetryPolicy,
    /// Offline batch size asked for.
    pub offline_batch: u32,
    /// Largest hole filled live; older parts stay reachable as history.
    pub gap_fill_limit: u64,
    /// Page size of gap fills and catch-up pulls.
    pub page_size: u32,
    /// Queue size of each subscription.
    pub subscriber_capacity: usize,
    /// How many of the most recently active conversations are checked for a lost tail
    /// after every (re)connect.
    pub catch_up_conversations: usize,
    /// Most pages of the all-conversations catch-up query after a reconnect.
    pub catch_up_pages: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(10),
            max_missed_heartbeats: 2,
            reconnect: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
                jitter: Jitter::Full,
            },
            max_reconnect_attempts: None,
            retry: RetryPolicy::default(),
            offline_batch: 200,
            gap_fill_limit: 500,
            page_size: 100,
            subscriber_capacity: 1024,
            catch_up_conversations: 50,
            catch_up_pages: 10,
        }
    }
}

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
        let (own_tx, own_rx) = mpsc::unbounded_channel();
        let me = self.credentials.user.clone();
        let shared = Arc::new(Shared {
            vendor: self.vendor,
            store: self.store,
            config: self.config,
            sources: self.sources,
            clock: self.clock,
            provider: self.provider,
            credentials: Mutex::new(self.credentials),
            // The supervisor never waits for a reader: a full queue drops its oldest event
            // and tells its reader (lossless readers use durable subscriptions).
            distributor: Bus::never_waiting(),
            state: watch::channel(ConnectionState::Disconnected).0,
            network: watch::channel(true).0,
            outbox_wake: tokio::sync::Notify::new(),
            next_position: tokio::sync::Mutex::new(None),
            own_sent: own_tx,
            own_sent_rx: Mutex::new(Some(own_rx)),
            conversations: Mutex::new(crate::conversations::ConversationList::new(me)),
            journal_on: AtomicBool::new(false),
            journal_head: watch::channel(0).0,
            stopped_by: Mutex::new(None),
            clock_skew_ms: std::sync::atomic::AtomicU64::new(0),
        });
        ImClient {
            shared,
            events: Mutex::new(events),
            task: Mutex::new(None),
            login_gate: tokio::sync::Mutex::new(None),
        }
    }
}

/// Everything the facade and the supervisor share.
pub(crate) struct Shared {
    pub(crate) vendor: Arc<dyn Vendor>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: ClientConfig,
    pub(crate) sources: HashMap<HistoryWindow, Arc<dyn HistorySource>>,
    /// Measures history windows.
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) provider: Option<Arc<dyn TokenProvider>>,
    pub(crate) credentials: Mutex<Credentials>,
    pub(crate) distributor: Bus<ClientEvent>,
    pub(crate) state: watch::Sender<ConnectionState>,
    /// Whether the app says the device has a network (reachability); no connection attempt
    /// is made while it is `false`.
    network: watch::Sender<bool>,
    /// Wakes the sender task (new item, resend, cancel, back online).
    pub(crate) outbox_wake: tokio::sync::Notify,
    /// Next outbox position; loaded from the store on first use.
    pub(crate) next_position: tokio::sync::Mutex<Option<u64>>,
    /// Own sent messages handed to the supervisor's sequencer.
    pub(crate) own_sent: mpsc::UnboundedSender<Message>,
    pub(crate) own_sent_rx: Mutex<Option<mpsc::UnboundedReceiver<Message>>>,
    /// The conversation list, updated per delivered or sent message.
    pub(crate) conversations: Mutex<crate::conversations::ConversationList>,
    /// Whether delivered messages go to the journal (a durable subscription is registered).
    pub(crate) journal_on: AtomicBool,
    /// The journal's head as last committed; wakes durable subscriptions.
    pub(crate) journal_head: watch::Sender<u64>,
    /// Why the supervisor stopped for good, typed (`login()` answers with it).
    stopped_by: Mutex<Option<ArchError>>,
    /// How far the vendor's clock and ours differed at the last login, in milliseconds
    /// (0 until measured): history gaps no longer than this are clock noise, not gaps.
    clock_skew_ms: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Whether `gap` is more than the clock skew measured at login: a vendor whose clock
    /// runs a few milliseconds ahead puts its retention horizon that much inside a window,
    /// which is not a range anyone lost.
    pub(crate) fn is_real_gap(&self, gap: &HistoryGap) -> bool {
        let skew = self.clock_skew_ms.load(Ordering::Relaxed);
        gap.to.as_millis().saturating_sub(gap.from.as_millis()) > skew as i64
    }

    /// Ends in terminal `state` for the typed reason `cause` (what `login()` answers).
    async fn stop(&self, state: ConnectionState, cause: ArchError) {
        *self.stopped_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(cause);
        self.set_state(state).await;
    }

    /// The typed reason for terminal state `state`.
    fn stop_reason(&self, state: &ConnectionState) -> ArchError {
        if let Some(cause) = self
            .stopped_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return cause;
        }
        match state {
            ConnectionState::Kicked(r) => ArchError::Kicked(r.clone()),
            ConnectionState::TokenExpired => ArchError::TokenExpired,
            ConnectionState::LoggedOut => ArchError::LoggedOut,
            other => ArchError::Unavailable(format!("{other:?}")),
        }
    }

    pub(crate) async fn set_state(&self, state: ConnectionState) {
        tracing::info!(state = ?state, "connection state");
        self.state.send_replace(state.clone());
        self.distributor.publish(ClientEvent::State(state)).await;
    }

    fn credentials(&self) -> Credentials {
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) async fn retry<T, Fut>(
        &self,
        op: &'static str,
        f: impl FnMut() -> Fut,
    ) -> Result<T, ArchError>
    where
        Fut: std::future::Future<Output = Result<T, ServiceError>>,
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

/// The running supervisor task and its command channel.
struct Running {
    commands: mpsc::Sender<Command>,
    /// Hands back what a later `login` needs when the supervisor stops.
    handle: JoinHandle<Leftovers>,
    /// The send queue's task; stops with the supervisor.
    sender: JoinHandle<()>,
}

enum Command {
    Logout(oneshot::Sender<()>),
    Reconnect,
}

/// What a stopped supervisor hands back, so that the same client can log in again (after
/// logout, a kick, token expiry or a refused login).
struct Leftovers {
    events: EventStream,
    own: Option<mpsc::UnboundedReceiver<Message>>,
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
/// reference vendor over TCP, each with a [`SledStore`](crate::SledStore)) and
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

/// A snapshot of the connection state with helpers.
#[derive(Debug, Clone, PartialEq)]
pub struct StateView(pub ConnectionState);

impl StateView {
    /// Whether the client is online.
    pub fn is_online(&self) -> bool {
        self.0 == ConnectionState::Online
    }
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

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
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
    pub fn state(&self) -> StateView {
        StateView(self.shared.state.borrow().clone())
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
                let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
                if matches!(task.as_ref(), Some(r) if stopping || r.handle.is_finished()) {
                    *retiring = task.take();
                }
            }
            self.reclaim(&mut retiring).await?;
            let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
            if task.is_none() {
                let events = self.events.lock().unwrap_or_else(|e| e.into_inner()).take();
                // Only gone when a supervisor panicked (its stream went with it).
                let Some(events) = events else {
                    return Err(ArchError::Stopped);
                };
                *self
                    .shared
                    .stopped_by
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                let (tx, rx) = mpsc::channel(8);
                let user = self.shared.credentials().user;
                let span = tracing::info_span!("im_client", user = %user, vendor = self.shared.vendor.name());
                self.shared
                    .state
                    .send_replace(ConnectionState::Disconnected);
                let own = self
                    .shared
                    .own_sent_rx
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                let sender = tokio::spawn(
                    crate::send_queue::run(self.shared.clone()).instrument(span.clone()),
                );
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
    pub fn set_token(&self, token: im_service::Token) {
        self.shared
            .credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .token = token;
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
        let tx = self
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| r.commands.clone());
        if let Some(tx) = tx {
            let _ = tx.send(Command::Reconnect).await;
        }
    }

    /// Logs out and stops the supervisor.
    pub async fn logout(&self) {
        let mut retiring = self.login_gate.lock().await;
        if let Some(r) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
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
                *self.events.lock().unwrap_or_else(|e| e.into_inner()) = Some(left.events);
                *self
                    .shared
                    .own_sent_rx
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = left.own;
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
        cursor: Option<im_service::PageCursor>,
    ) -> Result<HistoryResult, ArchError> {
        let now = self.shared.clock.now();
        let (from, to) = window.range(now);
        let Some(source) = self.shared.sources.get(&window).cloned() else {
            return Ok(HistoryResult {
                messages: Vec::new(),
                gaps: vec![HistoryGap {
                    from,
                    to,
                    reason: format!("no history source for {window:?}"),
                }],
                next: None,
            });
        };
        let page = self
            .shared
            .retry("pull_history", || {
                source.page(conversation, from, to, cursor.clone(), limit)
            })
            .await?;
        self.shared.store.put_messages(&page.messages).await?;
        let gaps = HistoryGap::before_horizon(source.name(), page.horizon, from, to)
            .into_iter()
            .filter(|g| self.shared.is_real_gap(g))
            .collect();
        Ok(HistoryResult {
            messages: page.messages,
            gaps,
            next: page.next,
        })
    }
}

impl Drop for ImClient {
    fn drop(&mut self) {
        if let Some(r) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.handle.abort();
            r.sender.abort();
        }
        if let Some(r) = self.login_gate.get_mut().take() {
            r.handle.abort();
            r.sender.abort();
        }
    }
}

/// Why the online loop ended.
enum Exit {
    Reconnect(String),
    /// The token expired and was refreshed: reconnect with the fresh one, which is this
    /// expiry's one refresh (a refusal of it ends the client).
    Refreshed,
    Stop(ConnectionState),
    Logout(Option<oneshot::Sender<()>>),
}

/// The supervisor: connect, sync, stay online, reconnect, until told to stop.
async fn supervise(
    shared: Arc<Shared>,
    mut events: EventStream,
    commands: mpsc::Receiver<Command>,
    mut own: Option<mpsc::UnboundedReceiver<Message>>,
) -> Leftovers {
    supervise_until_stopped(shared, &mut events, commands, &mut own).await;
    Leftovers { events, own }
}

/// The body of [`supervise`]; returns when the client stopped for good.
async fn supervise_until_stopped(
    shared: Arc<Shared>,
    events: &mut EventStream,
    mut commands: mpsc::Receiver<Command>,
    own: &mut Option<mpsc::UnboundedReceiver<Message>>,
) {
    let mut engine = SyncEngine::load(&shared).await;
    if let Err(error) = load_conversations(&shared).await {
        tracing::warn!(error = %error, "cannot rebuild the conversation list");
        shared
            .distributor
            .publish(ClientEvent::StoreFailed {
                op: "load_conversations",
                error,
            })
            .await;
    }
    let mut attempt: u32 = 0;
    let mut refreshed = false;
    // The last retryable error, for the typed reason of giving up.
    let mut last_error: Option<ServiceError> = None;
    loop {
        // While the network is known down nobody gives up: the attempts that failed were
        // probably the network's fault, and the count starts over when it is back.
        if attempt > 0
            && *shared.network.borrow()
            && shared
                .config
                .max_reconnect_attempts
                .is_some_and(|max| attempt > max)
        {
            let cause = ArchError::GaveUp {
                op: "login",
                attempts: attempt - 1,
                last: last_error
                    .unwrap_or(ServiceError::Unavailable("no attempt succeeded".into())),
            };
            shared
                .stop(
                    ConnectionState::Failed(format!(
                        "gave up after {} reconnect attempts",
                        attempt - 1
                    )),
                    cause,
                )
                .await;
            return;
        }
        if !wait_to_attempt(&shared, &mut attempt, &mut commands, events).await {
            return;
        }
        shared.set_state(ConnectionState::Connecting).await;
        let creds = shared.credentials();
        let login = async {
            tracing::info!(user = %creds.user, attempt, "login");
            shared.vendor.login(&creds).await
        }
        .instrument(tracing::info_span!("login", user = %creds.user, attempt))
        .await;
        let login_time = match login {
            Ok(session) => {
                tracing::debug!(session = %session.session_id, "logged in");
                if let Some(server) = session.server_time {
                    let skew = server.as_millis().abs_diff(shared.clock.now().as_millis());
                    shared.clock_skew_ms.store(skew, Ordering::Relaxed);
                }
                session.server_time
            }
            Err(ServiceError::TokenExpired) if shared.provider.is_some() && !refreshed => {
                refreshed = true;
                if refresh_token(&shared).await {
                    continue;
                }
                shared
                    .stop(ConnectionState::TokenExpired, ArchError::TokenExpired)
                    .await;
                return;
            }
            Err(e) => match terminal_state(&e) {
                Some(state) => {
                    shared.stop(state, refusal("login", e)).await;
                    return;
                }
                None => {
                    last_error = Some(e);
                    attempt += 1;
                    continue;
                }
            },
        };
        refreshed = false;
        shared.set_state(ConnectionState::Syncing).await;
        if let Err(e) = engine.sync_pass(&shared, login_time).await {
            let cause = e.service_error().cloned();
            let terminal = cause.as_ref().and_then(terminal_state);
            shared
                .distributor
                .publish(ClientEvent::Sync(SyncProgress::Failed(e)))
                .await;
            let _ = shared.vendor.logout().await;
            match (terminal, cause) {
                (Some(state), Some(cause)) => {
                    shared.stop(state, refusal("sync", cause)).await;
                    return;
                }
                (_, cause) => last_error = cause.or(last_error),
            }
            attempt += 1;
            continue;
        }
        shared.set_state(ConnectionState::Online).await;
        match online(&shared, &mut engine, events, &mut commands, own).await {
            Exit::Reconnect(why) => {
                tracing::warn!(reason = %why, "reconnecting");
                let _ = shared.vendor.logout().await;
                attempt = 1;
            }
            Exit::Refreshed => {
                tracing::warn!("token expired; refreshed; reconnecting");
                let _ = shared.vendor.logout().await;
                attempt = 1;
                // This expiry's refresh is spent: a refused fresh token stops the client.
                refreshed = true;
            }
            Exit::Stop(state) => {
                let _ = shared.vendor.logout().await;
                let cause = shared.stop_reason(&state);
                shared.stop(state, cause).await;
                return;
            }
            Exit::Logout(done) => {
                finish_logout(&shared, done).await;
                return;
            }
        }
    }
}

/// Waits before connection attempt `attempt` (0: the first login, no backoff): the backoff
/// delay, and while the network is known down, until it is back and then a jittered delay
/// of the first retry's ceiling (a fleet that regains the network together must not
/// reconnect in one instant). Attempts counted before the network went down are forgotten
/// (`attempt` drops to 1; 0 stays 0). Returns `false` when the supervisor must stop (logged
/// out, or its command or event channel closed).
async fn wait_to_attempt(
    shared: &Shared,
    attempt: &mut u32,
    commands: &mut mpsc::Receiver<Command>,
    events: &mut EventStream,
) -> bool {
    let mut network = shared.network.subscribe();
    let mut next_in = (*attempt > 0).then(|| shared.config.reconnect.delay(*attempt));
    loop {
        if !*network.borrow_and_update() {
            shared.set_state(ConnectionState::Disconnected).await;
            tracing::info!("network down: no connection attempt until it is back");
            loop {
                tokio::select! {
                    changed = network.changed() => {
                        // The sender lives in `shared`, which outlives this task.
                        if changed.is_err() || *network.borrow_and_update() {
                            break;
                        }
                    }
                    cmd = commands.recv() => match cmd {
                        // Nothing is attempted while the network is known down.
                        Some(Command::Reconnect) => {}
                        Some(Command::Logout(done)) => {
                            finish_logout(shared, Some(done)).await;
                            return false;
                        }
                        None => return false,
                    },
                    // Stale events of the dead connection are dropped while we wait.
                    ev = events.next() => if ev.is_none() { return false },
                }
            }
            *attempt = (*attempt).min(1);
            next_in = Some(shared.config.reconnect.delay(1));
        }
        let Some(wait) = next_in else {
            return true;
        };
        shared
            .set_state(ConnectionState::Reconnecting {
                attempt: (*attempt).max(1),
                next_in: wait,
            })
            .await;
        let wake = tokio::time::sleep(wait);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => return true,
                _ = network.changed() => {
                    if !*network.borrow_and_update() {
                        // Down again: wait for it, then draw a fresh delay.
                        break;
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Reconnect) => return true,
                    Some(Command::Logout(done)) => {
                        finish_logout(shared, Some(done)).await;
                        return false;
                    }
                    None => return false,
                },
                // Stale events of the dead connection are dropped while we wait.
                ev = events.next() => if ev.is_none() { return false },
            }
        }
    }
}

async fn finish_logout(shared: &Shared, done: Option<oneshot::Sender<()>>) {
    let _ = shared.vendor.logout().await;
    shared
        .stop(ConnectionState::LoggedOut, ArchError::LoggedOut)
        .await;
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// The typed reason of a refusal `e` during `op` that ends the client.
fn refusal(op: &'static str, e: ServiceError) -> ArchError {
    match e {
        ServiceError::Kicked(r) => ArchError::Kicked(r),
        ServiceError::TokenExpired => ArchError::TokenExpired,
        ServiceError::AuthFailed(why) => ArchError::AuthFailed(why),
        ServiceError::UnknownUser(user) => ArchError::UnknownUser(user),
        error => ArchError::Permanent { op, error },
    }
}

/// The state a non-retryable login/sync error ends in, or `None` if it is retryable.
fn terminal_state(e: &ServiceError) -> Option<ConnectionState> {
    match e {
        ServiceError::Kicked(r) => Some(ConnectionState::Kicked(r.clone())),
        ServiceError::TokenExpired => Some(ConnectionState::TokenExpired),
        e if !e.is_retryable() => Some(ConnectionState::Failed(e.to_string())),
        _ => None,
    }
}

async fn refresh_token(shared: &Shared) -> bool {
    let Some(provider) = &shared.provider else {
        return false;
    };
    let user = shared.credentials().user;
    match provider.token(&user).await {
        Ok(token) => {
            shared
                .credentials
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .token = token;
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "token refresh failed");
            false
        }
    }
}

/// The online loop: live pushes, heartbeats, commands.
async fn online(
    shared: &Arc<Shared>,
    engine: &mut SyncEngine,
    events: &mut EventStream,
    commands: &mut mpsc::Receiver<Command>,
    own: &mut Option<mpsc::UnboundedReceiver<Message>>,
) -> Exit {
    let mut heartbeat = tokio::time::interval_at(
        Instant::now() + shared.config.heartbeat_interval,
        shared.config.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut missed = 0u32;
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Logout(done)) => return Exit::Logout(Some(done)),
                Some(Command::Reconnect) => return Exit::Reconnect("requested".into()),
                None => return Exit::Logout(None),
            },
            Some(sent) = recv_own(own) => {
                // Our own message, acknowledged: it takes its place in the sequence quietly
                // (the UI already shows it as the local echo) and releases what waited on it.
                if let Err(e) = engine.ingest_except(shared, vec![sent.clone()], Origin::Online, Some(&sent.server_id)).await {
                    return Exit::Reconnect(format!("ingest failed: {e}"));
                }
            }
            ev = events.next() => match ev {
                None => return Exit::Reconnect("vendor event stream ended".into()),
                Some(VendorEvent::MessagePushed(m)) => {
                    if let Err(e) = engine.ingest(shared, vec![m], Origin::Online).await {
                        return Exit::Reconnect(format!("ingest failed: {e}"));
                    }
                    if let Err(e) = engine.fill_gaps(shared).await {
                        return Exit::Reconnect(format!("gap fill failed: {e}"));
                    }
                }
                Some(VendorEvent::ConnectionLost { reason }) => {
                    // A late notice from an earlier connection must not kill this one.
                    if shared.vendor.ping().await.is_err() {
                        return Exit::Reconnect(reason);
                    }
                }
                Some(VendorEvent::Kicked(r)) => return Exit::Stop(ConnectionState::Kicked(r)),
                Some(VendorEvent::TokenWillExpire { expires_at }) => {
                    shared.distributor.publish(ClientEvent::TokenWillExpire { expires_at }).await;
                }
                Some(VendorEvent::TokenExpired) => {
                    if refresh_token(shared).await {
                        return Exit::Refreshed;
                    }
                    return Exit::Stop(ConnectionState::TokenExpired);
                }
            },
            _ = heartbeat.tick() => {
                match tokio::time::timeout(shared.config.heartbeat_timeout, shared.vendor.ping()).await {
                    Ok(Ok(rtt)) => {
                        missed = 0;
                        shared.distributor.publish(ClientEvent::Heartbeat { rtt }).await;
                    }
                    Ok(Err(e)) if terminal_state(&e).is_some() && !matches!(e, ServiceError::NotLoggedIn) => {
                        return terminal_state(&e).map_or(Exit::Reconnect(e.to_string()), Exit::Stop);
                    }
                    _ => {
                        missed += 1;
                        shared.distributor.publish(ClientEvent::HeartbeatMissed { missed }).await;
                        if missed >= shared.config.max_missed_heartbeats {
                            return Exit::Reconnect(format!("{missed} heartbeats missed"));
                        }
                    }
                }
            }
        }
    }
}

/// Rebuilds the conversation list from the store: every conversation with delivered
/// messages or saved state, its newest message and its unread messages.
async fn load_conversations(shared: &Shared) -> Result<(), ArchError> {
    /// Unread messages counted per conversation at most (a badge shows "999+" anyway).
    const MAX_UNREAD_SCAN: usize = 10_000;
    let states: HashMap<ConversationId, crate::store::ConversationState> = shared
        .store
        .conversation_states()
        .await?
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let mut ids: Vec<ConversationId> = shared
        .store
        .cursors()
        .await?
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    ids.extend(states.keys().cloned());
    ids.sort();
    ids.dedup();
    for id in ids {
        let state = states.get(&id);
        let last = shared.store.latest(&id, 1).await?.into_iter().next();
        let read = match state.and_then(|s| s.read_up_to.as_ref()) {
            Some((_, read_id)) => shared.store.message(read_id).await?,
            None => None,
        };
        let after_read = match &read {
            Some(read) => shared.store.page_after(&id, read, MAX_UNREAD_SCAN).await?,
            None => shared.store.page_before(&id, None, MAX_UNREAD_SCAN).await?,
        };
        shared
            .conversations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(&id, state, last, read.as_ref(), &after_read);
    }
    Ok(())
}

/// The next own sent message, or never if there is no channel.
async fn recv_own(own: &mut Option<mpsc::UnboundedReceiver<Message>>) -> Option<Message> {
    match own {
        Some(rx) => rx.recv().await,
        None => futures::future::pending().await,
    }
}

/// Sync state owned by the supervisor: ordering per conversation and delivery cursors.
struct SyncEngine {
    /// Newest server time known delivered when the client last went online.
    synced_to: Option<im_service::Timestamp>,
    sequencer: Sequencer,
    cursors: HashMap<ConversationId, SyncCursor>,
    sequences: bool,
    /// Messages the previous process recorded as in flight: stored, perhaps never
    /// delivered. Each is delivered once, whichever way it comes back.
    in_flight: HashSet<ServerMsgId>,
}

impl SyncEngine {
    async fn load(shared: &Shared) -> Self {
        let cursors: HashMap<ConversationId, SyncCursor> = match shared.store.cursors().await {
            Ok(c) => c.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read sync cursors; starting from scratch");
                HashMap::new()
            }
        };
        let sequencer = Sequencer::new(
            cursors
                .iter()
                .filter_map(|(c, cur)| cur.seq.map(|s| (c.clone(), s))),
        );
        let sequences = shared
            .vendor
            .capabilities()
            .supports(Capability::SequenceNumbers);
        // Where the last completed sync pass left off. Not the newest cursor: a pass killed
        // after delivering newer offline messages would hide an older message the vendor
        // counts as delivered (pushed, acknowledged, lost with the process). A store with
        // cursors but no mark never completed a pass: catch up from the beginning (the
        // query is capped at `catch_up_pages`).
        let synced_to = match shared.store.sync_mark().await {
            Ok(Some(mark)) => Some(mark),
            Ok(None) if cursors.is_empty() => None,
            Ok(None) => Some(im_service::Timestamp::from_millis(0)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the sync mark; catching up from the start");
                Some(im_service::Timestamp::from_millis(0))
            }
        };
        match (
            shared.store.subscriptions().await,
            shared.store.journal_head().await,
        ) {
            (Ok(subs), Ok(head)) => {
                if !subs.is_empty() {
                    shared.journal_on.store(true, Ordering::SeqCst);
                }
                crate::durable::publish_head(shared, head);
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot read durable subscriptions");
                shared
                    .distributor
                    .publish(ClientEvent::StoreFailed {
                        op: "subscriptions",
                        error: e,
                    })
                    .await;
            }
        }
        let in_flight = match shared.store.in_flight().await {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the in-flight delivery record");
                HashSet::new()
            }
        };
        Self {
            synced_to,
            sequencer,
            cursors,
            sequences,
            in_flight,
        }
    }

    /// Persists, orders, deduplicates and distributes `messages`; advances cursors.
    /// Returns how many were delivered.
    async fn ingest(
        &mut self,
        shared: &Shared,
        messages: Vec<Message>,
        origin: Origin,
    ) -> Result<usize, ArchError> {
        self.ingest_except(shared, messages, origin, None).await
    }

    /// [`SyncEngine::ingest`], publishing everything released except the message `quiet`.
    async fn ingest_except(
        &mut self,
        shared: &Shared,
        mut messages: Vec<Message>,
        origin: Origin,
        quiet: Option<&im_service::ServerMsgId>,
    ) -> Result<usize, ArchError> {
        if messages.is_empty() {
            return Ok(0);
        }
        // Without sequences the store is the dedup authority, and it cannot tell a
        // duplicate from a message a crashed process stored but never delivered: record
        // what is about to be delivered first (cleared with the cursors below).
        if !self.sequences {
            let ids: Vec<_> = messages.iter().map(|m| m.server_id.clone()).collect();
            shared.store.begin_delivery(&ids).await?;
        }
        // Persist first: nothing is distributed or acknowledged that is not stored.
        let fresh = shared.store.put_messages(&messages).await?;
        let mut ready = Vec::new();
        let mut unsequenced = Vec::new();
        let mut tagged: Vec<(Message, bool)> = messages.drain(..).zip(fresh).collect();
        tagged.sort_by(|(a, _), (b, _)| (&a.conversation, a.seq).cmp(&(&b.conversation, b.seq)));
        for (m, is_new) in tagged {
            match m.seq {
                // The sequencer decides delivery: a stored-but-undelivered message (crash
                // between persist and deliver) is still released exactly once.
                Some(_) if self.sequences => ready.extend(self.sequencer.admit(m)),
                // Without sequences the store is the dedup authority, except for what the
                // previous process left in flight (stored, maybe never delivered).
                _ if is_new || self.in_flight.remove(&m.server_id) => unsequenced.push(m),
                _ => {}
            }
        }
        // Vendors give pages newest first (the contract); without sequences, messages whose
        // server times tie keep the vendor's own order: reversed to oldest first, then a
        // stable sort by time (never by id, which is random on some vendors).
        unsequenced.reverse();
        unsequenced.sort_by_key(|m| m.server_time);
        ready.extend(unsequenced);
        let mut touched: HashMap<ConversationId, SyncCursor> = HashMap::new();
        let journal_on = shared.journal_on.load(Ordering::SeqCst);
        let mut journal = Vec::new();
        let count = ready.len();
        for m in ready {
            let cur = self.cursors.entry(m.conversation.clone()).or_default();
            if self.sequences {
                cur.seq = Some(self.sequencer.delivered(&m.conversation));
            }
            cur.time = cur.time.max(m.server_time);
            touched.insert(m.conversation.clone(), *cur);
            let (row, state) = {
                let mut list = shared
                    .conversations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let row = list.on_message(&m);
                // My own message (from any device) moves my read position: keep it.
                let me = m.sender
                    == shared
                        .credentials
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .user;
                (
                    row,
                    if me {
                        list.state(&m.conversation)
                    } else {
                        None
                    },
                )
            };
            if let Some(state) = state {
                crate::send_queue::persist_state(shared, &state).await;
            }
            shared
                .distributor
                .publish(ClientEvent::ConversationChanged(row))
                .await;
            if quiet == Some(&m.server_id) {
                continue;
            }
            if journal_on {
                journal.push((m.server_id.clone(), origin));
            }
            shared
                .distributor
                .publish(ClientEvent::Message(ReceivedMessage { message: m, origin }))
                .await;
        }
        // Also when nothing was delivered: saving cursors ends the in-flight record. The
        // journal entries go in the same atomic write as the cursors: a delivery is
        // recorded once, or (after a crash before this point) repeated once.
        if !touched.is_empty() || !self.sequences {
            let batch: Vec<(ConversationId, SyncCursor)> = touched.into_iter().collect();
            let head = shared.store.commit_delivery(&batch, &journal).await?;
            if !journal.is_empty() {
                crate::durable::publish_head(shared, head);
            }
        }
        Ok(count)
    }

    /// Fetches every open hole (failure class 2: a detected gap is always fetched).
    async fn fill_gaps(&mut self, shared: &Shared) -> Result<usize, ArchError> {
        let mut delivered = 0;
        // Each round closes at least the lowest hole of every conversation; bounded so a
        // vendor that never returns a message cannot spin us forever.
        for _ in 0..64 {
            let gaps = self.sequencer.gaps();
            if gaps.is_empty() {
                break;
            }
            for gap in gaps {
                let missing = gap.before.0.saturating_sub(gap.after.0 + 1);
                let after = if missing > shared.config.gap_fill_limit {
                    let skip_to = Seq(gap.before.0 - shared.config.gap_fill_limit - 1);
                    let released = self.sequencer.skip_to(&gap.conversation, skip_to);
                    delivered += self.ingest(shared, released, Origin::History).await?;
                    skip_to
                } else {
                    gap.after
                };
                let range = HistoryRange::Seq {
                    after: Some(after),
                    before: Some(gap.before),
                };
                let fetched = self
                    .pull_range(
                        shared,
                        HistoryScope::Conversation(gap.conversation.clone()),
                        range,
                        u32::MAX,
                    )
                    .await?;
                let n = fetched.len();
                if n == 0 {
                    // The vendor no longer has it (retention): skip the hole rather than stall.
                    let released = self
                        .sequencer
                        .skip_to(&gap.conversation, Seq(gap.before.0 - 1));
                    delivered += self.ingest(shared, released, Origin::Online).await?;
                    tracing::warn!(conversation = %gap.conversation, after = gap.after.0, before = gap.before.0, "hole not served by the vendor; skipped");
                    continue;
                }
                delivered += self.ingest(shared, fetched, Origin::Online).await?;
                shared
                    .distributor
                    .publish(ClientEvent::Sync(SyncProgress::GapFilled { messages: n }))
                    .await;
            }
        }
        Ok(delivered)
    }

    /// Every message of a range, page by page, at most `max_pages` pages.
    async fn pull_range(
        &self,
        shared: &Shared,
        scope: HistoryScope,
        range: HistoryRange,
        max_pages: u32,
    ) -> Result<Vec<Message>, ArchError> {
        let mut out = Vec::new();
        let mut cursor = None;
        for _ in 0..max_pages {
            let query = HistoryQuery {
                scope: scope.clone(),
                range,
                cursor: cursor.clone(),
                limit: shared.config.page_size,
            };
            let page = shared
                .retry("pull_history", || shared.vendor.pull_history(&query))
                .await?;
            out.extend(page.messages);
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(out)
    }

    /// ACK-online: drain the offline queue (persist, then acknowledge each batch), catch up
    /// conversations the vendor does not queue for us, fill holes, then go online.
    async fn sync_pass(
        &mut self,
        shared: &Shared,
        login_time: Option<im_service::Timestamp>,
    ) -> Result<(), ArchError> {
        let span = tracing::info_span!("sync_pass", vendor = shared.vendor.name());
        async {
            shared
                .distributor
                .publish(ClientEvent::Sync(SyncProgress::Started))
                .await;
            let caps = shared.vendor.capabilities().clone();
            let mut delivered = self.recover_in_flight(shared).await?;
            if caps.supports(Capability::OfflineQueue) {
                loop {
                    let batch = shared
                        .retry("pull_offline", || {
                            shared.vendor.pull_offline(shared.config.offline_batch)
                        })
                        .await?;
                    let n = batch.messages.len();
                    let left = batch.left;
                    // Persist and hand the batch to the sequencer before acknowledging it:
                    // once acked, the vendor will not offer it again, so a pass that fails
                    // later must still have it (held until the holes below it close).
                    delivered += self.ingest(shared, batch.messages, Origin::Offline).await?;
                    if let Some(ack) = &batch.ack {
                        // Durable before the vendor forgets them (failure class 4/8: a
                        // crash after the ack must not lose the batch).
                        shared.store.flush().await?;
                        shared
                            .retry("ack_offline", || shared.vendor.ack_offline(ack))
                            .await?;
                    }
                    shared
                        .distributor
                        .publish(ClientEvent::Sync(SyncProgress::Page { messages: n, left }))
                        .await;
                    if left == 0 || n == 0 {
                        break;
                    }
                }
            }
            // Pushes lost in flight when a connection died are in neither the offline queue
            // nor any later push: ask for everything after each cursor (OpenIM's max-seq
            // check). Vendors without an offline queue rely on this entirely.
            let missed = self
                .catch_up(shared, !caps.supports(Capability::OfflineQueue))
                .await?;
            delivered += self.ingest(shared, missed, Origin::Offline).await?;
            delivered += self.fill_gaps(shared).await?;
            shared
                .retry("go_online", || shared.vendor.go_online())
                .await?;
            // Everything stored before this login is in; pushes from now on are newer.
            // (The catch-up above covered pushes lost since the previous mark.) Without the
            // vendor's clock, the newest delivered message is the best mark we have.
            let newest = self.cursors.values().map(|c| c.time).max();
            self.synced_to = login_time.or(newest).or(self.synced_to);
            if let Some(mark) = self.synced_to {
                // Flushed: a live push after this point is confirmed to the vendor on
                // receipt, and only the mark tells a restarted client to catch up by time
                // from here. Losing a later mark only widens the next catch-up, but losing
                // the first one (a fresh store) skipped the catch-up entirely and lost such
                // a push for good (found by `cargo xtask sim`: 2 steps, send then crash).
                shared.store.set_sync_mark(mark).await?;
                shared.store.flush().await?;
            }
            shared
                .distributor
                .publish(ClientEvent::Sync(SyncProgress::Finished { delivered }))
                .await;
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Delivers what the previous process stored but may not have delivered, from the
    /// store: the vendor may never offer it again (a crash after its acknowledgement).
    async fn recover_in_flight(&mut self, shared: &Shared) -> Result<usize, ArchError> {
        if self.in_flight.is_empty() || self.sequences {
            return Ok(0);
        }
        let mut stored = Vec::new();
        for id in self.in_flight.clone() {
            match shared.store.message(&id).await? {
                Some(m) => stored.push(m),
                // Recorded but never stored: not ours yet, the vendor still has it.
                None => {
                    self.in_flight.remove(&id);
                }
            }
        }
        tracing::info!(
            messages = stored.len(),
            "delivering messages left in flight"
        );
        self.ingest(shared, stored, Origin::Offline).await
    }

    /// Everything after the cursors of the most recently active conversations (all of them
    /// when `all`), by sequence where the vendor has it, else by time.
    async fn catch_up(&self, shared: &Shared, all: bool) -> Result<Vec<Message>, ArchError> {
        let caps = shared.vendor.capabilities().clone();
        let mut recent: Vec<(&ConversationId, &SyncCursor)> = self.cursors.iter().collect();
        recent.sort_by_key(|(_, c)| std::cmp::Reverse(c.time));
        if !all {
            recent.truncate(shared.config.catch_up_conversations);
        }
        let mut out = Vec::new();
        // A conversation whose very first push was lost has no cursor yet: a query over all
        // conversations since the last time we were up to date finds it.
        if let (Some(from), true) = (self.synced_to, caps.supports(Capability::HistoryByTime)) {
            let range = HistoryRange::Time {
                from,
                to: im_service::Timestamp::from_millis(i64::MAX),
            };
            out.extend(
                self.pull_range(
                    shared,
                    HistoryScope::All,
                    range,
                    shared.config.catch_up_pages,
                )
                .await?,
            );
        }
        // Per conversation only where it is cheap (by sequence) or the only way (no offline
        // queue). The query above runs for every vendor with history by time: a push the
        // vendor counts as delivered (e.g. XEP-0198 acknowledged) but a crash kept from the
        // store is in no offline queue, and the offline pull has already moved the cursors
        // past it.
        if !all && !caps.supports(Capability::HistoryBySeq) {
            return Ok(out);
        }
        for (conversation, cursor) in recent {
            let range = match (
                cursor.seq,
                caps.supports(Capability::HistoryBySeq),
                caps.supports(Capability::HistoryByTime),
            ) {
                (Some(seq), true, _) => HistoryRange::Seq {
                    after: Some(seq),
                    before: None,
                },
                (_, _, true) => HistoryRange::Time {
                    from: cursor.time,
                    to: im_service::Timestamp::from_millis(i64::MAX),
                },
                _ => continue,
            };
            out.extend(
                self.pull_range(
                    shared,
                    HistoryScope::Conversation(conversation.clone()),
                    range,
                    u32::MAX,
                )
                .await?,
            );
        }
        Ok(out)
    }
}
