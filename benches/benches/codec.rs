//! Codec benchmark: the workspace codec (version byte + size limit + trailing-byte check)
//! against raw bincode 2 on the same message, in the same run.

// A benchmark binary: a panic is how it reports a broken invariant, and criterion macros
// generate undocumented items.
#![allow(clippy::unwrap_used, missing_docs)]
use criterion::{Criterion, criterion_group, criterion_main};
use im_service::{
    ClientMsgId, Content, ConversationId, Message, Seq, ServerMsgId, Timestamp, UserId, codec,
};
use std::hint::black_box;

fn sample() -> Message {
    let (a, b) = (UserId::new("alice"), UserId::new("bob"));
    Message {
        server_id: ServerMsgId::new("m:123456"),
        client_id: ClientMsgId::new("c0123456789abcdef"),
        conversation: ConversationId::direct(&a, &b),
        sender: a,
        seq: Some(Seq(42)),
        server_time: Timestamp::from_millis(1_764_000_000_000),
        client_time: Timestamp::from_millis(1_764_000_000_000),
        content: Content::text("x".repeat(100)),
    }
}

fn bench(c: &mut Criterion) {
    let msg = sample();
    let mut group = c.benchmark_group("codec_roundtrip_104B_message");
    group.bench_function("baseline_raw_bincode", |b| {
        let cfg = bincode::config::standard();
        b.iter(|| {
            let bytes = bincode::serde::encode_to_vec(black_box(&msg), cfg).unwrap();
            let (back, _): (Message, usize) =
                bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            back
        })
    });
    group.bench_function("im_service_codec", |b| {
        b.iter(|| {
            let bytes = codec::encode(black_box(&msg)).unwrap();
            codec::decode::<Message>(&bytes).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
