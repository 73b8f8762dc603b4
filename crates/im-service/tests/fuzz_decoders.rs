//! Fuzz targets for every decoder of im-service that reads outside input: the reference
//! vendor's wire frames in both directions (`WireCodec`), signed webhook callbacks
//! (`webhook::verify`), and incoming XMPP message stanzas (the adapter's own conversion).
//!
//! Structure-aware: inputs are valid frames, bodies and stanzas from proptest strategies,
//! then damaged (flipped bytes, cuts, splices, wrong and huge length prefixes, varints
//! claiming huge lengths, deep JSON, invalid UTF-8). Each target checks that decoding never
//! panics, that decoding one input allocates a bounded amount (a counting global allocator,
//! see `fuzz_support`), and that undamaged inputs round-trip. `cargo xtask fuzz --minutes N`
//! runs them (and the other crates' targets) for longer; see `fuzz_support` for the modes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_support;

use std::time::Duration;

use bytes::BytesMut;
use fuzz_support::model::{
    capabilities, content, conversation, duration, id, message, outgoing, text, time, user,
};
use fuzz_support::mutate::{self, Mutation, apply_json, json_damage};
use fuzz_support::{check_bounded, fuzz, measure};
use im_service::codec::{CodecError, MAX_ENCODED_LEN};
use im_service::reference::protocol::DEFAULT_MAX_FRAME_LEN;
use im_service::reference::{ClientFrame, Reply, Request, ServerFrame, WireCodec};
use im_service::webhook::{self, CallbackPayload, WebhookError};
use im_service::{
    Capability, ChangeBatch, ChangeCursor, ChangeKind, ChangeRefusal, ClientMsgId, Content,
    Credentials, EditPermission, HistoryPage, HistoryQuery, HistoryRange, HistoryScope, KickReason,
    LifecyclePolicy, MessageChange, OfflineAck, OfflineBatch, PageCursor, ReadReceipt, SendReceipt,
    Seq, ServerMsgId, ServiceError, Session, Token, VendorEvent,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

/// Cases per target in `cargo test` (a few seconds in debug).
const CASES: u32 = 1500;

/// The most one decoded input may allocate (largest block and peak): the frame limit
/// (a partial frame reserves room for its body), serde's cautious preallocation of at most
/// 1 MiB per nested sequence, and a few copies of the input itself.
fn frame_bound(input_len: usize) -> usize {
    4 * DEFAULT_MAX_FRAME_LEN + 8 * input_len
}

// ---- strategies of valid frames ----

fn history_query() -> impl Strategy<Value = HistoryQuery> {
    (
        proptest::option::of(conversation()),
        prop_oneof![
            Just(HistoryRange::Latest),
            (
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(a, b)| HistoryRange::Seq {
                    after: a.map(Seq),
                    before: b.map(Seq)
                }),
            (time(), time()).prop_map(|(from, to)| HistoryRange::Time { from, to }),
        ],
        proptest::option::of(text()),
        any::<u32>(),
    )
        .prop_map(|(scope, range, cursor, limit)| HistoryQuery {
            scope: scope.map_or(HistoryScope::All, HistoryScope::Conversation),
            range,
            cursor: cursor.map(PageCursor),
            limit,
        })
}

// Protocol version 2: the message lifecycle.

/// Content as version 2 carries it: what a client sends, or what is left of a recall.
fn any_content() -> impl Strategy<Value = Content> {
    prop_oneof![
        4 => content(),
        1 => (user(), time()).prop_map(|(by, at)| Content::Recalled { by, at }),
    ]
}

fn change_cursor() -> impl Strategy<Value = ChangeCursor> {
    proptest::collection::vec(any::<u8>(), 0..24).prop_map(ChangeCursor)
}

fn message_change() -> impl Strategy<Value = MessageChange> {
    (
        conversation(),
        id(),
        prop_oneof![
            Just(ChangeKind::Recalled),
            any_content().prop_map(ChangeKind::Edited),
            Just(ChangeKind::DeletedForMe),
        ],
        user(),
        time(),
        any::<u32>(),
    )
        .prop_map(
            |(conversation, target, kind, by, at, revision)| MessageChange {
                conversation,
                target: ServerMsgId::new(target),
                kind,
                by,
                at,
                revision,
            },
        )
}

fn read_receipt() -> impl Strategy<Value = ReadReceipt> {
    (conversation(), user(), id(), time(), time()).prop_map(
        |(conversation, reader, up_to, up_to_time, at)| ReadReceipt {
            conversation,
            reader,
            up_to: ServerMsgId::new(up_to),
            up_to_time,
            at,
        },
    )
}

fn change_batch() -> impl Strategy<Value = ChangeBatch> {
    (
        proptest::collection::vec(message_change(), 0..4),
        proptest::collection::vec(read_receipt(), 0..3),
        change_cursor(),
        any::<u32>(),
    )
        .prop_map(|(changes, receipts, next, left)| ChangeBatch {
            changes,
            receipts,
            next,
            left,
        })
}

fn lifecycle_policy() -> impl Strategy<Value = LifecyclePolicy> {
    (
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        prop_oneof![
            Just(EditPermission::Sender),
            Just(EditPermission::AnyMember)
        ],
    )
        .prop_map(
            |(recall_window, edit_window, edit_permission)| LifecyclePolicy {
                recall_window,
                edit_window,
                edit_permission,
            },
        )
}

fn change_refusal() -> impl Strategy<Value = ChangeRefusal> {
    prop_oneof![
        duration().prop_map(|window| ChangeRefusal::WindowPassed { window }),
        Just(ChangeRefusal::NotAllowed),
        Just(ChangeRefusal::Recalled),
        Just(ChangeRefusal::UnknownMessage),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let lifecycle = prop_oneof![
        (conversation(), id()).prop_map(|(c, i)| Request::Recall(c, ServerMsgId::new(i))),
        (conversation(), id(), any_content()).prop_map(|(c, i, content)| Request::Edit(
            c,
            ServerMsgId::new(i),
            content
        )),
        (conversation(), id()).prop_map(|(c, i)| Request::DeleteForMe(c, ServerMsgId::new(i))),
        (proptest::option::of(change_cursor()), any::<u32>())
            .prop_map(|(since, max)| Request::PullChanges(since, max)),
        (outgoing(), id()).prop_map(|(m, after)| Request::SendAfter(m, ClientMsgId::new(after))),
    ];
    let v1 = prop_oneof![
        (user(), text()).prop_map(|(user, t)| Request::Login(Credentials {
            user,
            token: Token::new(t)
        })),
        Just(Request::Logout),
        outgoing().prop_map(Request::Send),
        any::<u32>().prop_map(Request::PullOffline),
        text().prop_map(|token| Request::AckOffline(OfflineAck { token })),
        Just(Request::GoOnline),
        history_query().prop_map(Request::PullHistory),
        Just(Request::Ping),
        (conversation(), id()).prop_map(|(c, i)| Request::MarkRead(c, ServerMsgId::new(i))),
    ];
    prop_oneof![9 => v1, 4 => lifecycle]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        1 => Just(ClientFrame::Hello),
        1 => any::<u16>().prop_map(|version| ClientFrame::HelloV2 { version }),
        6 => (any::<u64>(), request()).prop_map(|(id, request)| ClientFrame::Request { id, request }),
    ]
}

fn kick() -> impl Strategy<Value = KickReason> {
    prop_oneof![
        Just(KickReason::LoggedInElsewhere),
        Just(KickReason::AccountRemoved),
        text().prop_map(KickReason::Admin),
    ]
}

fn codec_error() -> impl Strategy<Value = CodecError> {
    prop_oneof![
        Just(CodecError::Empty),
        any::<u8>().prop_map(|found| CodecError::UnknownVersion { found }),
        (any::<usize>(), any::<usize>()).prop_map(|(len, max)| CodecError::Oversized { len, max }),
        Just(CodecError::Truncated),
        any::<usize>().prop_map(CodecError::TrailingBytes),
        text().prop_map(CodecError::Malformed),
        text().prop_map(CodecError::Encode),
    ]
}

fn service_error() -> impl Strategy<Value = ServiceError> {
    let simple = prop_oneof![
        Just(ServiceError::NotLoggedIn),
        text().prop_map(ServiceError::AuthFailed),
        Just(ServiceError::TokenExpired),
        kick().prop_map(ServiceError::Kicked),
        user().prop_map(ServiceError::UnknownUser),
        conversation().prop_map(ServiceError::NotMember),
        (any::<usize>(), any::<usize>())
            .prop_map(|(size, max)| ServiceError::MessageTooLarge { size, max }),
        text().prop_map(ServiceError::InvalidRequest),
    ];
    let more = prop_oneof![
        proptest::sample::select(Capability::ALL.to_vec()).prop_map(ServiceError::Unsupported),
        duration().prop_map(|retry_after| ServiceError::RateLimited { retry_after }),
        duration().prop_map(ServiceError::Timeout),
        text().prop_map(ServiceError::ConnectionLost),
        text().prop_map(ServiceError::Unavailable),
        (any::<u32>(), text()).prop_map(|(code, message)| ServiceError::Server { code, message }),
        text().prop_map(ServiceError::Protocol),
        codec_error().prop_map(ServiceError::Codec),
        change_refusal().prop_map(ServiceError::ChangeRefused),
        id().prop_map(|i| ServiceError::PredecessorNotStored(ClientMsgId::new(i))),
    ];
    prop_oneof![simple, more]
}

fn vendor_event() -> impl Strategy<Value = VendorEvent> {
    prop_oneof![
        3 => message().prop_map(VendorEvent::MessagePushed),
        1 => text().prop_map(|reason| VendorEvent::ConnectionLost { reason }),
        1 => kick().prop_map(VendorEvent::Kicked),
        1 => time().prop_map(|expires_at| VendorEvent::TokenWillExpire { expires_at }),
        1 => Just(VendorEvent::TokenExpired),
        2 => message_change().prop_map(VendorEvent::MessageChanged),
        1 => read_receipt().prop_map(VendorEvent::ReadReceipt),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    let messages = || proptest::collection::vec(message(), 0..4);
    prop_oneof![
        (
            user(),
            proptest::option::of(time()),
            text(),
            proptest::option::of(time())
        )
            .prop_map(|(user, token_expires_at, session_id, server_time)| {
                Reply::Session(Session {
                    user,
                    token_expires_at,
                    session_id,
                    server_time,
                })
            }),
        Just(Reply::Done),
        (
            id(),
            proptest::option::of(any::<u64>()),
            time(),
            any::<bool>()
        )
            .prop_map(
                |(sid, seq, server_time, duplicate)| Reply::Receipt(SendReceipt {
                    server_id: ServerMsgId::new(sid),
                    seq: seq.map(Seq),
                    server_time,
                    duplicate,
                })
            ),
        (messages(), any::<u64>(), proptest::option::of(text())).prop_map(
            |(messages, left, ack)| Reply::Offline(OfflineBatch {
                messages,
                left,
                ack: ack.map(|token| OfflineAck { token }),
            })
        ),
        (
            messages(),
            proptest::option::of(text()),
            proptest::option::of(time())
        )
            .prop_map(|(messages, next, horizon)| Reply::History(HistoryPage {
                messages,
                next: next.map(PageCursor),
                horizon,
            })),
        Just(Reply::Pong),
        message_change().prop_map(Reply::Change),
        change_batch().prop_map(Reply::Changes),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        1 => (text(), capabilities())
            .prop_map(|(server, capabilities)| ServerFrame::Welcome { server, capabilities }),
        4 => (
            any::<u64>(),
            prop_oneof![3 => reply().prop_map(Ok), 1 => service_error().prop_map(Err)]
        )
            .prop_map(|(id, result)| ServerFrame::Response { id, result }),
        3 => vendor_event().prop_map(ServerFrame::Event),
        1 => service_error().prop_map(ServerFrame::Fatal),
        1 => (text(), capabilities(), lifecycle_policy(), any::<u16>()).prop_map(
            |(server, capabilities, lifecycle, protocol)| ServerFrame::WelcomeV2 {
                server,
                capabilities,
                lifecycle,
                protocol,
            }
        ),
    ]
}

// ---- the wire targets ----

/// A stream of frames as the peer would write it, with the offsets of the length prefixes.
/// (`WireCodec<F, F>`: the second parameter only types what a side encodes, so decoding is
/// exactly that of the real pairings, `WireCodec<ClientFrame, ServerFrame>` on the server
/// and `WireCodec<ServerFrame, ClientFrame>` on the client.)
fn wire<F: Serialize + DeserializeOwned + Clone>(frames: &[F]) -> (Vec<u8>, Vec<usize>) {
    let mut codec: WireCodec<F, F> = WireCodec::default();
    let mut buf = BytesMut::new();
    let mut starts = Vec::new();
    for f in frames {
        starts.push(buf.len());
        codec
            .encode(f.clone(), &mut buf)
            .expect("valid frames encode");
    }
    (buf.to_vec(), starts)
}

/// Feeds `bytes` to a decoder in pieces of the given sizes (as TCP would), then ends the
/// stream: the frames decoded until the first error, and that error.
fn read_stream<F: Serialize + DeserializeOwned>(
    bytes: &[u8],
    pieces: &[usize],
) -> (Vec<F>, Option<ServiceError>) {
    let mut codec: WireCodec<F, F> = WireCodec::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = pieces.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&64)).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => out.push(frame),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => out.push(frame),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// One wire case: encode `frames`, damage them, read them back.
fn wire_case<F>(
    what: &str,
    frames: Vec<F>,
    mutations: Vec<Mutation>,
    pieces: Vec<usize>,
) -> Result<(), TestCaseError>
where
    F: Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug,
{
    let (valid, starts) = wire(&frames);
    let input = mutate::apply(valid, &starts, &mutations);
    let ((decoded, error), footprint) = measure(|| read_stream::<F>(&input, &pieces));
    check_bounded(what, footprint, frame_bound(input.len()), input.len())?;
    if mutations.is_empty() {
        prop_assert!(
            error.is_none(),
            "valid frames were refused: {error:?} after {} frames",
            decoded.len()
        );
        prop_assert_eq!(decoded, frames, "the round trip changed the frames");
    }
    Ok(())
}

fn damage() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutate::mutation(), 0..4)
}

