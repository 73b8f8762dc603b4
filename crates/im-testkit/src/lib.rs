//! Test tier of im-layers: the vendor contract suite every adapter runs, the harnesses that
//! put a vendor under test, the reference vendor server with fault injection, and the
//! standardized case library ([`cases`], run by [`runner`] and `cargo xtask test-suite`).
//!
//! Invariant: this crate is a dev-dependency of library crates only; nothing in a library's
//! normal dependency graph names it, and it never depends on the business demo.

pub mod cases;
pub mod contract;
pub mod crash;
pub mod faulty;
pub mod harness;
pub mod reference;
pub mod runner;
pub mod sim;
mod tcp_world;
pub mod wait;

pub use cases::{GateCall, GatedVendor};
pub use faulty::{FaultyVendor, Hook, PushFaults};
pub use harness::{ContractConfig, MemoryHarness, ReferenceHarness, VendorHarness};
pub use reference::{Faults, ReferenceServer, ServerConfig};
pub use tcp_world::TcpWorld;
pub use wait::until;
