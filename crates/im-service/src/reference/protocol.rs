//! The reference vendor's wire protocol: frame types and the framing codec.
//!
//! A frame on the wire is a 4-byte big-endian length followed by that many bytes of
//! [`crate::codec`] encoding (version byte + bincode body). Requests carry an id the
//! response echoes, so responses and pushed events can interleave on one connection.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

use crate::ServiceError;
use crate::capabilities::Capabilities;
use crate::codec::{self, CodecError};
use crate::model::{ConversationId, OutgoingMessage, ServerMsgId};
use crate::vendor::{
    Credentials, HistoryPage, HistoryQuery, OfflineAck, OfflineBatch, SendReceipt, Session,
    VendorEvent,
};

/// Largest frame body either side accepts by default (1 MiB).
pub const DEFAULT_MAX_FRAME_LEN: usize = 1024 * 1024;

/// Bytes of the length prefix.
const LEN_PREFIX: usize = 4;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Asks for the server's identity and capabilities; allowed before login.
    Hello,
    /// A request; the server answers with a [`ServerFrame::Response`] carrying the same id.
    Request {
        /// Chosen by the client, unique per connection.
        id: u64,
        /// What is asked.
        request: Request,
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
    /// To `Send`.
    Receipt(SendReceipt),
    /// To `PullOffline`.
    Offline(OfflineBatch),
    /// To `PullHistory`.
    History(HistoryPage),
    /// To `Ping`.
    Pong,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Answer to `Hello`.
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
}

/// Length-delimited framing of `In` (decoded) and `Out` (encoded) frames through the
/// workspace codec, with a body size limit enforced before any allocation.
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

impl<In: DeserializeOwned, Out> Decoder for WireCodec<In, Out> {
    type Item = In;
    type Error = ServiceError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ServiceError> {
        if src.len() < LEN_PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; LEN_PREFIX];
        prefix.copy_from_slice(&src[..LEN_PREFIX]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame_len {
            return Err(CodecError::Oversized {
                len,
                max: self.max_frame_len,
            }
            .into());
        }
        if src.len() < LEN_PREFIX + len {
            src.reserve(LEN_PREFIX + len - src.len());
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
        dst.reserve(LEN_PREFIX + body.len());
        // Cannot truncate: body.len() <= max_frame_len, which callers keep far below 4 GiB.
        dst.put_u32(body.len() as u32);
        dst.extend_from_slice(&body);
        Ok(())
    }
}

impl From<std::io::Error> for ServiceError {
    fn from(e: std::io::Error) -> Self {
        ServiceError::ConnectionLost(e.to_string())
    }
}

/// Encodes one frame with its length prefix (for tests that write raw bytes).
pub fn frame_bytes<T: Serialize>(frame: &T) -> Result<Vec<u8>, ServiceError> {
    let body = codec::encode(frame)?;
    let mut out = Vec::with_capacity(LEN_PREFIX + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
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
}
