//! Alert rules: a metric, a comparison with a threshold, a for-duration and a severity,
//! evaluated continuously by the monitor; a rule fires once its condition has held for the
//! for-duration, and resolves as soon as it stops holding.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::error::QcError;
use crate::vendor::Op;

/// How bad a firing rule is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Info,
    /// Degraded service.
    Warning,
    /// Users are affected now.
    Critical,
}

impl Severity {
    /// The label value used in exports.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Which way a threshold is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Fires while the value is above the threshold.
    Above,
    /// Fires while the value is below the threshold.
    Below,
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The vendor verdict as a number: 0 healthy, 1 degraded, 2 down.
    Verdict,
    /// Share of successful vendor calls over a window (0..=1).
    SuccessRatio {
        /// The window.
        window: Duration,
    },
    /// p99 latency of an operation (all when `None`) over a window, in milliseconds.
    LatencyP99Ms {
        /// The operation.
        op: Option<Op>,
        /// The window.
        window: Duration,
    },
    /// Share of time connected over a window (0..=1).
    UptimeRatio {
        /// The window.
        window: Duration,
    },
    /// Heartbeats missed over a window.
    HeartbeatMisses {
        /// The window.
        window: Duration,
    },
    /// Business response rate (0..=1).
    ResponseRate,
    /// Conversations with a customer waiting too long.
    OverdueConversations,
    /// Events dropped from UI subscribers' queues, in total.
    DroppedUiEvents,
    /// Messages in the outbox (sending or failed).
    OutboxDepth,
}

impl Metric {
    fn is_ratio(&self) -> bool {
        matches!(
            self,
            Metric::SuccessRatio { .. } | Metric::UptimeRatio { .. } | Metric::ResponseRate
        )
    }
}

/// One alert rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRule {
    /// Stable name (a Prometheus label value).
    pub name: String,
    /// What it watches.
    pub metric: Metric,
    /// Which way.
    pub comparison: Comparison,
    /// The threshold.
    pub threshold: f64,
    /// How long the condition must hold before the rule fires.
    pub for_duration: Duration,
    /// How bad.
    pub severity: Severity,
}

impl AlertRule {
    /// Checks the rule makes sense.
    pub(crate) fn validate(&self) -> Result<(), QcError> {
        let bad = |reason: &str| {
            Err(QcError::InvalidRule {
                rule: self.name.clone(),
                reason: reason.to_string(),
            })
        };
        if self.name.is_empty() {
            return bad("empty name");
        }
        if !self.threshold.is_finite() {
            return bad("threshold is not a finite number");
        }
        if self.metric.is_ratio() && !(0.0..=1.0).contains(&self.threshold) {
            return bad("a ratio threshold must be within 0..=1");
        }
        Ok(())
    }

    fn holds(&self, value: f64) -> bool {
        match self.comparison {
            Comparison::Above => value > self.threshold,
            Comparison::Below => value < self.threshold,
        }
    }
}

/// A rule's state, as exported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertStatus {
    /// The rule.
    pub rule: String,
    /// Its severity.
    pub severity: Severity,
    /// Whether it is firing.
    pub firing: bool,
    /// The last evaluated value (`None`: no data, which never fires).
    pub value: Option<f64>,
}

/// One firing of a rule, kept in the monitor's alert log: when it fired and, once it
/// stopped holding, when it resolved. Times are the watched clock's (server time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRecord {
    /// The rule.
    pub rule: String,
    /// Its severity.
    pub severity: Severity,
    /// The value that made it fire.
    pub value: f64,
    /// When it fired, ms since the Unix epoch.
    pub fired_at_ms: i64,
    /// When it resolved; `None` while it fires.
    pub resolved_at_ms: Option<i64>,
}

/// Firings kept in a monitor's alert log; older ones are forgotten.
pub(crate) const ALERT_LOG_CAP: usize = 100;

/// What evaluation produced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Transition {
    /// The rule started firing.
    Fired {
        /// The rule.
        rule: String,
        /// Its severity.
        severity: Severity,
        /// The value that made it fire.
        value: f64,
    },
    /// The rule stopped firing.
    Resolved {
        /// The rule.
        rule: String,
        /// The value now (`None`: no data any more).
        value: Option<f64>,
    },
}

