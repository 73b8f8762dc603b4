//! Signed vendor callbacks ("webhooks"): the payload a vendor POSTs to a company backend for
//! every stored message (`message.stored`) and every change made to one later
//! (`message.changed`), and its HMAC-SHA256 signing and verification.
//!
//! IM vendors (Easemob, RongCloud, Sendbird, Tencent IM …) notify the customer's backend of
//! each stored message with an HTTP callback signed by a shared secret. This module is the
//! vendor-neutral form of that callback:
//!
//! * the body is the JSON encoding of a [`CallbackPayload`] (`message.stored`, and any other
//!   event that carries a message) or of a [`ChangePayload`] (`message.changed`, carrying a
//!   [`MessageChange`]); both share the envelope `{"vendor": …, "event": …}` and the event
//!   name says which field follows. [`verify`] reads message callbacks exactly as before
//!   this event existed; [`verify_callback`] reads either ([`Callback`]);
//! * the request carries [`TIMESTAMP_HEADER`] (unix seconds, decimal) and
//!   [`SIGNATURE_HEADER`] (lowercase hex of HMAC-SHA256 over `"{timestamp}.{body}"`);
//! * the receiver checks the signature in constant time and refuses timestamps outside a
//!   replay window ([`verify`]).
//!
//! The vendor side signs with [`sign`]; the receiving side (the backend archive) calls
//! [`verify`] and gets either the authenticated payload or a [`WebhookError`].
//!
//! ```
//! use std::time::Duration;
//! use im_service::webhook::{self, CallbackPayload};
//!
//! let secret = b"shared secret";
//! let now = 1_700_000_000;
//! let body = br#"{"vendor":"v","event":"message.stored","message":null}"#;
//! let signature = webhook::sign(secret, now, body);
//! // The signature checks out, but this body is not a valid payload.
//! let err = webhook::verify(secret, Some("1700000000"), Some(&signature), body, now,
//!                           Duration::from_secs(300)).unwrap_err();
//! assert!(matches!(err, webhook::WebhookError::MalformedBody(_)));
//! ```

use std::time::Duration;

use hmac::digest::Key;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use crate::lifecycle::MessageChange;
use crate::model::{Message, Timestamp};

/// Request header carrying the signing time: unix seconds, in decimal.
pub const TIMESTAMP_HEADER: &str = "x-im-timestamp";

/// Request header carrying the signature: lowercase hex of HMAC-SHA256 over
/// `timestamp`, `"."`, body.
pub const SIGNATURE_HEADER: &str = "x-im-signature";

/// The event name of a [`CallbackPayload::message_stored`] callback.
pub const MESSAGE_STORED: &str = "message.stored";

/// The event name of a [`ChangePayload::message_changed`] callback.
pub const MESSAGE_CHANGED: &str = "message.changed";

/// HMAC-SHA256, the callback signature algorithm.
type HmacSha256 = Hmac<Sha256>;

/// The JSON body of a vendor callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackPayload {
    /// Name of the vendor that sent the callback.
    pub vendor: String,
    /// What happened, e.g. [`MESSAGE_STORED`] (`"message.stored"`).
    pub event: String,
    /// The message the event is about.
    pub message: Message,
}

impl CallbackPayload {
    /// The callback a vendor sends after storing `message`.
    pub fn message_stored(vendor: impl Into<String>, message: Message) -> Self {
        Self {
            vendor: vendor.into(),
            event: MESSAGE_STORED.to_owned(),
            message,
        }
    }
}

/// The JSON body of a `message.changed` callback: a change (recall, edit, delete for me)
/// made to a message the vendor stored (and called back) before.
///
/// Why a second type instead of a new field of [`CallbackPayload`]: the message callback's
/// fields and JSON stay exactly as they were (its golden fixture pins them), and a receiver
/// that only knows [`verify`] keeps refusing what it cannot read instead of misreading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangePayload {
    /// Name of the vendor that sent the callback.
    pub vendor: String,
    /// Always [`MESSAGE_CHANGED`] (`"message.changed"`).
    pub event: String,
    /// The change; its `revision` orders the changes of one message.
    pub change: MessageChange,
}

