//! The workspace's one binary codec: a format-version byte followed by a bincode 2 body,
//! with a size limit. Every binary encoding in im-layers (wire frames, store entries) goes
//! through here, so a later switch of serializer touches this file only. What it writes is
//! pinned by golden fixtures ([`golden`]).
//!
//! ```
//! use im_service::codec::{decode, encode};
//!
//! let bytes = encode(&("hello", 42u32))?;
//! assert_eq!(bytes[0], im_service::codec::FORMAT_VERSION);
//! let back: (String, u32) = decode(&bytes)?;
//! assert_eq!(back, ("hello".to_string(), 42));
//! # Ok::<(), im_service::CodecError>(())
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod golden;

/// Version byte written in front of every encoding. Bump it (and keep a decoder for the
/// old value) whenever the serializer or its configuration changes, or the encoding of a
/// type written with it changes (bincode is positional: adding, removing or reordering a
/// field changes the bytes). The [`golden`] fixtures of each crate fail on a change of the
/// bytes made without a new version.
pub const FORMAT_VERSION: u8 = 1;

/// Largest encoding accepted or produced, version byte included (16 MiB).
pub const MAX_ENCODED_LEN: usize = 16 * 1024 * 1024;

/// Why bytes could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum CodecError {
    /// Zero bytes: not even a version byte.
    #[error("empty input: no format version byte")]
    Empty,
    /// The version byte names a format this build cannot read.
    #[error("unknown format version {found} (this build reads {FORMAT_VERSION})")]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// Input or output exceeds the size limit.
    #[error("encoding of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// Length of the input, or a lower bound for output.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The input ended in the middle of a value.
    #[error("truncated input: needed more bytes")]
    Truncated,
    /// The bytes after the value were not consumed.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// The bytes do not describe a value of the expected type.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// The value cannot be encoded (e.g. a serde error from a custom type).
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// The bincode configuration: standard varint encoding with the body limit, so a length
/// prefix inside a malicious frame cannot make the decoder allocate past it.
fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ MAX_ENCODED_LEN - 1 }>,
> {
    bincode::config::standard().with_limit::<{ MAX_ENCODED_LEN - 1 }>()
}

/// Encodes `value` as version byte + body.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Appends the encoding of `value` to `out` (lets framing code reuse one buffer).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.push(FORMAT_VERSION);
    // bincode enforces the limit only when decoding, so the encoder checks the length itself.
    let result = bincode::serde::encode_into_std_write(value, out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))
        .and_then(|_| {
            let len = out.len() - start;
            if len > MAX_ENCODED_LEN {
                Err(CodecError::Oversized {
                    len,
                    max: MAX_ENCODED_LEN,
                })
            } else {
                Ok(())
            }
        });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Decodes a value encoded by [`encode`]. Never panics on any input.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if bytes.len() > MAX_ENCODED_LEN {
        return Err(CodecError::Oversized {
            len: bytes.len(),
            max: MAX_ENCODED_LEN,
        });
    }
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { found: version });
    }
    let (value, used) = decode_body::<T>(body).map_err(|e| map_decode_error(e, body.len()))?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - used));
    }
    Ok(value)
}

/// What a valid body of `len` bytes can claim at most (see [`decode_body`]).
fn claim_bound(len: usize) -> usize {
    len.saturating_mul(CLAIM_RATIO).saturating_add(64)
}

/// bincode counts a "claim" for every value it decodes: a string's or byte vector's length,
/// a primitive's in-memory size. A claim is never more than this many times the bytes it
/// was read from (a `u128` from a 1-byte varint), so a valid body of `n` bytes never claims
/// more than [`claim_bound`]`(n)`.
const CLAIM_RATIO: usize = 16;

/// Decodes a body with a claim limit tied to its length: the smallest of a few tiers (each
/// 8 times the last, up to the codec's limit) above [`claim_bound`]. A valid body never
/// meets its limit; a short hostile body whose length prefix claims megabytes (bincode
/// allocates a string's claimed length before reading it) is refused before allocating,
/// so decoding `n` bytes allocates at most about 128 `n` bytes plus serde's cautious
/// preallocation of sequences (at most 1 MiB each). Found by `tests/fuzz_decoders.rs`: a
/// 493-byte frame made the decoder allocate 4 MiB (up to 16 MiB was possible).
fn decode_body<T: DeserializeOwned>(
    body: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    let need = claim_bound(body.len());
    macro_rules! with_limit {
        ($limit:expr) => {
            bincode::serde::decode_from_slice::<T, _>(
                body,
                bincode::config::standard().with_limit::<{ $limit }>(),
            )
        };
    }
    if need <= 2 << 10 {
        with_limit!(2 << 10)
    } else if need <= 16 << 10 {
        with_limit!(16 << 10)
    } else if need <= 128 << 10 {
        with_limit!(128 << 10)
    } else if need <= 1 << 20 {
        with_limit!(1 << 20)
    } else if need <= 8 << 20 {
        with_limit!(8 << 20)
    } else {
        bincode::serde::decode_from_slice::<T, _>(body, config())
    }
}

