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
//! * Export: [`prometheus_text`] / [`MetricsServer`] (Prometheus text, the JSON
//!   [`QcSnapshot`], and a live dashboard page with a bounded history of samples).
//! * Modules: `monitor.rs` is the handle, `state.rs` what the monitor observed and its
//!   evaluation, `task.rs` the background observer, `report.rs` and `event.rs` what it
//!   reports and publishes, `config.rs` its tunables.
//!
//! Invariants: observes `im-arch` and `im-service` only through their public APIs; never
//! depends on the business demo; never changes what it observes (the decorator passes
//! every call and answer through unchanged).

mod alerts;
mod business;
mod config;
mod dashboard;
mod device;
mod error;
mod event;
mod export;
mod histogram;
mod monitor;
mod report;
mod state;
mod task;
mod vendor;
mod window;

// The public API, in one list; everything else is internal to the crate.
pub use alerts::{AlertRecord, AlertRule, AlertStatus, Comparison, Metric, Severity};
pub use business::{AgentMetrics, Agents, BusinessMetrics, BusinessSnapshot, Role, RoleDirectory};
pub use config::QcConfig;
pub use device::{DeviceContext, DeviceSample, NetworkType, UnknownDevice};
pub use error::QcError;
pub use event::{QcEvent, QcEventKind};
pub use export::{MetricsServer, MetricsServerBuilder, prometheus_text};
pub use histogram::LatencyHistogram;
pub use monitor::{QcMonitor, SnapshotSource, Watch};
pub use report::{OpReport, Processing, QcSnapshot, Verdict, VerdictReport, WindowAvailability};
pub use vendor::{CallStats, Op, QcVendor, VendorMetrics};
