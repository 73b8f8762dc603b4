//! The reference vendor's wire protocol spoken directly (no adapter): 4-byte length-prefixed
//! frames through the workspace codec ([`WireCodec`]), `HelloV2` first, then requests with
//! ids the responses echo, and pushed events in between. What a stranger on a raw socket or
//! a lean load generator sends; the adapter (`ReferenceClient`) adds timeouts, heartbeats and
//! reconnection on top.

use std::net::{IpAddr, SocketAddr};

use futures::{SinkExt, StreamExt};
use im_service::reference::{
    ClientFrame, PROTOCOL_VERSION, Reply, Request, ServerFrame, WireCodec,
};
use im_service::{
    Content, ConversationId, Credentials, Message, OutgoingMessage, Session, Timestamp, VendorEvent,
};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::LoadError;

type Codec = WireCodec<ServerFrame, ClientFrame>;

const PROTOCOL: &str = "reference";

/// The reading half of a raw connection.
pub struct RawReader {
    read: FramedRead<OwnedReadHalf, Codec>,
}

/// The writing half of a raw connection; request ids count up from 1.
pub struct RawWriter {
    write: FramedWrite<OwnedWriteHalf, Codec>,
    next_id: u64,
}

/// One raw connection to a reference vendor.
pub struct RawReference {
    reader: RawReader,
    writer: RawWriter,
}

impl RawReference {
    /// Connects (from `source` if given) and says `HelloV2`; done when `WelcomeV2` arrived.
    pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<Self, LoadError> {
        let (read, write) = super::connect(addr, source).await?.into_split();
        let mut conn = Self {
            reader: RawReader {
                read: FramedRead::new(read, Codec::default()),
            },
            writer: RawWriter {
                write: FramedWrite::new(write, Codec::default()),
                next_id: 1,
            },
        };
        conn.writer
            .write
            .send(ClientFrame::HelloV2 {
                version: PROTOCOL_VERSION,
            })
            .await?;
        match conn.reader.next_frame().await? {
            ServerFrame::WelcomeV2 { .. } => Ok(conn),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends `request` and waits for its response (events before it are skipped): the
    /// server's typed refusal is [`LoadError::Reference`], a closing `Fatal`
    /// [`LoadError::Fatal`].
    pub async fn request(&mut self, request: Request) -> Result<Reply, LoadError> {
        let id = self.writer.request(request).await?;
        self.writer.flush().await?;
        loop {
            match self.reader.next_frame().await? {
                ServerFrame::Response { id: got, result } if got == id => {
                    return result.map_err(LoadError::Reference);
                }
                ServerFrame::Event(_) => {}
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Logs in.
    pub async fn login(&mut self, credentials: &Credentials) -> Result<Session, LoadError> {
        match self.request(Request::Login(credentials.clone())).await? {
            Reply::Session(session) => Ok(session),
            other => Err(unexpected(&other)),
        }
    }

    /// Starts live pushes (after a login).
    pub async fn go_online(&mut self) -> Result<(), LoadError> {
        match self.request(Request::GoOnline).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The two halves, for a reader task beside a writer.
    pub fn split(self) -> (RawReader, RawWriter) {
        (self.reader, self.writer)
    }
}

impl RawReader {
    /// The next frame; the end of the stream is [`LoadError::Closed`], a `Fatal` frame
    /// [`LoadError::Fatal`].
    pub async fn next_frame(&mut self) -> Result<ServerFrame, LoadError> {
        match self.read.next().await {
            Some(Ok(ServerFrame::Fatal(e))) => Err(LoadError::Fatal(e)),
            Some(Ok(frame)) => Ok(frame),
            Some(Err(e)) => Err(e.into()),
            None => Err(LoadError::Closed(PROTOCOL)),
        }
    }

    /// The next pushed message (other events are skipped; a response is unexpected on a
    /// connection that only receives).
    pub async fn next_push(&mut self) -> Result<Message, LoadError> {
        loop {
            match self.next_frame().await? {
                ServerFrame::Event(VendorEvent::MessagePushed(m)) => return Ok(m),
                ServerFrame::Event(
                    e @ (VendorEvent::ConnectionLost { .. }
                    | VendorEvent::Kicked(_)
                    | VendorEvent::TokenExpired),
                ) => return Err(unexpected(&e)),
                ServerFrame::Event(_) => {}
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// The next send receipt (a refused send is [`LoadError::Reference`]).
    pub async fn next_receipt(&mut self) -> Result<(), LoadError> {
        loop {
            match self.next_frame().await? {
                ServerFrame::Response {
                    result: Ok(Reply::Receipt(_)),
                    ..
                } => return Ok(()),
                ServerFrame::Response { result: Err(e), .. } => {
                    return Err(LoadError::Reference(e));
                }
                ServerFrame::Event(_) => {}
                other => return Err(unexpected(&other)),
            }
        }
    }
}

impl RawWriter {
    /// Queues `request` in the write buffer (not flushed); returns its id.
    pub async fn request(&mut self, request: Request) -> Result<u64, LoadError> {
        let id = self.next_id;
        self.next_id += 1;
        self.write
            .feed(ClientFrame::Request { id, request })
            .await?;
        Ok(id)
    }

    /// Sends `text` to `conversation` and flushes.
    pub async fn send_text(
        &mut self,
        conversation: &ConversationId,
        text: String,
    ) -> Result<(), LoadError> {
        let message = OutgoingMessage::new(
            conversation.clone(),
            Content::text(text),
            Timestamp::from_millis(0),
        );
        self.request(Request::Send(message)).await?;
        self.flush().await
    }

    /// Writes out what is buffered.
    pub async fn flush(&mut self) -> Result<(), LoadError> {
        Ok(self.write.flush().await?)
    }
}

fn unexpected(what: &dyn std::fmt::Debug) -> LoadError {
    LoadError::Unexpected {
        protocol: PROTOCOL,
        what: format!("{what:?}").chars().take(200).collect(),
    }
}
