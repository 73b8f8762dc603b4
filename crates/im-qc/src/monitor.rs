//! [`QcMonitor`]: watches one client through its event bus and one vendor through the
//! [`QcVendor`](crate::QcVendor) decorator's metrics; computes availability windows, the
//! vendor verdict and failover recommendation, data-processing and business metrics;
//! evaluates alert rules; publishes [`QcEvent`]s on its own bus and through `tracing`.
//!
//! The handle: what it watches ([`Watch`]), starting it, reading it ([`SnapshotSource`]).
//! The work is elsewhere: the observed state and its evaluation in `state.rs`, the
//! background observer in `task.rs`, what is reported in `report.rs` and `event.rs`.
//!
//! One task per monitor, owned by it (aborted on drop). Time is `tokio::time::Instant`
//! (evaluation runs every `eval_interval`), so paused-time tests drive it exactly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use im_arch::{Bus, BusStream, ClientEvent, DeliveryPolicy, Filter};
use im_service::{Clock, UserId};
use parking_lot::{Mutex, MutexGuard};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::alerts::{Alerts, Metric};
use crate::business::{BusinessMetrics, RoleDirectory};
use crate::config::QcConfig;
use crate::device::DeviceContext;
use crate::error::QcError;
use crate::event::QcEvent;
use crate::report::{QcSnapshot, VerdictReport};
use crate::state::{SharedState, State};
use crate::task::run;
use crate::vendor::VendorMetrics;

/// The running monitor. Dropping it stops its task.
///
/// It watches a client through two taps: the vendor wrapped in [`QcVendor`](crate::QcVendor)
/// (every call timed and classified) and the client's event bus. Export it with
/// [`MetricsServer`](crate::MetricsServer); `crates/im-qc/examples/qc_metrics.rs` does so
/// against the reference vendor over TCP and scrapes `/metrics`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use im_arch::ImClient;
/// use im_qc::{MetricsServer, QcConfig, QcMonitor, QcVendor, UnknownDevice, Watch};
/// use im_service::memory::MemoryVendor;
/// use im_service::{SystemClock, UserId};
///
/// let vendor = MemoryVendor::default();
/// let alice = vendor.register_user(&UserId::new("alice"));
/// let qc = Arc::new(QcVendor::new(Arc::new(vendor.client()), Arc::new(UnknownDevice)));
/// let metrics = qc.metrics();
/// let client = ImClient::builder(qc, alice).build();
/// let watch = Watch {
///     metrics,
///     bus: client.bus().clone(),
///     roles: None,
///     user: Some(UserId::new("alice")),
///     device: Arc::new(UnknownDevice),
///     clock: Arc::new(SystemClock),
/// };
/// let monitor = QcMonitor::start(QcConfig::default(), watch)?;
/// let server = MetricsServer::serve(([127, 0, 0, 1], 0).into(), monitor.source()).await?;
/// client.login().await?;
/// println!("verdict {:?}, Prometheus text at http://{}/metrics", monitor.verdict(), server.addr());
/// client.logout().await;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct QcMonitor {
    state: SharedState,
    /// Client events processed (for tests and benchmarks that wait for the monitor).
    seen: Arc<AtomicU64>,
    bus: Bus<QcEvent>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for QcMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QcMonitor").finish_non_exhaustive()
    }
}

impl Drop for QcMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a monitor watches: the vendor's metrics (from [`QcVendor`](crate::QcVendor)) and
/// the client's bus, plus who is who and where the device is.
pub struct Watch {
    /// The decorator's metrics.
    pub metrics: Arc<VendorMetrics>,
    /// The client's event bus (`ImClient::bus`).
    pub bus: Bus<ClientEvent>,
    /// Roles for business metrics; `None` computes none. Business metrics are for the
    /// places that serve customers (an agent console, a backend): they cost a map update per
    /// message, which a customer's phone has no use for.
    pub roles: Option<Box<dyn RoleDirectory>>,
    /// The watched client's own user. With roles, its sends (as the vendor stored them,
    /// from the bus's `Sent` statuses) count in the business metrics: on an agent's
    /// console they are the replies. `None`: only received messages count.
    pub user: Option<UserId>,
    /// Device and network.
    pub device: Arc<dyn DeviceContext>,
    /// Wall clock, for end-to-end latency and business time (server times).
    pub clock: Arc<dyn Clock>,
}

