//! The reference vendor server: accepts TCP connections, authenticates them, and serves the
//! reference protocol (version 2: every connection opens with `HelloV2`; a version 1 client
//! is refused with a `Fatal(Protocol)` that says so) on top of a shared `MemoryVendor`,
//! applying the configured faults.
//!
//! Every connection comes from a stranger until it logs in, so the server bounds what an
//! unauthenticated peer can hold or cost: a login deadline ([`ServerConfig::login_timeout`]),
//! a share of the connections ([`ServerConfig::max_unauthenticated`]; a newcomer past it,
//! or past the connection limit, closes the oldest connection still waiting to log in
//! rather than being refused, so idle sockets cannot lock logins out), failed-login
//! throttling per account and per peer ([`ServerConfig::login_throttle`]), one answer for
//! an unknown user and a wrong token, and read buffers that grow with the bytes that
//! arrived (the wire codec). Every refusal leaves a rate-limited `warn` line naming the
//! peer ([`ServerConfig::max_warnings_per_second`]); never a token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures::{SinkExt, StreamExt};
use im_service::memory::{MemoryVendor, MemoryVendorConfig, VendorOp};
use im_service::reference::protocol::{DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION, version_1_refused};
use im_service::reference::{ClientFrame, Reply, Request, ServerFrame, WireCodec};
use im_service::{Capabilities, ServiceError, ShiftedClock, UserId, Vendor, VendorEvent};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::callbacks::{CallbackConfig, CallbackDispatcher, CallbackStats};
use crate::faults::Faults;
use crate::guard::{LoginThrottle, LoginThrottleConfig, WarnLimit};

