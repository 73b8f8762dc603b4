//! `ReferenceVendor`/`ReferenceClient`: the [`Vendor`] adapter for the reference protocol.
//!
//! Each login opens a TCP connection (TCP_NODELAY: Nagle would add ~40 ms per message) owned
//! by two tasks: a writer fed by a channel, and a reader that routes responses to the waiting
//! request by id and events to the client's event stream. Dropping the connection aborts
//! both tasks, so nothing outlives its owner.
//!
//! Every connection speaks protocol version 2 ([`PROTOCOL_VERSION`]): discovery and each
//! login connection open with `HelloV2` (on a login connection it is pipelined ahead of
//! `Login`, so the version costs no round trip).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::Instrument;

use super::protocol::{
    ClientFrame, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION, Reply, Request, ServerFrame, WireCodec,
};
use crate::capabilities::{Capabilities, Capability};
use crate::codec::CodecError;
use crate::lifecycle::{ChangeBatch, ChangeCursor, LifecyclePolicy, MessageChange};
use crate::model::{ClientMsgId, Content, ConversationId, OutgoingMessage, ServerMsgId};
use crate::vendor::{
    Credentials, EventStream, HistoryPage, HistoryQuery, OfflineAck, OfflineBatch, SendReceipt,
    Session, Vendor, VendorEvent,
};
use crate::{Result, ServiceError as E, ServiceError};

/// Settings of the reference adapter.
#[derive(Debug, Clone)]
pub struct ReferenceConfig {
    /// How long a request waits for its response before failing with `Timeout`.
    pub request_timeout: Duration,
    /// How long opening the TCP connection may take.
    pub connect_timeout: Duration,
    /// Capacity of the event stream; a consumer that stops reading stalls the connection,
    /// and the server then drops it as a slow consumer (its messages stay queued).
    pub event_buffer: usize,
    /// Largest frame accepted from the server.
    pub max_frame_len: usize,
}

impl Default for ReferenceConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            event_buffer: 1024,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }
}

/// A reference vendor server, as discovered by [`ReferenceVendor::discover`].
///
/// Each [`ReferenceVendor::client`] is one device's [`Vendor`]: hand it to `im_arch::ImClient`
/// (as `crates/im-arch/examples/quickstart.rs` does) or call it directly. Against the server
/// README.md starts (`cargo run -p im-vendor-sim -- --user
/// alice:alice-secret --user bob:bob-secret`):
///
/// ```no_run
/// # async fn demo() -> im_service::Result<()> {
/// use im_service::reference::{ReferenceConfig, ReferenceVendor};
/// use im_service::{Content, ConversationId, Credentials, OutgoingMessage, SystemClock};
/// use im_service::{Clock, UserId, Vendor};
///
/// let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 7700));
/// let vendor = ReferenceVendor::discover(addr, ReferenceConfig::default()).await?;
/// let alice = vendor.client();
/// alice.login(&Credentials::new("alice", "alice-secret")).await?;
/// let to_bob = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
/// let message = OutgoingMessage::new(to_bob, Content::text("hi"), SystemClock.now());
/// let receipt = alice.send(&message).await?;
/// println!("stored as {:?}", receipt.server_id);
/// alice.logout().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ReferenceVendor {
    addr: SocketAddr,
    capabilities: Arc<Capabilities>,
    /// The server's recall and edit rules, from its `WelcomeV2`.
    lifecycle: Arc<LifecyclePolicy>,
    config: ReferenceConfig,
}

impl ReferenceVendor {
    /// Connects once to ask the server what it can do (capabilities and lifecycle rules come
    /// from the server, never assumed), then disconnects.
    ///
    /// A server that does not speak protocol version 2 is reported as
    /// [`ServiceError::Protocol`] naming the versions (a version 1 server cannot decode
    /// `HelloV2` and answers with a codec error, which is translated here).
    pub async fn discover(addr: SocketAddr, config: ReferenceConfig) -> Result<Self> {
        let stream = connect(addr, config.connect_timeout).await?;
        let (read, write) = stream.into_split();
        let mut write = FramedWrite::new(
            write,
            WireCodec::<ServerFrame, ClientFrame>::new(config.max_frame_len),
        );
        let mut read = FramedRead::new(
            read,
            WireCodec::<ServerFrame, ClientFrame>::new(config.max_frame_len),
        );
        write
            .send(ClientFrame::HelloV2 {
                version: PROTOCOL_VERSION,
            })
            .await?;
        let answer = tokio::time::timeout(config.request_timeout, read.next())
            .await
            .map_err(|_| E::Timeout(config.request_timeout))?;
        match answer {
            Some(Ok(ServerFrame::WelcomeV2 {
                capabilities,
                lifecycle,
                protocol,
                ..
            })) => {
                if protocol != PROTOCOL_VERSION {
                    return Err(version_mismatch(addr, &format!("version {protocol}")));
                }
                Ok(Self {
                    addr,
                    capabilities: Arc::new(capabilities),
                    lifecycle: Arc::new(lifecycle),
                    config,
                })
            }
            Some(Ok(ServerFrame::Welcome { .. })) => Err(version_mismatch(addr, "version 1")),
            // What a version 1 server answers a frame it cannot decode.
            Some(Ok(ServerFrame::Fatal(E::Codec(e @ CodecError::Malformed(_))))) => {
                Err(version_mismatch(
                    addr,
                    &format!("an older version (it could not decode HelloV2: {e})"),
                ))
            }
            Some(Ok(ServerFrame::Fatal(e))) => Err(e),
            Some(Ok(other)) => Err(E::Protocol(format!("expected WelcomeV2, got {other:?}"))),
            Some(Err(e)) => Err(e),
            None => Err(E::ConnectionLost("closed during handshake".into())),
        }
    }

