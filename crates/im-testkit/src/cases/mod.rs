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
mod lifecycle;
mod network;
mod qc;
mod resilience;
mod service;

pub use gate::{GateCall, GatedVendor};
pub use service::run_contract_case;

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
    /// The vendor delivers signed message callbacks the harness can point at a company
    /// archive (the reference server, and the memory vendor through the same dispatcher;
    /// Prosody has no callbacks).
    VendorCallbacks,
    /// The harness puts a [`FaultProxy`](crate::FaultProxy) between every client and the
    /// vendor ([`crate::harness::VendorHarness::network`]): every vendor reached over a
    /// network; the in-process memory vendor has none.
    NetworkFaults,
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
    /// A real ejabberd on `IM_EJABBERD_ADDR`, started by `tests/ejabberd/ejabberd.sh`: the
    /// same XMPP adapter as [`Target::Xmpp`] on a second server.
    XmppEjabberd,
    /// A real Synapse (Matrix) at `IM_SYNAPSE_URL`, started by `tests/synapse/synapse.sh`.
    Matrix,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 5] = [
        Target::Memory,
        Target::Reference,
        Target::Xmpp,
        Target::XmppEjabberd,
        Target::Matrix,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Memory => "memory",
            Target::Reference => "reference",
            Target::Xmpp => "xmpp",
            Target::XmppEjabberd => "xmpp-ejabberd",
            Target::Matrix => "matrix",
        }
    }

    /// The XMPP server of an XMPP target (`None` for the others).
    pub fn xmpp_server(self) -> Option<&'static crate::harness::XmppServer> {
        match self {
            Target::Xmpp => Some(&crate::harness::PROSODY),
            Target::XmppEjabberd => Some(&crate::harness::EJABBERD),
            Target::Memory | Target::Reference | Target::Matrix => None,
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
            // A target offers what any of its configurations declares: the default one
            // (a second login kicks the first) and the multi-device one the LIFE cases
            // start with `ContractConfig::multi_device`.
            Target::Memory | Target::Reference => {
                use im_service::memory::{MemoryVendor, MemoryVendorConfig};
                let single = MemoryVendor::new(MemoryVendorConfig::default());
                let multi = MemoryVendor::new(MemoryVendorConfig {
                    multi_device: true,
                    ..MemoryVendorConfig::default()
                });
                multi
                    .capabilities()
                    .supported()
                    .fold(single.capabilities().clone(), |caps, c| caps.with(c))
            }
            Target::Xmpp | Target::XmppEjabberd => {
                // The deployment's configured features (`XmppServer::features`), which
                // every login checks against the server's disco#info.
                let server = self.xmpp_server().unwrap_or(&crate::harness::PROSODY);
                let mut config = server.xmpp_config();
                config.max_message_bytes =
                    crate::harness::ContractConfig::default().max_message_bytes;
                // As for the other targets: what any configuration declares (one resource
                // that a second login kicks, or a resource per device with carbons).
                let single = im_service::xmpp::XmppVendor::new(config.clone());
                let multi = im_service::xmpp::XmppVendor::new(config.with_multi_device());
                multi
                    .capabilities()
                    .supported()
                    .fold(single.capabilities().clone(), |caps, c| caps.with(c))
            }
            Target::Matrix => {
                // What any configuration declares: one shared device, or a device per
                // handle (`MultiDevice`).
                use crate::harness::{ContractConfig, MatrixHarness};
                let url = crate::harness::synapse_url();
                let single = ContractConfig::default();
                let multi = ContractConfig {
                    multi_device: true,
                    ..ContractConfig::default()
                };
                let vendor = |c: &ContractConfig| {
                    im_service::matrix::MatrixVendor::new(MatrixHarness::matrix_config(
                        c, &url, "im-",
                    ))
                };
                vendor(&multi)
                    .capabilities()
                    .supported()
                    .fold(vendor(&single).capabilities().clone(), |caps, c| {
                        caps.with(c)
                    })
            }
        }
    }

    /// Whether the target's server is up, so `--vendor all` can run it; `Err` says why not
    /// and how to start it. The in-process targets are always up.
    pub fn up(self) -> Result<(), String> {
        match self {
            Target::Memory | Target::Reference => Ok(()),
            Target::Matrix => {
                if crate::harness::synapse_running() {
                    Ok(())
                } else {
                    Err(format!(
                        "no Synapse at {}: `tests/synapse/synapse.sh start`, then set IM_SYNAPSE_URL",
                        crate::harness::synapse_url()
                    ))
                }
            }
            Target::Xmpp | Target::XmppEjabberd => {
                let Some(server) = self.xmpp_server() else {
                    return Ok(());
                };
                if server.running() {
                    Ok(())
                } else {
                    Err(format!(
                        "no {} at {}: `{} start`, then set {}",
                        server.name,
                        server.addr(),
                        server.script,
                        server.addr_var
                    ))
                }
            }
        }
    }

    /// Whether CI requires the target (its `IM_REQUIRE_*` variable is set): then a target
    /// that is not up fails the run instead of being skipped.
    pub fn required(self) -> bool {
        match self {
            Target::Memory | Target::Reference => true,
            Target::Matrix => std::env::var_os("IM_REQUIRE_SYNAPSE").is_some(),
            Target::Xmpp | Target::XmppEjabberd => self
                .xmpp_server()
                .is_some_and(|s| std::env::var_os(s.require_var).is_some()),
        }
    }

    /// What the target's test environment can do.
    pub fn harness(self) -> &'static [HarnessNeed] {
        match self {
            Target::Memory => &[HarnessNeed::VendorClock, HarnessNeed::VendorCallbacks],
            Target::Reference => &[
                HarnessNeed::VendorClock,
                HarnessNeed::VendorProcess,
                HarnessNeed::VendorCallbacks,
                HarnessNeed::NetworkFaults,
            ],
            Target::Xmpp | Target::XmppEjabberd => {
                &[HarnessNeed::VendorProcess, HarnessNeed::NetworkFaults]
            }
            Target::Matrix => &[HarnessNeed::VendorProcess],
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
            $crate::cases::Target::XmppEjabberd => {
                ($f)($crate::harness::XmppHarness::start_on(
                    &$crate::harness::EJABBERD,
                    $config,
                ))
                .await
            }
            $crate::cases::Target::Matrix => {
                ($f)($crate::harness::MatrixHarness::start($config)).await
            }
        }
    };
}

