//! The persistent send queue: `send()` stores the message (the local echo, status
//! `Sending`) and returns at once; one background task delivers queued items while the
//! client is online, with the shared retry policy and the same client id on every attempt.
//! Per conversation nothing overtakes an unsent item: a failed item blocks the ones after
//! it until it is resent or cancelled. Unrecoverable items are parked as `Failed`.
//! Where the vendor keeps a conversation's sends in order ([`Capability::OrderedSends`]),
//! several sends of one conversation are in flight at once, each naming the one before it
//! ([`Vendor::send_after`](im_service::Vendor::send_after)), so the vendor refuses any that
//! would overtake a refused one; elsewhere one at a time.
//! `send`, `resend` and `cancel` return only once their change is durable (the store's
//! flush), so what the app was told survives a crash.

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use im_service::{
    Capability, ClientMsgId, Content, ConversationId, ErrorClass, Message, OutgoingMessage,
    ServiceError, Timestamp,
};
use tracing::Instrument;

use crate::error::ArchError;
use crate::events::{ClientEvent, ConnectionState};
use crate::shared::Shared;
use crate::store::{OutboxItem, SendStatus};

/// Queues a message: it is persisted and announced as `Sending` before this returns, and
/// goes out as soon as the client is online. Oversized content is refused here.
pub(crate) async fn send(
    shared: &Shared,
    conversation: ConversationId,
    content: Content,
) -> Result<ClientMsgId, ArchError> {
    let max = shared.vendor.capabilities().max_message_bytes;
    if content.size() > max {
        return Err(ArchError::Permanent {
            op: "send",
            error: im_service::ServiceError::MessageTooLarge {
                size: content.size(),
                max,
            },
        });
    }
    let message = OutgoingMessage::new(conversation, content, shared.clock.now());
    let position = {
        let mut next = shared.next_position.lock().await;
        let n = match *next {
            Some(n) => n,
            None => shared
                .store
                .outbox()
                .await?
                .last()
                .map_or(1, |i| i.position + 1),
        };
        *next = Some(n + 1);
        n
    };
    let item = OutboxItem {
        position,
        message,
        status: SendStatus::Sending,
        attempts: 0,
    };
    shared.store.put_outbox(&item).await?;
    // Confirmed only once durable: a crash after `Ok` must not lose the message.
    shared.store.flush().await?;
    announce(shared, &item).await;
    // Handed to the sender task directly (durable already), so that it need not read the
    // whole outbox back from the store for each new message.
    let id = item.message.client_id.clone();
    shared.outbox_fresh.push(item);
    shared.outbox_wake.notify_one();
    Ok(id)
}

/// Puts a failed item back in the queue (same client id).
pub(crate) async fn resend(shared: &Shared, id: &ClientMsgId) -> Result<(), ArchError> {
    let Some(mut item) = find(shared, id).await? else {
        return Err(ArchError::NotQueued(id.clone()));
    };
    item.status = SendStatus::Sending;
    shared.store.put_outbox(&item).await?;
    shared.store.flush().await?;
    announce(shared, &item).await;
    shared.outbox_fresh.reload();
    shared.outbox_wake.notify_one();
    Ok(())
}

/// Removes an unsent item from the queue, releasing the ones behind it.
pub(crate) async fn cancel(shared: &Shared, id: &ClientMsgId) -> Result<(), ArchError> {
    let Some(item) = find(shared, id).await? else {
        return Err(ArchError::NotQueued(id.clone()));
    };
    shared.store.remove_outbox(id).await?;
    // A cancelled message must not come back after a crash and go out.
    shared.store.flush().await?;
    shared
        .distributor
        .publish(ClientEvent::SendStatus {
            client_id: id.clone(),
            conversation: item.message.conversation.clone(),
            status: None,
            server_time: None,
        })
        .await;
    shared.outbox_fresh.reload();
    shared.outbox_wake.notify_one();
    Ok(())
}

/// The queue as it stands, in enqueue order.
pub(crate) async fn outbox(shared: &Shared) -> Result<Vec<OutboxItem>, ArchError> {
    shared.store.outbox().await
}

async fn find(shared: &Shared, id: &ClientMsgId) -> Result<Option<OutboxItem>, ArchError> {
    Ok(shared
        .store
        .outbox()
        .await?
        .into_iter()
        .find(|i| &i.message.client_id == id))
}

