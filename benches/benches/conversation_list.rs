//! Conversation list of 10,000 conversations: opening it (building the sorted list from
//! the newest message of each conversation) and reading the first page, and updating one
//! row on a new message, against a naive sorted Vec rebuilt per change (the baseline).

// A benchmark binary: a panic is how it reports a broken invariant, and criterion macros
// generate undocumented items.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use im_arch::ConversationList;
use im_service::{
    ClientMsgId, Content, ConversationId, Message, Seq, ServerMsgId, Timestamp, UserId,
};

const CONVERSATIONS: usize = 10_000;

fn message(i: usize, t: i64) -> Message {
    Message {
        server_id: ServerMsgId::new(format!("m{i}-{t}")),
        client_id: ClientMsgId::new(format!("c{i}-{t}")),
        conversation: ConversationId::group(format!("g{i:05}")),
        sender: UserId::new("peer"),
        seq: Some(Seq(t as u64)),
        server_time: Timestamp::from_millis(t),
        client_time: Timestamp::from_millis(t),
        content: Content::text("hello"),
    }
}

fn newest() -> Vec<Message> {
    // Spread times so the order is not the insertion order.
    (0..CONVERSATIONS)
        .map(|i| message(i, ((i * 7919) % CONVERSATIONS) as i64 + 1))
        .collect()
}

fn bench(c: &mut Criterion) {
    let last = newest();
    let mut group = c.benchmark_group("conversation_list_10000");
    group.bench_function("baseline_sorted_vec_open_first_page", |b| {
        b.iter(|| {
            let mut rows: Vec<&Message> = last.iter().collect();
            rows.sort_by(|a, b| {
                b.server_time
                    .cmp(&a.server_time)
                    .then(a.conversation.cmp(&b.conversation))
            });
            black_box(rows.into_iter().take(20).count())
        })
    });
    group.bench_function("conversation_list_open_first_page", |b| {
        b.iter(|| {
            let mut list = ConversationList::new(UserId::new("me"));
            for m in &last {
                list.on_message(m);
            }
            black_box(list.page(0, 20).len())
        })
    });
    let mut list = ConversationList::new(UserId::new("me"));
    for m in &last {
        list.on_message(m);
    }
    let mut t = CONVERSATIONS as i64 * 10;
    group.bench_function("conversation_list_update_one_row_then_first_page", |b| {
        b.iter(|| {
            t += 1;
            list.on_message(&message((t as usize) % CONVERSATIONS, t));
            black_box(list.page(0, 20).len())
        })
    });
    let mut rows: Vec<Message> = last.clone();
    group.bench_function("baseline_sorted_vec_update_one_row_then_first_page", |b| {
        b.iter(|| {
            t += 1;
            let i = (t as usize) % CONVERSATIONS;
            rows[i] = message(i, t);
            let mut sorted: Vec<&Message> = rows.iter().collect();
            sorted.sort_by(|a, b| {
                b.server_time
                    .cmp(&a.server_time)
                    .then(a.conversation.cmp(&b.conversation))
            });
            black_box(sorted.into_iter().take(20).count())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