    /// The server's rules for recall and edit (from its `WelcomeV2`).
    pub fn lifecycle(&self) -> &LifecyclePolicy {
        &self.lifecycle
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new client handle (one device), not logged in.
    pub fn client(&self) -> ReferenceClient {
        let (tx, rx) = mpsc::channel(self.config.event_buffer.max(1));
        ReferenceClient {
            vendor: self.clone(),
            conn: Mutex::new(None),
            events_tx: tx,
            events_rx: Mutex::new(Some(rx)),
        }
    }
}

/// The error for a server that speaks another protocol version than this adapter.
fn version_mismatch(addr: SocketAddr, server_speaks: &str) -> ServiceError {
    E::Protocol(format!(
        "the reference server at {addr} speaks {server_speaks}; this adapter speaks protocol \
         version {PROTOCOL_VERSION} only (upgrade the server)"
    ))
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| E::Timeout(timeout))?
        .map_err(|e| E::Unavailable(format!("cannot connect to {addr}: {e}")))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Requests in flight and the connection's fate, shared by callers and the reader task.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Result<Reply>>>,
    /// Set once the connection is over; later calls fail with it.
    closed: Option<ServiceError>,
}

/// One live (or dead) TCP connection.
struct Connection {
    frames: mpsc::Sender<ClientFrame>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    /// Set when we close on purpose, so no `ConnectionLost` event is emitted.
    closing: Arc<AtomicBool>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        self.reader.abort();
        self.writer.abort();
    }
}

/// Ends a connection: fails every waiting request and remembers why.
fn close(pending: &Mutex<Pending>, why: ServiceError) {
    let mut p = pending.lock();
    if p.closed.is_none() {
        p.closed = Some(why.clone());
    }
    for (_, tx) in p.waiting.drain() {
        let _ = tx.send(Err(why.clone()));
    }
}

impl Connection {
    fn open(
        stream: TcpStream,
        config: &ReferenceConfig,
        events: mpsc::Sender<VendorEvent>,
    ) -> Self {
        let (read, write) = stream.into_split();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let closing = Arc::new(AtomicBool::new(false));
        let (frames, mut outgoing) = mpsc::channel::<ClientFrame>(256);

        let mut sink = FramedWrite::new(
            write,
            WireCodec::<ServerFrame, ClientFrame>::new(config.max_frame_len),
        );
        let writer_pending = pending.clone();
        let writer = tokio::spawn(async move {
            // Every connection opens with the version, ahead of the first request.
            let hello = ClientFrame::HelloV2 {
                version: PROTOCOL_VERSION,
            };
            if let Err(e) = sink.feed(hello).await {
                close(&writer_pending, e);
                return;
            }
            // Frames are fed into the write buffer and flushed once the queue is empty:
            // requests queued together (the login behind the hello, a window of sends) go
            // out in one write instead of one each.
            loop {
                let frame = match outgoing.try_recv() {
                    Ok(frame) => frame,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if let Err(e) = sink.flush().await {
                            close(&writer_pending, e);
                            return;
                        }
                        match outgoing.recv().await {
                            Some(frame) => frame,
                            None => break,
                        }
                    }
                };
                if let Err(e) = sink.feed(frame).await {
                    close(&writer_pending, e);
                    return;
                }
            }
            // Whatever was fed before the connection was dropped (a logout) goes out.
            let _ = sink.flush().await;
        });

