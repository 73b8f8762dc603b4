//! Per-conversation ordering and deduplication of incoming messages for vendors with
//! sequence numbers: a message is released only when every lower sequence has been, a
//! duplicate is dropped, and every hole is reported so it can be fetched. The cursor never
//! moves past a hole.

use std::collections::{BTreeMap, HashMap};

use im_service::{ConversationId, Message, Seq};

/// A hole in a conversation: sequences strictly between `after` and `before` are missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqGap {
    /// The conversation.
    pub conversation: ConversationId,
    /// Last sequence delivered below the hole (0 = none).
    pub after: Seq,
    /// First sequence held above the hole.
    pub before: Seq,
}

#[derive(Debug, Default)]
struct ConversationSeq {
    /// Highest sequence delivered with nothing missing below it.
    delivered: u64,
    /// Messages above a hole, waiting for it to be filled.
    pending: BTreeMap<u64, Message>,
}

/// The ordering state of every conversation.
#[derive(Debug, Default)]
pub struct Sequencer {
    conversations: HashMap<ConversationId, ConversationSeq>,
    /// Messages held above holes, over all conversations: when none are, there is no hole
    /// and [`Sequencer::gaps`] answers without looking at every conversation (the
    /// supervisor asks after every burst of pushes; a client may follow thousands).
    held: usize,
}

