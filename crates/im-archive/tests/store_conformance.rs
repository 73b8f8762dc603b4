//! One conformance suite every [`ArchiveStore`] runs: the in-memory twin, sled and
//! PostgreSQL (with a server: `IM_POSTGRES_URL`).
//!
//! `store_conformance!(module, make)` expands the same tests for a store built by `make`;
//! a new backend (a server database) adds one line here and is held to the same contract.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "postgres")]
mod pg_support;

use im_archive::{ArchiveError, ArchiveStore, ChangeStored, PageQuery, Position, Stored};
use im_service::{
    ChangeKind, ClientMsgId, Content, ConversationId, GroupId, Message, MessageChange, ServerMsgId,
    Timestamp, UserId,
};

fn user(name: &str) -> UserId {
    UserId::new(name)
}

fn direct(a: &str, b: &str) -> ConversationId {
    ConversationId::direct(&user(a), &user(b))
}

/// A message `id` of `conv` from `sender` at `time` ms.
fn msg(conv: &ConversationId, sender: &str, id: &str, time: i64) -> Message {
    Message {
        server_id: ServerMsgId::new(id),
        client_id: ClientMsgId::new(format!("c-{id}")),
        conversation: conv.clone(),
        sender: user(sender),
        seq: None,
        server_time: Timestamp::from_millis(time),
        client_time: Timestamp::from_millis(time - 5),
        content: Content::Text(format!("body of {id}")),
    }
}

fn all(conv: &ConversationId, limit: usize) -> PageQuery {
    PageQuery {
        conversation: conv.clone(),
        from: Timestamp::from_millis(i64::MIN),
        to: Timestamp::from_millis(i64::MAX),
        before: None,
        limit,
    }
}

fn ids(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.server_id.as_str()).collect()
}

/// A change of `m` by its sender at revision `revision`.
fn change(m: &Message, kind: ChangeKind, revision: u32) -> MessageChange {
    MessageChange {
        conversation: m.conversation.clone(),
        target: m.server_id.clone(),
        kind,
        by: m.sender.clone(),
        at: Timestamp::from_millis(m.server_time.as_millis() + i64::from(revision)),
        revision,
    }
}

fn edit(m: &Message, text: &str, revision: u32) -> MessageChange {
    change(m, ChangeKind::Edited(Content::text(text)), revision)
}

async fn revisions(s: &dyn ArchiveStore, vendor: &str, m: &Message) -> Vec<u32> {
    s.changes_of(vendor, &m.server_id)
        .await
        .unwrap()
        .iter()
        .map(|c| c.revision)
        .collect()
}

/// Reads a whole range page by page, following cursors.
async fn read_all(store: &dyn ArchiveStore, mut q: PageQuery) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        let page = store.page(&q).await.unwrap();
        assert!(page.messages.len() <= q.limit);
        out.extend(page.messages);
        match page.next {
            Some(next) => q.before = Some(next),
            None => return out,
        }
    }
}

/// The contract, as functions over any store; the macro below runs each on each backend.
mod contract {
    use super::*;

    pub async fn stores_once_per_vendor_id(s: &dyn ArchiveStore) {
        let c = direct("alice", "bob");
        let m = msg(&c, "alice", "m1", 1_000);
        assert_eq!(
            s.store("ref", std::slice::from_ref(&m)).await.unwrap(),
            [Stored::New]
        );
        assert_eq!(
            s.store("ref", std::slice::from_ref(&m)).await.unwrap(),
            [Stored::Duplicate]
        );
        // A batch holding a repeat of itself stores the message once.
        let m2 = msg(&c, "bob", "m2", 2_000);
        assert_eq!(
            s.store("ref", &[m2.clone(), m2.clone()]).await.unwrap(),
            [Stored::New, Stored::Duplicate]
        );
        // The same id from another vendor is another message.
        assert_eq!(
            s.store("other", std::slice::from_ref(&m)).await.unwrap(),
            [Stored::New]
        );
        s.flush().await.unwrap();
        assert_eq!(s.len().await.unwrap(), 3);
        assert!(!s.is_empty().await.unwrap());
        // Each message's outcome in its own place, whatever order a store works in (the
        // PostgreSQL store sorts a batch by lock key): three of eight were stored before.
        let batch: Vec<Message> = (0..8)
            .map(|i| msg(&c, "alice", &format!("b{i}"), 3_000 + i))
            .collect();
        s.store(
            "ref",
            &[batch[1].clone(), batch[4].clone(), batch[6].clone()],
        )
        .await
        .unwrap();
        let want: Vec<Stored> = (0..8)
            .map(|i| {
                if [1, 4, 6].contains(&i) {
                    Stored::Duplicate
                } else {
                    Stored::New
                }
            })
            .collect();
        assert_eq!(
            s.store("ref", &batch).await.unwrap(),
            want,
            "each message's outcome in its place"
        );
        assert_eq!(s.len().await.unwrap(), 11);
    }

