//! Service layer of im-layers: the vendor-neutral IM contract and the vendor adapters.
//!
//! This crate owns exactly four things and nothing else:
//!
//! * the **model** ([`model`]): users, conversations, message ids, content, delivery origin;
//! * the **contract** ([`Vendor`]): what every rented IM vendor must offer to the layers above
//!   (login, idempotent send, offline pull + acknowledge, history pull, heartbeat, the
//!   ACK-online presence step, and a stream of [`VendorEvent`]s);
//! * the **capabilities** ([`Capabilities`]): what a vendor cannot do is declared, never faked;
//! * the **errors** ([`ServiceError`]) with a retry classification ([`ErrorClass`]).
//!
//! It also hosts what several higher crates share and nothing lower can: the one versioned
//! binary [`codec`] of the workspace, the archive's HTTP contract ([`archive_api`]), the
//! order-preserving key encoding of the sled stores ([`ordered_key`]), and waiting for a
//! store's lock on open ([`lock_wait`]); and, behind cargo
//! features, the vendor adapters: `memory` (`memory::MemoryVendor`, a complete in-process
//! vendor), `reference` (`reference::ReferenceVendor`, the client of the reference vendor's
//! TCP protocol), `xmpp` (`xmpp::XmppVendor`, for XMPP servers such as Prosody), `matrix`
//! (`matrix::MatrixVendor`, for Matrix homeservers such as Synapse), `mock`
//! (`MockVendor`, a mockall mock of the trait), and `webhook` (signed vendor callbacks).
//!
//! Invariant: this crate never depends on any other im-layers crate. Higher layers
//! (`im-arch`, `im-qc`, business code) compile against the trait without any adapter.
//!
//! ```
//! use im_service::{Content, ConversationId, UserId};
//!
//! let alice = UserId::new("alice");
//! let bob = UserId::new("bob");
//! // A direct conversation has one id whichever side names it.
//! assert_eq!(ConversationId::direct(&alice, &bob), ConversationId::direct(&bob, &alice));
//! assert_eq!(Content::text("hi").size(), 2);
//! ```

pub mod archive_api;
pub mod backoff;
pub mod capabilities;
pub mod clock;
pub mod codec;
pub mod error;
mod lifecycle;
#[cfg(feature = "listener")]
pub mod listener;
pub mod lock_wait;
#[cfg(feature = "matrix")]
pub mod matrix;
#[cfg(feature = "memory")]
pub mod memory;
pub mod model;
#[cfg(any(feature = "xmpp", feature = "matrix"))]
mod offline;
pub mod ordered_key;
#[cfg(feature = "reference")]
pub mod reference;
pub mod throttle;
pub mod vendor;
#[cfg(feature = "webhook")]
pub mod webhook;
#[cfg(feature = "xmpp")]
pub mod xmpp;

pub use backoff::{ExponentialBackoff, full_jitter};
pub use capabilities::{Capabilities, Capability};
pub use clock::{Clock, ManualClock, ShiftedClock, SystemClock};
pub use codec::CodecError;
pub use error::{ErrorClass, KickReason, ServiceError};
pub use lifecycle::{
    ChangeBatch, ChangeCursor, ChangeKind, ChangeRefusal, EditPermission, LifecyclePolicy,
    MessageChange, ReadReceipt,
};
pub use model::{
    ClientMsgId, Content, ConversationId, GroupId, Message, Origin, OutgoingMessage,
    ParseConversationError, ReceivedMessage, Seq, ServerMsgId, Timestamp, Token, UserId,
};
#[cfg(any(test, feature = "mock"))]
pub use vendor::MockVendor;
pub use vendor::{
    Credentials, EventStream, HistoryPage, HistoryQuery, HistoryRange, HistoryScope, OfflineAck,
    OfflineBatch, PageCursor, SendReceipt, Session, Vendor, VendorEvent,
};

/// Result alias used across the service layer.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;
