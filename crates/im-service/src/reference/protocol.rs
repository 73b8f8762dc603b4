//! The reference vendor's wire protocol: frame types and the framing codec.
//!
//! A frame on the wire is a 4-byte big-endian length followed by that many bytes of
//! [`crate::codec`] encoding (version byte + bincode body). Requests carry an id the
//! response echoes, so responses and pushed events can interleave on one connection.
//!
//! Protocol versions: version 1 opened a connection with [`ClientFrame::Hello`] (or went
//! straight to `Login`); version 2 ([`PROTOCOL_VERSION`]) adds the message lifecycle
//! (recall, edit, delete for me, the change feed, [`VendorEvent::MessageChanged`] and
//! [`VendorEvent::ReadReceipt`]) and opens **every** connection with
//! [`ClientFrame::HelloV2`], so the server knows what each connection speaks before it sends
//! a frame a version 1 client could not decode. A version 2 server answers `Hello`, and any
//! request before `HelloV2`, with a `Fatal(Protocol)` naming the version it speaks.
//! Version 2 only appends enum variants: every version 1 frame encodes exactly as before
//! (bincode is positional; the golden fixtures pin it).

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

use crate::ServiceError;
use crate::capabilities::Capabilities;
use crate::codec::{self, CodecError};
use crate::lifecycle::{ChangeBatch, ChangeCursor, LifecyclePolicy, MessageChange};
use crate::model::{ClientMsgId, Content, ConversationId, OutgoingMessage, ServerMsgId};
use crate::vendor::{
    Credentials, HistoryPage, HistoryQuery, OfflineAck, OfflineBatch, SendReceipt, Session,
    VendorEvent,
};

/// Largest frame body either side accepts by default (1 MiB).
pub const DEFAULT_MAX_FRAME_LEN: usize = 1024 * 1024;

/// Bytes of the length prefix.
const LEN_PREFIX: usize = 4;

/// The protocol version this code speaks (see the module docs for what changed).
pub const PROTOCOL_VERSION: u16 = 2;

/// The error a version 2 server answers a version 1 client (a `Hello`, or a request before
/// `HelloV2`) with, so the client's operator reads what to upgrade instead of a decoding
/// failure.
pub fn version_1_refused() -> ServiceError {
    ServiceError::Protocol(format!(
        "protocol version 1 is no longer served; this server speaks version \
         {PROTOCOL_VERSION}: open each connection with HelloV2 {{ version: {PROTOCOL_VERSION} }} \
         (upgrade the client's im-service)"
    ))
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Version 1's greeting: asked for the server's identity and capabilities. A version 2
    /// server refuses it ([`version_1_refused`]); kept so the variant indexes (and every
    /// encoding after it) stay as they were.
    Hello,
    /// A request; the server answers with a [`ServerFrame::Response`] carrying the same id.
    Request {
        /// Chosen by the client, unique per connection.
        id: u64,
        /// What is asked.
        request: Request,
    },
    /// Opens a version 2 connection (before any request): the highest protocol version the
    /// client speaks. The server answers [`ServerFrame::WelcomeV2`] with the version it will
    /// speak, or `Fatal(Protocol)` when it cannot serve the client.
    HelloV2 {
        /// The client's highest protocol version ([`PROTOCOL_VERSION`]).
        version: u16,
    },
}

/// The operations of the [`Vendor`](crate::Vendor) contract, as requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Authenticate this connection (must be the first request).
    Login(Credentials),
    /// End the session; the server answers, then closes.
    Logout,
    /// Store and deliver a message.
    Send(OutgoingMessage),
    /// Pull an offline batch of at most this many messages.
    PullOffline(u32),
    /// Acknowledge an offline batch.
    AckOffline(OfflineAck),
    /// Start live pushes.
    GoOnline,
    /// Pull a history page.
    PullHistory(HistoryQuery),
    /// Heartbeat.
    Ping,
    /// Read receipt.
    MarkRead(ConversationId, ServerMsgId),
    /// Recall a message for everyone (version 2); answered with [`Reply::Change`].
    Recall(ConversationId, ServerMsgId),
    /// Replace a message's content (version 2); answered with [`Reply::Change`].
    Edit(ConversationId, ServerMsgId, Content),
    /// Delete a message for the caller only (version 2); answered with [`Reply::Change`].
    DeleteForMe(ConversationId, ServerMsgId),
    /// Pull the change feed after a cursor, at most this many entries (version 2);
    /// answered with [`Reply::Changes`].
    PullChanges(Option<ChangeCursor>, u32),
    /// Store and deliver a message only after the earlier send it names
    /// ([`Vendor::send_after`](crate::Vendor::send_after), [`Capability::OrderedSends`](crate::Capability::OrderedSends));
    /// answered like `Send`. Appended last: a server without it never advertises the
    /// capability, so a client never sends it there.
    SendAfter(OutgoingMessage, ClientMsgId),
}

