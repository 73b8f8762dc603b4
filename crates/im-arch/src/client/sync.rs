//! The sync engine: the supervisor's state of what has been delivered, and the one path by
//! which a received message reaches the app. It carries the exactly-once rules:
//!
//! * persisted before distributed or acknowledged: a batch is stored before anything of it
//!   is published, and flushed before the vendor is told it may forget it (the offline ack);
//! * once each: with sequence numbers the [`Sequencer`] releases each sequence once and in
//!   order; without them the store is the dedup authority, and the in-flight record
//!   ([`Store::begin_delivery`](crate::Store::begin_delivery)) tells a message a crash kept from the app from a duplicate;
//! * the delivery is recorded (cursors, in-flight record ended, journal entries) in one
//!   atomic write ([`Store::commit_delivery`](crate::Store::commit_delivery)) after the events are published, so a crash
//!   before it repeats the delivery once and after it never;
//! * the cursor never moves past a hole, and a detected hole is always fetched (or skipped,
//!   when the vendor no longer has it, rather than stalling);
//! * with [`Capability::ChangeFeed`] the pass pulls the changes it missed after the
//!   messages and before going online (`lifecycle::pull_changes`);
//! * my own message sent by this device (acknowledged to this process, or still in the
//!   outbox) is stored quietly whichever way it comes back: the UI shows its local echo,
//!   never a second copy; my messages from my other devices are delivered once, as mine.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use im_service::{
    Capability, ConversationId, HistoryQuery, HistoryRange, HistoryScope, Message, Origin,
    ReceivedMessage, Seq, ServerMsgId, Timestamp,
};
use tracing::Instrument;

use crate::conversation_list::ConversationSummary;
use crate::conversations;
use crate::durable::publish_head;
use crate::error::ArchError;
use crate::events::{ClientEvent, SyncProgress};
use crate::sequencer::Sequencer;
use crate::shared::Shared;
use crate::store::SyncCursor;

/// Sync state owned by the supervisor: ordering per conversation and delivery cursors.
pub(crate) struct SyncEngine {
    /// Newest server time known delivered when the client last went online.
    synced_to: Option<Timestamp>,
    sequencer: Sequencer,
    cursors: HashMap<ConversationId, SyncCursor>,
    sequences: bool,
    /// Messages the previous process recorded as in flight: stored, perhaps never
    /// delivered. Each is delivered once, whichever way it comes back.
    in_flight: HashSet<ServerMsgId>,
}

