//! The sled archive's key layout: paging backwards through thousands of messages at extreme
//! and near-zero times (which crashed sled's reverse iterator with schema 1's big-endian
//! times), and the migration of a schema 1 store written byte for byte as earlier builds did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use im_archive::store::members_of;
use im_archive::{ArchiveStore, MemoryArchive, PageQuery, SledArchive, Stored};
use im_service::codec;
use im_service::{
    ClientMsgId, Content, ConversationId, GroupId, Message, ServerMsgId, Timestamp, UserId,
};

fn msg(conversation: &ConversationId, id: &str, time: i64) -> Message {
    Message {
        server_id: ServerMsgId::new(id),
        client_id: ClientMsgId::new(format!("c-{id}")),
        conversation: conversation.clone(),
        sender: UserId::new("alice"),
        seq: None,
        server_time: Timestamp::from_millis(time),
        client_time: Timestamp::from_millis(0),
        content: Content::text(format!("body of {id}")),
    }
}

/// Every message of `conversation`, newest first, a page of `limit` at a time.
async fn read_all(
    store: &dyn ArchiveStore,
    conversation: &ConversationId,
    limit: usize,
) -> Vec<Message> {
    let mut q = PageQuery {
        conversation: conversation.clone(),
        from: Timestamp::from_millis(i64::MIN),
        to: Timestamp::from_millis(i64::MAX),
        before: None,
        limit,
    };
    let mut out = Vec::new();
    loop {
        let page = store.page(&q).await.unwrap();
        out.extend(page.messages);
        match page.next {
            Some(next) => q.before = Some(next),
            None => return out,
        }
    }
}

const TIMES: [i64; 9] = [
    i64::MIN,
    -256,
    -2,
    -1,
    0,
    1,
    255,
    1_700_000_000_000,
    i64::MAX,
];

/// Thousands of messages (so sled splits nodes) at extreme and near-zero times.
fn many(conversation: &ConversationId, round: u64) -> Vec<Message> {
    (0..4000u64)
        .map(|i| {
            let time = TIMES[((i * 7 + round) % TIMES.len() as u64) as usize];
            let id = format!("{:x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (round * 8));
            msg(conversation, &id, time)
        })
        .collect()
}

#[tokio::test]
async fn paging_backwards_through_thousands_of_extreme_times_matches_memory() {
    let c = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    for round in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let sled = SledArchive::open(dir.path()).unwrap();
        let memory = MemoryArchive::new();
        for chunk in many(&c, round).chunks(100) {
            sled.store("ref", chunk).await.unwrap();
            memory.store("ref", chunk).await.unwrap();
        }
        let want = read_all(&memory, &c, 7).await;
        assert!(want.len() > 3000);
        assert_eq!(read_all(&sled, &c, 7).await, want, "round {round}");
    }
}

/// Writes `messages` into `dir` exactly as schema 1 builds did (tree `archive`, big-endian
/// times).
fn write_schema_1(dir: &std::path::Path, vendor: &str, messages: &[Message]) {
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree("archive").unwrap();
    let mut count = 0u64;
    for m in messages {
        let name = m.conversation.to_string();
        let mut key = vec![b'm'];
        key.extend_from_slice(&(name.len() as u16).to_be_bytes());
        key.extend_from_slice(name.as_bytes());
        key.extend_from_slice(&((m.server_time.as_millis() as u64) ^ (1 << 63)).to_be_bytes());
        key.extend_from_slice(m.server_id.as_str().as_bytes());
        let mut id = vec![b'i'];
        id.extend_from_slice(vendor.as_bytes());
        id.push(0);
        id.extend_from_slice(m.server_id.as_str().as_bytes());
        if tree.insert(&id, key.as_slice()).unwrap().is_some() {
            continue;
        }
        tree.insert(&key, codec::encode(m).unwrap()).unwrap();
        let mut known = vec![b'c'];
        known.extend_from_slice(name.as_bytes());
        tree.insert(known, &[]).unwrap();
        for u in members_of(m) {
            let mut member = vec![b'u'];
            member.extend_from_slice(u.as_str().as_bytes());
            member.push(0);
            member.extend_from_slice(name.as_bytes());
            tree.insert(member, &[]).unwrap();
        }
        count += 1;
    }
    tree.insert(b"#count", &count.to_be_bytes()).unwrap();
    db.flush().unwrap();
}

#[tokio::test]
async fn a_schema_1_store_is_migrated_on_open_and_reads_the_same() {
    let direct = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let group = ConversationId::Group(GroupId::new("team"));
    let mut messages = Vec::new();
    for (i, time) in TIMES.iter().enumerate() {
        messages.push(msg(&direct, &format!("d{i}"), *time));
        messages.push(msg(&group, &format!("g{i}"), *time));
        // A tie on time, broken by id.
        messages.push(msg(&direct, &format!("e{i}"), *time));
    }
    let dir = tempfile::tempdir().unwrap();
    write_schema_1(dir.path(), "ref", &messages);
    let memory = MemoryArchive::new();
    memory.store("ref", &messages).await.unwrap();

    for _open in 0..2 {
        // The first open migrates, the second finds schema 2.
        let sled = SledArchive::open(dir.path()).unwrap();
        for c in [&direct, &group] {
            for limit in [1, 4, 100] {
                assert_eq!(
                    read_all(&sled, c, limit).await,
                    read_all(&memory, c, limit).await
                );
            }
            assert!(sled.knows(c).await.unwrap());
        }
        assert_eq!(sled.len().await.unwrap(), messages.len() as u64);
        assert_eq!(
            sled.conversations_of(&UserId::new("bob")).await.unwrap(),
            vec![direct.clone()]
        );
        assert!(
            sled.is_known_member(&UserId::new("alice"), &group)
                .await
                .unwrap()
        );
        // The id index moved too: redeliveries are still duplicates.
        assert_eq!(
            sled.store("ref", &messages[..2]).await.unwrap(),
            vec![Stored::Duplicate, Stored::Duplicate]
        );
        drop(sled);
    }
    let db = sled::open(dir.path()).unwrap();
    let names: Vec<String> = db
        .tree_names()
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    assert!(!names.contains(&"archive".to_owned()), "{names:?}");
    assert!(names.contains(&"archive.v2".to_owned()), "{names:?}");
}

#[test]
fn a_store_of_a_newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("archive.v2").unwrap();
        tree.insert(b"#schema", &3u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = SledArchive::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("schema version 3"), "{err}");
    let db = sled::open(dir.path()).unwrap();
    let tree = db.open_tree("archive.v2").unwrap();
    assert_eq!(tree.len(), 1);
}