fn pieces() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(prop_oneof![1usize..8, 8usize..512, Just(usize::MAX)], 1..4)
}

#[test]
fn measuring_allocator_works() {
    fuzz_support::assert_measure_works();
}

/// Client frames as the server decodes them.
#[test]
fn fuzz_wire_client_frames() {
    fuzz(
        "wire_client_frames",
        CASES,
        (
            proptest::collection::vec(client_frame(), 1..4),
            damage(),
            pieces(),
        ),
        |(frames, mutations, pieces)| {
            wire_case::<ClientFrame>("decoding client frames", frames, mutations, pieces)
        },
    );
}

/// Server frames as the client decodes them.
#[test]
fn fuzz_wire_server_frames() {
    fuzz(
        "wire_server_frames",
        CASES,
        (
            proptest::collection::vec(server_frame(), 1..4),
            damage(),
            pieces(),
        ),
        |(frames, mutations, pieces)| {
            wire_case::<ServerFrame>("decoding server frames", frames, mutations, pieces)
        },
    );
}

/// The bare codec under the wire (also what the stores decode): a tiny body claiming a
/// huge length must be refused without allocating that length.
#[test]
fn fuzz_codec_length_claims() {
    fuzz(
        "codec_length_claims",
        CASES,
        (server_frame(), damage()),
        |(frame, mutations)| {
            let valid = im_service::codec::encode(&frame).expect("valid frames encode");
            let input = mutate::apply(valid, &[], &mutations);
            let (decoded, footprint) = measure(|| im_service::codec::decode::<ServerFrame>(&input));
            check_bounded(
                "codec::decode",
                footprint,
                frame_bound(input.len()),
                input.len(),
            )?;
            if mutations.is_empty() {
                prop_assert_eq!(decoded, Ok(frame));
            }
            Ok(())
        },
    );
}

