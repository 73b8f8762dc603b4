//! One conformance suite for every `Store`: `store_conformance!` stamps the same tests for
//! `MemoryStore`, `SledStore` and `LogStore`; below it, the sled-only tests (reopen, schema version,
//! corrupt entries, a proptest of timeline paging).

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use im_arch::{ArchError, LogStore, SledStore};
use im_arch::{ChangeOutcome, MAX_PENDING_PER_MESSAGE, MessageRevision};
use im_arch::{MemoryStore, OutboxItem, SCHEMA_VERSION, SendStatus, Store, SyncCursor};
use im_service::{
    ChangeCursor, ChangeKind, ClientMsgId, Content, ConversationId, Message, MessageChange, Origin,
    OutgoingMessage, ReadReceipt, Seq, ServerMsgId, Timestamp, UserId,
};

fn change(m: &Message, kind: ChangeKind, revision: u32, at: i64) -> MessageChange {
    MessageChange {
        conversation: m.conversation.clone(),
        target: m.server_id.clone(),
        kind,
        by: m.sender.clone(),
        at: Timestamp::from_millis(at),
        revision,
    }
}

fn edit(m: &Message, text: &str, revision: u32, at: i64) -> MessageChange {
    change(m, ChangeKind::Edited(Content::text(text)), revision, at)
}

fn receipt(c: &ConversationId, reader: &str, up_to: &str, time: i64) -> ReadReceipt {
    ReadReceipt {
        conversation: c.clone(),
        reader: UserId::new(reader),
        up_to: ServerMsgId::new(up_to),
        up_to_time: Timestamp::from_millis(time),
        at: Timestamp::from_millis(time + 1),
    }
}

fn alice_bob() -> ConversationId {
    ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"))
}

fn msg(conversation: &ConversationId, id: &str, time: i64, seq: Option<u64>) -> Message {
    Message {
        server_id: ServerMsgId::new(id),
        client_id: ClientMsgId::new(format!("c-{id}")),
        conversation: conversation.clone(),
        sender: UserId::new("alice"),
        seq: seq.map(Seq),
        server_time: Timestamp::from_millis(time),
        client_time: Timestamp::from_millis(time - 7),
        content: Content::text(format!("text of {id}")),
    }
}

fn ids(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.server_id.as_str()).collect()
}

fn outbox_item(id: &str, position: u64) -> OutboxItem {
    OutboxItem {
        position,
        message: OutgoingMessage {
            client_id: ClientMsgId::new(id),
            conversation: alice_bob(),
            content: Content::text(format!("send {id}")),
            client_time: Timestamp::from_millis(1_000),
        },
        status: SendStatus::Sending,
        attempts: 0,
    }
}

fn outbox_ids(items: &[OutboxItem]) -> Vec<&str> {
    items.iter().map(|i| i.message.client_id.as_str()).collect()
}

/// The scenarios, each over any `Store`.
mod suite {
    use super::*;

    pub async fn put_messages_dedups_by_server_id(store: &impl Store) {
        let c = alice_bob();
        let (a, b, x) = (
            msg(&c, "a", 10, Some(1)),
            msg(&c, "b", 20, Some(2)),
            msg(&c, "x", 30, Some(3)),
        );
        assert_eq!(store.put_messages(&[]).await.unwrap(), Vec::<bool>::new());
        assert_eq!(
            store.put_messages(&[a.clone(), b.clone()]).await.unwrap(),
            [true, true]
        );
        // Known ids and repeats inside one batch are not new.
        assert_eq!(
            store
                .put_messages(&[b.clone(), x.clone(), x.clone()])
                .await
                .unwrap(),
            [false, true, false]
        );
        // A redelivery with other content does not overwrite the stored message.
        let mut a2 = a.clone();
        a2.content = Content::text("changed");
        assert_eq!(store.put_messages(&[a2]).await.unwrap(), [false]);
        assert_eq!(store.message(&a.server_id).await.unwrap(), Some(a));
        assert_eq!(ids(&store.latest(&c, 10).await.unwrap()), ["x", "b", "a"]);
    }

    pub async fn message_by_id(store: &impl Store) {
        let c = alice_bob();
        let g = ConversationId::group("ops");
        let (m1, m2) = (msg(&c, "m1", 5, None), msg(&g, "m2", 6, Some(9)));
        store.put_messages(&[m1.clone(), m2.clone()]).await.unwrap();
        assert_eq!(store.message(&m1.server_id).await.unwrap(), Some(m1));
        assert_eq!(store.message(&m2.server_id).await.unwrap(), Some(m2));
        assert_eq!(
            store.message(&ServerMsgId::new("nope")).await.unwrap(),
            None
        );
    }