fn map_decode_error(e: bincode::error::DecodeError, body_len: usize) -> CodecError {
    use bincode::error::DecodeError as D;
    match e {
        D::UnexpectedEnd { .. } => CodecError::Truncated,
        // Under the codec's own limit: the value is too large for any input.
        D::LimitExceeded if claim_bound(body_len) > 8 << 20 => CodecError::Oversized {
            len: MAX_ENCODED_LEN,
            max: MAX_ENCODED_LEN,
        },
        // Under a tier's limit: a length claims more bytes than the input holds.
        D::LimitExceeded => CodecError::Truncated,
        other => CodecError::Malformed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{Capabilities, Capability};
    use crate::model::*;
    use crate::vendor::*;
    use proptest::prelude::*;
    use std::fmt::Debug;
    use std::time::Duration;

    fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + Debug>(v: &T) {
        let bytes = encode(v).unwrap();
        let back: T = decode(&bytes).unwrap();
        assert_eq!(&back, v);
        // Every strict prefix is rejected with a typed error, never a panic or a wrong value.
        for cut in 0..bytes.len() {
            assert!(
                decode::<T>(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
    }

    fn user() -> impl Strategy<Value = UserId> {
        "[a-z]{1,8}".prop_map(UserId::new)
    }

    fn conversation() -> impl Strategy<Value = ConversationId> {
        prop_oneof![
            (user(), user()).prop_map(|(a, b)| ConversationId::direct(&a, &b)),
            "[a-z0-9]{1,8}".prop_map(ConversationId::group),
        ]
    }

    fn content() -> impl Strategy<Value = Content> {
        prop_oneof![
            any::<String>().prop_map(Content::Text),
            (
                "[a-z-]{0,12}",
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(type_tag, payload)| Content::Custom { type_tag, payload }),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            "[a-z0-9]{1,12}",
            "[a-z0-9]{1,12}",
            conversation(),
            user(),
            proptest::option::of(any::<u64>()),
            any::<i64>(),
            any::<i64>(),
            content(),
        )
            .prop_map(
                |(sid, cid, conversation, sender, seq, st, ct, content)| Message {
                    server_id: ServerMsgId::new(sid),
                    client_id: ClientMsgId::new(cid),
                    conversation,
                    sender,
                    seq: seq.map(Seq),
                    server_time: Timestamp::from_millis(st),
                    client_time: Timestamp::from_millis(ct),
                    content,
                },
            )
    }

    fn range() -> impl Strategy<Value = HistoryRange> {
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
            (any::<i64>(), any::<i64>()).prop_map(|(f, t)| HistoryRange::Time {
                from: Timestamp::from_millis(f),
                to: Timestamp::from_millis(t)
            }),
        ]
    }

    proptest! {
        #[test]
        fn message_roundtrips(m in message()) { roundtrip(&m); }

        #[test]
        fn outgoing_roundtrips(m in message()) {
            roundtrip(&OutgoingMessage {
                client_id: m.client_id, conversation: m.conversation,
                content: m.content, client_time: m.client_time,
            });
        }

        #[test]
        fn received_roundtrips(m in message(), o in prop_oneof![Just(Origin::Online), Just(Origin::Offline), Just(Origin::History)]) {
            roundtrip(&ReceivedMessage { message: m, origin: o });
        }

        #[test]
        fn history_query_roundtrips(c in proptest::option::of(conversation()), r in range(),
                                    cur in proptest::option::of("[ -~]{0,20}"), limit in any::<u32>()) {
            roundtrip(&HistoryQuery {
                scope: c.map_or(HistoryScope::All, HistoryScope::Conversation),
                range: r, cursor: cur.map(PageCursor), limit,
            });
        }

        #[test]
        fn pages_and_batches_roundtrip(ms in proptest::collection::vec(message(), 0..6), left in any::<u64>(),
                                       h in proptest::option::of(any::<i64>())) {
            roundtrip(&HistoryPage { messages: ms.clone(), next: Some(PageCursor("x".into())),
                                     horizon: h.map(Timestamp::from_millis) });
            roundtrip(&OfflineBatch { messages: ms, left, ack: Some(OfflineAck { token: "1-2".into() }) });
        }

        #[test]
        fn events_receipts_sessions_roundtrip(m in message(), dup in any::<bool>(), t in any::<i64>(), u in user()) {
            for ev in [VendorEvent::MessagePushed(m.clone()), VendorEvent::ConnectionLost { reason: "x".into() },
                       VendorEvent::Kicked(crate::KickReason::LoggedInElsewhere), VendorEvent::TokenExpired,
                       VendorEvent::TokenWillExpire { expires_at: Timestamp::from_millis(t) }] {
                roundtrip(&ev);
            }
            roundtrip(&SendReceipt { server_id: m.server_id, seq: m.seq, server_time: m.server_time, duplicate: dup });
            roundtrip(&Session { user: u.clone(), token_expires_at: Some(Timestamp::from_millis(t)), session_id: "s".into(), server_time: Some(Timestamp::from_millis(t)) });
            roundtrip(&Credentials { user: u, token: Token::new("secret") });
        }

        #[test]
        fn capabilities_roundtrip(bits in proptest::collection::vec(any::<bool>(), 12), ret in proptest::option::of(any::<u32>())) {
            let mut caps = Capabilities::none().with_retention(ret.map(|s| Duration::from_secs(s.into())));
            for (cap, on) in Capability::ALL.iter().zip(bits) { if on { caps = caps.with(*cap); } }
            roundtrip(&caps);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Message>(&bytes);
            let _ = decode::<VendorEvent>(&bytes);
            let _ = decode::<HistoryQuery>(&bytes);
        }
    }

    #[test]
    fn empty_input_is_typed() {
        assert_eq!(decode::<u32>(&[]), Err(CodecError::Empty));
    }

    #[test]
    fn wrong_version_is_typed() {
        let mut bytes = encode(&7u32).unwrap();
        bytes[0] = FORMAT_VERSION + 1;
        assert_eq!(
            decode::<u32>(&bytes),
            Err(CodecError::UnknownVersion {
                found: FORMAT_VERSION + 1
            })
        );
    }

    #[test]
    fn truncated_input_is_typed() {
        let bytes = encode(&"a longer string value".to_string()).unwrap();
        assert_eq!(decode::<String>(&bytes[..5]), Err(CodecError::Truncated));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert_eq!(decode::<u32>(&bytes), Err(CodecError::TrailingBytes(1)));
    }

    #[test]
    fn oversized_input_is_rejected_before_decoding() {
        let mut bytes = vec![0u8; MAX_ENCODED_LEN + 1];
        bytes[0] = FORMAT_VERSION;
        assert_eq!(
            decode::<Vec<u8>>(&bytes),
            Err(CodecError::Oversized {
                len: MAX_ENCODED_LEN + 1,
                max: MAX_ENCODED_LEN
            })
        );
    }

    #[test]
    fn oversized_value_is_not_encoded() {
        let big = vec![0u8; MAX_ENCODED_LEN];
        assert!(matches!(encode(&big), Err(CodecError::Oversized { .. })));
    }

    #[test]
    fn length_prefix_bomb_is_rejected_without_allocating() {
        // Version byte, then a varint claiming a u64::MAX-long byte vector.
        let bytes = [
            FORMAT_VERSION,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
        ];
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }

    #[test]
    fn short_input_claiming_a_long_string_is_truncated() {
        // Version byte, a varint claiming a 4 MiB string (252 = u32 follows), 3 bytes of it.
        let mut bytes = vec![FORMAT_VERSION, 252];
        bytes.extend_from_slice(&(4u32 << 20).to_le_bytes());
        bytes.extend_from_slice(b"abc");
        assert_eq!(decode::<String>(&bytes), Err(CodecError::Truncated));
    }

    #[test]
    fn claims_of_valid_values_stay_under_the_tier_limits() {
        // The worst claim ratio: u128 (16 bytes claimed per 1-byte varint), at every tier edge.
        for n in [1usize, 100, 127, 128, 1000, 1023, 1024, 8191, 8192, 70_000] {
            let v = vec![0u128; n];
            let bytes = encode(&v).unwrap();
            assert_eq!(decode::<Vec<u128>>(&bytes).unwrap(), v, "{n} u128s");
        }
    }
}
