//! Client architecture layer of im-layers: everything between the vendor contract and a UI.
//!
//! [`ImClient`] owns one vendor connection through a supervisor task: login, the ACK-online
//! sync (offline first, acknowledged after persisting, then online), per-conversation
//! ordering with gap fill, heartbeats and reconnection with capped jittered backoff, one
//! [`RetryPolicy`] for every retried call, history windows with explicit gaps, and a typed,
//! filtered distribution [`Bus`] of [`ClientEvent`]s.
//!
//! # The API, by group
//!
//! * **The client**: [`ImClient`] (built with [`ImClientBuilder`]; its methods cover login
//!   and connection, sending, the conversation list, the timeline and history, and
//!   subscriptions), configured with [`ClientConfig`] and an optional [`TokenProvider`];
//!   fails with [`ArchError`].
//! * **Events**: [`ClientEvent`] and its [`EventKind`], [`ConnectionState`],
//!   [`SyncProgress`], [`RetryAttempt`]; live readers take a [`Subscription`]; lossless
//!   readers a [`DurableSubscription`] of [`DurableEvent`]s.
//! * **Distribution**: the [`Bus`] the client publishes on, usable for app events too:
//!   [`Routed`] events, [`Filter`], [`DeliveryPolicy`], [`BusStream`], [`DroppedCounter`].
//! * **Conversations and timeline**: [`ConversationSummary`] rows (and the
//!   [`ConversationList`] that orders them), [`TimelinePage`].
//! * **History**: [`HistoryWindow`], [`HistorySource`] with [`VendorHistory`] and
//!   [`ArchiveHistory`], and what a request returns: [`HistoryResult`], [`HistoryGap`].
//! * **Message lifecycle**: [`ImClient::recall`], [`ImClient::edit`],
//!   [`ImClient::delete_for_me`] (refusals as [`ArchError::ChangeRefused`]),
//!   [`ImClient::revision`] and [`ImClient::read_receipts`]; what comes back is announced as
//!   [`ClientEvent::MessageChanged`] and [`ClientEvent::ReadBy`], and my reads on other
//!   devices as conversation rows.
//! * **Retry**: [`RetryPolicy`], [`Backoff`], [`Jitter`].
//! * **Storage**: the [`Store`] trait and its durability contract, [`MemoryStore`],
//!   [`LogStore`] (the default durable store, opened with [`LogStoreOptions`]; it writes
//!   through past [`WRITE_THROUGH`] buffered bytes) and [`SledStore`] (pages from disk,
//!   for stores too large for memory), and the values they keep: [`SyncCursor`], [`OutboxItem`],
//!   [`SendStatus`], [`ConversationState`], [`SCHEMA_VERSION`]; for the message lifecycle
//!   [`MessageRevision`] (what the UI shows as "edited"), [`ChangeOutcome`] and
//!   [`MAX_PENDING_PER_MESSAGE`].
//!
//! Everything else (the supervisor, the sync engine and its sequencer, the send queue's
//! task, the shared state) is private: modules are private and this list is the API.
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
//! * a message change is applied once, by revision (the newest wins, in any order), durably
//!   before it is announced; a device that was away pulls what changed (the change feed)
//!   before it goes online; my sends from another device arrive once, as mine, never
//!   unread; read positions only move forward;
//! * kicked and token-expired sessions never reconnect in a loop;
//! * never depends on `im-qc`, `im-business-demo` or (except as a dev-dependency) `im-testkit`.

mod archive_history;
mod bus;
mod client;
mod config;
mod conversation_list;
mod conversations;
mod durable;
mod error;
mod events;
mod history;
mod lifecycle;
mod log_store;
mod memory_store;
mod retry;
mod send_queue;
mod sequencer;
mod shared;
mod sled_store;
mod store;
mod timeline;

pub use archive_history::ArchiveHistory;
pub use bus::{Bus, BusStream, DeliveryPolicy, DroppedCounter, Filter, Routed};
pub use client::{ImClient, ImClientBuilder, Subscription};
pub use config::{ClientConfig, TokenProvider};
pub use conversation_list::{ConversationList, ConversationSummary};
pub use durable::DurableSubscription;
pub use error::ArchError;
pub use events::{ClientEvent, ConnectionState, EventKind, SyncProgress};
pub use history::{HistoryGap, HistoryResult, HistorySource, HistoryWindow, VendorHistory};
pub use log_store::{LogDamage, LogStore, LogStoreOptions, WRITE_THROUGH};
pub use memory_store::MemoryStore;
pub use retry::{Backoff, Jitter, RetryAttempt, RetryPolicy};
pub use sled_store::SledStore;
pub use store::{
    ChangeOutcome, ConversationState, DurableEvent, MAX_PENDING_PER_MESSAGE, MessageRevision,
    OutboxItem, SCHEMA_VERSION, SendStatus, Store, SyncCursor,
};
pub use timeline::TimelinePage;
