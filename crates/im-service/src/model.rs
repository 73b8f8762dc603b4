//! The vendor-neutral message model: who talks, where, with which ids, and what was said.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A user account at the vendor. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserId(Arc<str>);

impl UserId {
    /// A user id from any string.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.0)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A group (many-member conversation) at the vendor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(Arc<str>);

impl GroupId {
    /// A group id from any string.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a message lives: a direct (one-to-one) conversation or a group.
///
/// A direct conversation stores its two members in sorted order, so both sides compute the
/// same id: it can key sequences, cursors and stores without a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConversationId {
    /// One-to-one conversation; `low <= high` always holds.
    Direct {
        /// The smaller of the two user ids.
        low: UserId,
        /// The larger of the two user ids.
        high: UserId,
    },
    /// A group conversation.
    Group(GroupId),
}

impl ConversationId {
    /// The direct conversation between `a` and `b` (order does not matter).
    pub fn direct(a: &UserId, b: &UserId) -> Self {
        let (low, high) = if a <= b {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        ConversationId::Direct { low, high }
    }

    /// The group conversation `group`.
    pub fn group(group: impl AsRef<str>) -> Self {
        ConversationId::Group(GroupId::new(group))
    }

    /// For a direct conversation containing `me`, the other member.
    pub fn peer_of(&self, me: &UserId) -> Option<&UserId> {
        match self {
            ConversationId::Direct { low, high } if low == me => Some(high),
            ConversationId::Direct { low, high } if high == me => Some(low),
            _ => None,
        }
    }

    /// Whether this is a direct conversation with `user` as a member.
    pub fn is_direct_member(&self, user: &UserId) -> bool {
        matches!(self, ConversationId::Direct { low, high } if low == user || high == user)
    }
}

/// Why a string is not a [`ConversationId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a conversation id (\"d:<user>:<user>\" or \"g:<group>\"): {0:?}")]
pub struct ParseConversationError(pub String);

impl std::str::FromStr for ConversationId {
    type Err = ParseConversationError;

    /// Parses the [`Display`](fmt::Display) form back: `d:<low>:<high>` or `g:<group>`.
    /// The first user id of a direct conversation must not contain `:` (the display form
    /// could not be split otherwise); the second and group ids may.
    ///
    /// ```
    /// use im_service::{ConversationId, UserId};
    /// let c = ConversationId::direct(&UserId::new("bob"), &UserId::new("alice"));
    /// assert_eq!(c.to_string().parse::<ConversationId>(), Ok(c));
    /// assert!("x:y".parse::<ConversationId>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseConversationError(s.to_owned());
        if let Some(group) = s.strip_prefix("g:") {
            return (!group.is_empty())
                .then(|| ConversationId::group(group))
                .ok_or_else(bad);
        }
        let (a, b) = s
            .strip_prefix("d:")
            .and_then(|r| r.split_once(':'))
            .ok_or_else(bad)?;
        if a.is_empty() || b.is_empty() {
            return Err(bad());
        }
        Ok(ConversationId::direct(&UserId::new(a), &UserId::new(b)))
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConversationId::Direct { low, high } => write!(f, "d:{low}:{high}"),
            ConversationId::Group(g) => write!(f, "g:{g}"),
        }
    }
}

/// The id a client gives a message before sending it. It is reused on every retry so the
/// vendor can recognise a resend (idempotency key), and it reconciles the local echo with the
/// copy the server sends back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientMsgId(Arc<str>);

impl ClientMsgId {
    /// A fresh, practically unique id: random 64 bits + a process-wide counter.
    pub fn generate() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self::new(format!("c{:016x}{n:x}", rand::random::<u64>()))
    }

    /// A client id from any string (tests, or ids persisted by an earlier run).
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id the vendor gives a stored message (stanza-id, message uid, stream sequence …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServerMsgId(Arc<str>);

impl ServerMsgId {
    /// A server id from any string.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Position of a message in its conversation, for vendors with
/// [`Capability::SequenceNumbers`](crate::Capability::SequenceNumbers): starts at 1, no gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Seq(pub u64);

impl Seq {
    /// The sequence after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Milliseconds since the Unix epoch (UTC).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct Timestamp(i64);

impl Timestamp {
    /// A timestamp from milliseconds since the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This instant moved back by `d` (saturating).
    pub fn minus(self, d: std::time::Duration) -> Self {
        Self(self.0.saturating_sub(duration_millis(d)))
    }

    /// This instant moved forward by `d` (saturating).
    pub fn plus(self, d: std::time::Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(d)))
    }
}

/// A vendor access token. Its `Debug` output is redacted so it never lands in a log.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Token(String);

impl Token {
    /// A token from its secret string.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret, for adapters that must put it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// An application payload (card, order, image reference …) tagged with its type.
    Custom {
        /// Application-defined type tag, e.g. `"order-card"`.
        type_tag: String,
        /// Opaque bytes the application encodes.
        payload: Vec<u8>,
    },
    /// What is left of a recalled message: who recalled it and when, never its content
    /// (see [`MessageChange::apply`](crate::MessageChange::apply)). Appended last, so the
    /// encodings of the other variants are unchanged.
    Recalled {
        /// Who recalled it.
        by: UserId,
        /// The vendor's time of the recall.
        at: Timestamp,
    },
}

impl Content {
    /// Text content.
    pub fn text(s: impl Into<String>) -> Self {
        Content::Text(s.into())
    }

    /// Size in bytes that counts against the vendor's message size limit.
    pub fn size(&self) -> usize {
        match self {
            Content::Text(s) => s.len(),
            Content::Custom { type_tag, payload } => type_tag.len() + payload.len(),
            Content::Recalled { .. } => 0,
        }
    }
}

/// A message a client asks the vendor to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMessage {
    /// Idempotency key; the same on every attempt.
    pub client_id: ClientMsgId,
    /// Target conversation.
    pub conversation: ConversationId,
    /// What is said.
    pub content: Content,
    /// The sender's clock when the user pressed send. Informational only: ordering uses the
    /// server's time and sequence, so a skewed client clock cannot reorder history.
    pub client_time: Timestamp,
}

impl OutgoingMessage {
    /// A new message with a fresh client id.
    pub fn new(conversation: ConversationId, content: Content, client_time: Timestamp) -> Self {
        Self {
            client_id: ClientMsgId::generate(),
            conversation,
            content,
            client_time,
        }
    }
}

/// A message as stored by the vendor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The vendor's id.
    pub server_id: ServerMsgId,
    /// The sender's idempotency key.
    pub client_id: ClientMsgId,
    /// Conversation it belongs to.
    pub conversation: ConversationId,
    /// Who sent it.
    pub sender: UserId,
    /// Per-conversation sequence, when the vendor has them.
    pub seq: Option<Seq>,
    /// When the vendor stored it (the ordering clock).
    pub server_time: Timestamp,
    /// The sender's clock at send time (display only).
    pub client_time: Timestamp,
    /// What is said.
    pub content: Content,
}

/// How a message reached the client: the three kinds of incoming messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Origin {
    /// Pushed over the long connection while online.
    Online,
    /// Queued while the user was away, pulled after login.
    Offline,
    /// Older history, pulled on demand.
    History,
}

/// A message together with how it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedMessage {
    /// The message.
    pub message: Message,
    /// Delivery origin.
    pub origin: Origin,
}

/// Milliseconds of a duration, saturated to `i64` (the unit of [`Timestamp`]; the clocks
/// use it too, which is why it lives here, below them).
pub(crate) fn duration_millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
