//! The `im-vendor-sim` binary: accounts from flags and from a file, and fault flags that
//! take effect, checked through the reference adapter over loopback.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::{
    Capability, Credentials, EditPermission, LifecyclePolicy, ServiceError, Token, UserId, Vendor,
};

/// Kills the server process however the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on an ephemeral port and reads the address it prints.
async fn start(args: &[&str]) -> (Server, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-vendor-sim"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn im-vendor-sim");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (server, addr)
}

fn creds(user: &str, token: &str) -> Credentials {
    Credentials {
        user: UserId::new(user),
        token: Token::new(token),
    }
}

#[tokio::test]
async fn accounts_from_flags_and_file_log_in() {
    let dir = std::env::temp_dir().join(format!("im-vendor-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.txt");
    std::fs::write(&file, "# test accounts\nbob:bob-secret\n").unwrap();
    let (_server, addr) = start(&[
        "--user",
        "alice:alice-secret",
        "--users-file",
        file.to_str().unwrap(),
    ])
    .await;
    let vendor = ReferenceVendor::discover(addr, ReferenceConfig::default())
        .await
        .unwrap();
    let alice = vendor.client();
    alice.login(&creds("alice", "alice-secret")).await.unwrap();
    let bob = vendor.client();
    bob.login(&creds("bob", "bob-secret")).await.unwrap();
    assert!(matches!(
        vendor.client().login(&creds("bob", "nope")).await,
        Err(ServiceError::AuthFailed(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn fault_flags_take_effect() {
    let (_server, addr) = start(&[
        "--user",
        "alice:s",
        "--drop-after-frames",
        "3",
        "--seed",
        "7",
    ])
    .await;
    let vendor = ReferenceVendor::discover(addr, ReferenceConfig::default())
        .await
        .unwrap();
    let alice = vendor.client();
    alice.login(&creds("alice", "s")).await.unwrap(); // frame 1
    alice.ping().await.unwrap(); // frame 2
    alice.ping().await.unwrap(); // frame 3
    assert!(matches!(
        alice.ping().await,
        Err(ServiceError::ConnectionLost(_))
    ));
}

#[tokio::test]
async fn fail_next_flag_fails_requests_with_the_chosen_class() {
    let (_server, addr) = start(&["--user", "alice:s", "--fail-next", "ping:2:rate-limited"]).await;
    let vendor = ReferenceVendor::discover(addr, ReferenceConfig::default())
        .await
        .unwrap();
    let alice = vendor.client();
    alice.login(&creds("alice", "s")).await.unwrap();
    for _ in 0..2 {
        assert!(matches!(
            alice.ping().await,
            Err(ServiceError::RateLimited { .. })
        ));
    }
    alice.ping().await.unwrap();
}

/// The lifecycle flags become the rules clients discover (0 seconds: no window), and with
/// `--multi-device` a second login of a user keeps the first; without the flags the rules
/// are the contract's defaults and a second login kicks.
#[tokio::test]
async fn lifecycle_and_multi_device_flags_take_effect() {
    let (_server, addr) = start(&[
        "--user",
        "alice:s",
        "--multi-device",
        "--recall-window-secs",
        "0",
        "--edit-window-secs",
        "30",
        "--edit-by",
        "any",
    ])
    .await;
    let vendor = ReferenceVendor::discover(addr, ReferenceConfig::default())
        .await
        .unwrap();
    assert_eq!(
        vendor.lifecycle(),
        &LifecyclePolicy {
            recall_window: None,
            edit_window: Some(std::time::Duration::from_secs(30)),
            edit_permission: EditPermission::AnyMember,
        }
    );
    let caps = vendor.client().capabilities().clone();
    assert!(
        caps.supports(Capability::MultiDevice) && !caps.supports(Capability::KickOnSecondLogin)
    );
    let phone = vendor.client();
    phone.login(&creds("alice", "s")).await.unwrap();
    let desk = vendor.client();
    desk.login(&creds("alice", "s")).await.unwrap();
    phone
        .ping()
        .await
        .expect("the first device stays logged in");
    desk.ping().await.unwrap();

    let (_server, addr) = start(&["--user", "alice:s"]).await;
    let vendor = ReferenceVendor::discover(addr, ReferenceConfig::default())
        .await
        .unwrap();
    assert_eq!(vendor.lifecycle(), &LifecyclePolicy::default());
    let caps = vendor.client().capabilities().clone();
    assert!(
        caps.supports(Capability::KickOnSecondLogin) && !caps.supports(Capability::MultiDevice)
    );
}

#[test]
fn an_unknown_edit_permission_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_im-vendor-sim"))
        .args(["--listen", "127.0.0.1:0", "--edit-by", "nobody"])
        .stdin(Stdio::null())
        .output()
        .expect("run im-vendor-sim");
    assert!(!out.status.success(), "--edit-by nobody must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sender") && stderr.contains("any"),
        "the refusal lists the values: {stderr}"
    );
}

/// Two accounts given the same token: refused at start with a clear message, instead of
/// the second silently taking the token and locking the first out.
#[test]
fn duplicate_tokens_are_refused_at_start() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-vendor-sim"))
        .args(["--listen", "127.0.0.1:0"])
        .args(["--user", "alice:secret", "--user", "bob:secret"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run im-vendor-sim");
    // A server that accepted the accounts keeps running: give it a deadline, not a hang.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("duplicate tokens were accepted: the server started and kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!status.success(), "duplicate tokens must not start");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(
        stderr.contains("token already belongs to user alice"),
        "the refusal names the holder: {stderr}"
    );
}

/// Every `im-vendor-sim` command line README.md shows starts the server with the accounts
/// it names, and each of them logs in with its token.
#[tokio::test]
async fn the_readme_command_lines_do_what_the_readme_says() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let marker = "cargo run -p im-vendor-sim --";
    let lines: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.split_once(marker).map(|(_, args)| args))
        .collect();
    assert!(
        !lines.is_empty(),
        "README.md shows an im-vendor-sim command"
    );
    for line in lines {
        // The shell comment after the command is not part of it.
        let args: Vec<&str> = line
            .split('#')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let accounts: Vec<(&str, &str)> = args
            .windows(2)
            .filter(|w| w[0] == "--user")
            .map(|w| w[1].split_once(':').expect("user:token"))
            .collect();
        assert!(!accounts.is_empty(), "the README command names accounts");
        let (_server, addr) = start(&args).await;
        let vendor = ReferenceVendor::discover(addr, ReferenceConfig::default())
            .await
            .unwrap();
        for (user, token) in accounts {
            let client = vendor.client();
            client
                .login(&creds(user, token))
                .await
                .unwrap_or_else(|e| panic!("README account {user} cannot log in: {e}"));
        }
    }
}
