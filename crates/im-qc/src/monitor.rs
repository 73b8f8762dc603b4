//! [`QcMonitor`]: watches one client through its event bus and one vendor through the
//! [`QcVendor`](crate::QcVendor) decorator's metrics; computes availability windows, the
//! vendor verdict and failover recommendation, data-processing and business metrics;
//! evaluates alert rules; publishes [`QcEvent`]s on its own bus and through `tracing`.
//!
//! One task per monitor, owned by it (aborted on drop). Time is `tokio::time::Instant`
//! (evaluation runs every `eval_interval`), so paused-time tests drive it exactly.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use im_arch::{
    Bus, BusStream, ClientEvent, ConnectionState, DeliveryPolicy, DroppedCounter, Filter, Routed,
    SendStatus, SyncProgress,
};
use im_service::{ClientMsgId, Clock, Content, ConversationId, Message, UserId};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::alerts::{AlertRule, AlertStatus, Alerts, Metric, Severity, Transition};
use crate::business::{BusinessMetrics, BusinessSnapshot, RoleDirectory};
use crate::device::{DeviceContext, DeviceSample};
use crate::error::QcError;
use crate::histogram::LatencyHistogram;
use crate::vendor::{CallStats, Op, SPAN, VendorMetrics};
use crate::window::{Slot, SlotRing};

/// The windows availability is reported over.
pub const WINDOWS: [(&str, Duration); 3] = [
    ("1m", Duration::from_secs(60)),
    ("5m", Duration::from_secs(300)),
    ("1h", Duration::from_secs(3600)),
];

/// Tunables of the monitor.
#[derive(Debug, Clone)]
pub struct QcConfig {
    /// How often availability, the verdict and alert rules are evaluated.
    pub eval_interval: Duration,
    /// The window the verdict looks at.
    pub verdict_window: Duration,
    /// Fewer calls than this in the verdict window say nothing about the success ratio.
    pub min_calls: u64,
    /// Success ratio below which the vendor is Degraded.
    pub degraded_below: f64,
    /// Success ratio below which the vendor is Down.
    pub down_below: f64,
    /// Not connected for this long (while trying to be) means Down.
    pub down_when_disconnected_for: Duration,
    /// p99 call latency above this means Degraded.
    pub slow_p99: Duration,
    /// Down for this long recommends failing over to another vendor.
    pub failover_after: Duration,
    /// A customer message counts as answered in time within this.
    pub answer_within: Duration,
    /// Alert rules.
    pub rules: Vec<AlertRule>,
}

impl Default for QcConfig {
    fn default() -> Self {
        Self {
            eval_interval: Duration::from_secs(1),
            verdict_window: Duration::from_secs(60),
            min_calls: 3,
            degraded_below: 0.95,
            down_below: 0.5,
            down_when_disconnected_for: Duration::from_secs(15),
            slow_p99: Duration::from_secs(2),
            failover_after: Duration::from_secs(120),
            answer_within: Duration::from_secs(60),
            rules: vec![AlertRule {
                name: "vendor_down".into(),
                metric: Metric::Verdict,
                comparison: crate::alerts::Comparison::Above,
                threshold: 1.5,
                for_duration: Duration::from_secs(30),
                severity: Severity::Critical,
            }],
        }
    }
}

/// The vendor's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Working as expected.
    Healthy,
    /// Working, but slow, flaky or reconnecting.
    Degraded,
    /// Not working.
    Down,
}

impl Verdict {
    /// 0 healthy, 1 degraded, 2 down (for rules and exports).
    pub fn level(self) -> f64 {
        match self {
            Verdict::Healthy => 0.0,
            Verdict::Degraded => 1.0,
            Verdict::Down => 2.0,
        }
    }
}

/// What QC publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum QcEvent {
    /// The verdict changed.
    VerdictChanged {
        /// The vendor.
        vendor: String,
        /// Before.
        from: Verdict,
        /// Now.
        to: Verdict,
        /// Why, in words.
        reasons: Vec<String>,
    },
    /// The vendor has been down long enough to fail over.
    FailoverRecommended {
        /// The vendor.
        vendor: String,
        /// Why.
        reasons: Vec<String>,
    },
    /// An alert rule fired.
    AlertFired {
        /// The rule.
        rule: String,
        /// Its severity.
        severity: Severity,
        /// The value that made it fire.
        value: f64,
    },
    /// An alert rule stopped firing.
    AlertResolved {
        /// The rule.
        rule: String,
    },
    /// This subscriber missed events (DropOldest subscribers only).
    Lagged {
        /// How many.
        dropped: u64,
    },
}

