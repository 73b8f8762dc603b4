//! `FaultyVendor`: wraps any vendor and misbehaves on purpose, the way real networks and
//! vendors do: duplicated, reordered and lost pushes, extra injected events, and hooks that
//! run between a call and its answer (to make another user act in the middle of a sync).
//! Deterministic: every random choice comes from one seeded generator.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::BoxFuture;
use im_service::memory::VendorOp;
use im_service::{
    Capabilities, ConversationId, Credentials, EventStream, HistoryPage, HistoryQuery, Message,
    OfflineAck, OfflineBatch, OutgoingMessage, SendReceipt, ServerMsgId, ServiceError, Session,
    Vendor, VendorEvent,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

/// A hook run inside a wrapped call, after the inner vendor answered and before the caller
/// sees the answer.
pub type Hook = Arc<dyn Fn(u32) -> BoxFuture<'static, ()> + Send + Sync>;

/// Decides which pushed messages are lost.
pub type LoseFilter = Arc<dyn Fn(&Message) -> bool + Send + Sync>;

/// What the wrapper does to pushed messages.
#[derive(Clone, Default)]
pub struct PushFaults {
    /// Probability that a push is delivered twice.
    pub duplicate: f64,
    /// Swap each pair of consecutive pushes (a lone push waits for a partner; the stream
    /// releases it when the inner stream ends).
    pub reorder: bool,
    /// Pushes for which this returns true are lost (the client must notice the hole).
    pub lose: Option<LoseFilter>,
}

/// Calls made to fail on purpose, shared by every wrapper built with it (so a harness can
/// fail "the next call of any client", as a vendor's own fault injection does).
#[derive(Debug, Clone, Default)]
pub struct Failures(Arc<Mutex<HashMap<VendorOp, (u32, ServiceError)>>>);

impl Failures {
    /// Makes the next `count` calls of `op` fail with `error`.
    pub fn fail_next(&self, op: VendorOp, count: u32, error: ServiceError) {
        let mut table = self.0.lock();
        if count == 0 {
            table.remove(&op);
        } else {
            table.insert(op, (count, error));
        }
    }

    /// The error the next call of `op` must fail with, if any (consumes one).
    fn take(&self, op: VendorOp) -> Option<ServiceError> {
        let mut table = self.0.lock();
        let (left, error) = table.get_mut(&op)?;
        let error = error.clone();
        *left -= 1;
        if *left == 0 {
            table.remove(&op);
        }
        Some(error)
    }
}

/// A vendor wrapper with deliberate faults.
pub struct FaultyVendor<V> {
    inner: Arc<V>,
    faults: Arc<Mutex<PushFaults>>,
    rng: Arc<Mutex<StdRng>>,
    inject_tx: mpsc::UnboundedSender<VendorEvent>,
    inject_rx: Mutex<Option<mpsc::UnboundedReceiver<VendorEvent>>>,
    after_pull_offline: Mutex<Option<Hook>>,
    pulls: Mutex<u32>,
    /// Optional extra latency of every call (exercises timeouts under paused time).
    pub call_delay: Mutex<Option<Duration>>,
    /// Sends whose acknowledgement is lost: stored by the vendor, reported as a broken
    /// connection to the caller (failure class 1).
    lost_acks: Mutex<u32>,
    /// Capabilities reported instead of the inner vendor's (to play a vendor that lacks,
    /// say, sequence numbers while reusing a full implementation underneath).
    capabilities: Option<Capabilities>,
    /// Calls that fail before reaching the inner vendor.
    failures: Failures,
}

impl<V: Vendor + 'static> FaultyVendor<V> {
    /// Wraps `inner`; faults start off.
    pub fn new(inner: Arc<V>, seed: u64) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            inner,
            faults: Arc::new(Mutex::new(PushFaults::default())),
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            inject_tx: tx,
            inject_rx: Mutex::new(Some(rx)),
            after_pull_offline: Mutex::new(None),
            pulls: Mutex::new(0),
            call_delay: Mutex::new(None),
            lost_acks: Mutex::new(0),
            capabilities: None,
            failures: Failures::default(),
        }
    }

    /// Fails calls as `failures` says (share one table among wrappers to fail any client's).
    pub fn with_failures(mut self, failures: Failures) -> Self {
        self.failures = failures;
        self
    }

    /// Makes the next `count` calls of `op` through this wrapper's table fail with `error`.
    pub fn fail_next(&self, op: VendorOp, count: u32, error: ServiceError) {
        self.failures.fail_next(op, count, error);
    }

    /// Reports `capabilities` instead of the inner vendor's. The behaviour underneath does
    /// not change: messages may still carry sequences, but a client must not rely on them.
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = Some(capabilities);
        self
    }

    /// The wrapped vendor.
    pub fn inner(&self) -> &Arc<V> {
        &self.inner
    }

    /// Replaces the push faults.
    pub fn set_push_faults(&self, faults: PushFaults) {
        *self.faults.lock() = faults;
    }

    /// Adds an event to the stream as if the vendor had sent it.
    pub fn inject(&self, event: VendorEvent) {
        let _ = self.inject_tx.send(event);
    }

    /// The next `n` successful sends lose their acknowledgement.
    pub fn lose_send_acks(&self, n: u32) {
        *self.lost_acks.lock() = n;
    }

    /// A handle that injects events from anywhere (e.g. from inside a hook).
    pub fn injector(&self) -> mpsc::UnboundedSender<VendorEvent> {
        self.inject_tx.clone()
    }

    /// Runs `hook(n)` after the n-th (1-based) `pull_offline` answered.
    pub fn after_pull_offline(&self, hook: Hook) {
        *self.after_pull_offline.lock() = Some(hook);
    }

    async fn delay(&self) {
        let d = *self.call_delay.lock();
        if let Some(d) = d {
            tokio::time::sleep(d).await;
        }
    }

    /// The delay, then an injected failure of `op` if one is due.
    async fn before(&self, op: VendorOp) -> Result<(), ServiceError> {
        self.delay().await;
        self.failures.take(op).map_or(Ok(()), Err)
    }

    /// A stored send whose receipt is lost, while [`FaultyVendor::lose_send_acks`] has some left:
    /// the caller sees a connection loss, the message is stored.
    fn lose_ack(&self, receipt: SendReceipt) -> Result<SendReceipt, ServiceError> {
        let mut lost = self.lost_acks.lock();
        if *lost > 0 {
            *lost -= 1;
            return Err(ServiceError::ConnectionLost("acknowledgement lost".into()));
        }
        Ok(receipt)
    }
}