async fn announce(shared: &Shared, item: &OutboxItem) {
    announce_at(shared, item, None).await;
}

/// [`announce`] with the vendor's storage time (of a `Sent` item).
async fn announce_at(shared: &Shared, item: &OutboxItem, server_time: Option<Timestamp>) {
    shared
        .distributor
        .publish(ClientEvent::SendStatus {
            client_id: item.message.client_id.clone(),
            conversation: item.message.conversation.clone(),
            status: Some(item.status.clone()),
            server_time,
        })
        .await;
}

/// The sender task's copy of the outbox: what it read from the store at its last full
/// reload, plus the items `send` handed over since ([`OutboxFresh`]), minus those sent.
/// Reading the outbox back from the store after every send and every receipt (and cloning
/// every item of it twice) was 9% of the client's CPU under heavy load (issue 22); a
/// durable store's read is a scan that decodes every item.
///
/// Reloaded in full whenever the copy could be wrong: at start, after a resend or a cancel,
/// after any attempt that did not end in a plain receipt (a recorded failure, a stall, a
/// failing store).
#[derive(Default)]
struct Pending {
    /// By outbox position (enqueue order), then client id.
    items: std::collections::BTreeMap<PendingKey, OutboxItem>,
    /// Client ids taken in since the last full reload: an item handed over by `send` that
    /// the reload's read already had (or that was sent since) is not taken twice. By client
    /// id, not position: a client gives a position out again once its outbox has emptied
    /// (the first `send` after a restart numbers from the outbox's last item, and the items
    /// the restart found may all be sent by then), and a new message under a position
    /// taken in before must not be mistaken for it (the simulation found that: a send
    /// after a crash whose queue had drained stayed `Sending` for good).
    known: FxHashSet<ClientMsgId>,
    /// The next pass must reload from the store first.
    stale: bool,
}

/// Where an item sits in the sender's copy: its position, then its client id.
type PendingKey = (u64, ClientMsgId);

fn key(item: &OutboxItem) -> PendingKey {
    (item.position, item.message.client_id.clone())
}

/// Past this many items taken in since the last reload, the next pass reloads (which
/// forgets them): bounds [`Pending::known`].
const KNOWN_MAX: usize = 4096;

impl Pending {
    /// Replaces the copy with the store's outbox. The hand-over list is emptied first:
    /// whatever was handed over before that was durable before, so the read has it.
    async fn reload(&mut self, shared: &Shared) -> Result<(), ArchError> {
        shared.outbox_fresh.clear();
        self.stale = true;
        let items = shared.store.outbox().await?;
        self.known = items.iter().map(|i| i.message.client_id.clone()).collect();
        self.items = items.into_iter().map(|i| (key(&i), i)).collect();
        self.stale = false;
        Ok(())
    }

    /// Takes in the items `send` handed over.
    fn take_fresh(&mut self, shared: &Shared) {
        for item in shared.outbox_fresh.take() {
            if self.known.insert(item.message.client_id.clone()) {
                self.items.insert(key(&item), item);
            }
        }
        if self.known.len() > KNOWN_MAX {
            self.stale = true;
        }
    }

    /// The items that may be attempted now, at most `room`, each with the send it must
    /// follow (`Some` only while that one is in flight). Per conversation, in enqueue order,
    /// past the items already in flight: the next unsent item if it is `Sending` (a `Failed`
    /// one blocks its conversation), and the ones after it while the conversation's window
    /// has room — one in flight at a time unless `pipelined`, none while its lane drains.
    fn ready(
        &self,
        lanes: &Lanes,
        room: usize,
        pipelined: bool,
    ) -> Vec<(OutboxItem, Option<ClientMsgId>)> {
        // Conversations decided for this pass (blocked, or their window full).
        let mut done: FxHashSet<&ConversationId> = FxHashSet::default();
        // What this pass added to a lane: its count, and the item the next one follows.
        let mut planned: FxHashMap<&ConversationId, (usize, &ClientMsgId)> = FxHashMap::default();
        let mut out = Vec::new();
        for item in self.items.values() {
            if out.len() >= room {
                break;
            }
            let conversation = &item.message.conversation;
            if matches!(item.status, SendStatus::Sent { .. })
                || done.contains(conversation)
                || lanes.in_flight.contains(&item.message.client_id)
            {
                continue;
            }
            if item.status != SendStatus::Sending {
                done.insert(conversation);
                continue;
            }
            let lane = lanes.by_conversation.get(conversation);
            let (count, after) = match planned.get(conversation) {
                Some((count, last)) => (*count, Some(*last)),
                None => lane.map_or((0, None), |l| (l.count, Some(&l.last))),
            };
            let draining = lane.is_some_and(|l| l.draining);
            if count > 0 && (!pipelined || draining || count >= CONVERSATION_WINDOW) {
                done.insert(conversation);
                continue;
            }
            out.push((item.clone(), after.cloned()));
            planned.insert(conversation, (count + 1, &item.message.client_id));
        }
        out
    }
}

