//! The monitor's state: what its task has observed from the client's bus (connection
//! samples in sliding windows, sync, sends, messages), the last verdict and the alert
//! evaluator; judges the vendor, runs the rules and builds [`QcSnapshot`]s.
//!
//! One value per monitor, behind one lock shared by the task (which writes) and the
//! readers (`QcMonitor`, `SnapshotSource`). Every update completes under the lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use im_arch::{ClientEvent, ConnectionState, SendStatus, SyncProgress};
use im_service::{ClientMsgId, Clock, Content, Message, Timestamp, UserId};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::alerts::{ALERT_LOG_CAP, AlertRecord, Alerts, Metric, Transition};
use crate::business::BusinessMetrics;
use crate::config::QcConfig;
use crate::device::DeviceContext;
use crate::event::QcEvent;
use crate::histogram::LatencyHistogram;
use crate::report::{
    OpReport, Processing, QcSnapshot, Verdict, VerdictReport, WINDOWS, WindowAvailability,
};
use crate::vendor::{CallStats, SLOT, SPAN, VendorMetrics};
use crate::window::{Slot, SlotRing};

/// The state as the task and the readers share it.
pub(crate) type SharedState = Arc<Mutex<State>>;

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

/// A duration in milliseconds, as reports carry them.
fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1e3)
}

/// The monitor's state, updated by its task.
pub(crate) struct State {
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
    /// `None` unless the watch named roles (see [`Watch::roles`](crate::Watch::roles)).
    business: Option<BusinessMetrics>,
    /// See [`Watch::user`](crate::Watch::user).
    me: Option<UserId>,
    alerts: Alerts,
    /// The latest firings, oldest first, at most [`ALERT_LOG_CAP`].
    alert_log: std::collections::VecDeque<AlertRecord>,
    verdict: VerdictReport,
    down_since: Option<Instant>,
    dropped_ui: u64,
}

impl State {
    /// A fresh state: nothing observed, healthy.
    pub(crate) fn new(
        config: QcConfig,
        alerts: Alerts,
        business: Option<BusinessMetrics>,
        me: Option<UserId>,
        metrics: Arc<VendorMetrics>,
        device: Arc<dyn DeviceContext>,
        clock: Arc<dyn Clock>,
    ) -> State {
        State {
            business,
            me,
            metrics,
            device,
            clock,
            connection: ConnectionState::Disconnected,
            disconnected_since: None,
            conn: SlotRing::new(SLOT.min(config.eval_interval), SPAN),
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
            alert_log: std::collections::VecDeque::new(),
            verdict: VerdictReport {
                verdict: Verdict::Healthy,
                reasons: Vec::new(),
                failover_recommended: false,
            },
            down_since: None,
            dropped_ui: 0,
            config,
        }
    }

    fn observe(&mut self, ev: &ClientEvent, now: Instant, wall: Timestamp) {
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
    pub(crate) fn observe_batch<'a>(
        &mut self,
        events: impl Iterator<Item = &'a ClientEvent>,
        now: Instant,
        wall: Timestamp,
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

    fn observe_message(&mut self, m: &Message, wall: Timestamp) {
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
    pub(crate) fn tick(&mut self, now: Instant, dropped_ui: u64) -> Vec<QcEvent> {
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
        let transitions = self.alerts.evaluate(now, lookup);
        let wall = self.clock.now().as_millis();
        for t in &transitions {
            self.log_transition(t, wall);
        }
        for t in transitions {
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

    /// Keeps `t` in the alert log: a firing opens a record, a resolution closes the newest
    /// open record of its rule.
    fn log_transition(&mut self, t: &Transition, wall_ms: i64) {
        match t {
            Transition::Fired {
                rule,
                severity,
                value,
            } => {
                if self.alert_log.len() >= ALERT_LOG_CAP {
                    self.alert_log.pop_front();
                }
                self.alert_log.push_back(AlertRecord {
                    rule: rule.clone(),
                    severity: *severity,
                    value: *value,
                    fired_at_ms: wall_ms,
                    resolved_at_ms: None,
                });
            }
            Transition::Resolved { rule, .. } => {
                if let Some(open) = self
                    .alert_log
                    .iter_mut()
                    .rev()
                    .find(|r| &r.rule == rule && r.resolved_at_ms.is_none())
                {
                    open.resolved_at_ms = Some(wall_ms);
                }
            }
        }
    }

    /// The wall clock's time now (server times are on it).
    pub(crate) fn wall_now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The current verdict.
    pub(crate) fn verdict(&self) -> VerdictReport {
        self.verdict.clone()
    }

    /// Everything, at `now`.
    pub(crate) fn snapshot(&self, now: Instant) -> QcSnapshot {
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
        let wall = self.clock.now();
        QcSnapshot {
            vendor: self.metrics.vendor().to_string(),
            at_ms: wall.as_millis(),
            device: self.device.sample(),
            verdict: self.verdict.clone(),
            connection: format!("{:?}", self.connection),
            availability,
            operations,
            processing,
            business: self.business.as_ref().map(|b| b.snapshot(wall)),
            alerts: self.alerts.status(),
            alert_log: self.alert_log.iter().rev().cloned().collect(),
        }
    }
}
