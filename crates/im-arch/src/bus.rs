//! The unified distribution bus: one typed, filtered subscriber model for everything from
//! login to UI rendering. Usable on its own (it is generic over the event type); the client
//! publishes [`ClientEvent`](crate::ClientEvent)s on one.
//!
//! Design, and why:
//! * **Shared payloads.** An event is wrapped in one `Arc` when published; every subscriber
//!   gets a clone of that `Arc`, never a deep copy.
//! * **A subscription index, not a scan.** Subscribers that follow given conversations are
//!   found through a map from conversation to subscribers; subscribers that follow every
//!   conversation, and events that belong to no conversation, through one list per event
//!   kind. Publishing costs the matching subscribers, not all of them.
//! * **An explicit delivery policy per subscriber.** [`DeliveryPolicy::Reliable`] has a bounded
//!   queue and the publisher waits for room: nothing is lost (persistence, QC).
//!   [`DeliveryPolicy::DropOldest`] has a bounded queue that drops its oldest event when full
//!   and tells the subscriber exactly how many it dropped, before the next event, with
//!   [`Routed::lagged`] (UI). Each subscriber has its own queue, so a stalled `DropOldest`
//!   subscriber costs a Reliable one nothing, and no queue grows past its capacity.
//! * **Order.** Each subscriber sees the events it matches in publication order (so, per
//!   conversation order holds per subscriber).
//! * **Ownership.** Dropping a [`BusStream`] removes its subscription at once; dropping the
//!   last [`Bus`] handle ends every stream (after what is queued).
//!
//! No lock is held across an `.await`: a publisher copies the matching queues out of the
//! index, releases it, then pushes.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use futures::Stream;
use im_service::ConversationId;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHasher;
use tokio::sync::Notify;

/// A fast, non-cryptographic hasher for the index: conversation ids are chosen by the
/// vendor and the app, and a flooding attack on a client's own routing table is not a threat
/// worth SipHash's cost on every publish.
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// What the bus needs to know about an event to route it.
pub trait Routed: Send + Sync + 'static {
    /// The event's kind, as an index below [`Routed::KINDS`].
    fn kind(&self) -> usize;

    /// The conversation the event belongs to, if any.
    fn conversation(&self) -> Option<&ConversationId>;

    /// The notice a [`DeliveryPolicy::DropOldest`] subscriber receives after `dropped`
    /// events were dropped from its queue.
    fn lagged(dropped: u64) -> Self;

    /// How many kinds there are (at most 64).
    const KINDS: usize;
}

/// Which events a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Bit `k` set: events of kind `k` are wanted.
    kinds: u64,
    /// `None`: every conversation. `Some`: events of these conversations only; events that
    /// belong to no conversation (connection state, heartbeats …) still pass, by kind.
    conversations: Option<Vec<ConversationId>>,
}

impl Filter {
    /// Every event.
    pub fn all() -> Self {
        Self {
            kinds: u64::MAX,
            conversations: None,
        }
    }

    /// Only events of the given kinds (indices below [`Routed::KINDS`]).
    pub fn kinds(kinds: impl IntoIterator<Item = usize>) -> Self {
        Self {
            kinds: kinds.into_iter().fold(0, |mask, k| mask | bit(k)),
            conversations: None,
        }
    }

    /// Narrows conversation-scoped events to these conversations.
    pub fn in_conversations(
        mut self,
        conversations: impl IntoIterator<Item = ConversationId>,
    ) -> Self {
        let mut list: Vec<ConversationId> = conversations.into_iter().collect();
        list.sort();
        list.dedup();
        self.conversations = Some(list);
        self
    }

    /// Whether `event` passes this filter (the index gives the same answer faster).
    pub fn matches<E: Routed>(&self, event: &E) -> bool {
        self.kinds & bit(event.kind()) != 0
            && match (&self.conversations, event.conversation()) {
                (Some(list), Some(c)) => list.binary_search(c).is_ok(),
                _ => true,
            }
    }
}

fn bit(kind: usize) -> u64 {
    1u64.checked_shl(kind as u32).unwrap_or(0)
}