    pub async fn pages_newest_first_with_cursor(s: &dyn ArchiveStore) {
        let c = direct("alice", "bob");
        // Stored out of order, two in the same millisecond (ties broken by id).
        let times = [5, 1, 3, 3, 9, 7, 2, 8, 4, 6];
        let batch: Vec<Message> = times
            .iter()
            .enumerate()
            .map(|(i, t)| msg(&c, "alice", &format!("id{i}"), *t * 1000))
            .collect();
        s.store("ref", &batch).await.unwrap();
        let got = read_all(s, all(&c, 3)).await;
        assert_eq!(got.len(), 10, "every message once");
        let positions: Vec<Position> = got.iter().map(Position::of).collect();
        let mut sorted = positions.clone();
        sorted.sort();
        sorted.reverse();
        assert_eq!(positions, sorted, "newest first, ties by id");
        assert_eq!(
            got[0].content,
            Content::Text("body of id4".into()),
            "the full message"
        );
        // A page exactly filling the range has no next cursor.
        let exact = s.page(&all(&c, 10)).await.unwrap();
        assert_eq!(exact.messages.len(), 10);
        assert!(exact.next.is_none());
    }

    pub async fn time_range_is_half_open(s: &dyn ArchiveStore) {
        let c = direct("alice", "bob");
        let batch: Vec<Message> = (1..=9)
            .map(|t| msg(&c, "bob", &format!("t{t}"), t * 1000))
            .collect();
        s.store("ref", &batch).await.unwrap();
        let q = PageQuery {
            from: Timestamp::from_millis(3_000),
            to: Timestamp::from_millis(7_000),
            ..all(&c, 2)
        };
        assert_eq!(ids(&read_all(s, q).await), ["t6", "t5", "t4", "t3"]);
        // Negative times (before 1970) sort before positive ones.
        s.store("ref", &[msg(&c, "bob", "old", -50)]).await.unwrap();
        let q = PageQuery {
            to: Timestamp::from_millis(1_000),
            ..all(&c, 5)
        };
        assert_eq!(ids(&read_all(s, q).await), ["old"]);
    }

    pub async fn conversations_do_not_mix(s: &dyn ArchiveStore) {
        let ab = direct("alice", "bob");
        // A conversation whose name extends the other's must not leak into its pages.
        let g1 = ConversationId::Group(GroupId::new("room"));
        let g2 = ConversationId::Group(GroupId::new("room2"));
        s.store(
            "ref",
            &[
                msg(&ab, "alice", "a", 1),
                msg(&g1, "carol", "g1", 2),
                msg(&g2, "dave", "g2", 3),
            ],
        )
        .await
        .unwrap();
        assert_eq!(ids(&read_all(s, all(&g1, 10)).await), ["g1"]);
        assert_eq!(ids(&read_all(s, all(&g2, 10)).await), ["g2"]);
        assert_eq!(ids(&read_all(s, all(&ab, 10)).await), ["a"]);
        let unknown = direct("x", "y");
        assert!(!s.knows(&unknown).await.unwrap());
        assert!(
            s.page(&all(&unknown, 10))
                .await
                .unwrap()
                .messages
                .is_empty()
        );
        assert!(s.knows(&g1).await.unwrap());
    }

