//! The reference vendor's callback dispatcher: POSTs a signed `message.stored` callback
//! ([`im_service::webhook`]) to the customer's backend for every stored message, and a
//! `message.changed` callback for every stored change (recall, edit, delete for me), in
//! storage order, retrying failures with capped exponential backoff and full jitter.
//!
//! Delivery is one callback at a time: a callback is not sent before the previous one was
//! accepted (any 2xx) or given up after [`CallbackConfig::max_attempts`].
//!
//! Messages and changes come from two feeds
//! ([`MemoryVendor::store_feed`](im_service::memory::MemoryVendor::store_feed) and
//! `change_feed`), each in storage order. Across the two, a change is never called back
//! before a message stored before it (its own message above all): when both feeds have
//! something, messages go first, and before a change goes out, every message already in
//! the message feed goes out. That is exact because the vendor feeds a message before any
//! change to it can exist, so once the change is received the message is visible in its
//! feed. A message stored after a change may overtake it, which no receiver can tell from
//! the order the vendor stored them in (they concern different messages). Every attempt is
//! stamped with the vendor clock's current time and signed afresh, so a retry after a long
//! outage still falls inside the receiver's replay window.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use im_service::webhook::{
    self, CallbackPayload, ChangePayload, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use im_service::{Clock, Message, MessageChange};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

/// Where and how callbacks are delivered.
///
/// `Debug` never prints the secret.
#[derive(Clone)]
pub struct CallbackConfig {
    /// The receiver's URL (`http://…`; this build of the simulator speaks plain HTTP).
    pub url: String,
    /// Shared HMAC secret the receiver verifies signatures with.
    pub secret: Vec<u8>,
    /// Attempts per callback before it is given up (default 8; 0 counts as 1).
    pub max_attempts: u32,
    /// Backoff ceiling before the second attempt; doubles per attempt (default 100 ms).
    pub base_backoff: Duration,
    /// Largest backoff ceiling (default 5 s).
    pub max_backoff: Duration,
    /// Time limit of one attempt, connection included (default 5 s).
    pub request_timeout: Duration,
    /// The `vendor` field of every payload (default `"reference"`).
    pub vendor_name: String,
}

impl CallbackConfig {
    /// Delivery to `url` signed with `secret`, with the default retry policy.
    pub fn new(url: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            max_attempts: 8,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            vendor_name: "reference".to_owned(),
        }
    }

    /// The backoff before attempt `failed + 1` after `failed` failed attempts (from 1):
    /// uniformly random in `[0, min(max_backoff, base_backoff * 2^(failed - 1))]`.
    fn backoff(&self, failed: u32) -> Duration {
        im_service::ExponentialBackoff::new(self.base_backoff, self.max_backoff)
            .full_jitter(failed, &mut rand::rng())
    }
}

impl fmt::Debug for CallbackConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("max_attempts", &self.max_attempts)
            .field("base_backoff", &self.base_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("request_timeout", &self.request_timeout)
            .field("vendor_name", &self.vendor_name)
            .finish()
    }
}

/// Counters of a [`CallbackDispatcher`], shared with whoever holds [`CallbackDispatcher::stats`].
#[derive(Debug, Default)]
pub struct CallbackStats {
    delivered: AtomicU64,
    attempts: AtomicU64,
    failed_attempts: AtomicU64,
    given_up: AtomicU64,
}

/// A consistent-enough copy of [`CallbackStats`] (each counter is read separately).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallbackStatsSnapshot {
    /// Callbacks a receiver accepted (answered 2xx).
    pub delivered: u64,
    /// HTTP attempts made, successful or not.
    pub attempts: u64,
    /// Attempts that failed (connection error, timeout, non-2xx status).
    pub failed_attempts: u64,
    /// Callbacks abandoned after `max_attempts` failures (or that could not be encoded).
    pub given_up: u64,
}

