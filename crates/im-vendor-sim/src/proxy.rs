//! A fault-injecting TCP proxy: sits between any client and any vendor (the reference server,
//! Prosody, ejabberd, Synapse) and breaks the network on command — drop every connection,
//! blackhole, delay, cut after N bytes, refuse new connections, a timed outage — so the
//! resilience cases and the business demo's outage run on real vendors, whose servers offer
//! no fault injection of their own.
//!
//! Why a byte-level proxy and not protocol faults: it knows nothing of any protocol, so one
//! implementation serves every vendor, and the faults are the ones a real network produces.
//!
//! Bounds: each direction of a connection copies through one fixed-size buffer and a bounded
//! queue of chunks (delay keeps at most [`ProxyConfig::queue_chunks`] chunks in flight per
//! direction), open connections are capped, and every refusal is logged (rate-limited).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// What can go wrong with the proxy itself (the faults it injects are not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The listening socket could not be bound.
    #[error("binding the proxy listener: {0}")]
    Bind(#[source] io::Error),
    /// The upstream (the vendor) refused or failed the connection.
    #[error("connecting upstream {upstream}: {source}")]
    Upstream {
        /// The vendor's address.
        upstream: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The upstream did not accept within [`ProxyConfig::connect_timeout`].
    #[error("upstream {upstream} did not accept within {timeout:?}")]
    UpstreamTimeout {
        /// The vendor's address.
        upstream: SocketAddr,
        /// How long the proxy waited.
        timeout: Duration,
    },
    /// Started outside a tokio runtime (it has no task to run its connections in).
    #[error("the fault proxy must be started inside a tokio runtime")]
    NoRuntime,
    /// Reading or writing one side of a proxied connection failed.
    #[error("proxied connection: {0}")]
    Io(#[source] io::Error),
}

/// Limits of a proxy (the defaults suit tests and the demo).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Connections open at once beyond this are refused (accepted and closed at once).
    pub max_connections: usize,
    /// Size of the copy buffer of each direction of each connection.
    pub chunk_size: usize,
    /// Chunks queued per direction (read but not yet forwarded, e.g. while delayed).
    pub queue_chunks: usize,
    /// How long the proxy waits for the upstream to accept a connection.
    pub connect_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            chunk_size: 16 * 1024,
            queue_chunks: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters since the proxy started (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// TCP connections accepted from clients, the refused ones included.
    pub accepted: u64,
    /// Connections closed at once: refused new connections, an outage, the connection cap.
    pub refused: u64,
    /// Open connections closed by [`FaultProxy::drop_all`] or [`FaultProxy::outage`].
    pub dropped: u64,
    /// Connections closed by [`FaultProxy::cut_after`].
    pub cut: u64,
    /// Connections whose upstream could not be reached (closed towards the client).
    pub upstream_failed: u64,
    /// Connections open right now.
    pub open: u64,
    /// Bytes forwarded client → upstream (counted as each write starts).
    pub bytes_to_upstream: u64,
    /// Bytes forwarded upstream → client (counted as each write starts).
    pub bytes_to_client: u64,
}

/// The faults in force; connection tasks watch it, so a change reaches them at once.
#[derive(Debug, Clone, Default)]
struct FaultState {
    blackhole: bool,
    delay: Duration,
    cut_after: Option<u64>,
    /// Bumped by every `cut_after` call: a connection counts its bytes from the later of its
    /// opening and the last change, so a cut set now does not fire on bytes sent before.
    cut_epoch: u64,
    refuse_new: bool,
    /// While in the future, new connections are refused.
    outage_until: Option<Instant>,
    /// Bumped to close every open connection.
    drop_generation: u64,
}

impl FaultState {
    fn refusing(&self) -> bool {
        self.refuse_new || self.outage_until.is_some_and(|t| Instant::now() < t)
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    dropped: AtomicU64,
    cut: AtomicU64,
    upstream_failed: AtomicU64,
    open: AtomicUsize,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
}

/// Refusal warnings at most once a second, with the number suppressed since the last one.
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

struct Shared {
    upstream: SocketAddr,
    config: ProxyConfig,
    state: watch::Sender<FaultState>,
    counters: Counters,
    next_conn: AtomicU64,
    refusal_log: Mutex<RefusalLog>,
    cancel: CancellationToken,
}

impl Shared {
    fn refuse(&self, peer: SocketAddr, why: &'static str) {
        self.counters.refused.fetch_add(1, Ordering::SeqCst);
        let now = Instant::now();
        let mut log = self.refusal_log.lock();
        let due = log
            .last
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            let suppressed = std::mem::take(&mut log.suppressed);
            log.last = Some(now);
            drop(log);
            tracing::warn!(%peer, why, suppressed, "fault proxy refused a connection");
        } else {
            log.suppressed += 1;
        }
    }
}

/// A running fault-injecting proxy in front of one upstream. It owns its accept task and
/// every connection task; dropping it stops them all and closes every proxied connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Binds `127.0.0.1:0` and forwards every connection to `upstream`, with no faults.
    pub async fn start(upstream: SocketAddr) -> Result<FaultProxy, ProxyError> {
        Self::start_with(upstream, ProxyConfig::default()).await
    }

    /// [`FaultProxy::start`] with explicit limits.
    pub async fn start_with(
        upstream: SocketAddr,
        config: ProxyConfig,
    ) -> Result<FaultProxy, ProxyError> {
        Self::start_now(upstream, config)
    }

    /// [`FaultProxy::start_with`] for synchronous callers (a harness constructor): binding
    /// a listener does not wait, only spawning needs the runtime, so this must be called
    /// from inside a tokio runtime ([`ProxyError::NoRuntime`] otherwise).
    pub fn start_now(upstream: SocketAddr, config: ProxyConfig) -> Result<FaultProxy, ProxyError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ProxyError::NoRuntime)?;
        let std_listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(ProxyError::Bind)?;
        std_listener
            .set_nonblocking(true)
            .map_err(ProxyError::Bind)?;
        let addr = std_listener.local_addr().map_err(ProxyError::Bind)?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener).map_err(ProxyError::Bind)?
        };
        let shared = Arc::new(Shared {
            upstream,
            config,
            state: watch::channel(FaultState::default()).0,
            counters: Counters::default(),
            next_conn: AtomicU64::new(0),
            refusal_log: Mutex::new(RefusalLog {
                last: None,
                suppressed: 0,
            }),
            cancel: CancellationToken::new(),
        });
        let tracker = TaskTracker::new();
        let accept = accept_loop(listener, shared.clone(), tracker.clone())
            .instrument(tracing::info_span!("fault_proxy", %addr, %upstream));
        let _entered = runtime.enter();
        tracker.spawn(accept);
        tracing::info!(%addr, %upstream, "fault proxy listening");
        Ok(FaultProxy {
            addr,
            shared,
            tracker,
        })
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The vendor's address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Closes every open connection now, both directions (new connections are accepted as
    /// before unless refused).
    pub fn drop_all(&self) {
        self.shared.state.send_modify(|s| s.drop_generation += 1);
    }

    /// While on, connections stay open but nothing is forwarded either way (what was read
    /// waits, in order, and flows again when it is turned off): heartbeats go unanswered.
    pub fn blackhole(&self, on: bool) {
        self.shared.state.send_modify(|s| s.blackhole = on);
    }

    /// Forwards each chunk `by` after it was read, in order, both directions (a round trip
    /// takes at least twice `by`); `Duration::ZERO` turns it off.
    pub fn delay(&self, by: Duration) {
        self.shared.state.send_modify(|s| s.delay = by);
    }

    /// Closes a connection once `bytes` have been forwarded through it (both directions
    /// counted, from its opening or from this call, whichever is later), cutting mid-chunk —
    /// mid-frame — where the limit falls; `None` turns it off.
    pub fn cut_after(&self, bytes: Option<u64>) {
        self.shared.state.send_modify(|s| {
            s.cut_after = bytes;
            s.cut_epoch += 1;
        });
    }

    /// While on, new connections are accepted and closed at once (open ones are kept).
    pub fn refuse_new(&self, on: bool) {
        self.shared.state.send_modify(|s| s.refuse_new = on);
    }

    /// A full outage: every open connection is closed now and new ones are refused until
    /// `d` has passed (by the tokio clock); then it heals by itself.
    pub fn outage(&self, d: Duration) {
        self.shared.state.send_modify(|s| {
            s.outage_until = Some(Instant::now() + d);
            s.drop_generation += 1;
        });
    }

    /// All faults off (blackhole, delay, cut, refusal, outage); connections are not dropped.
    pub fn heal(&self) {
        self.shared.state.send_modify(|s| {
            s.blackhole = false;
            s.delay = Duration::ZERO;
            s.cut_after = None;
            s.cut_epoch += 1;
            s.refuse_new = false;
            s.outage_until = None;
        });
    }

    /// Whether new connections are being refused right now (refusal or an outage in force).
    pub fn is_refusing(&self) -> bool {
        self.shared.state.borrow().refusing()
    }

    /// Counters since start.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
            dropped: c.dropped.load(Ordering::SeqCst),
            cut: c.cut.load(Ordering::SeqCst),
            upstream_failed: c.upstream_failed.load(Ordering::SeqCst),
            open: c.open.load(Ordering::SeqCst) as u64,
            bytes_to_upstream: c.to_upstream.load(Ordering::SeqCst),
            bytes_to_client: c.to_client.load(Ordering::SeqCst),
        }
    }

    /// Stops accepting, closes every connection and waits until every task has ended.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Every task selects on this token, so each ends (and drops its sockets) at its next
        // poll; the tracker needs no waiting for that.
        self.shared.cancel.cancel();
        self.tracker.close();
    }
}

