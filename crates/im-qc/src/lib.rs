//! Quality-control layer of im-layers: makes vendor health and business state visible.
//!
//! * [`QcVendor`]: a decorator over any `im-service` vendor recording, per operation
//!   (login, send, pull, ack, heartbeat), calls, errors by class, timeouts and latency
//!   histograms in sliding windows, labelled with the device's network ([`DeviceContext`]).
//! * [`QcMonitor`]: watches a client through its event bus: availability over 1 min / 5 min /
//!   1 h (success ratio, uptime, reconnects, heartbeat RTT and misses), a Healthy / Degraded /
//!   Down [`Verdict`] with reasons and a failover recommendation, data-processing metrics
//!   (sync passes, ingest, send success and ack latency, end-to-end latency, outbox depth,
//!   dropped UI events), business metrics ([`BusinessMetrics`]), and [`AlertRule`]s that fire
//!   and resolve as [`QcEvent`]s on its own bus and through `tracing`.
//! * Export: [`prometheus_text`] / [`MetricsServer`] and the JSON [`QcSnapshot`].
//!
//! Invariants: observes `im-arch` and `im-service` only through their public APIs; never
//! depends on the business demo; never changes what it observes (the decorator passes
//! every call and answer through unchanged).

pub mod alerts;
pub mod business;
pub mod device;
pub mod error;
pub mod export;
pub mod histogram;
pub mod monitor;
pub mod vendor;
pub mod window;

pub use alerts::{AlertRule, AlertStatus, Comparison, Metric, Severity};
pub use business::{AgentMetrics, Agents, BusinessMetrics, BusinessSnapshot, Role, RoleDirectory};
pub use device::{DeviceContext, DeviceSample, NetworkType, UnknownDevice};
pub use error::QcError;
pub use export::{MetricsServer, prometheus_text};
pub use histogram::LatencyHistogram;
pub use monitor::{
    QcConfig, QcEvent, QcMonitor, QcSnapshot, SnapshotSource, Verdict, VerdictReport, Watch,
};
pub use vendor::{CallStats, Op, QcVendor, VendorMetrics};
