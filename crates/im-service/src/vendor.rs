//! The contract every vendor adapter implements, and the request/response types it uses.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::capabilities::{Capabilities, Capability};
use crate::error::KickReason;
use crate::lifecycle::{ChangeBatch, ChangeCursor, LifecyclePolicy, MessageChange, ReadReceipt};
use crate::model::{
    ClientMsgId, Content, ConversationId, Message, OutgoingMessage, Seq, ServerMsgId, Timestamp,
    Token, UserId,
};
use crate::{Result, ServiceError};

/// What a client logs in with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The account.
    pub user: UserId,
    /// An access token the company backend obtained from the vendor.
    pub token: Token,
}

impl Credentials {
    /// `user` logging in with `token` (for XMPP, the password).
    pub fn new(user: impl AsRef<str>, token: impl Into<String>) -> Self {
        Self {
            user: UserId::new(user),
            token: Token::new(token),
        }
    }
}

/// A logged-in session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Who is logged in.
    pub user: UserId,
    /// When the token stops working, if it expires.
    pub token_expires_at: Option<Timestamp>,
    /// The vendor's id for this connection (diagnostics).
    pub session_id: String,
    /// The vendor's clock at login, when it tells: a client can measure its own skew and
    /// knows from when on live pushes are newer than its sync.
    pub server_time: Option<Timestamp>,
}

/// The vendor's acknowledgement of a send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendReceipt {
    /// The stored message's vendor id.
    pub server_id: ServerMsgId,
    /// Its per-conversation sequence, if the vendor has them.
    pub seq: Option<Seq>,
    /// When the vendor stored it.
    pub server_time: Timestamp,
    /// `true` when the client id had been stored before: the send already succeeded and this
    /// receipt describes that first copy. Adapters map a vendor's "already exists" answer to
    /// this, so a resend after a lost ack counts as sent, never as a failure.
    pub duplicate: bool,
}

impl SendReceipt {
    /// This receipt as the answer to a resend of the same client id (`duplicate`).
    pub fn as_duplicate(&self) -> Self {
        let duplicate = true;
        Self {
            duplicate,
            ..self.clone()
        }
    }
}

/// One package of offline messages (RongCloud style: a page plus how many are left).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineBatch {
    /// Messages, newest first.
    pub messages: Vec<Message>,
    /// How many queued messages remain after this batch.
    pub left: u64,
    /// What to pass to [`Vendor::ack_offline`] once the batch is persisted.
    pub ack: Option<OfflineAck>,
}

/// Acknowledges one offline batch. Opaque to callers; only the issuing vendor reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineAck {
    /// Vendor-specific acknowledgement data (queue positions, stanza ids …).
    pub token: String,
}

/// An opaque position in a paged history result; pass it back to get the next (older) page.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PageCursor(pub String);

/// Which conversations a history query covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryScope {
    /// One conversation.
    Conversation(ConversationId),
    /// Every conversation the user is a member of.
    All,
}

/// Which part of history a query covers. Bounds are exclusive so a gap between two known
/// messages is expressed directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryRange {
    /// Everything the vendor still has.
    Latest,
    /// Messages with `after < seq < before` (needs [`Capability::HistoryBySeq`]).
    Seq {
        /// Exclusive lower bound; `None` = from the start.
        after: Option<Seq>,
        /// Exclusive upper bound; `None` = up to the newest.
        before: Option<Seq>,
    },
    /// Messages with `from <= server_time < to` (needs [`Capability::HistoryByTime`]).
    Time {
        /// Inclusive lower bound.
        from: Timestamp,
        /// Exclusive upper bound.
        to: Timestamp,
    },
}

/// A history request: always answered newest first, one page at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Conversations covered.
    pub scope: HistoryScope,
    /// Range covered.
    pub range: HistoryRange,
    /// Continue after this cursor (from the previous page); `None` starts at the newest.
    pub cursor: Option<PageCursor>,
    /// Page size, at least 1, at most the vendor's `history_page_max`.
    pub limit: u32,
}

impl HistoryQuery {
    /// The newest `limit` messages of one conversation.
    pub fn latest(conversation: ConversationId, limit: u32) -> Self {
        Self {
            scope: HistoryScope::Conversation(conversation),
            range: HistoryRange::Latest,
            cursor: None,
            limit,
        }
    }

    /// Replaces the range.
    #[must_use]
    pub fn range(mut self, range: HistoryRange) -> Self {
        self.range = range;
        self
    }

    /// Continues from `cursor`.
    #[must_use]
    pub fn after_cursor(mut self, cursor: Option<PageCursor>) -> Self {
        self.cursor = cursor;
        self
    }

