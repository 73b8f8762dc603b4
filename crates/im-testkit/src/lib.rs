//! Test tier of im-layers: the vendor contract suite every adapter runs, the harnesses that
//! put a vendor under test (the reference vendor server itself lives in `im-vendor-sim`), and the
//! standardized case library ([`cases`], run by [`runner`] and `cargo xtask test-suite`).
//!
//! Invariant: this crate is a dev-dependency of library crates only; nothing in a library's
//! normal dependency graph names it, and it never depends on the business demo.

pub mod browser;
pub mod cases;
pub mod contract;
pub mod crash;
pub mod faulty;
pub mod harness;
pub mod runner;
pub mod sim;
mod tcp_world;
pub mod vendor_matrix;
pub mod vendor_sim;
pub mod wait;

pub use browser::{Browser, BrowserError, Page};
pub use cases::{GateCall, GatedVendor};
pub use faulty::{FaultyVendor, Hook, PushFaults};
pub use harness::{ContractConfig, MemoryHarness, ReferenceHarness, VendorHarness};
pub use im_vendor_sim::{FaultProxy, ProxyConfig, ProxyError, ProxyStats};
pub use tcp_world::TcpWorld;
pub use vendor_sim::{ControlError, ServerStats, VendorSimControl, vendor_sim_bin};
pub use wait::until;