impl Routed for QcEvent {
    const KINDS: usize = 5;

    fn kind(&self) -> usize {
        match self {
            QcEvent::VerdictChanged { .. } => 0,
            QcEvent::FailoverRecommended { .. } => 1,
            QcEvent::AlertFired { .. } => 2,
            QcEvent::AlertResolved { .. } => 3,
            QcEvent::Lagged { .. } => 4,
        }
    }

    fn conversation(&self) -> Option<&ConversationId> {
        None
    }

    fn lagged(dropped: u64) -> Self {
        QcEvent::Lagged { dropped }
    }
}

/// Connection samples of one slot.
#[derive(Debug, Clone, Default)]
struct ConnSlot {
    online: u64,
    samples: u64,
    reconnects: u64,
    heartbeat_misses: u64,
    rtt: LatencyHistogram,
    ingested: u64,
}

impl Slot for ConnSlot {
    fn merge(&mut self, o: &Self) {
        self.online += o.online;
        self.samples += o.samples;
        self.reconnects += o.reconnects;
        self.heartbeat_misses += o.heartbeat_misses;
        self.rtt.merge(&o.rtt);
        self.ingested += o.ingested;
    }
}

/// Availability over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowAvailability {
    /// "1m", "5m" or "1h".
    pub window: &'static str,
    /// Vendor calls in the window.
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
    /// Share that succeeded.
    pub success_ratio: Option<f64>,
    /// Share of evaluation ticks spent `Online`.
    pub uptime_ratio: Option<f64>,
    /// Reconnect attempts.
    pub reconnects: u64,
    /// Heartbeats missed.
    pub heartbeat_misses: u64,
    /// Heartbeat RTT p50, ms.
    pub heartbeat_rtt_p50_ms: Option<f64>,
    /// Messages delivered per second.
    pub ingested_per_sec: f64,
}

/// One operation's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpReport {
    /// The operation.
    pub op: Op,
    /// The network samples were taken on.
    pub network: &'static str,
    /// Calls since start.
    pub calls_total: u64,
    /// Failures since start: transient.
    pub transient_total: u64,
    /// Rate-limited.
    pub rate_limited_total: u64,
    /// Permanent.
    pub permanent_total: u64,
    /// Timeouts (also in their class).
    pub timeouts_total: u64,
    /// Latency quantiles over the last minute, ms: p50, p90, p99.
    pub latency_ms_1m: [Option<f64>; 3],
}

/// Data processing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Processing {
    /// Sync passes finished.
    pub sync_passes: u64,
    /// Sync passes that failed.
    pub sync_failures: u64,
    /// Duration of the last pass, ms.
    pub last_sync_ms: Option<f64>,
    /// Messages delivered since start.
    pub messages_ingested_total: u64,
    /// Sends acknowledged.
    pub sends_ok: u64,
    /// Sends failed.
    pub sends_failed: u64,
    /// `sends_ok / (sends_ok + sends_failed)`.
    pub send_success_ratio: Option<f64>,
    /// Local echo → vendor acknowledgement, ms: p50, p99.
    pub send_ack_ms: [Option<f64>; 2],
    /// Sender timestamp → receipt, ms: p50, p99.
    pub end_to_end_ms: [Option<f64>; 2],
    /// Items in the outbox (sending or failed).
    pub outbox_depth: u64,
    /// Events dropped from UI subscribers' queues.
    pub dropped_ui_events: u64,
    /// Retried vendor call attempts.
    pub retries: u64,
    /// Failed local store writes.
    pub store_errors: u64,
}

/// The vendor verdict with its reasons.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerdictReport {
    /// The verdict.
    pub verdict: Verdict,
    /// Why (empty when healthy).
    pub reasons: Vec<String>,
    /// Whether failing over is recommended now.
    pub failover_recommended: bool,
}

