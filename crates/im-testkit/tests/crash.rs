//! The crash harness (`im_testkit::crash`) in the test tier: a sender and a receiver in
//! child processes (`im-crash-client`) against a vendor in another process, killed with
//! SIGKILL at seeded points and restarted on the same stores; 0 lost, 0 duplicated, 0 stuck.
//!
//! * the reference campaign (`im-vendor-sim`): 200 kill points, always, on the default
//!   `LogStore`, and 50 more on `SledStore`, the store kept for clients too large for memory;
//! * the Prosody campaign: on the server at `IM_PROSODY_ADDR` (default 127.0.0.1:5222);
//!   skipped with a message when none answers, a failure instead under `IM_REQUIRE_PROSODY`.
//!
//! The seed is `IM_CRASH_SEED` when set, else random; a failure prints it, and
//! `IM_CRASH_SEED=<seed> cargo test -p im-testkit --test crash` replays it. The summary line
//! is written to the terminal even when the test harness captures output. A longer soak:
//! `cargo xtask crash --runs N`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use im_testkit::crash::{
    Account, CrashConfig, CrashStoreKind, CrashSummary, run_campaign, seed_from_env,
};
use im_testkit::harness::{XMPP_DOMAIN, prosody_addr, register_xmpp_user};

/// Kill points of the reference campaign (the CI figure).
const REFERENCE_KILL_POINTS: u32 = 200;
/// Kill points of the reference campaign on `SledStore`.
const SLED_KILL_POINTS: u32 = 50;
/// Kill points of the Prosody campaign (XMPP logins are slower).
const PROSODY_KILL_POINTS: u32 = 100;

/// One campaign at a time: two would compete for the same cores and blur the timings the
/// kill triggers aim at.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn client() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_im-crash-client"))
}

/// Prints past the test harness's capture: the summary line belongs in CI's log.
fn report(summary: &CrashSummary) {
    let mut err = std::io::stderr();
    let _ = writeln!(err, "{summary}");
    let _ = writeln!(err, "  kills by phase: {}", summary.kills_line());
}

fn run(config: CrashConfig) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let _ = writeln!(
        std::io::stderr(),
        "crash harness ({}, {} store): {} kill points, seed {} (replay: IM_CRASH_SEED={})",
        config.vendor.name(),
        config.store.name(),
        config.kill_points,
        config.seed,
        config.seed
    );
    match run_campaign(&config) {
        Ok(summary) => {
            report(&summary);
            assert_eq!(summary.kill_points, config.kill_points);
            assert!(summary.verdict.passed());
            assert!(
                summary.verdict.confirmed > 0,
                "the campaign confirmed no send: {summary}"
            );
        }
        // The error names the seed, every broken rule and where the ledgers are.
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn crash_campaign_on_the_reference_vendor() {
    run(CrashConfig::reference(
        im_testkit::vendor_sim_bin().expect("the im-vendor-sim binary"),
        client(),
        REFERENCE_KILL_POINTS,
        seed_from_env(),
    ));
}

#[test]
fn crash_campaign_on_the_reference_vendor_with_sled_stores() {
    let mut config = CrashConfig::reference(
        im_testkit::vendor_sim_bin().expect("the im-vendor-sim binary"),
        client(),
        SLED_KILL_POINTS,
        seed_from_env(),
    );
    config.store = CrashStoreKind::Sled;
    run(config);
}

#[test]
fn crash_campaign_on_prosody() {
    let addr = prosody_addr();
    if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        // CI starts one and sets IM_REQUIRE_PROSODY: there, a missing server is a failure.
        if std::env::var_os("IM_REQUIRE_PROSODY").is_some() {
            panic!("no Prosody at {addr} ({e}) although IM_REQUIRE_PROSODY is set");
        }
        eprintln!(
            "SKIPPED: no Prosody at {addr} ({e}); start one with `tests/prosody/prosody.sh start`"
        );
        return;
    }
    let suffix = format!("{:08x}", rand::random::<u32>());
    let sender = Account::new(format!("crash-a-{suffix}"), format!("pw-a-{suffix}"));
    let receiver = Account::new(format!("crash-b-{suffix}"), format!("pw-b-{suffix}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for a in [&sender, &receiver] {
        rt.block_on(register_xmpp_user(&a.user, &a.token, None))
            .unwrap();
    }
    run(CrashConfig::xmpp(
        addr,
        XMPP_DOMAIN,
        sender,
        receiver,
        client(),
        PROSODY_KILL_POINTS,
        seed_from_env(),
    ));
}
