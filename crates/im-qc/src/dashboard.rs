//! The live dashboard's data: a bounded history of samples of every watched seat, taken by
//! a task the [`MetricsServer`](crate::MetricsServer) owns, and the JSON view the page at
//! `/` polls (`/api/dashboard?since=SEQ`). The page itself (`dashboard/index.html`,
//! `dashboard.js`, `dashboard.css`) is static, compiled in, and holds no data.
//!
//! Why a history on the server: a page opened after an outage must still show it, and a
//! page left open must not need to be the one that saw everything. Why only the chart
//! figures in a point (not whole snapshots): a point is a few hundred bytes, so an hour at
//! one point a second is a bounded, small table, and the page fetches only the points it
//! lacks.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::alerts::Severity;
use crate::business::BusinessSnapshot;
use crate::monitor::SnapshotSource;
use crate::report::{QcSnapshot, Verdict, VerdictReport};

/// The page, its script and its style sheet (static files, compiled in).
pub(crate) const INDEX_HTML: &str = include_str!("dashboard/index.html");
/// See [`INDEX_HTML`].
pub(crate) const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
/// See [`INDEX_HTML`].
pub(crate) const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// Where the page may load anything from: its own origin only, nothing inline. The page
/// then cannot reach another host even if a value it shows were crafted to try.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One watched client (in an agent console: one agent's seat), by name.
#[derive(Clone, Debug)]
pub(crate) struct Seat {
    pub(crate) name: String,
    pub(crate) source: SnapshotSource,
}

/// One operation's latency over the last minute at a sample, ms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct LatencyPoint {
    /// The operation's name.
    pub op: &'static str,
    /// The network it was measured on.
    pub network: &'static str,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// One seat at a sample: what the page charts over time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct SeatPoint {
    /// 0 healthy, 1 degraded, 2 down.
    pub verdict: u8,
    /// Share of vendor calls that succeeded in the last minute.
    pub success_ratio_1m: Option<f64>,
    /// Share of the last minute spent online.
    pub uptime_ratio_1m: Option<f64>,
    /// Reconnect attempts in the last minute.
    pub reconnects_1m: u64,
    /// Heartbeats missed in the last minute.
    pub heartbeat_misses_1m: u64,
    /// Median heartbeat round trip in the last minute, ms.
    pub heartbeat_rtt_ms_1m: Option<f64>,
    /// Per operation and network.
    pub latency: Vec<LatencyPoint>,
}

/// The desk's business figures at a sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DeskPoint {
    /// Share of customer messages answered in time.
    pub response_rate: Option<f64>,
    /// Agent replies per conversation per hour.
    pub replies_per_conversation_per_hour: Option<f64>,
    /// Median first response over the agents that have one (seconds).
    pub first_response_p50_secs: Option<f64>,
    /// Conversations with a customer waiting too long.
    pub overdue: u64,
}

/// One sample of every seat.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Point {
    /// Increasing from 1; the page asks for the points after the last it has.
    pub seq: u64,
    /// Real time since the server started, ms (the x axis: monotonic, evenly spaced).
    pub t_ms: u64,
    /// The first seat's clock at the sample (server time, ms since the Unix epoch): the
    /// time of day the page labels the axis with.
    pub at_ms: i64,
    /// Worst verdict over the seats: 0 healthy, 1 degraded, 2 down.
    pub verdict: u8,
    /// Per seat, in the order of the view's `seats`.
    pub seats: Vec<SeatPoint>,
    /// The desk's business figures, when the seats compute them.
    pub desk: Option<DeskPoint>,
}

/// The samples kept, oldest first, at most `capacity`.
#[derive(Debug)]
pub(crate) struct History {
    points: VecDeque<Point>,
    capacity: usize,
    next_seq: u64,
    started: Instant,
}