/// The sends in flight, by conversation and by client id.
#[derive(Default)]
struct Lanes {
    /// Per conversation with a send in flight.
    by_conversation: FxHashMap<ConversationId, Lane>,
    /// The client ids of every send in flight (a reload reads them back from the store as
    /// `Sending`: they are not started twice).
    in_flight: FxHashSet<ClientMsgId>,
}

/// One conversation's sends in flight.
struct Lane {
    /// How many.
    count: usize,
    /// The latest started, which the next one follows.
    last: ClientMsgId,
    /// One of them ended without being sent (refused, re-queued, interrupted): nothing
    /// more starts in this conversation until the rest have ended, then it starts again
    /// from its first unsent item, which by then is settled.
    draining: bool,
}

impl Lanes {
    /// `item` starts.
    fn start(&mut self, item: &OutboxItem) {
        let id = item.message.client_id.clone();
        self.in_flight.insert(id.clone());
        self.by_conversation
            .entry(item.message.conversation.clone())
            .and_modify(|l| {
                l.count += 1;
                l.last = id.clone();
            })
            .or_insert(Lane {
                count: 1,
                last: id,
                draining: false,
            });
    }

    /// A send of `conversation` ended; `sent` when it was stored.
    fn end(&mut self, conversation: &ConversationId, id: &ClientMsgId, sent: bool) {
        self.in_flight.remove(id);
        if let Some(lane) = self.by_conversation.get_mut(conversation) {
            lane.count = lane.count.saturating_sub(1);
            lane.draining |= !sent;
            if lane.count == 0 {
                self.by_conversation.remove(conversation);
            }
        }
    }
}

/// Most sends in flight at once.
pub(crate) const SEND_WINDOW: usize = 64;

/// Most sends of one conversation in flight at once, where the vendor keeps them in order
/// ([`Capability::OrderedSends`]; one elsewhere). A window like the bare adapter's: one at
/// a time per conversation held a busy conversation to one round trip per message (issue
/// 22: 0.17× the bare adapter at 10 in flight per pair).
pub(crate) const CONVERSATION_WINDOW: usize = 16;