// ---- signed callbacks ----

const SECRET: &[u8] = b"callback secret";
const NOW: i64 = 1_800_000_000;
const WINDOW: Duration = Duration::from_secs(300);

/// How the headers of a case are made.
#[derive(Debug, Clone)]
enum Headers {
    /// Signed over the (damaged) body at `NOW - age`: the body reaches the JSON decoder.
    Signed(i64),
    /// Signed over the undamaged body.
    SignedOriginal,
    /// Arbitrary header values.
    Garbage(Option<String>, Option<String>),
}

fn headers() -> impl Strategy<Value = Headers> {
    prop_oneof![
        4 => prop_oneof![-400i64..400, any::<i64>()].prop_map(Headers::Signed),
        1 => Just(Headers::SignedOriginal),
        1 => (
            proptest::option::of(prop_oneof![".{0,24}", "[+0-9-]{1,30}"]),
            proptest::option::of(prop_oneof![".{0,70}", "[0-9a-fA-F]{0,80}"])
        )
            .prop_map(|(t, s)| Headers::Garbage(t, s)),
    ]
}

#[test]
fn fuzz_webhook_callbacks() {
    fuzz(
        "webhook_callbacks",
        CASES,
        (
            "[a-z]{1,12}",
            prop_oneof![4 => Just(webhook::MESSAGE_STORED.to_string()), 1 => text()],
            message(),
            proptest::collection::vec(json_damage(), 0..4),
            headers(),
        ),
        |(vendor, event, message, damage, headers)| {
            let payload = CallbackPayload {
                vendor,
                event,
                message,
            };
            let original = serde_json::to_vec(&payload).expect("payloads encode");
            let body = apply_json(original.clone(), &damage);
            let (timestamp, signature) = match &headers {
                Headers::Signed(age) => {
                    let ts = NOW.saturating_sub(*age);
                    (Some(ts.to_string()), Some(webhook::sign(SECRET, ts, &body)))
                }
                Headers::SignedOriginal => (
                    Some(NOW.to_string()),
                    Some(webhook::sign(SECRET, NOW, &original)),
                ),
                Headers::Garbage(t, s) => (t.clone(), s.clone()),
            };
            let (verdict, footprint) = measure(|| {
                webhook::verify(
                    SECRET,
                    timestamp.as_deref(),
                    signature.as_deref(),
                    &body,
                    NOW,
                    WINDOW,
                )
            });
            // Bodies are capped by the receiver (the archive: 64 KiB); JSON decoding holds
            // the body's strings once more, plus serde_json's scratch.
            check_bounded(
                "webhook::verify",
                footprint,
                (1 << 20) + 16 * body.len(),
                body.len(),
            )?;
            let in_window = matches!(headers, Headers::Signed(age) if age.unsigned_abs() <= 300)
                || matches!(headers, Headers::SignedOriginal);
            if damage.is_empty() && in_window {
                prop_assert_eq!(verdict, Ok(payload), "an authentic callback was refused");
            } else if matches!(headers, Headers::SignedOriginal) && body != original {
                prop_assert_eq!(verdict, Err(WebhookError::BadSignature));
            }
            Ok(())
        },
    );
}

