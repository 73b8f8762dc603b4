//! Runs the demo binary in scripted mode and checks its JSON summary: every message sent was
//! received once, the outage was detected and resolved, the response rate QC measured
//! matches the script, every wrong reply was recalled and reached its tenant once as
//! recalled, every reply a tenant read came back as "seen" once, and the housekeeper on two
//! devices saw each own reply once on the other device with reads kept in step. The same
//! day runs on a real Prosody (`--vendor xmpp`) when one answers at `IM_PROSODY_ADDR`
//! (default 127.0.0.1:5222) and on a real Synapse (`--vendor matrix`) when one answers at
//! `IM_SYNAPSE_URL` (default http://127.0.0.1:8008), skipped otherwise;
//! `IM_REQUIRE_PROSODY` / `IM_REQUIRE_SYNAPSE` (set by `.ci/run`) turn a skip into a
//! failure, as for the adapters' own tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn run(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_im-business-demo"))
        .args(["--json", "--speed", "50"])
        .args(args)
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A day that ran but failed a check printed its summary: name the check that failed.
    if !out.status.success()
        && let Ok(s) = serde_json::from_str::<Value>(&stdout)
    {
        check(&s, s["vendor"].as_str().unwrap_or_default());
    }
    assert!(
        out.status.success(),
        "demo failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn check(s: &Value, vendor: &str) {
    assert_eq!(s["vendor"], vendor);
    let sent = s["messages_sent"].as_u64().unwrap();
    assert!(sent > 10, "a day of conversations: {s}");
    assert_eq!(s["messages_received"].as_u64(), Some(sent), "{s}");
    assert_eq!(s["missing"], 0, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    let outage = &s["outage"];
    assert_eq!(outage["injected"], true);
    assert_eq!(outage["detected"], true, "{s}");
    assert_eq!(outage["alert_fired"], true, "{s}");
    assert_eq!(outage["resolved"], true, "{s}");
    assert!(s["alerts_fired"]["vendor_down"].as_u64().unwrap() >= 1);
    let questions = s["questions"].as_u64().unwrap();
    let in_time = s["expected_answered_in_time"].as_u64().unwrap();
    assert!(
        in_time < questions,
        "the script has a busy housekeeper: {s}"
    );
    let expected = in_time as f64 / questions as f64;
    let measured = s["measured_response_rate"].as_f64().unwrap();
    assert!(
        (measured - expected).abs() < 1e-9,
        "measured {measured}, script {expected}"
    );
    assert_eq!(s["escalations"].as_u64(), Some(questions - in_time), "{s}");
    check_lifecycle(s);
    assert_eq!(s["ok"], true);
}

/// The message lifecycle at the desk (issue 20).
fn check_lifecycle(s: &Value) {
    let r = &s["recalls"];
    let done = r["done"].as_u64().unwrap();
    assert!(done >= 1, "a wrong quick reply was recalled: {s}");
    assert_eq!(r["failed"], 0, "recalls refused: {s}");
    assert_eq!(
        r["reached_tenant_once"].as_u64(),
        Some(done),
        "every recall reached its tenant once: {s}"
    );
    assert_eq!(
        r["shown_as_recalled"].as_u64(),
        Some(done),
        "the tenant's timeline shows each wrong reply as recalled, never its text: {s}"
    );
    let seen = &s["seen"];
    let read = seen["replies_read"].as_u64().unwrap();
    assert!(read >= s["questions"].as_u64().unwrap(), "{s}");
    assert_eq!(
        seen["reported_once"].as_u64(),
        Some(read),
        "every reply a tenant read was reported seen once: {s}"
    );
    let per_keeper: u64 = seen["by_housekeeper"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_keeper, read, "{s}");
    let d = &s["two_devices"];
    assert_eq!(d["housekeeper"], "keeper-1");
    let phone = d["replies_from_second"].as_u64().unwrap();
    assert!(phone >= 1, "replies went from the second device: {s}");
    assert_eq!(
        d["shown_once_on_first"].as_u64(),
        Some(phone),
        "each reply from the phone shows once on the desk as the housekeeper's own: {s}"
    );
    assert_eq!(
        d["shown_once_on_second"], d["replies_from_first"],
        "and the other way round: {s}"
    );
    assert_eq!(
        d["own_reply_left_unread"], 0,
        "an own reply never shows unread: {s}"
    );
    assert!(d["reads"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(
        d["reads_synced"], d["reads"],
        "a read on one device clears unread on the other: {s}"
    );
}

#[test]
fn the_scripted_day_on_the_reference_vendor_with_the_archive() {
    let s = run(&["--users", "4", "--seed", "3"]);
    check(&s, "reference");
    // Every message reached the company archive through the vendor's callbacks.
    assert_eq!(s["archived"], s["messages_sent"]);
    assert_eq!(
        s["not_applicable"],
        serde_json::json!([]),
        "every check applies: {s}"
    );
    assert!(
        s["outage"]["proxy"].is_null(),
        "the vendor's own outage: {s}"
    );
    assert_eq!(s["housekeepers"], 2);
}

#[test]
fn the_scripted_day_on_the_in_process_vendor() {
    let s = run(&["--vendor", "memory", "--users", "3", "--seed", "11"]);
    check(&s, "memory");
    assert!(s["archived"].is_null(), "no archive without callbacks");
    assert_eq!(
        s["not_applicable"][0]["check"], "archived",
        "and said so: {s}"
    );
}

#[test]
fn a_real_vendor_without_its_server_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_im-business-demo"))
        .args(["--vendor", "xmpp", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--vendor xmpp needs --addr"),
        "names the missing flag: {stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_im-business-demo"))
        .args(["--vendor", "matrix", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--vendor matrix needs --url"),
        "names the missing flag: {stderr}"
    );
}

/// `host:port` of a test server from `var` (else `default`) when one answers there; `None`
/// with a note when none does, a failure when `require` is set (as `.ci/run` does). The
/// demo does not depend on im-testkit, whose gates (`prosody_or_skip`, the Synapse one)
/// are the same.
fn server(var: &str, default: &str, require: &str, start: &str) -> Option<String> {
    let addr = std::env::var(var).unwrap_or_else(|_| default.into());
    let hostport = addr.strip_prefix("http://").unwrap_or(&addr);
    let parsed: std::net::SocketAddr = hostport
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|_| panic!("{var}={addr:?} is not host:port"));
    match std::net::TcpStream::connect_timeout(&parsed, std::time::Duration::from_millis(500)) {
        Ok(_) => Some(addr),
        Err(e) if std::env::var_os(require).is_some() => {
            panic!("no server at {addr} ({e}) although {require} is set")
        }
        Err(e) => {
            eprintln!("SKIPPED: no server at {addr} ({e}); start one with `{start}`");
            None
        }
    }
}

/// The checks of a day on a real server `vendor`: the same as on the reference vendor
/// (account names carry a per-run prefix), the outage made by the fault proxy in front of
/// the server, business time mapped from the server's clock, and the archive, which only
/// the reference vendor's callbacks feed, reported as not applicable with its reason.
fn check_real(s: &Value, vendor: &str) {
    let keeper = s["two_devices"]["housekeeper"].as_str().unwrap().to_owned();
    assert!(keeper.ends_with("-keeper-1"), "{s}");
    let mut renamed = s.clone();
    renamed["two_devices"]["housekeeper"] = "keeper-1".into();
    check(&renamed, vendor);
    assert_eq!(s["housekeepers"], 2);
    assert!(
        s["outage"]["method"]
            .as_str()
            .unwrap()
            .contains("fault proxy"),
        "the outage is the proxy's: {s}"
    );
    // Every device's connection (4 tenants, 2 housekeepers, a second device) went through
    // the proxy and was cut; their reconnects were refused until it healed.
    let proxy = &s["outage"]["proxy"];
    assert!(proxy["dropped"].as_u64().unwrap() >= 7, "{s}");
    assert!(proxy["refused"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        s["business_time"].as_str().unwrap().contains("mapped"),
        "{s}"
    );
    assert!(s["archived"].is_null(), "no archive without callbacks: {s}");
    let na = s["not_applicable"].as_array().unwrap();
    assert_eq!(na.len(), 1, "only the archive cannot apply: {s}");
    assert_eq!(na[0]["check"], "archived");
    assert!(na[0]["reason"].as_str().unwrap().contains("callbacks"));
}

/// The same day on a real Prosody (`IM_PROSODY_ADDR`, default 127.0.0.1:5222; accounts
/// made by `tests/prosody/prosody.sh register` on the server of `IM_PROSODY_DIR`).
#[test]
fn the_scripted_day_on_a_real_prosody() {
    let Some(addr) = server(
        "IM_PROSODY_ADDR",
        "127.0.0.1:5222",
        "IM_REQUIRE_PROSODY",
        "tests/prosody/prosody.sh start",
    ) else {
        return;
    };
    let s = run(&[
        "--vendor", "xmpp", "--addr", &addr, "--users", "4", "--seed", "3",
    ]);
    check_real(&s, "xmpp");
}

/// The same day on a real Synapse (`IM_SYNAPSE_URL`, default http://127.0.0.1:8008;
/// accounts made by `tests/synapse/synapse.sh register` on the server of
/// `IM_SYNAPSE_DIR`).
#[test]
fn the_scripted_day_on_a_real_synapse() {
    let Some(url) = server(
        "IM_SYNAPSE_URL",
        "http://127.0.0.1:8008",
        "IM_REQUIRE_SYNAPSE",
        "tests/synapse/synapse.sh start",
    ) else {
        return;
    };
    let s = run(&[
        "--vendor", "matrix", "--url", &url, "--users", "4", "--seed", "3",
    ]);
    check_real(&s, "matrix");
}

#[test]
fn a_person_answers_as_the_first_housekeeper() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-business-demo"))
        .args([
            "--json",
            "--speed",
            "50",
            "--users",
            "3",
            "--seed",
            "5",
            "--interactive",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        // Two typed answers, then Enter (the quick reply) for the rest, then end of input.
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"On my way up now.\nI will call the plumber.\n\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_str(&stdout).unwrap();
    check(&s, "reference");
    assert_eq!(s["typed_replies"], 2, "{s}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("(you)"));
}