impl QcMonitor {
    /// Starts watching. Fails if a rule is invalid.
    pub fn start(config: QcConfig, watch: Watch) -> Result<QcMonitor, QcError> {
        let alerts = Alerts::new(config.rules.clone())?;
        if watch.roles.is_none() {
            // A rule on a metric that is never computed would silently never fire.
            if let Some(rule) = config.rules.iter().find(|r| {
                matches!(
                    r.metric,
                    Metric::ResponseRate | Metric::OverdueConversations
                )
            }) {
                return Err(QcError::InvalidRule {
                    rule: rule.name.clone(),
                    reason: "business metric without roles (Watch::roles is None)".into(),
                });
            }
        }
        // The client's bus never waits for a reader: a monitor that falls 4,096 events behind
        // loses the oldest, is told so (`ClientEvent::Lagged`), and the loss counts in the
        // bus's dropped events, which QC reports.
        let events: BusStream<ClientEvent> = watch
            .bus
            .subscribe(Filter::all(), DeliveryPolicy::DropOldest { capacity: 4096 });
        let state = Arc::new(Mutex::new(State::new(
            config.clone(),
            alerts,
            watch
                .roles
                .map(|roles| BusinessMetrics::with_roles(config.answer_within, roles)),
            watch.user,
            watch.metrics,
            watch.device,
            watch.clock,
        )));
        let bus: Bus<QcEvent> = Bus::new();
        let seen = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            state.clone(),
            seen.clone(),
            events,
            watch.bus.dropped_counter(),
            bus.clone(),
            config.eval_interval,
        ));
        Ok(QcMonitor {
            state,
            seen,
            bus,
            task,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// QC's events (verdict changes, failover, alerts).
    pub fn subscribe(&self, filter: Filter, policy: DeliveryPolicy) -> BusStream<QcEvent> {
        self.bus.subscribe(filter, policy)
    }

    /// Everything, now.
    pub fn snapshot(&self) -> QcSnapshot {
        self.state().snapshot(Instant::now())
    }

    /// Client events processed so far (cheap: no snapshot is built).
    pub fn events_seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// The current verdict.
    pub fn verdict(&self) -> VerdictReport {
        self.state().verdict()
    }

    /// A handle the exporters read snapshots through.
    pub fn source(&self) -> SnapshotSource {
        SnapshotSource(self.state.clone())
    }
}

/// Reads snapshots of a running monitor (cheap to clone).
#[derive(Clone)]
pub struct SnapshotSource(SharedState);

impl std::fmt::Debug for SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSource").finish_non_exhaustive()
    }
}

impl SnapshotSource {
    /// Everything, now.
    pub fn snapshot(&self) -> QcSnapshot {
        self.0.lock().snapshot(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use im_service::{ConversationId, Message};

    use super::*;
    use crate::alerts::{AlertRule, Comparison, Severity};
    use crate::business::Agents;
    use crate::device::UnknownDevice;
    use crate::vendor::QcVendor;
    use im_service::memory::{MemoryVendor, MemoryVendorConfig};
    use im_service::{
        ClientMsgId, Content, Origin, ReceivedMessage, ServerMsgId, SystemClock, Timestamp, UserId,
    };

    fn watch(bus: &Bus<ClientEvent>, roles: Option<Box<dyn RoleDirectory>>) -> Watch {
        let vendor = MemoryVendor::new(MemoryVendorConfig::default());
        Watch {
            metrics: QcVendor::new(Arc::new(vendor.client()), Arc::new(UnknownDevice)).metrics(),
            bus: bus.clone(),
            roles,
            user: None,
            device: Arc::new(UnknownDevice),
            clock: Arc::new(SystemClock),
        }
    }

    fn rule(metric: Metric) -> AlertRule {
        AlertRule {
            name: "r".into(),
            metric,
            comparison: Comparison::Below,
            threshold: 0.5,
            for_duration: Duration::ZERO,
            severity: Severity::Warning,
        }
    }

    /// A rule on a business metric of a monitor without roles would never fire: refused.
    #[tokio::test]
    async fn business_rules_need_roles() {
        let bus = Bus::new();
        let config = QcConfig {
            rules: vec![rule(Metric::ResponseRate)],
            ..QcConfig::default()
        };
        let refused = QcMonitor::start(config.clone(), watch(&bus, None));
        assert!(
            matches!(&refused, Err(QcError::InvalidRule { reason, .. }) if reason.contains("roles")),
            "{refused:?}"
        );
        let with_roles = QcMonitor::start(config, watch(&bus, Some(Box::new(Agents::default()))));
        assert!(with_roles.is_ok());
    }

    /// Without roles messages are counted but no business figures exist; with roles they do.
    #[tokio::test]
    async fn business_metrics_are_computed_only_with_roles() {
        let bus = Bus::new();
        let plain = QcMonitor::start(QcConfig::default(), watch(&bus, None)).unwrap();
        let business = QcMonitor::start(
            QcConfig::default(),
            watch(&bus, Some(Box::new(Agents::default()))),
        )
        .unwrap();
        let message = Message {
            server_id: ServerMsgId::new("m1"),
            client_id: ClientMsgId::new("c1"),
            conversation: ConversationId::group("g"),
            sender: UserId::new("tina"),
            seq: None,
            server_time: Timestamp::from_millis(1),
            client_time: Timestamp::from_millis(1),
            content: Content::text("hi"),
        };
        bus.publish(ClientEvent::Message(ReceivedMessage {
            message,
            origin: Origin::Online,
        }))
        .await;
        while plain.events_seen() < 1 || business.events_seen() < 1 {
            tokio::task::yield_now().await;
        }
        let (p, b) = (plain.snapshot(), business.snapshot());
        assert_eq!(p.processing.messages_ingested_total, 1);
        assert_eq!(b.processing.messages_ingested_total, 1);
        assert_eq!(p.business, None);
        let b = b.business.unwrap();
        // Tina's message (sent in 1970) waits for an answer: overdue, nobody assigned.
        assert_eq!(b.overdue.len(), 1);
        assert_eq!(b.agents[0].agent, "unassigned");
        assert_eq!(b.replies_per_conversation_per_hour, Some(0.0));
    }
}
