//! `im-archive`: the backend architecture layer — the company's own message history.
//!
//! Vendors keep history for a limited time. The archive receives the vendor's signed
//! `message.stored` callbacks ([`im_service::webhook`]), keeps every message in its own
//! store (sled by default, behind the [`ArchiveStore`] trait; PostgreSQL with the
//! `postgres` feature, for several archive processes on one database), and serves history to clients
//! by conversation and time range or cursor, newest first, to users who belong to the
//! conversation. `message.changed` callbacks (recall, edit, delete for me) are kept too, and
//! history shows each message in its current state (the rules: [`store`]'s module doc). `im-arch`'s `ArchiveHistory` reads it, so the client's `Middle` and `Old`
//! history windows reach past the vendor's retention.
//!
//! It depends on `im-service` only (the model and the callback signatures), never on a
//! vendor adapter: any vendor that sends signed callbacks can feed it.
//!
//! The binary `im-archive` runs it (`cargo run -p im-archive -- --help`).

pub mod error;
#[cfg(feature = "postgres")]
pub mod pg_store;
pub mod server;
pub mod sled_store;
pub mod store;

pub use error::ArchiveError;
#[cfg(feature = "postgres")]
pub use pg_store::{PG_SCHEMA_VERSION, PgArchive, PgConfig};
pub use server::{ArchiveConfig, ArchiveServer, CallbackOutcome, ErrorBody};
pub use sled_store::SledArchive;
pub use store::{
    ArchiveStore, ChangeStored, MemoryArchive, PageQuery, Position, Stored, StoredPage,
};
