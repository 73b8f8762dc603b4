//! The reference vendor over real sockets: bad input on raw bytes, every injected fault,
//! connection limits, idle timeout and graceful shutdown.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use im_service::codec::{self, CodecError, FORMAT_VERSION};
use im_service::memory::VendorOp;
use im_service::reference::protocol::{PROTOCOL_VERSION, frame_bytes};
use im_service::reference::{ClientFrame, ReferenceConfig, ReferenceVendor, Request, ServerFrame};
use im_service::{Credentials, HistoryQuery, ServiceError, Token, UserId, Vendor, VendorEvent};
use im_testkit::contract::{next_event, next_push, text};
use im_vendor_sim::{Faults, LOGIN_REFUSED, ReferenceServer, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod common;
use common::{online, read_frame, server, users};

/// Sends raw bytes and expects exactly one fatal frame, then the server closing.
async fn expect_fatal(server: &ReferenceServer, bytes: &[u8], half_close: bool) -> ServiceError {
    let mut sock = TcpStream::connect(server.addr()).await.unwrap();
    sock.write_all(bytes).await.unwrap();
    if half_close {
        sock.shutdown().await.unwrap();
    }
    let frame = read_frame(&mut sock).await;
    let Some(ServerFrame::Fatal(err)) = frame else {
        panic!("expected a fatal frame, got {frame:?}")
    };
    assert_eq!(
        read_frame(&mut sock).await,
        None,
        "the server closes after a fatal frame"
    );
    err
}

/// `frame` as a version 2 client writes it on a fresh connection: after `HelloV2`.
fn greeted(frame: &ClientFrame) -> Vec<u8> {
    let mut out = frame_bytes(&ClientFrame::HelloV2 {
        version: PROTOCOL_VERSION,
    })
    .unwrap();
    out.extend(frame_bytes(frame).unwrap());
    out
}

/// Reads the server's `WelcomeV2`, then the frame after it.
async fn after_welcome(sock: &mut TcpStream) -> Option<ServerFrame> {
    match read_frame(sock).await {
        Some(ServerFrame::WelcomeV2 { .. }) => read_frame(sock).await,
        other => panic!("expected WelcomeV2, got {other:?}"),
    }
}

fn with_len(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn bad_input_gets_a_typed_error_and_loses_nothing() {
    let (server, vendor) = server(ServerConfig {
        max_frame_len: 64 * 1024,
        ..Default::default()
    })
    .await;
    let (a, b, conv) = users(&server);
    let alice = vendor.client();
    alice.login(&a).await.unwrap();
    alice
        .send(&text(&conv, "stored before the attacks"))
        .await
        .unwrap();

    // Malformed body: right version, garbage after it.
    let err = expect_fatal(
        &server,
        &with_len(&[FORMAT_VERSION, 0xFF, 0xFF, 0xFF]),
        false,
    )
    .await;
    assert!(
        matches!(
            err,
            ServiceError::Codec(CodecError::Malformed(_) | CodecError::Truncated)
        ),
        "{err:?}"
    );
    // Wrong version byte.
    let mut wrong = codec::encode(&ClientFrame::Hello).unwrap();
    wrong[0] = FORMAT_VERSION + 7;
    let err = expect_fatal(&server, &with_len(&wrong), false).await;
    assert_eq!(
        err,
        ServiceError::Codec(CodecError::UnknownVersion {
            found: FORMAT_VERSION + 7
        })
    );
    // A complete frame whose body is cut short.
    let login = codec::encode(&ClientFrame::Request {
        id: 1,
        request: Request::Login(a.clone()),
    })
    .unwrap();
    let err = expect_fatal(&server, &with_len(&login[..login.len() / 2]), false).await;
    assert_eq!(err, ServiceError::Codec(CodecError::Truncated));
    // The stream ends in the middle of a frame.
    let full = frame_bytes(&ClientFrame::Hello).unwrap();
    let err = expect_fatal(&server, &full[..full.len() - 1], true).await;
    assert_eq!(err, ServiceError::Codec(CodecError::Truncated));
    // A length prefix over the limit: refused before the body is read.
    let err = expect_fatal(&server, &(10u32 * 1024 * 1024).to_be_bytes(), false).await;
    assert_eq!(
        err,
        ServiceError::Codec(CodecError::Oversized {
            len: 10 * 1024 * 1024,
            max: 64 * 1024
        })
    );
    // A request before login.
    let ping = ClientFrame::Request {
        id: 1,
        request: Request::Ping,
    };
    let mut sock = TcpStream::connect(server.addr()).await.unwrap();
    sock.write_all(&greeted(&ping)).await.unwrap();
    assert_eq!(
        after_welcome(&mut sock).await,
        Some(ServerFrame::Fatal(ServiceError::NotLoggedIn))
    );
    assert_eq!(read_frame(&mut sock).await, None);

    // Unknown user and wrong token: one typed answer for both (a stranger must not learn
    // which accounts exist), then the connection closes.
    for creds in [
        Credentials {
            user: UserId::new("mallory"),
            token: a.token.clone(),
        },
        Credentials {
            user: a.user.clone(),
            token: Token::new("wrong"),
        },
    ] {
        let mut sock = TcpStream::connect(server.addr()).await.unwrap();
        let req = greeted(&ClientFrame::Request {
            id: 9,
            request: Request::Login(creds),
        });
        sock.write_all(&req).await.unwrap();
        match after_welcome(&mut sock).await {
            Some(ServerFrame::Response {
                id: 9,
                result: Err(e),
            }) => assert_eq!(
                e,
                ServiceError::AuthFailed(LOGIN_REFUSED.into()),
                "an unknown user and a wrong token get the same answer"
            ),
            other => panic!("expected a login error, got {other:?}"),
        }
        assert_eq!(read_frame(&mut sock).await, None);
    }

    // Everyone else is still served and nothing stored was lost.
    alice.ping().await.unwrap();
    let bob = vendor.client();
    bob.login(&b).await.unwrap();
    let batch = bob.pull_offline(10).await.unwrap();
    assert_eq!(batch.messages.len(), 1);
    let page = bob
        .pull_history(&HistoryQuery::latest(conv, 10))
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 1);
}

#[tokio::test]
async fn oversized_message_is_refused_by_client_and_server() {
    let (server, vendor) = server(ServerConfig::default()).await;
    let (a, _, conv) = users(&server);
    let max = vendor.client().capabilities().max_message_bytes;
    // Bypass the adapter's local check with a raw request to prove the server refuses too.
    let mut sock = TcpStream::connect(server.addr()).await.unwrap();
    sock.write_all(&greeted(&ClientFrame::Request {
        id: 1,
        request: Request::Login(a.clone()),
    }))
    .await
    .unwrap();
    assert!(matches!(
        after_welcome(&mut sock).await,
        Some(ServerFrame::Response { result: Ok(_), .. })
    ));
    let big = im_service::OutgoingMessage::new(
        conv.clone(),
        im_service::Content::text("x".repeat(max + 1)),
        im_service::Timestamp::from_millis(0),
    );
    sock.write_all(
        &frame_bytes(&ClientFrame::Request {
            id: 2,
            request: Request::Send(big),
        })
        .unwrap(),
    )
    .await
    .unwrap();
    match read_frame(&mut sock).await {
        Some(ServerFrame::Response {
            id: 2,
            result: Err(e),
        }) => {
            assert_eq!(e, ServiceError::MessageTooLarge { size: max + 1, max })
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert!(server.vendor().stored_messages(&conv).is_empty());
}

#[tokio::test]
async fn drop_after_n_frames_breaks_the_connection() {
    let (server, vendor) = server(ServerConfig::default()).await;
    let (a, _, _) = users(&server);
    server.set_faults(Faults {
        drop_after_frames: Some(2),
        ..Faults::none()
    });
    let (alice, mut events) = online(&vendor, &a).await; // login + go_online: 2 frames
    let err = alice.ping().await.unwrap_err();
    assert!(matches!(err, ServiceError::ConnectionLost(_)), "{err:?}");
    assert!(matches!(
        next_event(&mut events).await,
        VendorEvent::ConnectionLost { .. }
    ));
}

/// The frame at which a seeded random drop happens, counted by successful pings.
async fn pings_until_random_drop(seed: u64) -> usize {
    let (server, vendor) = server(ServerConfig {
        seed,
        faults: Faults {
            drop_probability: 0.2,
            ..Faults::none()
        },
        ..Default::default()
    })
    .await;
    let (a, _, _) = users(&server);
    let alice = vendor.client();
    if alice.login(&a).await.is_err() {
        return 0;
    }
    let mut n = 1;
    while alice.ping().await.is_ok() {
        n += 1;
        assert!(n < 1000, "p = 0.2 never dropped");
    }
    n
}

#[tokio::test]
async fn random_drops_are_deterministic_under_a_seed() {
    let first = pings_until_random_drop(42).await;
    assert_eq!(
        pings_until_random_drop(42).await,
        first,
        "same seed, same drop point"
    );
}

#[tokio::test]
async fn delayed_frames_show_in_rtt() {
    let (server, vendor) = server(ServerConfig::default()).await;
    let (a, _, _) = users(&server);
    let alice = vendor.client();
    alice.login(&a).await.unwrap();
    server.set_faults(Faults {
        frame_delay: Some(Duration::from_millis(150)),
        ..Faults::none()
    });
    let rtt = alice.ping().await.unwrap();
    assert!(
        rtt >= Duration::from_millis(150),
        "rtt {rtt:?} includes the injected delay"
    );
}

#[tokio::test]
async fn injected_failures_keep_their_error_class_over_the_wire() {
    let (server, vendor) = server(ServerConfig::default()).await;
    let (a, b, conv) = users(&server);
    let alice = vendor.client();
    alice.login(&a).await.unwrap();
    alice.send(&text(&conv, "m")).await.unwrap();
    let bob = vendor.client();
    bob.login(&b).await.unwrap();
    let limited = ServiceError::RateLimited {
        retry_after: Duration::from_secs(3),
    };
    server.fail_next(VendorOp::PullOffline, 2, limited.clone());
    assert_eq!(bob.pull_offline(10).await.unwrap_err(), limited);
    assert_eq!(
        bob.pull_offline(10).await.unwrap_err().class(),
        limited.class()
    );
    assert_eq!(bob.pull_offline(10).await.unwrap().messages.len(), 1);
    server.fail_next(
        VendorOp::Send,
        1,
        ServiceError::Unavailable("maintenance".into()),
    );
    assert!(
        alice
            .send(&text(&conv, "n"))
            .await
            .unwrap_err()
            .is_retryable()
    );
}

#[tokio::test]
async fn duplicated_and_reordered_pushes() {
    let (server, vendor) = server(ServerConfig::default()).await;
    let (a, b, conv) = users(&server);
    let alice = vendor.client();
    alice.login(&a).await.unwrap();
    let (_bob, mut events) = online(&vendor, &b).await;

    server.set_faults(Faults {
        duplicate_push_probability: 1.0,
        ..Faults::none()
    });
    alice.send(&text(&conv, "twice")).await.unwrap();
    let first = next_push(&mut events).await;
    let second = next_push(&mut events).await;
    assert_eq!(first, second, "the same message pushed twice");

    server.set_faults(Faults {
        reorder_pushes: true,
        reorder_window: Duration::from_secs(5),
        ..Faults::none()
    });
    alice.send(&text(&conv, "one")).await.unwrap();
    alice.send(&text(&conv, "two")).await.unwrap();
    let x = next_push(&mut events).await;
    let y = next_push(&mut events).await;
    assert!(
        x.seq > y.seq,
        "pushes swapped: got {:?} then {:?}",
        x.seq,
        y.seq
    );

    // A lone held push is still delivered once its window passes.
    server.set_faults(Faults {
        reorder_pushes: true,
        reorder_window: Duration::from_millis(50),
        ..Faults::none()
    });
    let lone = alice.send(&text(&conv, "alone")).await.unwrap();
    assert_eq!(next_push(&mut events).await.server_id, lone.server_id);
}

#[tokio::test]
async fn ignored_heartbeats_time_out() {
    let (server, _) = server(ServerConfig::default()).await;
    let (a, _, _) = users(&server);
    let config = ReferenceConfig {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let vendor = ReferenceVendor::discover(server.addr(), config)
        .await
        .unwrap();
    let alice = vendor.client();
    alice.login(&a).await.unwrap();
    server.set_faults(Faults {
        ignore_heartbeats: true,
        ..Faults::none()
    });
    assert_eq!(
        alice.ping().await.unwrap_err(),
        ServiceError::Timeout(Duration::from_millis(300))
    );
    server.set_faults(Faults::none());
    alice.ping().await.unwrap();
}

#[tokio::test]
async fn outage_breaks_connections_and_refuses_new_ones_until_over() {
    let (server, vendor) = server(ServerConfig::default()).await;
    let (a, _, _) = users(&server);
    let (alice, mut events) = online(&vendor, &a).await;
    server.outage(Duration::from_millis(400));
    assert!(matches!(
        next_event(&mut events).await,
        VendorEvent::ConnectionLost { .. }
    ));
    assert!(alice.ping().await.is_err());
    let err = alice.login(&a).await.unwrap_err();
    assert!(err.is_retryable(), "an outage is transient: {err:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice.login(&a).await.unwrap();
    alice.ping().await.unwrap();
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let (server, vendor) = server(ServerConfig {
        idle_timeout: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let (a, _, _) = users(&server);
    let (_alice, mut events) = online(&vendor, &a).await;
    match next_event(&mut events).await {
        VendorEvent::ConnectionLost { reason } => assert!(reason.contains("within"), "{reason}"),
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
}

#[tokio::test]
async fn connection_limit_refuses_with_a_typed_error() {
    let (server, vendor) = server(ServerConfig {
        max_connections: 1,
        ..Default::default()
    })
    .await;
    let (a, b, _) = users(&server);
    let alice = vendor.client();
    alice.login(&a).await.unwrap();
    let bob = vendor.client();
    assert_eq!(
        bob.login(&b).await.unwrap_err(),
        ServiceError::Unavailable("connection limit reached".into())
    );
    alice.ping().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_tells_clients() {
    let (server, vendor) = server(ServerConfig::default()).await;
    let (a, _, _) = users(&server);
    let (alice, mut events) = online(&vendor, &a).await;
    server.shutdown().await;
    match next_event(&mut events).await {
        VendorEvent::ConnectionLost { reason } => {
            assert!(reason.contains("shutting down"), "{reason}")
        }
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    assert!(alice.ping().await.is_err());
}

#[tokio::test]
async fn live_exchange_between_two_users() {
    let (server, vendor) = server(ServerConfig::default()).await;
    let (a, b, conv) = users(&server);
    let (alice, mut alice_events) = online(&vendor, &a).await;
    let (bob, mut bob_events) = online(&vendor, &b).await;
    for i in 0..20 {
        alice.send(&text(&conv, &format!("q{i}"))).await.unwrap();
        let q = next_push(&mut bob_events).await;
        bob.send(&text(&conv, &format!("a{i}"))).await.unwrap();
        let r = next_push(&mut alice_events).await;
        assert!(r.seq > q.seq);
    }
}

/// Pipelined sends over the wire ([`Capability::OrderedSends`]): a send naming a
/// predecessor that is not stored is refused and stores nothing, even when both are in
/// flight at once on the connection; one naming a stored predecessor is stored after it; a
/// resend of a stored message answers its receipt whatever it names.
#[tokio::test]
async fn a_pipelined_send_is_stored_only_behind_its_predecessor() {
    use im_service::{Capability, ClientMsgId, Content, Timestamp};
    let (server, vendor) = server(ServerConfig::default()).await;
    let (a, b, conv) = users(&server);
    let (alice, _alice_events) = online(&vendor, &a).await;
    assert!(
        alice.capabilities().supports(Capability::OrderedSends),
        "the server declares OrderedSends"
    );
    let (_bob, mut bob_events) = online(&vendor, &b).await;

    // A head the server refuses (a recalled placeholder cannot be sent), and a follower
    // sent in the same breath: the follower must not overtake it.
    let mut head = text(&conv, "head");
    head.content = Content::Recalled {
        by: UserId::new("alice"),
        at: Timestamp::from_millis(0),
    };
    let follower = text(&conv, "follower");
    let (head_result, follower_result) = tokio::join!(
        alice.send(&head),
        alice.send_after(&follower, &head.client_id)
    );
    assert!(
        matches!(head_result, Err(ServiceError::InvalidRequest(_))),
        "the head is refused: {head_result:?}"
    );
    assert_eq!(
        follower_result,
        Err(ServiceError::PredecessorNotStored(head.client_id.clone())),
        "a follower of a refused head is refused by name"
    );
    // A predecessor nobody sent: refused too.
    let stray = text(&conv, "stray");
    assert!(matches!(
        alice
            .send_after(&stray, &ClientMsgId::new("never-sent"))
            .await,
        Err(ServiceError::PredecessorNotStored(_))
    ));

    // A stored head: three followers pipelined behind it are stored in order.
    let first = text(&conv, "m0");
    let rest: Vec<_> = (1..4).map(|i| text(&conv, &format!("m{i}"))).collect();
    let (r0, r1, r2, r3) = tokio::join!(
        alice.send(&first),
        alice.send_after(&rest[0], &first.client_id),
        alice.send_after(&rest[1], &rest[0].client_id),
        alice.send_after(&rest[2], &rest[1].client_id),
    );
    let seqs: Vec<_> = [r0, r1, r2, r3]
        .into_iter()
        .map(|r| r.expect("stored").seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "stored in order: {seqs:?}"
    );
    // A resend of a stored follower is its receipt, whatever it names.
    let again = alice
        .send_after(&rest[2], &ClientMsgId::new("never-sent"))
        .await
        .expect("a resend of a stored message");
    assert!(again.duplicate, "the resend is a duplicate");

    // Bob got exactly m0..m3: nothing refused was stored or pushed.
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_push(&mut bob_events).await.content);
    }
    let want: Vec<Content> = (0..4).map(|i| Content::text(format!("m{i}"))).collect();
    assert_eq!(got, want, "bob sees m0..m3, in order");
    let page = alice
        .pull_history(&HistoryQuery::latest(conv.clone(), 50))
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 4, "only the four stored: {page:?}");
}