impl Request {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Login(_) => "login",
            Request::Logout => "logout",
            Request::Send(_) => "send",
            Request::PullOffline(_) => "pull_offline",
            Request::AckOffline(_) => "ack_offline",
            Request::GoOnline => "go_online",
            Request::PullHistory(_) => "pull_history",
            Request::Ping => "ping",
            Request::MarkRead(..) => "mark_read",
            Request::Recall(..) => "recall",
            Request::Edit(..) => "edit",
            Request::DeleteForMe(..) => "delete_for_me",
            Request::PullChanges(..) => "pull_changes",
            Request::SendAfter(..) => "send_after",
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// To `Login`.
    Session(Session),
    /// To `Logout`, `AckOffline`, `GoOnline`, `MarkRead`.
    Done,
    /// To `Send` and `SendAfter`.
    Receipt(SendReceipt),
    /// To `PullOffline`.
    Offline(OfflineBatch),
    /// To `PullHistory`.
    History(HistoryPage),
    /// To `Ping`.
    Pong,
    /// To `Recall`, `Edit` and `DeleteForMe`: the change as stored (version 2).
    Change(MessageChange),
    /// To `PullChanges` (version 2).
    Changes(ChangeBatch),
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Version 1's answer to `Hello` (a version 2 server never sends it).
    Welcome {
        /// Server software name.
        server: String,
        /// What this server can do.
        capabilities: Capabilities,
    },
    /// Answer to a request.
    Response {
        /// The request's id.
        id: u64,
        /// Its outcome.
        result: Result<Reply, ServiceError>,
    },
    /// Something the server tells without being asked.
    Event(VendorEvent),
    /// The connection is being closed because of this error (bad frame, no login, idle,
    /// shutdown, connection limit …). Nothing follows it.
    Fatal(ServiceError),
    /// Answer to [`ClientFrame::HelloV2`].
    WelcomeV2 {
        /// Server software name.
        server: String,
        /// What this server can do.
        capabilities: Capabilities,
        /// Its rules for recall and edit ([`Vendor::lifecycle`](crate::Vendor::lifecycle)).
        lifecycle: LifecyclePolicy,
        /// The protocol version the server speaks on this connection (at most the client's).
        protocol: u16,
    },
}

/// Length-delimited framing of `In` (decoded) and `Out` (encoded) frames through the
/// workspace codec, with a body size limit enforced before any allocation.
///
/// The framing is a 4-byte big-endian body length, then the body. The decoder leaves a
/// frame in the buffer until all of it has arrived and never reserves room for the length a
/// prefix declares: the read buffer grows with the bytes that actually arrived (tokio-util's
/// `FramedRead` grows it as it reads, at most doubling what it holds), so a peer that
/// announces a 1 MiB frame and sends 10 bytes holds a few KiB, not 1 MiB. (tokio-util's
/// `LengthDelimitedCodec`, used before, reserves the declared length as soon as the prefix
/// arrives: 2,000 such partial frames held 160 MB.)
#[derive(Debug)]
pub struct WireCodec<In, Out> {
    max_frame_len: usize,
    _frames: PhantomData<fn(Out) -> In>,
}

impl<In, Out> WireCodec<In, Out> {
    /// A codec accepting bodies up to `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            max_frame_len,
            _frames: PhantomData,
        }
    }
}

impl<In, Out> Default for WireCodec<In, Out> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

