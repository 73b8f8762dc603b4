//! What QC publishes on its own bus: [`QcEvent`]s (verdict changes, failover
//! recommendations, alerts) and their kinds ([`QcEventKind`]) for routing and filters.

use im_arch::{Filter, Routed};
use im_service::ConversationId;

use crate::alerts::Severity;
use crate::report::Verdict;

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

/// The kinds of [`QcEvent`], for [`Filter`]s (one per variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QcEventKind {
    /// [`QcEvent::VerdictChanged`].
    VerdictChanged,
    /// [`QcEvent::FailoverRecommended`].
    FailoverRecommended,
    /// [`QcEvent::AlertFired`].
    AlertFired,
    /// [`QcEvent::AlertResolved`].
    AlertResolved,
    /// [`QcEvent::Lagged`] (always delivered to the subscriber it concerns).
    Lagged,
}

impl QcEventKind {
    /// Every kind, in declaration order: the bus sizes its index from this list, so the
    /// count cannot drift from the enum (a kind missing here fails the unit test below).
    pub const ALL: [QcEventKind; 5] = [
        QcEventKind::VerdictChanged,
        QcEventKind::FailoverRecommended,
        QcEventKind::AlertFired,
        QcEventKind::AlertResolved,
        QcEventKind::Lagged,
    ];

    /// A filter passing only QC events of these kinds.
    pub fn filter(kinds: impl IntoIterator<Item = QcEventKind>) -> Filter {
        Filter::kinds(kinds.into_iter().map(|k| k as usize))
    }
}

impl QcEvent {
    /// This event's kind.
    pub fn kind(&self) -> QcEventKind {
        match self {
            QcEvent::VerdictChanged { .. } => QcEventKind::VerdictChanged,
            QcEvent::FailoverRecommended { .. } => QcEventKind::FailoverRecommended,
            QcEvent::AlertFired { .. } => QcEventKind::AlertFired,
            QcEvent::AlertResolved { .. } => QcEventKind::AlertResolved,
            QcEvent::Lagged { .. } => QcEventKind::Lagged,
        }
    }
}

impl Routed for QcEvent {
    const KINDS: usize = QcEventKind::ALL.len();

    fn kind(&self) -> usize {
        QcEvent::kind(self) as usize
    }

    fn conversation(&self) -> Option<&ConversationId> {
        None
    }

    fn lagged(dropped: u64) -> Self {
        QcEvent::Lagged { dropped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event of every variant (the match makes adding a variant without a sample here
    /// a compile error).
    fn samples() -> Vec<QcEvent> {
        let all = vec![
            QcEvent::VerdictChanged {
                vendor: "v".into(),
                from: Verdict::Healthy,
                to: Verdict::Down,
                reasons: Vec::new(),
            },
            QcEvent::FailoverRecommended {
                vendor: "v".into(),
                reasons: Vec::new(),
            },
            QcEvent::AlertFired {
                rule: "r".into(),
                severity: Severity::Warning,
                value: 1.0,
            },
            QcEvent::AlertResolved { rule: "r".into() },
            QcEvent::lagged(3),
        ];
        for e in &all {
            match e {
                QcEvent::VerdictChanged { .. }
                | QcEvent::FailoverRecommended { .. }
                | QcEvent::AlertFired { .. }
                | QcEvent::AlertResolved { .. }
                | QcEvent::Lagged { .. } => {}
            }
        }
        all
    }

    /// Every variant maps to its own kind, every kind is listed once in `ALL` at the index
    /// the bus routes by, and the count the bus uses is that of the list.
    #[test]
    fn every_variant_maps_to_a_distinct_kind() {
        let kinds: Vec<QcEventKind> = samples().iter().map(QcEvent::kind).collect();
        let distinct: std::collections::HashSet<QcEventKind> = kinds.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            kinds.len(),
            "two variants share a kind: {kinds:?}"
        );
        assert_eq!(kinds, QcEventKind::ALL, "ALL lists every kind, in order");
        for (index, kind) in QcEventKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, index);
        }
        assert_eq!(<QcEvent as Routed>::KINDS, kinds.len());
        for e in samples() {
            assert_eq!(Routed::kind(&e), e.kind() as usize);
            assert!(QcEventKind::filter([e.kind()]).matches(&e));
            let others = QcEventKind::ALL.into_iter().filter(|k| *k != e.kind());
            assert!(!QcEventKind::filter(others).matches(&e));
        }
    }
}
