//! The standardized case library: every case is data (a stable id, title, category, layer,
//! the vendor capabilities it needs, steps, expected result, the failure class it guards)
//! plus code (an async scenario with assertions) that runs against a named [`Target`].
//!
//! A case whose capabilities the target lacks is reported "not applicable" with the missing
//! capabilities, never passed silently. Cases fail by panicking (assertions); the runner
//! ([`crate::runner`]) isolates each in its own task and reports the panic message.

use futures::future::BoxFuture;
use im_service::{Capabilities, Capability};
use serde::Serialize;

mod arch;
mod bad_input;
mod crash;
mod gate;
mod qc;
mod resilience;
mod service;

pub use gate::{GateCall, GatedVendor};

/// How important a case is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Must pass for any vendor and any release.
    Essential,
    /// Deeper checks, run on demand.
    Extended,
}

/// The layer a case exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The vendor contract (`im-service`).
    Service,
    /// The client architecture layer (`im-arch`).
    Arch,
    /// Quality control (`im-qc`).
    Qc,
}

/// What a case needs from the test environment rather than from the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HarnessNeed {
    /// The harness moves the vendor's clock ([`crate::harness::VendorHarness::advance`]):
    /// simulated vendors can, a real server cannot.
    VendorClock,
    /// The vendor runs in a process of its own that outlives a client killed with SIGKILL
    /// (`im-vendor-sim`, Prosody); the in-process memory vendor dies with its client.
    VendorProcess,
}

/// A vendor the suite can run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The in-process `MemoryVendor`.
    Memory,
    /// The reference vendor over TCP (the demo environment), started by the suite.
    Reference,
    /// A real Prosody (XMPP) on `IM_PROSODY_ADDR`, started by `tests/prosody/prosody.sh`.
    Xmpp,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 3] = [Target::Memory, Target::Reference, Target::Xmpp];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Memory => "memory",
            Target::Reference => "reference",
            Target::Xmpp => "xmpp",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// What the target's vendor declares.
    pub fn capabilities(self) -> Capabilities {
        match self {
            // The reference server's storage engine is the memory vendor: same declaration.
            Target::Memory | Target::Reference => {
                im_service::memory::MemoryVendor::new(Default::default())
                    .capabilities()
                    .clone()
            }
            Target::Xmpp => {
                let mut config = im_service::xmpp::XmppConfig::new(
                    crate::harness::prosody_addr(),
                    crate::harness::XMPP_DOMAIN,
                );
                config.max_message_bytes =
                    crate::harness::ContractConfig::default().max_message_bytes;
                im_service::xmpp::XmppVendor::new(config)
                    .capabilities()
                    .clone()
            }
        }
    }

    /// What the target's test environment can do.
    pub fn harness(self) -> &'static [HarnessNeed] {
        match self {
            Target::Memory => &[HarnessNeed::VendorClock],
            Target::Reference => &[HarnessNeed::VendorClock, HarnessNeed::VendorProcess],
            Target::Xmpp => &[HarnessNeed::VendorProcess],
        }
    }
}

/// Runs generic harness code against a target: `on_target!(target, |h| async { ... })`
/// builds the target's harness with the default contract settings and runs the closure.
#[macro_export]
macro_rules! on_target {
    ($target:expr, $f:expr) => {
        $crate::on_target!($target, $crate::harness::ContractConfig::default(), $f)
    };
    ($target:expr, $config:expr, $f:expr) => {
        match $target {
            $crate::cases::Target::Memory => {
                ($f)($crate::harness::MemoryHarness::new($config)).await
            }
            $crate::cases::Target::Reference => {
                ($f)($crate::harness::ReferenceHarness::start($config).await).await
            }
            $crate::cases::Target::Xmpp => ($f)($crate::harness::XmppHarness::start($config)).await,
        }
    };
}

/// A failure class from `BRIEF.md` ("Failure classes … we test explicitly") a case guards.
pub type FailureClass = u8;

/// One case of the library.
#[derive(Clone, Copy)]
pub struct Case {
    /// Stable id, e.g. `SYNC-003`: never reused, never renumbered.
    pub id: &'static str,
    /// One line.
    pub title: &'static str,
    /// Essential or extended.
    pub category: Category,
    /// Which layer it exercises.
    pub layer: Layer,
    /// Vendor capabilities it needs; without them it is "not applicable".
    pub needs: &'static [Capability],
    /// What it needs from the test environment; without it, "not applicable" too.
    pub harness: &'static [HarnessNeed],
    /// What it does.
    pub steps: &'static [&'static str],
    /// What must hold.
    pub expected: &'static str,
    /// The failure class (1–10) whose return it would catch, if any.
    pub guards: Option<FailureClass>,
    /// The scenario.
    pub run: fn(Target) -> BoxFuture<'static, ()>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Case {
    /// What `target` lacks for this case, by name: vendor capabilities, then harness
    /// needs (empty: applicable).
    pub fn missing(&self, target: Target) -> Vec<String> {
        let env = target.harness();
        target
            .capabilities()
            .missing(self.needs)
            .iter()
            .map(|c| format!("{c:?}"))
            .chain(
                self.harness
                    .iter()
                    .filter(|h| !env.contains(h))
                    .map(|h| format!("{h:?}")),
            )
            .collect()
    }
}

/// The whole library, in id order.
pub fn catalogue() -> Vec<Case> {
    let mut all: Vec<Case> = service::cases()
        .into_iter()
        .chain(arch::cases())
        .chain(resilience::cases())
        .chain(bad_input::cases())
        .chain(crash::cases())
        .chain(qc::cases())
        .collect();
    all.sort_by_key(|c| c.id);
    all
}

/// The catalogue as Markdown (`docs/test-cases.md` is this text; a test keeps it current).
pub fn markdown() -> String {
    let mut out = String::from(
        "# Test-case library\n\n\
         Generated by `cargo xtask test-suite --list --markdown` from `crates/im-testkit/src/cases/`;\n\
         a test fails when this file is stale. Run the cases with `cargo xtask test-suite`.\n\n\
         | id | title | category | layer | needs | guards class |\n|---|---|---|---|---|---|\n",
    );
    let cases = catalogue();
    for c in &cases {
        let needs: Vec<String> = c
            .needs
            .iter()
            .map(|n| format!("{n:?}"))
            .chain(c.harness.iter().map(|h| format!("{h:?}")))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {:?} | {:?} | {} | {} |\n",
            c.id,
            c.title,
            c.category,
            c.layer,
            needs.join(", "),
            c.guards.map(|g| g.to_string()).unwrap_or_default()
        ));
    }
    out.push_str("\n## Cases\n");
    for c in &cases {
        out.push_str(&format!("\n### {} — {}\n\nSteps:\n", c.id, c.title));
        for (i, s) in c.steps.iter().enumerate() {
            out.push_str(&format!("{}. {s}\n", i + 1));
        }
        out.push_str(&format!("\nExpected: {}\n", c.expected));
    }
    out
}
