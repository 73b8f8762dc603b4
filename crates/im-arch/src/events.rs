//! What the client tells its subscribers: connection state, messages, heartbeats, sync
//! progress, retries and errors, from login down to UI rendering; their kinds and routing on
//! the [`Bus`](crate::Bus).

use std::time::Duration;

use im_service::{
    ClientMsgId, ConversationId, KickReason, Message, MessageChange, ReceivedMessage, ServerMsgId,
    Timestamp, UserId,
};

use crate::bus::{Filter, Routed};
use crate::conversation_list::ConversationSummary;
use crate::error::ArchError;
use crate::retry::RetryAttempt;
use crate::store::SendStatus;

/// The connection supervisor's state.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionState {
    /// Not started, or between connections; also while the app has marked the network
    /// down ([`ImClient::set_network_available`](crate::ImClient::set_network_available)):
    /// no connection attempt is made until it is back. Not terminal: the client goes on by
    /// itself.
    Disconnected,
    /// Opening the connection and authenticating.
    Connecting,
    /// Logged in; pulling what was missed (ACK-online) before going online.
    Syncing,
    /// Up to date and taking live pushes.
    Online,
    /// Waiting before reconnect attempt `attempt` (the backoff's jittered delay), or before
    /// the first attempt after the network came back (`attempt` 1, a delay drawn like the
    /// first reconnect's, so a fleet regaining the network does not reconnect at once).
    Reconnecting {
        /// 1-based attempt number.
        attempt: u32,
        /// Wait before it starts.
        next_in: Duration,
    },
    /// Another login took over this account; no automatic reconnect.
    Kicked(KickReason),
    /// The token expired and no fresh one could be had; no automatic reconnect.
    TokenExpired,
    /// Login was refused for good (bad credentials, unknown user …).
    Failed(String),
    /// Logged out on request.
    LoggedOut,
}

impl ConnectionState {
    /// Whether the client is online (synced and taking live pushes).
    pub fn is_online(&self) -> bool {
        *self == ConnectionState::Online
    }

    /// Whether the supervisor has stopped for good (until the next `login`).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ConnectionState::Kicked(_)
                | ConnectionState::TokenExpired
                | ConnectionState::Failed(_)
                | ConnectionState::LoggedOut
        )
    }
}

/// Progress of one sync pass.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncProgress {
    /// A pass started (after login or reconnect).
    Started,
    /// An offline batch was persisted and acknowledged.
    Page {
        /// Messages in it.
        messages: usize,
        /// Messages the vendor still holds.
        left: u64,
    },
    /// A hole in a conversation was fetched.
    GapFilled {
        /// Messages fetched.
        messages: usize,
    },
    /// The pass ended; the client goes online.
    Finished {
        /// Messages delivered by the pass.
        delivered: usize,
    },
    /// The pass failed; the client reconnects.
    Failed(ArchError),
}

/// One event on the client's distribution stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The connection state changed.
    State(ConnectionState),
    /// A message, delivered once, in per-conversation order.
    Message(ReceivedMessage),
    /// A heartbeat answered.
    Heartbeat {
        /// Its round-trip time.
        rtt: Duration,
    },
    /// A heartbeat went unanswered.
    HeartbeatMissed {
        /// Consecutive misses so far.
        missed: u32,
    },
    /// The token will expire soon; the app may fetch a fresh one.
    TokenWillExpire {
        /// When.
        expires_at: Timestamp,
    },
    /// Sync progress.
    Sync(SyncProgress),
    /// A retried operation failed an attempt.
    Retry(RetryAttempt),
    /// A local store write failed (full disk, I/O error); what it was protecting stays where
    /// it was (an unsent message stays in the outbox and is tried again).
    StoreFailed {
        /// What was being written.
        op: &'static str,
        /// The store's error.
        error: ArchError,
    },
    /// A row of the conversation list changed (message, read, pin, draft, mute).
    ConversationChanged(ConversationSummary),
    /// A queued send changed status (local echo → sent / failed, resend, cancel).
    SendStatus {
        /// The message's client id (the local echo's key).
        client_id: ClientMsgId,
        /// Its conversation.
        conversation: ConversationId,
        /// The new status; `None` when the item was cancelled.
        status: Option<SendStatus>,
        /// When the vendor stored it (with `Sent` only): with the client's own user, the
        /// message as the vendor keeps it, for observers such as QC's business metrics
        /// (a client's bus carries what it receives, not its own sends as messages).
        server_time: Option<Timestamp>,
    },
    /// This subscriber's queue was full and its oldest events were dropped
    /// ([`DeliveryPolicy::DropOldest`](crate::DeliveryPolicy::DropOldest) subscribers only).
    Lagged {
        /// How many, exactly, since the previous notice.
        dropped: u64,
    },
    /// A message was recalled, edited or deleted for me (here, elsewhere, or while away),
    /// and the change is durable in the store. Announced once per change (a duplicate or
    /// older revision is not).
    MessageChanged {
        /// The change as the vendor reported it.
        change: MessageChange,
        /// The message as it now is (recalled: [`im_service::Content::Recalled`]); `None`
        /// when it was deleted for me or is not stored here yet (the change applies when it
        /// arrives).
        message: Option<Message>,
    },
    /// A peer has read a conversation up to a message ("seen"). My own reads on other
    /// devices are not announced with this: they move the conversation's row (unread) and
    /// come as [`ClientEvent::ConversationChanged`].
    ReadBy {
        /// The conversation.
        conversation: ConversationId,
        /// Who read it.
        reader: UserId,
        /// The newest message they have read.
        up_to: ServerMsgId,
    },
}

