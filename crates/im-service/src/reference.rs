//! Adapter for the reference vendor's TCP protocol (the demo environment in `im-testkit`):
//! length-delimited frames through the workspace codec, one TCP connection per login,
//! protocol version 2 (the message lifecycle; version 1 is refused with a clear error).

pub mod client;
pub mod protocol;

pub use client::{ReferenceClient, ReferenceConfig, ReferenceVendor};
pub use protocol::{ClientFrame, PROTOCOL_VERSION, Reply, Request, ServerFrame, WireCodec};
