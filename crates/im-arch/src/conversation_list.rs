//! The conversation list: last message, unread count, pinned, draft, muted and updated time
//! per conversation, kept sorted (pinned first, then by the later of last message and
//! draft) and updated per message without rescanning the list. A leaf: the shared state
//! holds the list, and the conversation API (`conversations`) changes it.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use im_service::{ConversationId, Message, MessageChange, Seq, ServerMsgId, Timestamp, UserId};

use crate::store::ConversationState;

/// One row of the conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The conversation.
    pub id: ConversationId,
    /// The newest message (by server order).
    pub last_message: Option<Message>,
    /// Messages from others after my read position.
    pub unread: u64,
    /// Pinned rows sort first.
    pub pinned: bool,
    /// Unsent text the user left, with when it was last edited.
    pub draft: Option<(String, Timestamp)>,
    /// Muted rows do not count towards the total unread.
    pub muted: bool,
}

impl ConversationSummary {
    fn new(id: ConversationId) -> Self {
        Self {
            id,
            last_message: None,
            unread: 0,
            pinned: false,
            draft: None,
            muted: false,
        }
    }

    /// The later of the last message and the draft: what the list sorts by.
    pub fn updated(&self) -> Timestamp {
        let last = self
            .last_message
            .as_ref()
            .map_or(Timestamp::default(), |m| m.server_time);
        self.draft.as_ref().map_or(last, |(_, t)| last.max(*t))
    }
}

/// Sort key: pinned first, newest first, then id for a total, stable order.
type OrderKey = (Reverse<bool>, Reverse<Timestamp>, ConversationId);

/// A message's place in its conversation, in the store's order: server time, then the
/// vendor's sequence, then id. Two messages in one millisecond are told apart by their
/// sequence, not by comparing id strings (where "m:10" < "m:8": an own reply then failed to
/// clear the message it answered; found by `cargo xtask sim`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    time: Timestamp,
    seq: Option<Seq>,
    id: ServerMsgId,
}

impl Position {
    fn of(m: &Message) -> Self {
        Self {
            time: m.server_time,
            seq: m.seq,
            id: m.server_id.clone(),
        }
    }

    /// The saved form ([`ConversationState::read_up_to`]), which has no sequence.
    fn saved(&self) -> (Timestamp, ServerMsgId) {
        (self.time, self.id.clone())
    }
}

#[derive(Debug)]
struct Entry {
    summary: ConversationSummary,
    /// Unread messages from others after the read position (dedups re-deliveries).
    unread: BTreeSet<Position>,
    /// Everything at or before this position is read.
    read_up_to: Option<Position>,
}

/// The list of one user's conversations.
#[derive(Debug)]
pub struct ConversationList {
    me: UserId,
    entries: HashMap<ConversationId, Entry>,
    order: BTreeSet<OrderKey>,
}

fn key(s: &ConversationSummary) -> OrderKey {
    (Reverse(s.pinned), Reverse(s.updated()), s.id.clone())
}

impl ConversationList {
    /// An empty list for `me` (my own messages never count as unread).
    pub fn new(me: UserId) -> Self {
        Self {
            me,
            entries: HashMap::new(),
            order: BTreeSet::new(),
        }
    }

    /// Applies `f` to a conversation's entry and moves its row to where it now sorts.
    fn update(&mut self, id: &ConversationId, f: impl FnOnce(&mut Entry)) -> ConversationSummary {
        let entry = self.entries.entry(id.clone()).or_insert_with(|| Entry {
            summary: ConversationSummary::new(id.clone()),
            unread: BTreeSet::new(),
            read_up_to: None,
        });
        self.order.remove(&key(&entry.summary));
        f(entry);
        entry.summary.unread = entry.unread.len() as u64;
        self.order.insert(key(&entry.summary));
        entry.summary.clone()
    }