// ---- XMPP stanzas ----

/// `s` as XML character data: escaped, without the characters XML 1.0 cannot carry.
fn xml_escape(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| {
            matches!(c, '\t' | '\n' | '\r')
                || (!c.is_control() && !matches!(c, '\u{FFFE}' | '\u{FFFF}'))
        })
        .collect();
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
        .replace('\t', "&#9;")
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
}

fn stamp() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (1970i32..2100, 1u32..13, 1u32..29, 0u32..24, 0u32..60, 0u32..60, 0u32..1000)
            .prop_map(|(y, mo, d, h, mi, s, ms)| {
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
            }),
        1 => Just("9999-12-31T23:59:59.999Z".to_string()),
        1 => Just("0000-01-01T00:00:00Z".to_string()),
        1 => Just("2024-01-01T00:00:00+23:59".to_string()),
    ]
}

/// A stamp that is valid, or (flagged `false`) one that may not be.
fn any_stamp() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        5 => stamp().prop_map(|s| (s, true)),
        1 => ".{0,30}".prop_map(|s| (s, false)),
    ]
}

/// An id as the adapter writes it (`{client millis}.{random}`), with any millis.
fn stanza_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (prop_oneof![
                 1_600_000_000_000i64..1_900_000_000_000,
                 any::<i64>(),
                 Just(i64::MIN),
                 Just(i64::MAX)
             ], "[a-z0-9]{1,8}")
            .prop_map(|(ms, r)| format!("{ms}.{r}")),
        1 => id(),
    ]
}