impl SyncEngine {
    pub(crate) async fn load(shared: &Shared) -> Self {
        let cursors: HashMap<ConversationId, SyncCursor> = match shared.store.cursors().await {
            Ok(c) => c.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read sync cursors; starting from scratch");
                HashMap::new()
            }
        };
        let sequencer = Sequencer::new(
            cursors
                .iter()
                .filter_map(|(c, cur)| cur.seq.map(|s| (c.clone(), s))),
        );
        let sequences = shared
            .vendor
            .capabilities()
            .supports(Capability::SequenceNumbers);
        // Where the last completed sync pass left off. Not the newest cursor: a pass killed
        // after delivering newer offline messages would hide an older message the vendor
        // counts as delivered (pushed, acknowledged, lost with the process). A store with
        // cursors but no mark never completed a pass: catch up from the beginning (the
        // query is capped at `catch_up_pages`).
        let synced_to = match shared.store.sync_mark().await {
            Ok(Some(mark)) => Some(mark),
            Ok(None) if cursors.is_empty() => None,
            Ok(None) => Some(Timestamp::from_millis(0)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the sync mark; catching up from the start");
                Some(Timestamp::from_millis(0))
            }
        };
        match (
            shared.store.subscriptions().await,
            shared.store.journal_head().await,
        ) {
            (Ok(subs), Ok(head)) => {
                if !subs.is_empty() {
                    shared.journal_on.store(true, Ordering::SeqCst);
                }
                publish_head(shared, head);
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot read durable subscriptions");
                shared
                    .distributor
                    .publish(ClientEvent::StoreFailed {
                        op: "subscriptions",
                        error: e,
                    })
                    .await;
            }
        }
        let in_flight = match shared.store.in_flight().await {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the in-flight delivery record");
                HashSet::new()
            }
        };
        Self {
            synced_to,
            sequencer,
            cursors,
            sequences,
            in_flight,
        }
    }

    /// Persists, orders, deduplicates and distributes `messages`; advances cursors.
    /// Returns how many were delivered.
    pub(crate) async fn ingest(
        &mut self,
        shared: &Shared,
        messages: Vec<Message>,
        origin: Origin,
    ) -> Result<usize, ArchError> {
        self.ingest_except(shared, messages, origin, &HashSet::new())
            .await
    }

    /// [`SyncEngine::ingest`], publishing everything released except the messages `quiet`.
    pub(crate) async fn ingest_except(
        &mut self,
        shared: &Shared,
        mut messages: Vec<Message>,
        origin: Origin,
        quiet: &HashSet<ServerMsgId>,
    ) -> Result<usize, ArchError> {
        if messages.is_empty() {
            return Ok(0);
        }
        // Without sequences the store is the dedup authority, and it cannot tell a
        // duplicate from a message a crashed process stored but never delivered: record
        // what is about to be delivered first (cleared with the cursors below).
        if !self.sequences {
            let ids: Vec<_> = messages.iter().map(|m| m.server_id.clone()).collect();
            shared.store.begin_delivery(&ids).await?;
        }
        // Persist first: nothing is distributed or acknowledged that is not stored.
        let fresh = shared.store.put_messages(&messages).await?;
        let mut ready = Vec::new();
        let mut unsequenced = Vec::new();
        let mut tagged: Vec<(Message, bool)> = messages.drain(..).zip(fresh).collect();
        tagged.sort_by(|(a, _), (b, _)| (&a.conversation, a.seq).cmp(&(&b.conversation, b.seq)));
        for (m, is_new) in tagged {
            match m.seq {
                // The sequencer decides delivery: a stored-but-undelivered message (crash
                // between persist and deliver) is still released exactly once.
                Some(_) if self.sequences => ready.extend(self.sequencer.admit(m)),
                // Without sequences the store is the dedup authority, except for what the
                // previous process left in flight (stored, maybe never delivered).
                _ if is_new || self.in_flight.remove(&m.server_id) => unsequenced.push(m),
                _ => {}
            }
        }
        // Vendors give pages newest first (the contract); without sequences, messages whose
        // server times tie keep the vendor's own order: reversed to oldest first, then a
        // stable sort by time (never by id, which is random on some vendors).
        unsequenced.reverse();
        unsequenced.sort_by_key(|m| m.server_time);
        ready.extend(unsequenced);
        let echoes = self.own_echoes(shared, &ready).await?;
        let mut touched: HashMap<ConversationId, SyncCursor> = HashMap::new();
        let journal_on = shared.journal_on.load(Ordering::SeqCst);
        let mut journal = Vec::new();
        let count = ready.len();
        // The batch's events, published together (each reader woken once per batch), and
        // each touched conversation's row once, as it stands after the batch (a row is a
        // snapshot: the ones in between say nothing the last does not).
        let mut events = Vec::with_capacity(count + 1);
        let mut rows: Vec<ConversationSummary> = Vec::new();
        let mut row_of: HashMap<ConversationId, usize> = HashMap::new();
        for m in ready {
            let cur = self.cursors.entry(m.conversation.clone()).or_default();
            if self.sequences {
                cur.seq = Some(self.sequencer.delivered(&m.conversation));
            }
            cur.time = cur.time.max(m.server_time);
            touched.insert(m.conversation.clone(), *cur);
            let row = conversations::on_delivered(shared, &m).await;
            match row_of.get(&m.conversation) {
                Some(&i) => rows[i] = row,
                None => {
                    row_of.insert(m.conversation.clone(), rows.len());
                    rows.push(row);
                }
            }
            if quiet.contains(&m.server_id) || echoes.contains(&m.server_id) {
                continue;
            }
            if journal_on {
                journal.push((m.server_id.clone(), origin));
            }
            events.push(ClientEvent::Message(ReceivedMessage { message: m, origin }));
        }
        events.extend(rows.into_iter().map(ClientEvent::ConversationChanged));
        shared.distributor.publish_all(events).await;
        // Also when nothing was delivered: saving cursors ends the in-flight record. The
        // journal entries go in the same atomic write as the cursors: a delivery is
        // recorded once, or (after a crash before this point) repeated once.
        if !touched.is_empty() || !self.sequences {
            let batch: Vec<(ConversationId, SyncCursor)> = touched.into_iter().collect();
            let head = shared.store.commit_delivery(&batch, &journal).await?;
            if !journal.is_empty() {
                publish_head(shared, head);
            }
        }
        Ok(count)
    }

    /// Which of `ready` are this device's own sends (noted as sent by this process, or
    /// still in its outbox): stored and ordered like any message, but not announced again.
    /// My messages from my other devices are not among them: they are delivered as mine.
    async fn own_echoes(
        &self,
        shared: &Shared,
        ready: &[Message],
    ) -> Result<HashSet<ServerMsgId>, ArchError> {
        let me = shared.credentials.lock().user.clone();
        let mut echoes = HashSet::new();
        let mut unknown = Vec::new();
        {
            let sent = shared.sent_here.lock();
            for m in ready.iter().filter(|m| m.sender == me) {
                if sent.contains(&m.client_id) {
                    echoes.insert(m.server_id.clone());
                } else {
                    unknown.push(m);
                }
            }
        }
        if !unknown.is_empty() {
            // Sent by this device but not acknowledged to it yet (a lost answer, or a crash
            // after the vendor stored it): the outbox still has it and resends it under the
            // same client id.
            let queued: HashSet<_> = shared
                .store
                .outbox()
                .await?
                .into_iter()
                .map(|i| i.message.client_id)
                .collect();
            for m in unknown {
                if queued.contains(&m.client_id) {
                    echoes.insert(m.server_id.clone());
                }
            }
        }
        Ok(echoes)
    }

    /// Fetches every open hole (failure class 2: a detected gap is always fetched).
    pub(crate) async fn fill_gaps(&mut self, shared: &Shared) -> Result<usize, ArchError> {
        let mut delivered = 0;
        // Each round closes at least the lowest hole of every conversation; bounded so a
        // vendor that never returns a message cannot spin us forever.
        for _ in 0..64 {
            let gaps = self.sequencer.gaps();
            if gaps.is_empty() {
                break;
            }
            for gap in gaps {
                let missing = gap.before.0.saturating_sub(gap.after.0 + 1);
                let after = if missing > shared.config.gap_fill_limit {
                    let skip_to = Seq(gap.before.0 - shared.config.gap_fill_limit - 1);
                    let released = self.sequencer.skip_to(&gap.conversation, skip_to);
                    delivered += self.ingest(shared, released, Origin::History).await?;
                    skip_to
                } else {
                    gap.after
                };
                let range = HistoryRange::Seq {
                    after: Some(after),
                    before: Some(gap.before),
                };
                let fetched = self
                    .pull_range(
                        shared,
                        HistoryScope::Conversation(gap.conversation.clone()),
                        range,
                        u32::MAX,
                    )
                    .await?;
                let n = fetched.len();
                if n == 0 {
                    // The vendor no longer has it (retention): skip the hole rather than stall.
                    let released = self
                        .sequencer
                        .skip_to(&gap.conversation, Seq(gap.before.0 - 1));
                    delivered += self.ingest(shared, released, Origin::Online).await?;
                    tracing::warn!(conversation = %gap.conversation, after = gap.after.0, before = gap.before.0, "hole not served by the vendor; skipped");
                    continue;
                }
                delivered += self.ingest(shared, fetched, Origin::Online).await?;
                shared
                    .distributor
                    .publish(ClientEvent::Sync(SyncProgress::GapFilled { messages: n }))
                    .await;
            }
        }
        Ok(delivered)
    }

    /// Every message of a range, page by page, at most `max_pages` pages.
    async fn pull_range(
        &self,
        shared: &Shared,
        scope: HistoryScope,
        range: HistoryRange,
        max_pages: u32,
    ) -> Result<Vec<Message>, ArchError> {
        let mut out = Vec::new();
        let mut cursor = None;
        for _ in 0..max_pages {
            let query = HistoryQuery {
                scope: scope.clone(),
                range,
                cursor: cursor.clone(),
                limit: shared.config.page_size,
            };
            let page = shared
                .retry("pull_history", || shared.vendor.pull_history(&query))
                .await?;
            out.extend(page.messages);
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(out)
    }

    /// ACK-online: drain the offline queue (persist, then acknowledge each batch), catch up
    /// conversations the vendor does not queue for us, fill holes, then go online.
    pub(crate) async fn sync_pass(
        &mut self,
        shared: &Shared,
        login_time: Option<Timestamp>,
    ) -> Result<(), ArchError> {
        let span = tracing::info_span!("sync_pass", vendor = shared.vendor.name());
        async {
            shared
                .distributor
                .publish(ClientEvent::Sync(SyncProgress::Started))
                .await;
            let caps = shared.vendor.capabilities().clone();
            let mut delivered = self.recover_in_flight(shared).await?;
            if caps.supports(Capability::OfflineQueue) {
                loop {
                    let batch = shared
                        .retry("pull_offline", || {
                            shared.vendor.pull_offline(shared.config.offline_batch)
                        })
                        .await?;
                    let n = batch.messages.len();
                    let left = batch.left;
                    // Persist and hand the batch to the sequencer before acknowledging it:
                    // once acked, the vendor will not offer it again, so a pass that fails
                    // later must still have it (held until the holes below it close).
                    delivered += self.ingest(shared, batch.messages, Origin::Offline).await?;
                    if let Some(ack) = &batch.ack {
                        // Durable before the vendor forgets them (failure class 4/8: a
                        // crash after the ack must not lose the batch).
                        shared.store.flush().await?;
                        shared
                            .retry("ack_offline", || shared.vendor.ack_offline(ack))
                            .await?;
                    }
                    shared
                        .distributor
                        .publish(ClientEvent::Sync(SyncProgress::Page { messages: n, left }))
                        .await;
                    if left == 0 || n == 0 {
                        break;
                    }
                }
            }
            // Pushes lost in flight when a connection died are in neither the offline queue
            // nor any later push: ask for everything after each cursor (OpenIM's max-seq
            // check). Vendors without an offline queue rely on this entirely.
            let missed = self
                .catch_up(shared, !caps.supports(Capability::OfflineQueue))
                .await?;
            delivered += self.ingest(shared, missed, Origin::Offline).await?;
            delivered += self.fill_gaps(shared).await?;
            // What changed while away (recalls, edits, deletions, read positions), after
            // the messages it may name and before live pushes: applied and flushed before
            // announced, the feed's cursor saved after.
            if caps.supports(Capability::ChangeFeed) {
                crate::lifecycle::pull_changes(shared).await?;
            }
            shared
                .retry("go_online", || shared.vendor.go_online())
                .await?;
            // Everything stored before this login is in; pushes from now on are newer.
            // (The catch-up above covered pushes lost since the previous mark.) Without the
            // vendor's clock, the newest delivered message is the best mark we have.
            let newest = self.cursors.values().map(|c| c.time).max();
            // A first pass that delivered nothing on a vendor that tells no time (XMPP)
            // has no mark yet: the beginning is the mark, else every later reconnect would
            // skip the catch-up by time, and a push lost in the meantime (a message stored
            // offline and handed to my other device first) would never arrive here.
            self.synced_to = login_time
                .or(newest)
                .or(self.synced_to)
                .or(Some(Timestamp::from_millis(0)));
            if let Some(mark) = self.synced_to {
                // Flushed: a live push after this point is confirmed to the vendor on
                // receipt, and only the mark tells a restarted client to catch up by time
                // from here. Losing a later mark only widens the next catch-up, but losing
                // the first one (a fresh store) skipped the catch-up entirely and lost such
                // a push for good (found by `cargo xtask sim`: 2 steps, send then crash).
                shared.store.set_sync_mark(mark).await?;
                shared.store.flush().await?;
            }
            shared
                .distributor
                .publish(ClientEvent::Sync(SyncProgress::Finished { delivered }))
                .await;
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Delivers what the previous process stored but may not have delivered, from the
    /// store: the vendor may never offer it again (a crash after its acknowledgement).
    async fn recover_in_flight(&mut self, shared: &Shared) -> Result<usize, ArchError> {
        if self.in_flight.is_empty() || self.sequences {
            return Ok(0);
        }
        let mut stored = Vec::new();
        for id in self.in_flight.clone() {
            match shared.store.message(&id).await? {
                Some(m) => stored.push(m),
                // Recorded but never stored: not ours yet, the vendor still has it.
                None => {
                    self.in_flight.remove(&id);
                }
            }
        }
        tracing::info!(
            messages = stored.len(),
            "delivering messages left in flight"
        );
        self.ingest(shared, stored, Origin::Offline).await
    }

    /// Everything after the cursors of the most recently active conversations (all of them
    /// when `all`), by sequence where the vendor has it, else by time.
    async fn catch_up(&self, shared: &Shared, all: bool) -> Result<Vec<Message>, ArchError> {
        let caps = shared.vendor.capabilities().clone();
        let mut recent: Vec<(&ConversationId, &SyncCursor)> = self.cursors.iter().collect();
        recent.sort_by_key(|(_, c)| std::cmp::Reverse(c.time));
        if !all {
            recent.truncate(shared.config.catch_up_conversations);
        }
        let mut out = Vec::new();
        // A conversation whose very first push was lost has no cursor yet: a query over all
        // conversations since the last time we were up to date finds it.
        if let (Some(from), true) = (self.synced_to, caps.supports(Capability::HistoryByTime)) {
            let range = HistoryRange::Time {
                from,
                to: Timestamp::from_millis(i64::MAX),
            };
            out.extend(
                self.pull_range(
                    shared,
                    HistoryScope::All,
                    range,
                    shared.config.catch_up_pages,
                )
                .await?,
            );
        }
        // Per conversation only where it is cheap (by sequence) or the only way (no offline
        // queue). The query above runs for every vendor with history by time: a push the
        // vendor counts as delivered (e.g. XEP-0198 acknowledged) but a crash kept from the
        // store is in no offline queue, and the offline pull has already moved the cursors
        // past it.
        if !all && !caps.supports(Capability::HistoryBySeq) {
            return Ok(out);
        }
        for (conversation, cursor) in recent {
            let range = match (
                cursor.seq,
                caps.supports(Capability::HistoryBySeq),
                caps.supports(Capability::HistoryByTime),
            ) {
                (Some(seq), true, _) => HistoryRange::Seq {
                    after: Some(seq),
                    before: None,
                },
                (_, _, true) => HistoryRange::Time {
                    from: cursor.time,
                    to: Timestamp::from_millis(i64::MAX),
                },
                _ => continue,
            };
            out.extend(
                self.pull_range(
                    shared,
                    HistoryScope::Conversation(conversation.clone()),
                    range,
                    u32::MAX,
                )
                .await?,
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! The sync engine's own invariants, against `MemoryStore` (wrapped to record the order
    //! of its writes) and a mockall vendor. Each test runs under one overall deadline.

    use std::collections::HashMap;
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use im_service::{
        Capabilities, Capability, ClientMsgId, Content, ConversationId, Credentials, Message,
        MockVendor, OfflineAck, OfflineBatch, Origin, Seq, ServerMsgId, ServiceError, SystemClock,
        Timestamp, UserId,
    };
    use parking_lot::Mutex;

    use super::SyncEngine;
    use crate::MemoryStore;
    use crate::bus::{BusStream, DeliveryPolicy, Filter};
    use crate::config::ClientConfig;
    use crate::error::ArchError;
    use crate::events::ClientEvent;
    use crate::shared::Shared;
    use crate::store::{
        ChangeOutcome, ConversationState, DurableEvent, MessageRevision, OutboxItem, Store,
        SyncCursor,
    };
    use im_service::{ChangeBatch, ChangeCursor, ChangeKind, MessageChange, ReadReceipt};

    /// Every wait of these tests ends by this deadline at the latest, as a named failure.
    const DEADLINE: Duration = Duration::from_secs(20);

    async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
        match tokio::time::timeout(DEADLINE, f).await {
            Ok(v) => v,
            Err(_) => panic!("{what}: not done within {DEADLINE:?}"),
        }
    }

    /// A `MemoryStore` that logs its writes (and the vendor's acks, through the shared log)
    /// in order, can fail its next `commit_delivery` (a crash between publishing and
    /// recording a delivery), and notes at each commit how many events a probe subscriber
    /// had been handed and what the in-flight record held.
    #[derive(Default)]
    struct Recording {
        inner: MemoryStore,
        log: Arc<Mutex<Vec<String>>>,
        fail_next_commit: AtomicBool,
        probe: Mutex<Option<BusStream<ClientEvent>>>,
    }

    impl Recording {
        fn note(&self, what: impl Into<String>) {
            self.log.lock().push(what.into());
        }
    }

    #[async_trait]
    impl Store for Recording {
        async fn flush(&self) -> Result<(), ArchError> {
            self.note("flush");
            if let Some(p) = self.probe.lock().as_ref() {
                self.note(format!("flush(handed={})", p.queued()));
            }
            self.inner.flush().await
        }
        async fn put_messages(&self, messages: &[Message]) -> Result<Vec<bool>, ArchError> {
            self.note(format!("put_messages({})", messages.len()));
            self.inner.put_messages(messages).await
        }
        async fn message(&self, id: &ServerMsgId) -> Result<Option<Message>, ArchError> {
            self.inner.message(id).await
        }
        async fn latest(
            &self,
            conversation: &ConversationId,
            limit: usize,
        ) -> Result<Vec<Message>, ArchError> {
            self.inner.latest(conversation, limit).await
        }
        async fn cursor(
            &self,
            conversation: &ConversationId,
        ) -> Result<Option<SyncCursor>, ArchError> {
            self.inner.cursor(conversation).await
        }
        async fn commit_delivery(
            &self,
            cursors: &[(ConversationId, SyncCursor)],
            journal: &[(ServerMsgId, Origin)],
        ) -> Result<u64, ArchError> {
            let handed = self.probe.lock().as_ref().map_or(0, |p| p.queued());
            let in_flight = self.inner.in_flight().await?.len();
            self.note(format!(
                "commit_delivery(handed={handed}, in_flight={in_flight})"
            ));
            if self.fail_next_commit.swap(false, Ordering::SeqCst) {
                return Err(ArchError::Store("killed before the commit".into()));
            }
            self.inner.commit_delivery(cursors, journal).await
        }
        async fn journal_head(&self) -> Result<u64, ArchError> {
            self.inner.journal_head().await
        }
        async fn journal_after(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<DurableEvent>, ArchError> {
            self.inner.journal_after(after, limit).await
        }
        async fn subscriptions(&self) -> Result<Vec<(String, u64)>, ArchError> {
            self.inner.subscriptions().await
        }
        async fn set_subscription(&self, name: &str, position: u64) -> Result<(), ArchError> {
            self.inner.set_subscription(name, position).await
        }
        async fn remove_subscription(&self, name: &str) -> Result<(), ArchError> {
            self.inner.remove_subscription(name).await
        }
        async fn begin_delivery(&self, ids: &[ServerMsgId]) -> Result<(), ArchError> {
            self.note(format!("begin_delivery({})", ids.len()));
            self.inner.begin_delivery(ids).await
        }
        async fn in_flight(&self) -> Result<Vec<ServerMsgId>, ArchError> {
            self.inner.in_flight().await
        }
        async fn cursors(&self) -> Result<Vec<(ConversationId, SyncCursor)>, ArchError> {
            self.inner.cursors().await
        }
        async fn sync_mark(&self) -> Result<Option<Timestamp>, ArchError> {
            self.inner.sync_mark().await
        }
        async fn set_sync_mark(&self, mark: Timestamp) -> Result<(), ArchError> {
            self.inner.set_sync_mark(mark).await
        }
        async fn page_before(
            &self,
            conversation: &ConversationId,
            before: Option<&Message>,
            limit: usize,
        ) -> Result<Vec<Message>, ArchError> {
            self.inner.page_before(conversation, before, limit).await
        }
        async fn page_after(
            &self,
            conversation: &ConversationId,
            after: &Message,
            limit: usize,
        ) -> Result<Vec<Message>, ArchError> {
            self.inner.page_after(conversation, after, limit).await
        }
        async fn put_outbox(&self, item: &OutboxItem) -> Result<(), ArchError> {
            self.inner.put_outbox(item).await
        }
        async fn remove_outbox(&self, id: &ClientMsgId) -> Result<(), ArchError> {
            self.inner.remove_outbox(id).await
        }
        async fn outbox(&self) -> Result<Vec<OutboxItem>, ArchError> {
            self.inner.outbox().await
        }
        async fn put_conversation_state(&self, state: &ConversationState) -> Result<(), ArchError> {
            self.inner.put_conversation_state(state).await
        }
        async fn conversation_states(&self) -> Result<Vec<ConversationState>, ArchError> {
            self.inner.conversation_states().await
        }
        async fn apply_change(&self, change: &MessageChange) -> Result<ChangeOutcome, ArchError> {
            self.note(format!("apply_change({})", change.target));
            self.inner.apply_change(change).await
        }
        async fn revision(&self, id: &ServerMsgId) -> Result<Option<MessageRevision>, ArchError> {
            self.inner.revision(id).await
        }
        async fn change_cursor(&self) -> Result<Option<ChangeCursor>, ArchError> {
            self.inner.change_cursor().await
        }
        async fn set_change_cursor(&self, cursor: &ChangeCursor) -> Result<(), ArchError> {
            self.note(format!("set_change_cursor({:?})", cursor.0));
            self.inner.set_change_cursor(cursor).await
        }
        async fn put_read_receipt(&self, receipt: &ReadReceipt) -> Result<bool, ArchError> {
            self.inner.put_read_receipt(receipt).await
        }
        async fn read_receipts(
            &self,
            conversation: &ConversationId,
        ) -> Result<Vec<ReadReceipt>, ArchError> {
            self.inner.read_receipts(conversation).await
        }
    }

    /// Capabilities of a vendor with an offline queue, with or without sequence numbers,
    /// and no history (so a sync pass makes no catch-up queries).
    fn caps(sequences: bool) -> Capabilities {
        let caps = Capabilities::none().with(Capability::OfflineQueue);
        if sequences {
            caps.with(Capability::SequenceNumbers)
        } else {
            caps
        }
    }

    /// A mock vendor with `caps` whose other answers the test adds.
    fn vendor(caps: Capabilities) -> MockVendor {
        let mut v = MockVendor::new();
        v.expect_capabilities().return_const(caps);
        v.expect_name().return_const("mock".to_string());
        v
    }

    fn shared(vendor: MockVendor, store: Arc<Recording>) -> Arc<Shared> {
        Arc::new(Shared::new(
            Arc::new(vendor),
            store,
            ClientConfig::default(),
            HashMap::new(),
            Arc::new(SystemClock),
            None,
            Credentials::new("me", "token"),
        ))
    }

    fn conversation() -> ConversationId {
        ConversationId::group("g")
    }

    /// Message `n` from a peer: sequence `n` (when `sequences`), server time `n` ms.
    fn msg(n: u64, sequences: bool) -> Message {
        Message {
            server_id: ServerMsgId::new(format!("m{n}")),
            client_id: ClientMsgId::new(format!("c{n}")),
            conversation: conversation(),
            sender: UserId::new("peer"),
            seq: sequences.then_some(Seq(n)),
            server_time: Timestamp::from_millis(n as i64),
            client_time: Timestamp::from_millis(0),
            content: Content::text(format!("#{n}")),
        }
    }

    fn subscribe(shared: &Shared) -> BusStream<ClientEvent> {
        shared.distributor.subscribe(
            Filter::all(),
            DeliveryPolicy::DropOldest { capacity: 10_000 },
        )
    }

    /// The ids of the messages a subscriber was handed, in order.
    fn delivered(sub: &mut BusStream<ClientEvent>) -> Vec<String> {
        sub.drain_now()
            .iter()
            .filter_map(|e| match &**e {
                ClientEvent::Message(r) => Some(r.message.server_id.to_string()),
                _ => None,
            })
            .collect()
    }

    /// A page the vendor delivers twice (an offline batch whose ack was lost, a push racing
    /// the offline pull) is stored once and handed to the app once, with and without
    /// sequence numbers.
    #[tokio::test]
    async fn a_page_delivered_twice_is_stored_and_emitted_once() {
        for sequences in [true, false] {
            within("duplicate page", async {
                let store = Arc::new(Recording::default());
                let shared = shared(vendor(caps(sequences)), store.clone());
                let mut sub = subscribe(&shared);
                let mut engine = SyncEngine::load(&shared).await;
                // Newest first, as vendors page.
                let page: Vec<Message> = (1..=3).rev().map(|n| msg(n, sequences)).collect();
                let first = engine
                    .ingest(&shared, page.clone(), Origin::Offline)
                    .await
                    .unwrap();
                let again = engine.ingest(&shared, page, Origin::Online).await.unwrap();
                assert_eq!(
                    (first, again),
                    (3, 0),
                    "delivered counts (sequences: {sequences})"
                );
                assert_eq!(
                    delivered(&mut sub),
                    ["m1", "m2", "m3"],
                    "each message handed to the app once, in order (sequences: {sequences})"
                );
                let stored = store.inner.latest(&conversation(), 100).await.unwrap();
                assert_eq!(stored.len(), 3, "each message stored once: {stored:?}");
            })
            .await;
        }
    }

    /// The offline ack tells the vendor it may forget a batch: the batch is stored, and
    /// flushed, before it (failure classes 4/8); the cursor is committed after the batch is
    /// stored, never before.
    #[tokio::test]
    async fn the_offline_ack_waits_until_the_batch_is_durable() {
        within("sync pass", async {
            let store = Arc::new(Recording::default());
            let mut v = vendor(caps(true));
            let batch = OfflineBatch {
                messages: (1..=2).rev().map(|n| msg(n, true)).collect(),
                left: 0,
                ack: Some(OfflineAck { token: "b1".into() }),
            };
            v.expect_pull_offline()
                .times(1)
                .returning(move |_| Ok(batch.clone()));
            let log = store.log.clone();
            v.expect_ack_offline().times(1).returning(move |ack| {
                log.lock().push(format!("ack_offline({})", ack.token));
                Ok(())
            });
            v.expect_go_online().times(1).returning(|| Ok(()));
            let shared = shared(v, store.clone());
            let mut sub = subscribe(&shared);
            let mut engine = SyncEngine::load(&shared).await;
            engine.sync_pass(&shared, None).await.unwrap();
            assert_eq!(delivered(&mut sub), ["m1", "m2"]);

            let log = store.log.lock().clone();
            let at = |prefix: &str| {
                log.iter()
                    .position(|l| l.starts_with(prefix))
                    .unwrap_or_else(|| panic!("no {prefix} in {log:?}"))
            };
            let (stored, committed, acked) =
                (at("put_messages"), at("commit_delivery"), at("ack_offline"));
            assert!(
                stored < committed,
                "the cursor was committed before the batch was stored: {log:?}"
            );
            assert!(
                log[stored..acked].iter().any(|l| l == "flush"),
                "the batch was acknowledged to the vendor before it was flushed: {log:?}"
            );
            let cursor = store.inner.cursor(&conversation()).await.unwrap();
            assert_eq!(
                cursor.and_then(|c| c.seq),
                Some(Seq(2)),
                "cursor after the batch"
            );
        })
        .await;
    }

    /// A vendor that tells no time at login (XMPP) and a first pass that delivered
    /// nothing: the next reconnect still catches up by time over every conversation, from
    /// the beginning, so a message this device missed meanwhile (stored offline and handed
    /// to my other device first, issue 21's demo on Prosody) arrives from history.
    #[tokio::test]
    async fn a_reconnect_after_an_empty_first_pass_still_catches_up_by_time() {
        within("catch-up after an empty pass", async {
            let store = Arc::new(Recording::default());
            let mut v = vendor(caps(false).with(Capability::HistoryByTime));
            v.expect_pull_offline().times(2).returning(|_| {
                Ok(OfflineBatch {
                    messages: Vec::new(),
                    left: 0,
                    ack: None,
                })
            });
            v.expect_go_online().times(2).returning(|| Ok(()));
            let queries = Arc::new(Mutex::new(Vec::new()));
            let seen = queries.clone();
            v.expect_pull_history().returning(move |q| {
                seen.lock().push(q.clone());
                Ok(im_service::HistoryPage {
                    messages: vec![msg(5, false)],
                    next: None,
                    horizon: None,
                })
            });
            let shared = shared(v, store.clone());
            let mut sub = subscribe(&shared);
            let mut engine = SyncEngine::load(&shared).await;
            engine.sync_pass(&shared, None).await.unwrap();
            assert!(
                queries.lock().is_empty(),
                "a fresh client has nothing to catch up on"
            );
            engine.sync_pass(&shared, None).await.unwrap();
            let queries = queries.lock().clone();
            assert!(
                matches!(
                    queries.first().map(|q| (&q.scope, q.range)),
                    Some((
                        im_service::HistoryScope::All,
                        im_service::HistoryRange::Time { .. }
                    ))
                ),
                "the reconnect asks every conversation by time: {queries:?}"
            );
            assert_eq!(
                delivered(&mut sub),
                ["m5"],
                "the missed message arrives from history"
            );
        })
        .await;
    }

    /// Issue 20, several devices: my message coming back to the device that sent it (still
    /// in its outbox, or noted as sent by this process) is stored without a second message
    /// event; my message from another device is delivered once, as mine, and never unread.
    #[tokio::test]
    async fn my_sends_come_back_quietly_here_and_once_from_my_other_device() {
        within("own echoes", async {
            let store = Arc::new(Recording::default());
            let shared = shared(vendor(caps(true)), store.clone());
            let mut sub = subscribe(&shared);
            let mut engine = SyncEngine::load(&shared).await;
            let mine = |n: u64| Message {
                sender: UserId::new("me"),
                ..msg(n, true)
            };
            // m1: still queued here (the answer to the send was lost).
            store
                .inner
                .put_outbox(&OutboxItem {
                    position: 1,
                    message: im_service::OutgoingMessage {
                        client_id: mine(1).client_id,
                        conversation: conversation(),
                        content: mine(1).content,
                        client_time: Timestamp::from_millis(0),
                    },
                    status: crate::store::SendStatus::Sending,
                    attempts: 1,
                })
                .await
                .unwrap();
            // m2: acknowledged to this process. m3: sent from my other device.
            shared.note_sent_here(&mine(2).client_id);
            let page = vec![mine(3), mine(2), mine(1)];
            engine.ingest(&shared, page, Origin::Offline).await.unwrap();
            assert_eq!(
                delivered(&mut sub),
                ["m3"],
                "only my other device's message is announced"
            );
            assert_eq!(
                store.inner.latest(&conversation(), 10).await.unwrap().len(),
                3
            );
            assert_eq!(
                shared
                    .conversations
                    .lock()
                    .get(&conversation())
                    .map(|r| r.unread),
                Some(0)
            );
        })
        .await;
    }

    /// Issue 20: with a change feed the pass pulls what changed while away after the
    /// offline messages and before going online, until nothing is left; each batch is
    /// applied and flushed before any of it is announced and before its cursor is saved;
    /// a change to a message not stored yet is kept, not announced; my read on another
    /// device clears unread here, a peer's is announced as `ReadBy`.
    #[tokio::test]
    async fn the_change_feed_is_applied_durably_before_announced_and_before_online() {
        within("sync pass with a change feed", async {
            let store = Arc::new(Recording::default());
            let mut v = vendor(caps(true).with(Capability::ChangeFeed));
            let batch = OfflineBatch {
                messages: (1..=2).rev().map(|n| msg(n, true)).collect(),
                left: 0,
                ack: None,
            };
            v.expect_pull_offline()
                .times(1)
                .returning(move |_| Ok(batch.clone()));
            let change = |n: u64, kind, revision| MessageChange {
                conversation: conversation(),
                target: ServerMsgId::new(format!("m{n}")),
                kind,
                by: UserId::new("peer"),
                at: Timestamp::from_millis(100),
                revision,
            };
            let receipt = |reader: &str, n: u64| ReadReceipt {
                conversation: conversation(),
                reader: UserId::new(reader),
                up_to: ServerMsgId::new(format!("m{n}")),
                up_to_time: Timestamp::from_millis(n as i64),
                at: Timestamp::from_millis(100),
            };
            let first = ChangeBatch {
                changes: vec![
                    change(1, ChangeKind::Edited(Content::text("fixed")), 1),
                    change(9, ChangeKind::Recalled, 1),
                ],
                receipts: vec![receipt("peer", 2), receipt("me", 1)],
                next: ChangeCursor(vec![1]),
                left: 1,
            };
            let second = ChangeBatch {
                changes: vec![change(2, ChangeKind::Recalled, 1)],
                receipts: Vec::new(),
                next: ChangeCursor(vec![2]),
                left: 0,
            };
            let log = store.log.clone();
            v.expect_pull_changes().times(2).returning(move |since, _| {
                log.lock().push(format!("pull_changes({since:?})"));
                Ok(match since {
                    None => first.clone(),
                    Some(_) => second.clone(),
                })
            });
            let log = store.log.clone();
            v.expect_go_online().times(1).returning(move || {
                log.lock().push("go_online".into());
                Ok(())
            });
            let shared = shared(v, store.clone());
            let mut sub = subscribe(&shared);
            *store.probe.lock() = Some(shared.distributor.subscribe(
                Filter::of([crate::events::EventKind::MessageChanged]),
                DeliveryPolicy::DropOldest { capacity: 100 },
            ));
            let mut engine = SyncEngine::load(&shared).await;
            engine.sync_pass(&shared, None).await.unwrap();

            let log = store.log.lock().clone();
            let at = |what: &str| {
                log.iter()
                    .position(|l| l.starts_with(what))
                    .unwrap_or_else(|| panic!("no {what} in {log:?}"))
            };
            assert!(at("put_messages") < at("pull_changes"), "messages first: {log:?}");
            assert!(at("set_change_cursor([2])") < at("go_online"), "feed before online: {log:?}");
            let cursor1 = at("set_change_cursor([1])");
            let first_apply = at("apply_change(m1)");
            assert!(
                log[first_apply..cursor1]
                    .iter()
                    .any(|l| l == "flush(handed=0)"),
                "the batch was flushed before it was announced and before its cursor: {log:?}"
            );
            assert_eq!(
                store.inner.change_cursor().await.unwrap(),
                Some(ChangeCursor(vec![2]))
            );
            let events = sub.drain_now();
            let changed: Vec<(String, Option<Content>)> = events
                .iter()
                .filter_map(|e| match &**e {
                    ClientEvent::MessageChanged { change, message } => Some((
                        change.target.to_string(),
                        message.as_ref().map(|m| m.content.clone()),
                    )),
                    _ => None,
                })
                .collect();
            assert_eq!(changed.len(), 2, "m9 is pending, not announced: {changed:?}");
            assert_eq!(changed[0], ("m1".into(), Some(Content::text("fixed"))));
            assert!(matches!(changed[1].1, Some(Content::Recalled { .. })));
            assert!(events.iter().any(|e| matches!(&**e,
                ClientEvent::ReadBy { reader, up_to, .. } if reader.as_str() == "peer" && up_to.as_str() == "m2")));
            assert_eq!(
                shared.conversations.lock().get(&conversation()).map(|r| r.unread),
                Some(1),
                "my read on another device (up to m1) leaves m2 unread"
            );
            // m9 arrives later: stored as recalled.
            engine
                .ingest(&shared, vec![msg(9, true)], Origin::Online)
                .await
                .unwrap();
            let m9 = store.inner.message(&ServerMsgId::new("m9")).await.unwrap();
            assert!(matches!(m9.map(|m| m.content), Some(Content::Recalled { .. })));
        })
        .await;
    }

    /// The delivery cursor never moves past a hole: with 1, 2 and 4 received, the app has
    /// 1 and 2 and the saved cursor says 2; when 3 arrives, 3 and 4 follow in order.
    #[tokio::test]
    async fn the_cursor_never_moves_past_a_hole() {
        within("hole", async {
            let store = Arc::new(Recording::default());
            let shared = shared(vendor(caps(true)), store.clone());
            let mut sub = subscribe(&shared);
            let mut engine = SyncEngine::load(&shared).await;
            let got = engine
                .ingest(
                    &shared,
                    vec![msg(4, true), msg(2, true), msg(1, true)],
                    Origin::Online,
                )
                .await
                .unwrap();
            assert_eq!(got, 2, "released past the hole");
            assert_eq!(delivered(&mut sub), ["m1", "m2"], "nothing past the hole");
            let cursor = store.inner.cursor(&conversation()).await.unwrap();
            assert_eq!(
                cursor.and_then(|c| c.seq),
                Some(Seq(2)),
                "cursor stops below the hole"
            );
            engine
                .ingest(&shared, vec![msg(3, true)], Origin::Online)
                .await
                .unwrap();
            assert_eq!(
                delivered(&mut sub),
                ["m3", "m4"],
                "the hole closed, in order"
            );
            let cursor = store.inner.cursor(&conversation()).await.unwrap();
            assert_eq!(cursor.and_then(|c| c.seq), Some(Seq(4)));
        })
        .await;
    }

    /// Without sequence numbers the store is the dedup authority. The in-flight record
    /// (messages stored but perhaps not handed to the app) is ended only in the commit that
    /// follows handing the events out; a crash before that commit repeats the delivery
    /// exactly once after the restart — whether the vendor offers the message again or
    /// not — and never again after.
    #[tokio::test]
    async fn the_in_flight_record_ends_only_after_the_app_has_the_events() {
        within("in flight", async {
            let store = Arc::new(Recording::default());
            let shared1 = shared(vendor(caps(false)), store.clone());
            let mut sub = subscribe(&shared1);
            *store.probe.lock() = Some(subscribe(&shared1));
            let mut engine = SyncEngine::load(&shared1).await;
            engine
                .ingest(&shared1, vec![msg(1, false)], Origin::Online)
                .await
                .unwrap();
            assert_eq!(delivered(&mut sub), ["m1"]);
            assert!(
                store.inner.in_flight().await.unwrap().is_empty(),
                "the record ends with the delivery"
            );
            let log = store.log.lock().clone();
            let commit = log
                .iter()
                .find(|l| l.starts_with("commit_delivery"))
                .cloned()
                .unwrap_or_default();
            // The probe had the message event (and its row) before the commit, and the
            // record still named the message then.
            assert!(
                commit.starts_with("commit_delivery(handed=2, in_flight=1)"),
                "the in-flight record ended before the app had the events: {log:?}"
            );

            // A crash between handing out message 2 and recording it: the commit fails.
            store.fail_next_commit.store(true, Ordering::SeqCst);
            let crashed = engine
                .ingest(&shared1, vec![msg(2, false)], Origin::Online)
                .await;
            assert!(crashed.is_err(), "the commit was to fail");
            drop((engine, shared1, sub));
            *store.probe.lock() = None;

            // Restart on the same store; the vendor offers message 2 again (twice).
            let shared2 = shared(vendor(caps(false)), store.clone());
            let mut sub = subscribe(&shared2);
            let mut engine = SyncEngine::load(&shared2).await;
            assert_eq!(engine.in_flight.len(), 1, "the record names message 2");
            for _ in 0..2 {
                engine
                    .ingest(&shared2, vec![msg(2, false)], Origin::Online)
                    .await
                    .unwrap();
            }
            assert_eq!(
                delivered(&mut sub),
                ["m2"],
                "a delivery a crash interrupted is repeated exactly once"
            );
            assert!(store.inner.in_flight().await.unwrap().is_empty());
        })
        .await;
    }

    /// After a crash between handing out a message and recording it, a restarted client
    /// whose vendor never offers the message again (it was acknowledged) delivers it from
    /// the store, once.
    #[tokio::test]
    async fn a_message_left_in_flight_is_delivered_from_the_store_once() {
        within("recover", async {
            let store = Arc::new(Recording::default());
            let shared1 = shared(vendor(caps(false)), store.clone());
            let mut engine = SyncEngine::load(&shared1).await;
            store.fail_next_commit.store(true, Ordering::SeqCst);
            assert!(
                engine
                    .ingest(&shared1, vec![msg(7, false)], Origin::Offline)
                    .await
                    .is_err()
            );
            drop((engine, shared1));

            let mut v = vendor(caps(false));
            v.expect_pull_offline().returning(|_| {
                Ok(OfflineBatch {
                    messages: Vec::new(),
                    left: 0,
                    ack: None,
                })
            });
            v.expect_go_online().returning(|| Ok(()));
            v.expect_pull_history()
                .returning(|_| Err(ServiceError::Unavailable("no history in this test".into())));
            let shared2 = shared(v, store.clone());
            let mut sub = subscribe(&shared2);
            let mut engine = SyncEngine::load(&shared2).await;
            engine.sync_pass(&shared2, None).await.unwrap();
            engine.sync_pass(&shared2, None).await.unwrap();
            assert_eq!(
                delivered(&mut sub),
                ["m7"],
                "the stored, undelivered message is delivered once from the store"
            );
        })
        .await;
    }

    /// A delivery is journaled for durable subscriptions in the same commit as its cursor,
    /// once: a duplicate adds no journal entry.
    #[tokio::test]
    async fn each_delivery_is_journaled_once() {
        within("journal", async {
            let store = Arc::new(Recording::default());
            store.inner.set_subscription("ledger", 0).await.unwrap();
            let shared = shared(vendor(caps(true)), store.clone());
            let mut engine = SyncEngine::load(&shared).await;
            assert!(
                shared.journal_on.load(Ordering::SeqCst),
                "a subscription turns the journal on"
            );
            let page = vec![msg(2, true), msg(1, true)];
            engine
                .ingest(&shared, page.clone(), Origin::Offline)
                .await
                .unwrap();
            engine.ingest(&shared, page, Origin::Offline).await.unwrap();
            let journal = store.inner.journal_after(0, 100).await.unwrap();
            let ids: Vec<String> = journal
                .iter()
                .map(|e| e.message.server_id.to_string())
                .collect();
            assert_eq!(ids, ["m1", "m2"], "journaled once each, in delivery order");
            assert_eq!(*shared.journal_head.borrow(), 2, "the head is published");
        })
        .await;
    }
}
