//! Business metrics from message events: response rate (share of inbound customer messages
//! answered within a configured time), response frequency (agent replies per conversation
//! per hour), first response time, per agent; and the list of customers waiting too long.
//! Times are the vendor's server times, so the figures do not depend on when QC saw them.

use std::collections::BTreeMap;

// Fast hashing for the per-message maps: the keys are ids the vendor assigns, and these are
// metrics, not a security boundary.
use rustc_hash::{FxHashMap, FxHashSet};
use std::time::Duration;

use im_service::{ConversationId, Message, ServerMsgId, Timestamp, UserId};
use serde::Serialize;

/// How many message ids are remembered for dedup: repeats come from reconnect catch-ups
/// and history re-fetches of recent messages, far fewer than this.
pub(crate) const SEEN_CAP: usize = 100_000;

/// A participant's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A customer (tenant): their messages wait for an answer.
    Customer,
    /// An agent (housekeeper, customer service): their messages answer.
    Agent,
}

/// Maps users to roles; implemented by the business.
pub trait RoleDirectory: Send + Sync + 'static {
    /// The role of `user`.
    fn role(&self, user: &UserId) -> Role;
}

/// A fixed set of agents; everybody else is a customer.
#[derive(Debug, Clone, Default)]
pub struct Agents(pub FxHashSet<UserId>);

impl Agents {
    /// These users are agents.
    pub fn new(agents: impl IntoIterator<Item = UserId>) -> Self {
        Self(agents.into_iter().collect())
    }
}

impl RoleDirectory for Agents {
    fn role(&self, user: &UserId) -> Role {
        if self.0.contains(user) {
            Role::Agent
        } else {
            Role::Customer
        }
    }
}

/// Per conversation: what is waiting and who answers.
#[derive(Debug, Default)]
struct Conversation {
    /// Server times of customer messages not answered yet.
    waiting: Vec<Timestamp>,
    /// The first customer message, until the first answer.
    first_customer: Option<Timestamp>,
    /// Whether the first response was measured already.
    responded: bool,
    /// The agent who answered last (who owns what is still waiting).
    agent: Option<UserId>,
}

/// Per agent accumulators.
#[derive(Debug, Default, Clone)]
struct Agent {
    answered_in_time: u64,
    answered_late: u64,
    replies: u64,
    first_responses: Vec<Duration>,
}

/// One agent's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentMetrics {
    /// The agent (`"unassigned"` for conversations no agent has answered yet).
    pub agent: String,
    /// Customer messages that are answered or overdue.
    pub inbound: u64,
    /// Of those, answered within the configured time.
    pub answered_in_time: u64,
    /// `answered_in_time / inbound`; `None` without inbound messages.
    pub response_rate: Option<f64>,
    /// Messages the agent sent.
    pub replies: u64,
    /// Median time from a conversation's first customer message to its first answer.
    pub first_response_p50_secs: Option<f64>,
}

/// Everything, as of a given time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BusinessSnapshot {
    /// Over all agents.
    pub response_rate: Option<f64>,
    /// Agent replies per conversation per hour of activity (at least one hour).
    pub replies_per_conversation_per_hour: Option<f64>,
    /// Per agent, sorted by name.
    pub agents: Vec<AgentMetrics>,
    /// Customer messages waiting longer than the configured time, as (conversation, how
    /// long the oldest has waited, seconds).
    pub overdue: Vec<(ConversationId, f64)>,
    /// Conversations seen.
    pub conversations: u64,
    /// Hours from the first message seen to the last, at least one (the denominator of
    /// `replies_per_conversation_per_hour`).
    pub active_hours: f64,
}