impl ChangePayload {
    /// The callback a vendor sends after storing `change`.
    pub fn message_changed(vendor: impl Into<String>, change: MessageChange) -> Self {
        Self {
            vendor: vendor.into(),
            event: MESSAGE_CHANGED.to_owned(),
            change,
        }
    }
}

/// Any callback body this module defines, as [`verify_callback`] reads it.
///
/// Encodes as the payload it holds (no extra tag: the `event` field is the tag). Decoding
/// goes by `event`: [`MESSAGE_CHANGED`] needs a `change`; every other event needs a
/// `message`, as a [`CallbackPayload`] always did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, try_from = "CallbackRepr")]
pub enum Callback {
    /// `message.stored` (or another event about a message).
    Message(CallbackPayload),
    /// `message.changed`.
    Changed(ChangePayload),
}

impl Callback {
    /// The vendor that sent it.
    pub fn vendor(&self) -> &str {
        match self {
            Callback::Message(p) => &p.vendor,
            Callback::Changed(p) => &p.vendor,
        }
    }

    /// Its event name.
    pub fn event(&self) -> &str {
        match self {
            Callback::Message(p) => &p.event,
            Callback::Changed(p) => &p.event,
        }
    }
}

impl From<CallbackPayload> for Callback {
    fn from(p: CallbackPayload) -> Self {
        Callback::Message(p)
    }
}

impl From<ChangePayload> for Callback {
    fn from(p: ChangePayload) -> Self {
        Callback::Changed(p)
    }
}

/// The envelope every callback body shares, read before its event decides what it is.
#[derive(Deserialize)]
struct CallbackRepr {
    vendor: String,
    event: String,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    change: Option<MessageChange>,
}

impl TryFrom<CallbackRepr> for Callback {
    type Error = String;

    fn try_from(r: CallbackRepr) -> Result<Self, Self::Error> {
        if r.event == MESSAGE_CHANGED {
            let change = r
                .change
                .ok_or_else(|| format!("a {MESSAGE_CHANGED} callback needs a change"))?;
            return Ok(Callback::Changed(ChangePayload {
                vendor: r.vendor,
                event: r.event,
                change,
            }));
        }
        let message = r
            .message
            .ok_or_else(|| format!("a {:?} callback needs a message", r.event))?;
        Ok(Callback::Message(CallbackPayload {
            vendor: r.vendor,
            event: r.event,
            message,
        }))
    }
}

/// Why an incoming callback was refused.
///
/// This is the backend archive's input error: it describes a request that arrived from
/// outside, not a failed vendor call, so it is deliberately not a variant of
/// [`ServiceError`](crate::ServiceError) (whose retry classes do not apply to it).
///
/// Serializable so a receiver can record or report refusals. [`WebhookError::MissingHeader`]
/// only deserializes the two header names this module defines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
pub enum WebhookError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// The timestamp header is not a canonical decimal integer.
    #[error("timestamp header is not canonical decimal unix seconds")]
    BadTimestamp,
    /// The (authentic) timestamp lies outside the replay window.
    #[error("timestamp outside the replay window (age {age_secs} s)")]
    StaleTimestamp {
        /// `now - timestamp` in seconds; negative for a timestamp in the future.
        age_secs: i64,
    },
    /// The signature header is not hex, or does not match the body and timestamp.
    #[error("bad signature")]
    BadSignature,
    /// The signature is valid but the body is not a JSON [`CallbackPayload`] (or, for
    /// [`verify_callback`], not a [`Callback`]).
    #[error("malformed callback body: {0}")]
    MalformedBody(String),
}

/// The owned serde form of [`WebhookError`]: a `&'static str` cannot be deserialized (and
/// serde's derive would demand `'de: 'static`), so the header name is read as a `String` and
/// mapped back onto this module's constants.
#[derive(Deserialize)]
enum WebhookErrorRepr {
    MissingHeader(String),
    BadTimestamp,
    StaleTimestamp { age_secs: i64 },
    BadSignature,
    MalformedBody(String),
}