impl History {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            points: VecDeque::new(),
            capacity: capacity.max(1),
            next_seq: 1,
            started: Instant::now(),
        }
    }

    /// Keeps a point of `snapshots` (one per seat, taken now), forgetting the oldest past
    /// capacity.
    pub(crate) fn sample(&mut self, snapshots: &[QcSnapshot]) {
        let point = Point {
            seq: self.next_seq,
            t_ms: self.started.elapsed().as_millis() as u64,
            at_ms: snapshots.first().map_or(0, |s| s.at_ms),
            verdict: worst(snapshots).map_or(0, level),
            seats: snapshots.iter().map(seat_point).collect(),
            desk: desk(snapshots).map(|d| desk_point(&d)),
        };
        self.next_seq += 1;
        if self.points.len() >= self.capacity {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    /// The newest point's seq (0 before the first sample).
    pub(crate) fn seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The points after `since`, oldest first.
    pub(crate) fn since(&self, since: u64) -> Vec<Point> {
        // Seqs are consecutive: the first wanted one sits at a computable index.
        let first = self.points.front().map_or(0, |p| p.seq);
        let skip = (since + 1).saturating_sub(first) as usize;
        self.points.iter().skip(skip).cloned().collect()
    }
}

fn level(v: Verdict) -> u8 {
    match v {
        Verdict::Healthy => 0,
        Verdict::Degraded => 1,
        Verdict::Down => 2,
    }
}

fn worst(snapshots: &[QcSnapshot]) -> Option<Verdict> {
    snapshots.iter().map(|s| s.verdict.verdict).max()
}

fn seat_point(s: &QcSnapshot) -> SeatPoint {
    let minute = s.availability.iter().find(|w| w.window == "1m");
    SeatPoint {
        verdict: level(s.verdict.verdict),
        success_ratio_1m: minute.and_then(|w| w.success_ratio),
        uptime_ratio_1m: minute.and_then(|w| w.uptime_ratio),
        reconnects_1m: minute.map_or(0, |w| w.reconnects),
        heartbeat_misses_1m: minute.map_or(0, |w| w.heartbeat_misses),
        heartbeat_rtt_ms_1m: minute.and_then(|w| w.heartbeat_rtt_p50_ms),
        latency: s
            .operations
            .iter()
            .map(|o| LatencyPoint {
                op: o.op.as_str(),
                network: o.network,
                p50: o.latency_ms_1m[0],
                p90: o.latency_ms_1m[1],
                p99: o.latency_ms_1m[2],
            })
            .collect(),
    }
}

/// The business figures of all seats combined (the desk), when any seat computes them.
pub(crate) fn desk(snapshots: &[QcSnapshot]) -> Option<BusinessSnapshot> {
    let parts: Vec<BusinessSnapshot> = snapshots
        .iter()
        .filter_map(|s| s.business.clone())
        .collect();
    BusinessSnapshot::combine(&parts)
}

fn desk_point(d: &BusinessSnapshot) -> DeskPoint {
    let mut firsts: Vec<f64> = d
        .agents
        .iter()
        .filter_map(|a| a.first_response_p50_secs)
        .collect();
    firsts.sort_by(f64::total_cmp);
    DeskPoint {
        response_rate: d.response_rate,
        replies_per_conversation_per_hour: d.replies_per_conversation_per_hour,
        first_response_p50_secs: firsts.get(firsts.len().saturating_sub(1) / 2).copied(),
        overdue: d.overdue.len() as u64,
    }
}

/// A seat's name and its snapshot now.
#[derive(Debug, Serialize)]
pub(crate) struct SeatView {
    name: String,
    snapshot: QcSnapshot,
}

/// One firing in the dashboard's alert log, with the seat it fired on.
#[derive(Debug, Serialize)]
pub(crate) struct AlertView {
    seat: String,
    rule: String,
    severity: Severity,
    value: f64,
    fired_at_ms: i64,
    resolved_at_ms: Option<i64>,
}

/// What `/api/dashboard` answers.
#[derive(Debug, Serialize)]
pub(crate) struct DashboardView {
    /// The newest point's seq: the page's next `since`.
    seq: u64,
    interval_ms: u64,
    vendor: String,
    seats: Vec<SeatView>,
    /// The worst seat's verdict, with every seat's reasons prefixed by its name.
    verdict: VerdictReport,
    /// The desk's business figures.
    desk: Option<BusinessSnapshot>,
    /// Firings over every seat, newest first, at most [`ALERTS_SHOWN`].
    alert_log: Vec<AlertView>,
    points: Vec<Point>,
}

/// Firings the view carries at most.
const ALERTS_SHOWN: usize = 100;

/// The view now: fresh snapshots of `seats`, and the history after `since`.
pub(crate) fn view(
    seats: &[Seat],
    history: &parking_lot::Mutex<History>,
    since: u64,
    interval: Duration,
) -> DashboardView {
    let snapshots: Vec<QcSnapshot> = seats.iter().map(|s| s.source.snapshot()).collect();
    let (seq, points) = {
        let h = history.lock();
        (h.seq(), h.since(since))
    };
    let verdict = VerdictReport {
        verdict: worst(&snapshots).unwrap_or(Verdict::Healthy),
        reasons: seats
            .iter()
            .zip(&snapshots)
            .flat_map(|(seat, s)| {
                s.verdict
                    .reasons
                    .iter()
                    .map(move |r| format!("{}: {r}", seat.name))
            })
            .collect(),
        failover_recommended: snapshots.iter().any(|s| s.verdict.failover_recommended),
    };
    let mut alert_log: Vec<AlertView> = seats
        .iter()
        .zip(&snapshots)
        .flat_map(|(seat, s)| {
            s.alert_log.iter().map(move |r| AlertView {
                seat: seat.name.clone(),
                rule: r.rule.clone(),
                severity: r.severity,
                value: r.value,
                fired_at_ms: r.fired_at_ms,
                resolved_at_ms: r.resolved_at_ms,
            })
        })
        .collect();
    alert_log.sort_by_key(|a| std::cmp::Reverse(a.fired_at_ms));
    alert_log.truncate(ALERTS_SHOWN);
    DashboardView {
        seq,
        interval_ms: interval.as_millis() as u64,
        vendor: snapshots
            .first()
            .map_or_else(String::new, |s| s.vendor.clone()),
        desk: desk(&snapshots),
        verdict,
        alert_log,
        seats: seats
            .iter()
            .zip(snapshots)
            .map(|(seat, snapshot)| SeatView {
                name: seat.name.clone(),
                snapshot,
            })
            .collect(),
        points,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the capacity, the number of samples and the page's `since`: the history
        /// keeps the newest `capacity` points, and `since` answers exactly the kept points
        /// after it, oldest first.
        #[test]
        fn the_history_is_bounded_and_read_incrementally(
            capacity in 1usize..20,
            samples in 0u64..60,
            since in 0u64..70,
        ) {
            let mut h = History::new(capacity);
            for _ in 0..samples {
                h.sample(&[]);
            }
            prop_assert_eq!(h.seq(), samples);
            let kept = samples.min(capacity as u64);
            let all: Vec<u64> = h.since(0).iter().map(|p| p.seq).collect();
            prop_assert_eq!(all, ((samples - kept + 1)..=samples).collect::<Vec<_>>());
            let after: Vec<u64> = h.since(since).iter().map(|p| p.seq).collect();
            let want: Vec<u64> = ((samples - kept + 1)..=samples).filter(|s| *s > since).collect();
            prop_assert_eq!(after, want);
        }
    }
}