    pub async fn latest_is_newest_first(store: &impl Store) {
        let c = alice_bob();
        // Written out of order, in two batches.
        let all: Vec<Message> = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]
            .iter()
            .map(|&i| msg(&c, &format!("m{i}"), 1_000 + i, Some(i as u64 + 1)))
            .collect();
        store.put_messages(&all[..4]).await.unwrap();
        store.put_messages(&all[4..]).await.unwrap();
        assert_eq!(ids(&store.latest(&c, 3).await.unwrap()), ["m9", "m8", "m7"]);
        let every = store.latest(&c, 100).await.unwrap();
        assert_eq!(
            ids(&every),
            ["m9", "m8", "m7", "m6", "m5", "m4", "m3", "m2", "m1", "m0"]
        );
        assert!(store.latest(&c, 0).await.unwrap().is_empty());
        assert!(
            store
                .latest(&ConversationId::group("empty"), 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub async fn conversation_states_round_trip_and_overwrite(store: &impl Store) {
        let c = alice_bob();
        let mut state = im_arch::ConversationState {
            id: c.clone(),
            pinned: true,
            muted: false,
            draft: Some(("draft".into(), im_service::Timestamp::from_millis(5))),
            read_up_to: None,
        };
        store.put_conversation_state(&state).await.unwrap();
        assert_eq!(
            store.conversation_states().await.unwrap(),
            vec![state.clone()]
        );
        state.pinned = false;
        state.draft = None;
        store.put_conversation_state(&state).await.unwrap();
        assert_eq!(store.conversation_states().await.unwrap(), vec![state]);
    }

    pub async fn page_after_pages_forward_without_loss_or_repeat(store: &impl Store) {
        let c = alice_bob();
        let other = im_service::ConversationId::group("zz-other");
        let all: Vec<Message> = (0..120)
            .map(|i| {
                msg(
                    &c,
                    &format!("f{i:03}"),
                    1_700_000_000_000 + i * 10,
                    Some(i as u64 + 1),
                )
            })
            .collect();
        store.put_messages(&all).await.unwrap();
        // A neighbour conversation must never leak into the page.
        store
            .put_messages(&[msg(&other, "x1", 1_800_000_000_000, Some(1))])
            .await
            .unwrap();
        let mut seen = vec![all[0].clone()];
        loop {
            let last = seen.last().cloned().unwrap();
            let page = store.page_after(&c, &last, 50).await.unwrap();
            if page.is_empty() {
                break;
            }
            seen.extend(page);
        }
        assert_eq!(
            seen, all,
            "oldest first, every message once, nothing from elsewhere"
        );
    }

    pub async fn page_before_pages_without_loss_or_repeat(store: &impl Store) {
        let c = alice_bob();
        let mut all: Vec<Message> = (0..250)
            .map(|i| {
                msg(
                    &c,
                    &format!("m{i:03}"),
                    1_700_000_000_000 + i * 10,
                    Some(i as u64 + 1),
                )
            })
            .collect();
        // Pulled pages arrive newest first.
        all.reverse();
        for page in all.chunks(200) {
            assert!(store.put_messages(page).await.unwrap().iter().all(|&n| n));
        }
        let mut seen = Vec::new();
        let mut before: Option<Message> = None;
        let mut pages = 0;
        loop {
            let page = store.page_before(&c, before.as_ref(), 50).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert_eq!(page.len(), 50, "page {pages} is short");
            pages += 1;
            before = page.last().cloned();
            seen.extend(page);
        }
        assert_eq!(pages, 5);
        assert_eq!(seen, all, "every message once, newest first");
        // A page from the oldest message is empty; a page from the middle starts just below.
        assert!(
            store
                .page_before(&c, all.last(), 50)
                .await
                .unwrap()
                .is_empty()
        );
        let mid = store.page_before(&c, Some(&all[100]), 3).await.unwrap();
        assert_eq!(mid, all[101..104].to_vec());
    }

    pub async fn conversations_are_isolated(store: &impl Store) {
        // "a" and "ab": the encoding of one id must not act as a prefix of the other's.
        let (ga, gab, d) = (
            ConversationId::group("a"),
            ConversationId::group("ab"),
            alice_bob(),
        );
        let mut batch = Vec::new();
        for i in 0..6 {
            batch.push(msg(&ga, &format!("a{i}"), i * 3, Some(i as u64 + 1)));
            batch.push(msg(&gab, &format!("ab{i}"), i * 3 + 1, Some(i as u64 + 1)));
            batch.push(msg(&d, &format!("d{i}"), i * 3 + 2, None));
        }
        store.put_messages(&batch).await.unwrap();
        assert_eq!(
            ids(&store.latest(&ga, 100).await.unwrap()),
            ["a5", "a4", "a3", "a2", "a1", "a0"]
        );
        assert_eq!(
            ids(&store.latest(&gab, 100).await.unwrap()),
            ["ab5", "ab4", "ab3", "ab2", "ab1", "ab0"]
        );
        assert_eq!(ids(&store.latest(&d, 2).await.unwrap()), ["d5", "d4"]);
        let below = store.page_before(&gab, Some(&batch[7]), 100).await.unwrap();
        assert_eq!(ids(&below), ["ab1", "ab0"]);
        assert!(
            store
                .latest(&ConversationId::group("b"), 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub async fn cursors_round_trip_and_overwrite(store: &impl Store) {
        let (c, g) = (alice_bob(), ConversationId::group("ops"));
        assert_eq!(store.cursor(&c).await.unwrap(), None);
        assert!(store.cursors().await.unwrap().is_empty());
        let c1 = SyncCursor {
            seq: Some(Seq(4)),
            time: Timestamp::from_millis(40),
        };
        let g1 = SyncCursor {
            seq: None,
            time: Timestamp::from_millis(-3),
        };
        store
            .set_cursors(&[(c.clone(), c1), (g.clone(), g1)])
            .await
            .unwrap();
        assert_eq!(store.cursor(&c).await.unwrap(), Some(c1));
        assert_eq!(store.cursor(&g).await.unwrap(), Some(g1));
        let c2 = SyncCursor {
            seq: Some(Seq(9)),
            time: Timestamp::from_millis(90),
        };
        store.set_cursors(&[(c.clone(), c2)]).await.unwrap();
        store.set_cursors(&[]).await.unwrap();
        assert_eq!(store.cursor(&c).await.unwrap(), Some(c2));
        let mut all = store.cursors().await.unwrap();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want = vec![(c, c2), (g, g1)];
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(all, want);
    }

    pub async fn in_flight_delivery_is_replaced_and_cleared_by_cursors(store: &impl Store) {
        assert!(store.in_flight().await.unwrap().is_empty());
        let ids = |names: &[&str]| -> Vec<ServerMsgId> {
            names.iter().map(|n| ServerMsgId::new(*n)).collect()
        };
        store.begin_delivery(&ids(&["a", "b"])).await.unwrap();
        assert_eq!(store.in_flight().await.unwrap(), ids(&["a", "b"]));
        store.begin_delivery(&ids(&["c"])).await.unwrap();
        assert_eq!(store.in_flight().await.unwrap(), ids(&["c"]));
        // The record is not a cursor.
        assert!(store.cursors().await.unwrap().is_empty());
        store.set_cursors(&[]).await.unwrap();
        assert!(store.in_flight().await.unwrap().is_empty());
        assert!(store.cursors().await.unwrap().is_empty());
        // An id already stored is a duplicate (delivered before): never recorded, or a
        // restart would deliver it again.
        let c = alice_bob();
        store.put_messages(&[msg(&c, "d", 1, None)]).await.unwrap();
        store.begin_delivery(&ids(&["d", "e"])).await.unwrap();
        assert_eq!(
            store.in_flight().await.unwrap(),
            ids(&["e"]),
            "a stored id is left out of the in-flight record"
        );
        // … unless the earlier record names it: a crashed delivery being repeated keeps it
        // recorded until the repeat is committed (a second crash must not lose it).
        store.put_messages(&[msg(&c, "e", 2, None)]).await.unwrap();
        store.begin_delivery(&ids(&["d", "e"])).await.unwrap();
        assert_eq!(
            store.in_flight().await.unwrap(),
            ids(&["e"]),
            "a repeated delivery stays recorded"
        );
    }

    pub async fn journal_appends_with_cursors_in_delivery_order(store: &impl Store) {
        let c = alice_bob();
        assert_eq!(store.journal_head().await.unwrap(), 0);
        assert!(store.journal_after(0, 10).await.unwrap().is_empty());
        let m: Vec<Message> = (1..=5)
            .map(|i| msg(&c, &format!("m{i}"), i, None))
            .collect();
        // The client's order: record in flight, then store, then commit the delivery.
        store
            .begin_delivery(&[m[0].server_id.clone()])
            .await
            .unwrap();
        store.put_messages(&m).await.unwrap();
        assert_eq!(
            store.in_flight().await.unwrap(),
            [m[0].server_id.clone()],
            "recorded before it was stored"
        );
        let cursor = SyncCursor {
            seq: None,
            time: Timestamp::from_millis(3),
        };
        // Delivery order, not id order: m3 before m1.
        let head = store
            .commit_delivery(
                &[(c.clone(), cursor)],
                &[
                    (m[2].server_id.clone(), Origin::Offline),
                    (m[0].server_id.clone(), Origin::Offline),
                ],
            )
            .await
            .unwrap();
        assert_eq!(head, 2);
        // One write: the cursor saved and the in-flight record ended with the journal.
        assert_eq!(store.cursor(&c).await.unwrap(), Some(cursor));
        assert!(store.in_flight().await.unwrap().is_empty());
        let head = store
            .commit_delivery(&[], &[(m[4].server_id.clone(), Origin::Online)])
            .await
            .unwrap();
        assert_eq!(head, 3);
        // Cursors without journal entries leave the head where it is.
        assert_eq!(store.commit_delivery(&[], &[]).await.unwrap(), 3);
        let all = store.journal_after(0, 10).await.unwrap();
        let got: Vec<(u64, &str, Origin)> = all
            .iter()
            .map(|e| (e.position, e.message.server_id.as_str(), e.origin))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "m3", Origin::Offline),
                (2, "m1", Origin::Offline),
                (3, "m5", Origin::Online)
            ]
        );
        let tail = store.journal_after(1, 1).await.unwrap();
        assert_eq!(tail.len(), 1, "limit respected");
        assert_eq!(tail[0].position, 2);
        assert!(store.journal_after(3, 10).await.unwrap().is_empty());
        assert!(store.journal_after(u64::MAX, 10).await.unwrap().is_empty());
    }

    pub async fn subscriptions_trim_what_all_acknowledged(store: &impl Store) {
        let c = alice_bob();
        let m: Vec<Message> = (1..=4)
            .map(|i| msg(&c, &format!("m{i}"), i, None))
            .collect();
        store.put_messages(&m).await.unwrap();
        store.set_subscription("ui", 0).await.unwrap();
        store.set_subscription("ledger", 0).await.unwrap();
        let entries: Vec<_> = m
            .iter()
            .map(|m| (m.server_id.clone(), Origin::Online))
            .collect();
        assert_eq!(store.commit_delivery(&[], &entries).await.unwrap(), 4);
        store.set_subscription("ui", 3).await.unwrap();
        // "ledger" still needs everything.
        assert_eq!(store.journal_after(0, 10).await.unwrap().len(), 4);
        store.set_subscription("ledger", 2).await.unwrap();
        let left: Vec<u64> = store
            .journal_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect();
        assert_eq!(left, vec![3, 4], "entries both acknowledged are dropped");
        let mut subs = store.subscriptions().await.unwrap();
        subs.sort();
        assert_eq!(subs, vec![("ledger".to_string(), 2), ("ui".to_string(), 3)]);
        store.remove_subscription("ledger").await.unwrap();
        let left: Vec<u64> = store
            .journal_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect();
        assert_eq!(
            left,
            vec![4],
            "only what the remaining one has not acknowledged"
        );
        store.remove_subscription("ui").await.unwrap();
        assert!(store.journal_after(0, 10).await.unwrap().is_empty());
        // The head never goes back, even with the journal empty.
        assert_eq!(store.journal_head().await.unwrap(), 4);
        assert_eq!(
            store
                .commit_delivery(&[], &[(m[0].server_id.clone(), Origin::Online)])
                .await
                .unwrap(),
            5
        );
    }

    pub async fn sync_mark_round_trips(store: &impl Store) {
        assert_eq!(store.sync_mark().await.unwrap(), None);
        store
            .set_sync_mark(Timestamp::from_millis(42))
            .await
            .unwrap();
        store
            .set_sync_mark(Timestamp::from_millis(7))
            .await
            .unwrap();
        assert_eq!(
            store.sync_mark().await.unwrap(),
            Some(Timestamp::from_millis(7)),
            "the last mark set, even an earlier time"
        );
        // The mark is not a cursor.
        assert!(store.cursors().await.unwrap().is_empty());
    }

    pub async fn flush_returns_for_concurrent_callers(store: &impl Store) {
        let c = &alice_bob();
        let writes = (0..16).map(|i| async move {
            store
                .put_messages(&[msg(c, &format!("f{i}"), i, None)])
                .await
                .unwrap();
            store.flush().await.unwrap();
        });
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            futures::future::join_all(writes),
        )
        .await
        .expect("16 concurrent flushes complete (no deadlock)");
        assert_eq!(store.latest(&alice_bob(), 100).await.unwrap().len(), 16);
    }

    pub async fn outbox_put_replace_remove_in_enqueue_order(store: &impl Store) {
        assert!(store.outbox().await.unwrap().is_empty());
        for (id, pos) in [("third", 3), ("first", 1), ("second", 2)] {
            store.put_outbox(&outbox_item(id, pos)).await.unwrap();
        }
        assert_eq!(
            outbox_ids(&store.outbox().await.unwrap()),
            ["first", "second", "third"]
        );

        // Replace in place: same position, new status.
        let mut sent = outbox_item("second", 2);
        sent.status = SendStatus::Sent {
            server_id: ServerMsgId::new("s2"),
            seq: Some(Seq(2)),
        };
        sent.attempts = 1;
        store.put_outbox(&sent).await.unwrap();
        let items = store.outbox().await.unwrap();
        assert_eq!(outbox_ids(&items), ["first", "second", "third"]);
        assert_eq!(items[1], sent);

        // Replace with a new position: moved, not duplicated.
        let mut requeued = outbox_item("first", 10);
        requeued.status = SendStatus::Failed {
            reason: "timeout".into(),
            recoverable: true,
        };
        store.put_outbox(&requeued).await.unwrap();
        let items = store.outbox().await.unwrap();
        assert_eq!(outbox_ids(&items), ["second", "third", "first"]);
        assert_eq!(items[2], requeued);

        store
            .remove_outbox(&ClientMsgId::new("third"))
            .await
            .unwrap();
        store
            .remove_outbox(&ClientMsgId::new("never-queued"))
            .await
            .unwrap();
        assert_eq!(
            outbox_ids(&store.outbox().await.unwrap()),
            ["second", "first"]
        );
        store
            .remove_outbox(&ClientMsgId::new("second"))
            .await
            .unwrap();
        store
            .remove_outbox(&ClientMsgId::new("first"))
            .await
            .unwrap();
        assert!(store.outbox().await.unwrap().is_empty());
    }

    pub async fn equal_server_time_orders_by_seq(store: &impl Store) {
        let c = alice_bob();
        let batch = [
            msg(&c, "s2", 500, Some(2)),
            msg(&c, "s10", 500, Some(10)),
            msg(&c, "none", 500, None),
            msg(&c, "s1", 500, Some(1)),
            msg(&c, "later", 501, Some(0)),
            msg(&c, "s256", 500, Some(256)),
        ];
        store.put_messages(&batch).await.unwrap();
        let all = store.latest(&c, 10).await.unwrap();
        assert_eq!(ids(&all), ["later", "s256", "s10", "s2", "s1", "none"]);
        let below = store.page_before(&c, Some(&batch[0]), 10).await.unwrap();
        assert_eq!(ids(&below), ["s1", "none"]);
    }

    pub async fn negative_and_extreme_times_order(store: &impl Store) {
        let c = alice_bob();
        let batch = [
            msg(&c, "zero", 0, None),
            msg(&c, "max", i64::MAX, None),
            msg(&c, "minus-one", -1, None),
            msg(&c, "min", i64::MIN + 7, None),
            msg(&c, "one", 1, None),
        ];
        store.put_messages(&batch).await.unwrap();
        assert_eq!(
            ids(&store.latest(&c, 10).await.unwrap()),
            ["max", "one", "zero", "minus-one", "min"]
        );
        // Enough messages around time 0 to split the sled tree's nodes between -1 and 0
        // (sled 0.34's reverse scan once panicked there, see `im_arch::sled_store`).
        let g = ConversationId::group("around-zero");
        let around: Vec<Message> = (-400i64..400)
            .map(|t| {
                msg(
                    &g,
                    &format!("z{:04}", t + 400),
                    t / 4,
                    Some(((t + 400) % 3) as u64),
                )
            })
            .collect();
        store.put_messages(&around).await.unwrap();
        let mut want = around.clone();
        want.sort_by(|a, b| {
            (b.server_time, b.seq, &b.server_id).cmp(&(a.server_time, a.seq, &a.server_id))
        });
        let mut got = Vec::new();
        let mut before: Option<Message> = None;
        loop {
            let page = store.page_before(&g, before.as_ref(), 7).await.unwrap();
            let Some(last) = page.last() else { break };
            before = Some(last.clone());
            got.extend(page);
        }
        assert_eq!(ids(&got), ids(&want));
    }
}

/// The message lifecycle's scenarios (issue 20), each over any `Store`.
mod lifecycle_suite {
    use super::*;

