//! The demo environment of im-layers: the reference vendor, a real long-connection IM server
//! (TCP, length-delimited frames through the workspace codec) that behaves like a rented
//! vendor, with fault injection no real vendor offers and signed message callbacks, plus its
//! standalone binary `im-vendor-sim`. Its storage engine is `MemoryVendor`, so the in-process
//! and the networked vendor share one set of semantics. Beside it, [`FaultProxy`]: a TCP
//! proxy that injects network faults between any client and any vendor, real ones included.
//!
//! Invariant: the only workspace crate it depends on (normally) is `im-service`, so the
//! business demo can start it without linking the test tier; the test tier (`im-testkit`)
//! and the tests of every layer use it too.

mod callbacks;
mod faults;
mod guard;
mod proxy;
mod server;

pub use callbacks::{CallbackConfig, CallbackDispatcher, CallbackStats, CallbackStatsSnapshot};
pub use faults::Faults;
pub use guard::{FailureBudget, LoginThrottleConfig};
pub use proxy::{FaultProxy, ProxyConfig, ProxyError, ProxyStats};
pub use server::{LOGIN_REFUSED, LoginRecord, ReferenceServer, ServerConfig};