impl BusinessSnapshot {
    /// The figures of one desk watched through several monitors (one per agent's seat,
    /// each seeing its own conversations): agent rows of the same name add up, the
    /// response rate is recomputed from the summed counts, replies per conversation per
    /// hour from the summed replies and conversations over the longest active span.
    /// First-response medians cannot be merged exactly: a row merged from several keeps
    /// the median of the part with the most replies. `None` without parts.
    ///
    /// ```
    /// use im_qc::{AgentMetrics, BusinessSnapshot};
    /// let seat = |agent: &str, inbound, answered_in_time| BusinessSnapshot {
    ///     response_rate: None,
    ///     replies_per_conversation_per_hour: None,
    ///     agents: vec![AgentMetrics {
    ///         agent: agent.into(),
    ///         inbound,
    ///         answered_in_time,
    ///         response_rate: None,
    ///         replies: answered_in_time,
    ///         first_response_p50_secs: None,
    ///     }],
    ///     overdue: vec![],
    ///     conversations: 2,
    ///     active_hours: 1.0,
    /// };
    /// let desk = BusinessSnapshot::combine(&[seat("ann", 4, 3), seat("bob", 6, 6)]).unwrap();
    /// assert_eq!(desk.response_rate, Some(0.9));
    /// assert_eq!(desk.agents.len(), 2);
    /// ```
    pub fn combine(parts: &[BusinessSnapshot]) -> Option<BusinessSnapshot> {
        if parts.is_empty() {
            return None;
        }
        // Per agent: the summed row, and the replies of the part whose median it keeps.
        let mut agents: BTreeMap<String, (AgentMetrics, u64)> = BTreeMap::new();
        for row in parts.iter().flat_map(|p| &p.agents) {
            match agents.get_mut(&row.agent) {
                None => {
                    agents.insert(row.agent.clone(), (row.clone(), row.replies));
                }
                Some((sum, kept_from)) => {
                    if row.first_response_p50_secs.is_some()
                        && (row.replies > *kept_from || sum.first_response_p50_secs.is_none())
                    {
                        sum.first_response_p50_secs = row.first_response_p50_secs;
                        *kept_from = row.replies;
                    }
                    sum.inbound += row.inbound;
                    sum.answered_in_time += row.answered_in_time;
                    sum.replies += row.replies;
                }
            }
        }
        let mut agents: BTreeMap<String, AgentMetrics> =
            agents.into_iter().map(|(k, (row, _))| (k, row)).collect();
        let (inbound, in_time, replies) = rate_rows(&mut agents);
        let conversations: u64 = parts.iter().map(|p| p.conversations).sum();
        let active_hours = parts.iter().map(|p| p.active_hours).fold(1.0_f64, f64::max);
        let mut overdue: Vec<(ConversationId, f64)> = parts
            .iter()
            .flat_map(|p| p.overdue.iter().cloned())
            .collect();
        longest_wait_first(&mut overdue);
        Some(BusinessSnapshot {
            response_rate: (inbound > 0).then(|| in_time as f64 / inbound as f64),
            replies_per_conversation_per_hour: (conversations > 0)
                .then(|| replies as f64 / conversations as f64 / active_hours),
            agents: agents.into_values().collect(),
            overdue,
            conversations,
            active_hours,
        })
    }
}

/// Sets each agent row's response rate; returns the sums over the rows: (inbound, answered
/// in time, replies).
fn rate_rows(agents: &mut BTreeMap<String, AgentMetrics>) -> (u64, u64, u64) {
    let (mut inbound, mut in_time, mut replies) = (0, 0, 0);
    for row in agents.values_mut() {
        row.response_rate =
            (row.inbound > 0).then(|| row.answered_in_time as f64 / row.inbound as f64);
        inbound += row.inbound;
        in_time += row.answered_in_time;
        replies += row.replies;
    }
    (inbound, in_time, replies)
}

/// Orders overdue conversations as reported: longest wait first, then by id.
fn longest_wait_first(overdue: &mut [(ConversationId, f64)]) {
    overdue.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
}