/// The sender task: runs until the client stops it.
///
/// Different conversations go out together (at most [`SEND_WINDOW`] sends at once). Within
/// a conversation, where the vendor keeps sends in order, up to [`CONVERSATION_WINDOW`] are
/// in flight, each naming the one it follows, so the vendor refuses one whose predecessor
/// it refused ([`ServiceError::PredecessorNotStored`]) and nothing overtakes a failed head;
/// the refused follower is re-queued as it was, and its conversation drains before it
/// starts again. Where the vendor cannot promise the order, one send per conversation is
/// in flight. After a send that stalled (connection lost) or a failing store, nothing new
/// starts until every send in flight has ended and the wait for that setback is over.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut state = shared.state.subscribe();
    let mut sends = FuturesUnordered::new();
    let pipelined = shared
        .vendor
        .capabilities()
        .supports(Capability::OrderedSends);
    // The sends in flight. (Fx-hashed, as the bus's index is: the app's own conversations
    // and messages, no flooding threat.)
    let mut lanes = Lanes::default();
    let mut setback: Option<Delivery> = None;
    let mut pending = Pending {
        stale: true,
        ..Pending::default()
    };
    loop {
        if sends.is_empty() {
            match setback.take() {
                // A failing store (full disk): do not spin; try again a little later.
                Some(Delivery::StoreFailed) => {
                    tokio::time::sleep(shared.config.retry.backoff.max).await;
                }
                // Wait for the state to move (offline, then online again); bounded, in
                // case the loss is noticed only by the next heartbeat.
                Some(Delivery::Stalled) => {
                    let _ = tokio::time::timeout(shared.config.retry.backoff.max, state.changed())
                        .await;
                }
                Some(Delivery::Sent | Delivery::Recorded | Delivery::Requeued) | None => {}
            }
            // Nothing is attempted until authentication and sync are done.
            while *state.borrow_and_update() != ConnectionState::Online {
                if state.changed().await.is_err() {
                    return;
                }
            }
        }
        let wake = shared.outbox_wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        if setback.is_none() && *state.borrow() == ConnectionState::Online {
            let loaded = if pending.stale || shared.outbox_fresh.must_reload() {
                pending.reload(&shared).await
            } else {
                Ok(())
            };
            match loaded {
                Ok(()) => {
                    pending.take_fresh(&shared);
                    let room = SEND_WINDOW.saturating_sub(sends.len());
                    for (item, after) in pending.ready(&lanes, room, pipelined) {
                        lanes.start(&item);
                        sends.push(deliver_in_span(&shared, item, after));
                    }
                }
                Err(error) => {
                    let what = "cannot read the outbox";
                    shared.report_store_failure("outbox", what, error).await;
                }
            }
        }
        if sends.is_empty() {
            tokio::select! {
                _ = &mut wake => {}
                r = state.changed() => if r.is_err() { return },
            }
            continue;
        }
        tokio::select! {
            Some(((sent_key, conversation), delivery)) = sends.next() => {
                lanes.end(&conversation, &sent_key.1, delivery == Delivery::Sent);
                match delivery {
                    Delivery::Sent => {
                        pending.items.remove(&sent_key);
                    }
                    // Unchanged (still `Sending`, in the copy as in the store): it starts
                    // again once its conversation has drained.
                    Delivery::Requeued => {}
                    // The store has the item's new state: read it back.
                    Delivery::Recorded => pending.stale = true,
                    Delivery::StoreFailed | Delivery::Stalled => {
                        pending.stale = true;
                        // The store's failure outweighs a stall: it is waited out longer.
                        setback = match (setback, delivery) {
                            (Some(Delivery::StoreFailed), _) => Some(Delivery::StoreFailed),
                            (_, d) => Some(d),
                        };
                    }
                }
            }
            _ = &mut wake => {}
            r = state.changed() => if r.is_err() { return },
        }
    }
}

/// [`deliver`] in its own span, tagged with the item's conversation; answers the item's
/// key and conversation with what became of it.
async fn deliver_in_span(
    shared: &Shared,
    item: OutboxItem,
    after: Option<ClientMsgId>,
) -> ((PendingKey, ConversationId), Delivery) {
    let conversation = item.message.conversation.clone();
    let sent_key = key(&item);
    let span = tracing::info_span!(
        "send",
        client_id = %item.message.client_id,
        conversation = %item.message.conversation,
        position = item.position,
        pipelined = after.is_some(),
    );
    (
        (sent_key, conversation),
        deliver(shared, item, after).instrument(span).await,
    )
}

/// What became of one attempt to send an outbox item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Sent, and gone from the outbox.
    Sent,
    /// Failed, and recorded as such in the outbox.
    Recorded,
    /// Refused because the send it follows is not stored: unchanged, to start again
    /// behind it.
    Requeued,
    /// The store failed: back off before trying again.
    StoreFailed,
    /// The connection was lost during the send: wait for the next time online.
    Stalled,
}

/// Whether `e` means the session is gone rather than the message refused: not logged in,
/// connection lost, kicked, token expired — or any failure after which the client is no
/// longer online.
fn session_lost(shared: &Shared, e: &ArchError) -> bool {
    use im_service::ServiceError as S;
    matches!(
        e.service_error(),
        Some(S::NotLoggedIn | S::ConnectionLost(_) | S::Kicked(_) | S::TokenExpired)
    ) || *shared.state.borrow() != ConnectionState::Online
}