/// One of the ten failure classes other IM SDKs shipped and this library guards against
/// (`docs/failure-classes.md` describes each, with where it was seen). The number is stable:
/// reports and `docs/test-cases.md` print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// 1. Duplicate after a lost ack: a resend with the same client id must be stored once
    ///    and count as sent.
    DuplicateAfterLostAck = 1,
    /// 2. Loss through a sequence gap: the sync cursor never moves past a hole; a detected
    ///    gap is always fetched.
    SequenceGap = 2,
    /// 3. Send-queue order: nothing overtakes a message that failed transiently.
    SendQueueOrder = 3,
    /// 4. Stuck "sending": after a crash or an offline spell every message reaches Sent or
    ///    Failed within a deadline.
    StuckSending = 4,
    /// 5. Local echo reconciled: a sent message shows exactly once, before and after its
    ///    server copy comes back.
    LocalEcho = 5,
    /// 6. Unread counts that drift: unread is what came after my read position and I did
    ///    not send; never negative, 0 after mark-read.
    UnreadDrift = 6,
    /// 7. Reconnect storms and re-auth: spread-out reconnects, one token refresh per expiry,
    ///    never an expired token reused.
    ReconnectStorm = 7,
    /// 8. Resume after the server forgot the session: a full resync without an empty-screen
    ///    flash and without a skipped range.
    ForgottenSession = 8,
    /// 9. Store corruption and migration: the cache rebuilds, pending sends survive, a
    ///    partial migration does not bump the schema version.
    StoreCorruption = 9,
    /// 10. Lagging subscribers and clock skew: an explicit lagged signal, one consistent
    ///     conversation order, a fast client clock reorders nothing.
    LagAndClockSkew = 10,
}

impl FailureClass {
    /// Every class, in number order.
    pub const ALL: [FailureClass; 10] = [
        FailureClass::DuplicateAfterLostAck,
        FailureClass::SequenceGap,
        FailureClass::SendQueueOrder,
        FailureClass::StuckSending,
        FailureClass::LocalEcho,
        FailureClass::UnreadDrift,
        FailureClass::ReconnectStorm,
        FailureClass::ForgottenSession,
        FailureClass::StoreCorruption,
        FailureClass::LagAndClockSkew,
    ];

    /// The class's number (1–10), as `docs/failure-classes.md` numbers them.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The class's name, as `docs/failure-classes.md` titles it.
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::DuplicateAfterLostAck => "duplicate after a lost ack",
            FailureClass::SequenceGap => "loss through a sequence gap",
            FailureClass::SendQueueOrder => "send-queue order",
            FailureClass::StuckSending => "stuck \"sending\"",
            FailureClass::LocalEcho => "local echo reconciled",
            FailureClass::UnreadDrift => "unread counts that drift",
            FailureClass::ReconnectStorm => "reconnect storms and re-auth",
            FailureClass::ForgottenSession => "resume after the server forgot the session",
            FailureClass::StoreCorruption => "store corruption and migration",
            FailureClass::LagAndClockSkew => "lagging subscribers and clock skew",
        }
    }
}

impl std::fmt::Display for FailureClass {
    /// `3 (send-queue order)`: the number first, so sorting and grepping by number work.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.number(), self.name())
    }
}

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
    /// The failure class whose return it would catch, if any.
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
        .chain(lifecycle::cases())
        .chain(qc::cases())
        .chain(network::cases())
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
            // The number only: the table stays narrow; docs/failure-classes.md names them.
            c.guards.map(|g| g.number().to_string()).unwrap_or_default()
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