    /// The `[from, to)` bounds of the range for a vendor that pages by time (`None`: open);
    /// a sequence range is `Unsupported`.
    pub fn time_bounds(&self) -> Result<(Option<Timestamp>, Option<Timestamp>)> {
        match self.range {
            HistoryRange::Latest => Ok((None, None)),
            HistoryRange::Time { from, to } => Ok((Some(from), Some(to))),
            HistoryRange::Seq { .. } => {
                Err(crate::ServiceError::Unsupported(Capability::HistoryBySeq))
            }
        }
    }

    /// The capability this query's range needs, if any.
    pub fn needs(&self) -> Option<Capability> {
        match self.range {
            HistoryRange::Latest => None,
            HistoryRange::Seq { .. } => Some(Capability::HistoryBySeq),
            HistoryRange::Time { .. } => Some(Capability::HistoryByTime),
        }
    }
}

/// One page of history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Messages, newest first.
    pub messages: Vec<Message>,
    /// Cursor for the next (older) page; `None` when the range is exhausted.
    pub next: Option<PageCursor>,
    /// The oldest instant the vendor can still serve (its retention horizon). Any part of the
    /// requested range before it is a gap this vendor cannot fill, not an empty range.
    pub horizon: Option<Timestamp>,
}

/// Something the vendor tells the client without being asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VendorEvent {
    /// A message pushed over the long connection (only after [`Vendor::go_online`]).
    MessagePushed(Message),
    /// The long connection broke; the session is gone and a new login is needed.
    ConnectionLost {
        /// Human-readable cause.
        reason: String,
    },
    /// The vendor ended this session; reconnecting with the same identity would repeat it.
    Kicked(KickReason),
    /// The token will expire soon (vendors warn at ~80% of its life).
    TokenWillExpire {
        /// When it expires.
        expires_at: Timestamp,
    },
    /// The token has expired; calls now fail with `TokenExpired`.
    TokenExpired,
    /// A message was recalled, edited or deleted (for this user) elsewhere: by its sender,
    /// or on another device of this user. Live, after [`Vendor::go_online`]; what happened
    /// while away comes from [`Vendor::pull_changes`].
    MessageChanged(MessageChange),
    /// A read position came back: a peer's ("seen") or, when `reader` is this user, one of
    /// its other devices'.
    ReadReceipt(ReadReceipt),
}

/// The stream of [`VendorEvent`]s of one client.
pub type EventStream = Pin<Box<dyn Stream<Item = VendorEvent> + Send>>;