/// The one answer to a refused login, whether the user is unknown or the token wrong: a
/// stranger must not learn which accounts exist.
pub const LOGIN_REFUSED: &str = "invalid credentials";

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen; tests use `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Storage semantics (retention, limits, kick on second login or several devices per
    /// user, the recall and edit rules the server announces in `WelcomeV2` …).
    /// `sweep_on_login` is ignored: the server sweeps every `sweep_interval` instead.
    pub vendor: MemoryVendorConfig,
    /// A connection whose client sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Connections beyond this are refused with a `Fatal(Unavailable)` frame, unless one of
    /// the open connections has not logged in yet: then the oldest of those is closed to
    /// make room (unauthenticated sockets cannot lock logins out).
    pub max_connections: usize,
    /// A connection that has not logged in this long after it was accepted is closed with
    /// `Fatal(Timeout)` (default 10 s).
    pub login_timeout: Duration,
    /// Most connections waiting to log in at once (default 4,096: a reconnect storm of
    /// 10,000 clients on an overloaded server has thousands in flight, and an idle one
    /// costs about 17 KiB); a newcomer past it closes the oldest of them with
    /// `Fatal(Unavailable)`, which a client retries.
    pub max_unauthenticated: usize,
    /// Failed-login throttling per account and per peer address.
    pub login_throttle: LoginThrottleConfig,
    /// Most refusal warnings logged per second (the rest are counted in the next line).
    pub max_warnings_per_second: u32,
    /// Largest frame body accepted.
    pub max_frame_len: usize,
    /// How often token expiry and retention are enforced.
    pub sweep_interval: Duration,
    /// Where to POST signed message callbacks, if anywhere.
    pub callbacks: Option<CallbackConfig>,
    /// Faults active from the start.
    pub faults: Faults,
    /// Seed of the fault generators.
    pub seed: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            vendor: MemoryVendorConfig::default(),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            login_timeout: Duration::from_secs(10),
            max_unauthenticated: 4096,
            login_throttle: LoginThrottleConfig::default(),
            max_warnings_per_second: 10,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            sweep_interval: Duration::from_secs(1),
            callbacks: None,
            faults: Faults::none(),
            seed: 0,
        }
    }
}

/// One login request the server received (see [`ReferenceServer::record_logins`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRecord {
    /// Who tried to log in.
    pub user: UserId,
    /// When the request arrived, by the wall clock (comparable across processes on one
    /// machine, which is what a reconnect-storm measurement needs).
    pub at: SystemTime,
}

/// State every connection task shares.
struct Shared {
    vendor: MemoryVendor,
    config: ServerConfig,
    faults: Mutex<Faults>,
    /// Bumped to break every open connection (outage start).
    outage_generation: watch::Sender<u64>,
    /// While set and in the future, new connections are dropped at once.
    outage_until: Mutex<Option<Instant>>,
    connections: AtomicUsize,
    next_connection: AtomicU64,
    /// TCP connections accepted, including those an outage dropped at once.
    accepted: AtomicU64,
    /// Login requests received.
    logins: AtomicU64,
    /// Each login request, while recording ([`ReferenceServer::record_logins`]).
    login_log: Mutex<Option<Vec<LoginRecord>>>,
    /// Connections that have not logged in yet, oldest first, with the token that closes
    /// each to make room for a newcomer.
    unauthenticated: Mutex<BTreeMap<u64, CancellationToken>>,
    throttle: LoginThrottle,
    warnings: WarnLimit,
    cancel: CancellationToken,
}

impl Shared {
    fn faults(&self) -> Faults {
        self.faults.lock().clone()
    }

    fn in_outage(&self) -> bool {
        self.outage_until.lock().is_some_and(|t| Instant::now() < t)
    }

    /// A rate-limited warning about a refused or misbehaving peer (never a token).
    fn warn_peer(&self, peer: SocketAddr, refusal: &'static str, detail: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.warnings.allow() {
            tracing::warn!(%peer, refusal, suppressed, "refused peer: {detail}");
        }
    }

    /// Registers connection `n` as waiting to log in; if that makes too many (or the
    /// connection limit is reached), closes the oldest waiting one. Returns the token that
    /// closes `n` in turn.
    fn await_login(&self, n: u64, at_limit: bool) -> CancellationToken {
        let token = CancellationToken::new();
        let evicted = {
            let mut waiting = self.unauthenticated.lock();
            let evicted = if at_limit || waiting.len() >= self.config.max_unauthenticated.max(1) {
                waiting.pop_first()
            } else {
                None
            };
            waiting.insert(n, token.clone());
            evicted
        };
        if let Some((_, oldest)) = evicted {
            oldest.cancel();
        }
        token
    }

    fn logged_in(&self, n: u64) {
        self.unauthenticated.lock().remove(&n);
    }

    fn note_login(&self, user: &UserId) {
        self.logins.fetch_add(1, Ordering::SeqCst);
        if let Some(log) = self.login_log.lock().as_mut() {
            log.push(LoginRecord {
                user: user.clone(),
                at: SystemTime::now(),
            });
        }
    }
}

/// A running reference vendor. Dropping it stops every task; [`ReferenceServer::shutdown`]
/// also waits for them.
pub struct ReferenceServer {
    addr: SocketAddr,
    clock: ShiftedClock,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    dispatcher: Option<CallbackDispatcher>,
}

impl std::fmt::Debug for ReferenceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReferenceServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ReferenceServer {
    /// Binds and starts serving.
    pub async fn start(config: ServerConfig) -> std::io::Result<Self> {
        let clock = ShiftedClock::new();
        // The server sweeps on its own schedule (`sweep_interval`, and `shift_clock`), never
        // on a login: one user's login must not hold the vendor's one lock for a pass over
        // every stored message.
        let vendor_config = MemoryVendorConfig {
            sweep_on_login: false,
            ..config.vendor.clone()
        };
        let vendor = MemoryVendor::with_clock(vendor_config, Arc::new(clock.clone()));
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let dispatcher = config.callbacks.clone().map(|cb| {
            CallbackDispatcher::spawn_with_changes(
                cb,
                vendor.store_feed(),
                vendor.change_feed(),
                Arc::new(clock.clone()),
                cancel.child_token(),
            )
        });
        let shared = Arc::new(Shared {
            vendor,
            faults: Mutex::new(config.faults.clone()),
            outage_generation: watch::channel(0).0,
            outage_until: Mutex::new(None),
            connections: AtomicUsize::new(0),
            next_connection: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            login_log: Mutex::new(None),
            unauthenticated: Mutex::new(BTreeMap::new()),
            throttle: LoginThrottle::new(&config.login_throttle),
            warnings: WarnLimit::new(config.max_warnings_per_second),
            cancel,
            config,
        });
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(listener, shared.clone(), tracker.clone()));
        tracker.spawn(sweeper(shared.clone()));
        tracing::info!(%addr, "reference vendor listening");
        Ok(Self {
            addr,
            clock,
            shared,
            tracker,
            dispatcher,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The storage engine, for administration (accounts, tokens, groups, inspection).
    pub fn vendor(&self) -> &MemoryVendor {
        &self.shared.vendor
    }

    /// The vendor clock: shift it to age stored messages.
    pub fn clock(&self) -> &ShiftedClock {
        &self.clock
    }

    /// Moves the vendor clock forward and enforces expiry and retention at once.
    pub fn shift_clock(&self, by: Duration) {
        self.clock.shift(by);
        self.shared.vendor.sweep();
    }

    /// What the server declares to clients.
    pub fn capabilities(&self) -> Capabilities {
        self.shared.vendor.capabilities().clone()
    }

    /// Replaces the active wire faults.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock() = faults;
    }

    /// Makes the next `count` requests of `op` fail with `error` (any connection).
    pub fn fail_next(&self, op: VendorOp, count: u32, error: ServiceError) {
        self.shared.vendor.fail_next(op, count, error);
    }

    /// Full outage: every connection breaks now and new ones are dropped for `duration`.
    pub fn outage(&self, duration: Duration) {
        *self.shared.outage_until.lock() = Some(Instant::now() + duration);
        self.shared.outage_generation.send_modify(|g| *g += 1);
    }

    /// Breaks every open connection now, as a network failure on the server's side would
    /// (the clients see their connection lost); new connections are accepted as before.
    pub fn drop_all_connections(&self) {
        self.outage(Duration::ZERO);
    }

    /// Open connections right now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TCP connections accepted since start (including any an outage dropped at once).
    pub fn accepted_connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Login requests received since start (refused ones included).
    pub fn login_attempts(&self) -> u64 {
        self.shared.logins.load(Ordering::SeqCst)
    }

    /// Starts keeping a record of every login request (who, when); an earlier record is
    /// discarded. Off by default: a long-running server would grow it without bound.
    pub fn record_logins(&self) {
        *self.shared.login_log.lock() = Some(Vec::new());
    }

    /// The login requests recorded since [`ReferenceServer::record_logins`] or the previous
    /// call (recording goes on); empty when not recording.
    pub fn take_logins(&self) -> Vec<LoginRecord> {
        self.shared
            .login_log
            .lock()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Counters of the callback dispatcher, if callbacks are configured.
    pub fn callback_stats(&self) -> Option<Arc<CallbackStats>> {
        self.dispatcher.as_ref().map(CallbackDispatcher::stats)
    }

    /// Stops accepting, tells every connection `Fatal(Unavailable)`, and waits for all tasks.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let Some(d) = self.dispatcher.take() {
            d.shutdown().await;
        }
    }
}

impl Drop for ReferenceServer {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

async fn sweeper(shared: Arc<Shared>) {
    let period = shared.config.sweep_interval;
    // The first sweep one period after start (an interval's first tick is immediate, and
    // at start there is nothing to sweep): a test that moves the vendor clock right after
    // starting sees no sweep it did not ask for.
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tick.tick() => shared.vendor.sweep(),
        }
    }
}

/// Decrements the connection count (and forgets the connection as waiting to log in)
/// when a connection task ends, however it ends.
struct ConnectionSlot(Arc<Shared>, u64);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.logged_in(self.1);
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.in_outage() {
            drop(stream);
            continue;
        }
        let n = shared.next_connection.fetch_add(1, Ordering::SeqCst) + 1;
        let open = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let slot = ConnectionSlot(shared.clone(), n);
        let at_limit = open > shared.config.max_connections;
        // At the limit, a connection still waiting to log in makes room; only when every
        // connection has logged in is the newcomer refused.
        if at_limit && shared.unauthenticated.lock().is_empty() {
            shared.warn_peer(peer, "connection_limit", &"connection limit reached");
            tracker.spawn(async move {
                let _slot = slot;
                let mut out =
                    FramedWrite::new(stream, WireCodec::<ClientFrame, ServerFrame>::default());
                let _ = out
                    .send(ServerFrame::Fatal(ServiceError::Unavailable(
                        "connection limit reached".into(),
                    )))
                    .await;
            });
            continue;
        }
        let evict = shared.await_login(n, at_limit);
        let span = tracing::info_span!("connection", conn = n, %peer, user = tracing::field::Empty);
        let conn = Conn { n, peer, evict };
        tracker.spawn(serve(stream, conn, shared.clone(), slot).instrument(span));
    }
}

/// The writing side of a connection, with the wire faults applied. Frames are fed into
/// the write buffer and flushed together when the connection has nothing else ready (the
/// serve loop's last branch), or when the buffer passes its backpressure boundary: one
/// write for a burst of pushes instead of one each.
struct Outbox {
    sink: FramedWrite<OwnedWriteHalf, WireCodec<ClientFrame, ServerFrame>>,
    shared: Arc<Shared>,
    rng: StdRng,
    sent: u64,
    /// A push held back to be swapped with the next one, and when to give up waiting.
    held: Option<(ServerFrame, Instant)>,
}

/// The connection must end (write failed or a fault dropped it).
struct Closed;

impl Outbox {
    async fn send(&mut self, frame: ServerFrame) -> Result<(), Closed> {
        let faults = self.shared.faults();
        if let Some(d) = faults.frame_delay {
            tokio::time::sleep(d).await;
        }
        let p = faults.drop_probability.clamp(0.0, 1.0);
        if faults.drop_after_frames.is_some_and(|n| self.sent >= n)
            || (p > 0.0 && self.rng.random_bool(p))
        {
            tracing::debug!(sent = self.sent, "fault: dropping connection");
            // The frames before the drop did go out.
            let _ = self.sink.flush().await;
            return Err(Closed);
        }
        self.sent += 1;
        self.sink.feed(frame).await.map_err(|_| Closed)
    }

    /// Whether frames wait in the write buffer.
    fn unflushed(&self) -> bool {
        !self.sink.write_buffer().is_empty()
    }

    async fn flush(&mut self) -> Result<(), Closed> {
        self.sink.flush().await.map_err(|_| Closed)
    }

    async fn push(&mut self, event: VendorEvent) -> Result<(), Closed> {
        let faults = self.shared.faults();
        if !matches!(event, VendorEvent::MessagePushed(_)) {
            self.flush_held().await?;
            return self.send(ServerFrame::Event(event)).await;
        }
        let frame = ServerFrame::Event(event);
        let p = faults.duplicate_push_probability.clamp(0.0, 1.0);
        let duplicate = p > 0.0 && self.rng.random_bool(p);
        if faults.reorder_pushes && self.held.is_none() {
            self.held = Some((frame, Instant::now() + faults.reorder_window));
            return Ok(());
        }
        self.send(frame.clone()).await?;
        if duplicate {
            self.send(frame).await?;
        }
        self.flush_held().await
    }

    async fn flush_held(&mut self) -> Result<(), Closed> {
        match self.held.take() {
            Some((frame, _)) => self.send(frame).await,
            None => Ok(()),
        }
    }

    /// The answer to `HelloV2`, outside the wire faults: they model the traffic of a session,
    /// and counting the handshake would shift every `drop_after_frames` count and seeded run.
    async fn handshake(&mut self, frame: ServerFrame) -> Result<(), Closed> {
        self.sink.feed(frame).await.map_err(|_| Closed)
    }

    async fn fatal(&mut self, error: ServiceError) {
        let _ = self.flush_held().await;
        let _ = self.sink.send(ServerFrame::Fatal(error)).await;
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

/// One accepted connection: its number, its peer, and the token that closes it while it
/// waits to log in (see [`Shared::await_login`]).
struct Conn {
    n: u64,
    peer: SocketAddr,
    evict: CancellationToken,
}

async fn serve(stream: TcpStream, conn: Conn, shared: Arc<Shared>, _slot: ConnectionSlot) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let max = shared.config.max_frame_len;
    let idle = shared.config.idle_timeout;
    let login_timeout = shared.config.login_timeout;
    let login_deadline = Instant::now() + login_timeout;
    let mut source = FramedRead::new(read, WireCodec::<ClientFrame, ServerFrame>::new(max));
    let mut out = Outbox {
        sink: FramedWrite::new(write, WireCodec::new(max)),
        shared: shared.clone(),
        rng: StdRng::seed_from_u64(shared.config.seed ^ conn.n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        sent: 0,
        held: None,
    };
    let client = shared.vendor.client();
    let Some(mut events) = client.take_events() else {
        return;
    };
    let mut outage = shared.outage_generation.subscribe();
    let mut state = ConnState::default();
    let mut last_heard = Instant::now();
    loop {
        let held_until = out.held.as_ref().map(|(_, t)| *t);
        let unflushed = out.unflushed();
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => {
                out.fatal(ServiceError::Unavailable("server shutting down".into())).await;
                break;
            }
            _ = outage.changed() => break,
            _ = conn.evict.cancelled(), if !state.logged_in => {
                shared.warn_peer(conn.peer, "unauthenticated_limit", &"too many connections waiting to log in: closing the oldest");
                out.fatal(ServiceError::Unavailable("too many connections waiting to log in".into())).await;
                break;
            }
            _ = tokio::time::sleep_until(login_deadline), if !state.logged_in => {
                shared.warn_peer(conn.peer, "login_deadline", &format_args!("no login within {login_timeout:?}"));
                out.fatal(ServiceError::Timeout(login_timeout)).await;
                break;
            }
            _ = sleep_until_some(held_until) => {
                if out.flush_held().await.is_err() { break; }
            }
            event = events.next() => {
                let Some(event) = event else { break };
                let last = matches!(event, VendorEvent::Kicked(_) | VendorEvent::TokenExpired | VendorEvent::ConnectionLost { .. });
                if out.push(event).await.is_err() || last { break; }
            }
            _ = tokio::time::sleep_until(last_heard + idle) => {
                tracing::debug!("idle timeout");
                out.fatal(ServiceError::Timeout(idle)).await;
                break;
            }
            frame = source.next() => {
                last_heard = Instant::now();
                let frame = match frame {
                    None => break,
                    Some(Err(e)) => {
                        shared.warn_peer(conn.peer, "bad_frame", &e);
                        out.fatal(e).await;
                        break;
                    }
                    Some(Ok(frame)) => frame,
                };
                match handle(frame, &client, &mut state, &mut out, &conn).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Close) | Err(Closed) => break,
                }
            }
            // Last: only when nothing else is ready, so a burst goes out in one write.
            flushed = out.flush(), if unflushed => {
                if flushed.is_err() { break; }
            }
        }
    }
    // What was answered before closing (a refused login, a logout) goes out.
    let _ = out.flush().await;
    // Dropping the client ends its vendor session (pushes go to the offline queue again).
    drop(client);
}

enum Flow {
    Continue,
    Close,
}

/// Where one connection stands.
#[derive(Debug, Default)]
struct ConnState {
    /// `HelloV2` received: the client speaks version 2.
    greeted: bool,
    /// Logged in: requests other than `Login` are served.
    logged_in: bool,
}

async fn handle(
    frame: ClientFrame,
    client: &im_service::memory::MemoryClient,
    state: &mut ConnState,
    out: &mut Outbox,
    conn: &Conn,
) -> Result<Flow, Closed> {
    let shared = out.shared.clone();
    let (id, request) = match frame {
        // A version 1 client: `Hello`, or (never greeting) its first request.
        ClientFrame::Hello => {
            shared.warn_peer(conn.peer, "protocol_version", &"version 1 Hello");
            out.fatal(version_1_refused()).await;
            return Ok(Flow::Close);
        }
        ClientFrame::HelloV2 { version } if version < PROTOCOL_VERSION => {
            shared.warn_peer(
                conn.peer,
                "protocol_version",
                &format_args!("version {version}"),
            );
            out.fatal(ServiceError::Protocol(format!(
                "protocol version {version} is not served; this server speaks version {PROTOCOL_VERSION}"
            )))
            .await;
            return Ok(Flow::Close);
        }
        ClientFrame::HelloV2 { .. } => {
            // A newer client gets the version this server speaks and decides for itself.
            state.greeted = true;
            out.handshake(ServerFrame::WelcomeV2 {
                server: "im-vendor-sim".into(),
                capabilities: client.capabilities().clone(),
                lifecycle: client.lifecycle(),
                protocol: PROTOCOL_VERSION,
            })
            .await?;
            return Ok(Flow::Continue);
        }
        ClientFrame::Request { .. } if !state.greeted => {
            shared.warn_peer(conn.peer, "protocol_version", &"request before HelloV2");
            out.fatal(version_1_refused()).await;
            return Ok(Flow::Close);
        }
        ClientFrame::Request { id, request } => (id, request),
    };
    if !state.logged_in && !matches!(request, Request::Login(_)) {
        shared.warn_peer(conn.peer, "not_logged_in", &request.kind());
        out.fatal(ServiceError::NotLoggedIn).await;
        return Ok(Flow::Close);
    }
    let kind = request.kind();
    if let Request::Login(creds) = &request {
        // Recorded on the connection span, so every later line of it names the user.
        tracing::Span::current().record("user", tracing::field::display(&creds.user));
        out.shared.note_login(&creds.user);
    }
    let span = tracing::debug_span!("request", id, kind);
    let (result, flow) = async {
        match request {
            Request::Login(creds) => {
                let result = login(&creds, client, &shared, conn.peer).await;
                if result.is_ok() {
                    state.logged_in = true;
                    shared.logged_in(conn.n);
                    (result, Flow::Continue)
                } else {
                    // A failed login ends the connection after the typed answer.
                    (result, Flow::Close)
                }
            }
            Request::Logout => (client.logout().await.map(|()| Reply::Done), Flow::Close),
            Request::Send(m) => (client.send(&m).await.map(Reply::Receipt), Flow::Continue),
            Request::SendAfter(m, after) => (
                client.send_after(&m, &after).await.map(Reply::Receipt),
                Flow::Continue,
            ),
            Request::PullOffline(max) => (
                client.pull_offline(max).await.map(Reply::Offline),
                Flow::Continue,
            ),
            Request::AckOffline(ack) => (
                client.ack_offline(&ack).await.map(|()| Reply::Done),
                Flow::Continue,
            ),
            Request::GoOnline => (
                client.go_online().await.map(|()| Reply::Done),
                Flow::Continue,
            ),
            Request::PullHistory(q) => (
                client.pull_history(&q).await.map(Reply::History),
                Flow::Continue,
            ),
            Request::Ping => (client.ping().await.map(|_| Reply::Pong), Flow::Continue),
            Request::MarkRead(c, up_to) => (
                client.mark_read(&c, &up_to).await.map(|()| Reply::Done),
                Flow::Continue,
            ),
            Request::Recall(c, target) => (
                client.recall(&c, &target).await.map(Reply::Change),
                Flow::Continue,
            ),
            Request::Edit(c, target, content) => (
                client.edit(&c, &target, &content).await.map(Reply::Change),
                Flow::Continue,
            ),
            Request::DeleteForMe(c, target) => (
                client.delete_for_me(&c, &target).await.map(Reply::Change),
                Flow::Continue,
            ),
            // The page size is capped by the storage engine, as for offline pulls.
            Request::PullChanges(since, max) => (
                client.pull_changes(since, max).await.map(Reply::Changes),
                Flow::Continue,
            ),
        }
    }
    .instrument(span)
    .await;
    if kind == "ping" && out.shared.faults().ignore_heartbeats {
        return Ok(flow);
    }
    out.send(ServerFrame::Response { id, result }).await?;
    Ok(flow)
}

/// A login from a stranger: throttled per peer and per account before its credentials are
/// looked at, and refused with one answer ([`LOGIN_REFUSED`]) whether the user is unknown
/// or the token wrong. Logs the refusal with the user's name (escaped), never the token.
async fn login(
    creds: &im_service::Credentials,
    client: &im_service::memory::MemoryClient,
    shared: &Shared,
    peer: SocketAddr,
) -> Result<Reply, ServiceError> {
    if let Err(retry_after) = shared.throttle.check(peer.ip(), &creds.user) {
        shared.warn_peer(
            peer,
            "login_throttled",
            &format_args!(
                "login as {:?} throttled for {retry_after:?}",
                loggable(&creds.user)
            ),
        );
        return Err(ServiceError::RateLimited { retry_after });
    }
    match client.login(creds).await {
        Ok(session) => {
            shared.throttle.succeeded(&creds.user);
            Ok(Reply::Session(session))
        }
        Err(ServiceError::UnknownUser(_) | ServiceError::AuthFailed(_)) => {
            shared.throttle.failed(peer.ip(), &creds.user);
            shared.warn_peer(
                peer,
                "login_refused",
                &format_args!("login as {:?} refused", loggable(&creds.user)),
            );
            Err(ServiceError::AuthFailed(LOGIN_REFUSED.into()))
        }
        Err(e) => Err(e),
    }
}

/// A user name as a log line shows it: a stranger chooses it, so at most 64 characters (a
/// name up to a frame long must not turn a rate-limited warning into megabytes of log);
/// the caller prints it with `{:?}`, which escapes control characters.
fn loggable(user: &UserId) -> &str {
    let name = user.as_str();
    match name.char_indices().nth(64) {
        Some((end, _)) => &name[..end],
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_user_name_is_cut_to_64_characters() {
        let long = UserId::new("é".repeat(10_000));
        assert_eq!(loggable(&long).chars().count(), 64);
        assert_eq!(loggable(&UserId::new("bob")), "bob");
    }
}
