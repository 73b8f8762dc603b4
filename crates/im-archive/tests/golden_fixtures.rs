//! Golden fixtures of what `SledArchive` writes (see `im_service::codec::golden` and the
//! key spaces in `im_archive::sled_store`): a stored message is the codec encoding of
//! `im_service::Message`, a logged change that of `im_service::MessageChange`, so a change of the model fails here until the format is versioned.
//! Create missing fixtures with `IM_BLESS_FIXTURES=1 cargo test -p im-archive --test
//! golden_fixtures`.

use im_service::codec::FORMAT_VERSION;
use im_service::codec::golden::Fixtures;
use im_service::{
    ChangeKind, ClientMsgId, Content, ConversationId, Message, MessageChange, Seq, ServerMsgId,
    Timestamp, UserId,
};

fn message(conversation: ConversationId, seq: Option<Seq>, content: Content) -> Message {
    Message {
        server_id: ServerMsgId::new("srv-1001"),
        client_id: ClientMsgId::new("cli-7"),
        conversation,
        sender: UserId::new("alice"),
        seq,
        server_time: Timestamp::from_millis(1_700_000_000_123),
        client_time: Timestamp::from_millis(-5),
        content,
    }
}

#[test]
fn stored_records_match_their_golden_fixtures() {
    let v = format!("v{FORMAT_VERSION}");
    let mut f = Fixtures::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
    // The value of an `m` entry.
    f.check(
        "stored_message_group_custom",
        &v,
        &message(
            ConversationId::group("team-42"),
            Some(Seq(300)),
            Content::Custom {
                type_tag: "app/location".to_owned(),
                payload: vec![0, 1, 2, 0x7f, 0x80, 0xff],
            },
        ),
    );
    f.check(
        "stored_message_direct_text",
        &v,
        &message(
            ConversationId::direct(&UserId::new("alice"), &UserId::new("bob")),
            None,
            Content::Text("héllo ✓".to_owned()),
        ),
    );
    // The value of an `r` entry (the change log, issue 20); an `o` entry is a message.
    let change = |kind, revision| MessageChange {
        conversation: ConversationId::group("team-42"),
        target: ServerMsgId::new("srv-1001"),
        kind,
        by: UserId::new("alice"),
        at: Timestamp::from_millis(1_700_000_060_000),
        revision,
    };
    f.check(
        "stored_change_edited",
        &v,
        &change(ChangeKind::Edited(Content::Text("héllo ✓".to_owned())), 1),
    );
    f.check(
        "stored_change_recalled",
        &v,
        &change(ChangeKind::Recalled, 2),
    );
    f.check(
        "stored_change_deleted_for_me",
        &v,
        &change(ChangeKind::DeletedForMe, u32::MAX),
    );
    f.finish();
}