    /// Many writers flushing at once all complete, and each flush covers its own writes
    /// (sled 0.34's concurrent `flush_async` deadlocks; the store must not expose that).
    pub async fn concurrent_flushes_complete(s: &dyn ArchiveStore) {
        let c = direct("alice", "bob");
        // The deadlock is a race: rounds make it likely to show if it is there.
        for round in 0..20 {
            let writers = (0..32).map(|i| {
                let m = msg(&c, "alice", &format!("w{round}-{i}"), i);
                async move {
                    s.store("ref", std::slice::from_ref(&m)).await.unwrap();
                    s.flush().await.unwrap();
                }
            });
            futures::future::join_all(writers).await;
        }
        assert_eq!(s.len().await.unwrap(), 20 * 32);
    }

    pub async fn memberships_come_from_messages(s: &dyn ArchiveStore) {
        let ab = direct("alice", "bob");
        let room = ConversationId::Group(GroupId::new("room"));
        s.store(
            "ref",
            &[msg(&ab, "alice", "a", 1), msg(&room, "bob", "r", 2)],
        )
        .await
        .unwrap();
        // Both sides of a direct conversation, only the sender of a group message.
        assert!(s.is_known_member(&user("bob"), &ab).await.unwrap());
        assert!(s.is_known_member(&user("alice"), &ab).await.unwrap());
        assert!(s.is_known_member(&user("bob"), &room).await.unwrap());
        assert!(!s.is_known_member(&user("alice"), &room).await.unwrap());
        assert!(!s.is_known_member(&user("carol"), &ab).await.unwrap());
        let mut want = vec![ab.clone(), room.clone()];
        want.sort();
        assert_eq!(s.conversations_of(&user("bob")).await.unwrap(), want);
        assert_eq!(s.conversations_of(&user("alice")).await.unwrap(), [ab]);
        assert!(s.conversations_of(&user("carol")).await.unwrap().is_empty());
    }
}

/// The message-change rules (`im_archive::store`'s module doc).
mod changes {
    use super::*;

    pub async fn apply_by_revision_once(s: &dyn ArchiveStore) {
        let c = direct("alice", "bob");
        let m = msg(&c, "alice", "m1", 1_000);
        let other = msg(&c, "bob", "m2", 2_000);
        s.store("ref", &[m.clone(), other.clone()]).await.unwrap();

        let e1 = edit(&m, "fixed", 1);
        assert_eq!(s.change("ref", &e1).await.unwrap(), ChangeStored::Applied);
        assert_eq!(
            s.change("ref", &e1).await.unwrap(),
            ChangeStored::Duplicate,
            "a redelivered change is a duplicate"
        );
        let page = s.page(&all(&c, 10)).await.unwrap().messages;
        assert_eq!(
            ids(&page),
            ["m2", "m1"],
            "an edit keeps the message's place"
        );
        assert_eq!(page[1].content, Content::text("fixed"));
        assert_eq!(page[0], other, "other messages are untouched");

        let recall = change(&m, ChangeKind::Recalled, 3);
        assert_eq!(
            s.change("ref", &recall).await.unwrap(),
            ChangeStored::Applied
        );
        // Revision 2 comes late: recorded, but older than the recall, so nothing changes.
        assert_eq!(
            s.change("ref", &edit(&m, "late", 2)).await.unwrap(),
            ChangeStored::Duplicate,
            "an older change is a duplicate"
        );
        let page = s.page(&all(&c, 10)).await.unwrap().messages;
        assert_eq!(
            page[1],
            recall
                .apply(&edit(&m, "fixed", 1).apply(&m).unwrap())
                .unwrap()
        );
        assert!(matches!(page[1].content, Content::Recalled { .. }));
        assert_eq!(
            revisions(s, "ref", &m).await,
            [1, 2, 3],
            "each change stored once"
        );
        assert_eq!(
            s.original("ref", &m.server_id).await.unwrap(),
            Some(m.clone())
        );
        assert_eq!(
            s.original("ref", &other.server_id).await.unwrap(),
            Some(other)
        );
        assert_eq!(s.original("other", &m.server_id).await.unwrap(), None);
        assert!(
            s.changes_of("other", &m.server_id)
                .await
                .unwrap()
                .is_empty(),
            "changes are per vendor"
        );
        assert_eq!(s.len().await.unwrap(), 2, "changes are not messages");
        s.flush().await.unwrap();
    }