/// A message stanza as a server sends it (live, offline with a delay, or a MAM result), and
/// whether it is valid (every stamp parses).
fn stanza() -> impl Strategy<Value = (String, bool)> {
    // JID localparts: the characters a server lets through (no `:`, `@`, `/` …).
    let node = || "[a-z0-9._-]{1,12}";
    let inner = (
        node(),
        node(),
        stanza_id(),
        text(),
        proptest::option::of(id()),
        proptest::option::of(id()),
        proptest::option::of(any_stamp()),
    )
        .prop_map(|(from, to, sid, body, origin, stanza_id, delay)| {
            let mut xml = format!(
                "<message xmlns='jabber:client' from='{}@example.org/r' to='{}@example.org' \
                 id='{}' type='chat'><body>{}</body>",
                xml_escape(&from),
                xml_escape(&to),
                xml_escape(&sid),
                xml_escape(&body)
            );
            if let Some(o) = origin {
                xml.push_str(&format!(
                    "<origin-id xmlns='urn:xmpp:sid:0' id='{}'/>",
                    xml_escape(&o)
                ));
            }
            if let Some(s) = stanza_id {
                xml.push_str(&format!(
                    "<stanza-id xmlns='urn:xmpp:sid:0' id='{}' by='example.org'/>",
                    xml_escape(&s)
                ));
            }
            let mut valid = true;
            if let Some((d, ok)) = delay {
                valid = ok;
                xml.push_str(&format!(
                    "<delay xmlns='urn:xmpp:delay' stamp='{}'/>",
                    xml_escape(&d)
                ));
            }
            xml.push_str("</message>");
            (xml, valid)
        });
    (
        inner,
        proptest::option::of(("[A-Za-z0-9_-]{1,16}", any_stamp())),
    )
        .prop_map(|((message, valid), mam)| match mam {
            None => (message, valid),
            Some((archive_id, (stamp, ok))) => (
                format!(
                    "<message xmlns='jabber:client' to='me@example.org'>\
                     <result xmlns='urn:xmpp:mam:2' queryid='q1' id='{}'>\
                     <forwarded xmlns='urn:xmpp:forward:0'>\
                     <delay xmlns='urn:xmpp:delay' stamp='{}'/>{message}</forwarded></result>\
                     </message>",
                    xml_escape(&archive_id),
                    xml_escape(&stamp)
                ),
                valid && ok,
            ),
        })
}

