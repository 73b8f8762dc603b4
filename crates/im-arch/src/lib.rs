//! Client architecture layer of im-layers: everything between the vendor contract and a UI.
//!
//! [`ImClient`] owns one vendor connection through a supervisor task: login, the ACK-online
//! sync (offline first, acknowledged after persisting, then online), per-conversation
//! ordering with gap fill ([`Sequencer`]), heartbeats and reconnection with capped jittered
//! backoff, one [`RetryPolicy`] for every retried call, history windows with explicit gaps,
//! and a typed, filtered distribution [`Bus`] of [`ClientEvent`]s.
//!
//! Invariants:
//! * depends on `im-service`'s contract only, never on a vendor adapter: it never names a
//!   concrete vendor (checked by `xtask`'s tidy test), and it compiles with no adapter feature;
//! * durable before confirmed: what the API confirms (`send` returning, an offline
//!   acknowledgement to the vendor, a [`DurableSubscription`] acknowledgement) was flushed
//!   first ([`Store`]'s durability contract);
//! * the supervisor never waits for a subscriber; a [`DurableSubscription`] hands out, after
//!   a crash, exactly the events it had not acknowledged;
//! * a message is persisted before it is distributed or acknowledged to the vendor;
//! * every subscriber sees each message once, in per-conversation order; the delivery cursor
//!   never moves past a hole, and a detected hole is always fetched;
//! * kicked and token-expired sessions never reconnect in a loop;
//! * never depends on `im-qc`, `im-business-demo` or (except as a dev-dependency) `im-testkit`.

pub mod archive_history;
pub mod bus;
pub mod client;
pub mod conversations;
mod durable;
pub mod error;
pub mod events;
pub mod history;
pub mod retry;
pub mod send_queue;
pub mod sequencer;
pub mod sled_store;
pub mod store;
pub mod timeline;

pub use archive_history::ArchiveHistory;
pub use bus::{Bus, BusStream, DeliveryPolicy, DroppedCounter, Filter, Routed};
pub use client::Subscription;
pub use client::{ClientConfig, ImClient, ImClientBuilder, StateView, TokenProvider};
pub use conversations::{ConversationList, ConversationSummary};
pub use durable::DurableSubscription;
pub use error::ArchError;
pub use events::{ClientEvent, ConnectionState, EventKind, SyncProgress};
pub use history::{HistoryGap, HistoryResult, HistorySource, HistoryWindow, VendorHistory};
pub use retry::{Backoff, Jitter, RetryAttempt, RetryPolicy};
pub use sequencer::{SeqGap, Sequencer};
pub use sled_store::SledStore;
pub use store::{
    ConversationState, DurableEvent, MemoryStore, OutboxItem, SCHEMA_VERSION, SendStatus, Store,
    SyncCursor,
};
pub use timeline::TimelinePage;