/// Decrements the open count when a connection task ends, however it ends.
struct OpenSlot(Arc<Shared>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::SeqCst);
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
                tracing::warn!(error = %e, "fault proxy: accept failed");
                continue;
            }
        };
        shared.counters.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.state.borrow().refusing() {
            shared.refuse(peer, "refusing new connections");
            drop(stream);
            continue;
        }
        let open = shared.counters.open.fetch_add(1, Ordering::SeqCst) + 1;
        let slot = OpenSlot(shared.clone());
        if open > shared.config.max_connections {
            drop(slot);
            shared.refuse(peer, "connection limit reached");
            drop(stream);
            continue;
        }
        let n = shared.next_conn.fetch_add(1, Ordering::SeqCst) + 1;
        let span = tracing::info_span!("proxy_conn", conn = n, %peer);
        tracker.spawn(connection(stream, shared.clone(), slot).instrument(span));
    }
}

/// Why a proxied connection ended.
enum End {
    /// Both directions finished (each side closed its writing half).
    Closed,
    /// The proxy stopped.
    Stopped,
    /// `drop_all` or an outage.
    Dropped,
    /// `cut_after` reached.
    Cut,
    /// A side failed.
    Failed(ProxyError),
}

/// Bytes a connection has forwarded since the cut setting it last saw.
struct CutBudget {
    epoch: u64,
    used: u64,
}