    pub async fn change_before_its_message_applies_on_arrival(s: &dyn ArchiveStore) {
        let c = ConversationId::Group(GroupId::new("room"));
        let m = msg(&c, "alice", "m1", 1_000);
        // Out of order, before the message: revision 3 (delete for me), then 1 (an edit).
        let gone = change(&m, ChangeKind::DeletedForMe, 3);
        assert_eq!(s.change("ref", &gone).await.unwrap(), ChangeStored::Pending);
        assert_eq!(
            s.change("ref", &edit(&m, "first", 1)).await.unwrap(),
            ChangeStored::Pending
        );
        assert_eq!(
            s.change("ref", &gone).await.unwrap(),
            ChangeStored::Duplicate
        );
        assert!(
            !s.knows(&c).await.unwrap(),
            "a pending change makes no conversation"
        );
        assert_eq!(s.len().await.unwrap(), 0);

        assert_eq!(
            s.store("ref", std::slice::from_ref(&m)).await.unwrap(),
            [Stored::New]
        );
        let page = s.page(&all(&c, 10)).await.unwrap().messages;
        assert_eq!(
            page.len(),
            1,
            "a delete-for-me never removes a message from the archive"
        );
        assert_eq!(
            page[0].content,
            Content::text("first"),
            "a change kept before its message applies when the message arrives"
        );
        assert_eq!(
            s.original("ref", &m.server_id).await.unwrap(),
            Some(m.clone())
        );
        // Revision 2 is older than the delete-for-me (3), which the archive does not apply,
        // and newer than every edit: it shows.
        assert_eq!(
            s.change("ref", &edit(&m, "second", 2)).await.unwrap(),
            ChangeStored::Applied
        );
        assert_eq!(
            s.page(&all(&c, 10)).await.unwrap().messages[0].content,
            Content::text("second"),
            "a late edit behind a newer delete-for-me still shows"
        );
        assert_eq!(
            s.change("ref", &edit(&m, "fourth", 4)).await.unwrap(),
            ChangeStored::Applied
        );
        let page = s.page(&all(&c, 10)).await.unwrap().messages;
        assert_eq!(page[0].content, Content::text("fourth"));
        assert_eq!(revisions(s, "ref", &m).await, [1, 2, 3, 4]);
        // The same id from another vendor is another message: its change waits for it.
        assert_eq!(
            s.change("other", &edit(&m, "x", 1)).await.unwrap(),
            ChangeStored::Pending
        );
    }

    pub async fn delete_for_me_keeps_the_message(s: &dyn ArchiveStore) {
        let c = direct("alice", "bob");
        let m = msg(&c, "alice", "m1", 1_000);
        s.store("ref", std::slice::from_ref(&m)).await.unwrap();
        let gone = MessageChange {
            by: user("bob"),
            ..change(&m, ChangeKind::DeletedForMe, 1)
        };
        assert_eq!(s.change("ref", &gone).await.unwrap(), ChangeStored::Applied);
        assert_eq!(
            s.page(&all(&c, 10)).await.unwrap().messages,
            std::slice::from_ref(&m)
        );
        assert_eq!(revisions(s, "ref", &m).await, [1]);
    }

    /// Revisions at the ends of `u32` (sled writes them big-endian into keys: four 0xff
    /// bytes are where its reverse iterator has panicked before), and ids that prefix one
    /// another, keep their logs apart.
    pub async fn extreme_revisions_and_prefix_ids(s: &dyn ArchiveStore) {
        let c = direct("alice", "bob");
        let m = msg(&c, "alice", "m", 1_000);
        let longer = msg(&c, "alice", "m\u{0}1", 1_000);
        s.store("ref", &[m.clone(), longer.clone()]).await.unwrap();
        assert_eq!(
            s.change("ref", &edit(&m, "max", u32::MAX)).await.unwrap(),
            ChangeStored::Applied
        );
        assert_eq!(
            s.change("ref", &edit(&m, "max", u32::MAX)).await.unwrap(),
            ChangeStored::Duplicate
        );
        assert_eq!(
            s.change("ref", &edit(&m, "zero", 0)).await.unwrap(),
            ChangeStored::Duplicate
        );
        assert_eq!(
            s.change("ref", &edit(&longer, "other", 1)).await.unwrap(),
            ChangeStored::Applied
        );
        assert_eq!(revisions(s, "ref", &m).await, [0, u32::MAX]);
        assert_eq!(revisions(s, "ref", &longer).await, [1]);
        let page = s.page(&all(&c, 10)).await.unwrap().messages;
        let content = |id: &str| {
            page.iter()
                .find(|x| x.server_id.as_str() == id)
                .map(|x| x.content.clone())
        };
        assert_eq!(content("m"), Some(Content::text("max")));
        assert_eq!(content("m\u{0}1"), Some(Content::text("other")));
    }

