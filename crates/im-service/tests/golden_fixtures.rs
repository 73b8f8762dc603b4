//! Golden fixtures of every type this crate writes to disk or the wire (see
//! `im_service::codec::golden`): encoding a canonical value today must give exactly the
//! checked-in bytes of the current format version, and every checked-in version must still
//! decode. Create missing fixtures with `IM_BLESS_FIXTURES=1 cargo test -p im-service
//! --all-features --test golden_fixtures`.

use std::time::Duration;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use im_service::codec::FORMAT_VERSION;
use im_service::codec::golden::Fixtures;
use im_service::reference::protocol::{
    ClientFrame, PROTOCOL_VERSION, Reply, Request, ServerFrame, WireCodec, frame_bytes,
};
use im_service::webhook::{self, CallbackPayload};
use im_service::{
    Capabilities, Capability, ChangeBatch, ChangeCursor, ChangeKind, ChangeRefusal, ClientMsgId,
    Content, ConversationId, Credentials, EditPermission, HistoryPage, HistoryQuery, HistoryRange,
    KickReason, LifecyclePolicy, Message, MessageChange, OfflineAck, OfflineBatch, Origin,
    OutgoingMessage, PageCursor, ReadReceipt, ReceivedMessage, SendReceipt, Seq, ServerMsgId,
    ServiceError, Session, Timestamp, Token, UserId, VendorEvent,
};

fn alice() -> UserId {
    UserId::new("alice")
}

fn bob() -> UserId {
    UserId::new("bob")
}

fn direct() -> ConversationId {
    ConversationId::direct(&alice(), &bob())
}

fn group() -> ConversationId {
    ConversationId::group("team-42")
}

fn text() -> Content {
    Content::Text("héllo, wörld ✓".to_owned())
}

fn custom() -> Content {
    Content::Custom {
        type_tag: "app/location".to_owned(),
        payload: vec![0, 1, 2, 0x7f, 0x80, 0xff],
    }
}

/// Every field set to a value that is not its default.
fn message() -> Message {
    Message {
        server_id: ServerMsgId::new("srv-1001"),
        client_id: ClientMsgId::new("cli-7"),
        conversation: group(),
        sender: alice(),
        seq: Some(Seq(300)),
        server_time: Timestamp::from_millis(1_700_000_000_123),
        client_time: Timestamp::from_millis(-5),
        content: custom(),
    }
}

fn direct_message() -> Message {
    Message {
        server_id: ServerMsgId::new("srv-1002"),
        client_id: ClientMsgId::new("cli-8"),
        conversation: direct(),
        sender: bob(),
        seq: None,
        server_time: Timestamp::from_millis(1_700_000_000_456),
        client_time: Timestamp::from_millis(1_700_000_000_400),
        content: text(),
    }
}

fn outgoing() -> OutgoingMessage {
    OutgoingMessage {
        client_id: ClientMsgId::new("cli-9"),
        conversation: direct(),
        content: text(),
        client_time: Timestamp::from_millis(1_700_000_001_000),
    }
}

/// Every other capability of the first twelve (the set the v1 fixtures were written with:
/// capabilities added later must not change the canonical value, only be encodable).
fn capabilities() -> Capabilities {
    Capability::ALL[..12]
        .iter()
        .step_by(2)
        .fold(Capabilities::none(), |caps, cap| caps.with(*cap))
        .with_retention(Some(Duration::from_secs(7 * 24 * 3600)))
        .with_max_message_bytes(65_536)
}

fn session() -> Session {
    Session {
        user: alice(),
        token_expires_at: Some(Timestamp::from_millis(1_700_003_600_000)),
        session_id: "s-1".to_owned(),
        server_time: Some(Timestamp::from_millis(1_700_000_000_000)),
    }
}

fn receipt() -> SendReceipt {
    SendReceipt {
        server_id: ServerMsgId::new("srv-1003"),
        seq: Some(Seq(301)),
        server_time: Timestamp::from_millis(1_700_000_002_000),
        duplicate: true,
    }
}

fn offline_batch() -> OfflineBatch {
    OfflineBatch {
        messages: vec![message(), direct_message()],
        left: 17,
        ack: Some(OfflineAck {
            token: "1-2".to_owned(),
        }),
    }
}

fn history_query() -> HistoryQuery {
    HistoryQuery::latest(group(), 50)
        .range(HistoryRange::Time {
            from: Timestamp::from_millis(1_600_000_000_000),
            to: Timestamp::from_millis(1_700_000_000_000),
        })
        .after_cursor(Some(PageCursor("page-2".to_owned())))
}

fn history_page() -> HistoryPage {
    HistoryPage {
        messages: vec![direct_message()],
        next: Some(PageCursor("page-3".to_owned())),
        horizon: Some(Timestamp::from_millis(1_500_000_000_000)),
    }
}

// ---- protocol version 2 (the message lifecycle) ----