    pub async fn a_change_applies_once_and_only_when_newer(store: &impl Store) {
        let c = alice_bob();
        let m = msg(&c, "m", 10, Some(1));
        store.put_messages(std::slice::from_ref(&m)).await.unwrap();
        let e1 = edit(&m, "first fix", 1, 20);
        let ChangeOutcome::Applied { message, revision } = store.apply_change(&e1).await.unwrap()
        else {
            panic!("a first edit must apply");
        };
        assert_eq!(message.unwrap().content, Content::text("first fix"));
        assert_eq!(
            revision,
            MessageRevision {
                revision: 1,
                edited_at: Some(Timestamp::from_millis(20)),
                deleted: false
            }
        );
        // A duplicate, and an older revision after a newer one, change nothing.
        let e3 = edit(&m, "third", 3, 40);
        assert!(matches!(
            store.apply_change(&e3).await.unwrap(),
            ChangeOutcome::Applied { .. }
        ));
        assert_eq!(
            store.apply_change(&e1).await.unwrap(),
            ChangeOutcome::Stale,
            "an older revision must not overwrite a newer one"
        );
        assert_eq!(store.apply_change(&e3).await.unwrap(), ChangeOutcome::Stale);
        let stored = store.message(&m.server_id).await.unwrap().unwrap();
        assert_eq!(stored.content, Content::text("third"));
        // The timeline shows it once, in its latest state; ids and order do not change.
        let page = store.page_before(&c, None, 10).await.unwrap();
        assert_eq!(page, vec![stored]);
        // A redelivery of the original does not bring the old content back.
        assert_eq!(
            store.put_messages(std::slice::from_ref(&m)).await.unwrap(),
            [false]
        );
        assert_eq!(
            store.latest(&c, 1).await.unwrap()[0].content,
            Content::text("third")
        );
        // Recalled: only what `apply` leaves, and an edit cannot bring content back.
        let recall = change(&m, ChangeKind::Recalled, 4, 50);
        store.apply_change(&recall).await.unwrap();
        store.apply_change(&edit(&m, "back", 5, 60)).await.unwrap();
        let recalled = store.message(&m.server_id).await.unwrap().unwrap();
        assert_eq!(
            recalled.content,
            Content::Recalled {
                by: m.sender.clone(),
                at: Timestamp::from_millis(50)
            }
        );
        assert_eq!(
            store
                .revision(&m.server_id)
                .await
                .unwrap()
                .unwrap()
                .revision,
            5
        );
    }

