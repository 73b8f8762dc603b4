//! The reference vendor attacked as an outsider would: idle sockets that never log in,
//! wrong-token floods, probing for account names. Each rule has its test: unauthenticated
//! connections cannot lock logins out and are closed at the login deadline, failed logins
//! are throttled per account and per peer, an unknown user and a wrong token get one
//! answer, and a refused login does no work over stored messages. That every refusal leaves
//! a warning naming the peer and never the token is `strangers_log.rs`'s test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use im_service::memory::MemoryVendorConfig;
use im_service::reference::protocol::{PROTOCOL_VERSION, frame_bytes};
use im_service::reference::{ClientFrame, ServerFrame};
use im_service::{ServiceError, UserId, Vendor};
use im_testkit::contract::text;
use im_vendor_sim::{FailureBudget, LOGIN_REFUSED, LoginThrottleConfig, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod common;
use common::{login, read_frame, server, users, wrong};

/// Moves tokio's clock forward by `by` (paused only for the jump, so real sockets are
/// served in real time before and after).
async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn idle_unauthenticated_sockets_do_not_lock_out_a_login() {
    // Past the connection limit, and past the share of connections waiting to log in.
    for config in [
        ServerConfig {
            max_connections: 8,
            ..Default::default()
        },
        ServerConfig {
            max_unauthenticated: 4,
            ..Default::default()
        },
    ] {
        let (server, vendor) = server(config).await;
        let (a, _, _) = users(&server);
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(TcpStream::connect(server.addr()).await.unwrap());
        }
        assert_eq!(
            login(&vendor, &a).await,
            Ok(()),
            "20 idle sockets locked a login out"
        );
        // The oldest idle socket was closed to make room, with a typed answer.
        assert_eq!(
            read_frame(&mut idle[0]).await,
            Some(ServerFrame::Fatal(ServiceError::Unavailable(
                "too many connections waiting to log in".into()
            )))
        );
        assert_eq!(read_frame(&mut idle[0]).await, None);
    }
}

#[tokio::test]
async fn a_connection_that_does_not_log_in_is_closed_at_the_deadline() {
    let (server, vendor) = server(ServerConfig {
        login_timeout: Duration::from_secs(10),
        ..Default::default()
    })
    .await;
    let (a, _, _) = users(&server);
    let alice = vendor.client();
    alice.login(&a).await.unwrap();
    let mut sock = TcpStream::connect(server.addr()).await.unwrap();
    sock.write_all(
        &frame_bytes(&ClientFrame::HelloV2 {
            version: PROTOCOL_VERSION,
        })
        .unwrap(),
    )
    .await
    .unwrap();
    assert!(matches!(
        read_frame(&mut sock).await,
        Some(ServerFrame::WelcomeV2 { .. })
    ));
    jump(Duration::from_secs(10) + Duration::from_millis(1)).await;
    assert_eq!(
        read_frame(&mut sock).await,
        Some(ServerFrame::Fatal(ServiceError::Timeout(
            Duration::from_secs(10)
        ))),
        "a greeted connection that never logged in outlived the login deadline"
    );
    assert_eq!(read_frame(&mut sock).await, None);
    // The deadline is for logging in only: a logged-in connection is not touched.
    alice.ping().await.unwrap();
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account() {
    let (server, vendor) = server(ServerConfig {
        login_throttle: LoginThrottleConfig {
            per_account: FailureBudget {
                burst: 2,
                refill: Duration::from_secs(60),
            },
            ..LoginThrottleConfig::default()
        },
        ..Default::default()
    })
    .await;
    let (a, b, _) = users(&server);
    for _ in 0..2 {
        assert_eq!(
            login(&vendor, &wrong(&a.user)).await,
            Err(ServiceError::AuthFailed(LOGIN_REFUSED.into()))
        );
    }
    let attempts = server.login_attempts();
    let third = login(&vendor, &wrong(&a.user)).await;
    assert!(
        matches!(third, Err(ServiceError::RateLimited { retry_after })
            if retry_after <= Duration::from_secs(60) && retry_after > Duration::from_secs(50)),
        "the third wrong token in a row is not throttled: {third:?}"
    );
    // Throttled before the credentials are looked at: the right token waits too.
    assert!(matches!(
        login(&vendor, &a).await,
        Err(ServiceError::RateLimited { .. })
    ));
    assert_eq!(
        server.login_attempts(),
        attempts + 2,
        "attempts are counted"
    );
    // Other accounts are not held up.
    assert_eq!(login(&vendor, &b).await, Ok(()));
    jump(Duration::from_secs(60)).await;
    assert_eq!(login(&vendor, &a).await, Ok(()), "the refill lets one in");
    // A success starts the account afresh.
    assert!(matches!(
        login(&vendor, &wrong(&a.user)).await,
        Err(ServiceError::AuthFailed(_))
    ));
}

#[tokio::test]
async fn failed_logins_are_throttled_per_peer_across_accounts() {
    let (server, vendor) = server(ServerConfig {
        login_throttle: LoginThrottleConfig {
            per_peer: FailureBudget {
                burst: 3,
                refill: Duration::from_secs(60),
            },
            ..LoginThrottleConfig::default()
        },
        ..Default::default()
    })
    .await;
    let (a, _, _) = users(&server);
    for i in 0..3 {
        assert_eq!(
            login(&vendor, &wrong(&UserId::new(format!("guess{i}")))).await,
            Err(ServiceError::AuthFailed(LOGIN_REFUSED.into()))
        );
    }
    assert!(
        matches!(
            login(&vendor, &a).await,
            Err(ServiceError::RateLimited { .. })
        ),
        "a peer spraying guesses over accounts is not throttled"
    );
    jump(Duration::from_secs(60)).await;
    assert_eq!(login(&vendor, &a).await, Ok(()));
}

#[tokio::test]
async fn a_login_does_no_work_over_stored_messages() {
    let (server, vendor) = server(ServerConfig {
        vendor: MemoryVendorConfig {
            retention: Some(Duration::from_secs(3600)),
            ..MemoryVendorConfig::default()
        },
        sweep_interval: Duration::from_secs(24 * 3600),
        ..Default::default()
    })
    .await;
    let (a, b, conv) = users(&server);
    let alice = vendor.client();
    alice.login(&a).await.unwrap();
    alice.send(&text(&conv, "for bob")).await.unwrap();
    // Past retention, without a sweep.
    server.clock().shift(Duration::from_secs(7200));
    for creds in [wrong(&b.user), wrong(&UserId::new("ghost"))] {
        assert!(login(&vendor, &creds).await.is_err());
    }
    assert_eq!(
        server.vendor().stored_messages(&conv).len(),
        1,
        "a refused login swept the store"
    );
    // Nor does an accepted one: the server sweeps on its own schedule, so one user's
    // login never holds the vendor's lock for a pass over everything stored.
    assert_eq!(login(&vendor, &b).await, Ok(()));
    assert_eq!(
        server.vendor().stored_messages(&conv).len(),
        1,
        "an accepted login swept the store"
    );
    server.shift_clock(Duration::ZERO);
    assert!(server.vendor().stored_messages(&conv).is_empty());
}