impl TryFrom<WebhookErrorRepr> for WebhookError {
    type Error = String;

    fn try_from(repr: WebhookErrorRepr) -> Result<Self, Self::Error> {
        Ok(match repr {
            WebhookErrorRepr::MissingHeader(name) => WebhookError::MissingHeader(
                [TIMESTAMP_HEADER, SIGNATURE_HEADER]
                    .into_iter()
                    .find(|known| *known == name)
                    .ok_or_else(|| format!("unknown webhook header {name:?}"))?,
            ),
            WebhookErrorRepr::BadTimestamp => WebhookError::BadTimestamp,
            WebhookErrorRepr::StaleTimestamp { age_secs } => {
                WebhookError::StaleTimestamp { age_secs }
            }
            WebhookErrorRepr::BadSignature => WebhookError::BadSignature,
            WebhookErrorRepr::MalformedBody(why) => WebhookError::MalformedBody(why),
        })
    }
}

impl<'de> Deserialize<'de> for WebhookError {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        WebhookErrorRepr::deserialize(deserializer)?
            .try_into()
            .map_err(serde::de::Error::custom)
    }
}

/// Whole unix seconds of a timestamp (rounded towards the past), the unit of
/// [`TIMESTAMP_HEADER`] and of `now_unix` in [`verify`].
pub fn unix_seconds(at: Timestamp) -> i64 {
    at.as_millis().div_euclid(1000)
}

/// An HMAC-SHA256 keyed with `secret`.
///
/// HMAC accepts keys of any length (RFC 2104): a key longer than the hash's block is hashed
/// first, and the key is then zero-padded to the block. Doing that here, instead of calling
/// the fallible `new_from_slice`, keeps this module free of unreachable error paths.
fn keyed(secret: &[u8]) -> HmacSha256 {
    let mut key = Key::<HmacSha256>::default();
    if secret.len() <= key.len() {
        key[..secret.len()].copy_from_slice(secret);
    } else {
        let digest = Sha256::digest(secret);
        key[..digest.len()].copy_from_slice(&digest);
    }
    <HmacSha256 as Mac>::new(&key)
}

/// The MAC of one callback: `timestamp` in decimal, `"."`, then the body.
fn callback_mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = keyed(secret);
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The [`SIGNATURE_HEADER`] value for a callback: lowercase hex of HMAC-SHA256 over
/// `timestamp` (decimal), `"."`, `body`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    hex::encode(
        callback_mac(secret, timestamp, body)
            .finalize()
            .into_bytes(),
    )
}

/// Checks a callback's headers against its body without decoding the body, and returns the
/// authenticated timestamp.
///
/// Refuses a missing header ([`WebhookError::MissingHeader`]), a timestamp that is not
/// canonical decimal ([`WebhookError::BadTimestamp`]), a signature that is not hex or does
/// not match, compared in constant time ([`WebhookError::BadSignature`]), and an authentic
/// timestamp more than `replay_window` (whole seconds) away from `now_unix` in either
/// direction ([`WebhookError::StaleTimestamp`]). Never panics.
pub fn verify_signature(
    secret: &[u8],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now_unix: i64,
    replay_window: Duration,
) -> Result<i64, WebhookError> {
    let raw_timestamp = timestamp_header.ok_or(WebhookError::MissingHeader(TIMESTAMP_HEADER))?;
    let raw_signature = signature_header.ok_or(WebhookError::MissingHeader(SIGNATURE_HEADER))?;

    let timestamp: i64 = raw_timestamp
        .parse()
        .map_err(|_| WebhookError::BadTimestamp)?;
    // The MAC covers the canonical decimal form; "+5" or "005" would be a different string.
    if timestamp.to_string() != raw_timestamp {
        return Err(WebhookError::BadTimestamp);
    }

    let signature = hex::decode(raw_signature).map_err(|_| WebhookError::BadSignature)?;
    callback_mac(secret, timestamp, body)
        .verify_slice(&signature)
        .map_err(|_| WebhookError::BadSignature)?;

    let age_secs = now_unix.saturating_sub(timestamp);
    if age_secs.unsigned_abs() > replay_window.as_secs() {
        return Err(WebhookError::StaleTimestamp { age_secs });
    }
    Ok(timestamp)
}

