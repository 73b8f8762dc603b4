//! Crash cases (CRASH): the client killed with SIGKILL at seeded points while its vendor
//! lives on in a process of its own, restarted on the same store, its ledgers checked
//! ([`crate::crash`]). They need the `im-crash-client` binary beside the running one
//! (`cargo build -p im-testkit --bins`) and, for the reference target, `im-vendor-sim`
//! ([`crate::vendor_sim_bin`] builds or finds it).

// A case fails by panicking (the runner reports the message): `expect` is an assertion here.
#![allow(clippy::expect_used)]

use std::path::PathBuf;

use im_service::Capability as C;

use super::{Case, Category, FailureClass, HarnessNeed, Layer, Target};
use crate::crash::{Account, CrashConfig, run_campaign, seed_from_env};
use crate::harness::{MATRIX_SERVER_NAME, MatrixHarness, VendorHarness, XmppHarness};

/// Kill points of one case: enough to land in every phase, small enough for the runner's
/// time limit. The soak is `cargo xtask crash --runs N`.
const KILL_POINTS: u32 = 12;

/// A binary of this package, next to the running executable (or one directory up: test
/// binaries live in `target/<profile>/deps`).
fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let dir = exe.parent().expect("an executable lives in a directory");
    [dir, dir.parent().unwrap_or(dir)]
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found beside {}: build it with `cargo build -p im-testkit --bins`",
                exe.display()
            )
        })
}

/// The campaign for `target`, with fresh accounts where the vendor is shared.
async fn config(target: Target) -> CrashConfig {
    let client = sibling("im-crash-client");
    let seed = seed_from_env();
    match target {
        Target::Reference => CrashConfig::reference(
            crate::vendor_sim_bin().expect("the im-vendor-sim binary"),
            client,
            KILL_POINTS,
            seed,
        ),
        Target::Xmpp | Target::XmppEjabberd => {
            let server = target.xmpp_server().unwrap_or(&crate::harness::PROSODY);
            let h = XmppHarness::start_on(server, Default::default());
            let sender = h.user("crash-sender").await;
            let receiver = h.user("crash-receiver").await;
            let account =
                |c: &im_service::Credentials| Account::new(c.user.as_str(), c.token.expose());
            CrashConfig::xmpp(
                server.addr(),
                server.domain,
                account(&sender),
                account(&receiver),
                client,
                KILL_POINTS,
                seed,
            )
        }
        Target::Memory => unreachable!("CRASH cases need VendorProcess, which memory lacks"),
        Target::Matrix => {
            let h = MatrixHarness::start(Default::default());
            let sender = h.user("crash-sender").await;
            let receiver = h.user("crash-receiver").await;
            let account =
                |c: &im_service::Credentials| Account::new(c.user.as_str(), c.token.expose());
            let url = crate::harness::synapse_url();
            let addr = url
                .strip_prefix("http://")
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("IM_SYNAPSE_URL={url:?} is not http://host:port"));
            CrashConfig::matrix(
                addr,
                MATRIX_SERVER_NAME,
                account(&sender),
                account(&receiver),
                client,
                KILL_POINTS,
                seed,
            )
        }
    }
}

/// Runs a campaign on `target` and fails with the harness's verdict (seed included).
async fn campaign(target: Target) {
    let config = config(target).await;
    let result = tokio::task::spawn_blocking(move || run_campaign(&config))
        .await
        .expect("the campaign thread");
    match result {
        Ok(summary) => {
            assert!(summary.verdict.passed(), "{summary}");
            assert!(
                summary.verdict.confirmed > 0,
                "the campaign confirmed no send: {summary}"
            );
        }
        Err(e) => panic!("{e}"),
    }
}

pub(super) fn cases() -> Vec<Case> {
    vec![Case {
        id: "CRASH-001",
        title: "kill -9 during login, sync, send and ack: nothing lost, nothing twice, nothing stuck",
        category: Category::Essential,
        layer: Layer::Arch,
        needs: &[C::HistoryByTime],
        harness: &[HarnessNeed::VendorProcess],
        steps: &[
            "a sender and a receiver (durable subscription) run as child processes on sled stores",
            "SIGKILL one of them 12 times at seeded points: during login, mid-sync, right after \
             send() returned, between a batch and its ack, right after an ack",
            "restart each on the same store; finally let both run until the outbox is empty",
            "check the ledgers against the vendor's own history",
        ],
        expected: "every send() that returned Ok reaches the receiver's durable subscription \
                   exactly once; positions run without a gap, an acknowledged event is never \
                   handed out again; the outbox ends empty",
        guards: Some(FailureClass::StuckSending),
        run: |t| Box::pin(campaign(t)),
    }]
}
