//! Order-preserving key encoding for the sled stores of `im-arch` and `im-archive`: keys
//! whose byte order (what sled sorts by) is the order of the values they encode, so a page
//! of history is one range scan.
//!
//! A key is a sequence of components written with the `push_*` functions and read back with
//! a [`KeyReader`]. Every component but the last is *prefix-free* (fixed width, or a length
//! followed by that many bytes), so comparing two keys byte by byte compares their
//! components in turn, and the last component ([`push_tail`]) may hold any bytes, `0x00`
//! and `0xff` included. Byte order of a key is therefore the order of the tuple
//! `(component₁, component₂, …)` where each component orders as:
//!
//! | writer | value | orders as |
//! |---|---|---|
//! | [`push_u64_be`] | `u64`, 8 bytes big-endian | numerically |
//! | [`push_i64_be`] | `i64`, sign bit flipped, 8 bytes big-endian | numerically (negatives first) |
//! | [`push_u64_base128`] | `u64` as 10 base-128 digits, one per byte (`0x00..=0x7f`) | numerically |
//! | [`push_i64_base128`] | `i64`, sign bit flipped, as 10 base-128 digits | numerically |
//! | [`push_opt_u64_base128`] | `Option<u64>`: `0x00` + 10 zero digits, or `0x01` + digits | `None` first, then numerically (as `Option`) |
//! | [`push_len_prefixed_u16`], [`push_len_prefixed_u32`] | bytes after their length (big-endian) | by length, then bytewise |
//! | [`push_tail`] | the rest of the key | bytewise |
//!
//! Times are written in **base 128** by both stores: sled 0.34's reverse iterator steps to
//! the previous node by guessing a predecessor of the node's low key (last byte − 1, then
//! four `0xff`), and panics ("tree traversal") when real keys have four `0xff` bytes at that
//! point, as plain big-endian time −1 (`7f ff ff ff ff ff ff ff`) does. Base-128 digits never
//! exceed `0x7f`. (`im-arch`'s client store found this first; `im-archive`'s store wrote
//! big-endian times until its schema 2 and migrates them on open, reading them with
//! [`KeyReader::i64_be`].) Big-endian `u64`s remain for positions (outbox, journal), whose
//! keys are only scanned forwards.
//!
//! Decoding is strict: a [`KeyReader`] refuses digits above `0x7f`, base-128 values above
//! `u64::MAX`, unknown option tags and short input, so every key decodes to at most one value
//! and every value encodes to exactly one key.
//!
//! ```
//! use im_service::ordered_key::{KeyReader, push_i64_base128, push_len_prefixed_u32, push_tail};
//!
//! let key = |conversation: &[u8], time: i64, id: &[u8]| {
//!     let mut k = Vec::new();
//!     push_len_prefixed_u32(&mut k, conversation).unwrap();
//!     push_i64_base128(&mut k, time);
//!     push_tail(&mut k, id);
//!     k
//! };
//! // Negative times sort before positive ones, and the id breaks ties.
//! assert!(key(b"c", -1, b"z") < key(b"c", 0, b"a"));
//! assert!(key(b"c", 5, b"a\xff") < key(b"c", 5, b"b"));
//!
//! let k = key(b"c", i64::MIN, b"id");
//! let mut r = KeyReader::new(&k);
//! assert_eq!(r.len_prefixed_u32(), Some(&b"c"[..]));
//! assert_eq!(r.i64_base128(), Some(i64::MIN));
//! assert_eq!(r.tail(), b"id");
//! ```

use crate::codec::CodecError;

/// Digits of a `u64` in base 128 (⌈64 / 7⌉).
pub const BASE128_DIGITS: usize = 10;

/// Bytes [`push_opt_u64_base128`] writes: the tag and the digits.
pub const OPT_U64_BASE128_LEN: usize = 1 + BASE128_DIGITS;