/// What happens when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryPolicy {
    /// The publisher waits for room: nothing is ever lost.
    Reliable {
        /// Queue capacity in events (at least 1).
        capacity: usize,
    },
    /// The oldest queued event is dropped; the subscriber is told how many with a lagged
    /// notice before its next event.
    DropOldest {
        /// Queue capacity in events (at least 1).
        capacity: usize,
    },
}

impl DeliveryPolicy {
    /// Only the newest event matters (a status indicator): `DropOldest` with capacity 1.
    pub const LATEST: DeliveryPolicy = DeliveryPolicy::DropOldest { capacity: 1 };

    fn capacity(self) -> usize {
        match self {
            DeliveryPolicy::Reliable { capacity } | DeliveryPolicy::DropOldest { capacity } => {
                capacity.max(1)
            }
        }
    }
}

/// One subscriber's queue, shared by the index (publishers) and its stream.
struct Queue<E> {
    /// Key in the index.
    id: u64,
    /// Kind mask, checked per event (the index is by conversation and kind lists).
    kinds: u64,
    policy: DeliveryPolicy,
    capacity: usize,
    state: Mutex<QueueState<E>>,
    /// Reliable publishers waiting for room.
    space: Notify,
    /// The bus-wide count of dropped events (shared by every queue of one bus).
    dropped_total: Arc<AtomicU64>,
}

struct QueueState<E> {
    events: VecDeque<Arc<E>>,
    /// Dropped since the last lagged notice (DropOldest only).
    dropped: u64,
    /// The stream is gone, or the bus is.
    closed: bool,
    /// The stream's task, when it waits for an event.
    waker: Option<Waker>,
}

impl<E> Queue<E> {
    /// Queues `event` unless the queue is full under the Reliable policy; then hands it
    /// back. A closed queue takes (and discards) everything.
    fn try_push(&self, event: Arc<E>) -> Result<(), Arc<E>> {
        if let Some(w) = self.try_push_quietly(event)? {
            w.wake();
        }
        Ok(())
    }