/// A chunk read and when it may be forwarded.
struct Chunk {
    due: Instant,
    data: Bytes,
}

#[derive(Clone, Copy)]
enum Dir {
    ToUpstream,
    ToClient,
}

async fn connection(client: TcpStream, shared: Arc<Shared>, _slot: OpenSlot) {
    let mut state = shared.state.subscribe();
    let start_generation = state.borrow_and_update().drop_generation;
    let upstream = shared.upstream;
    let timeout = shared.config.connect_timeout;
    let connected = tokio::select! {
        _ = shared.cancel.cancelled() => return,
        c = tokio::time::timeout(timeout, TcpStream::connect(upstream)) => c,
    };
    let server = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            shared
                .counters
                .upstream_failed
                .fetch_add(1, Ordering::SeqCst);
            let e = ProxyError::Upstream { upstream, source };
            tracing::warn!(error = %e, "fault proxy: closing the client's connection");
            return;
        }
        Err(_) => {
            shared
                .counters
                .upstream_failed
                .fetch_add(1, Ordering::SeqCst);
            let e = ProxyError::UpstreamTimeout { upstream, timeout };
            tracing::warn!(error = %e, "fault proxy: closing the client's connection");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let budget = Mutex::new(CutBudget {
        epoch: state.borrow().cut_epoch,
        used: 0,
    });
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    let forward = async {
        let up = direction(client_rd, server_wr, Dir::ToUpstream, &shared, &budget);
        let down = direction(server_rd, client_wr, Dir::ToClient, &shared, &budget);
        match tokio::try_join!(up, down) {
            Ok(_) => End::Closed,
            Err(end) => end,
        }
    };
    let dropped = state.wait_for(|s| s.drop_generation != start_generation);
    let end = tokio::select! {
        _ = shared.cancel.cancelled() => End::Stopped,
        _ = dropped => End::Dropped,
        end = forward => end,
    };
    // Leaving drops both sockets: the client and the upstream see the connection closed.
    match end {
        End::Closed => tracing::debug!("proxied connection closed by its peers"),
        End::Stopped => tracing::debug!("proxied connection closed: proxy stopped"),
        End::Dropped => {
            shared.counters.dropped.fetch_add(1, Ordering::SeqCst);
            tracing::debug!("proxied connection dropped (fault)");
        }
        End::Cut => {
            shared.counters.cut.fetch_add(1, Ordering::SeqCst);
            tracing::debug!("proxied connection cut (fault)");
        }
        End::Failed(e) => tracing::debug!(error = %e, "proxied connection failed"),
    }
}