#[test]
fn fuzz_xmpp_incoming_messages() {
    fuzz(
        "xmpp_incoming_messages",
        CASES,
        (stanza(), damage()),
        |((xml, valid), mutations)| {
            let damaged = mutate::apply(xml.clone().into_bytes(), &[], &mutations);
            let damaged = String::from_utf8_lossy(&damaged).into_owned();
            let (message, footprint) =
                measure(|| im_service::xmpp::fuzz_incoming_message(&damaged));
            check_bounded(
                "xmpp::fuzz_incoming_message",
                footprint,
                (1 << 20) + 64 * damaged.len(),
                damaged.len(),
            )?;
            if mutations.is_empty() && valid {
                prop_assert!(message.is_some(), "a valid message stanza gave no message");
            }
            Ok(())
        },
    );
}

/// The codec's own limit is the only one stores and files have: a claim past it is a typed
/// error, not an allocation (pinned here with the largest claim a 16 MiB limit allows).
#[test]
fn codec_refuses_claims_past_its_limit() {
    let mut bytes = vec![im_service::codec::FORMAT_VERSION];
    bytes.extend(mutate::varint(MAX_ENCODED_LEN as u64));
    let (result, footprint) = measure(|| im_service::codec::decode::<String>(&bytes));
    assert!(
        result.is_err(),
        "a claim past the limit decoded: {result:?}"
    );
    assert!(
        footprint.largest < 1 << 20,
        "a claim past the limit allocated {footprint:?}"
    );
}
