//! Export: the Prometheus (OpenMetrics) text exposition, built with `prometheus-client`
//! from a [`QcSnapshot`], and an HTTP endpoint serving it at `/metrics` and the JSON
//! snapshot at `/snapshot.json`.
//!
//! Names follow Prometheus conventions: `im_qc_` prefix, base units as suffixes
//! (`_seconds`, `_ratio`), `_total` on counters (added by the encoder).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::QcError;
use crate::monitor::SnapshotSource;
use crate::report::{OpReport, QcSnapshot, WindowAvailability};

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

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
pub fn prometheus_text(snap: &QcSnapshot) -> Result<String, QcError> {
    let mut b = Builder {
        registry: Registry::default(),
    };
    let vendor = snap.vendor.as_str();
    let ops = |f: &dyn Fn(&OpReport) -> u64| -> Vec<(Labels, u64)> {
        snap.operations
            .iter()
            .map(|o| {
                (
                    labels(&[
                        ("vendor", vendor),
                        ("op", o.op.as_str()),
                        ("network", o.network),
                    ]),
                    f(o),
                )
            })
            .collect()
    };
    b.counter(
        "im_qc_vendor_calls",
        "Vendor calls made.",
        ops(&|o| o.calls_total),
    );
    let mut errors = Vec::new();
    for o in &snap.operations {
        for (class, n) in [
            ("transient", o.transient_total),
            ("rate_limited", o.rate_limited_total),
            ("permanent", o.permanent_total),
        ] {
            errors.push((
                labels(&[
                    ("vendor", vendor),
                    ("op", o.op.as_str()),
                    ("network", o.network),
                    ("class", class),
                ]),
                n,
            ));
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
    for o in &snap.operations {
        for (q, v) in ["0.5", "0.9", "0.99"].iter().zip(o.latency_ms_1m) {
            latency.push((
                labels(&[
                    ("vendor", vendor),
                    ("op", o.op.as_str()),
                    ("network", o.network),
                    ("quantile", q),
                ]),
                v.map(|ms| ms / 1e3),
            ));
        }
    }
    b.gauge(
        "im_qc_vendor_call_latency_seconds",
        "Vendor call latency quantiles over the last minute.",
        latency,
    );
    let per_window = |f: &dyn Fn(&WindowAvailability) -> Option<f64>| {
        snap.availability
            .iter()
            .map(|w| (labels(&[("vendor", vendor), ("window", w.window)]), f(w)))
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
    let v = labels(&[("vendor", vendor)]);
    b.gauge(
        "im_qc_vendor_verdict",
        "Vendor verdict: 0 healthy, 1 degraded, 2 down.",
        vec![(v.clone(), Some(snap.verdict.verdict.level()))],
    );
    b.gauge(
        "im_qc_failover_recommended",
        "1 when failing over to another vendor is recommended.",
        vec![(
            v.clone(),
            Some(f64::from(u8::from(snap.verdict.failover_recommended))),
        )],
    );
    let p = &snap.processing;
    b.counter(
        "im_qc_sync_passes",
        "Sync passes by result.",
        vec![
            (labels(&[("result", "finished")]), p.sync_passes),
            (labels(&[("result", "failed")]), p.sync_failures),
        ],
    );
    b.gauge(
        "im_qc_last_sync_duration_seconds",
        "Duration of the last sync pass.",
        vec![(Labels::new(), p.last_sync_ms.map(|ms| ms / 1e3))],
    );
    b.counter(
        "im_qc_messages_ingested",
        "Messages delivered to subscribers.",
        vec![(Labels::new(), p.messages_ingested_total)],
    );
    b.counter(
        "im_qc_sends",
        "Queued sends by result.",
        vec![
            (labels(&[("result", "sent")]), p.sends_ok),
            (labels(&[("result", "failed")]), p.sends_failed),
        ],
    );
    let quantiles = |name: &str, help: &str, qs: &[&str], vals: &[Option<f64>], b: &mut Builder| {
        b.gauge(
            name,
            help,
            qs.iter()
                .zip(vals)
                .map(|(q, v)| (labels(&[("quantile", q)]), v.map(|ms| ms / 1e3)))
                .collect(),
        );
    };
    quantiles(
        "im_qc_send_ack_latency_seconds",
        "Local echo to vendor acknowledgement.",
        &["0.5", "0.99"],
        &p.send_ack_ms,
        &mut b,
    );
    quantiles(
        "im_qc_end_to_end_latency_seconds",
        "Sender timestamp to receipt.",
        &["0.5", "0.99"],
        &p.end_to_end_ms,
        &mut b,
    );
    b.gauge(
        "im_qc_outbox_depth",
        "Messages in the outbox.",
        vec![(Labels::new(), Some(p.outbox_depth as f64))],
    );
    b.counter(
        "im_qc_ui_events_dropped",
        "Events dropped from UI subscribers' queues.",
        vec![(Labels::new(), p.dropped_ui_events)],
    );
    b.counter(
        "im_qc_retries",
        "Retried vendor call attempts.",
        vec![(Labels::new(), p.retries)],
    );
    if let Some(biz) = &snap.business {
        b.gauge(
            "im_qc_response_rate_ratio",
            "Share of customer messages answered in time.",
            std::iter::once((labels(&[("agent", "all")]), biz.response_rate))
                .chain(
                    biz.agents
                        .iter()
                        .map(|a| (labels(&[("agent", &a.agent)]), a.response_rate)),
                )
                .collect(),
        );
        b.gauge(
            "im_qc_replies_per_conversation_per_hour",
            "Agent replies per conversation per hour of activity.",
            vec![(Labels::new(), biz.replies_per_conversation_per_hour)],
        );
        b.gauge(
            "im_qc_overdue_conversations",
            "Conversations with a customer waiting too long.",
            vec![(Labels::new(), Some(biz.overdue.len() as f64))],
        );
    }
    b.gauge(
        "im_qc_alert_firing",
        "1 while an alert rule fires.",
        snap.alerts
            .iter()
            .map(|a| {
                (
                    labels(&[("rule", &a.rule), ("severity", a.severity.as_str())]),
                    Some(f64::from(u8::from(a.firing))),
                )
            })
            .collect(),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &b.registry)
        .map_err(|e| QcError::Encode(e.to_string()))?;
    Ok(out)
}

/// The running metrics endpoint; dropping it shuts the server down.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsServer {
    /// Serves `/metrics` and `/snapshot.json` on `addr` (use `127.0.0.1:0` for any port).
    pub async fn serve(addr: SocketAddr, source: SnapshotSource) -> Result<MetricsServer, QcError> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let metrics_source = source.clone();
        let app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let source = metrics_source.clone();
                    async move {
                        match prometheus_text(&source.snapshot()) {
                            Ok(text) => (
                                [(
                                    header::CONTENT_TYPE,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )],
                                text,
                            )
                                .into_response(),
                            Err(e) => {
                                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                                    .into_response()
                            }
                        }
                    }
                }),
            )
            .route(
                "/snapshot.json",
                get(move || {
                    let source = source.clone();
                    async move { axum::Json(source.snapshot()) }
                }),
            );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
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
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes requests in flight, and waits for the server to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