/// One client's handle to a rented IM vendor (one long connection at a time).
///
/// The handle outlives connections: [`Vendor::login`] opens one, [`Vendor::logout`] or a
/// [`VendorEvent::ConnectionLost`] ends it, and a later `login` opens the next. Events of all
/// connections flow through the single stream returned by [`Vendor::take_events`].
///
/// The ACK-online sequence the architecture layer runs after every login:
/// 1. [`pull_offline`](Vendor::pull_offline) until `left == 0`, persisting each batch;
/// 2. [`ack_offline`](Vendor::ack_offline) each batch once it is stored;
/// 3. [`go_online`](Vendor::go_online): live pushes start. Messages that raced steps 1–2 may be
///    pushed again and are deduplicated by the caller.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Vendor: Send + Sync {
    /// A short, stable name (`"memory"`, `"reference"`, `"xmpp"`) for logs and metrics.
    fn name(&self) -> &str;

    /// What this vendor can do. Constant for the life of the handle.
    fn capabilities(&self) -> &Capabilities;

    /// Takes the event stream. Returns `None` after the first call: events have one consumer.
    fn take_events(&self) -> Option<EventStream>;

    /// Opens a connection and authenticates. A second login of the same user may kick the
    /// first ([`Capability::KickOnSecondLogin`]).
    async fn login(&self, credentials: &Credentials) -> Result<Session>;

    /// Closes the connection cleanly. Idempotent. An implementation drops its session
    /// before any goodbye to the server, so a caller may cut the wait short (the client
    /// layer does when the link is already broken) and the next `login` starts clean.
    async fn logout(&self) -> Result<()>;

    /// Sends a message. Idempotent by `client_id`: resending returns the first receipt with
    /// `duplicate = true`.
    async fn send(&self, message: &OutgoingMessage) -> Result<SendReceipt>;

    /// Sends a message that must be stored after `after`, an earlier send of this user in
    /// the same conversation that may still be on its way ([`Capability::OrderedSends`]).
    /// The vendor stores it only once `after` is stored, and otherwise refuses it with
    /// [`ServiceError::PredecessorNotStored`], storing nothing: a client may then keep
    /// several sends of one conversation in flight without any of them overtaking one the
    /// vendor refused. Idempotent by `client_id` as [`send`](Vendor::send) is (a resend of
    /// a stored message answers its receipt whatever `after` says).
    ///
    /// The default refuses with `Unsupported(OrderedSends)`: a vendor without the
    /// capability cannot promise the order.
    async fn send_after(
        &self,
        message: &OutgoingMessage,
        after: &ClientMsgId,
    ) -> Result<SendReceipt> {
        let _ = (message, after);
        Err(ServiceError::Unsupported(Capability::OrderedSends))
    }

    /// Pulls the newest queued offline messages, at most `max` (capped by the vendor).
    async fn pull_offline(&self, max: u32) -> Result<OfflineBatch>;

    /// Removes an offline batch from the vendor's queue after the client stored it.
    async fn ack_offline(&self, ack: &OfflineAck) -> Result<()>;

    /// Declares the client online: live pushes start (the ACK-online step).
    async fn go_online(&self) -> Result<()>;

    /// Pulls one page of history, newest first.
    async fn pull_history(&self, query: &HistoryQuery) -> Result<HistoryPage>;

    /// Heartbeat; returns the round-trip time.
    async fn ping(&self) -> Result<Duration>;

    /// Tells the vendor the user has read `conversation` up to and including `up_to`.
    /// Vendors without [`Capability::ReadReceipts`] fail with `Unsupported`.
    async fn mark_read(&self, conversation: &ConversationId, up_to: &ServerMsgId) -> Result<()>;

    /// The vendor's rules for recall and edit (windows, who may edit), as data. Meaningful
    /// only with [`Capability::Recall`] / [`Capability::Edit`].
    fn lifecycle(&self) -> LifecyclePolicy {
        LifecyclePolicy::default()
    }

    /// Recalls the caller's message `target` for everyone, within the recall window.
    /// Returns the change as stored (also pushed to the conversation's other members and
    /// the caller's other devices). Vendors without [`Capability::Recall`] fail with
    /// `Unsupported`; a refused recall is [`ServiceError::ChangeRefused`].
    async fn recall(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> Result<MessageChange> {
        let _ = (conversation, target);
        Err(crate::ServiceError::Unsupported(Capability::Recall))
    }

    /// Replaces the content of `target` (who may, and until when: [`Vendor::lifecycle`]).
    /// Vendors without [`Capability::Edit`] fail with `Unsupported`.
    async fn edit(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
        content: &Content,
    ) -> Result<MessageChange> {
        let _ = (conversation, target, content);
        Err(crate::ServiceError::Unsupported(Capability::Edit))
    }

    /// Deletes `target` for the caller only, on all the caller's devices. Vendors without
    /// [`Capability::DeleteForMe`] fail with `Unsupported`.
    async fn delete_for_me(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> Result<MessageChange> {
        let _ = (conversation, target);
        Err(crate::ServiceError::Unsupported(Capability::DeleteForMe))
    }

    /// The changes and read receipts concerning the caller after `since`, oldest first, at
    /// most `max` entries. `None` starts at the feed's current end (an empty batch whose
    /// `next` is the position to keep): a fresh client gets messages in their current state
    /// from offline and history pulls, so it needs only what changes from then on. A client
    /// pulls until `left == 0` in its ACK-online pass, after the offline messages and
    /// before [`Vendor::go_online`]. Vendors without [`Capability::ChangeFeed`] fail with
    /// `Unsupported`.
    async fn pull_changes(&self, since: Option<ChangeCursor>, max: u32) -> Result<ChangeBatch> {
        let _ = (since, max);
        Err(crate::ServiceError::Unsupported(Capability::ChangeFeed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceError;
    use crate::error::ErrorClass;

    /// The mock stands in for a vendor in higher layers' unit tests; this checks it can
    /// script an answer sequence (transient failure, then success) behind `dyn Vendor`.
    #[tokio::test]
    async fn mock_vendor_scripts_answers_behind_the_trait_object() {
        let mut mock = MockVendor::new();
        let mut seq = mockall::Sequence::new();
        mock.expect_ping()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|| Err(ServiceError::Timeout(Duration::from_secs(1))));
        mock.expect_ping()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|| Ok(Duration::from_millis(3)));
        let vendor: Box<dyn Vendor> = Box::new(mock);
        let first = vendor.ping().await.unwrap_err();
        assert_eq!(first.class(), ErrorClass::Transient);
        assert_eq!(vendor.ping().await.unwrap(), Duration::from_millis(3));
    }

    #[test]
    fn query_names_the_capability_it_needs() {
        let c = ConversationId::group("g");
        assert_eq!(HistoryQuery::latest(c.clone(), 1).needs(), None);
        let by_time = HistoryQuery::latest(c, 1).range(HistoryRange::Time {
            from: Timestamp::from_millis(0),
            to: Timestamp::from_millis(1),
        });
        assert_eq!(by_time.needs(), Some(Capability::HistoryByTime));
    }
}
