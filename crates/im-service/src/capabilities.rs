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
    /// A sender can recall a message within the vendor's window
    /// ([`LifecyclePolicy::recall_window`](crate::LifecyclePolicy::recall_window)).
    Recall,
    /// A message can be edited (who may: [`LifecyclePolicy`](crate::LifecyclePolicy)).
    Edit,
    /// A user can delete a message for themselves (on all their devices).
    DeleteForMe,
    /// Read positions come back as events: a peer's read ("seen") and my other devices'.
    ReadReceiptEvents,
    /// Several devices of one user stay logged in at once; my sends reach my other devices
    /// as my own messages, and read state follows. (The opposite of `KickOnSecondLogin`.)
    MultiDevice,
    /// A client that was away can pull the changes and read receipts it missed
    /// ([`Vendor::pull_changes`](crate::Vendor::pull_changes)).
    ChangeFeed,
    /// Sends may be pipelined within a conversation: a send that names the one it follows
    /// ([`Vendor::send_after`](crate::Vendor::send_after)) is stored only after that one,
    /// and refused with [`ServiceError::PredecessorNotStored`](crate::ServiceError::PredecessorNotStored)
    /// when it is not stored, so nothing overtakes a send the vendor refused.
    OrderedSends,
}

impl Capability {
    /// How many capabilities there are.
    pub const COUNT: usize = 19;

    /// Every capability, in declaration order.
    pub const ALL: [Capability; Self::COUNT] = [
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
        Capability::Recall,
        Capability::Edit,
        Capability::DeleteForMe,
        Capability::ReadReceiptEvents,
        Capability::MultiDevice,
        Capability::ChangeFeed,
        Capability::OrderedSends,
    ];

    /// This capability's bit in [`Capabilities`]' feature set. Cannot overflow: the
    /// assertions below make the build fail before a capability outgrows [`Features`].
    const fn bit(self) -> Features {
        1 << (self as u32)
    }
}

/// The feature set of [`Capabilities`]: one bit per [`Capability`], room for 128. It was a
/// `u32`; bincode's varint encodes a `u128` below 2³² in exactly the bytes of that `u32`, so
/// the stored and wire format is unchanged (the golden fixtures check it).
type Features = u128;

// The build fails, rather than a shift overflowing, when the capabilities outgrow the set
// (then widen `Features` with a new format version), or when `ALL` is not every capability
// in declaration order (each one's discriminant is its bit).
const _: () = {
    assert!(
        Capability::COUNT <= Features::BITS as usize,
        "more capabilities than bits in `Features`: widen it (a new format version)"
    );
    let mut i = 0;
    while i < Capability::COUNT {
        assert!(
            Capability::ALL[i] as usize == i,
            "Capability::ALL must list every capability in declaration order"
        );
        i += 1;
    }
};

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
    features: Features,
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

    /// `MessageTooLarge` when `content` is over [`Capabilities::max_message_bytes`]: the
    /// typed, client-side refusal of adapters whose server limits (or would mangle) it.
    pub fn check_size(&self, content: &crate::model::Content) -> crate::Result<()> {
        let (size, max) = (content.size(), self.max_message_bytes);
        match size > max {
            true => Err(crate::ServiceError::MessageTooLarge { size, max }),
            false => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// The layout before the feature set was widened from `u32`.
    #[derive(Serialize)]
    struct CapabilitiesU32 {
        features: u32,
        retention: Option<Duration>,
        max_message_bytes: usize,
        offline_batch_max: u32,
        history_page_max: u32,
    }

    #[test]
    fn every_capability_is_listed_once_with_its_own_bit() {
        // A new variant breaks this match: add it to `ALL` (and bump `COUNT`) as well.
        let listed = |c: Capability| match c {
            Capability::HistoryByTime
            | Capability::HistoryBySeq
            | Capability::SequenceNumbers
            | Capability::ServerAcks
            | Capability::OfflineQueue
            | Capability::ExplicitOfflineAck
            | Capability::GroupConversations
            | Capability::ReadReceipts
            | Capability::KickOnSecondLogin
            | Capability::TokenExpiry
            | Capability::Heartbeat
            | Capability::IdempotentSend
            | Capability::Recall
            | Capability::Edit
            | Capability::DeleteForMe
            | Capability::ReadReceiptEvents
            | Capability::MultiDevice
            | Capability::ChangeFeed
            | Capability::OrderedSends => Capability::ALL.contains(&c),
        };
        assert!(Capability::ALL.into_iter().all(listed));
        let mut caps = Capabilities::none();
        for (i, cap) in Capability::ALL.into_iter().enumerate() {
            assert!(!caps.supports(cap));
            caps = caps.with(cap);
            assert_eq!(caps.supported().count(), i + 1);
        }
        for cap in Capability::ALL {
            assert!(!caps.clone().without(cap).supports(cap));
            assert_eq!(
                caps.clone().without(cap).supported().count(),
                Capability::COUNT - 1
            );
        }
    }

    #[test]
    fn the_encoding_is_the_one_of_the_u32_feature_set() {
        let all = Capability::ALL
            .into_iter()
            .fold(Capabilities::none(), Capabilities::with)
            .with_retention(Some(Duration::from_secs(3600)));
        for caps in [Capabilities::none(), all] {
            let old = CapabilitiesU32 {
                features: u32::try_from(caps.features).unwrap(),
                retention: caps.retention,
                max_message_bytes: caps.max_message_bytes,
                offline_batch_max: caps.offline_batch_max,
                history_page_max: caps.history_page_max,
            };
            let old_bytes = codec::encode(&old).unwrap();
            assert_eq!(codec::encode(&caps).unwrap(), old_bytes);
            assert_eq!(codec::decode::<Capabilities>(&old_bytes).unwrap(), caps);
        }
    }

    #[test]
    fn the_feature_set_has_room_beyond_32_capabilities() {
        // What a `u32` could not hold: the 33rd and the 128th bit survive a round trip.
        let caps = Capabilities {
            features: (1 << 32) | (1 << 127),
            ..Capabilities::none()
        };
        let back: Capabilities = codec::decode(&codec::encode(&caps).unwrap()).unwrap();
        assert_eq!(back, caps);
        assert_eq!(back.supported().count(), 0, "no known capability is set");
    }
}
