//! Golden fixtures of every value `SledStore` writes (see `im_service::codec::golden` and
//! the table in `im_arch::sled_store`): encoding a canonical value today must give exactly
//! the checked-in bytes of the current version, and every checked-in version must still
//! decode. A fixture's version names both the codec's format version and the store's
//! `SCHEMA_VERSION`. Create missing fixtures with `IM_BLESS_FIXTURES=1 cargo test -p im-arch
//! --test golden_fixtures`.

use im_arch::{
    ConversationState, MessageRevision, OutboxItem, SCHEMA_VERSION, SendStatus, SyncCursor,
};
use im_service::codec::FORMAT_VERSION;
use im_service::codec::golden::Fixtures;
use im_service::{
    ChangeCursor, ChangeKind, ClientMsgId, Content, ConversationId, Message, MessageChange, Origin,
    OutgoingMessage, ReadReceipt, Seq, ServerMsgId, Timestamp, UserId,
};

fn group() -> ConversationId {
    ConversationId::group("team-42")
}

fn direct() -> ConversationId {
    ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"))
}

fn outgoing() -> OutgoingMessage {
    OutgoingMessage {
        client_id: ClientMsgId::new("cli-9"),
        conversation: direct(),
        content: Content::Text("héllo ✓".to_owned()),
        client_time: Timestamp::from_millis(1_700_000_001_000),
    }
}

fn outbox_item(position: u64, status: SendStatus) -> OutboxItem {
    OutboxItem {
        position,
        message: outgoing(),
        status,
        attempts: 3,
    }
}

#[test]
fn stored_values_match_their_golden_fixtures() {
    let v = format!("v{FORMAT_VERSION}-schema{SCHEMA_VERSION}");
    let mut f = Fixtures::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));

    // `messages`: the message itself.
    f.check(
        "message",
        &v,
        &Message {
            server_id: ServerMsgId::new("srv-1001"),
            client_id: ClientMsgId::new("cli-7"),
            conversation: group(),
            sender: UserId::new("alice"),
            seq: Some(Seq(300)),
            server_time: Timestamp::from_millis(1_700_000_000_123),
            client_time: Timestamp::from_millis(-5),
            content: Content::Custom {
                type_tag: "app/location".to_owned(),
                payload: vec![0, 1, 2, 0x7f, 0x80, 0xff],
            },
        },
    );
    // `by_server_id`: the `messages` key, a byte string.
    f.check("message_key", &v, &vec![0u8, 0, 0, 3, 1, 0x7f, 0x80, 0xff]);
    // `cursors`: keyed by the conversation's encoding, valued by a cursor; the in-flight ids.
    f.check("conversation_id_direct", &v, &direct());
    f.check("conversation_id_group", &v, &group());
    f.check(
        "sync_cursor",
        &v,
        &SyncCursor {
            seq: Some(Seq(299)),
            time: Timestamp::from_millis(1_700_000_000_000),
        },
    );
    f.check("sync_cursor_default", &v, &SyncCursor::default());
    f.check(
        "in_flight",
        &v,
        &vec![ServerMsgId::new("srv-1001"), ServerMsgId::new("srv-1002")],
    );
    // `outbox` and `outbox_ids`.
    f.check(
        "outbox_item_sending",
        &v,
        &outbox_item(1, SendStatus::Sending),
    );
    f.check(
        "outbox_item_sent",
        &v,
        &outbox_item(
            2,
            SendStatus::Sent {
                server_id: ServerMsgId::new("srv-1003"),
                seq: Some(Seq(301)),
            },
        ),
    );
    f.check(
        "outbox_item_failed",
        &v,
        &outbox_item(
            u64::MAX,
            SendStatus::Failed {
                reason: "message too large".to_owned(),
                recoverable: false,
            },
        ),
    );
    f.check("outbox_position", &v, &70_000u64);
    // `journal`: entries, subscription positions and the head (both `u64`).
    f.check(
        "journal_entry",
        &v,
        &(ServerMsgId::new("srv-1001"), Origin::Offline),
    );
    f.check("journal_position", &v, &1_234_567u64);
    // `conversations`.
    f.check(
        "conversation_state",
        &v,
        &ConversationState {
            id: group(),
            pinned: true,
            muted: true,
            draft: Some((
                "unsent text".to_owned(),
                Timestamp::from_millis(1_700_000_003_000),
            )),
            read_up_to: Some((
                Timestamp::from_millis(1_700_000_000_123),
                ServerMsgId::new("srv-1001"),
            )),
        },
    );
    f.check(
        "conversation_state_default",
        &v,
        &ConversationState {
            id: direct(),
            pinned: false,
            muted: false,
            draft: None,
            read_up_to: None,
        },
    );
    // `meta`: the schema version and the sync mark.
    f.check("schema_version", &v, &SCHEMA_VERSION);
    f.check("sync_mark", &v, &Timestamp::from_millis(1_700_000_000_456));

    // The message lifecycle (issue 20, new trees, same schema): `revisions`,
    // `pending_changes`, `receipts` and the change feed's cursor in `meta`.
    f.check(
        "message_revision",
        &v,
        &MessageRevision {
            revision: 3,
            edited_at: Some(Timestamp::from_millis(1_700_000_004_000)),
            deleted: false,
        },
    );
    f.check(
        "message_revision_deleted",
        &v,
        &MessageRevision {
            revision: 1,
            edited_at: None,
            deleted: true,
        },
    );
    let change = |kind, revision| MessageChange {
        conversation: group(),
        target: ServerMsgId::new("srv-1001"),
        kind,
        by: UserId::new("alice"),
        at: Timestamp::from_millis(1_700_000_005_000),
        revision,
    };
    f.check(
        "pending_changes",
        &v,
        &vec![
            change(ChangeKind::Edited(Content::text("fixed ✓")), 2),
            change(ChangeKind::Recalled, 3),
            change(ChangeKind::DeletedForMe, 4),
        ],
    );
    f.check(
        "read_receipt",
        &v,
        &ReadReceipt {
            conversation: direct(),
            reader: UserId::new("bob"),
            up_to: ServerMsgId::new("srv-1001"),
            up_to_time: Timestamp::from_millis(1_700_000_000_123),
            at: Timestamp::from_millis(1_700_000_006_000),
        },
    );
    f.check("change_cursor", &v, &ChangeCursor(vec![0, 1, 0x7f, 0xff]));

    f.finish();
}