    /// [`Queue::try_push`] that hands back the reader's waker instead of waking it: a
    /// publisher of several events wakes each reader once, after the last.
    fn try_push_quietly(&self, event: Arc<E>) -> Result<Option<Waker>, Arc<E>> {
        let waker = {
            let mut st = self.state.lock();
            if st.closed {
                return Ok(None);
            }
            if st.events.len() >= self.capacity {
                match self.policy {
                    DeliveryPolicy::Reliable { .. } => return Err(event),
                    DeliveryPolicy::DropOldest { .. } => {
                        st.events.pop_front();
                        st.dropped += 1;
                        self.dropped_total.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            st.events.push_back(event);
            st.waker.take()
        };
        Ok(waker)
    }

    async fn push(&self, event: Arc<E>) {
        let mut event = event;
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            // Registered before the check: room made between the check and the await
            // still wakes us.
            notified.as_mut().enable();
            match self.try_push(event) {
                Ok(()) => return,
                Err(back) => event = back,
            }
            notified.await;
        }
    }

    fn close(&self) {
        let waker = {
            let mut st = self.state.lock();
            st.closed = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        self.space.notify_waiters();
    }
}

/// The subscribers of one conversation. Most conversations have one (a chat screen, or
/// one agent): kept inline, so routing an event does not chase a second pointer.
enum Followers<E> {
    One(Arc<Queue<E>>),
    Many(Vec<Arc<Queue<E>>>),
}

impl<E> Followers<E> {
    fn as_slice(&self) -> &[Arc<Queue<E>>] {
        match self {
            Followers::One(q) => std::slice::from_ref(q),
            Followers::Many(v) => v,
        }
    }

    fn add(&mut self, queue: Arc<Queue<E>>) {
        match self {
            Followers::One(first) => *self = Followers::Many(vec![first.clone(), queue]),
            Followers::Many(v) => v.push(queue),
        }
    }

    /// Removes subscription `id`; whether any follower is left.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            Followers::One(q) => q.id != id,
            Followers::Many(v) => {
                v.retain(|q| q.id != id);
                let left = !v.is_empty();
                if let [only] = v.as_slice() {
                    let only = only.clone();
                    *self = Followers::One(only);
                }
                left
            }
        }
    }
}

/// The subscription index.
struct Index<E> {
    /// Subscribers of every conversation, per kind.
    everywhere: Vec<Vec<Arc<Queue<E>>>>,
    /// Subscribers of given conversations.
    by_conversation: FastMap<ConversationId, Followers<E>>,
    /// Subscribers of given conversations, per kind, for events of no conversation.
    scoped_global: Vec<Vec<Arc<Queue<E>>>>,
    /// Each live subscription's conversations (to unindex it).
    subscriptions: FastMap<u64, Option<Vec<ConversationId>>>,
}

struct Inner<E: Routed> {
    index: RwLock<Index<E>>,
    next_id: AtomicU64,
    /// Events dropped from `DropOldest` queues since the bus was made (for QC).
    dropped_total: Arc<AtomicU64>,
    /// Publishers never wait: every queue drops its oldest event when full.
    never_wait: bool,
}

impl<E: Routed> Inner<E> {
    fn unsubscribe(&self, id: u64) {
        let mut index = self.index.write();
        let Some(conversations) = index.subscriptions.remove(&id) else {
            return;
        };
        let keep = |list: &mut Vec<Arc<Queue<E>>>| list.retain(|q| q.id != id);
        match conversations {
            None => index.everywhere.iter_mut().for_each(keep),
            Some(list) => {
                for c in list {
                    if let Some(subs) = index.by_conversation.get_mut(&c)
                        && !subs.remove(id)
                    {
                        index.by_conversation.remove(&c);
                    }
                }
                index.scoped_global.iter_mut().for_each(keep);
            }
        }
    }
}

impl<E: Routed> Drop for Inner<E> {
    fn drop(&mut self) {
        // The last bus handle is gone: streams end once drained.
        let index = self.index.get_mut();
        for q in index
            .everywhere
            .iter()
            .chain(index.scoped_global.iter())
            .flatten()
        {
            q.close();
        }
        for q in index.by_conversation.values().flat_map(Followers::as_slice) {
            q.close();
        }
    }
}

/// The publishing side; cheap to clone (all clones share one index).
pub struct Bus<E: Routed> {
    inner: Arc<Inner<E>>,
}

impl<E: Routed> Clone for Bus<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<E: Routed> Default for Bus<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Routed> std::fmt::Debug for Bus<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("subscribers", &self.subscriber_count())
            .finish()
    }
}