    /// A message arrived or was sent (any origin; re-deliveries are harmless).
    pub fn on_message(&mut self, message: &Message) -> ConversationSummary {
        let me = self.me.clone();
        self.update(&message.conversation, |e| {
            let pos = Position::of(message);
            let newer = e
                .summary
                .last_message
                .as_ref()
                .is_none_or(|last| Position::of(last) < pos);
            if newer {
                e.summary.last_message = Some(message.clone());
            }
            let after_read = e.read_up_to.as_ref().is_none_or(|r| &pos > r);
            if message.sender == me {
                // Sending (from any device) means I have read everything before it.
                if after_read {
                    e.unread.retain(|u| u > &pos);
                    e.read_up_to = Some(pos);
                }
            } else if after_read {
                e.unread.insert(pos);
            }
        })
    }

    /// Marks everything up to the last message read; returns the row and the last message
    /// (to send a read receipt for).
    pub fn mark_read(&mut self, id: &ConversationId) -> (ConversationSummary, Option<Message>) {
        let mut last = None;
        let summary = self.update(id, |e| {
            last = e.summary.last_message.clone();
            if let Some(m) = &last {
                // Never back: my other device may have read further than this one has
                // messages (a read position from a receipt).
                let pos = Position::of(m);
                if e.read_up_to.as_ref().is_none_or(|r| &pos > r) {
                    e.read_up_to = Some(pos);
                }
            }
            e.unread.clear();
        });
        (summary, last)
    }

    /// A stored message changed ([`MessageChange`]): `message` is its state now (`None`:
    /// deleted for me; then `newest` is the conversation's newest message left, for the
    /// row's last message). An edited or recalled last message shows its new state; a
    /// deleted one leaves the row and the unread count. `None` when there is no such row.
    pub fn on_changed(
        &mut self,
        change: &MessageChange,
        message: Option<&Message>,
        newest: Option<Message>,
    ) -> Option<ConversationSummary> {
        if !self.entries.contains_key(&change.conversation) {
            return None;
        }
        Some(self.update(&change.conversation, |e| {
            let is_last = e
                .summary
                .last_message
                .as_ref()
                .is_some_and(|last| last.server_id == change.target);
            match message {
                Some(m) if is_last => e.summary.last_message = Some(m.clone()),
                Some(_) => {}
                None => {
                    e.unread.retain(|u| u.id != change.target);
                    if is_last {
                        e.summary.last_message = newest;
                    }
                }
            }
        }))
    }

    /// I read `id` up to the message `up_to` (at server time `time`, with sequence `seq` when
    /// it is stored here) on another device: everything up to it is read here too. Returns
    /// the row when the read position moved forward, `None` when it was already there (or
    /// further) — read positions never move back, and the count never goes below zero.
    /// When the message is not stored here (`seq` is `None`), every message up to its time
    /// counts as read.
    pub fn read_elsewhere(
        &mut self,
        id: &ConversationId,
        time: Timestamp,
        seq: Option<Seq>,
        up_to: &ServerMsgId,
    ) -> Option<ConversationSummary> {
        // A message not stored here is placed after every message of its millisecond: when
        // it arrives (with its sequence) it must not count as unread.
        let pos = Position {
            time,
            seq: Some(seq.unwrap_or(Seq(u64::MAX))),
            id: up_to.clone(),
        };
        let exact = seq.is_some();
        let entry = self.entries.get(id)?;
        if entry.read_up_to.as_ref().is_some_and(|r| &pos <= r) {
            return None;
        }
        Some(self.update(id, |e| {
            if exact {
                e.unread.retain(|u| u > &pos);
            } else {
                e.unread.retain(|u| u.time > pos.time);
            }
            e.read_up_to = Some(pos);
        }))
    }

    /// Marks every conversation read.
    pub fn mark_all_read(&mut self) {
        let ids: Vec<ConversationId> = self.entries.keys().cloned().collect();
        for id in ids {
            self.mark_read(&id);
        }
    }

    /// Pins or unpins a conversation.
    pub fn set_pinned(&mut self, id: &ConversationId, pinned: bool) -> ConversationSummary {
        self.update(id, |e| e.summary.pinned = pinned)
    }