/// One direction: a reader fills the bounded queue through a fixed buffer, a writer forwards
/// each chunk when it is due and no blackhole holds it. Ends `Ok` when the source closed and
/// everything read was forwarded (the destination's writing half is then shut down).
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: Dir,
    shared: &Shared,
    budget: &Mutex<CutBudget>,
) -> Result<(), End> {
    let (tx, mut rx) = mpsc::channel::<Chunk>(shared.config.queue_chunks.max(1));
    let reader = async move {
        let mut buf = vec![0u8; shared.config.chunk_size.max(1)];
        loop {
            let n = from
                .read(&mut buf)
                .await
                .map_err(|e| End::Failed(ProxyError::Io(e)))?;
            if n == 0 {
                return Ok(());
            }
            let delay = shared.state.borrow().delay;
            let chunk = Chunk {
                due: Instant::now() + delay,
                data: Bytes::copy_from_slice(&buf[..n]),
            };
            if tx.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async move {
        let mut state = shared.state.subscribe();
        while let Some(chunk) = rx.recv().await {
            tokio::time::sleep_until(chunk.due).await;
            if state.wait_for(|s| !s.blackhole).await.is_err() {
                return Err(End::Stopped);
            }
            let (allowed, cut) = {
                let s = state.borrow();
                let mut b = budget.lock();
                if b.epoch != s.cut_epoch {
                    b.epoch = s.cut_epoch;
                    b.used = 0;
                }
                let len = chunk.data.len() as u64;
                let (allowed, cut) = match s.cut_after {
                    Some(limit) => {
                        let left = limit.saturating_sub(b.used);
                        if len >= left {
                            (left, true)
                        } else {
                            (len, false)
                        }
                    }
                    None => (len, false),
                };
                b.used += allowed;
                (allowed as usize, cut)
            };
            // Counted before the write: once a peer has the bytes, the stats show them (a
            // test reading the stats right after a reply must see the reply counted).
            let counter = match dir {
                Dir::ToUpstream => &shared.counters.to_upstream,
                Dir::ToClient => &shared.counters.to_client,
            };
            counter.fetch_add(allowed as u64, Ordering::SeqCst);
            to.write_all(&chunk.data[..allowed])
                .await
                .map_err(|e| End::Failed(ProxyError::Io(e)))?;
            if cut {
                let _ = to.flush().await;
                return Err(End::Cut);
            }
        }
        let _ = to.shutdown().await;
        Ok(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}
