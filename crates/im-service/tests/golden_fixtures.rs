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
    ClientFrame, Reply, Request, ServerFrame, WireCodec, frame_bytes,
};
use im_service::webhook::{self, CallbackPayload};
use im_service::{
    Capabilities, Capability, ClientMsgId, Content, ConversationId, Credentials, HistoryPage,
    HistoryQuery, HistoryRange, KickReason, Message, OfflineAck, OfflineBatch, Origin,
    OutgoingMessage, PageCursor, ReceivedMessage, SendReceipt, Seq, ServerMsgId, ServiceError,
    Session, Timestamp, Token, UserId, VendorEvent,
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