    /// Mutes or unmutes a conversation.
    pub fn set_muted(&mut self, id: &ConversationId, muted: bool) -> ConversationSummary {
        self.update(id, |e| e.summary.muted = muted)
    }

    /// Sets (`Some`) or clears (`None`) the draft, edited at `at`.
    pub fn set_draft(
        &mut self,
        id: &ConversationId,
        draft: Option<String>,
        at: Timestamp,
    ) -> ConversationSummary {
        self.update(id, |e| e.summary.draft = draft.map(|d| (d, at)))
    }

    /// What the user set on a conversation, for persisting.
    pub fn state(&self, id: &ConversationId) -> Option<ConversationState> {
        self.entries.get(id).map(|e| ConversationState {
            id: id.clone(),
            pinned: e.summary.pinned,
            muted: e.summary.muted,
            draft: e.summary.draft.clone(),
            read_up_to: e.read_up_to.as_ref().map(Position::saved),
        })
    }

    /// Rebuilds a row after a restart from its saved state, its newest stored message, the
    /// stored message at its read position (`read`: it gives the position its sequence; when
    /// it is gone the saved time and id are used) and the stored messages after it.
    pub fn restore(
        &mut self,
        id: &ConversationId,
        state: Option<&ConversationState>,
        last: Option<Message>,
        read: Option<&Message>,
        after_read: &[Message],
    ) -> ConversationSummary {
        let me = self.me.clone();
        self.update(id, |e| {
            if let Some(st) = state {
                e.summary.pinned = st.pinned;
                e.summary.muted = st.muted;
                e.summary.draft = st.draft.clone();
                e.read_up_to = match (read, &st.read_up_to) {
                    (Some(m), Some((_, saved))) if &m.server_id == saved => Some(Position::of(m)),
                    (_, saved) => saved.clone().map(|(time, id)| Position {
                        time,
                        seq: None,
                        id,
                    }),
                };
            }
            e.summary.last_message = last;
            // My own newest message after the saved mark read everything before it, as it
            // did when it was sent (`on_message`): a crash may have kept the message but not
            // the conversation state its sending wrote (the simulation found a row counting
            // a peer's older message as unread after such a crash).
            if let Some(own) = after_read
                .iter()
                .filter(|m| m.sender == me)
                .map(Position::of)
                .filter(|pos| e.read_up_to.as_ref().is_none_or(|r| pos > r))
                .max()
            {
                e.read_up_to = Some(own);
            }
            e.unread = after_read
                .iter()
                .filter(|m| m.sender != me)
                .map(Position::of)
                .filter(|pos| e.read_up_to.as_ref().is_none_or(|r| pos > r))
                .collect();
        })
    }