/// Everything QC knows, at one moment: the JSON snapshot and the source of the Prometheus
/// exposition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QcSnapshot {
    /// The vendor observed.
    pub vendor: String,
    /// The device's situation.
    pub device: DeviceSample,
    /// Health verdict.
    pub verdict: VerdictReport,
    /// The connection state's name.
    pub connection: String,
    /// Per window.
    pub availability: Vec<WindowAvailability>,
    /// Per operation and network.
    pub operations: Vec<OpReport>,
    /// Data processing.
    pub processing: Processing,
    /// Business metrics, when the monitor was given roles.
    pub business: Option<BusinessSnapshot>,
    /// Alert rules.
    pub alerts: Vec<AlertStatus>,
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1e3)
}

/// The monitor's state, updated by its task.
struct State {
    config: QcConfig,
    metrics: Arc<VendorMetrics>,
    device: Arc<dyn DeviceContext>,
    clock: Arc<dyn Clock>,
    connection: ConnectionState,
    /// Since when the client has not been `Online` while trying to be.
    disconnected_since: Option<Instant>,
    conn: SlotRing<ConnSlot>,
    sync_started: Option<Instant>,
    processing: Processing,
    send_ack: LatencyHistogram,
    end_to_end: LatencyHistogram,
    sending: HashMap<ClientMsgId, Instant>,
    failed: HashSet<ClientMsgId>,
    /// `None` unless the watch named roles (see [`Watch::roles`]).
    business: Option<BusinessMetrics>,
    /// See [`Watch::user`].
    me: Option<UserId>,
    alerts: Alerts,
    verdict: VerdictReport,
    down_since: Option<Instant>,
    dropped_ui: u64,
}

impl State {
    fn observe(&mut self, ev: &ClientEvent, now: Instant, wall: im_service::Timestamp) {
        match ev {
            ClientEvent::State(s) => {
                if matches!(s, ConnectionState::Reconnecting { .. }) {
                    self.conn.at(now).reconnects += 1;
                }
                let trying = !s.is_terminal() && *s != ConnectionState::Online;
                match (trying, self.disconnected_since) {
                    (true, None) => self.disconnected_since = Some(now),
                    (false, _) => self.disconnected_since = None,
                    _ => {}
                }
                self.connection = s.clone();
            }
            ClientEvent::Heartbeat { rtt } => self.conn.at(now).rtt.record(*rtt),
            ClientEvent::HeartbeatMissed { .. } => self.conn.at(now).heartbeat_misses += 1,
            ClientEvent::Message(r) => {
                self.conn.at(now).ingested += 1;
                self.processing.messages_ingested_total += 1;
                self.observe_message(&r.message, wall);
            }
            ClientEvent::Sync(p) => match p {
                SyncProgress::Started => self.sync_started = Some(now),
                SyncProgress::Finished { .. } | SyncProgress::Failed(_) => {
                    if matches!(p, SyncProgress::Failed(_)) {
                        self.processing.sync_failures += 1;
                    } else {
                        self.processing.sync_passes += 1;
                    }
                    if let Some(t) = self.sync_started.take() {
                        self.processing.last_sync_ms = ms(Some(now - t));
                    }
                }
                _ => {}
            },
            ClientEvent::SendStatus {
                client_id,
                conversation,
                status,
                server_time,
            } => match status {
                Some(SendStatus::Sending) => {
                    self.failed.remove(client_id);
                    self.sending.entry(client_id.clone()).or_insert(now);
                }
                Some(SendStatus::Sent { server_id, seq }) => {
                    if let (Some(me), Some(b), Some(t)) =
                        (&self.me, self.business.as_mut(), server_time)
                    {
                        // The own message as the vendor stored it; the body does not
                        // matter to the metrics.
                        b.observe(&Message {
                            server_id: server_id.clone(),
                            client_id: client_id.clone(),
                            conversation: conversation.clone(),
                            sender: me.clone(),
                            seq: *seq,
                            server_time: *t,
                            client_time: *t,
                            content: Content::Text(String::new()),
                        });
                    }
                    self.failed.remove(client_id);
                    if let Some(t) = self.sending.remove(client_id) {
                        self.send_ack.record(now - t);
                    }
                    self.processing.sends_ok += 1;
                }
                Some(SendStatus::Failed { .. }) => {
                    self.sending.remove(client_id);
                    self.failed.insert(client_id.clone());
                    self.processing.sends_failed += 1;
                }
                None => {
                    self.sending.remove(client_id);
                    self.failed.remove(client_id);
                }
            },
            ClientEvent::Retry(_) => self.processing.retries += 1,
            ClientEvent::StoreFailed { .. } => self.processing.store_errors += 1,
            ClientEvent::Lagged { dropped } => {
                tracing::warn!(dropped, "quality monitor fell behind the client's events");
            }
            _ => {}
        }
    }

