//! [`QcVendor`]: a decorator over any vendor that records, per operation, calls, errors by
//! class, timeouts and a latency histogram, in sliding windows, labelled with the device's
//! network. It adds metrics, never behaviour: every call and answer passes through as is.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use im_service::{
    Capabilities, ConversationId, Credentials, ErrorClass, EventStream, HistoryPage, HistoryQuery,
    OfflineAck, OfflineBatch, OutgoingMessage, SendReceipt, ServerMsgId, ServiceError, Session,
    Vendor,
};
use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use tokio::time::Instant;

use crate::device::{DeviceContext, NetworkType};
use crate::histogram::LatencyHistogram;
use crate::window::{Slot, SlotRing};

/// The operations QC tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `login` and `go_online`.
    Login,
    /// `send`, and the message changes (`recall`, `edit`, `delete_for_me`).
    Send,
    /// `pull_offline`, `pull_history` and `pull_changes`.
    Pull,
    /// `ack_offline` and `mark_read`.
    Ack,
    /// `ping`.
    Heartbeat,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 5] = [Op::Login, Op::Send, Op::Pull, Op::Ack, Op::Heartbeat];

    /// The label value used in exports.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Login => "login",
            Op::Send => "send",
            Op::Pull => "pull",
            Op::Ack => "ack",
            Op::Heartbeat => "heartbeat",
        }
    }
}

/// Counts of one slot (or a merged window) of one operation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallStats {
    /// Calls made.
    pub calls: u64,
    /// Calls that failed, by class.
    pub transient: u64,
    /// Rate-limited failures.
    pub rate_limited: u64,
    /// Permanent failures.
    pub permanent: u64,
    /// Failures that were timeouts (also counted in their class).
    pub timeouts: u64,
    /// Latency of every call, failed ones included.
    pub latency: LatencyHistogram,
}

impl CallStats {
    /// Failed calls.
    pub fn errors(&self) -> u64 {
        self.transient + self.rate_limited + self.permanent
    }

    /// Share of calls that succeeded; `None` without calls.
    pub fn success_ratio(&self) -> Option<f64> {
        (self.calls > 0).then(|| (self.calls - self.errors()) as f64 / self.calls as f64)
    }

    fn record(&mut self, latency: Duration, error: Option<&ServiceError>) {
        self.latency.record(latency);
        self.count(error);
    }

    /// Counts a call without its latency (the totals keep no histogram: only windows are
    /// reported as quantiles).
    fn count(&mut self, error: Option<&ServiceError>) {
        self.calls += 1;
        if let Some(e) = error {
            match e.class() {
                ErrorClass::Transient => self.transient += 1,
                ErrorClass::RateLimited { .. } => self.rate_limited += 1,
                ErrorClass::Permanent => self.permanent += 1,
            }
            if matches!(e, ServiceError::Timeout(_)) {
                self.timeouts += 1;
            }
        }
    }
}

impl Slot for CallStats {
    fn merge(&mut self, other: &Self) {
        self.calls += other.calls;
        self.transient += other.transient;
        self.rate_limited += other.rate_limited;
        self.permanent += other.permanent;
        self.timeouts += other.timeouts;
        self.latency.merge(&other.latency);
    }
}

/// Index of the (operation, network) series.
fn slot_of(op: Op, network: NetworkType) -> usize {
    op as usize * NetworkType::ALL.len() + network as usize
}

/// Slot length of the call windows.
pub(crate) const SLOT: Duration = Duration::from_secs(5);
/// History kept: the longest window.
pub(crate) const SPAN: Duration = Duration::from_secs(3600);

/// Per (operation, network): totals since start and a sliding window.
struct Series {
    total: CallStats,
    recent: SlotRing<CallStats>,
}

/// What the decorator recorded; shared with the monitor and the exporters.
pub struct VendorMetrics {
    vendor: String,
    /// One series per (operation, network), indexed by [`slot_of`]: no map lookup per call.
    series: Mutex<Vec<Option<Series>>>,
}

impl std::fmt::Debug for VendorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorMetrics")
            .field("vendor", &self.vendor)
            .finish_non_exhaustive()
    }
}

impl VendorMetrics {
    fn series(&self) -> MutexGuard<'_, Vec<Option<Series>>> {
        self.series.lock()
    }

    /// The vendor's name.
    pub fn vendor(&self) -> &str {
        &self.vendor
    }

    /// Records one call that ended at `now` (what the decorator does).
    pub(crate) fn record_at(
        &self,
        now: Instant,
        op: Op,
        network: NetworkType,
        latency: Duration,
        error: Option<&ServiceError>,
    ) {
        let mut series = self.series();
        let Some(entry) = series.get_mut(slot_of(op, network)) else {
            return; // cannot happen: the vector holds every (op, network) pair
        };
        let s = entry.get_or_insert_with(|| Series {
            total: CallStats::default(),
            recent: SlotRing::new(SLOT, SPAN),
        });
        s.total.count(error);
        s.recent.at(now).record(latency, error);
    }

    /// Totals since start of `op` (all networks when `network` is `None`); counts only, the
    /// latency histogram of a total is empty.
    pub fn total(&self, op: Option<Op>, network: Option<NetworkType>) -> CallStats {
        self.fold(op, network, |s| s.total.clone())
    }

    /// The last `window` of `op` (all operations / networks when `None`).
    pub fn window(
        &self,
        op: Option<Op>,
        network: Option<NetworkType>,
        window: Duration,
    ) -> CallStats {
        let now = Instant::now();
        self.fold(op, network, |s| s.recent.window(now, window))
    }

    /// The (operation, network) pairs seen so far.
    pub fn keys(&self) -> Vec<(Op, NetworkType)> {
        let series = self.series();
        Op::ALL
            .iter()
            .flat_map(|&op| NetworkType::ALL.iter().map(move |&n| (op, n)))
            .filter(|&(op, n)| matches!(series.get(slot_of(op, n)), Some(Some(_))))
            .collect()
    }

    fn fold(
        &self,
        op: Option<Op>,
        network: Option<NetworkType>,
        f: impl Fn(&Series) -> CallStats,
    ) -> CallStats {
        let mut out = CallStats::default();
        let series = self.series();
        for &o in &Op::ALL {
            for &n in &NetworkType::ALL {
                let wanted = op.is_none_or(|x| x == o) && network.is_none_or(|x| x == n);
                if let (true, Some(Some(s))) = (wanted, series.get(slot_of(o, n))) {
                    out.merge(&f(s));
                }
            }
        }
        out
    }
}

