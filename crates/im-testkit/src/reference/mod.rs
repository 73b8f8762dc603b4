//! The reference vendor: a real long-connection IM server (TCP, length-delimited frames
//! through the workspace codec) that behaves like a rented vendor, with fault injection no
//! real vendor offers, and signed message callbacks. Its storage engine is `MemoryVendor`,
//! so the in-process and the networked vendor share one set of semantics.

pub mod callbacks;
mod control;
pub mod faults;
pub mod server;

pub use control::{ControlError, ServerStats, VendorSimControl};
pub use faults::Faults;
pub use server::{LoginRecord, ReferenceServer, ServerConfig};