    /// Observes a backlog taken in one go: messages (nearly all of a busy bus) are counted
    /// into the window once per batch, not once per message.
    fn observe_batch<'a>(
        &mut self,
        events: impl Iterator<Item = &'a ClientEvent>,
        now: Instant,
        wall: im_service::Timestamp,
    ) {
        let mut messages = 0;
        for ev in events {
            if let ClientEvent::Message(r) = ev {
                messages += 1;
                self.observe_message(&r.message, wall);
            } else {
                self.observe(ev, now, wall);
            }
        }
        if messages > 0 {
            self.conn.at(now).ingested += messages;
            self.processing.messages_ingested_total += messages;
        }
    }

    fn observe_message(&mut self, m: &Message, wall: im_service::Timestamp) {
        let age = wall.as_millis() - m.client_time.as_millis();
        if age >= 0 {
            self.end_to_end.record(Duration::from_millis(age as u64));
        }
        if let Some(b) = &mut self.business {
            b.observe(m);
        }
    }

    fn judge(&self, now: Instant) -> VerdictReport {
        let c = &self.config;
        let calls = self.metrics.window(None, None, c.verdict_window);
        let conn = self.conn.window(now, c.verdict_window);
        let mut down = Vec::new();
        let mut degraded = Vec::new();
        if let (true, Some(ratio)) = (calls.calls >= c.min_calls, calls.success_ratio()) {
            let text = format!(
                "{:.0}% of {} calls succeeded over {}s",
                ratio * 100.0,
                calls.calls,
                c.verdict_window.as_secs()
            );
            if ratio < c.down_below {
                down.push(text);
            } else if ratio < c.degraded_below {
                degraded.push(text);
            }
        }
        if let Some(since) = self.disconnected_since {
            let out = now - since;
            if out >= c.down_when_disconnected_for {
                down.push(format!("not connected for {}s", out.as_secs()));
            } else if conn.samples > 0 {
                degraded.push("reconnecting".to_string());
            }
        }
        if let Some(p99) = calls.latency.quantile(0.99).filter(|&p| p > c.slow_p99) {
            degraded.push(format!("p99 latency {} ms", p99.as_millis()));
        }
        if conn.heartbeat_misses > 0 {
            degraded.push(format!("{} heartbeats missed", conn.heartbeat_misses));
        }
        let (verdict, reasons) = if !down.is_empty() {
            (Verdict::Down, down)
        } else if !degraded.is_empty() {
            (Verdict::Degraded, degraded)
        } else {
            (Verdict::Healthy, Vec::new())
        };
        VerdictReport {
            verdict,
            reasons,
            failover_recommended: false,
        }
    }

    fn value(&self, metric: &Metric, now: Instant) -> Option<f64> {
        match metric {
            Metric::Verdict => Some(self.verdict.verdict.level()),
            Metric::SuccessRatio { window } => {
                let w = self.metrics.window(None, None, *window);
                (w.calls >= self.config.min_calls)
                    .then(|| w.success_ratio())
                    .flatten()
            }
            Metric::LatencyP99Ms { op, window } => ms(self
                .metrics
                .window(*op, None, *window)
                .latency
                .quantile(0.99)),
            Metric::UptimeRatio { window } => {
                let w = self.conn.window(now, *window);
                (w.samples > 0).then(|| w.online as f64 / w.samples as f64)
            }
            Metric::HeartbeatMisses { window } => {
                Some(self.conn.window(now, *window).heartbeat_misses as f64)
            }
            Metric::ResponseRate => self
                .business
                .as_ref()
                .and_then(|b| b.snapshot(self.clock.now()).response_rate),
            Metric::OverdueConversations => self
                .business
                .as_ref()
                .map(|b| b.snapshot(self.clock.now()).overdue.len() as f64),
            Metric::DroppedUiEvents => Some(self.dropped_ui as f64),
            Metric::OutboxDepth => Some((self.sending.len() + self.failed.len()) as f64),
        }
    }

    /// One evaluation: sample the connection, judge, run the rules.
    fn tick(&mut self, now: Instant, dropped_ui: u64) -> Vec<QcEvent> {
        self.dropped_ui = dropped_ui;
        let slot = self.conn.at(now);
        slot.samples += 1;
        if self.connection == ConnectionState::Online {
            slot.online += 1;
        }
        let mut out = Vec::new();
        let vendor = self.metrics.vendor().to_string();
        let mut report = self.judge(now);
        if report.verdict != self.verdict.verdict {
            tracing::warn!(
                vendor = %vendor, from = ?self.verdict.verdict, to = ?report.verdict,
                reasons = ?report.reasons, "vendor verdict changed"
            );
            out.push(QcEvent::VerdictChanged {
                vendor: vendor.clone(),
                from: self.verdict.verdict,
                to: report.verdict,
                reasons: report.reasons.clone(),
            });
        }
        if report.verdict == Verdict::Down {
            let since = *self.down_since.get_or_insert(now);
            report.failover_recommended = now - since >= self.config.failover_after;
            if report.failover_recommended && !self.verdict.failover_recommended {
                tracing::error!(vendor = %vendor, reasons = ?report.reasons, "failover recommended");
                out.push(QcEvent::FailoverRecommended {
                    vendor,
                    reasons: report.reasons.clone(),
                });
            }
        } else {
            self.down_since = None;
        }
        self.verdict = report;
        let values: Vec<(Metric, Option<f64>)> = self
            .config
            .rules
            .iter()
            .map(|r| (r.metric.clone(), self.value(&r.metric, now)))
            .collect();
        let lookup = |m: &Metric| values.iter().find(|(k, _)| k == m).and_then(|(_, v)| *v);
        for t in self.alerts.evaluate(now, lookup) {
            out.push(match t {
                Transition::Fired {
                    rule,
                    severity,
                    value,
                } => {
                    tracing::warn!(rule = %rule, severity = severity.as_str(), value, "alert fired");
                    QcEvent::AlertFired {
                        rule,
                        severity,
                        value,
                    }
                }
                Transition::Resolved { rule, value } => {
                    tracing::info!(rule = %rule, value = ?value, "alert resolved");
                    QcEvent::AlertResolved { rule }
                }
            });
        }
        out
    }

    fn snapshot(&self, now: Instant) -> QcSnapshot {
        let availability = WINDOWS
            .iter()
            .map(|&(name, window)| {
                let calls: CallStats = self.metrics.window(None, None, window);
                let conn = self.conn.window(now, window);
                WindowAvailability {
                    window: name,
                    calls: calls.calls,
                    errors: calls.errors(),
                    success_ratio: calls.success_ratio(),
                    uptime_ratio: (conn.samples > 0)
                        .then(|| conn.online as f64 / conn.samples as f64),
                    reconnects: conn.reconnects,
                    heartbeat_misses: conn.heartbeat_misses,
                    heartbeat_rtt_p50_ms: ms(conn.rtt.quantile(0.5)),
                    ingested_per_sec: conn.ingested as f64 / window.as_secs_f64(),
                }
            })
            .collect();
        let operations = self
            .metrics
            .keys()
            .into_iter()
            .map(|(op, network)| {
                let total = self.metrics.total(Some(op), Some(network));
                let minute = self
                    .metrics
                    .window(Some(op), Some(network), Duration::from_secs(60));
                OpReport {
                    op,
                    network: network.as_str(),
                    calls_total: total.calls,
                    transient_total: total.transient,
                    rate_limited_total: total.rate_limited,
                    permanent_total: total.permanent,
                    timeouts_total: total.timeouts,
                    latency_ms_1m: [0.5, 0.9, 0.99].map(|q| ms(minute.latency.quantile(q))),
                }
            })
            .collect();
        let mut processing = self.processing.clone();
        let sends = processing.sends_ok + processing.sends_failed;
        processing.send_success_ratio =
            (sends > 0).then(|| processing.sends_ok as f64 / sends as f64);
        processing.send_ack_ms = [0.5, 0.99].map(|q| ms(self.send_ack.quantile(q)));
        processing.end_to_end_ms = [0.5, 0.99].map(|q| ms(self.end_to_end.quantile(q)));
        processing.outbox_depth = (self.sending.len() + self.failed.len()) as u64;
        processing.dropped_ui_events = self.dropped_ui;
        QcSnapshot {
            vendor: self.metrics.vendor().to_string(),
            device: self.device.sample(),
            verdict: self.verdict.clone(),
            connection: format!("{:?}", self.connection),
            availability,
            operations,
            processing,
            business: self.business.as_ref().map(|b| b.snapshot(self.clock.now())),
            alerts: self.alerts.status(),
        }
    }
}