/// The v1 set plus every lifecycle capability, as a version 2 server declares them.
fn capabilities_v2() -> Capabilities {
    [
        Capability::Recall,
        Capability::Edit,
        Capability::DeleteForMe,
        Capability::ReadReceiptEvents,
        Capability::MultiDevice,
        Capability::ChangeFeed,
    ]
    .into_iter()
    .fold(capabilities(), |caps, cap| caps.with(cap))
}

/// Not the default policy: every field is pinned with a value of its own.
fn lifecycle_policy() -> LifecyclePolicy {
    LifecyclePolicy {
        recall_window: Some(Duration::from_millis(120_500)),
        edit_window: None,
        edit_permission: EditPermission::AnyMember,
    }
}

fn change(kind: ChangeKind, revision: u32) -> MessageChange {
    MessageChange {
        conversation: group(),
        target: ServerMsgId::new("srv-1001"),
        kind,
        by: bob(),
        at: Timestamp::from_millis(1_700_000_003_000),
        revision,
    }
}

fn read_receipt() -> ReadReceipt {
    ReadReceipt {
        conversation: direct(),
        reader: bob(),
        up_to: ServerMsgId::new("srv-1002"),
        up_to_time: Timestamp::from_millis(1_700_000_000_456),
        at: Timestamp::from_millis(1_700_000_004_000),
    }
}

fn change_batch() -> ChangeBatch {
    ChangeBatch {
        changes: vec![
            change(ChangeKind::Edited(text()), 1),
            change(ChangeKind::Recalled, 2),
            change(ChangeKind::DeletedForMe, 3),
        ],
        receipts: vec![read_receipt()],
        next: ChangeCursor(vec![0, 7, 0xff]),
        left: 4,
    }
}

/// The frames protocol version 2 added, each with its own fixture: appended variants, so
/// the version 1 fixtures above are unchanged.
fn check_protocol_v2(f: &mut Fixtures, v: &str) {
    f.check(
        "client_frame_hello_v2",
        v,
        &ClientFrame::HelloV2 {
            version: PROTOCOL_VERSION,
        },
    );
    let requests = [
        (
            "recall",
            Request::Recall(group(), ServerMsgId::new("srv-1001")),
        ),
        (
            "edit",
            Request::Edit(group(), ServerMsgId::new("srv-1001"), custom()),
        ),
        (
            "delete_for_me",
            Request::DeleteForMe(direct(), ServerMsgId::new("srv-1002")),
        ),
        (
            "pull_changes",
            Request::PullChanges(Some(ChangeCursor(vec![1, 2, 3])), 200),
        ),
        ("pull_changes_from_end", Request::PullChanges(None, 0)),
        (
            "send_after",
            Request::SendAfter(outgoing(), ClientMsgId::new("cli-0001")),
        ),
    ];
    for (id, (kind, request)) in (11u64..).zip(requests) {
        let frame = ClientFrame::Request {
            id: id * 1000,
            request,
        };
        f.check(&format!("client_frame_request_{kind}"), v, &frame);
    }
    f.check(
        "server_frame_welcome_v2",
        v,
        &ServerFrame::WelcomeV2 {
            server: "im-vendor-sim".to_owned(),
            capabilities: capabilities_v2(),
            lifecycle: lifecycle_policy(),
            protocol: PROTOCOL_VERSION,
        },
    );
    let replies = [
        ("change", Ok(Reply::Change(change(ChangeKind::Recalled, 1)))),
        ("changes", Ok(Reply::Changes(change_batch()))),
        (
            "change_refused",
            Err(ServiceError::ChangeRefused(ChangeRefusal::WindowPassed {
                window: Duration::from_secs(120),
            })),
        ),
        (
            "change_not_allowed",
            Err(ServiceError::ChangeRefused(ChangeRefusal::NotAllowed)),
        ),
        (
            "predecessor_not_stored",
            Err(ServiceError::PredecessorNotStored(ClientMsgId::new(
                "cli-0001",
            ))),
        ),
    ];
    for (id, (kind, result)) in (11u64..).zip(replies) {
        let frame = ServerFrame::Response { id, result };
        f.check(&format!("server_frame_response_{kind}"), v, &frame);
    }
    let events = [
        (
            "message_changed",
            VendorEvent::MessageChanged(change(
                ChangeKind::Edited(Content::Text("fixed".to_owned())),
                2,
            )),
        ),
        ("read_receipt", VendorEvent::ReadReceipt(read_receipt())),
        (
            "pushed_recalled",
            VendorEvent::MessagePushed(Message {
                content: Content::Recalled {
                    by: alice(),
                    at: Timestamp::from_millis(1_700_000_005_000),
                },
                ..message()
            }),
        ),
    ];
    for (kind, event) in events {
        f.check(
            &format!("server_frame_event_{kind}"),
            v,
            &ServerFrame::Event(event),
        );
    }
}