    pub async fn a_change_naming_another_conversation_is_refused(s: &dyn ArchiveStore) {
        let c = direct("alice", "bob");
        let m = msg(&c, "alice", "m1", 1_000);
        s.store("ref", std::slice::from_ref(&m)).await.unwrap();
        let stray = MessageChange {
            conversation: direct("alice", "mallory"),
            ..edit(&m, "hijacked", 1)
        };
        assert!(matches!(
            s.change("ref", &stray).await,
            Err(ArchiveError::BadRequest(_))
        ));
        assert!(revisions(s, "ref", &m).await.is_empty(), "nothing is kept");
        assert_eq!(s.page(&all(&c, 10)).await.unwrap().messages, [m]);
    }
}

/// Runs every contract test on the store `make()` builds.
macro_rules! store_conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn stores_once_per_vendor_id() {
                let Some((store, _keep)) = ($make) else {
                    return;
                };
                contract::stores_once_per_vendor_id(&store).await;
            }

            #[tokio::test]
            async fn pages_newest_first_with_cursor() {
                let Some((store, _keep)) = ($make) else {
                    return;
                };
                contract::pages_newest_first_with_cursor(&store).await;
            }

            #[tokio::test]
            async fn time_range_is_half_open() {
                let Some((store, _keep)) = ($make) else {
                    return;
                };
                contract::time_range_is_half_open(&store).await;
            }

            #[tokio::test]
            async fn conversations_do_not_mix() {
                let Some((store, _keep)) = ($make) else {
                    return;
                };
                contract::conversations_do_not_mix(&store).await;
            }

            /// On its own thread and runtime: a deadlocked store blocks its runtime's
            /// workers, so only a wait from outside can report it as a failure.
            #[test]
            fn concurrent_flushes_complete() {
                let (done, finished) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let Some((store, _keep)) = ($make) else {
                            return;
                        };
                        contract::concurrent_flushes_complete(&store).await;
                    });
                    let _ = done.send(());
                });
                finished
                    .recv_timeout(std::time::Duration::from_secs(60))
                    .expect("concurrent flushes deadlocked or failed");
            }

            #[tokio::test]
            async fn changes_apply_by_revision_once() {
                let Some((store, _keep)) = ($make) else {
                    return;
                };
                changes::apply_by_revision_once(&store).await;
            }

            #[tokio::test]
            async fn a_change_before_its_message_applies_on_arrival() {
                let Some((store, _keep)) = ($make) else {
                    return;
                };
                changes::change_before_its_message_applies_on_arrival(&store).await;
            }

            #[tokio::test]
            async fn delete_for_me_keeps_the_message() {
                let Some((store, _keep)) = ($make) else {
                    return;
                };
                changes::delete_for_me_keeps_the_message(&store).await;
            }

            #[tokio::test]
            async fn extreme_revisions_and_prefix_ids() {
                let Some((store, _keep)) = ($make) else {
                    return;
                };
                changes::extreme_revisions_and_prefix_ids(&store).await;
            }

            #[tokio::test]
            async fn a_change_naming_another_conversation_is_refused() {
                let Some((store, _keep)) = ($make) else {
                    return;
                };
                changes::a_change_naming_another_conversation_is_refused(&store).await;
            }

            #[tokio::test]
            async fn memberships_come_from_messages() {
                let Some((store, _keep)) = ($make) else {
                    return;
                };
                contract::memberships_come_from_messages(&store).await;
            }
        }
    };
}