/// State of the faulty event stream.
struct StreamState {
    inner: EventStream,
    injected: mpsc::UnboundedReceiver<VendorEvent>,
    faults: Arc<Mutex<PushFaults>>,
    rng: Arc<Mutex<StdRng>>,
    out: VecDeque<VendorEvent>,
    held: Option<VendorEvent>,
    inner_done: bool,
}

impl StreamState {
    fn apply(&mut self, ev: VendorEvent) {
        let VendorEvent::MessagePushed(m) = &ev else {
            if let Some(h) = self.held.take() {
                self.out.push_back(h);
            }
            self.out.push_back(ev);
            return;
        };
        let faults = self.faults.lock().clone();
        if faults.lose.as_ref().is_some_and(|lose| lose(m)) {
            return;
        }
        let p = faults.duplicate.clamp(0.0, 1.0);
        let dup = p > 0.0 && self.rng.lock().random_bool(p);
        if faults.reorder && self.held.is_none() {
            self.held = Some(ev);
            return;
        }
        self.out.push_back(ev.clone());
        if dup {
            self.out.push_back(ev);
        }
        if let Some(h) = self.held.take() {
            self.out.push_back(h);
        }
    }
}

#[async_trait]
impl<V: Vendor + 'static> Vendor for FaultyVendor<V> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> &Capabilities {
        self.capabilities
            .as_ref()
            .unwrap_or_else(|| self.inner.capabilities())
    }

    fn take_events(&self) -> Option<EventStream> {
        let inner = self.inner.take_events()?;
        let injected = self.inject_rx.lock().take()?;
        let state = StreamState {
            inner,
            injected,
            faults: self.faults.clone(),
            rng: self.rng.clone(),
            out: VecDeque::new(),
            held: None,
            inner_done: false,
        };
        Some(Box::pin(futures::stream::unfold(
            state,
            |mut st| async move {
                loop {
                    if let Some(ev) = st.out.pop_front() {
                        return Some((ev, st));
                    }
                    if st.inner_done {
                        let held = st.held.take()?;
                        return Some((held, st));
                    }
                    tokio::select! {
                        ev = st.inner.next() => match ev {
                            Some(ev) => st.apply(ev),
                            None => st.inner_done = true,
                        },
                        Some(ev) = st.injected.recv() => st.out.push_back(ev),
                    }
                }
            },
        )))
    }

    async fn login(&self, credentials: &Credentials) -> Result<Session, ServiceError> {
        self.before(VendorOp::Login).await?;
        self.inner.login(credentials).await
    }

    async fn logout(&self) -> Result<(), ServiceError> {
        self.inner.logout().await
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<SendReceipt, ServiceError> {
        self.before(VendorOp::Send).await?;
        let receipt = self.inner.send(message).await?;
        self.lose_ack(receipt)
    }

    /// A pipelined send: its own faults ([`VendorOp::SendAfter`]), the same lost receipts.
    async fn send_after(
        &self,
        message: &OutgoingMessage,
        after: &im_service::ClientMsgId,
    ) -> Result<SendReceipt, ServiceError> {
        self.before(VendorOp::SendAfter).await?;
        let receipt = self.inner.send_after(message, after).await?;
        self.lose_ack(receipt)
    }

    async fn pull_offline(&self, max: u32) -> Result<OfflineBatch, ServiceError> {
        self.before(VendorOp::PullOffline).await?;
        let result = self.inner.pull_offline(max).await;
        let n = {
            let mut p = self.pulls.lock();
            *p += 1;
            *p
        };
        let hook = self.after_pull_offline.lock().clone();
        if let Some(hook) = hook {
            hook(n).await;
        }
        result
    }

    async fn ack_offline(&self, ack: &OfflineAck) -> Result<(), ServiceError> {
        self.before(VendorOp::AckOffline).await?;
        self.inner.ack_offline(ack).await
    }

    async fn go_online(&self) -> Result<(), ServiceError> {
        self.before(VendorOp::GoOnline).await?;
        self.inner.go_online().await
    }

    async fn pull_history(&self, query: &HistoryQuery) -> Result<HistoryPage, ServiceError> {
        self.before(VendorOp::PullHistory).await?;
        self.inner.pull_history(query).await
    }

    async fn ping(&self) -> Result<Duration, ServiceError> {
        self.before(VendorOp::Ping).await?;
        self.inner.ping().await
    }

    async fn mark_read(
        &self,
        conversation: &ConversationId,
        up_to: &ServerMsgId,
    ) -> Result<(), ServiceError> {
        self.inner.mark_read(conversation, up_to).await
    }

    fn lifecycle(&self) -> im_service::LifecyclePolicy {
        self.inner.lifecycle()
    }

    async fn recall(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> Result<im_service::MessageChange, ServiceError> {
        self.inner.recall(conversation, target).await
    }

    async fn edit(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
        content: &im_service::Content,
    ) -> Result<im_service::MessageChange, ServiceError> {
        self.inner.edit(conversation, target, content).await
    }

    async fn delete_for_me(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> Result<im_service::MessageChange, ServiceError> {
        self.inner.delete_for_me(conversation, target).await
    }

    async fn pull_changes(
        &self,
        since: Option<im_service::ChangeCursor>,
        max: u32,
    ) -> Result<im_service::ChangeBatch, ServiceError> {
        self.inner.pull_changes(since, max).await
    }
}