/// Flips the sign bit: unsigned order of the result is signed order of `v`.
fn flip(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// Inverse of [`flip`].
fn unflip(v: u64) -> i64 {
    (v ^ (1 << 63)) as i64
}

/// Appends `v` as 8 big-endian bytes.
pub fn push_u64_be(key: &mut Vec<u8>, v: u64) {
    key.extend_from_slice(&v.to_be_bytes());
}

/// Appends `v` with its sign bit flipped as 8 big-endian bytes.
pub fn push_i64_be(key: &mut Vec<u8>, v: i64) {
    push_u64_be(key, flip(v));
}

/// Appends `v` as [`BASE128_DIGITS`] big-endian base-128 digits: fixed width, so byte order
/// is numeric order, and no byte is above `0x7f`.
pub fn push_u64_base128(key: &mut Vec<u8>, v: u64) {
    for i in (0..BASE128_DIGITS).rev() {
        key.push(((v >> (7 * i)) & 0x7f) as u8);
    }
}

/// Appends `v` with its sign bit flipped as base-128 digits ([`push_u64_base128`]).
pub fn push_i64_base128(key: &mut Vec<u8>, v: i64) {
    push_u64_base128(key, flip(v));
}

/// Appends `None` as `0x00` and ten zero digits, `Some(v)` as `0x01` and `v`'s digits.
pub fn push_opt_u64_base128(key: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => key.extend_from_slice(&[0; OPT_U64_BASE128_LEN]),
        Some(v) => {
            key.push(1);
            push_u64_base128(key, v);
        }
    }
}

/// Appends `bytes` after their length as a big-endian `u16`; [`CodecError::Oversized`] if
/// they are longer than that can state (nothing is appended then).
pub fn push_len_prefixed_u16(key: &mut Vec<u8>, bytes: &[u8]) -> Result<(), CodecError> {
    let len = u16::try_from(bytes.len()).map_err(|_| CodecError::Oversized {
        len: bytes.len(),
        max: usize::from(u16::MAX),
    })?;
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(bytes);
    Ok(())
}

/// Appends `bytes` after their length as a big-endian `u32`; [`CodecError::Oversized`] if
/// they are longer than that can state (nothing is appended then).
pub fn push_len_prefixed_u32(key: &mut Vec<u8>, bytes: &[u8]) -> Result<(), CodecError> {
    let len = u32::try_from(bytes.len()).map_err(|_| CodecError::Oversized {
        len: bytes.len(),
        max: u32::MAX as usize,
    })?;
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(bytes);
    Ok(())
}

/// Appends the key's last component: any bytes, unterminated (nothing may follow it).
pub fn push_tail(key: &mut Vec<u8>, bytes: &[u8]) {
    key.extend_from_slice(bytes);
}