/// The decorator: wraps any vendor, records every tracked call into [`VendorMetrics`].
pub struct QcVendor {
    inner: Arc<dyn Vendor>,
    metrics: Arc<VendorMetrics>,
    device: Arc<dyn DeviceContext>,
}

impl QcVendor {
    /// Wraps `inner`; `device` labels every sample with the current network.
    pub fn new(inner: Arc<dyn Vendor>, device: Arc<dyn DeviceContext>) -> Self {
        let metrics = Arc::new(VendorMetrics {
            vendor: inner.name().to_string(),
            series: Mutex::new(
                (0..Op::ALL.len() * NetworkType::ALL.len())
                    .map(|_| None)
                    .collect(),
            ),
        });
        Self {
            inner,
            metrics,
            device,
        }
    }

    /// What was recorded (shared: it keeps filling as calls are made).
    pub fn metrics(&self) -> Arc<VendorMetrics> {
        self.metrics.clone()
    }

    async fn timed<T>(
        &self,
        op: Op,
        call: impl std::future::Future<Output = im_service::Result<T>>,
    ) -> im_service::Result<T> {
        let network = self.device.network();
        // Latency from the OS monotonic clock (cheap); the slot from tokio's clock, once, so
        // paused-time tests place calls in windows deterministically.
        let started = std::time::Instant::now();
        let result = call.await;
        let latency = started.elapsed();
        self.metrics
            .record_at(Instant::now(), op, network, latency, result.as_ref().err());
        result
    }
}

#[async_trait]
impl Vendor for QcVendor {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    fn take_events(&self) -> Option<EventStream> {
        self.inner.take_events()
    }

    async fn login(&self, credentials: &Credentials) -> im_service::Result<Session> {
        self.timed(Op::Login, self.inner.login(credentials)).await
    }

    async fn logout(&self) -> im_service::Result<()> {
        self.inner.logout().await
    }

    async fn send(&self, message: &OutgoingMessage) -> im_service::Result<SendReceipt> {
        self.timed(Op::Send, self.inner.send(message)).await
    }

    async fn send_after(
        &self,
        message: &OutgoingMessage,
        after: &im_service::ClientMsgId,
    ) -> im_service::Result<SendReceipt> {
        // A pipelined send is a send: the same operation's counts and latency.
        self.timed(Op::Send, self.inner.send_after(message, after))
            .await
    }

    async fn pull_offline(&self, max: u32) -> im_service::Result<OfflineBatch> {
        self.timed(Op::Pull, self.inner.pull_offline(max)).await
    }

    async fn ack_offline(&self, ack: &OfflineAck) -> im_service::Result<()> {
        self.timed(Op::Ack, self.inner.ack_offline(ack)).await
    }

    async fn go_online(&self) -> im_service::Result<()> {
        self.timed(Op::Login, self.inner.go_online()).await
    }

    async fn pull_history(&self, query: &HistoryQuery) -> im_service::Result<HistoryPage> {
        self.timed(Op::Pull, self.inner.pull_history(query)).await
    }

    async fn ping(&self) -> im_service::Result<Duration> {
        self.timed(Op::Heartbeat, self.inner.ping()).await
    }

    async fn mark_read(
        &self,
        conversation: &ConversationId,
        up_to: &ServerMsgId,
    ) -> im_service::Result<()> {
        self.timed(Op::Ack, self.inner.mark_read(conversation, up_to))
            .await
    }

    fn lifecycle(&self) -> im_service::LifecyclePolicy {
        self.inner.lifecycle()
    }

    // A change is a write like a send; the change feed is a pull like the offline queue.
    async fn recall(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> im_service::Result<im_service::MessageChange> {
        self.timed(Op::Send, self.inner.recall(conversation, target))
            .await
    }

    async fn edit(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
        content: &im_service::Content,
    ) -> im_service::Result<im_service::MessageChange> {
        self.timed(Op::Send, self.inner.edit(conversation, target, content))
            .await
    }

    async fn delete_for_me(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> im_service::Result<im_service::MessageChange> {
        self.timed(Op::Send, self.inner.delete_for_me(conversation, target))
            .await
    }

    async fn pull_changes(
        &self,
        since: Option<im_service::ChangeCursor>,
        max: u32,
    ) -> im_service::Result<im_service::ChangeBatch> {
        self.timed(Op::Pull, self.inner.pull_changes(since, max))
            .await
    }
}