impl<E: Routed> Bus<E> {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::build(false)
    }

    /// A bus whose publishers never wait for a reader: a subscription asked for as
    /// [`DeliveryPolicy::Reliable`] gets a [`DeliveryPolicy::DropOldest`] queue of the same
    /// capacity, so a full queue drops its oldest event and its reader gets the exact
    /// [`Routed::lagged`] notice. For a publisher that must never stall (the client's
    /// supervisor: a reader that stops reading must not stop the connection).
    pub fn never_waiting() -> Self {
        Self::build(true)
    }

    fn build(never_wait: bool) -> Self {
        // Kinds are bits of a u64 mask: checked when the bus type is instantiated.
        const { assert!(E::KINDS <= 64, "at most 64 event kinds") };
        Self {
            inner: Arc::new(Inner {
                index: RwLock::new(Index {
                    everywhere: (0..E::KINDS).map(|_| Vec::new()).collect(),
                    by_conversation: FastMap::default(),
                    scoped_global: (0..E::KINDS).map(|_| Vec::new()).collect(),
                    subscriptions: FastMap::default(),
                }),
                next_id: AtomicU64::new(0),
                dropped_total: Arc::new(AtomicU64::new(0)),
                never_wait,
            }),
        }
    }

    /// A new subscription: the events `filter` passes, under `policy`.
    pub fn subscribe(&self, filter: Filter, policy: DeliveryPolicy) -> BusStream<E> {
        let policy = match policy {
            DeliveryPolicy::Reliable { capacity } if self.inner.never_wait => {
                DeliveryPolicy::DropOldest { capacity }
            }
            p => p,
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue {
            id,
            kinds: filter.kinds,
            policy,
            capacity: policy.capacity(),
            state: Mutex::new(QueueState {
                events: VecDeque::new(),
                dropped: 0,
                closed: false,
                waker: None,
            }),
            space: Notify::new(),
            dropped_total: self.inner.dropped_total.clone(),
        });
        let kinds = (0..E::KINDS).filter(|&k| filter.kinds & bit(k) != 0);
        let mut index = self.inner.index.write();
        match &filter.conversations {
            None => kinds.for_each(|k| index.everywhere[k].push(queue.clone())),
            Some(list) => {
                for c in list {
                    match index.by_conversation.entry(c.clone()) {
                        std::collections::hash_map::Entry::Occupied(mut e) => {
                            e.get_mut().add(queue.clone())
                        }
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(Followers::One(queue.clone()));
                        }
                    }
                }
                kinds.for_each(|k| index.scoped_global[k].push(queue.clone()));
            }
        }
        index.subscriptions.insert(id, filter.conversations);
        drop(index);
        BusStream {
            queue,
            local: VecDeque::new(),
            bus: Arc::downgrade(&self.inner),
        }
    }

    /// Delivers `event` to every matching subscriber, in publication order, waiting for
    /// room in the queues of Reliable subscribers. Returns how many subscribers got it.
    pub async fn publish(&self, event: E) -> usize {
        self.publish_shared(Arc::new(event)).await
    }

    /// [`Bus::publish`] of an event the caller already shares (no new allocation).
    pub async fn publish_shared(&self, event: Arc<E>) -> usize {
        let mut full = Vec::new();
        let delivered = self.visit(&event, |q| {
            if let Err(back) = q.try_push(event.clone()) {
                full.push((q.clone(), back));
            }
        });
        // The index lock is released: wait for room in the full Reliable queues.
        for (q, event) in full {
            q.push(event).await;
        }
        delivered
    }

    /// [`Bus::publish`] of several events, in order: each subscriber sees them in this order
    /// and is woken once, after the last of them it matches, instead of once per event (a
    /// reader woken per event costs a thread wake-up per event: 9% of an offline sync's CPU,
    /// issue 22). Waits for room in full Reliable queues as [`Bus::publish`] does (then the
    /// readers woken so far are woken first). Returns how many deliveries were made.
    pub async fn publish_all(&self, events: impl IntoIterator<Item = E>) -> usize {
        let mut wakers: Vec<Waker> = Vec::new();
        let mut delivered = 0;
        for event in events {
            let event = Arc::new(event);
            let mut full = Vec::new();
            delivered += self.visit(&event, |q| match q.try_push_quietly(event.clone()) {
                Ok(Some(w)) => wakers.push(w),
                Ok(None) => {}
                Err(back) => full.push((q.clone(), back)),
            });
            if !full.is_empty() {
                // Readers must drain before there is room: wake them, then wait.
                wakers.drain(..).for_each(Waker::wake);
                for (q, event) in full {
                    q.push(event).await;
                }
            }
        }
        wakers.into_iter().for_each(Waker::wake);
        delivered
    }

    /// [`Bus::publish`] without waiting: a Reliable subscriber whose queue is full does not
    /// get the event; returns how many did not (0 unless a Reliable queue was full).
    pub fn try_publish(&self, event: E) -> usize {
        self.try_publish_shared(Arc::new(event))
    }

    /// [`Bus::try_publish`] of an event the caller already shares.
    pub fn try_publish_shared(&self, event: Arc<E>) -> usize {
        let mut refused = 0;
        self.visit(&event, |q| {
            if q.try_push(event.clone()).is_err() {
                refused += 1;
            }
        });
        refused
    }

    /// Calls `f` on every matching queue under the index's read lock (never across an
    /// await: `f` is synchronous); returns how many matched.
    fn visit(&self, event: &E, mut f: impl FnMut(&Arc<Queue<E>>)) -> usize {
        let kind = event.kind();
        let mask = bit(kind);
        let index = self.inner.index.read();
        let mut n = 0;
        let mut each = |q: &Arc<Queue<E>>| {
            n += 1;
            f(q);
        };
        if let Some(subs) = index.everywhere.get(kind) {
            subs.iter().for_each(&mut each);
        }
        match event.conversation() {
            Some(c) => {
                if let Some(subs) = index.by_conversation.get(c) {
                    subs.as_slice()
                        .iter()
                        .filter(|q| q.kinds & mask != 0)
                        .for_each(&mut each);
                }
            }
            None => {
                if let Some(subs) = index.scoped_global.get(kind) {
                    subs.iter().for_each(&mut each);
                }
            }
        }
        n
    }

    /// Events dropped from `DropOldest` subscribers' queues since the bus was made.
    pub fn dropped_total(&self) -> u64 {
        self.inner.dropped_total.load(Ordering::Relaxed)
    }

    /// A handle on the drop count that does not keep the bus alive (for observers).
    pub fn dropped_counter(&self) -> DroppedCounter {
        DroppedCounter(self.inner.dropped_total.clone())
    }

    /// Live subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.inner.index.read().subscriptions.len()
    }
}

