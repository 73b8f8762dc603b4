//! Export: the Prometheus (OpenMetrics) text exposition, built with `prometheus-client`
//! from [`QcSnapshot`]s, and the HTTP server ([`MetricsServer`]) serving it at `/metrics`,
//! the JSON snapshot at `/snapshot.json`, and the live dashboard (page at `/`, data at
//! `/api/dashboard`, see `dashboard.rs`).
//!
//! The server is meant to be reachable inside a company network: read-only, no message
//! bodies or secrets in anything it serves, an optional bearer token on every route that
//! carries data (wrong tokens throttled per peer address, refusals logged without the
//! token), and bounds on the connections held open and the requests served at once.
//!
//! Names follow Prometheus conventions: `im_qc_` prefix, base units as suffixes
//! (`_seconds`, `_ratio`), `_total` on counters (added by the encoder).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use im_service::listener::{BoundedListener, Peer};
use im_service::throttle::{FailureBudget, FailureThrottle, WarnLimit};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::business::BusinessSnapshot;
use crate::dashboard::{
    CONTENT_SECURITY_POLICY, DASHBOARD_CSS, DASHBOARD_JS, History, INDEX_HTML, Seat,
};
use crate::error::QcError;
use crate::monitor::SnapshotSource;
use crate::report::{OpReport, QcSnapshot, WindowAvailability};

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
/// A counter's label value and how to read its count off a snapshot.
type CountedRow<'a> = (&'a str, &'a dyn Fn(&QcSnapshot) -> u64);

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A registry being filled from a snapshot.
struct Builder {
    registry: Registry,
}

impl Builder {
    fn counter(&mut self, name: &str, help: &str, rows: Vec<(Labels, u64)>) {
        let family = Family::<Labels, Counter>::default();
        for (l, v) in rows {
            family.get_or_create(&l).inc_by(v);
        }
        self.registry.register(name, help, family);
    }

    fn gauge(&mut self, name: &str, help: &str, rows: Vec<(Labels, Option<f64>)>) {
        let family = Family::<Labels, FloatGauge>::default();
        for (l, v) in rows {
            if let Some(v) = v {
                family.get_or_create(&l).set(v);
            }
        }
        self.registry.register(name, help, family);
    }
}

/// The Prometheus text exposition of `snap`.
///
/// ```
/// use im_qc::prometheus_text;
/// # fn show(snapshot: &im_qc::QcSnapshot) -> Result<(), im_qc::QcError> {
/// let text = prometheus_text(snapshot)?;
/// assert!(text.contains("im_qc_vendor_verdict"));
/// # Ok(()) }
/// ```
pub fn prometheus_text(snap: &QcSnapshot) -> Result<String, QcError> {
    encode(&[(None, snap)])
}

