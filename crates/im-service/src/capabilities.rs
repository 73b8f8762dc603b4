//! Capabilities: what a vendor can and cannot do, declared so higher layers adapt instead of
//! discovering it through failures.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One optional feature of a vendor. Used to declare support and to name what is missing
/// (an unsupported call fails with [`ServiceError::Unsupported`](crate::ServiceError::Unsupported),
/// and the case library marks a case "not applicable" with the missing capability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Capability {
    /// History can be queried by a time range (XMPP MAM, NATS JetStream, RongCloud).
    HistoryByTime,
    /// History can be queried by per-conversation sequence cursors.
    HistoryBySeq,
    /// Messages carry a gap-free sequence number per conversation.
    SequenceNumbers,
    /// Every send is acknowledged by the server with its id (XEP-0198, MQTT QoS 1 PUBACK).
    ServerAcks,
    /// Messages for an absent user are queued and delivered on next login.
    OfflineQueue,
    /// Offline messages stay queued until explicitly acknowledged.
    ExplicitOfflineAck,
    /// Group conversations.
    GroupConversations,
    /// Read receipts can be sent to the vendor.
    ReadReceipts,
    /// A second login of the same user kicks the first connection.
    KickOnSecondLogin,
    /// Tokens expire, and the vendor warns before they do.
    TokenExpiry,
    /// Application-level heartbeat with a round-trip time.
    Heartbeat,
    /// Resending a client message id never creates a second message.
    IdempotentSend,
}

impl Capability {
    /// Every capability, in declaration order.
    pub const ALL: [Capability; 12] = [
        Capability::HistoryByTime,
        Capability::HistoryBySeq,
        Capability::SequenceNumbers,
        Capability::ServerAcks,
        Capability::OfflineQueue,
        Capability::ExplicitOfflineAck,
        Capability::GroupConversations,
        Capability::ReadReceipts,
        Capability::KickOnSecondLogin,
        Capability::TokenExpiry,
        Capability::Heartbeat,
        Capability::IdempotentSend,
    ];

    const fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The declared abilities and limits of one vendor.
///
/// ```
/// use im_service::{Capabilities, Capability};
///
/// let caps = Capabilities::none().with(Capability::HistoryByTime).with_max_message_bytes(4096);
/// assert!(caps.supports(Capability::HistoryByTime));
/// assert_eq!(caps.missing(&[Capability::HistoryByTime, Capability::SequenceNumbers]),
///            vec![Capability::SequenceNumbers]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Bit set of supported [`Capability`] values.
    features: u32,
    /// How long the vendor keeps history; `None` = forever. Older windows must come from the
    /// company's own archive.
    pub retention: Option<Duration>,
    /// Largest accepted message content in bytes; larger sends fail with `MessageTooLarge`.
    pub max_message_bytes: usize,
    /// Most messages one offline pull returns (RongCloud packages: 200).
    pub offline_batch_max: u32,
    /// Most messages one history page returns.
    pub history_page_max: u32,
}

impl Capabilities {
    /// A vendor that supports nothing optional, with conservative limits.
    pub fn none() -> Self {
        Self {
            features: 0,
            retention: None,
            max_message_bytes: 4 * 1024,
            offline_batch_max: 100,
            history_page_max: 100,
        }
    }

    /// Adds a capability.
    #[must_use]
    pub fn with(mut self, cap: Capability) -> Self {
        self.features |= cap.bit();
        self
    }

    /// Removes a capability (used by test wrappers that model a weaker vendor).
    #[must_use]
    pub fn without(mut self, cap: Capability) -> Self {
        self.features &= !cap.bit();
        self
    }

    /// Sets the history retention.
    #[must_use]
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the message size limit.
    #[must_use]
    pub fn with_max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    /// Whether `cap` is supported.
    pub fn supports(&self, cap: Capability) -> bool {
        self.features & cap.bit() != 0
    }

    /// The subset of `needed` this vendor lacks, in the order given.
    pub fn missing(&self, needed: &[Capability]) -> Vec<Capability> {
        needed
            .iter()
            .copied()
            .filter(|c| !self.supports(*c))
            .collect()
    }

    /// All supported capabilities.
    pub fn supported(&self) -> impl Iterator<Item = Capability> + '_ {
        Capability::ALL.into_iter().filter(|c| self.supports(*c))
    }
}