    pub async fn deleted_for_me_leaves_pages_and_stays_gone(store: &impl Store) {
        let c = alice_bob();
        let all: Vec<Message> = (1..=3)
            .map(|i| msg(&c, &format!("d{i}"), 10 * i, Some(i as u64)))
            .collect();
        store.put_messages(&all).await.unwrap();
        store
            .commit_delivery(
                &[],
                &[
                    (all[0].server_id.clone(), Origin::Online),
                    (all[1].server_id.clone(), Origin::Online),
                    (all[2].server_id.clone(), Origin::Online),
                ],
            )
            .await
            .unwrap();
        let gone = change(&all[1], ChangeKind::DeletedForMe, 1, 99);
        assert_eq!(
            store.apply_change(&gone).await.unwrap(),
            ChangeOutcome::Applied {
                message: None,
                revision: MessageRevision {
                    revision: 1,
                    edited_at: None,
                    deleted: true
                }
            }
        );
        assert_eq!(
            ids(&store.page_before(&c, None, 10).await.unwrap()),
            ["d3", "d1"]
        );
        assert_eq!(
            ids(&store.page_after(&c, &all[0], 10).await.unwrap()),
            ["d3"]
        );
        assert_eq!(store.message(&all[1].server_id).await.unwrap(), None);
        // A redelivery is known, never stored again; a later change does not revive it.
        assert_eq!(store.put_messages(&all[1..2]).await.unwrap(), [false]);
        assert_eq!(
            store
                .apply_change(&edit(&all[1], "x", 2, 100))
                .await
                .unwrap(),
            ChangeOutcome::Stale
        );
        assert_eq!(ids(&store.latest(&c, 10).await.unwrap()), ["d3", "d1"]);
        // A durable reader no longer gets it.
        let journal = store.journal_after(0, 10).await.unwrap();
        let journaled: Vec<&str> = journal
            .iter()
            .map(|e| e.message.server_id.as_str())
            .collect();
        assert_eq!(journaled, ["d1", "d3"]);
    }