    /// Total unread over conversations that are not muted.
    pub fn total_unread(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| !e.summary.muted)
            .map(|e| e.summary.unread)
            .sum()
    }

    /// One row.
    pub fn get(&self, id: &ConversationId) -> Option<&ConversationSummary> {
        self.entries.get(id).map(|e| &e.summary)
    }

    /// Rows `offset..offset + limit` in list order.
    pub fn page(&self, offset: usize, limit: usize) -> Vec<ConversationSummary> {
        self.order
            .iter()
            .skip(offset)
            .take(limit)
            .filter_map(|(_, _, id)| self.entries.get(id).map(|e| e.summary.clone()))
            .collect()
    }

    /// Number of conversations.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_service::{ClientMsgId, Content, Seq};
    use proptest::prelude::*;

    fn msg(conv: &ConversationId, from: &str, t: i64) -> Message {
        Message {
            server_id: ServerMsgId::new(format!("{conv}/{t}")),
            client_id: ClientMsgId::new(format!("c{t}")),
            conversation: conv.clone(),
            sender: UserId::new(from),
            seq: Some(Seq(t as u64)),
            server_time: Timestamp::from_millis(t),
            client_time: Timestamp::from_millis(0),
            content: Content::text("x"),
        }
    }

    fn ids(list: &ConversationList) -> Vec<String> {
        list.page(0, 100)
            .into_iter()
            .map(|s| s.id.to_string())
            .collect()
    }

    /// Two messages in one millisecond: the vendor's sequence orders them, not the id
    /// strings ("m:10" < "m:8"). My reply (seq 2) reads the peer's message (seq 1), live
    /// and after a restart. (Found by `cargo xtask sim`, seed 2026, schedule 115.)
    #[test]
    fn a_reply_in_the_same_millisecond_reads_what_it_answers() {
        let conv = ConversationId::group("g");
        let at = |id: &str, from: &str, seq: u64| Message {
            server_id: ServerMsgId::new(id),
            seq: Some(Seq(seq)),
            server_time: Timestamp::from_millis(1009),
            ..msg(&conv, from, 1009)
        };
        let (theirs, mine) = (at("m:8", "peer", 1), at("m:10", "me", 2));
        let mut list = ConversationList::new(UserId::new("me"));
        list.on_message(&theirs);
        assert_eq!(list.get(&conv).map(|s| s.unread), Some(1));
        let row = list.on_message(&mine);
        assert_eq!(row.unread, 0, "my reply read the message before it");
        assert_eq!(
            row.last_message.as_ref(),
            Some(&mine),
            "the reply is the last"
        );

        // After a restart: the saved read position (my reply) resolves to the message.
        let mut saved = list.state(&conv).expect("state");
        saved.read_up_to = Some((mine.server_time, mine.server_id.clone()));
        let mut again = ConversationList::new(UserId::new("me"));
        let row = again.restore(
            &conv,
            Some(&saved),
            Some(mine.clone()),
            Some(&mine),
            &[theirs.clone(), mine.clone()],
        );
        assert_eq!(row.unread, 0, "still read after a restart");

        // A crash kept my reply but not the read position its sending saved: the reply
        // still reads the message before it.
        saved.read_up_to = None;
        let mut lost = ConversationList::new(UserId::new("me"));
        let row = lost.restore(
            &conv,
            Some(&saved),
            Some(mine.clone()),
            None,
            &[theirs.clone(), mine.clone()],
        );
        assert_eq!(
            row.unread, 0,
            "my own message after the saved mark read what came before it"
        );
    }

    /// A re-delivery of the message at the read position stays read, `mark_all_read`
    /// clears every row, and `restore` trusts a resolved message only if it is the saved
    /// one. (Found by cargo-mutants: `>` → `>=`/`==`, an empty `mark_all_read` and a
    /// guard replaced by `true` survived.)
    #[test]
    fn read_positions_hold_through_redelivery_mark_all_and_restore() {
        let (a, b) = (ConversationId::group("a"), ConversationId::group("b"));
        let mut list = ConversationList::new(UserId::new("me"));
        let read = msg(&a, "peer", 1);
        list.on_message(&read);
        list.mark_read(&a);
        let row = list.on_message(&read);
        assert_eq!(row.unread, 0, "the read message delivered again stays read");
        assert_eq!(
            list.on_message(&msg(&a, "peer", 2)).unread,
            1,
            "a newer one counts"
        );

        list.on_message(&msg(&b, "peer", 1));
        assert_eq!(list.total_unread(), 2);
        assert_eq!((list.len(), list.is_empty()), (2, false));
        let empty = ConversationList::new(UserId::new("me"));
        assert_eq!((empty.len(), empty.is_empty()), (0, true));
        list.mark_all_read();
        assert_eq!(list.total_unread(), 0, "mark_all_read clears every row");

        // After a restart, read up to message 1 (saved). The loader passes what follows the
        // read message; the read message itself and my own messages never count (and my own
        // message reads what came before it, as when it was sent).
        let saved = ConversationState {
            id: a.clone(),
            pinned: false,
            muted: false,
            draft: None,
            read_up_to: Some((read.server_time, read.server_id.clone())),
        };
        let after = [
            read.clone(),
            msg(&a, "me", 2),
            msg(&a, "peer", 3),
            msg(&a, "peer", 4),
        ];
        let last = Some(msg(&a, "peer", 4));
        let mut again = ConversationList::new(UserId::new("me"));
        let row = again.restore(&a, Some(&saved), last.clone(), Some(&read), &after);
        assert_eq!(row.unread, 2, "messages 3 and 4 from the peer: {row:?}");
        // A resolved message that is not the saved one (message 3) must not move the read
        // position: the saved time and id are used instead.
        let mut again = ConversationList::new(UserId::new("me"));
        let row = again.restore(&a, Some(&saved), last, Some(&after[2]), &after[1..]);
        assert_eq!(row.unread, 2, "read up to my message 2 only: {row:?}");
    }

    #[test]
    fn pinned_first_then_by_the_later_of_message_and_draft() {
        let (a, b, c) = (
            ConversationId::group("a"),
            ConversationId::group("b"),
            ConversationId::group("c"),
        );
        let mut list = ConversationList::new(UserId::new("me"));
        list.on_message(&msg(&a, "x", 10));
        list.on_message(&msg(&b, "x", 20));
        list.on_message(&msg(&c, "x", 30));
        assert_eq!(ids(&list), ["g:c", "g:b", "g:a"]);
        list.set_draft(&a, Some("typing".into()), Timestamp::from_millis(40));
        assert_eq!(
            ids(&list),
            ["g:a", "g:c", "g:b"],
            "a draft moves its row up"
        );
        list.set_pinned(&b, true);
        assert_eq!(ids(&list), ["g:b", "g:a", "g:c"], "pinned rows first");
        list.set_draft(&a, None, Timestamp::from_millis(50));
        assert_eq!(ids(&list), ["g:b", "g:c", "g:a"]);
    }

    #[test]
    fn unread_counts_through_receive_send_and_mark_read() {
        let (a, b) = (ConversationId::group("a"), ConversationId::group("b"));
        let mut list = ConversationList::new(UserId::new("me"));
        list.on_message(&msg(&a, "x", 1));
        list.on_message(&msg(&a, "x", 2));
        list.on_message(&msg(&a, "x", 2)); // re-delivered
        list.on_message(&msg(&b, "y", 3));
        assert_eq!(list.get(&a).map(|s| s.unread), Some(2));
        assert_eq!(list.total_unread(), 3);
        list.set_muted(&b, true);
        assert_eq!(list.total_unread(), 2, "muted rows do not count");
        list.on_message(&msg(&a, "me", 4)); // I answered (maybe from another device)
        assert_eq!(list.get(&a).map(|s| s.unread), Some(0));
        list.on_message(&msg(&a, "x", 5));
        assert_eq!(list.get(&a).map(|s| s.unread), Some(1));
        let (row, last) = list.mark_read(&a);
        assert_eq!(row.unread, 0);
        assert_eq!(last.map(|m| m.server_time), Some(Timestamp::from_millis(5)));
        list.mark_all_read();
        assert_eq!(list.total_unread(), 0);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Receive(usize, bool),
        SendMine(usize),
        Read(usize),
        Redeliver(usize),
    }

    proptest! {
        /// Failure class 6: unread = messages from others after my read position; never
        /// negative, never double counted, 0 after mark-read.
        #[test]
        fn unread_matches_a_simple_model(steps in proptest::collection::vec(
            prop_oneof![
                (0usize..3, any::<bool>()).prop_map(|(c, other_device)| Step::Receive(c, other_device)),
                (0usize..3).prop_map(Step::SendMine),
                (0usize..3).prop_map(Step::Read),
                (0usize..3).prop_map(Step::Redeliver),
            ],
            0..60,
        )) {
            let convs: Vec<ConversationId> = (0..3).map(|i| ConversationId::group(format!("g{i}"))).collect();
            let mut list = ConversationList::new(UserId::new("me"));
            let mut history: Vec<Vec<Message>> = vec![Vec::new(); 3];
            let mut read_at: Vec<i64> = vec![0; 3];
            let mut t = 0;
            for step in steps {
                t += 1;
                match step {
                    Step::Receive(c, from_my_other_device) => {
                        let m = msg(&convs[c], if from_my_other_device { "me" } else { "peer" }, t);
                        if from_my_other_device { read_at[c] = t; }
                        list.on_message(&m);
                        history[c].push(m);
                    }
                    Step::SendMine(c) => {
                        let m = msg(&convs[c], "me", t);
                        read_at[c] = t;
                        list.on_message(&m);
                        history[c].push(m);
                    }
                    Step::Read(c) => {
                        list.mark_read(&convs[c]);
                        if let Some(last) = history[c].last() { read_at[c] = last.server_time.as_millis(); }
                        prop_assert_eq!(list.get(&convs[c]).map_or(0, |s| s.unread), 0);
                    }
                    Step::Redeliver(c) => {
                        if let Some(m) = history[c].last().cloned() { list.on_message(&m); }
                    }
                }
                for c in 0..3 {
                    let expected = history[c].iter()
                        .filter(|m| m.sender.as_str() != "me" && m.server_time.as_millis() > read_at[c])
                        .count() as u64;
                    prop_assert_eq!(list.get(&convs[c]).map_or(0, |s| s.unread), expected);
                }
            }
        }
    }

    /// Issue 20: a change to the last message shows in the row; a deletion leaves the row
    /// and the unread count; my reads on another device move the read position forward
    /// only, never below zero unread.
    #[test]
    fn changes_and_reads_elsewhere_follow_in_the_row() {
        use im_service::{ChangeKind, MessageChange};
        let conv = ConversationId::group("g");
        let mut list = ConversationList::new(UserId::new("me"));
        let (m1, m2, m3) = (
            msg(&conv, "peer", 1),
            msg(&conv, "peer", 2),
            msg(&conv, "peer", 3),
        );
        for m in [&m1, &m2, &m3] {
            list.on_message(m);
        }
        assert_eq!(list.get(&conv).map(|r| r.unread), Some(3));
        let change = |m: &Message, kind| MessageChange {
            conversation: conv.clone(),
            target: m.server_id.clone(),
            kind,
            by: UserId::new("peer"),
            at: Timestamp::from_millis(9),
            revision: 1,
        };
        let recall = change(&m3, ChangeKind::Recalled);
        let recalled = recall.apply(&m3);
        let row = list
            .on_changed(&recall, recalled.as_ref(), None)
            .expect("row");
        assert_eq!(
            row.last_message, recalled,
            "the last message follows a recall"
        );
        assert_eq!(row.unread, 3, "a recalled message is still there");
        let row = list
            .on_changed(
                &change(&m3, ChangeKind::DeletedForMe),
                None,
                Some(m2.clone()),
            )
            .expect("row");
        assert_eq!(
            row.last_message,
            Some(m2.clone()),
            "the newest left is last"
        );
        assert_eq!(row.unread, 2, "a deleted message is no longer unread");
        let other = ConversationId::group("none");
        assert_eq!(
            list.on_changed(
                &MessageChange {
                    conversation: other.clone(),
                    ..change(&m1, ChangeKind::Recalled)
                },
                None,
                None
            ),
            None
        );
        let row = list
            .read_elsewhere(&conv, m1.server_time, m1.seq, &m1.server_id)
            .expect("moved");
        assert_eq!(row.unread, 1);
        assert_eq!(
            list.read_elsewhere(&conv, m1.server_time, m1.seq, &m1.server_id),
            None,
            "the same read again changes nothing"
        );
        let row = list
            .read_elsewhere(&conv, m2.server_time, None, &m2.server_id)
            .expect("moved");
        assert_eq!(row.unread, 0);
        assert_eq!(
            list.read_elsewhere(&conv, m1.server_time, m1.seq, &m1.server_id),
            None,
            "a read position never moves back"
        );
        assert_eq!(list.get(&conv).map(|r| r.unread), Some(0));
        assert_eq!(
            list.read_elsewhere(&other, m1.server_time, None, &m1.server_id),
            None
        );
    }
}