        let mut source = FramedRead::new(
            read,
            WireCodec::<ServerFrame, ClientFrame>::new(config.max_frame_len),
        );
        let reader_pending = pending.clone();
        let reader_closing = closing.clone();
        let reader = tokio::spawn(
            async move {
                let mut ended: Option<ServiceError> = None;
                let why = loop {
                    match source.next().await {
                        Some(Ok(ServerFrame::Response { id, result })) => {
                            let tx = reader_pending.lock().waiting.remove(&id);
                            if let Some(tx) = tx {
                                let _ = tx.send(result);
                            }
                        }
                        Some(Ok(ServerFrame::Event(ev))) => {
                            match &ev {
                                VendorEvent::Kicked(r) => ended = Some(E::Kicked(r.clone())),
                                VendorEvent::TokenExpired => ended = Some(E::TokenExpired),
                                VendorEvent::ConnectionLost { reason } => {
                                    ended = Some(E::ConnectionLost(reason.clone()))
                                }
                                _ => {}
                            }
                            if let Some(why) = &ended {
                                // Later calls fail with the reason even before the socket closes.
                                reader_pending.lock().closed.get_or_insert_with(|| why.clone());
                            }
                            if events.send(ev).await.is_err() {
                                tracing::debug!("event stream dropped by the client");
                            }
                        }
                        Some(Ok(ServerFrame::Fatal(e))) => break ended.unwrap_or(e),
                        Some(Ok(ServerFrame::WelcomeV2 { protocol, .. })) if protocol != PROTOCOL_VERSION => {
                            break E::Protocol(format!(
                                "the server switched to protocol version {protocol}; this adapter speaks {PROTOCOL_VERSION}"
                            ));
                        }
                        Some(Ok(ServerFrame::Welcome { .. } | ServerFrame::WelcomeV2 { .. })) => {}
                        // The stream ended inside a frame: the connection broke mid-frame (a
                        // network cut), which a new connection can cure — not a malformed
                        // answer. Reported as lost, so a request in flight is retried (its
                        // client id makes a resent message count once) instead of failing
                        // for good.
                        Some(Err(E::Codec(CodecError::Truncated))) => {
                            break ended.unwrap_or_else(|| {
                                E::ConnectionLost("the connection broke inside a frame".into())
                            })
                        }
                        Some(Err(e)) => break ended.unwrap_or(e),
                        None => break ended.unwrap_or_else(|| E::ConnectionLost("closed by server".into())),
                    }
                };
                let announced = matches!(why, E::Kicked(_) | E::TokenExpired)
                    || matches!(&why, E::ConnectionLost(_) if reader_pending.lock().closed.is_some());
                close(&reader_pending, why.clone());
                if !reader_closing.load(Ordering::SeqCst) && !announced {
                    let _ = events.send(VendorEvent::ConnectionLost { reason: why.to_string() }).await;
                }
            }
            .instrument(tracing::debug_span!("reference_reader")),
        );
        Self {
            frames,
            pending,
            next_id: AtomicU64::new(1),
            closing,
            reader,
            writer,
        }
    }

    async fn call(&self, request: Request, timeout: Duration) -> Result<Reply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock();
            if let Some(why) = &p.closed {
                return Err(why.clone());
            }
            p.waiting.insert(id, tx);
        }
        if self
            .frames
            .send(ClientFrame::Request { id, request })
            .await
            .is_err()
        {
            self.pending.lock().waiting.remove(&id);
            return Err(self
                .pending
                .lock()
                .closed
                .clone()
                .unwrap_or(E::ConnectionLost("writer stopped".into())));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self
                .pending
                .lock()
                .closed
                .clone()
                .unwrap_or(E::ConnectionLost("connection closed".into()))),
            Err(_) => {
                self.pending.lock().waiting.remove(&id);
                Err(E::Timeout(timeout))
            }
        }
    }
}

/// One device's connection to a reference vendor; implements [`Vendor`].
pub struct ReferenceClient {
    vendor: ReferenceVendor,
    /// The current connection; a dead one stays here so calls report why it died.
    conn: Mutex<Option<Arc<Connection>>>,
    events_tx: mpsc::Sender<VendorEvent>,
    events_rx: Mutex<Option<mpsc::Receiver<VendorEvent>>>,
}

impl std::fmt::Debug for ReferenceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReferenceClient")
            .field("addr", &self.vendor.addr)
            .finish_non_exhaustive()
    }
}

impl ReferenceClient {
    fn current(&self) -> Option<Arc<Connection>> {
        self.conn.lock().clone()
    }

    fn replace(&self, next: Option<Arc<Connection>>) -> Option<Arc<Connection>> {
        std::mem::replace(&mut *self.conn.lock(), next)
    }

    async fn call(&self, request: Request) -> Result<Reply> {
        let conn = self.current().ok_or(E::NotLoggedIn)?;
        conn.call(request, self.vendor.config.request_timeout).await
    }
}

fn unexpected(reply: Reply) -> ServiceError {
    E::Protocol(format!("unexpected reply {reply:?}"))
}