    pub async fn a_change_before_its_message_applies_when_it_arrives(store: &impl Store) {
        let c = alice_bob();
        let (early, gone) = (msg(&c, "early", 10, Some(1)), msg(&c, "gone", 20, Some(2)));
        assert_eq!(
            store
                .apply_change(&edit(&early, "edited", 2, 30))
                .await
                .unwrap(),
            ChangeOutcome::Pending
        );
        assert_eq!(
            store
                .apply_change(&edit(&early, "older", 1, 25))
                .await
                .unwrap(),
            ChangeOutcome::Pending
        );
        assert_eq!(
            store
                .apply_change(&change(&gone, ChangeKind::DeletedForMe, 1, 30))
                .await
                .unwrap(),
            ChangeOutcome::Pending
        );
        assert_eq!(
            store
                .put_messages(&[early.clone(), gone.clone()])
                .await
                .unwrap(),
            [true, false],
            "a message deleted before it arrived is known, not new"
        );
        let stored = store.message(&early.server_id).await.unwrap().unwrap();
        assert_eq!(
            stored.content,
            Content::text("edited"),
            "revisions apply in order"
        );
        assert_eq!(
            store
                .revision(&early.server_id)
                .await
                .unwrap()
                .unwrap()
                .revision,
            2
        );
        assert_eq!(ids(&store.latest(&c, 10).await.unwrap()), ["early"]);
        // Pending changes are bounded per message.
        let never = msg(&c, "never", 40, Some(3));
        for r in 1..=(MAX_PENDING_PER_MESSAGE as u32 + 5) {
            store
                .apply_change(&edit(&never, &format!("v{r}"), r, 40 + i64::from(r)))
                .await
                .unwrap();
        }
        store
            .put_messages(std::slice::from_ref(&never))
            .await
            .unwrap();
        let last = MAX_PENDING_PER_MESSAGE as u32 + 5;
        assert_eq!(
            store
                .message(&never.server_id)
                .await
                .unwrap()
                .unwrap()
                .content,
            Content::text(format!("v{last}"))
        );
    }