/// The body length a frame at the head of `src` declares, once its prefix has arrived.
fn declared_len(src: &[u8]) -> Option<usize> {
    let prefix: [u8; LEN_PREFIX] = src.get(..LEN_PREFIX)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// Appends `body` with its length prefix (the caller checked the length fits a `u32`).
fn put_frame(body: &[u8], dst: &mut BytesMut) -> Result<(), ServiceError> {
    let len = u32::try_from(body.len()).map_err(|_| CodecError::Oversized {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    dst.reserve(LEN_PREFIX + body.len());
    dst.put_u32(len);
    dst.extend_from_slice(body);
    Ok(())
}

impl<In: DeserializeOwned, Out> Decoder for WireCodec<In, Out> {
    type Item = In;
    type Error = ServiceError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ServiceError> {
        let Some(len) = declared_len(src) else {
            return Ok(None);
        };
        // Refused on the prefix alone, before a byte of the body is read.
        if len > self.max_frame_len {
            return Err(CodecError::Oversized {
                len,
                max: self.max_frame_len,
            }
            .into());
        }
        if src.len() < LEN_PREFIX + len {
            // Wait for the rest; no `reserve` of the declared length (see the type docs).
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        let body = src.split_to(len);
        Ok(Some(codec::decode(&body)?))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<In>, ServiceError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            // End of input inside a frame (its prefix, or its body).
            None => Err(CodecError::Truncated.into()),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for WireCodec<In, Out> {
    type Error = ServiceError;

    fn encode(&mut self, frame: Out, dst: &mut BytesMut) -> Result<(), ServiceError> {
        let body = codec::encode(&frame)?;
        if body.len() > self.max_frame_len {
            return Err(CodecError::Oversized {
                len: body.len(),
                max: self.max_frame_len,
            }
            .into());
        }
        put_frame(&body, dst)
    }
}

impl From<std::io::Error> for ServiceError {
    fn from(e: std::io::Error) -> Self {
        ServiceError::ConnectionLost(e.to_string())
    }
}

/// Encodes one frame with its length prefix (for tests that write raw bytes). No frame
/// limit but the codec's own ([`codec::MAX_ENCODED_LEN`]).
pub fn frame_bytes<T: Serialize>(frame: &T) -> Result<Vec<u8>, ServiceError> {
    let body = codec::encode(frame)?;
    let mut out = BytesMut::with_capacity(LEN_PREFIX + body.len());
    put_frame(&body, &mut out)?;
    Ok(out.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    type ServerSide = WireCodec<ClientFrame, ServerFrame>;

    #[test]
    fn frames_roundtrip_through_the_codec() {
        let mut enc: WireCodec<ServerFrame, ClientFrame> = WireCodec::default();
        let mut dec = ServerSide::default();
        let mut buf = BytesMut::new();
        let frames = [
            ClientFrame::Hello,
            ClientFrame::Request {
                id: 7,
                request: Request::Ping,
            },
        ];
        for f in frames.clone() {
            enc.encode(f, &mut buf).unwrap();
        }
        for f in frames {
            assert_eq!(dec.decode(&mut buf).unwrap(), Some(f));
        }
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let bytes = frame_bytes(&ClientFrame::Hello).unwrap();
        let mut dec = ServerSide::default();
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&bytes[bytes.len() - 1..]);
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(ClientFrame::Hello));
    }

    #[test]
    fn oversized_length_prefix_is_rejected_before_reading_the_body() {
        let mut dec = ServerSide::new(16);
        let mut buf = BytesMut::from(&100u32.to_be_bytes()[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(ServiceError::Codec(CodecError::Oversized {
                len: 100,
                max: 16
            }))
        );
    }

    #[test]
    fn eof_inside_a_frame_is_truncation() {
        let bytes = frame_bytes(&ClientFrame::Hello).unwrap();
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert_eq!(
            ServerSide::default().decode_eof(&mut buf),
            Err(ServiceError::Codec(CodecError::Truncated))
        );
    }

    #[test]
    fn a_declared_frame_holds_only_the_bytes_that_arrived() {
        // A 1 MiB frame announced, 10 bytes of it sent: the decoder must not reserve the
        // declared length (tokio-util's LengthDelimitedCodec did, 1 MiB per such peer).
        let mut dec = ServerSide::default();
        let mut buf = BytesMut::from(&(DEFAULT_MAX_FRAME_LEN as u32).to_be_bytes()[..]);
        buf.extend_from_slice(&[0u8; 10]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        assert!(
            buf.capacity() < 64 * 1024,
            "a partial frame reserved {} bytes",
            buf.capacity()
        );
        assert_eq!(buf.len(), LEN_PREFIX + 10, "the partial frame is kept");
    }

    #[tokio::test]
    async fn a_framed_reader_grows_with_the_bytes_that_arrived() {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut framed = tokio_util::codec::FramedRead::new(rx, ServerSide::default());
        tx.write_all(&(DEFAULT_MAX_FRAME_LEN as u32).to_be_bytes())
            .await
            .unwrap();
        tx.write_all(&[1u8; 10]).await.unwrap();
        // One read of what arrived; the frame is not complete, so nothing is yielded.
        let polled = futures::FutureExt::now_or_never(framed.next());
        assert!(polled.is_none(), "{polled:?}");
        assert!(
            framed.read_buffer().capacity() < 64 * 1024,
            "the read buffer holds {} bytes for 14 that arrived",
            framed.read_buffer().capacity()
        );
        // The rest of a (small) frame still completes it.
        let bytes = frame_bytes(&ClientFrame::Hello).unwrap();
        let mut framed = tokio_util::codec::FramedRead::new(&bytes[..], ServerSide::default());
        assert_eq!(framed.next().await, Some(Ok(ClientFrame::Hello)));
    }

    #[test]
    fn eof_after_a_length_prefix_is_truncation() {
        // Only the prefix arrived: end of input there is still inside a frame.
        let bytes = frame_bytes(&ClientFrame::Hello).unwrap();
        let mut dec = ServerSide::default();
        let mut buf = BytesMut::from(&bytes[..LEN_PREFIX]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        assert_eq!(
            dec.decode_eof(&mut buf),
            Err(ServiceError::Codec(CodecError::Truncated))
        );
    }

    #[test]
    fn oversized_frames_are_not_encoded() {
        let mut enc: WireCodec<ServerFrame, ClientFrame> = WireCodec::new(2);
        let mut buf = BytesMut::new();
        let err = enc
            .encode(
                ClientFrame::Request {
                    id: 1,
                    request: Request::Ping,
                },
                &mut buf,
            )
            .unwrap_err();
        assert!(matches!(
            err,
            ServiceError::Codec(CodecError::Oversized { max: 2, .. })
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn version_2_frames_roundtrip_and_leave_version_1_indexes_alone() {
        use crate::lifecycle::{ChangeKind, MessageChange};
        use crate::model::{Timestamp, UserId};
        let change = MessageChange {
            conversation: ConversationId::group("g"),
            target: ServerMsgId::new("m"),
            kind: ChangeKind::Recalled,
            by: UserId::new("alice"),
            at: Timestamp::from_millis(5),
            revision: 1,
        };
        let mut enc: WireCodec<ServerFrame, ClientFrame> = WireCodec::default();
        let mut dec = ServerSide::default();
        let mut buf = BytesMut::new();
        let frames = [
            ClientFrame::HelloV2 {
                version: PROTOCOL_VERSION,
            },
            ClientFrame::Request {
                id: 1,
                request: Request::PullChanges(Some(ChangeCursor(vec![1])), 10),
            },
        ];
        for f in frames.clone() {
            enc.encode(f, &mut buf).unwrap();
        }
        for f in frames {
            assert_eq!(dec.decode(&mut buf).unwrap(), Some(f));
        }
        let reply = ServerFrame::Response {
            id: 1,
            result: Ok(Reply::Change(change)),
        };
        assert_eq!(
            codec::decode::<ServerFrame>(&codec::encode(&reply).unwrap()).unwrap(),
            reply
        );
        // Appended, not inserted: `Hello` keeps index 0 (bincode writes the index first).
        assert_eq!(codec::encode(&ClientFrame::Hello).unwrap()[1..], [0]);
        assert_eq!(Request::PullChanges(None, 1).kind(), "pull_changes");
        assert!(
            matches!(version_1_refused(), ServiceError::Protocol(m) if m.contains("version 1"))
        );
    }

    #[test]
    fn the_framing_is_a_four_byte_big_endian_length() {
        let bytes = frame_bytes(&ClientFrame::Hello).unwrap();
        let body = codec::encode(&ClientFrame::Hello).unwrap();
        assert_eq!(bytes[..LEN_PREFIX], (body.len() as u32).to_be_bytes());
        assert_eq!(bytes[LEN_PREFIX..], body[..]);
    }
}
