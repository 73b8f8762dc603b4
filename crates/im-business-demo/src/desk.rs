//! The business rules of the customer-service desk, written against `im-arch` and `im-qc`
//! only: which housekeeper serves which tenant, the quick replies housekeepers pick from,
//! and what happens to a tenant left waiting too long (QC's overdue list).

use std::collections::BTreeMap;

use im_qc::BusinessSnapshot;
use im_service::{ConversationId, UserId};

/// A canned answer, chosen by the words of the question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuickReply {
    /// Words that select it.
    pub keywords: &'static [&'static str],
    /// The answer.
    pub text: &'static str,
}

/// The desk's quick replies; the last one is the fallback.
pub const QUICK_REPLIES: &[QuickReply] = &[
    QuickReply {
        keywords: &["tap", "leak", "water", "sink"],
        text: "A plumber is booked for today; I'll confirm the time.",
    },
    QuickReply {
        keywords: &["heating", "cold", "radiator", "boiler"],
        text: "I've asked the heating engineer to come by this afternoon.",
    },
    QuickReply {
        keywords: &["key", "lock", "door"],
        text: "A spare key is at the front desk; show your ID.",
    },
    QuickReply {
        keywords: &["rent", "invoice", "payment", "bill"],
        text: "Your invoice is in the app under Payments; rent is due on the 5th.",
    },
    QuickReply {
        keywords: &["clean", "cleaning", "bin", "trash"],
        text: "Cleaning is scheduled for tomorrow morning.",
    },
    QuickReply {
        keywords: &[],
        text: "Thanks for your message, I'm looking into it now.",
    },
];

/// The quick reply for `question`: the first whose keyword appears in it, else the fallback.
pub fn quick_reply(question: &str) -> &'static QuickReply {
    let lower = question.to_lowercase();
    QUICK_REPLIES
        .iter()
        .find(|r| r.keywords.iter().any(|k| lower.contains(k)))
        .unwrap_or(&QUICK_REPLIES[QUICK_REPLIES.len() - 1])
}

/// The quick reply a hurried housekeeper picks by mistake for `question`: the one after
/// the right one in the list (never the right one itself).
pub fn wrong_quick_reply(question: &str) -> &'static QuickReply {
    let right = quick_reply(question);
    let at = QUICK_REPLIES
        .iter()
        .position(|r| std::ptr::eq(r, right))
        .unwrap_or(0);
    &QUICK_REPLIES[(at + 1) % QUICK_REPLIES.len()]
}

/// Which of a housekeeper's devices sends their `n`th reply (from 0) when they work from
/// two: they alternate, starting on the second (the phone), so a day with any reply of
/// theirs has one from each device as soon as it has two.
pub fn reply_device(n: u64) -> usize {
    usize::from(n.is_multiple_of(2))
}

/// The apology prepended when a tenant waited too long.
pub const LATE_PREFIX: &str = "Sorry for the wait. ";

/// Who serves whom. A tenant keeps their housekeeper once assigned; a new tenant goes to the
/// housekeeper with the fewest tenants (ties: the first listed), so load stays even.
#[derive(Debug, Clone)]
pub struct Assignments {
    housekeepers: Vec<UserId>,
    by_tenant: BTreeMap<UserId, UserId>,
}

impl Assignments {
    /// A desk staffed by `housekeepers` (at least one).
    pub fn new(housekeepers: Vec<UserId>) -> Self {
        Self {
            housekeepers,
            by_tenant: BTreeMap::new(),
        }
    }

    /// The housekeepers.
    pub fn housekeepers(&self) -> &[UserId] {
        &self.housekeepers
    }

    /// The housekeeper of `tenant`, assigning one on first contact (`None` only when the
    /// desk has nobody).
    pub fn assign(&mut self, tenant: &UserId) -> Option<UserId> {
        if let Some(h) = self.by_tenant.get(tenant) {
            return Some(h.clone());
        }
        let load = |h: &UserId| self.by_tenant.values().filter(|x| *x == h).count();
        let chosen = self.housekeepers.iter().min_by_key(|h| load(h))?.clone();
        self.by_tenant.insert(tenant.clone(), chosen.clone());
        Some(chosen)
    }