    pub async fn change_cursor_and_receipts_round_trip(store: &impl Store) {
        assert_eq!(store.change_cursor().await.unwrap(), None);
        store
            .set_change_cursor(&ChangeCursor(vec![1, 2]))
            .await
            .unwrap();
        store
            .set_change_cursor(&ChangeCursor(vec![3]))
            .await
            .unwrap();
        assert_eq!(
            store.change_cursor().await.unwrap(),
            Some(ChangeCursor(vec![3]))
        );
        let c = alice_bob();
        let g = ConversationId::group("ops");
        assert!(
            store
                .put_read_receipt(&receipt(&c, "bob", "m2", 20))
                .await
                .unwrap()
        );
        assert!(
            !store
                .put_read_receipt(&receipt(&c, "bob", "m1", 10))
                .await
                .unwrap(),
            "a read position never moves back"
        );
        assert!(
            store
                .put_read_receipt(&receipt(&c, "carol", "m1", 10))
                .await
                .unwrap()
        );
        assert!(
            store
                .put_read_receipt(&receipt(&g, "bob", "g9", 90))
                .await
                .unwrap()
        );
        assert_eq!(
            store.read_receipts(&c).await.unwrap(),
            vec![receipt(&c, "bob", "m2", 20), receipt(&c, "carol", "m1", 10)]
        );
        assert_eq!(
            store.read_receipts(&g).await.unwrap(),
            vec![receipt(&g, "bob", "g9", 90)]
        );
    }
}

/// Stamps every scenario of [`suite`] as a `#[tokio::test]` over a fresh store from
/// `$factory`.
macro_rules! store_conformance {
    ($name:ident, $factory:expr) => {
        mod $name {
            use super::*;

            fn store() -> impl Store {
                $factory
            }

            #[tokio::test]
            async fn put_messages_dedups_by_server_id() {
                suite::put_messages_dedups_by_server_id(&store()).await;
            }

            #[tokio::test]
            async fn message_by_id() {
                suite::message_by_id(&store()).await;
            }

            #[tokio::test]
            async fn latest_is_newest_first() {
                suite::latest_is_newest_first(&store()).await;
            }

            #[tokio::test]
            async fn conversation_states_round_trip_and_overwrite() {
                suite::conversation_states_round_trip_and_overwrite(&store()).await;
            }

            #[tokio::test]
            async fn page_after_pages_forward_without_loss_or_repeat() {
                suite::page_after_pages_forward_without_loss_or_repeat(&store()).await;
            }

            #[tokio::test]
            async fn page_before_pages_without_loss_or_repeat() {
                suite::page_before_pages_without_loss_or_repeat(&store()).await;
            }

            #[tokio::test]
            async fn conversations_are_isolated() {
                suite::conversations_are_isolated(&store()).await;
            }

            #[tokio::test]
            async fn cursors_round_trip_and_overwrite() {
                suite::cursors_round_trip_and_overwrite(&store()).await;
            }

            #[tokio::test]
            async fn in_flight_delivery_is_replaced_and_cleared_by_cursors() {
                suite::in_flight_delivery_is_replaced_and_cleared_by_cursors(&store()).await;
            }

            #[tokio::test]
            async fn outbox_put_replace_remove_in_enqueue_order() {
                suite::outbox_put_replace_remove_in_enqueue_order(&store()).await;
            }

            #[tokio::test]
            async fn equal_server_time_orders_by_seq() {
                suite::equal_server_time_orders_by_seq(&store()).await;
            }

            #[tokio::test]
            async fn journal_appends_with_cursors_in_delivery_order() {
                suite::journal_appends_with_cursors_in_delivery_order(&store()).await;
            }

            #[tokio::test]
            async fn subscriptions_trim_what_all_acknowledged() {
                suite::subscriptions_trim_what_all_acknowledged(&store()).await;
            }

            #[tokio::test]
            async fn sync_mark_round_trips() {
                suite::sync_mark_round_trips(&store()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn flush_returns_for_concurrent_callers() {
                suite::flush_returns_for_concurrent_callers(&store()).await;
            }

            #[tokio::test]
            async fn negative_and_extreme_times_order() {
                suite::negative_and_extreme_times_order(&store()).await;
            }

            #[tokio::test]
            async fn a_change_applies_once_and_only_when_newer() {
                lifecycle_suite::a_change_applies_once_and_only_when_newer(&store()).await;
            }

            #[tokio::test]
            async fn deleted_for_me_leaves_pages_and_stays_gone() {
                lifecycle_suite::deleted_for_me_leaves_pages_and_stays_gone(&store()).await;
            }

            #[tokio::test]
            async fn a_change_before_its_message_applies_when_it_arrives() {
                lifecycle_suite::a_change_before_its_message_applies_when_it_arrives(&store())
                    .await;
            }

            #[tokio::test]
            async fn change_cursor_and_receipts_round_trip() {
                lifecycle_suite::change_cursor_and_receipts_round_trip(&store()).await;
            }
        }
    };
}

store_conformance!(memory_store, MemoryStore::new());
store_conformance!(sled_store, SledStore::temporary().unwrap());
store_conformance!(log_store, LogStore::temporary().unwrap());

/// Tests of what only a persistent store has.
mod sled_only {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    // Tree and key names of the on-disk layout (see `im_arch::sled_store`), used to tamper
    // with a closed store through the `sled` crate directly.
    const META: &str = "meta";
    const SCHEMA_KEY: &[u8] = b"schema_version";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn schema_on_disk(dir: &Path) -> u32 {
        let db = raw_open(dir);
        let raw = db
            .open_tree(META)
            .unwrap()
            .get(SCHEMA_KEY)
            .unwrap()
            .unwrap();
        im_service::codec::decode(&raw).unwrap()
    }

    fn write_schema(dir: &Path, version: u32) {
        let db = raw_open(dir);
        let meta = db.open_tree(META).unwrap();
        meta.insert(SCHEMA_KEY, im_service::codec::encode(&version).unwrap())
            .unwrap();
        db.flush().unwrap();
    }

    #[tokio::test]
    async fn reopen_keeps_changes_pending_changes_cursor_and_receipts() {
        let dir = tempfile::tempdir().unwrap();
        let c = alice_bob();
        let (m, later) = (msg(&c, "m", 10, Some(1)), msg(&c, "later", 20, Some(2)));
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_messages(std::slice::from_ref(&m)).await.unwrap();
            store.apply_change(&edit(&m, "fixed", 1, 11)).await.unwrap();
            store
                .apply_change(&change(&later, ChangeKind::Recalled, 1, 21))
                .await
                .unwrap();
            store
                .set_change_cursor(&ChangeCursor(vec![7]))
                .await
                .unwrap();
            store
                .put_read_receipt(&receipt(&c, "bob", "m", 10))
                .await
                .unwrap();
            store.flush().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.message(&m.server_id).await.unwrap().unwrap().content,
            Content::text("fixed")
        );
        assert_eq!(
            store.apply_change(&edit(&m, "fixed", 1, 11)).await.unwrap(),
            ChangeOutcome::Stale
        );
        assert_eq!(
            store.change_cursor().await.unwrap(),
            Some(ChangeCursor(vec![7]))
        );
        assert_eq!(store.read_receipts(&c).await.unwrap().len(), 1);
        store
            .put_messages(std::slice::from_ref(&later))
            .await
            .unwrap();
        assert!(matches!(
            store
                .message(&later.server_id)
                .await
                .unwrap()
                .unwrap()
                .content,
            Content::Recalled { .. }
        ));
    }

    #[tokio::test]
    async fn reopen_after_drop_keeps_messages_cursors_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let c = alice_bob();
        let messages: Vec<Message> = (0..20)
            .map(|i| msg(&c, &format!("m{i:02}"), 100 + i, Some(i as u64 + 1)))
            .collect();
        let cursor = SyncCursor {
            seq: Some(Seq(20)),
            time: Timestamp::from_millis(119),
        };
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_messages(&messages).await.unwrap();
            store.set_cursors(&[(c.clone(), cursor)]).await.unwrap();
            store.put_outbox(&outbox_item("q2", 2)).await.unwrap();
            store.put_outbox(&outbox_item("q1", 1)).await.unwrap();
            // A message about to be delivered, not stored yet.
            store
                .begin_delivery(&[ServerMsgId::new("m20")])
                .await
                .unwrap();
            store.flush().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let mut newest_first = messages.clone();
        newest_first.reverse();
        assert_eq!(store.latest(&c, 100).await.unwrap(), newest_first);
        assert_eq!(
            store.message(&messages[3].server_id).await.unwrap(),
            Some(messages[3].clone())
        );
        assert_eq!(
            store.put_messages(&messages[..2]).await.unwrap(),
            [false, false]
        );
        assert_eq!(store.cursor(&c).await.unwrap(), Some(cursor));
        assert_eq!(store.in_flight().await.unwrap(), [ServerMsgId::new("m20")]);
        assert_eq!(outbox_ids(&store.outbox().await.unwrap()), ["q1", "q2"]);
        store.remove_outbox(&ClientMsgId::new("q1")).await.unwrap();
        drop(store);
        // Dropped without an explicit flush: the drop flushes.
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(outbox_ids(&store.outbox().await.unwrap()), ["q2"]);
        drop(store);
        assert_eq!(schema_on_disk(dir.path()), SCHEMA_VERSION);
    }

    /// sled 0.34 reads a snapshot a killed process left half-written (`snap.*.generating`)
    /// as the newest one and refuses to open for good; the store removes it and opens, with
    /// everything it held (the crash harness found this; a process killed during open
    /// leaves one).
    #[tokio::test]
    async fn a_partial_snapshot_left_by_a_killed_process_does_not_lock_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let c = alice_bob();
        let messages: Vec<Message> = (0..5)
            .map(|i| msg(&c, &format!("p{i}"), 10 + i, None))
            .collect();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_messages(&messages).await.unwrap();
            store.flush().await.unwrap();
        }
        // What a kill in the middle of writing a snapshot leaves: a newer, partial one.
        let partial = dir.path().join("snap.7FFFFFFFFFFFFFFF.generating");
        std::fs::write(&partial, vec![0xAB; 8192]).unwrap();
        let store = SledStore::open(dir.path())
            .expect("a partial snapshot must not keep the store from opening");
        assert!(!partial.exists(), "the partial snapshot was removed");
        let mut newest_first = messages.clone();
        newest_first.reverse();
        assert_eq!(
            store.latest(&c, 10).await.unwrap(),
            newest_first,
            "nothing lost"
        );
    }

    #[test]
    fn newer_schema_is_refused_and_left_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        write_schema(dir.path(), SCHEMA_VERSION + 1);
        let err = SledStore::open(dir.path()).unwrap_err();
        assert_eq!(
            err,
            ArchError::SchemaTooNew {
                found: SCHEMA_VERSION + 1,
                supported: SCHEMA_VERSION
            }
        );
        assert!(!err.is_retryable());
        assert_eq!(schema_on_disk(dir.path()), SCHEMA_VERSION + 1);
    }

    #[test]
    fn older_schema_is_refused_without_bumping() {
        let dir = tempfile::tempdir().unwrap();
        write_schema(dir.path(), SCHEMA_VERSION - 1);
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, ArchError::Store(s) if s.contains("older") && s.contains("migration")),
            "{err:?}"
        );
        assert_eq!(schema_on_disk(dir.path()), SCHEMA_VERSION - 1);
    }

    #[tokio::test]
    async fn corrupt_message_is_reported_and_the_rest_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let c = alice_bob();
        let (m1, m2, m3) = (
            msg(&c, "m1", 1, Some(1)),
            msg(&c, "m2", 2, Some(2)),
            msg(&c, "m3", 3, Some(3)),
        );
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .put_messages(&[m1.clone(), m2.clone(), m3.clone()])
                .await
                .unwrap();
        }
        let key = {
            let db = raw_open(dir.path());
            let raw = db
                .open_tree("by_server_id")
                .unwrap()
                .get(b"m2")
                .unwrap()
                .unwrap();
            let key: Vec<u8> = im_service::codec::decode(&raw).unwrap();
            // A valid format byte followed by bytes that are no `Message`.
            db.open_tree("messages")
                .unwrap()
                .insert(&key, &[1u8, 0xff, 0xff, 0xff][..])
                .unwrap();
            db.flush().unwrap();
            key
        };
        let store = SledStore::open(dir.path()).unwrap();
        match store.message(&m2.server_id).await {
            Err(ArchError::CorruptEntry {
                tree,
                key: shown,
                reason,
            }) => {
                assert_eq!(tree, "messages");
                assert_eq!(shown, hex(&key));
                assert!(!reason.is_empty());
            }
            other => panic!("expected CorruptEntry, got {other:?}"),
        }
        assert!(
            !store
                .message(&m2.server_id)
                .await
                .unwrap_err()
                .is_retryable()
        );
        // Everything that does not touch the entry still works.
        assert_eq!(
            store.message(&m1.server_id).await.unwrap(),
            Some(m1.clone())
        );
        assert_eq!(
            store.message(&m3.server_id).await.unwrap(),
            Some(m3.clone())
        );
        assert_eq!(
            store.latest(&c, 1).await.unwrap(),
            std::slice::from_ref(&m3)
        );
        assert_eq!(store.page_before(&c, Some(&m2), 10).await.unwrap(), [m1]);
        assert!(matches!(
            store.latest(&c, 10).await,
            Err(ArchError::CorruptEntry { .. })
        ));
        let m4 = msg(&c, "m4", 4, Some(4));
        assert_eq!(
            store.put_messages(std::slice::from_ref(&m4)).await.unwrap(),
            [true]
        );
        assert_eq!(store.latest(&c, 2).await.unwrap(), [m4, m3]);
    }

    #[tokio::test]
    async fn corrupt_outbox_entry_is_reported_and_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_outbox(&outbox_item("ok", 1)).await.unwrap();
            store.put_outbox(&outbox_item("bad", 2)).await.unwrap();
        }
        let mut key = 2u64.to_be_bytes().to_vec();
        key.extend_from_slice(b"bad");
        {
            let db = raw_open(dir.path());
            let outbox = db.open_tree("outbox").unwrap();
            assert!(
                outbox.contains_key(&key).unwrap(),
                "outbox key layout changed"
            );
            outbox.insert(&key, &b"garbage"[..]).unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        match store.outbox().await {
            Err(ArchError::CorruptEntry {
                tree, key: shown, ..
            }) => {
                assert_eq!(tree, "outbox");
                assert_eq!(shown, hex(&key));
            }
            other => panic!("expected CorruptEntry, got {other:?}"),
        }
        // The bad item can be dropped by its client id; the rest of the queue is intact.
        store.remove_outbox(&ClientMsgId::new("bad")).await.unwrap();
        assert_eq!(outbox_ids(&store.outbox().await.unwrap()), ["ok"]);
    }

    fn arb_messages() -> impl Strategy<Value = Vec<Message>> {
        // Few conversations, a narrow time range and few sequences: many ties.
        proptest::collection::vec(
            (
                0usize..3,
                -3i64..4,
                proptest::option::of(0u64..4),
                any::<u16>(),
            ),
            0..80,
        )
        .prop_map(|specs| {
            let convs = [
                alice_bob(),
                ConversationId::group("a"),
                ConversationId::group("ab"),
            ];
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (c, time, seq, tag))| msg(&convs[c], &format!("{tag:x}-{i}"), time, seq))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn random_messages_round_trip_newest_first(
            messages in arb_messages(),
            chunk in 1usize..30,
            page in 1usize..12,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let store = SledStore::temporary().unwrap();
                for batch in messages.chunks(chunk) {
                    prop_assert!(store.put_messages(batch).await.unwrap().iter().all(|&n| n));
                }
                prop_assert!(store.put_messages(&messages).await.unwrap().iter().all(|&n| !n));
                for conv in [alice_bob(), ConversationId::group("a"), ConversationId::group("ab")] {
                    let mut want: Vec<Message> =
                        messages.iter().filter(|m| m.conversation == conv).cloned().collect();
                    want.sort_by(|a, b| {
                        (b.server_time, b.seq, &b.server_id).cmp(&(a.server_time, a.seq, &a.server_id))
                    });
                    let mut got = Vec::new();
                    let mut before: Option<Message> = None;
                    loop {
                        let p = store.page_before(&conv, before.as_ref(), page).await.unwrap();
                        prop_assert!(p.len() <= page);
                        if p.is_empty() {
                            break;
                        }
                        before = p.last().cloned();
                        got.extend(p);
                    }
                    prop_assert_eq!(&got, &want);
                    let latest = store.latest(&conv, page).await.unwrap();
                    prop_assert_eq!(&latest[..], &want[..want.len().min(page)]);
                }
                Ok(())
            })?;
        }
    }
}

/// Raw sled on a store's directory, waiting (at most 2 s) for the lock a just-dropped store
/// releases when sled's background flusher notices.
fn raw_open(dir: impl AsRef<std::path::Path>) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::open(dir.as_ref()) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("open {}: {e}", dir.as_ref().display()),
        }
    }
}
