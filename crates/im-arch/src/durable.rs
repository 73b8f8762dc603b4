//! Durable subscriptions: a named reader of the delivery journal whose position lives in the
//! store and moves only when the app acknowledges.
//!
//! The live bus ([`ImClient::subscribe`]) is for screens: it never makes the client wait,
//! and a reader that falls behind is told it lagged. An app that must process every
//! received message exactly once across crashes (a ledger, a bot, a search index) reads a
//! [`DurableSubscription`] instead. The rule it keeps: after a restart it hands out exactly
//! the events that were not acknowledged — never one that was, never a skipped one.
//!
//! How: while at least one durable subscription is registered, every message the client
//! delivers (each `ClientEvent::Message`) is appended to a journal in the store, in the same
//! atomic write that advances the sync cursors ([`Store::commit_delivery`]). The store is
//! the buffer: the supervisor never waits for a reader, and a slow or absent one catches up
//! from the journal. Journal entries every subscription has acknowledged are dropped.
//!
//! [`ImClient::subscribe`]: crate::ImClient::subscribe
//! [`Store::commit_delivery`]: crate::Store::commit_delivery

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use crate::error::ArchError;
use crate::shared::Shared;
use crate::store::{DurableEvent, Store};

/// Longest subscription name, in bytes.
const MAX_NAME: usize = 200;

/// A named, durable reader of the messages the client delivers. Created by
/// [`ImClient::durable_subscription`](crate::ImClient::durable_subscription).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use im_arch::ImClient;
/// use im_service::memory::MemoryVendor;
/// use im_service::{Content, ConversationId, UserId};
///
/// let vendor = MemoryVendor::default();
/// let alice = vendor.register_user(&UserId::new("alice"));
/// let bob = vendor.register_user(&UserId::new("bob"));
/// let conversation = ConversationId::direct(&alice.user, &bob.user);
///
/// let bob_client = ImClient::builder(Arc::new(vendor.client()), bob).build();
/// // Registered before login: everything delivered from now on is kept for it.
/// let mut ledger = bob_client.durable_subscription("ledger").await?;
/// bob_client.login().await?;
///
/// let alice_client = ImClient::builder(Arc::new(vendor.client()), alice).build();
/// alice_client.login().await?;
/// alice_client.send(conversation, Content::text("hello")).await?;
///
/// let batch = ledger.next_batch(100).await?;
/// assert_eq!(batch[0].message.content, Content::text("hello"));
/// // Processed: acknowledged, and durable when `ack` returns.
/// ledger.ack(batch[0].position).await?;
/// assert_eq!(ledger.acked(), batch[0].position);
/// # Ok::<(), im_arch::ArchError>(())
/// # });
/// ```
pub struct DurableSubscription {
    name: String,
    store: Arc<dyn Store>,
    /// The journal's head as the supervisor last committed it.
    head: watch::Receiver<u64>,
    /// Acknowledged (durably) up to here.
    acked: u64,
    /// Handed out up to here (at least `acked`).
    handed: u64,
}

impl std::fmt::Debug for DurableSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableSubscription")
            .field("name", &self.name)
            .field("acked", &self.acked)
            .field("handed", &self.handed)
            .finish_non_exhaustive()
    }
}

impl DurableSubscription {
    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The acknowledged position (0: nothing acknowledged since registration at an empty
    /// journal). Positions start at 1.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Waits until at least one event after those already handed out exists (after
    /// opening: after the acknowledged position) and returns up to `max` of them, in
    /// position order. Has no timeout of its own; ends with [`ArchError::Stopped`] when the
    /// client is dropped.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<DurableEvent>, ArchError> {
        loop {
            let head = *self.head.borrow_and_update();
            if head > self.handed {
                let events = self.store.journal_after(self.handed, max.max(1)).await?;
                if let Some(last) = events.last() {
                    // Durable before handed out: the supervisor commits journal entries
                    // without waiting for the disk; an entry a crash could still take back
                    // (and give to another message) must never reach the app.
                    self.store.flush().await?;
                    self.handed = last.position;
                    return Ok(events);
                }
            }
            if self.head.changed().await.is_err() {
                return Err(ArchError::Stopped);
            }
        }
    }

    /// Acknowledges every event up to and including `position`: a restarted client never
    /// hands them out again. Durable when it returns. Acknowledging an older position than
    /// the acknowledged one does nothing; one that was not handed out yet is refused.
    pub async fn ack(&mut self, position: u64) -> Result<(), ArchError> {
        if position <= self.acked {
            return Ok(());
        }
        if position > self.handed {
            return Err(ArchError::InvalidArgument(format!(
                "durable subscription {:?}: position {position} was not handed out yet \
                 (last handed out: {})",
                self.name, self.handed
            )));
        }
        self.store.set_subscription(&self.name, position).await?;
        self.store.flush().await?;
        self.acked = position;
        Ok(())
    }
}

/// Opens the durable subscription `name`, registering it on first use (it then starts at
/// the journal's head).
pub(crate) async fn open(shared: &Shared, name: &str) -> Result<DurableSubscription, ArchError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ArchError::InvalidArgument(format!(
            "a durable subscription name has 1 to {MAX_NAME} bytes, got {}",
            name.len()
        )));
    }
    // Journal from now on, before the head is read: nothing delivered after the
    // registration below is missed.
    shared.journal_on.store(true, Ordering::SeqCst);
    let store = shared.store.clone();
    let head = store.journal_head().await?;
    publish_head(shared, head);
    let acked = match store
        .subscriptions()
        .await?
        .into_iter()
        .find(|(n, _)| n == name)
    {
        Some((_, position)) => position,
        None => {
            store.set_subscription(name, head).await?;
            store.flush().await?;
            head
        }
    };
    tracing::debug!(
        subscription = name,
        acked,
        head,
        "durable subscription opened"
    );
    Ok(DurableSubscription {
        name: name.to_string(),
        store,
        head: shared.journal_head.subscribe(),
        acked,
        handed: acked,
    })
}

/// Forgets the durable subscription `name` and the journal entries only it held.
pub(crate) async fn remove(shared: &Shared, name: &str) -> Result<(), ArchError> {
    shared.store.remove_subscription(name).await?;
    shared.store.flush().await
}

/// Raises the published journal head to `head` (never lowers it).
pub(crate) fn publish_head(shared: &Shared, head: u64) {
    shared.journal_head.send_if_modified(|h| {
        if head > *h {
            *h = head;
            true
        } else {
            false
        }
    });
}