store_conformance!(memory, Some((im_archive::MemoryArchive::new(), ())));
store_conformance!(sled, {
    let dir = tempfile::tempdir().unwrap();
    Some((im_archive::SledArchive::open(dir.path()).unwrap(), dir))
});
// On a fresh database of the server `IM_POSTGRES_URL` names (skipped without one, unless
// `IM_REQUIRE_POSTGRES` is set).
#[cfg(feature = "postgres")]
store_conformance!(postgres, {
    match pg_support::server_url() {
        Some(url) => {
            let url = pg_support::fresh_database(&url).await;
            let config = im_archive::PgConfig::new(&url);
            Some((im_archive::PgArchive::connect(&config).await.unwrap(), ()))
        }
        None => None,
    }
});

/// Sled only: what was flushed survives a reopen, including the dedup index and the count.
#[tokio::test]
async fn sled_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = direct("alice", "bob");
    {
        let s = im_archive::SledArchive::open(dir.path()).unwrap();
        s.store("ref", &[msg(&c, "alice", "a", 1), msg(&c, "bob", "b", 2)])
            .await
            .unwrap();
        s.flush().await.unwrap();
    }
    let s = im_archive::SledArchive::open(dir.path()).unwrap();
    assert_eq!(s.len().await.unwrap(), 2);
    assert_eq!(
        s.store("ref", &[msg(&c, "alice", "a", 1)]).await.unwrap(),
        [Stored::Duplicate],
        "a redelivery after restart is recognised"
    );
    assert_eq!(ids(&read_all(&s, all(&c, 10)).await), ["b", "a"]);
    assert!(s.is_known_member(&user("bob"), &c).await.unwrap());
}