/// The kinds of [`ClientEvent`], for [`Filter`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// [`ClientEvent::State`].
    State,
    /// [`ClientEvent::Message`].
    Message,
    /// [`ClientEvent::Heartbeat`] and [`ClientEvent::HeartbeatMissed`].
    Heartbeat,
    /// [`ClientEvent::TokenWillExpire`].
    Token,
    /// [`ClientEvent::Sync`].
    Sync,
    /// [`ClientEvent::Retry`].
    Retry,
    /// [`ClientEvent::StoreFailed`].
    Error,
    /// [`ClientEvent::ConversationChanged`].
    Conversation,
    /// [`ClientEvent::SendStatus`].
    SendStatus,
    /// [`ClientEvent::Lagged`] (always delivered to the subscriber it concerns).
    Lagged,
    /// [`ClientEvent::MessageChanged`].
    MessageChanged,
    /// [`ClientEvent::ReadBy`].
    ReadBy,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 12] = [
        EventKind::State,
        EventKind::Message,
        EventKind::Heartbeat,
        EventKind::Token,
        EventKind::Sync,
        EventKind::Retry,
        EventKind::Error,
        EventKind::Conversation,
        EventKind::SendStatus,
        EventKind::Lagged,
        EventKind::MessageChanged,
        EventKind::ReadBy,
    ];
}

impl Filter {
    /// Only events of these kinds.
    pub fn of(kinds: impl IntoIterator<Item = EventKind>) -> Filter {
        Filter::kinds(kinds.into_iter().map(|k| k as usize))
    }
}

impl ClientEvent {
    /// This event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            ClientEvent::State(_) => EventKind::State,
            ClientEvent::Message(_) => EventKind::Message,
            ClientEvent::Heartbeat { .. } | ClientEvent::HeartbeatMissed { .. } => {
                EventKind::Heartbeat
            }
            ClientEvent::TokenWillExpire { .. } => EventKind::Token,
            ClientEvent::Sync(_) => EventKind::Sync,
            ClientEvent::Retry(_) => EventKind::Retry,
            ClientEvent::StoreFailed { .. } => EventKind::Error,
            ClientEvent::ConversationChanged(_) => EventKind::Conversation,
            ClientEvent::SendStatus { .. } => EventKind::SendStatus,
            ClientEvent::Lagged { .. } => EventKind::Lagged,
            ClientEvent::MessageChanged { .. } => EventKind::MessageChanged,
            ClientEvent::ReadBy { .. } => EventKind::ReadBy,
        }
    }
}

impl Routed for ClientEvent {
    const KINDS: usize = EventKind::ALL.len();

    fn kind(&self) -> usize {
        ClientEvent::kind(self) as usize
    }

    fn conversation(&self) -> Option<&ConversationId> {
        match self {
            ClientEvent::Message(r) => Some(&r.message.conversation),
            ClientEvent::ConversationChanged(row) => Some(&row.id),
            ClientEvent::SendStatus { conversation, .. } => Some(conversation),
            ClientEvent::MessageChanged { change, .. } => Some(&change.conversation),
            ClientEvent::ReadBy { conversation, .. } => Some(conversation),
            _ => None,
        }
    }

    fn lagged(dropped: u64) -> Self {
        ClientEvent::Lagged { dropped }
    }
}
