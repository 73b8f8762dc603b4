//! The `im-vendor-sim` binary: accounts from flags and from a file, and fault flags that
//! take effect, checked through the reference adapter over loopback.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::{Credentials, ServiceError, Token, UserId, Vendor};

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