/// Reads a bus's drop count ([`Bus::dropped_total`]) without keeping the bus alive.
#[derive(Debug, Clone)]
pub struct DroppedCounter(Arc<AtomicU64>);

impl DroppedCounter {
    /// Events dropped so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One subscription's events, as a [`Stream`]. Dropping it unsubscribes.
pub struct BusStream<E: Routed> {
    queue: Arc<Queue<E>>,
    /// Events taken from the shared queue in one swap and not yet returned: the reader
    /// takes its lock once per backlog, not once per event. At most one queue's capacity,
    /// so a subscription holds at most twice its capacity.
    local: VecDeque<Arc<E>>,
    /// Weak: a stream must not keep the bus (and so every other stream) alive.
    bus: std::sync::Weak<Inner<E>>,
}

impl<E: Routed> std::fmt::Debug for BusStream<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusStream")
            .field("id", &self.queue.id)
            .field("policy", &self.queue.policy)
            .finish()
    }
}

impl<E: Routed> BusStream<E> {
    /// The next event, or `None` once the bus is gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<Arc<E>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Events queued now (a UI can show a backlog).
    pub fn queued(&self) -> usize {
        self.local.len() + self.queue.state.lock().events.len()
    }

    /// Everything queued now, without waiting, in order (a lagged notice where events were
    /// dropped): one lock for the whole backlog, for a UI that renders per frame.
    pub fn drain_now(&mut self) -> Vec<Arc<E>> {
        let mut out: Vec<Arc<E>> = self.local.drain(..).collect();
        {
            let mut st = self.queue.state.lock();
            if st.dropped > 0 {
                let dropped = std::mem::take(&mut st.dropped);
                out.push(Arc::new(E::lagged(dropped)));
            }
            out.extend(st.events.drain(..));
        }
        if matches!(self.queue.policy, DeliveryPolicy::Reliable { .. }) {
            self.queue.space.notify_waiters();
        }
        out
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<E>>> {
        if let Some(event) = self.local.pop_front() {
            return Poll::Ready(Some(event));
        }
        let took = {
            let mut st = self.queue.state.lock();
            if st.dropped > 0 {
                let dropped = std::mem::take(&mut st.dropped);
                return Poll::Ready(Some(Arc::new(E::lagged(dropped))));
            }
            if st.events.is_empty() {
                if st.closed {
                    return Poll::Ready(None);
                }
                match &mut st.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            // Take the whole backlog; the (empty) local buffer's allocation goes back.
            std::mem::swap(&mut st.events, &mut self.local);
            true
        };
        if took && matches!(self.queue.policy, DeliveryPolicy::Reliable { .. }) {
            // The queue is empty again: every waiting publisher has room.
            self.queue.space.notify_waiters();
        }
        Poll::Ready(self.local.pop_front())
    }
}

impl<E: Routed> Stream for BusStream<E> {
    type Item = Arc<E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arc<E>>> {
        self.poll_event(cx)
    }
}

impl<E: Routed> Drop for BusStream<E> {
    fn drop(&mut self) {
        // Release publishers blocked on this queue, then leave the index.
        self.queue.close();
        if let Some(bus) = self.bus.upgrade() {
            bus.unsubscribe(self.queue.id);
        }
    }
}