/// Sends one item; a pipelined one names the send it follows (`after`).
async fn deliver(shared: &Shared, mut item: OutboxItem, after: Option<ClientMsgId>) -> Delivery {
    let result = shared
        .retry("send", || async {
            match &after {
                None => shared.vendor.send(&item.message).await.map(Some),
                // Not retried in place: the predecessor is refused or not there yet, and
                // the send starts again behind it once it is settled.
                Some(after) => match shared.vendor.send_after(&item.message, after).await {
                    Err(ServiceError::PredecessorNotStored(_)) => Ok(None),
                    other => other.map(Some),
                },
            }
        })
        .await;
    item.attempts += 1;
    match result {
        Ok(None) => {
            tracing::debug!("the send it follows is not stored; re-queued behind it");
            Delivery::Requeued
        }
        Ok(Some(receipt)) => {
            // A duplicate receipt (resend after a lost ack) is a success, never a failure.
            let me = shared.credentials.lock().user.clone();
            let stored = Message {
                server_id: receipt.server_id.clone(),
                client_id: item.message.client_id.clone(),
                conversation: item.message.conversation.clone(),
                sender: me,
                seq: receipt.seq,
                server_time: receipt.server_time,
                client_time: item.message.client_time,
                content: item.message.content.clone(),
            };
            item.status = SendStatus::Sent {
                server_id: receipt.server_id,
                seq: receipt.seq,
            };
            // Before the outbox forgets it: from here on only this note tells the sync
            // engine that the message, if it comes back, is this device's own echo.
            shared.note_sent_here(&item.message.client_id);
            if let Err(error) = shared.store.remove_outbox(&item.message.client_id).await {
                // The item stays queued as `Sending`; its next attempt gets the duplicate
                // receipt and counts as sent, so nothing is sent twice.
                let what = "cannot remove a sent item from the outbox";
                shared
                    .report_store_failure("remove_outbox", what, error)
                    .await;
                return Delivery::StoreFailed;
            }
            announce_at(shared, &item, Some(stored.server_time)).await;
            let _ = shared.own_sent.send(stored);
            Delivery::Sent
        }
        Err(e) if session_lost(shared, &e) => {
            // The connection went away under the send (the state may not say so yet): the
            // message was not refused, it is kept queued as `Sending` and goes out after
            // the reconnect, under the same client id (the vendor dedups a resend).
            tracing::debug!(error = %e, "send interrupted by a connection loss; kept queued");
            if let Err(error) = shared.store.put_outbox(&item).await {
                tracing::warn!(error = %error, "cannot record a send attempt");
            }
            Delivery::Stalled
        }
        Err(e) => {
            let recoverable = e
                .service_error()
                .is_none_or(|s| s.class() != ErrorClass::Permanent)
                && !matches!(e, ArchError::Permanent { .. });
            item.status = SendStatus::Failed {
                reason: e.to_string(),
                recoverable,
            };
            if let Err(error) = shared.store.put_outbox(&item).await {
                let what = "cannot record a failed send";
                shared.report_store_failure("put_outbox", what, error).await;
                announce(shared, &item).await;
                return Delivery::StoreFailed;
            }
            announce(shared, &item).await;
            Delivery::Recorded
        }
    }
}

#[cfg(test)]
mod tests {
    //! The sender task's copy of the outbox against a `MemoryStore`: what `send` hands over
    //! and what a reload reads are taken once, and an item sent is never taken again.

    use std::collections::HashMap;

    use std::sync::Arc;

    use im_service::{
        ClientMsgId, Content, ConversationId, Credentials, MockVendor, OutgoingMessage,
        SystemClock, Timestamp,
    };

    use super::{CONVERSATION_WINDOW, Lanes, Pending};
    use crate::MemoryStore;
    use crate::config::ClientConfig;
    use crate::shared::Shared;
    use crate::store::{OutboxItem, SendStatus, Store};

    fn item(position: u64, conversation: &str) -> OutboxItem {
        OutboxItem {
            position,
            message: OutgoingMessage::new(
                ConversationId::group(conversation),
                Content::text(format!("m{position}")),
                Timestamp::from_millis(0),
            ),
            status: SendStatus::Sending,
            attempts: 0,
        }
    }

    fn positions(items: &[(OutboxItem, Option<ClientMsgId>)]) -> Vec<u64> {
        items.iter().map(|(i, _)| i.position).collect()
    }