/// Reads a key's components in the order they were written; each read returns `None` (and
/// consumes nothing) when the next bytes are not a valid encoding of that component.
#[derive(Debug, Clone)]
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    /// A reader at the start of `key`.
    pub fn new(key: &'a [u8]) -> Self {
        Self { rest: key }
    }

    /// Takes `n` bytes.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    /// Reads what [`push_u64_be`] wrote.
    pub fn u64_be(&mut self) -> Option<u64> {
        let bytes: [u8; 8] = self.rest.get(..8)?.try_into().ok()?;
        self.rest = &self.rest[8..];
        Some(u64::from_be_bytes(bytes))
    }

    /// Reads what [`push_i64_be`] wrote.
    pub fn i64_be(&mut self) -> Option<i64> {
        self.u64_be().map(unflip)
    }

    /// Reads what [`push_u64_base128`] wrote.
    pub fn u64_base128(&mut self) -> Option<u64> {
        let digits = self.rest.get(..BASE128_DIGITS)?;
        // 10 digits hold 70 bits: the first may only carry the top bit of a u64.
        if digits[0] > 1 || digits.iter().any(|&d| d > 0x7f) {
            return None;
        }
        let v = digits.iter().fold(0u64, |v, &d| (v << 7) | u64::from(d));
        self.rest = &self.rest[BASE128_DIGITS..];
        Some(v)
    }

    /// Reads what [`push_i64_base128`] wrote.
    pub fn i64_base128(&mut self) -> Option<i64> {
        self.u64_base128().map(unflip)
    }

    /// Reads what [`push_opt_u64_base128`] wrote.
    pub fn opt_u64_base128(&mut self) -> Option<Option<u64>> {
        match self.rest.first()? {
            0 => {
                let none = self.rest.get(..OPT_U64_BASE128_LEN)?;
                if none.iter().any(|&b| b != 0) {
                    return None;
                }
                self.rest = &self.rest[OPT_U64_BASE128_LEN..];
                Some(None)
            }
            1 => {
                let mut digits = KeyReader::new(&self.rest[1..]);
                let v = digits.u64_base128()?;
                self.rest = digits.rest;
                Some(Some(v))
            }
            _ => None,
        }
    }

    /// Reads what [`push_len_prefixed_u16`] wrote.
    pub fn len_prefixed_u16(&mut self) -> Option<&'a [u8]> {
        let len: [u8; 2] = self.rest.get(..2)?.try_into().ok()?;
        let len = usize::from(u16::from_be_bytes(len));
        let bytes = self.rest.get(2..2 + len)?;
        self.rest = &self.rest[2 + len..];
        Some(bytes)
    }

    /// Reads what [`push_len_prefixed_u32`] wrote.
    pub fn len_prefixed_u32(&mut self) -> Option<&'a [u8]> {
        let len: [u8; 4] = self.rest.get(..4)?.try_into().ok()?;
        let len = usize::try_from(u32::from_be_bytes(len)).ok()?;
        let end = 4usize.checked_add(len)?;
        let bytes = self.rest.get(4..end)?;
        self.rest = &self.rest[end..];
        Some(bytes)
    }

    /// Reads a single byte (a key-space tag).
    pub fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// The rest of the key ([`push_tail`]).
    pub fn tail(self) -> &'a [u8] {
        self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base128_keeps_numeric_order_and_has_no_high_byte() {
        let values = [
            0,
            1,
            127,
            128,
            255,
            256,
            1 << 62,
            (1 << 63) - 1,
            1 << 63,
            u64::MAX,
        ];
        let encoded: Vec<Vec<u8>> = values
            .iter()
            .map(|&v| {
                let mut k = Vec::new();
                push_u64_base128(&mut k, v);
                k
            })
            .collect();
        for pair in encoded.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        assert!(encoded.iter().flatten().all(|&b| b <= 0x7f));
        assert!(encoded.iter().all(|k| k.len() == BASE128_DIGITS));
        for (v, k) in values.iter().zip(&encoded) {
            assert_eq!(KeyReader::new(k).u64_base128(), Some(*v));
        }
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        // A first digit of 2 would be bit 64.
        let mut over = vec![2];
        over.extend_from_slice(&[0; BASE128_DIGITS - 1]);
        assert_eq!(KeyReader::new(&over).u64_base128(), None);
        assert_eq!(KeyReader::new(&[0x80; BASE128_DIGITS]).u64_base128(), None);
        assert_eq!(
            KeyReader::new(&[2; OPT_U64_BASE128_LEN]).opt_u64_base128(),
            None
        );
        let mut none_with_digits = vec![0; OPT_U64_BASE128_LEN];
        none_with_digits[5] = 1;
        assert_eq!(KeyReader::new(&none_with_digits).opt_u64_base128(), None);
        assert_eq!(KeyReader::new(&[0, 5, 1]).len_prefixed_u16(), None);
        assert_eq!(KeyReader::new(&[1, 2, 3]).u64_be(), None);
    }

    #[test]
    fn a_failed_read_consumes_nothing() {
        let key = [0u8, 0, 0, 9, 1];
        let mut r = KeyReader::new(&key);
        assert_eq!(r.len_prefixed_u32(), None);
        assert_eq!(r.tail(), &key[..]);
    }

    #[test]
    fn too_long_components_are_refused() {
        let long = vec![0u8; usize::from(u16::MAX) + 1];
        assert_eq!(
            push_len_prefixed_u16(&mut Vec::new(), &long),
            Err(CodecError::Oversized {
                len: long.len(),
                max: usize::from(u16::MAX)
            })
        );
    }
}