/// The running monitor. Dropping it stops its task.
///
/// It watches a client through two taps: the vendor wrapped in [`QcVendor`](crate::QcVendor)
/// (every call timed and classified) and the client's event bus. Export it with
/// [`MetricsServer`](crate::MetricsServer); `crates/im-qc/examples/qc_metrics.rs` does so
/// against the reference vendor over TCP and scrapes `/metrics`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use im_arch::ImClient;
/// use im_qc::{MetricsServer, QcConfig, QcMonitor, QcVendor, UnknownDevice, Watch};
/// use im_service::memory::MemoryVendor;
/// use im_service::{SystemClock, UserId};
///
/// let vendor = MemoryVendor::default();
/// let alice = vendor.register_user(&UserId::new("alice"));
/// let qc = Arc::new(QcVendor::new(Arc::new(vendor.client()), Arc::new(UnknownDevice)));
/// let metrics = qc.metrics();
/// let client = ImClient::builder(qc, alice).build();
/// let watch = Watch {
///     metrics,
///     bus: client.bus().clone(),
///     roles: None,
///     user: Some(UserId::new("alice")),
///     device: Arc::new(UnknownDevice),
///     clock: Arc::new(SystemClock),
/// };
/// let monitor = QcMonitor::start(QcConfig::default(), watch)?;
/// let server = MetricsServer::serve(([127, 0, 0, 1], 0).into(), monitor.source()).await?;
/// client.login().await?;
/// println!("verdict {:?}, Prometheus text at http://{}/metrics", monitor.verdict(), server.addr());
/// client.logout().await;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct QcMonitor {
    state: Arc<Mutex<State>>,
    /// Client events processed (for tests and benchmarks that wait for the monitor).
    seen: Arc<std::sync::atomic::AtomicU64>,
    bus: Bus<QcEvent>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for QcMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QcMonitor").finish_non_exhaustive()
    }
}

