//! [`QcConfig`]: the monitor's tunables (evaluation interval, verdict thresholds, alert rules).

use std::time::Duration;

use crate::alerts::{AlertRule, Comparison, Metric, Severity};

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
                comparison: Comparison::Above,
                threshold: 1.5,
                for_duration: Duration::from_secs(30),
                severity: Severity::Critical,
            }],
        }
    }
}
