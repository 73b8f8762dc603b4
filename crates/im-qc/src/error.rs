//! The errors of the quality-control layer.

/// What can go wrong in `im-qc`.
#[derive(Debug, thiserror::Error)]
pub enum QcError {
    /// The metrics endpoint could not bind or serve.
    #[error("metrics endpoint: {0}")]
    Http(#[from] std::io::Error),
    /// The metrics could not be encoded (a bug in a metric name or label).
    #[error("cannot encode metrics: {0}")]
    Encode(String),
    /// A metrics server was asked to serve no monitor.
    #[error("a metrics server needs at least one seat (a monitor to show)")]
    NoSeats,
    /// An alert rule makes no sense (e.g. a ratio threshold outside 0..=1).
    #[error("invalid alert rule {rule:?}: {reason}")]
    InvalidRule {
        /// The rule's name.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
}