impl ReferenceClient {
    /// Fails with `Unsupported` when the server did not declare `cap`: no request is sent
    /// for what the server said it cannot do.
    fn require(&self, cap: Capability) -> Result<()> {
        if self.vendor.capabilities.supports(cap) {
            Ok(())
        } else {
            Err(E::Unsupported(cap))
        }
    }

    /// Sends a change request (recall, edit, delete for me) and expects the stored change.
    async fn change(&self, request: Request) -> Result<MessageChange> {
        match self.call(request).await? {
            Reply::Change(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }
}

#[async_trait]
impl Vendor for ReferenceClient {
    fn name(&self) -> &str {
        "reference"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.vendor.capabilities
    }

    fn take_events(&self) -> Option<EventStream> {
        let rx = self.events_rx.lock().take()?;
        Some(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(vendor = "reference", user = %credentials.user))]
    async fn login(&self, credentials: &Credentials) -> Result<Session> {
        // A new login replaces the previous connection quietly.
        drop(self.replace(None));
        let stream = connect(self.vendor.addr, self.vendor.config.connect_timeout).await?;
        let conn = Arc::new(Connection::open(
            stream,
            &self.vendor.config,
            self.events_tx.clone(),
        ));
        match conn
            .call(
                Request::Login(credentials.clone()),
                self.vendor.config.request_timeout,
            )
            .await
        {
            Ok(Reply::Session(session)) => {
                self.replace(Some(conn));
                Ok(session)
            }
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        }
    }

    async fn logout(&self) -> Result<()> {
        let Some(conn) = self.replace(None) else {
            return Ok(());
        };
        conn.closing.store(true, Ordering::SeqCst);
        if conn.pending.lock().closed.is_none() {
            // Best effort: the server closes after answering; a dead link needs no goodbye.
            let _ = conn.call(Request::Logout, Duration::from_secs(2)).await;
        }
        Ok(())
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<SendReceipt> {
        let max = self.vendor.capabilities.max_message_bytes;
        let size = message.content.size();
        if size > max {
            // Refused locally too: the frame would be wasted bandwidth.
            return Err(E::MessageTooLarge { size, max });
        }
        match self.call(Request::Send(message.clone())).await? {
            Reply::Receipt(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn send_after(
        &self,
        message: &OutgoingMessage,
        after: &ClientMsgId,
    ) -> Result<SendReceipt> {
        self.require(Capability::OrderedSends)?;
        let max = self.vendor.capabilities.max_message_bytes;
        let size = message.content.size();
        if size > max {
            return Err(E::MessageTooLarge { size, max });
        }
        match self
            .call(Request::SendAfter(message.clone(), after.clone()))
            .await?
        {
            Reply::Receipt(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn pull_offline(&self, max: u32) -> Result<OfflineBatch> {
        match self.call(Request::PullOffline(max)).await? {
            Reply::Offline(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    async fn ack_offline(&self, ack: &OfflineAck) -> Result<()> {
        match self.call(Request::AckOffline(ack.clone())).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn go_online(&self) -> Result<()> {
        match self.call(Request::GoOnline).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn pull_history(&self, query: &HistoryQuery) -> Result<HistoryPage> {
        match self.call(Request::PullHistory(query.clone())).await? {
            Reply::History(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        match self.call(Request::Ping).await? {
            Reply::Pong => Ok(started.elapsed()),
            other => Err(unexpected(other)),
        }
    }

    async fn mark_read(&self, conversation: &ConversationId, up_to: &ServerMsgId) -> Result<()> {
        match self
            .call(Request::MarkRead(conversation.clone(), up_to.clone()))
            .await?
        {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn lifecycle(&self) -> LifecyclePolicy {
        (*self.vendor.lifecycle).clone()
    }

    async fn recall(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> Result<MessageChange> {
        self.require(Capability::Recall)?;
        self.change(Request::Recall(conversation.clone(), target.clone()))
            .await
    }

    async fn edit(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
        content: &Content,
    ) -> Result<MessageChange> {
        self.require(Capability::Edit)?;
        let max = self.vendor.capabilities.max_message_bytes;
        let size = content.size();
        if size > max {
            // Refused locally, as `send` does: the frame would be wasted bandwidth.
            return Err(E::MessageTooLarge { size, max });
        }
        self.change(Request::Edit(
            conversation.clone(),
            target.clone(),
            content.clone(),
        ))
        .await
    }

    async fn delete_for_me(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> Result<MessageChange> {
        self.require(Capability::DeleteForMe)?;
        self.change(Request::DeleteForMe(conversation.clone(), target.clone()))
            .await
    }

    async fn pull_changes(&self, since: Option<ChangeCursor>, max: u32) -> Result<ChangeBatch> {
        self.require(Capability::ChangeFeed)?;
        match self.call(Request::PullChanges(since, max)).await? {
            Reply::Changes(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }
}
