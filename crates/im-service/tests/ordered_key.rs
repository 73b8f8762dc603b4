//! Property test of `im_service::ordered_key`: for the key tuples both sled stores use, byte
//! order of the keys is the order of the values, and every key decodes back to its value.
//! Times include the extremes and the values around zero; strings and ids are drawn from an
//! alphabet rich in separators, `0x00` and `0xff`, so ties and prefix relations are common.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Ordering;

use im_service::ordered_key::{
    KeyReader, push_i64_base128, push_i64_be, push_len_prefixed_u16, push_len_prefixed_u32,
    push_opt_u64_base128, push_tail, push_u64_be,
};
use proptest::prelude::*;

/// Times with the extremes and the values next to zero over-represented.
fn time() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MIN + 1),
        Just(-1),
        Just(0),
        Just(1),
        Just(i64::MAX - 1),
        Just(i64::MAX),
        -3i64..3,
        any::<i64>(),
    ]
}

fn seq() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        Just(None),
        Just(Some(0)),
        Just(Some(u64::MAX)),
        (0u64..3).prop_map(Some),
        any::<u64>().prop_map(Some),
    ]
}

/// Bytes that are mostly separators and extremes: `0x00`, `0xff`, `|`, `:`, `\0`-adjacent.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(0x00u8),
            Just(0x01),
            Just(0xff),
            Just(0xfe),
            Just(b'|'),
            Just(b':'),
            Just(b'a'),
            any::<u8>(),
        ],
        0..6,
    )
}

