//! What the monitor reports: the vendor [`Verdict`] with its reasons and the
//! [`QcSnapshot`] (availability per window, per-operation figures, data processing,
//! business metrics, alert states) that the JSON and Prometheus exports are built from.

use std::time::Duration;

use serde::Serialize;

use crate::alerts::{AlertRecord, AlertStatus};
use crate::business::BusinessSnapshot;
use crate::device::DeviceSample;
use crate::vendor::Op;

/// The windows availability is reported over.
pub(crate) const WINDOWS: [(&str, Duration); 3] = [
    ("1m", Duration::from_secs(60)),
    ("5m", Duration::from_secs(300)),
    ("1h", Duration::from_secs(3600)),
];

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
    /// When it was taken, on the watched clock (server time), ms since the Unix epoch.
    pub at_ms: i64,
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
    /// The latest firings, fired and resolved, newest first (at most 100).
    pub alert_log: Vec<AlertRecord>,
}