struct RuleState {
    rule: AlertRule,
    pending_since: Option<Instant>,
    firing: bool,
    value: Option<f64>,
}

/// The evaluator.
pub(crate) struct Alerts {
    rules: Vec<RuleState>,
}

impl Alerts {
    pub(crate) fn new(rules: Vec<AlertRule>) -> Result<Self, QcError> {
        for r in &rules {
            r.validate()?;
        }
        Ok(Self {
            rules: rules
                .into_iter()
                .map(|rule| RuleState {
                    rule,
                    pending_since: None,
                    firing: false,
                    value: None,
                })
                .collect(),
        })
    }

    /// Evaluates every rule at `now` with `value_of`.
    pub(crate) fn evaluate(
        &mut self,
        now: Instant,
        value_of: impl Fn(&Metric) -> Option<f64>,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        for s in &mut self.rules {
            let value = value_of(&s.rule.metric);
            s.value = value;
            match value.filter(|&v| s.rule.holds(v)) {
                Some(v) => {
                    let since = *s.pending_since.get_or_insert(now);
                    if !s.firing && now.duration_since(since) >= s.rule.for_duration {
                        s.firing = true;
                        out.push(Transition::Fired {
                            rule: s.rule.name.clone(),
                            severity: s.rule.severity,
                            value: v,
                        });
                    }
                }
                None => {
                    s.pending_since = None;
                    if s.firing {
                        s.firing = false;
                        out.push(Transition::Resolved {
                            rule: s.rule.name.clone(),
                            value,
                        });
                    }
                }
            }
        }
        out
    }

    pub(crate) fn status(&self) -> Vec<AlertStatus> {
        self.rules
            .iter()
            .map(|s| AlertStatus {
                rule: s.rule.name.clone(),
                severity: s.rule.severity,
                firing: s.firing,
                value: s.value,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(threshold: f64, for_secs: u64) -> AlertRule {
        AlertRule {
            name: "low_success".into(),
            metric: Metric::SuccessRatio {
                window: Duration::from_secs(60),
            },
            comparison: Comparison::Below,
            threshold,
            for_duration: Duration::from_secs(for_secs),
            severity: Severity::Critical,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fires_after_the_for_duration_and_resolves_at_once() {
        let mut a = Alerts::new(vec![rule(0.9, 10)]).unwrap();
        let t0 = Instant::now();
        assert!(a.evaluate(t0, |_| Some(0.5)).is_empty());
        assert!(
            a.evaluate(t0 + Duration::from_secs(9), |_| Some(0.5))
                .is_empty()
        );
        assert_eq!(
            a.evaluate(t0 + Duration::from_secs(10), |_| Some(0.4)),
            [Transition::Fired {
                rule: "low_success".into(),
                severity: Severity::Critical,
                value: 0.4
            }]
        );
        assert!(
            a.evaluate(t0 + Duration::from_secs(11), |_| Some(0.4))
                .is_empty()
        );
        assert_eq!(
            a.evaluate(t0 + Duration::from_secs(12), |_| Some(0.95)),
            [Transition::Resolved {
                rule: "low_success".into(),
                value: Some(0.95)
            }]
        );
        // A blip shorter than the for-duration never fires.
        let t1 = t0 + Duration::from_secs(20);
        assert!(a.evaluate(t1, |_| Some(0.1)).is_empty());
        assert!(a.evaluate(t1 + Duration::from_secs(5), |_| None).is_empty());
        assert!(
            a.evaluate(t1 + Duration::from_secs(12), |_| Some(0.1))
                .is_empty()
        );
    }

    #[test]
    fn nonsense_rules_are_refused() {
        assert!(matches!(
            Alerts::new(vec![rule(1.5, 1)]),
            Err(QcError::InvalidRule { .. })
        ));
        assert!(Alerts::new(vec![rule(f64::NAN, 1)]).is_err());
        let mut unnamed = rule(0.5, 1);
        unnamed.name.clear();
        assert!(Alerts::new(vec![unnamed]).is_err());
    }
}
