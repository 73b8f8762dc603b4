//! Adapter for the reference vendor's TCP protocol (the demo environment in `im-testkit`):
//! length-delimited frames through the workspace codec, one TCP connection per login.

pub mod client;
pub mod protocol;

pub use client::{ReferenceClient, ReferenceConfig, ReferenceVendor};
pub use protocol::{ClientFrame, Reply, Request, ServerFrame, WireCodec};