/// The exposition of several seats (watched clients) in one text: each family once, every
/// series of a named seat labelled `seat` (a family may appear only once in a scrape).
fn encode(seats: &[(Option<&str>, &QcSnapshot)]) -> Result<String, QcError> {
    let mut b = Builder {
        registry: Registry::default(),
    };
    // The labels of one series of `seat`: its seat first (when named), then `pairs`.
    let labels = |seat: Option<&str>, pairs: &[(&str, &str)]| -> Labels {
        seat.map(|s| ("seat".to_string(), s.to_string()))
            .into_iter()
            .chain(labels(pairs))
            .collect()
    };
    let ops = |f: &dyn Fn(&OpReport) -> u64| -> Vec<(Labels, u64)> {
        seats
            .iter()
            .flat_map(|(seat, snap)| {
                snap.operations.iter().map(move |o| {
                    (
                        labels(
                            *seat,
                            &[
                                ("vendor", snap.vendor.as_str()),
                                ("op", o.op.as_str()),
                                ("network", o.network),
                            ],
                        ),
                        f(o),
                    )
                })
            })
            .collect()
    };
    b.counter(
        "im_qc_vendor_calls",
        "Vendor calls made.",
        ops(&|o| o.calls_total),
    );
    let mut errors = Vec::new();
    for (seat, snap) in seats {
        for o in &snap.operations {
            for (class, n) in [
                ("transient", o.transient_total),
                ("rate_limited", o.rate_limited_total),
                ("permanent", o.permanent_total),
            ] {
                errors.push((
                    labels(
                        *seat,
                        &[
                            ("vendor", snap.vendor.as_str()),
                            ("op", o.op.as_str()),
                            ("network", o.network),
                            ("class", class),
                        ],
                    ),
                    n,
                ));
            }
        }
    }
    b.counter(
        "im_qc_vendor_call_errors",
        "Failed vendor calls by error class.",
        errors,
    );
    b.counter(
        "im_qc_vendor_call_timeouts",
        "Vendor calls that timed out.",
        ops(&|o| o.timeouts_total),
    );
    let mut latency = Vec::new();
    for (seat, snap) in seats {
        for o in &snap.operations {
            for (q, v) in ["0.5", "0.9", "0.99"].iter().zip(o.latency_ms_1m) {
                latency.push((
                    labels(
                        *seat,
                        &[
                            ("vendor", snap.vendor.as_str()),
                            ("op", o.op.as_str()),
                            ("network", o.network),
                            ("quantile", q),
                        ],
                    ),
                    v.map(|ms| ms / 1e3),
                ));
            }
        }
    }
    b.gauge(
        "im_qc_vendor_call_latency_seconds",
        "Vendor call latency quantiles over the last minute.",
        latency,
    );
    let per_window = |f: &dyn Fn(&WindowAvailability) -> Option<f64>| {
        seats
            .iter()
            .flat_map(|(seat, snap)| {
                snap.availability.iter().map(move |w| {
                    (
                        labels(
                            *seat,
                            &[("vendor", snap.vendor.as_str()), ("window", w.window)],
                        ),
                        f(w),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    // One series per seat, labelled with the vendor and `pairs`.
    let per_seat = |pairs: &[(&str, &str)], f: &dyn Fn(&QcSnapshot) -> Option<f64>| {
        seats
            .iter()
            .map(|(seat, snap)| {
                let mut l = labels(*seat, &[("vendor", snap.vendor.as_str())]);
                l.extend(self::labels(pairs));
                (l, f(snap))
            })
            .collect::<Vec<_>>()
    };
    // One counter series per seat and `(label value, f)` pair.
    let counted = |label: &str, rows: &[CountedRow<'_>]| {
        seats
            .iter()
            .flat_map(|(seat, snap)| {
                rows.iter()
                    .map(move |(value, f)| (labels(*seat, &[(label, value)]), f(snap)))
            })
            .collect::<Vec<_>>()
    };
    b.gauge(
        "im_qc_vendor_success_ratio",
        "Share of vendor calls that succeeded.",
        per_window(&|w| w.success_ratio),
    );
    b.gauge(
        "im_qc_connection_uptime_ratio",
        "Share of time connected.",
        per_window(&|w| w.uptime_ratio),
    );
    b.gauge(
        "im_qc_reconnects",
        "Reconnect attempts in the window.",
        per_window(&|w| Some(w.reconnects as f64)),
    );
    b.gauge(
        "im_qc_heartbeat_misses",
        "Heartbeats missed in the window.",
        per_window(&|w| Some(w.heartbeat_misses as f64)),
    );
    b.gauge(
        "im_qc_heartbeat_rtt_seconds",
        "Median heartbeat round trip in the window.",
        per_window(&|w| w.heartbeat_rtt_p50_ms.map(|ms| ms / 1e3)),
    );
    b.gauge(
        "im_qc_vendor_verdict",
        "Vendor verdict: 0 healthy, 1 degraded, 2 down.",
        per_seat(&[], &|s| Some(s.verdict.verdict.level())),
    );
    b.gauge(
        "im_qc_failover_recommended",
        "1 when failing over to another vendor is recommended.",
        per_seat(&[], &|s| {
            Some(f64::from(u8::from(s.verdict.failover_recommended)))
        }),
    );
    b.counter(
        "im_qc_sync_passes",
        "Sync passes by result.",
        counted(
            "result",
            &[
                ("finished", &|s| s.processing.sync_passes),
                ("failed", &|s| s.processing.sync_failures),
            ],
        ),
    );
    // Families without a vendor label: one series per seat (unlabelled for one).
    let plain = |f: &dyn Fn(&QcSnapshot) -> Option<f64>| {
        seats
            .iter()
            .map(|(seat, snap)| (labels(*seat, &[]), f(snap)))
            .collect::<Vec<_>>()
    };
    let plain_count = |f: &dyn Fn(&QcSnapshot) -> u64| {
        seats
            .iter()
            .map(|(seat, snap)| (labels(*seat, &[]), f(snap)))
            .collect::<Vec<_>>()
    };
    b.gauge(
        "im_qc_last_sync_duration_seconds",
        "Duration of the last sync pass.",
        plain(&|s| s.processing.last_sync_ms.map(|ms| ms / 1e3)),
    );
    b.counter(
        "im_qc_messages_ingested",
        "Messages delivered to subscribers.",
        plain_count(&|s| s.processing.messages_ingested_total),
    );
    b.counter(
        "im_qc_sends",
        "Queued sends by result.",
        counted(
            "result",
            &[
                ("sent", &|s| s.processing.sends_ok),
                ("failed", &|s| s.processing.sends_failed),
            ],
        ),
    );
    // Quantile gauges of a processing figure, ms in the snapshot, seconds exported.
    let quantiles = |f: &dyn Fn(&QcSnapshot) -> [Option<f64>; 2]| {
        seats
            .iter()
            .flat_map(|(seat, snap)| {
                ["0.5", "0.99"]
                    .into_iter()
                    .zip(f(snap))
                    .map(move |(q, v)| (labels(*seat, &[("quantile", q)]), v.map(|ms| ms / 1e3)))
            })
            .collect::<Vec<_>>()
    };
    b.gauge(
        "im_qc_send_ack_latency_seconds",
        "Local echo to vendor acknowledgement.",
        quantiles(&|s| s.processing.send_ack_ms),
    );
    b.gauge(
        "im_qc_end_to_end_latency_seconds",
        "Sender timestamp to receipt.",
        quantiles(&|s| s.processing.end_to_end_ms),
    );
    b.gauge(
        "im_qc_outbox_depth",
        "Messages in the outbox.",
        plain(&|s| Some(s.processing.outbox_depth as f64)),
    );
    b.counter(
        "im_qc_ui_events_dropped",
        "Events dropped from UI subscribers' queues.",
        plain_count(&|s| s.processing.dropped_ui_events),
    );
    b.counter(
        "im_qc_retries",
        "Retried vendor call attempts.",
        plain_count(&|s| s.processing.retries),
    );
    let business: Vec<(Option<&str>, &BusinessSnapshot)> = seats
        .iter()
        .filter_map(|(seat, snap)| snap.business.as_ref().map(|b| (*seat, b)))
        .collect();
    if !business.is_empty() {
        b.gauge(
            "im_qc_response_rate_ratio",
            "Share of customer messages answered in time.",
            business
                .iter()
                .flat_map(|(seat, biz)| {
                    std::iter::once((labels(*seat, &[("agent", "all")]), biz.response_rate)).chain(
                        biz.agents
                            .iter()
                            .map(move |a| (labels(*seat, &[("agent", &a.agent)]), a.response_rate)),
                    )
                })
                .collect(),
        );
        b.gauge(
            "im_qc_replies_per_conversation_per_hour",
            "Agent replies per conversation per hour of activity.",
            business
                .iter()
                .map(|(seat, biz)| (labels(*seat, &[]), biz.replies_per_conversation_per_hour))
                .collect(),
        );
        b.gauge(
            "im_qc_overdue_conversations",
            "Conversations with a customer waiting too long.",
            business
                .iter()
                .map(|(seat, biz)| (labels(*seat, &[]), Some(biz.overdue.len() as f64)))
                .collect(),
        );
    }
    b.gauge(
        "im_qc_alert_firing",
        "1 while an alert rule fires.",
        seats
            .iter()
            .flat_map(|(seat, snap)| {
                snap.alerts.iter().map(move |a| {
                    (
                        labels(
                            *seat,
                            &[("rule", &a.rule), ("severity", a.severity.as_str())],
                        ),
                        Some(f64::from(u8::from(a.firing))),
                    )
                })
            })
            .collect(),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &b.registry)
        .map_err(|e| QcError::Encode(e.to_string()))?;
    Ok(out)
}

/// Requests served at once; past it a request is answered 503 at once (a stranger opening
/// many slow requests cannot make the monitor build snapshots without end).
const MAX_IN_FLIGHT: usize = 64;
/// Refusal warnings printed per second at most (the next says how many were suppressed).
const WARNINGS_PER_SECOND: u32 = 10;

/// How a [`MetricsServer`] runs: what it shows, how much history it keeps, who may read it.
/// `Debug` never prints the token.
#[derive(Clone)]
pub struct MetricsServerBuilder {
    seats: Vec<Seat>,
    token: Option<String>,
    history_interval: Duration,
    history_capacity: usize,
    auth_failures: FailureBudget,
    max_tracked_peers: usize,
    max_connections: usize,
}

impl std::fmt::Debug for MetricsServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServerBuilder")
            .field(
                "seats",
                &self.seats.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("history_interval", &self.history_interval)
            .field("history_capacity", &self.history_capacity)
            .finish_non_exhaustive()
    }
}

impl Default for MetricsServerBuilder {
    fn default() -> Self {
        Self {
            seats: Vec::new(),
            token: None,
            // An hour of history at one point every 5 s: 720 points of a few hundred bytes.
            history_interval: Duration::from_secs(5),
            history_capacity: 720,
            // 10 wrong tokens from one address, then one more every 6 s (10 a minute).
            auth_failures: FailureBudget {
                burst: 10,
                refill: Duration::from_secs(6),
            },
            max_tracked_peers: 10_000,
            // Dashboards and scrapers: a few each; past it a connection is closed at once.
            max_connections: 256,
        }
    }
}

impl MetricsServerBuilder {
    /// Shows the monitor read through `source` as the seat `name` (one per watched client:
    /// in an agent console, one per agent). With more than one seat every exported series
    /// carries a `seat` label; with one it carries none.
    pub fn seat(mut self, name: impl Into<String>, source: SnapshotSource) -> Self {
        self.seats.push(Seat {
            name: name.into(),
            source,
        });
        self
    }

    /// Requires `Authorization: Bearer <token>` on everything that carries data (`/metrics`,
    /// `/snapshot.json`, `/api/dashboard`). The page's static files (`/`, its script and
    /// style sheet) hold no data and are served to anyone; the page reads the token from
    /// its address's fragment (`/#token=...`, never sent to the server) and sends it.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Samples the seats for the dashboard's charts every `interval`, keeping the last
    /// `capacity` samples (default: every 5 s, 720 kept: an hour).
    pub fn history(mut self, interval: Duration, capacity: usize) -> Self {
        self.history_interval = interval.max(Duration::from_millis(10));
        self.history_capacity = capacity.max(1);
        self
    }

    /// Wrong tokens allowed per peer address before it is answered 429 without being
    /// checked (default: 10, then one every 6 s).
    pub fn auth_failures(mut self, budget: FailureBudget) -> Self {
        self.auth_failures = budget;
        self
    }

    /// Connections held open at once (default 256); past it a new one is closed as soon
    /// as it is accepted, and the refusal logged.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Binds `addr` (use `127.0.0.1:0` for any port) and serves. Fails without a seat.
    pub async fn serve(self, addr: SocketAddr) -> Result<MetricsServer, QcError> {
        if self.seats.is_empty() {
            return Err(QcError::NoSeats);
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let listener = BoundedListener::new(listener, self.max_connections);
        let shared = Arc::new(Shared {
            seats: self.seats,
            token: self.token,
            history: Mutex::new(History::new(self.history_capacity)),
            interval: self.history_interval,
            throttle: Mutex::new(FailureThrottle::new(
                self.auth_failures,
                self.max_tracked_peers,
            )),
            warnings: WarnLimit::new(WARNINGS_PER_SECOND),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        });
        let sampler = tokio::spawn(sample(shared.clone()));
        let app = Router::new()
            .route("/", get(page))
            .route("/dashboard.js", get(script))
            .route("/dashboard.css", get(style))
            .route("/metrics", get(metrics))
            .route("/snapshot.json", get(snapshot))
            .route("/api/dashboard", get(dashboard))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
            .with_state(shared);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        });
        tracing::info!(%addr, "metrics endpoint serving");
        Ok(MetricsServer {
            addr,
            stop: Some(stop),
            task,
            sampler,
        })
    }
}

/// What the handlers share.
struct Shared {
    seats: Vec<Seat>,
    /// `None`: no token required.
    token: Option<String>,
    /// The dashboard's samples (written by the sampler, read by `/api/dashboard`).
    history: Mutex<History>,
    interval: Duration,
    /// Wrong tokens per peer address.
    throttle: Mutex<FailureThrottle<IpAddr>>,
    warnings: WarnLimit,
    in_flight: Arc<Semaphore>,
}

impl Shared {
    fn snapshots(&self) -> Vec<QcSnapshot> {
        self.seats.iter().map(|s| s.source.snapshot()).collect()
    }

    /// Leaves a warning for a refused request (rate-limited; never the token).
    fn refused(&self, peer: SocketAddr, path: &str, why: &str) {
        if let Some(suppressed) = self.warnings.allow() {
            tracing::warn!(%peer, path, why, suppressed, "metrics endpoint refused a request");
        }
    }
}

/// The sampler: one point of every seat each interval, until the server stops.
async fn sample(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(shared.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let snapshots = shared.snapshots();
        shared.history.lock().sample(&snapshots);
    }
}

/// Whether `a` equals `b`, in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Before every handler: bounds the requests in flight; on data routes, throttles peers
/// that sent wrong tokens and checks the token.
async fn guard(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = shared.in_flight.clone().try_acquire_owned() else {
        shared.refused(peer, request.uri().path(), "too many requests in flight");
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let path = request.uri().path().to_owned();
    let is_static = matches!(path.as_str(), "/" | "/dashboard.js" | "/dashboard.css");
    if let (Some(token), false) = (&shared.token, is_static) {
        let now = tokio::time::Instant::now();
        if let Err(wait) = shared.throttle.lock().check(&peer.ip(), now) {
            shared.refused(peer, &path, "too many wrong tokens");
            let secs = wait.as_secs().max(1).to_string();
            return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, secs)]).into_response();
        }
        let offered = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match offered {
            Some(offered) if same_secret(offered.as_bytes(), token.as_bytes()) => {}
            offered => {
                shared.throttle.lock().fail(&peer.ip(), now);
                let why = if offered.is_some() {
                    "wrong token"
                } else {
                    "no token"
                };
                shared.refused(peer, &path, why);
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "a bearer token is required",
                )
                    .into_response();
            }
        }
    }
    next.run(request).await
}

/// A static file of the page, with the headers that keep it to its own origin.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let snapshots = shared.snapshots();
    // One seat: unlabelled, as `prometheus_text` of its snapshot.
    let seats: Vec<(Option<&str>, &QcSnapshot)> = if snapshots.len() == 1 {
        snapshots.iter().map(|s| (None, s)).collect()
    } else {
        shared
            .seats
            .iter()
            .zip(&snapshots)
            .map(|(seat, s)| (Some(seat.name.as_str()), s))
            .collect()
    };
    match encode(&seats) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `?seat=NAME` of `/snapshot.json` (default: the first seat).
#[derive(Debug, Deserialize)]
struct SeatQuery {
    seat: Option<String>,
}

async fn snapshot(State(shared): State<Arc<Shared>>, Query(q): Query<SeatQuery>) -> Response {
    let seat = match &q.seat {
        None => shared.seats.first(),
        Some(name) => shared.seats.iter().find(|s| &s.name == name),
    };
    match seat {
        Some(seat) => axum::Json(seat.source.snapshot()).into_response(),
        None => (StatusCode::NOT_FOUND, "no such seat").into_response(),
    }
}

/// `?since=SEQ` of `/api/dashboard`: the newest point the page has.
#[derive(Debug, Deserialize)]
struct SinceQuery {
    #[serde(default)]
    since: u64,
}

async fn dashboard(State(shared): State<Arc<Shared>>, Query(q): Query<SinceQuery>) -> Response {
    let view = crate::dashboard::view(&shared.seats, &shared.history, q.since, shared.interval);
    let mut response = axum::Json(view).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The running metrics endpoint and dashboard; dropping it shuts the server down.
///
/// Serves `/metrics` (Prometheus text), `/snapshot.json`, the live dashboard page at `/`
/// and its data at `/api/dashboard`.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// The history sampler (aborted with the server).
    sampler: JoinHandle<()>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsServer {
    /// Serves one monitor, without a token, on `addr` (use `127.0.0.1:0` for any port).
    /// [`MetricsServer::builder`] serves several, with a token or more history.
    pub async fn serve(addr: SocketAddr, source: SnapshotSource) -> Result<MetricsServer, QcError> {
        Self::builder().seat("client", source).serve(addr).await
    }

    /// A server to configure: seats, bearer token, history.
    ///
    /// ```no_run
    /// # async fn run(keeper1: &im_qc::QcMonitor, keeper2: &im_qc::QcMonitor) -> Result<(), im_qc::QcError> {
    /// use std::time::Duration;
    /// let server = im_qc::MetricsServer::builder()
    ///     .seat("keeper-1", keeper1.source())
    ///     .seat("keeper-2", keeper2.source())
    ///     .bearer_token("a long random secret")
    ///     .history(Duration::from_secs(1), 3600)
    ///     .serve(([127, 0, 0, 1], 0).into())
    ///     .await?;
    /// println!("dashboard at http://{}/#token=...", server.addr());
    /// # Ok(()) }
    /// ```
    pub fn builder() -> MetricsServerBuilder {
        MetricsServerBuilder::default()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes requests in flight, and waits for the server to end.
    pub async fn shutdown(mut self) {
        self.sampler.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.sampler.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