#[test]
fn formats_match_their_golden_fixtures() {
    let v = format!("v{FORMAT_VERSION}");
    let mut f = Fixtures::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));

    // The model, as stored by the clients and the archive and carried by every frame.
    f.check("message", &v, &message());
    f.check("message_direct_text", &v, &direct_message());
    f.check("outgoing_message", &v, &outgoing());
    f.check("content_text", &v, &text());
    f.check("content_custom", &v, &custom());
    f.check("conversation_id_direct", &v, &direct());
    f.check("conversation_id_group", &v, &group());
    f.check("server_msg_id", &v, &ServerMsgId::new("srv-1001"));
    f.check("timestamp", &v, &Timestamp::from_millis(-1_234_567));
    f.check("origin_offline", &v, &Origin::Offline);
    f.check(
        "received_message",
        &v,
        &ReceivedMessage {
            message: message(),
            origin: Origin::History,
        },
    );
    f.check("capabilities", &v, &capabilities());

    // The reference protocol's frames.
    f.check("client_frame_hello", &v, &ClientFrame::Hello);
    let requests = [
        (
            "login",
            Request::Login(Credentials {
                user: alice(),
                token: Token::new("secret-token"),
            }),
        ),
        ("send", Request::Send(outgoing())),
        ("pull_offline", Request::PullOffline(200)),
        (
            "ack_offline",
            Request::AckOffline(OfflineAck {
                token: "1-2".to_owned(),
            }),
        ),
        ("pull_history", Request::PullHistory(history_query())),
        ("ping", Request::Ping),
        (
            "mark_read",
            Request::MarkRead(direct(), ServerMsgId::new("srv-1002")),
        ),
    ];
    for (id, (kind, request)) in (1u64..).zip(requests) {
        let frame = ClientFrame::Request {
            id: id * 1000,
            request,
        };
        f.check(&format!("client_frame_request_{kind}"), &v, &frame);
    }
    f.check(
        "server_frame_welcome",
        &v,
        &ServerFrame::Welcome {
            server: "im-vendor-sim".to_owned(),
            capabilities: capabilities(),
        },
    );
    let replies = [
        ("session", Ok(Reply::Session(session()))),
        ("receipt", Ok(Reply::Receipt(receipt()))),
        ("offline", Ok(Reply::Offline(offline_batch()))),
        ("history", Ok(Reply::History(history_page()))),
        ("pong", Ok(Reply::Pong)),
        (
            "error",
            Err(ServiceError::MessageTooLarge {
                size: 70_000,
                max: 65_536,
            }),
        ),
    ];
    for (id, (kind, result)) in (1u64..).zip(replies) {
        let frame = ServerFrame::Response { id, result };
        f.check(&format!("server_frame_response_{kind}"), &v, &frame);
    }
    let events = [
        ("pushed", VendorEvent::MessagePushed(message())),
        (
            "kicked",
            VendorEvent::Kicked(KickReason::Admin("maintenance".to_owned())),
        ),
        (
            "token_will_expire",
            VendorEvent::TokenWillExpire {
                expires_at: Timestamp::from_millis(1_700_003_000_000),
            },
        ),
    ];
    for (kind, event) in events {
        f.check(
            &format!("server_frame_event_{kind}"),
            &v,
            &ServerFrame::Event(event),
        );
    }
    f.check(
        "server_frame_fatal",
        &v,
        &ServerFrame::Fatal(ServiceError::RateLimited {
            retry_after: Duration::from_millis(1500),
        }),
    );

    check_protocol_v2(&mut f, &v);

    // A whole frame as it travels: 4-byte big-endian length, then the codec body.
    f.check_encoding(
        "wire_frame_ping",
        &v,
        "frame",
        &ClientFrame::Request {
            id: 7,
            request: Request::Ping,
        },
        |frame| frame_bytes(frame).map_err(|e| e.to_string()),
        |bytes| {
            let mut codec = WireCodec::<ClientFrame, ServerFrame>::default();
            let mut buf = BytesMut::from(bytes);
            match codec.decode(&mut buf) {
                Ok(Some(frame)) if buf.is_empty() => Ok(frame),
                Ok(_) => Err("not exactly one frame".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        },
    );

    // The signed callback's JSON body: a wire format outside the codec (it depends on field
    // names, not positions), versioned with the codec's version all the same.
    f.check_encoding(
        "callback_payload",
        &v,
        "json",
        &CallbackPayload::message_stored("acme-im", message()),
        |p| serde_json::to_vec(p).map_err(|e| e.to_string()),
        |b| serde_json::from_slice(b).map_err(|e| e.to_string()),
    );
    // The `message.changed` callback (issue 20), read the way a receiver reads any callback.
    f.check_encoding(
        "callback_payload_changed",
        &v,
        "json",
        &webhook::Callback::Changed(webhook::ChangePayload::message_changed(
            "acme-im",
            im_service::MessageChange {
                conversation: group(),
                target: ServerMsgId::new("srv-1001"),
                kind: im_service::ChangeKind::Edited(Content::Text("héllo ✓".to_owned())),
                by: alice(),
                at: Timestamp::from_millis(1_700_000_060_000),
                revision: 2,
            },
        )),
        |p| serde_json::to_vec(p).map_err(|e| e.to_string()),
        |b| serde_json::from_slice(b).map_err(|e| e.to_string()),
    );

    f.finish();
}