impl CallbackStats {
    /// Callbacks a receiver accepted (answered 2xx).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::SeqCst)
    }

    /// HTTP attempts made, successful or not.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Attempts that failed (connection error, timeout, non-2xx status).
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::SeqCst)
    }

    /// Callbacks abandoned after `max_attempts` failures (or that could not be encoded).
    pub fn given_up(&self) -> u64 {
        self.given_up.load(Ordering::SeqCst)
    }

    /// Callbacks finished either way: delivered plus given up.
    pub fn settled(&self) -> u64 {
        self.delivered() + self.given_up()
    }

    /// All counters at once.
    pub fn snapshot(&self) -> CallbackStatsSnapshot {
        CallbackStatsSnapshot {
            delivered: self.delivered(),
            attempts: self.attempts(),
            failed_attempts: self.failed_attempts(),
            given_up: self.given_up(),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// The task that turns a vendor's store and change feeds into signed HTTP callbacks.
///
/// It owns its task: [`CallbackDispatcher::shutdown`] stops it and waits for it; dropping
/// the dispatcher aborts it. Callbacks still queued when it stops are not delivered.
#[derive(Debug)]
pub struct CallbackDispatcher {
    task: Option<JoinHandle<()>>,
    cancel: CancellationToken,
    stats: Arc<CallbackStats>,
}

impl CallbackDispatcher {
    /// Starts delivering every message received on `feed` (e.g.
    /// [`MemoryVendor::store_feed`](im_service::memory::MemoryVendor::store_feed)) to
    /// `config.url`, stamping attempts with `clock`. It stops when `cancel` (or a parent of
    /// it) is cancelled, when [`shutdown`](Self::shutdown) is called, or when the feed closes.
    ///
    /// Must be called from within a Tokio runtime.
    pub fn spawn(
        config: CallbackConfig,
        feed: UnboundedReceiver<Message>,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> CallbackDispatcher {
        // No change feed: one that is closed from the start.
        let (_, changes) = mpsc::unbounded_channel();
        Self::spawn_with_changes(config, feed, changes, clock, cancel)
    }

    /// As [`spawn`](Self::spawn), and also delivers a `message.changed` callback for every
    /// change received on `changes` (e.g. `MemoryVendor::change_feed`), ordered with the
    /// messages as the module doc says. It stops when both feeds have closed (or on
    /// cancellation, as `spawn`).
    pub fn spawn_with_changes(
        config: CallbackConfig,
        feed: UnboundedReceiver<Message>,
        changes: UnboundedReceiver<MessageChange>,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> CallbackDispatcher {
        // A child token: shutting this dispatcher down must not cancel the caller's token.
        let cancel = cancel.child_token();
        let stats = Arc::new(CallbackStats::default());
        let worker = Worker {
            // Callbacks go straight to the receiver; proxy environment variables are ignored.
            client: reqwest::Client::builder().no_proxy().build(),
            config,
            clock,
            stats: Arc::clone(&stats),
            cancel: cancel.clone(),
        };
        let task = tokio::spawn(worker.run(feed, changes));
        CallbackDispatcher {
            task: Some(task),
            cancel,
            stats,
        }
    }

    /// The dispatcher's counters (shared; they keep counting while the dispatcher runs).
    pub fn stats(&self) -> Arc<CallbackStats> {
        Arc::clone(&self.stats)
    }

    /// Stops the dispatcher (an attempt in flight is abandoned) and waits for its task.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            match task.await {
                Err(e) if e.is_panic() => warn!(error = %e, "callback dispatcher task panicked"),
                _ => {}
            }
        }
    }
}

impl Drop for CallbackDispatcher {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// How one callback's delivery ended.
enum Delivery {
    /// Accepted or given up: go on with the next callback.
    Settled,
    /// The dispatcher was stopped mid-delivery.
    Cancelled,
}

/// One callback to deliver.
enum Item {
    Message(Message),
    Change(MessageChange),
}

/// The dispatcher task's state.
struct Worker {
    client: reqwest::Result<reqwest::Client>,
    config: CallbackConfig,
    clock: Arc<dyn Clock>,
    stats: Arc<CallbackStats>,
    cancel: CancellationToken,
}

impl Worker {
    async fn run(
        self,
        mut messages: UnboundedReceiver<Message>,
        mut changes: UnboundedReceiver<MessageChange>,
    ) {
        let (mut messages_open, mut changes_open) = (true, true);
        loop {
            // Biased: with both feeds ready, messages first (see the module doc).
            let item = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                next = messages.recv(), if messages_open => match next {
                    Some(message) => Item::Message(message),
                    None => {
                        messages_open = false;
                        continue;
                    }
                },
                next = changes.recv(), if changes_open => match next {
                    Some(change) => Item::Change(change),
                    None => {
                        changes_open = false;
                        continue;
                    }
                },
                else => break,
            };
            if let Item::Change(_) = &item {
                // Every message stored before this change is in its feed by now: it goes
                // first, so no receiver sees a change before its message.
                while let Ok(message) = messages.try_recv() {
                    if let Delivery::Cancelled = self.deliver_item(Item::Message(message)).await {
                        return;
                    }
                }
            }
            if let Delivery::Cancelled = self.deliver_item(item).await {
                break;
            }
        }
        debug!("callback dispatcher stopped");
    }

    /// Encodes and delivers one callback within its span.
    async fn deliver_item(&self, item: Item) -> Delivery {
        let (event, target, body) = match item {
            Item::Message(message) => (
                webhook::MESSAGE_STORED,
                message.server_id.clone(),
                serde_json::to_vec(&CallbackPayload::message_stored(
                    self.config.vendor_name.clone(),
                    message,
                )),
            ),
            Item::Change(change) => (
                webhook::MESSAGE_CHANGED,
                change.target.clone(),
                serde_json::to_vec(&ChangePayload::message_changed(
                    self.config.vendor_name.clone(),
                    change,
                )),
            ),
        };
        let span = info_span!(
            "callback",
            event,
            server_id = %target,
            attempt = tracing::field::Empty,
        );
        self.deliver(body, &span).instrument(span.clone()).await
    }

    /// Delivers one encoded callback: up to `max_attempts` attempts with backoff between
    /// them.
    async fn deliver(&self, body: serde_json::Result<Vec<u8>>, span: &tracing::Span) -> Delivery {
        let client = match &self.client {
            Ok(client) => client,
            Err(e) => {
                warn!(error = %e, "no HTTP client; callback given up");
                CallbackStats::bump(&self.stats.given_up);
                return Delivery::Settled;
            }
        };
        let body = match body {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                warn!(error = %e, "callback payload does not encode; given up");
                CallbackStats::bump(&self.stats.given_up);
                return Delivery::Settled;
            }
        };
        let max_attempts = self.config.max_attempts.max(1);
        let mut last_error = String::new();
        for attempt in 1..=max_attempts {
            span.record("attempt", attempt);
            CallbackStats::bump(&self.stats.attempts);
            let outcome = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Delivery::Cancelled,
                outcome = self.attempt(client, body.clone()) => outcome,
            };
            match outcome {
                Ok(()) => {
                    CallbackStats::bump(&self.stats.delivered);
                    debug!("callback delivered");
                    return Delivery::Settled;
                }
                Err(error) => {
                    CallbackStats::bump(&self.stats.failed_attempts);
                    debug!(%error, "callback attempt failed");
                    last_error = error;
                }
            }
            if attempt < max_attempts {
                let pause = self.config.backoff(attempt);
                tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => return Delivery::Cancelled,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
        warn!(
            attempts = max_attempts,
            error = %last_error,
            "callback given up"
        );
        CallbackStats::bump(&self.stats.given_up);
        Delivery::Settled
    }

    /// One signed POST; `Err` describes why it did not count as accepted.
    async fn attempt(&self, client: &reqwest::Client, body: Bytes) -> Result<(), String> {
        let timestamp = webhook::unix_seconds(self.clock.now());
        let signature = webhook::sign(&self.config.secret, timestamp, &body);
        let response = client
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .timeout(self.config.request_timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("receiver answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_secret() {
        let config = CallbackConfig::new("http://127.0.0.1:1/cb", b"hunter2-very-secret".to_vec());
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains("127.0.0.1:1"));
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let config = CallbackConfig {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(750),
            ..CallbackConfig::new("http://x", Vec::new())
        };
        for failed in 1..=40 {
            let ceiling = Duration::from_millis(100 * (1u64 << (failed - 1).min(20)))
                .min(Duration::from_millis(750));
            for _ in 0..50 {
                assert!(config.backoff(failed) <= ceiling, "after {failed} failures");
            }
        }
        let zero = CallbackConfig {
            base_backoff: Duration::ZERO,
            ..CallbackConfig::new("http://x", Vec::new())
        };
        assert_eq!(zero.backoff(3), Duration::ZERO);
    }
}