/// A length-prefixed component orders by length, then bytewise.
fn prefixed_order(a: &[u8], b: &[u8]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// `im-arch`'s `messages` key: conversation (u32 length), time and sequence (base 128), id.
#[derive(Debug, Clone)]
struct ClientKey {
    conversation: Vec<u8>,
    time: i64,
    seq: Option<u64>,
    id: Vec<u8>,
}

impl ClientKey {
    fn encode(&self) -> Vec<u8> {
        let mut k = Vec::new();
        push_len_prefixed_u32(&mut k, &self.conversation).expect("short components");
        push_i64_base128(&mut k, self.time);
        push_opt_u64_base128(&mut k, self.seq);
        push_tail(&mut k, &self.id);
        k
    }

    fn order(&self, o: &Self) -> Ordering {
        prefixed_order(&self.conversation, &o.conversation)
            .then(self.time.cmp(&o.time))
            .then(self.seq.cmp(&o.seq))
            .then_with(|| self.id.cmp(&o.id))
    }
}

fn client_key() -> impl Strategy<Value = ClientKey> {
    (bytes(), time(), seq(), bytes()).prop_map(|(conversation, time, seq, id)| ClientKey {
        conversation,
        time,
        seq,
        id,
    })
}

/// `im-archive`'s message key: tag, conversation (u16 length), time (base 128 in schema 2,
/// big-endian in schema 1, which its migration reads), id.
#[derive(Debug, Clone)]
struct ArchiveKey {
    conversation: Vec<u8>,
    time: i64,
    id: Vec<u8>,
}

impl ArchiveKey {
    fn encode(&self, schema: u32) -> Vec<u8> {
        let mut k = vec![b'm'];
        push_len_prefixed_u16(&mut k, &self.conversation).expect("short components");
        if schema == 1 {
            push_i64_be(&mut k, self.time);
        } else {
            push_i64_base128(&mut k, self.time);
        }
        push_tail(&mut k, &self.id);
        k
    }

    fn order(&self, o: &Self) -> Ordering {
        prefixed_order(&self.conversation, &o.conversation)
            .then(self.time.cmp(&o.time))
            .then_with(|| self.id.cmp(&o.id))
    }
}

fn archive_key() -> impl Strategy<Value = ArchiveKey> {
    (bytes(), time(), bytes()).prop_map(|(conversation, time, id)| ArchiveKey {
        conversation,
        time,
        id,
    })
}

/// `im-arch`'s `outbox` and `journal` keys: a position (u64 big-endian), then an id.
fn position_key(position: u64, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::new();
    push_u64_be(&mut k, position);
    push_tail(&mut k, id);
    k
}

fn position() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(1 << 63),
        0u64..3,
        any::<u64>()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn client_keys_sort_like_their_values_and_decode(
        keys in proptest::collection::vec(client_key(), 2..12),
    ) {
        let encoded: Vec<Vec<u8>> = keys.iter().map(ClientKey::encode).collect();
        for (a, ka) in keys.iter().zip(&encoded) {
            for (b, kb) in keys.iter().zip(&encoded) {
                prop_assert_eq!(ka.cmp(kb), a.order(b), "{:?} vs {:?}", a, b);
            }
            let mut r = KeyReader::new(ka);
            prop_assert_eq!(r.len_prefixed_u32(), Some(&a.conversation[..]));
            // The time and sequence never contain a byte above 0x7f (see the module doc).
            let order_part = &ka[4 + a.conversation.len()..ka.len() - a.id.len()];
            prop_assert!(order_part.iter().all(|&b| b <= 0x7f));
            prop_assert_eq!(r.i64_base128(), Some(a.time));
            prop_assert_eq!(r.opt_u64_base128(), Some(a.seq));
            prop_assert_eq!(r.tail(), &a.id[..]);
        }
    }

    #[test]
    fn archive_keys_sort_like_their_values_and_decode(
        keys in proptest::collection::vec(archive_key(), 2..12),
        schema in 1u32..=2,
    ) {
        let encoded: Vec<Vec<u8>> = keys.iter().map(|k| k.encode(schema)).collect();
        for (a, ka) in keys.iter().zip(&encoded) {
            for (b, kb) in keys.iter().zip(&encoded) {
                prop_assert_eq!(ka.cmp(kb), a.order(b), "{:?} vs {:?}", a, b);
            }
            let mut r = KeyReader::new(ka);
            prop_assert_eq!(r.byte(), Some(b'm'));
            prop_assert_eq!(r.len_prefixed_u16(), Some(&a.conversation[..]));
            let time = if schema == 1 { r.i64_be() } else { r.i64_base128() };
            prop_assert_eq!(time, Some(a.time));
            prop_assert_eq!(r.tail(), &a.id[..]);
        }
    }

    #[test]
    fn position_keys_sort_like_their_values_and_decode(
        keys in proptest::collection::vec((position(), bytes()), 2..12),
    ) {
        let encoded: Vec<Vec<u8>> = keys.iter().map(|(p, id)| position_key(*p, id)).collect();
        for (a, ka) in keys.iter().zip(&encoded) {
            for (b, kb) in keys.iter().zip(&encoded) {
                prop_assert_eq!(ka.cmp(kb), a.cmp(b));
            }
            let mut r = KeyReader::new(ka);
            prop_assert_eq!(r.u64_be(), Some(a.0));
            prop_assert_eq!(r.tail(), &a.1[..]);
        }
    }

    /// A range scan of one conversation (prefix) never reaches another conversation's keys.
    #[test]
    fn no_conversation_prefix_is_a_prefix_of_another(a in bytes(), b in bytes()) {
        prop_assume!(a != b);
        let (mut ka, mut kb) = (Vec::new(), Vec::new());
        push_len_prefixed_u32(&mut ka, &a).unwrap();
        push_len_prefixed_u32(&mut kb, &b).unwrap();
        prop_assert!(!ka.starts_with(&kb) && !kb.starts_with(&ka));
    }

    /// Arbitrary bytes never panic a reader, and what decodes re-encodes to the same bytes.
    #[test]
    fn arbitrary_keys_decode_canonically_or_not_at_all(
        raw in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut r = KeyReader::new(&raw);
        if let (Some(c), Some(t), Some(s)) = (r.len_prefixed_u32(), r.i64_base128(), r.opt_u64_base128()) {
            let again = ClientKey { conversation: c.to_vec(), time: t, seq: s, id: r.tail().to_vec() };
            prop_assert_eq!(again.encode(), raw);
        }
    }
}