/// The business-metrics engine; feed it every message once ([`BusinessMetrics::observe`]
/// ignores repeats by server id).
pub struct BusinessMetrics {
    answer_within: Duration,
    roles: Box<dyn RoleDirectory>,
    /// Hashes of ids already counted, bounded: the oldest are forgotten past [`SEEN_CAP`].
    /// (A 64-bit hash, not the id: no allocation per message; a collision would only drop
    /// one message from the metrics.)
    seen: FxHashSet<u64>,
    seen_order: std::collections::VecDeque<u64>,
    conversations: FxHashMap<ConversationId, Conversation>,
    agents: BTreeMap<UserId, Agent>,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
}

impl std::fmt::Debug for BusinessMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusinessMetrics")
            .field("answer_within", &self.answer_within)
            .field("conversations", &self.conversations.len())
            .finish_non_exhaustive()
    }
}

fn id_hash(id: &ServerMsgId) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(id)
}

fn between(a: Timestamp, b: Timestamp) -> Duration {
    Duration::from_millis(b.as_millis().saturating_sub(a.as_millis()).max(0) as u64)
}

impl BusinessMetrics {
    /// A customer message counts as answered in time when an agent writes in its
    /// conversation within `answer_within`.
    pub fn new(answer_within: Duration, roles: impl RoleDirectory) -> Self {
        Self::with_roles(answer_within, Box::new(roles))
    }

    /// [`BusinessMetrics::new`] with an already boxed directory.
    pub(crate) fn with_roles(answer_within: Duration, roles: Box<dyn RoleDirectory>) -> Self {
        Self {
            answer_within,
            roles,
            seen: FxHashSet::default(),
            seen_order: std::collections::VecDeque::new(),
            conversations: FxHashMap::default(),
            agents: BTreeMap::new(),
            first: None,
            last: None,
        }
    }

    /// Takes one message into account (repeats are ignored).
    pub fn observe(&mut self, m: &Message) {
        let id = id_hash(&m.server_id);
        if !self.seen.insert(id) {
            return;
        }
        self.seen_order.push_back(id);
        if self.seen_order.len() > SEEN_CAP
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        let t = m.server_time;
        self.first = Some(self.first.map_or(t, |f| f.min(t)));
        self.last = Some(self.last.map_or(t, |l| l.max(t)));
        // Look up before inserting: `entry` would clone the id for every message.
        if !self.conversations.contains_key(&m.conversation) {
            self.conversations
                .insert(m.conversation.clone(), Conversation::default());
        }
        let Some(conv) = self.conversations.get_mut(&m.conversation) else {
            return; // cannot happen: inserted just above
        };
        match self.roles.role(&m.sender) {
            Role::Customer => {
                conv.waiting.push(t);
                if !conv.responded && conv.first_customer.is_none() {
                    conv.first_customer = Some(t);
                }
            }
            Role::Agent => {
                let agent = self.agents.entry(m.sender.clone()).or_default();
                agent.replies += 1;
                for asked in conv.waiting.drain(..) {
                    if between(asked, t) <= self.answer_within {
                        agent.answered_in_time += 1;
                    } else {
                        agent.answered_late += 1;
                    }
                }
                if let (false, Some(first)) = (conv.responded, conv.first_customer) {
                    agent.first_responses.push(between(first, t));
                    conv.responded = true;
                }
                conv.agent = Some(m.sender.clone());
            }
        }
    }