/// Sled only: the change log, the originals and the pending changes survive a reopen.
#[tokio::test]
async fn sled_keeps_changes_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = direct("alice", "bob");
    let (a, b) = (msg(&c, "alice", "a", 1), msg(&c, "bob", "b", 2));
    {
        let s = im_archive::SledArchive::open(dir.path()).unwrap();
        s.store("ref", std::slice::from_ref(&a)).await.unwrap();
        s.change("ref", &edit(&a, "edited", 1)).await.unwrap();
        assert_eq!(
            s.change("ref", &change(&b, ChangeKind::Recalled, 1))
                .await
                .unwrap(),
            ChangeStored::Pending
        );
        s.flush().await.unwrap();
    }
    let s = im_archive::SledArchive::open(dir.path()).unwrap();
    assert_eq!(
        s.change("ref", &edit(&a, "edited", 1)).await.unwrap(),
        ChangeStored::Duplicate,
        "a redelivery after restart is recognised"
    );
    s.store("ref", std::slice::from_ref(&b)).await.unwrap();
    let page = read_all(&s, all(&c, 10)).await;
    assert_eq!(ids(&page), ["b", "a"]);
    assert!(matches!(page[0].content, Content::Recalled { .. }));
    assert_eq!(page[1].content, Content::text("edited"));
    assert_eq!(s.original("ref", &a.server_id).await.unwrap(), Some(a));
    assert_eq!(s.len().await.unwrap(), 2);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// A change a vendor could make to `m` at `revision`: `kind` 0–2 edits, 3 deletes for
    /// bob; the last revision may be a recall (nothing changes a message after a recall).
    fn vendor_change(
        m: &Message,
        revision: u32,
        kind: u8,
        recall_last: bool,
        last: u32,
    ) -> MessageChange {
        if recall_last && revision == last {
            return change(m, ChangeKind::Recalled, revision);
        }
        match kind {
            3 => MessageChange {
                by: user("bob"),
                ..change(m, ChangeKind::DeletedForMe, revision)
            },
            k => edit(m, &format!("edit {revision}.{k}"), revision),
        }
    }

    /// A current-thread runtime for the async store calls of one proptest case (the
    /// proptest bodies are synchronous closures).
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any delivery order of a message's callbacks, with redeliveries and the message
        /// itself arriving at any point, ends in the same history as delivery in order, on
        /// both backends alike, and records each revision once.
        #[test]
        fn changes_converge_whatever_the_delivery_order(
            kinds in prop::collection::vec(0u8..4, 1..8),
            recall_last in any::<bool>(),
            order in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
            message_at in any::<prop::sample::Index>(),
        ) {
            // The store is async: one current-thread runtime drives this case.
            let rt = runtime();
            rt.block_on(async {
                let c = direct("alice", "bob");
                let m = msg(&c, "alice", "m1", 1_000);
                let last = kinds.len() as u32;
                let changes: Vec<MessageChange> = kinds
                    .iter()
                    .enumerate()
                    .map(|(i, k)| vendor_change(&m, i as u32 + 1, *k, recall_last, last))
                    .collect();
                // In order: the message, then each change.
                let in_order = im_archive::MemoryArchive::new();
                in_order.store("ref", std::slice::from_ref(&m)).await.unwrap();
                for ch in &changes {
                    prop_assert_eq!(in_order.change("ref", ch).await.unwrap(), ChangeStored::Applied);
                }
                let want = in_order.page(&all(&c, 10)).await.unwrap().messages;

                // Shuffled with repeats: every change at least once, then random redeliveries.
                let mut deliveries: Vec<usize> = (0..changes.len()).collect();
                deliveries.extend(order.iter().map(|i| i.index(changes.len())));
                for (n, i) in order.iter().enumerate() {
                    let (a, b) = (n % deliveries.len(), i.index(deliveries.len()));
                    deliveries.swap(a, b);
                }
                let at = message_at.index(deliveries.len() + 1);
                let dir = tempfile::tempdir().unwrap();
                let sled = im_archive::SledArchive::open(dir.path()).unwrap();
                let memory = im_archive::MemoryArchive::new();
                let mut outcomes: Vec<Vec<ChangeStored>> = Vec::new();
                for store in [&sled as &dyn ArchiveStore, &memory] {
                    let mut seen = Vec::new();
                    for (n, i) in deliveries.iter().enumerate() {
                        if n == at {
                            store.store("ref", std::slice::from_ref(&m)).await.unwrap();
                        }
                        seen.push(store.change("ref", &changes[*i]).await.unwrap());
                    }
                    if at == deliveries.len() {
                        store.store("ref", std::slice::from_ref(&m)).await.unwrap();
                    }
                    prop_assert_eq!(&store.page(&all(&c, 10)).await.unwrap().messages, &want);
                    prop_assert_eq!(store.changes_of("ref", &m.server_id).await.unwrap(), changes.clone());
                    prop_assert_eq!(store.original("ref", &m.server_id).await.unwrap(), Some(m.clone()));
                    outcomes.push(seen);
                }
                prop_assert_eq!(&outcomes[0], &outcomes[1], "sled and memory answer alike");
                Ok::<(), TestCaseError>(())
            })?;
        }

        /// Any batch, with repeats, any page size: the pages concatenated are the distinct
        /// messages, newest first, on both backends alike.
        #[test]
        fn paging_returns_each_distinct_message_once_newest_first(
            entries in prop::collection::vec((0u8..30, -5i64..40), 1..60),
            limit in 1usize..8,
        ) {
            // The store is async: one current-thread runtime drives this case.
            let rt = runtime();
            rt.block_on(async {
                let c = direct("alice", "bob");
                let batch: Vec<Message> = entries
                    .iter()
                    .map(|(id, t)| msg(&c, "alice", &format!("m{id}"), *t))
                    .collect();
                let dir = tempfile::tempdir().unwrap();
                let sled = im_archive::SledArchive::open(dir.path()).unwrap();
                let memory = im_archive::MemoryArchive::new();
                let mut want: Vec<Message> = Vec::new();
                for m in &batch {
                    if !want.iter().any(|w| w.server_id == m.server_id) {
                        want.push(m.clone());
                    }
                }
                want.sort_by_key(Position::of);
                want.reverse();
                // Half in one batch, the rest one by one: batching must not change the outcome.
                let (first, rest) = batch.split_at(batch.len() / 2);
                for store in [&sled as &dyn ArchiveStore, &memory] {
                    store.store("ref", first).await.unwrap();
                    for m in rest {
                        store.store("ref", std::slice::from_ref(m)).await.unwrap();
                    }
                    let got = read_all(store, all(&c, limit)).await;
                    prop_assert_eq!(&got, &want);
                    prop_assert_eq!(store.len().await.unwrap(), want.len() as u64);
                }
                Ok::<(), TestCaseError>(())
            })?;
        }
    }
}