    #[tokio::test]
    async fn handed_over_items_are_taken_once_and_never_after_they_were_sent() {
        let store = Arc::new(MemoryStore::new());
        let shared = Shared::new(
            Arc::new(MockVendor::new()),
            store.clone(),
            ClientConfig::default(),
            HashMap::new(),
            Arc::new(SystemClock),
            None,
            Credentials::new("me", "token"),
        );
        let (a1, a2, b3) = (item(1, "a"), item(2, "a"), item(3, "b"));
        for i in [&a1, &a2, &b3] {
            store.put_outbox(i).await.unwrap();
        }
        // Handed over before the reload: the reload's read has them, the list is emptied.
        shared.outbox_fresh.push(a1.clone());
        let mut pending = Pending::default();
        pending.reload(&shared).await.unwrap();
        // Handed over after the reload's read had it already (a `send` racing the read).
        shared.outbox_fresh.push(a2.clone());
        shared.outbox_fresh.push(b3.clone());
        pending.take_fresh(&shared);
        let none = Lanes::default();
        assert_eq!(
            positions(&pending.ready(&none, 32, false)),
            [1, 3],
            "each conversation's head, each once"
        );
        // 1 is sent (gone from the copy); a late copy of it handed over again is not taken.
        pending.items.remove(&super::key(&a1));
        shared.outbox_fresh.push(a1.clone());
        pending.take_fresh(&shared);
        assert_eq!(
            positions(&pending.ready(&none, 32, false)),
            [2, 3],
            "a sent item came back from the hand-over list"
        );
        let mut busy = Lanes::default();
        busy.start(&a2);
        assert_eq!(
            positions(&pending.ready(&busy, 32, false)),
            [3],
            "a busy conversation waits"
        );
        assert_eq!(
            positions(&pending.ready(&none, 1, false)),
            [2],
            "at most `room`"
        );
        // A new message under a position given out before (the outbox had emptied): taken.
        pending.items.remove(&super::key(&a2));
        pending.items.remove(&super::key(&b3));
        let again = item(1, "c");
        shared.outbox_fresh.push(again.clone());
        pending.take_fresh(&shared);
        assert_eq!(
            pending.ready(&none, 32, false),
            [(again, None)],
            "a new message under a reused position was not taken in"
        );
    }

    /// The pipelined window: a conversation's items start together, each naming the one
    /// before it; a failed item blocks the rest; a draining lane starts nothing; the window
    /// is bounded.
    #[test]
    fn pipelined_items_follow_each_other_and_stop_at_a_failed_one() {
        let mut pending = Pending::default();
        let mut add = |i: OutboxItem| {
            pending.items.insert(super::key(&i), i);
        };
        let a: Vec<OutboxItem> = (1..=4).map(|p| item(p, "a")).collect();
        for i in &a {
            add(i.clone());
        }
        add(item(5, "b"));
        let id = |i: &OutboxItem| i.message.client_id.clone();
        let none = Lanes::default();
        let ready = pending.ready(&none, 32, true);
        assert_eq!(
            ready
                .iter()
                .map(|(i, after)| (i.position, after.clone()))
                .collect::<Vec<_>>(),
            [
                (1, None),
                (2, Some(id(&a[0]))),
                (3, Some(id(&a[1]))),
                (4, Some(id(&a[2]))),
                (5, None)
            ],
            "each follows the one before it in its conversation"
        );
        // 1 and 2 in flight: 3 follows 2.
        let mut lanes = Lanes::default();
        lanes.start(&a[0]);
        lanes.start(&a[1]);
        let ready = pending.ready(&lanes, 32, true);
        assert_eq!(ready[0].0.position, 3);
        assert_eq!(
            ready[0].1,
            Some(id(&a[1])),
            "3 follows the latest in flight"
        );
        // 1 ended without being sent: the lane drains, nothing of `a` starts.
        lanes.end(&a[0].message.conversation, &id(&a[0]), false);
        assert_eq!(
            positions(&pending.ready(&lanes, 32, true)),
            [5],
            "a draining lane starts nothing"
        );
        lanes.end(&a[1].message.conversation, &id(&a[1]), false);
        // Drained; 1 failed: it blocks 2–4.
        let failed = SendStatus::Failed {
            reason: "refused".into(),
            recoverable: false,
        };
        if let Some(first) = pending.items.get_mut(&super::key(&a[0])) {
            first.status = failed;
        }
        assert_eq!(
            positions(&pending.ready(&Lanes::default(), 32, true)),
            [5],
            "nothing overtakes a failed item"
        );
        // A long conversation: at most the window at once.
        let mut long = Pending::default();
        for p in 1..=(CONVERSATION_WINDOW as u64 + 5) {
            let i = item(p, "c");
            long.items.insert(super::key(&i), i);
        }
        assert_eq!(
            long.ready(&Lanes::default(), 1000, true).len(),
            CONVERSATION_WINDOW,
            "one conversation's window"
        );
    }
}
