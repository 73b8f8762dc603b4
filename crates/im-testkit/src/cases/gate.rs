//! [`GatedVendor`]: a vendor wrapper that can hold logins at a gate and records the order of
//! the calls it passes on, so a case or test can show that nothing is sent before
//! authentication completes, or make something happen while a client is (re)connecting;
//! it also timestamps login attempts and can refuse them (a dead link, as a client sees
//! it), for the reconnect and network-state tests.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use async_trait::async_trait;
use im_service::{
    Capabilities, ConversationId, Credentials, EventStream, HistoryPage, HistoryQuery, OfflineAck,
    OfflineBatch, OutgoingMessage, SendReceipt, ServerMsgId, ServiceError, Session, Vendor,
};
use tokio::sync::watch;

/// One call that reached a [`GatedVendor`], in the order they came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateCall {
    /// `login` was called (it may now wait at the gate).
    LoginStarted,
    /// `login` passed the gate and the inner vendor accepted it.
    LoggedIn,
    /// `login` passed the gate and the inner vendor refused it.
    LoginRefused,
    /// `send` was called.
    Send,
    /// `logout` was called.
    Logout,
}

/// Wraps a vendor; `login` waits while the gate is closed; every login, send and logout is
/// recorded in call order. The gate starts open.
pub struct GatedVendor {
    inner: Arc<dyn Vendor>,
    gate: watch::Sender<bool>,
    calls: Mutex<Vec<GateCall>>,
    /// When each login attempt started (tokio time: paused time in tests).
    login_times: Mutex<Vec<tokio::time::Instant>>,
    /// Refuse logins with `ConnectionLost` (without reaching the inner vendor).
    refuse: std::sync::atomic::AtomicBool,
    /// Bumped on every recorded call, to wake [`GatedVendor::wait_until`].
    recorded: watch::Sender<u64>,
}

impl std::fmt::Debug for GatedVendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedVendor")
            .field("inner", &self.inner.name())
            .field("open", &*self.gate.borrow())
            .field("calls", &self.calls())
            .finish()
    }
}

impl GatedVendor {
    /// Wraps `inner` with the gate open.
    pub fn new(inner: Arc<dyn Vendor>) -> Self {
        Self {
            inner,
            gate: watch::channel(true).0,
            calls: Mutex::new(Vec::new()),
            login_times: Mutex::new(Vec::new()),
            refuse: std::sync::atomic::AtomicBool::new(false),
            recorded: watch::channel(0).0,
        }
    }

    /// Closes the gate: logins from now on wait until it opens.
    pub fn close(&self) {
        self.gate.send_replace(false);
    }

    /// Opens the gate: waiting logins go on.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    /// From now on refuse (`true`) or pass on (`false`) logins: a refused one fails with
    /// `ConnectionLost`, as a login over a dead network does.
    pub fn refuse_logins(&self, refuse: bool) {
        self.refuse
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    /// When each login attempt so far started, in order.
    pub fn login_times(&self) -> Vec<tokio::time::Instant> {
        self.login_times.lock().clone()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<GateCall> {
        self.calls.lock().clone()
    }

    /// Waits until `done` holds for the calls so far, within `within` in all; on timeout,
    /// the calls seen are the error.
    pub async fn wait_until(
        &self,
        within: Duration,
        mut done: impl FnMut(&[GateCall]) -> bool,
    ) -> Result<Vec<GateCall>, Vec<GateCall>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut changes = self.recorded.subscribe();
        loop {
            changes.borrow_and_update();
            let calls = self.calls();
            if done(&calls) {
                return Ok(calls);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(self.calls()),
            }
        }
    }

    fn record(&self, call: GateCall) {
        self.calls.lock().push(call);
        self.recorded.send_modify(|n| *n += 1);
    }
}

#[async_trait]
impl Vendor for GatedVendor {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    fn take_events(&self) -> Option<EventStream> {
        self.inner.take_events()
    }

    async fn login(&self, credentials: &Credentials) -> Result<Session, ServiceError> {
        self.login_times.lock().push(tokio::time::Instant::now());
        self.record(GateCall::LoginStarted);
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            self.record(GateCall::LoginRefused);
            return Err(ServiceError::ConnectionLost("network unreachable".into()));
        }
        let mut gate = self.gate.subscribe();
        // The sender lives in `self`: `changed` cannot fail while we are borrowed.
        while !*gate.borrow_and_update() {
            if gate.changed().await.is_err() {
                break;
            }
        }
        let result = self.inner.login(credentials).await;
        self.record(if result.is_ok() {
            GateCall::LoggedIn
        } else {
            GateCall::LoginRefused
        });
        result
    }

    async fn logout(&self) -> Result<(), ServiceError> {
        self.record(GateCall::Logout);
        self.inner.logout().await
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<SendReceipt, ServiceError> {
        self.record(GateCall::Send);
        self.inner.send(message).await
    }

    async fn send_after(
        &self,
        message: &OutgoingMessage,
        after: &im_service::ClientMsgId,
    ) -> Result<SendReceipt, ServiceError> {
        self.record(GateCall::Send);
        self.inner.send_after(message, after).await
    }

    async fn pull_offline(&self, max: u32) -> Result<OfflineBatch, ServiceError> {
        self.inner.pull_offline(max).await
    }

    async fn ack_offline(&self, ack: &OfflineAck) -> Result<(), ServiceError> {
        self.inner.ack_offline(ack).await
    }

    async fn go_online(&self) -> Result<(), ServiceError> {
        self.inner.go_online().await
    }

    async fn pull_history(&self, query: &HistoryQuery) -> Result<HistoryPage, ServiceError> {
        self.inner.pull_history(query).await
    }

    async fn ping(&self) -> Result<Duration, ServiceError> {
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