    /// The housekeeper already serving `tenant`.
    pub fn of(&self, tenant: &UserId) -> Option<&UserId> {
        self.by_tenant.get(tenant)
    }

    /// Tenants per housekeeper.
    pub fn load(&self) -> BTreeMap<UserId, usize> {
        let mut out: BTreeMap<UserId, usize> =
            self.housekeepers.iter().map(|h| (h.clone(), 0)).collect();
        for h in self.by_tenant.values() {
            *out.entry(h.clone()).or_default() += 1;
        }
        out
    }
}

/// What the desk does about one overdue conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    /// The waiting conversation.
    pub conversation: ConversationId,
    /// Who answers (the assigned housekeeper).
    pub housekeeper: UserId,
    /// How long the tenant has waited, seconds.
    pub waited_secs: u64,
}

/// The "unanswered for too long" rule: every conversation QC lists as overdue is answered
/// by its tenant's housekeeper (with an apology). Conversations the desk does not know are
/// skipped (not ours to answer).
pub fn escalations(
    business: &BusinessSnapshot,
    assignments: &Assignments,
    tenant_of: impl Fn(&ConversationId) -> Option<UserId>,
) -> Vec<Escalation> {
    business
        .overdue
        .iter()
        .filter_map(|(conversation, waited)| {
            let tenant = tenant_of(conversation)?;
            let housekeeper = assignments.of(&tenant)?.clone();
            Some(Escalation {
                conversation: conversation.clone(),
                housekeeper,
                waited_secs: waited.max(0.0) as u64,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(n: &str) -> UserId {
        UserId::new(n)
    }

    #[test]
    fn quick_replies_follow_keywords_with_a_fallback() {
        assert!(
            quick_reply("The kitchen TAP drips")
                .text
                .contains("plumber")
        );
        assert!(quick_reply("radiator is cold").text.contains("heating"));
        assert_eq!(quick_reply("hello?").keywords.len(), 0);
    }

    #[test]
    fn a_wrong_quick_reply_is_never_the_right_one() {
        for q in ["tap", "radiator", "key", "rent", "bin", "hello?"] {
            assert_ne!(wrong_quick_reply(q).text, quick_reply(q).text, "{q}");
        }
        assert_eq!(
            [0, 1, 2, 3].map(reply_device),
            [1, 0, 1, 0],
            "alternating, the phone first"
        );
    }

    #[test]
    fn tenants_go_to_the_least_loaded_housekeeper_and_stay() {
        let mut a = Assignments::new(vec![u("h1"), u("h2")]);
        assert_eq!(a.assign(&u("t1")), Some(u("h1")));
        assert_eq!(a.assign(&u("t2")), Some(u("h2")));
        assert_eq!(a.assign(&u("t3")), Some(u("h1")));
        assert_eq!(a.assign(&u("t2")), Some(u("h2")), "sticky");
        assert_eq!(a.load()[&u("h1")], 2);
        assert_eq!(Assignments::new(vec![]).assign(&u("t")), None);
    }

    #[test]
    fn overdue_conversations_escalate_to_their_housekeeper() {
        let mut a = Assignments::new(vec![u("h1")]);
        a.assign(&u("t1"));
        let c1 = ConversationId::direct(&u("t1"), &u("h1"));
        let stranger = ConversationId::direct(&u("x"), &u("y"));
        let business = BusinessSnapshot {
            response_rate: Some(0.5),
            replies_per_conversation_per_hour: None,
            agents: vec![],
            overdue: vec![(c1.clone(), 400.0), (stranger.clone(), 10.0)],
            conversations: 2,
            active_hours: 1.0,
        };
        let tenant_of = |c: &ConversationId| (c == &c1).then(|| u("t1"));
        assert_eq!(
            escalations(&business, &a, tenant_of),
            [Escalation {
                conversation: c1.clone(),
                housekeeper: u("h1"),
                waited_secs: 400
            }]
        );
    }
}