impl Drop for QcMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a monitor watches: the vendor's metrics (from [`QcVendor`](crate::QcVendor)) and
/// the client's bus, plus who is who and where the device is.
pub struct Watch {
    /// The decorator's metrics.
    pub metrics: Arc<VendorMetrics>,
    /// The client's event bus (`ImClient::bus`).
    pub bus: Bus<ClientEvent>,
    /// Roles for business metrics; `None` computes none. Business metrics are for the
    /// places that serve customers (an agent console, a backend): they cost a map update per
    /// message, which a customer's phone has no use for.
    pub roles: Option<Box<dyn RoleDirectory>>,
    /// The watched client's own user. With roles, its sends (as the vendor stored them,
    /// from the bus's `Sent` statuses) count in the business metrics: on an agent's
    /// console they are the replies. `None`: only received messages count.
    pub user: Option<UserId>,
    /// Device and network.
    pub device: Arc<dyn DeviceContext>,
    /// Wall clock, for end-to-end latency and business time (server times).
    pub clock: Arc<dyn Clock>,
}

impl QcMonitor {
    /// Starts watching. Fails if a rule is invalid.
    pub fn start(config: QcConfig, watch: Watch) -> Result<QcMonitor, QcError> {
        let alerts = Alerts::new(config.rules.clone())?;
        if watch.roles.is_none() {
            // A rule on a metric that is never computed would silently never fire.
            if let Some(rule) = config.rules.iter().find(|r| {
                matches!(
                    r.metric,
                    Metric::ResponseRate | Metric::OverdueConversations
                )
            }) {
                return Err(QcError::InvalidRule {
                    rule: rule.name.clone(),
                    reason: "business metric without roles (Watch::roles is None)".into(),
                });
            }
        }
        // The client's bus never waits for a reader: a monitor that falls 4,096 events behind
        // loses the oldest, is told so (`ClientEvent::Lagged`), and the loss counts in the
        // bus's dropped events, which QC reports.
        let events: BusStream<ClientEvent> = watch
            .bus
            .subscribe(Filter::all(), DeliveryPolicy::DropOldest { capacity: 4096 });
        let state = Arc::new(Mutex::new(State {
            business: watch
                .roles
                .map(|roles| BusinessMetrics::with_roles(config.answer_within, roles)),
            me: watch.user,
            metrics: watch.metrics,
            device: watch.device,
            clock: watch.clock,
            connection: ConnectionState::Disconnected,
            disconnected_since: None,
            conn: SlotRing::new(crate::vendor::SLOT.min(config.eval_interval), SPAN),
            sync_started: None,
            processing: Processing {
                sync_passes: 0,
                sync_failures: 0,
                last_sync_ms: None,
                messages_ingested_total: 0,
                sends_ok: 0,
                sends_failed: 0,
                send_success_ratio: None,
                send_ack_ms: [None; 2],
                end_to_end_ms: [None; 2],
                outbox_depth: 0,
                dropped_ui_events: 0,
                retries: 0,
                store_errors: 0,
            },
            send_ack: LatencyHistogram::default(),
            end_to_end: LatencyHistogram::default(),
            sending: HashMap::new(),
            failed: HashSet::new(),
            alerts,
            verdict: VerdictReport {
                verdict: Verdict::Healthy,
                reasons: Vec::new(),
                failover_recommended: false,
            },
            down_since: None,
            dropped_ui: 0,
            config: config.clone(),
        }));
        let bus: Bus<QcEvent> = Bus::new();
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(run(
            state.clone(),
            seen.clone(),
            events,
            watch.bus.dropped_counter(),
            bus.clone(),
            config.eval_interval,
        ));
        Ok(QcMonitor {
            state,
            seen,
            bus,
            task,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// QC's events (verdict changes, failover, alerts).
    pub fn subscribe(&self, filter: Filter, policy: DeliveryPolicy) -> BusStream<QcEvent> {
        self.bus.subscribe(filter, policy)
    }

    /// Everything, now.
    pub fn snapshot(&self) -> QcSnapshot {
        self.state().snapshot(Instant::now())
    }

    /// Client events processed so far (cheap: no snapshot is built).
    pub fn events_seen(&self) -> u64 {
        self.seen.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current verdict.
    pub fn verdict(&self) -> VerdictReport {
        self.state().verdict.clone()
    }

    /// Feeds a message the bus does not carry (e.g. the app's own sends) to the business
    /// metrics; repeats are ignored, and so is everything without roles.
    pub fn observe_message(&self, m: &Message) {
        if let Some(b) = &mut self.state().business {
            b.observe(m);
        }
    }

    /// A handle the exporters read snapshots through.
    pub fn source(&self) -> SnapshotSource {
        SnapshotSource(self.state.clone())
    }
}

/// Reads snapshots of a running monitor (cheap to clone).
#[derive(Clone)]
pub struct SnapshotSource(Arc<Mutex<State>>);

impl std::fmt::Debug for SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSource").finish_non_exhaustive()
    }
}

impl SnapshotSource {
    /// Everything, now.
    pub fn snapshot(&self) -> QcSnapshot {
        lock(&self.0).snapshot(Instant::now())
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update completes under the lock: poison carries no torn state.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run(
    state: Arc<Mutex<State>>,
    seen: Arc<std::sync::atomic::AtomicU64>,
    mut events: BusStream<ClientEvent>,
    dropped: DroppedCounter,
    out: Bus<QcEvent>,
    every: Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    loop {
        tokio::select! {
            ev = events.recv(), if open => match ev {
                Some(ev) => {
                    // Let the publisher run on first: a busy bus then hands over its events
                    // in batches, and the fixed cost of a pass (clocks, locks, the select)
                    // is paid once per batch, not once per event.
                    tokio::task::yield_now().await;
                    // Take the whole backlog with one lock of the queue and one of the state.
                    let backlog = events.drain_now();
                    let now = Instant::now();
                    let mut st = lock(&state);
                    let wall = st.clock.now();
                    st.observe_batch(
                        std::iter::once(&*ev).chain(backlog.iter().map(|e| &**e)),
                        now,
                        wall,
                    );
                    drop(st);
                    seen.fetch_add(1 + backlog.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                // The client is gone; keep evaluating what was recorded.
                None => open = false,
            },
            _ = ticker.tick() => {
                let published = lock(&state).tick(Instant::now(), dropped.get());
                for e in published {
                    out.publish(e).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::business::Agents;
    use crate::device::UnknownDevice;
    use crate::vendor::QcVendor;
    use im_service::memory::{MemoryVendor, MemoryVendorConfig};
    use im_service::{
        ClientMsgId, Content, Origin, ReceivedMessage, ServerMsgId, SystemClock, Timestamp, UserId,
    };

    fn watch(bus: &Bus<ClientEvent>, roles: Option<Box<dyn RoleDirectory>>) -> Watch {
        let vendor = MemoryVendor::new(MemoryVendorConfig::default());
        Watch {
            metrics: QcVendor::new(Arc::new(vendor.client()), Arc::new(UnknownDevice)).metrics(),
            bus: bus.clone(),
            roles,
            user: None,
            device: Arc::new(UnknownDevice),
            clock: Arc::new(SystemClock),
        }
    }

    fn rule(metric: Metric) -> AlertRule {
        AlertRule {
            name: "r".into(),
            metric,
            comparison: crate::alerts::Comparison::Below,
            threshold: 0.5,
            for_duration: Duration::ZERO,
            severity: Severity::Warning,
        }
    }

    /// A rule on a business metric of a monitor without roles would never fire: refused.
    #[tokio::test]
    async fn business_rules_need_roles() {
        let bus = Bus::new();
        let config = QcConfig {
            rules: vec![rule(Metric::ResponseRate)],
            ..QcConfig::default()
        };
        let refused = QcMonitor::start(config.clone(), watch(&bus, None));
        assert!(
            matches!(&refused, Err(QcError::InvalidRule { reason, .. }) if reason.contains("roles")),
            "{refused:?}"
        );
        let with_roles = QcMonitor::start(config, watch(&bus, Some(Box::new(Agents::default()))));
        assert!(with_roles.is_ok());
    }

    /// Without roles messages are counted but no business figures exist; with roles they do.
    #[tokio::test]
    async fn business_metrics_are_computed_only_with_roles() {
        let bus = Bus::new();
        let plain = QcMonitor::start(QcConfig::default(), watch(&bus, None)).unwrap();
        let business = QcMonitor::start(
            QcConfig::default(),
            watch(&bus, Some(Box::new(Agents::default()))),
        )
        .unwrap();
        let message = Message {
            server_id: ServerMsgId::new("m1"),
            client_id: ClientMsgId::new("c1"),
            conversation: ConversationId::group("g"),
            sender: UserId::new("tina"),
            seq: None,
            server_time: Timestamp::from_millis(1),
            client_time: Timestamp::from_millis(1),
            content: Content::text("hi"),
        };
        bus.publish(ClientEvent::Message(ReceivedMessage {
            message,
            origin: Origin::Online,
        }))
        .await;
        while plain.events_seen() < 1 || business.events_seen() < 1 {
            tokio::task::yield_now().await;
        }
        let (p, b) = (plain.snapshot(), business.snapshot());
        assert_eq!(p.processing.messages_ingested_total, 1);
        assert_eq!(b.processing.messages_ingested_total, 1);
        assert_eq!(p.business, None);
        let b = b.business.unwrap();
        // Tina's message (sent in 1970) waits for an answer: overdue, nobody assigned.
        assert_eq!(b.overdue.len(), 1);
        assert_eq!(b.agents[0].agent, "unassigned");
        assert_eq!(b.replies_per_conversation_per_hour, Some(0.0));
    }
}