/// Authenticates a callback and decodes its body.
///
/// `timestamp_header` and `signature_header` are the values of [`TIMESTAMP_HEADER`] and
/// [`SIGNATURE_HEADER`] (`None` when absent), `now_unix` is the receiver's clock in unix
/// seconds (see [`unix_seconds`]). The headers are checked as by [`verify_signature`]; a
/// body that is authentic but not a JSON [`CallbackPayload`] is
/// [`WebhookError::MalformedBody`]. Never panics.
pub fn verify(
    secret: &[u8],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now_unix: i64,
    replay_window: Duration,
) -> Result<CallbackPayload, WebhookError> {
    verify_as(
        secret,
        timestamp_header,
        signature_header,
        body,
        now_unix,
        replay_window,
    )
}

/// Authenticates a callback of any event this module defines and decodes its body: as
/// [`verify`], but a `message.changed` body decodes too ([`Callback::Changed`]). Never
/// panics.
pub fn verify_callback(
    secret: &[u8],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now_unix: i64,
    replay_window: Duration,
) -> Result<Callback, WebhookError> {
    verify_as(
        secret,
        timestamp_header,
        signature_header,
        body,
        now_unix,
        replay_window,
    )
}

/// [`verify_signature`], then the body as JSON of `T`: the one path both [`verify`] and
/// [`verify_callback`] take.
fn verify_as<T: serde::de::DeserializeOwned>(
    secret: &[u8],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now_unix: i64,
    replay_window: Duration,
) -> Result<T, WebhookError> {
    verify_signature(
        secret,
        timestamp_header,
        signature_header,
        body,
        now_unix,
        replay_window,
    )?;
    serde_json::from_slice(body).map_err(|e| WebhookError::MalformedBody(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClientMsgId, Content, ConversationId, Seq, ServerMsgId, UserId};
    use proptest::prelude::*;

    const SECRET: &[u8] = b"it's a secret to everybody";
    const NOW: i64 = 1_700_000_000;
    const WINDOW: Duration = Duration::from_secs(300);

    fn message(text: &str) -> Message {
        let alice = UserId::new("alice");
        let bob = UserId::new("bob");
        Message {
            server_id: ServerMsgId::new("s-1"),
            client_id: ClientMsgId::new("c-1"),
            conversation: ConversationId::direct(&alice, &bob),
            sender: alice,
            seq: Some(Seq(1)),
            server_time: Timestamp::from_millis(NOW * 1000),
            client_time: Timestamp::from_millis(NOW * 1000 - 20),
            content: Content::text(text),
        }
    }

    fn body(payload: &CallbackPayload) -> Vec<u8> {
        serde_json::to_vec(payload).expect("payloads encode")
    }

    fn check(
        secret: &[u8],
        ts: Option<&str>,
        sig: Option<&str>,
        body: &[u8],
    ) -> Result<CallbackPayload, WebhookError> {
        verify(secret, ts, sig, body, NOW, WINDOW)
    }

    #[test]
    fn sign_verify_round_trip() {
        let payload = CallbackPayload::message_stored("memory", message("hello"));
        assert_eq!(payload.event, MESSAGE_STORED);
        let body = body(&payload);
        let sig = sign(SECRET, NOW, &body);
        assert_eq!(sig.len(), 64);
        assert!(
            sig.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        let got = check(SECRET, Some(&NOW.to_string()), Some(&sig), &body);
        assert_eq!(got, Ok(payload));
    }

    fn change() -> MessageChange {
        let m = message("x");
        MessageChange {
            conversation: m.conversation,
            target: m.server_id,
            kind: crate::lifecycle::ChangeKind::Edited(Content::text("fixed")),
            by: UserId::new("alice"),
            at: Timestamp::from_millis(NOW * 1000 + 5),
            revision: 1,
        }
    }

    fn signed(body: &[u8]) -> Result<Callback, WebhookError> {
        let sig = sign(SECRET, NOW, body);
        verify_callback(
            SECRET,
            Some(&NOW.to_string()),
            Some(&sig),
            body,
            NOW,
            WINDOW,
        )
    }

    #[test]
    fn change_callbacks_sign_and_verify_and_message_callbacks_read_as_before() {
        let changed = ChangePayload::message_changed("memory", change());
        assert_eq!(changed.event, MESSAGE_CHANGED);
        let raw = serde_json::to_vec(&changed).expect("encodes");
        // The untagged enum writes exactly the payload it holds.
        assert_eq!(
            serde_json::to_vec(&Callback::from(changed.clone())).expect("encodes"),
            raw
        );
        assert_eq!(signed(&raw), Ok(Callback::Changed(changed.clone())));
        // A receiver that knows only message callbacks refuses it, never misreads it.
        let sig = sign(SECRET, NOW, &raw);
        assert!(matches!(
            check(SECRET, Some(&NOW.to_string()), Some(&sig), &raw),
            Err(WebhookError::MalformedBody(_))
        ));

        let stored = CallbackPayload::message_stored("memory", message("hello"));
        let raw = body(&stored);
        assert_eq!(signed(&raw), Ok(Callback::Message(stored.clone())));
        assert_eq!(
            signed(&raw).map(|c| c.event().to_owned()),
            Ok(MESSAGE_STORED.into())
        );
        // Any other event with a message decodes as it always did.
        let other = CallbackPayload {
            event: "message.other".into(),
            ..stored
        };
        assert_eq!(signed(&body(&other)), Ok(Callback::Message(other)));
    }

    #[test]
    fn a_callback_without_the_field_its_event_needs_is_malformed() {
        let change = serde_json::to_string(&change()).expect("encodes");
        let message = serde_json::to_string(&message("x")).expect("encodes");
        for body in [
            r#"{"vendor":"v","event":"message.changed"}"#.to_owned(),
            r#"{"vendor":"v","event":"message.changed","change":null}"#.to_owned(),
            format!(r#"{{"vendor":"v","event":"message.changed","message":{message}}}"#),
            r#"{"vendor":"v","event":"message.stored","message":null}"#.to_owned(),
            format!(r#"{{"vendor":"v","event":"message.stored","change":{change}}}"#),
            format!(r#"{{"event":"message.changed","change":{change}}}"#),
        ] {
            assert!(
                matches!(signed(body.as_bytes()), Err(WebhookError::MalformedBody(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn signature_covers_timestamp_dot_body() {
        // Same MAC as a textbook HMAC over the concatenation.
        let mut mac = HmacSha256::new_from_slice(SECRET).expect("any key length");
        mac.update(b"1700000000.{}");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(sign(SECRET, NOW, b"{}"), expected);
    }

    #[test]
    fn keying_matches_the_library_for_short_and_long_keys() {
        for len in [0, 1, 32, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut reference = HmacSha256::new_from_slice(&key).expect("any key length");
            reference.update(b"data");
            let mut ours = keyed(&key);
            ours.update(b"data");
            assert_eq!(
                ours.finalize().into_bytes(),
                reference.finalize().into_bytes(),
                "key length {len}"
            );
        }
    }

    #[test]
    fn rfc4231_test_case_2() {
        let mut mac = keyed(b"Jefe");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let body = body(&CallbackPayload::message_stored("memory", message("x")));
        let sig = sign(b"another secret", NOW, &body);
        assert_eq!(
            check(SECRET, Some(&NOW.to_string()), Some(&sig), &body),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn tampered_body_is_a_bad_signature() {
        let original = body(&CallbackPayload::message_stored(
            "memory",
            message("pay 10"),
        ));
        let sig = sign(SECRET, NOW, &original);
        let tampered = body(&CallbackPayload::message_stored(
            "memory",
            message("pay 99"),
        ));
        assert_eq!(
            check(SECRET, Some(&NOW.to_string()), Some(&sig), &tampered),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn tampered_timestamp_is_a_bad_signature() {
        let body = body(&CallbackPayload::message_stored("memory", message("x")));
        let sig = sign(SECRET, NOW - 1, &body);
        assert_eq!(
            check(SECRET, Some(&NOW.to_string()), Some(&sig), &body),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn garbage_signatures_are_bad_signatures() {
        let body = body(&CallbackPayload::message_stored("memory", message("x")));
        let good = sign(SECRET, NOW, &body);
        for sig in ["", "zz", "abc", &good[..62], &format!("{good}00"), "é"] {
            assert_eq!(
                check(SECRET, Some(&NOW.to_string()), Some(sig), &body),
                Err(WebhookError::BadSignature),
                "signature {sig:?}"
            );
        }
        // Hex is case-insensitive on input.
        let upper = good.to_uppercase();
        assert!(check(SECRET, Some(&NOW.to_string()), Some(&upper), &body).is_ok());
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let body = body(&CallbackPayload::message_stored("memory", message("x")));
        let window = WINDOW.as_secs() as i64;
        for (ts, age) in [
            (NOW - window - 1, window + 1),
            (NOW + window + 1, -window - 1),
        ] {
            let sig = sign(SECRET, ts, &body);
            assert_eq!(
                check(SECRET, Some(&ts.to_string()), Some(&sig), &body),
                Err(WebhookError::StaleTimestamp { age_secs: age })
            );
        }
        // The window's edges are inside.
        for ts in [NOW - window, NOW + window] {
            let sig = sign(SECRET, ts, &body);
            assert!(check(SECRET, Some(&ts.to_string()), Some(&sig), &body).is_ok());
        }
        // Extreme values neither overflow nor pass.
        for (ts, now) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN)] {
            let sig = sign(SECRET, ts, &body);
            let got = verify(
                SECRET,
                Some(&ts.to_string()),
                Some(&sig),
                &body,
                now,
                WINDOW,
            );
            assert!(
                matches!(got, Err(WebhookError::StaleTimestamp { .. })),
                "{got:?}"
            );
        }
    }

    #[test]
    fn missing_headers_are_named() {
        let body = body(&CallbackPayload::message_stored("memory", message("x")));
        let sig = sign(SECRET, NOW, &body);
        assert_eq!(
            check(SECRET, None, Some(&sig), &body),
            Err(WebhookError::MissingHeader(TIMESTAMP_HEADER))
        );
        assert_eq!(
            check(SECRET, Some(&NOW.to_string()), None, &body),
            Err(WebhookError::MissingHeader(SIGNATURE_HEADER))
        );
        assert_eq!(
            check(SECRET, None, None, &body),
            Err(WebhookError::MissingHeader(TIMESTAMP_HEADER))
        );
    }

    #[test]
    fn unparseable_or_non_canonical_timestamps_are_bad() {
        let body = body(&CallbackPayload::message_stored("memory", message("x")));
        let sig = sign(SECRET, NOW, &body);
        for ts in [
            "",
            "abc",
            "1.5",
            " 1700000000",
            "+1700000000",
            "01700000000",
            "99999999999999999999",
        ] {
            assert_eq!(
                check(SECRET, Some(ts), Some(&sig), &body),
                Err(WebhookError::BadTimestamp),
                "timestamp {ts:?}"
            );
        }
    }

    #[test]
    fn authentic_malformed_json_is_a_malformed_body() {
        for body in [
            &b"not json"[..],
            b"{}",
            b"{\"vendor\":\"v\",\"event\":\"e\"}",
            b"",
        ] {
            let sig = sign(SECRET, NOW, body);
            assert!(
                matches!(
                    check(SECRET, Some(&NOW.to_string()), Some(&sig), body),
                    Err(WebhookError::MalformedBody(_))
                ),
                "body {body:?}"
            );
        }
    }

    #[test]
    fn errors_serialize_round_trip() {
        let all = [
            WebhookError::MissingHeader(TIMESTAMP_HEADER),
            WebhookError::MissingHeader(SIGNATURE_HEADER),
            WebhookError::BadTimestamp,
            WebhookError::StaleTimestamp { age_secs: -7 },
            WebhookError::BadSignature,
            WebhookError::MalformedBody("eof".into()),
        ];
        for err in all {
            let json = serde_json::to_string(&err).expect("encodes");
            let back: WebhookError = serde_json::from_str(&json).expect("decodes");
            assert_eq!(back, err);
        }
        let unknown = serde_json::from_str::<WebhookError>(r#"{"MissingHeader":"x-other"}"#);
        assert!(unknown.is_err());
    }

    #[test]
    fn unix_seconds_rounds_towards_the_past() {
        assert_eq!(unix_seconds(Timestamp::from_millis(1_999)), 1);
        assert_eq!(unix_seconds(Timestamp::from_millis(0)), 0);
        assert_eq!(unix_seconds(Timestamp::from_millis(-1)), -1);
    }

    fn any_message() -> impl Strategy<Value = Message> {
        (
            ".{0,12}",
            ".{0,12}",
            ".{0,12}",
            ".{0,12}",
            proptest::option::of(any::<u64>()),
            any::<i64>(),
            any::<i64>(),
            prop_oneof![
                ".{0,40}".prop_map(Content::Text),
                (".{0,8}", proptest::collection::vec(any::<u8>(), 0..40))
                    .prop_map(|(type_tag, payload)| Content::Custom { type_tag, payload }),
            ],
        )
            .prop_map(|(server, client, a, b, seq, st, ct, content)| {
                let (a, b) = (UserId::new(a), UserId::new(b));
                Message {
                    server_id: ServerMsgId::new(server),
                    client_id: ClientMsgId::new(client),
                    conversation: ConversationId::direct(&a, &b),
                    sender: a,
                    seq: seq.map(Seq),
                    server_time: Timestamp::from_millis(st),
                    client_time: Timestamp::from_millis(ct),
                    content,
                }
            })
    }

    proptest! {
        #[test]
        fn any_payload_signs_and_verifies(
            vendor in ".{0,12}",
            message in any_message(),
            timestamp in any::<i64>(),
            secret in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let payload = CallbackPayload::message_stored(vendor, message);
            let body = body(&payload);
            let sig = sign(&secret, timestamp, &body);
            let got = verify(&secret, Some(&timestamp.to_string()), Some(&sig), &body,
                             timestamp, Duration::ZERO);
            prop_assert_eq!(got, Ok(payload));
        }

        #[test]
        fn any_body_signs_and_flipping_any_byte_fails(
            body in proptest::collection::vec(any::<u8>(), 1..300),
            timestamp in any::<i64>(),
            index in any::<prop::sample::Index>(),
            flip in 1..=u8::MAX,
        ) {
            let ts = timestamp.to_string();
            let sig = sign(SECRET, timestamp, &body);
            prop_assert_eq!(
                verify_signature(SECRET, Some(&ts), Some(&sig), &body, timestamp, WINDOW),
                Ok(timestamp)
            );
            // Authentic arbitrary bytes are at worst a malformed body, never a bad signature.
            let decoded = verify(SECRET, Some(&ts), Some(&sig), &body, timestamp, WINDOW);
            prop_assert!(
                matches!(decoded, Ok(_) | Err(WebhookError::MalformedBody(_))),
                "{:?}", decoded
            );

            let mut tampered = body.clone();
            tampered[index.index(body.len())] ^= flip;
            prop_assert_eq!(
                verify(SECRET, Some(&ts), Some(&sig), &tampered, timestamp, WINDOW),
                Err(WebhookError::BadSignature)
            );
        }

        #[test]
        fn verify_never_panics(
            ts in proptest::option::of(".{0,24}"),
            sig in proptest::option::of(".{0,70}"),
            body in proptest::collection::vec(any::<u8>(), 0..100),
            now in any::<i64>(),
            window in any::<u64>(),
        ) {
            let _ = verify(SECRET, ts.as_deref(), sig.as_deref(), &body, now,
                           Duration::from_secs(window));
        }
    }
}