impl Sequencer {
    /// Starts from saved cursors (sequence delivered per conversation).
    pub fn new(cursors: impl IntoIterator<Item = (ConversationId, Seq)>) -> Self {
        Self {
            conversations: cursors
                .into_iter()
                .map(|(c, s)| {
                    (
                        c,
                        ConversationSeq {
                            delivered: s.0,
                            pending: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
            held: 0,
        }
    }

    /// Offers one message (it must carry a sequence). Returns the messages now deliverable,
    /// in order; the offered one may be among them, held back, or dropped as a duplicate.
    pub fn admit(&mut self, message: Message) -> Vec<Message> {
        let Some(Seq(seq)) = message.seq else {
            return vec![message];
        };
        // Looked up before inserting: the id is cloned only for a new conversation.
        if !self.conversations.contains_key(&message.conversation) {
            self.conversations
                .insert(message.conversation.clone(), ConversationSeq::default());
        }
        let Some(conv) = self.conversations.get_mut(&message.conversation) else {
            return Vec::new(); // inserted just above
        };
        if seq <= conv.delivered || conv.pending.contains_key(&seq) {
            return Vec::new();
        }
        // The common case, the next one with nothing held: released at once.
        if seq == conv.delivered + 1 && conv.pending.is_empty() {
            conv.delivered = seq;
            return vec![message];
        }
        conv.pending.insert(seq, message);
        self.held += 1;
        let mut ready = Vec::new();
        while let Some(next) = conv.pending.remove(&(conv.delivered + 1)) {
            conv.delivered += 1;
            self.held -= 1;
            ready.push(next);
        }
        ready
    }

    /// Skips ahead: everything at or below `seq` counts as delivered (used when a hole is
    /// older than the client wants to fill live; that part stays reachable as history).
    pub fn skip_to(&mut self, conversation: &ConversationId, seq: Seq) -> Vec<Message> {
        let conv = self.conversations.entry(conversation.clone()).or_default();
        if seq.0 <= conv.delivered {
            return Vec::new();
        }
        let held = conv.pending.len();
        conv.delivered = seq.0;
        conv.pending.retain(|s, _| *s > seq.0);
        let mut ready = Vec::new();
        while let Some(next) = conv.pending.remove(&(conv.delivered + 1)) {
            conv.delivered += 1;
            ready.push(next);
        }
        self.held -= held - conv.pending.len();
        ready
    }

    /// The delivered sequence of a conversation.
    pub fn delivered(&self, conversation: &ConversationId) -> Seq {
        Seq(self
            .conversations
            .get(conversation)
            .map_or(0, |c| c.delivered))
    }

    /// Every hole currently open (one per conversation: below its lowest held message).
    pub fn gaps(&self) -> Vec<SeqGap> {
        if self.held == 0 {
            return Vec::new();
        }
        let mut gaps: Vec<SeqGap> = self
            .conversations
            .iter()
            .filter_map(|(c, s)| {
                s.pending.keys().next().map(|&first| SeqGap {
                    conversation: c.clone(),
                    after: Seq(s.delivered),
                    before: Seq(first),
                })
            })
            .collect();
        gaps.sort_by(|a, b| a.conversation.cmp(&b.conversation));
        gaps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_service::{ClientMsgId, Content, ServerMsgId, Timestamp, UserId};
    use proptest::prelude::*;

    fn msg(conv: &ConversationId, seq: u64) -> Message {
        Message {
            server_id: ServerMsgId::new(format!("{conv}/{seq}")),
            client_id: ClientMsgId::new(format!("c{seq}")),
            conversation: conv.clone(),
            sender: UserId::new("u"),
            seq: Some(Seq(seq)),
            server_time: Timestamp::from_millis(seq as i64),
            client_time: Timestamp::from_millis(0),
            content: Content::text(seq.to_string()),
        }
    }

    /// Skipping to a sequence that is already held releases nothing at or below it and
    /// leaves no stale entry behind (no phantom hole). (Found by cargo-mutants: the
    /// `retain` bound `>` → `>=` survived.)
    #[test]
    fn skipping_to_a_held_sequence_leaves_no_phantom_hole() {
        let conv = ConversationId::group("g");
        let mut s = Sequencer::new([]);
        assert_eq!(s.admit(msg(&conv, 1)).len(), 1);
        assert!(
            s.admit(msg(&conv, 5)).is_empty(),
            "held behind the hole 2..4"
        );
        assert!(s.skip_to(&conv, Seq(5)).is_empty());
        assert_eq!(s.held, 0, "nothing held after the skip");
        assert_eq!(s.delivered(&conv), Seq(5));
        assert!(s.gaps().is_empty(), "no hole left: {:?}", s.gaps());
        assert_eq!(s.admit(msg(&conv, 6)).len(), 1, "the next one flows");
    }

    fn seqs(ms: &[Message]) -> Vec<u64> {
        ms.iter().filter_map(|m| m.seq.map(|s| s.0)).collect()
    }

    #[test]
    fn a_push_past_a_hole_waits_and_the_hole_is_reported() {
        let c = ConversationId::group("g");
        let mut s = Sequencer::default();
        assert!(s.admit(msg(&c, 3)).is_empty());
        assert_eq!(
            s.gaps(),
            [SeqGap {
                conversation: c.clone(),
                after: Seq(0),
                before: Seq(3)
            }]
        );
        assert_eq!(s.delivered(&c), Seq(0), "the cursor does not pass the hole");
        assert_eq!(seqs(&s.admit(msg(&c, 1))), [1]);
        assert_eq!(seqs(&s.admit(msg(&c, 2))), [2, 3]);
        assert!(s.gaps().is_empty());
        assert!(s.admit(msg(&c, 2)).is_empty(), "duplicate dropped");
    }

    #[test]
    fn skipping_releases_what_follows() {
        let c = ConversationId::group("g");
        let mut s = Sequencer::new([(c.clone(), Seq(0))]);
        s.admit(msg(&c, 10));
        s.admit(msg(&c, 11));
        assert_eq!(seqs(&s.skip_to(&c, Seq(9))), [10, 11]);
    }

    /// A server's conversations, and an arrival order with duplicates, reorderings and
    /// losses (a "disconnect" loses what was in flight). Whatever arrives, after the client
    /// fetches every reported hole from the server, each conversation has been delivered
    /// exactly the sent sequence.
    fn arrivals() -> impl Strategy<Value = (Vec<u64>, Vec<(usize, u64)>)> {
        proptest::collection::vec(1u64..30, 1..4).prop_flat_map(|sizes| {
            let all: Vec<(usize, u64)> = sizes
                .iter()
                .enumerate()
                .flat_map(|(c, n)| (1..=*n).map(move |s| (c, s)))
                .collect();
            let len = all.len();
            (
                Just(sizes),
                proptest::collection::vec(proptest::sample::select(all), 0..len * 2),
            )
        })
    }

    proptest! {
        #[test]
        fn delivered_sequence_is_exactly_the_sent_one((sizes, arriving) in arrivals()) {
            let convs: Vec<ConversationId> = (0..sizes.len()).map(|i| ConversationId::group(format!("g{i}"))).collect();
            let mut s = Sequencer::default();
            let mut delivered: HashMap<ConversationId, Vec<u64>> = HashMap::new();
            for (c, seq) in arriving {
                for m in s.admit(msg(&convs[c], seq)) {
                    delivered.entry(m.conversation.clone()).or_default().push(m.seq.map_or(0, |s| s.0));
                }
                // The count that lets `gaps` skip its scan is the number of held messages.
                let held: usize = s.conversations.values().map(|c| c.pending.len()).sum();
                prop_assert_eq!(s.held, held, "held count out of step");
            }
            // Reconnect catch-up: everything after the cursor, then fill every reported hole.
            for (i, c) in convs.iter().enumerate() {
                let from = s.delivered(c).0 + 1;
                for seq in from..=sizes[i] {
                    for m in s.admit(msg(c, seq)) {
                        delivered.entry(m.conversation.clone()).or_default().push(m.seq.map_or(0, |s| s.0));
                    }
                }
            }
            prop_assert!(s.gaps().is_empty());
            for (i, c) in convs.iter().enumerate() {
                let expected: Vec<u64> = (1..=sizes[i]).collect();
                prop_assert_eq!(delivered.get(c).cloned().unwrap_or_default(), expected);
            }
        }
    }
}
