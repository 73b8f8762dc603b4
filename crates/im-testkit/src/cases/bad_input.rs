//! Service-layer cases about bad input from outside: malformed wire frames and vendor
//! callbacks with bad signatures. Each must end in a typed error and lose nothing.

// A case fails by panicking (the runner reports the message): `expect` is an assertion here.
#![allow(clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use im_service::codec::{self, CodecError, FORMAT_VERSION};
use im_service::reference::{ClientFrame, ServerFrame};
use im_service::webhook::{self, CallbackPayload, WebhookError};
use im_service::{Capability as C, ConversationId, HistoryQuery, Message, ServiceError, Vendor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Case, Category, Layer};
use crate::contract::text;
use crate::harness::VendorHarness;
use crate::on_target;

/// Writes `bytes` on a fresh connection and returns the server's first frame (it must be
/// `Fatal`) after checking the server then closes the connection.
async fn fatal_answer(addr: SocketAddr, bytes: &[u8]) -> ServiceError {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(bytes).await.expect("write");
    let read = async {
        let mut len = [0u8; 4];
        sock.read_exact(&mut len).await.expect("a frame back");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        sock.read_exact(&mut body).await.expect("frame body");
        let frame: ServerFrame = codec::decode(&body).expect("the answer decodes");
        let mut rest = [0u8; 1];
        let closed = matches!(sock.read(&mut rest).await, Ok(0) | Err(_));
        (frame, closed)
    };
    let (frame, closed) = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the server answers");
    assert!(closed, "the server closes after a fatal frame");
    match frame {
        ServerFrame::Fatal(e) => e,
        other => panic!("expected a fatal frame, got {other:?}"),
    }
}

fn with_len(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Garbage, a wrong version and an absurd length prefix each get a typed error (over the
/// wire when the target has one, from the codec otherwise); the vendor keeps serving.
async fn malformed_frames<H: VendorHarness>(h: H) {
    let garbage = [FORMAT_VERSION, 0xFF, 0xFF, 0xFF];
    let mut wrong_version = codec::encode(&ClientFrame::Hello).expect("encode");
    wrong_version[0] = FORMAT_VERSION.wrapping_add(7);
    match h.wire_addr() {
        Some(addr) => {
            let e = fatal_answer(addr, &with_len(&garbage)).await;
            assert!(
                matches!(
                    e,
                    ServiceError::Codec(CodecError::Malformed(_) | CodecError::Truncated)
                ),
                "{e:?}"
            );
            let e = fatal_answer(addr, &with_len(&wrong_version)).await;
            assert!(
                matches!(e, ServiceError::Codec(CodecError::UnknownVersion { .. })),
                "{e:?}"
            );
            let e = fatal_answer(addr, &u32::MAX.to_be_bytes()).await;
            assert!(
                matches!(e, ServiceError::Codec(CodecError::Oversized { .. })),
                "refused before reading the body: {e:?}"
            );
        }
        None => {
            let e = codec::decode::<ClientFrame>(&garbage).expect_err("garbage");
            assert!(
                matches!(e, CodecError::Malformed(_) | CodecError::Truncated),
                "{e:?}"
            );
            let e = codec::decode::<ClientFrame>(&wrong_version).expect_err("version");
            assert!(matches!(e, CodecError::UnknownVersion { .. }), "{e:?}");
        }
    }
    // Nothing was lost: a real session works as before.
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("login after the attacks");
    a.send(&text(&conv, "still here")).await.expect("send");
}

/// A message the vendor really stored.
async fn stored_message<H: VendorHarness>(h: &H) -> Message {
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = h.client().await;
    a.login(&alice).await.expect("login");
    a.send(&text(&conv, "signed")).await.expect("send");
    let page = a
        .pull_history(&HistoryQuery::latest(conv, 1))
        .await
        .expect("history");
    page.messages
        .into_iter()
        .next()
        .expect("the stored message")
}

/// A signed callback of a stored message verifies; a tampered body, another secret, a
/// stale or future timestamp and missing headers are each refused with their own error.
async fn callback_signatures<H: VendorHarness>(h: H) {
    let message = stored_message(&h).await;
    let secret = b"shared secret";
    let window = Duration::from_secs(300);
    let now = webhook::unix_seconds(h.clock().now());
    let payload = CallbackPayload::message_stored("vendor", message);
    let body = serde_json::to_vec(&payload).expect("encode");
    let ts = now.to_string();
    let sig = webhook::sign(secret, now, &body);
    let ok = webhook::verify(secret, Some(&ts), Some(&sig), &body, now, window);
    assert_eq!(ok.as_ref(), Ok(&payload), "the genuine callback verifies");

    let mut tampered = body.clone();
    let at = tampered
        .windows(6)
        .position(|w| w == b"signed")
        .expect("the body names the text");
    tampered[at] = b'S';
    let cases: [(&str, Result<CallbackPayload, WebhookError>); 6] = [
        (
            "tampered body",
            webhook::verify(secret, Some(&ts), Some(&sig), &tampered, now, window),
        ),
        (
            "other secret",
            webhook::verify(b"guess", Some(&ts), Some(&sig), &body, now, window),
        ),
        (
            "replayed after 10 minutes",
            webhook::verify(secret, Some(&ts), Some(&sig), &body, now + 600, window),
        ),
        (
            "missing signature",
            webhook::verify(secret, Some(&ts), None, &body, now, window),
        ),
        (
            "missing timestamp",
            webhook::verify(secret, None, Some(&sig), &body, now, window),
        ),
        (
            "signature not hex",
            webhook::verify(secret, Some(&ts), Some("zz"), &body, now, window),
        ),
    ];
    for (what, got) in cases {
        let err = got.expect_err(what);
        let right = match what {
            "tampered body" | "other secret" | "signature not hex" => {
                err == WebhookError::BadSignature
            }
            "replayed after 10 minutes" => {
                matches!(err, WebhookError::StaleTimestamp { age_secs: 600 })
            }
            _ => matches!(err, WebhookError::MissingHeader(_)),
        };
        assert!(right, "{what}: {err:?}");
    }
}

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "BAD-001",
            title: "Malformed frames get a typed error and the vendor keeps serving",
            category: Category::Essential,
            layer: Layer::Service,
            needs: &[],
            harness: &[],
            steps: &[
                "write garbage, a wrong format version and a 4 GiB length prefix to the \
                 vendor's wire (the codec, for an in-process vendor)",
                "alice then logs in and sends",
            ],
            expected: "Malformed/Truncated, UnknownVersion and Oversized (before any body is \
                       read), each as a fatal frame that closes only that connection; \
                       alice's session works",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, malformed_frames) }),
        },
        Case {
            id: "BAD-002",
            title: "Vendor callbacks with bad signatures or stale timestamps are refused",
            category: Category::Essential,
            layer: Layer::Service,
            needs: &[C::HistoryByTime],
            harness: &[],
            steps: &[
                "sign a message.stored callback of a stored message with the shared secret",
                "verify it; then a tampered body, another secret, a replay 10 minutes \
                 later, missing headers, a non-hex signature",
            ],
            expected: "the genuine one verifies to the same payload; the others fail with \
                       BadSignature, StaleTimestamp (age 600 s) and MissingHeader",
            guards: None,
            run: |t| Box::pin(async move { on_target!(t, callback_signatures) }),
        },
    ]
}