    /// The figures as of `now` (server time): messages still waiting count as missed once
    /// they have waited longer than the configured time, and not at all before.
    pub fn snapshot(&self, now: Timestamp) -> BusinessSnapshot {
        let mut agents: BTreeMap<String, AgentMetrics> = BTreeMap::new();
        for (id, a) in &self.agents {
            let mut first = a.first_responses.clone();
            first.sort_unstable();
            agents.insert(
                id.as_str().to_string(),
                AgentMetrics {
                    agent: id.as_str().to_string(),
                    inbound: a.answered_in_time + a.answered_late,
                    answered_in_time: a.answered_in_time,
                    response_rate: None,
                    replies: a.replies,
                    first_response_p50_secs: first
                        .get(first.len().saturating_sub(1) / 2)
                        .map(Duration::as_secs_f64),
                },
            );
        }
        let mut overdue = Vec::new();
        for (id, c) in &self.conversations {
            let late: Vec<&Timestamp> = c
                .waiting
                .iter()
                .filter(|&&t| between(t, now) > self.answer_within)
                .collect();
            if let Some(oldest) = late.iter().min() {
                overdue.push((id.clone(), between(**oldest, now).as_secs_f64()));
                let owner = c
                    .agent
                    .as_ref()
                    .map_or("unassigned".to_string(), |a| a.as_str().to_string());
                let row = agents.entry(owner.clone()).or_insert(AgentMetrics {
                    agent: owner,
                    inbound: 0,
                    answered_in_time: 0,
                    response_rate: None,
                    replies: 0,
                    first_response_p50_secs: None,
                });
                row.inbound += late.len() as u64;
            }
        }
        longest_wait_first(&mut overdue);
        let (inbound, in_time, replies) = rate_rows(&mut agents);
        let hours = match (self.first, self.last) {
            (Some(f), Some(l)) => (between(f, l).as_secs_f64() / 3600.0).max(1.0),
            _ => 1.0,
        };
        BusinessSnapshot {
            response_rate: (inbound > 0).then(|| in_time as f64 / inbound as f64),
            replies_per_conversation_per_hour: (!self.conversations.is_empty())
                .then(|| replies as f64 / self.conversations.len() as f64 / hours),
            agents: agents.into_values().collect(),
            overdue,
            conversations: self.conversations.len() as u64,
            active_hours: hours,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        agent: &str,
        inbound: u64,
        in_time: u64,
        replies: u64,
        p50: Option<f64>,
    ) -> AgentMetrics {
        AgentMetrics {
            agent: agent.into(),
            inbound,
            answered_in_time: in_time,
            response_rate: None,
            replies,
            first_response_p50_secs: p50,
        }
    }

    /// The desk over two seats: an agent seen by both adds up and keeps the median of the
    /// seat with more of its replies; overdue lists merge longest first; replies per
    /// conversation per hour come from the sums over the longest active span.
    #[test]
    fn seats_combine_into_one_desk() {
        let c = |a: &str| ConversationId::direct(&UserId::new(a), &UserId::new("k"));
        let one = BusinessSnapshot {
            response_rate: Some(0.5),
            replies_per_conversation_per_hour: None,
            agents: vec![
                row("ann", 4, 2, 2, Some(30.0)),
                row("unassigned", 1, 0, 0, None),
            ],
            overdue: vec![(c("t1"), 100.0)],
            conversations: 3,
            active_hours: 2.0,
        };
        let two = BusinessSnapshot {
            response_rate: Some(1.0),
            replies_per_conversation_per_hour: None,
            agents: vec![
                row("ann", 2, 2, 6, Some(90.0)),
                row("bob", 3, 3, 4, Some(10.0)),
            ],
            overdue: vec![(c("t2"), 400.0)],
            conversations: 2,
            active_hours: 1.0,
        };
        let desk = BusinessSnapshot::combine(&[one, two]).unwrap();
        let ann = &desk.agents[0];
        assert_eq!(
            (
                ann.agent.as_str(),
                ann.inbound,
                ann.answered_in_time,
                ann.replies
            ),
            ("ann", 6, 4, 8)
        );
        assert_eq!(ann.response_rate, Some(4.0 / 6.0));
        assert_eq!(
            ann.first_response_p50_secs,
            Some(90.0),
            "the seat with more of ann's replies"
        );
        assert_eq!(desk.agents.len(), 3);
        // 7 of 10 answered in time over every row.
        assert_eq!(desk.response_rate, Some(0.7));
        assert_eq!(desk.conversations, 5);
        assert_eq!(desk.active_hours, 2.0);
        assert_eq!(
            desk.replies_per_conversation_per_hour,
            Some(12.0 / 5.0 / 2.0)
        );
        assert_eq!(desk.overdue, vec![(c("t2"), 400.0), (c("t1"), 100.0)]);
        assert_eq!(BusinessSnapshot::combine(&[]), None);
    }
}
