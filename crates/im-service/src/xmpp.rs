//! `XmppVendor`/`XmppClient`: the [`Vendor`] adapter for XMPP servers (tested against
//! Prosody 0.12 on loopback; feature `xmpp`).
//!
//! Built on `tokio-xmpp`'s lower level (connector, SASL `auth`, the XML stream), not on its
//! high-level `Client`, which reconnects by itself and hides failed logins and `conflict`
//! stream errors: the contract wants the supervisor to own the connection's life. One task
//! per login owns the stream: it answers server pings and XEP-0198 ack requests, routes IQ
//! results by id, collects MAM results by query id, holds messages until `go_online`, and
//! turns the stream's end into `ConnectionLost` (or `Kicked` on `conflict`).
//!
//! Mapping of the contract:
//! * login: SASL (SCRAM or PLAIN) with the token as password, resource binding with a fixed
//!   resource (a second login of the same user is a `conflict`: the first is kicked), then
//!   XEP-0198 stream management for acks;
//! * send: a `chat` message with XEP-0359 origin-id = the client id, acknowledged once the
//!   server's `<a h>` covers it. XMPP has no server-wide message id: each archive assigns its
//!   own stanza-id, so the origin-id is the id every copy of a message shares (live, offline,
//!   MAM), and the adapter uses it as the server id. No server sequence numbers: the
//!   architecture layer orders by time, ties in the order of the lists (below);
//! * ACK-online: `pull_offline` sends the initial presence, after which the server delivers
//!   the offline messages (XEP-0160) at once, then a ping; everything before the ping's
//!   answer is the offline batch (a stream is ordered). Messages after it wait in the adapter
//!   until `go_online`. The server forgets offline messages once delivered, so the ack is
//!   local; a crash in between is covered by the client's catch-up through history;
//! * history: MAM (XEP-0313) with `with`, start/end and RSM `before` paging, newest first;
//! * heartbeat: XEP-0199 ping to the server, answered with the round-trip time.
//!
//! Order without sequences. A message's time is its sender's millisecond when our adapter
//! sent it (carried in the stanza id), else the server's stamp, which Prosody gives in whole
//! seconds: a burst from a foreign client shares one time. The server's own order is the
//! order it hands messages out (the offline store and a MAM page come oldest first), so
//! every list this adapter returns is exactly that order reversed, then stably sorted by
//! time, newest first: messages with the same time stay in reverse server order, and the
//! client (which reverses a list and sorts it stably by time) gets them in server order.
//! Ids never break ties (stanza-ids are random). No sub-second time is made up for foreign
//! senders: the offline and the MAM copy of a message would get different ones, and a made-up
//! millisecond would reorder it against our senders' real milliseconds. The offline messages
//! (all delivered by the server at presence) are handed out in batches of `max` starting
//! from the oldest chunk, each batch newest first: a client without sequences delivers each
//! batch as it comes, so the newest chunk first would put it before older messages (a burst
//! of more than one batch would arrive out of order at the app).

use std::collections::HashMap;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_xmpp::connect::{DnsConfig, ServerConnector, TcpServerConnector};
use tokio_xmpp::error::{AuthError, Error as XmppError};
use tokio_xmpp::parsers::bind::{BindQuery, BindResponse};
use tokio_xmpp::parsers::data_forms::{DataForm, DataFormType, Field};
use tokio_xmpp::parsers::delay::Delay;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::jid::{BareJid, Jid};
use tokio_xmpp::parsers::mam::{Fin, Query, QueryId, Result_ as MamResult};
use tokio_xmpp::parsers::message::{Lang, Message as XMessage, MessageType};
use tokio_xmpp::parsers::ns;
use tokio_xmpp::parsers::ping::Ping;
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::parsers::rsm::SetQuery;
use tokio_xmpp::parsers::sm::{self, A, Enable, R};
use tokio_xmpp::parsers::stanza::Stanza;
use tokio_xmpp::parsers::stanza_id::{OriginId, StanzaId};
use tokio_xmpp::parsers::stream_error::DefinedCondition;
use tokio_xmpp::xmlstream::{ReadError, StreamHeader, Timeouts, XmppStream, XmppStreamElement};
use tracing::Instrument;

use crate::capabilities::{Capabilities, Capability};
use crate::error::KickReason;
use crate::model::{
    ClientMsgId, Content, ConversationId, Message, OutgoingMessage, ServerMsgId, Timestamp, UserId,
};
use crate::vendor::{
    Credentials, EventStream, HistoryPage, HistoryQuery, HistoryRange, HistoryScope, OfflineAck,
    OfflineBatch, SendReceipt, Session, Vendor, VendorEvent,
};
use crate::{Result, ServiceError as E};

/// The XMPP connection's byte stream.
type Io = <TcpServerConnector as ServerConnector>::Stream;

/// Settings of the XMPP adapter.
#[derive(Debug, Clone)]
pub struct XmppConfig {
    /// The server's client port (plaintext; loopback only).
    pub addr: SocketAddr,
    /// The XMPP domain users live on (`user@domain`).
    pub domain: String,
    /// The resource every login binds: a second login of the same user conflicts with it.
    pub resource: String,
    /// How long a request (login step, IQ, ack) waits for its answer.
    pub request_timeout: Duration,
    /// Largest message body sent (the server's stanza limit is higher; this keeps the
    /// contract's `MessageTooLarge` a client-side, typed refusal).
    pub max_message_bytes: usize,
}

impl XmppConfig {
    /// Settings for `domain` served at `addr`, resource `im-layers`, 5 s requests, 64 KiB
    /// messages.
    pub fn new(addr: SocketAddr, domain: impl Into<String>) -> Self {
        Self {
            addr,
            domain: domain.into(),
            resource: "im-layers".into(),
            request_timeout: Duration::from_secs(5),
            max_message_bytes: 64 * 1024,
        }
    }
}

/// The XMPP vendor: a factory of [`XmppClient`]s.
///
/// A client's token is its XMPP password. Against the test Prosody README.md starts
/// (`tests/prosody/prosody.sh start`, domain `im.test`, accounts made with
/// `tests/prosody/prosody.sh register alice alice-secret`); with `im_arch::ImClient` see
/// `crates/im-arch/examples/xmpp_quickstart.rs`:
///
/// ```no_run
/// # async fn demo() -> im_service::Result<()> {
/// use im_service::xmpp::{XmppConfig, XmppVendor};
/// use im_service::{Credentials, Vendor};
///
/// let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 5222));
/// let vendor = XmppVendor::new(XmppConfig::new(addr, "im.test"));
/// let alice = vendor.client();
/// let session = alice.login(&Credentials::new("alice", "alice-secret")).await?;
/// println!("logged in as {}", session.user);
/// alice.logout().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct XmppVendor {
    config: XmppConfig,
    capabilities: Capabilities,
}

impl XmppVendor {
    /// The vendor at `config`. Capabilities are what XMPP with the XEPs above offers: no
    /// sequence numbers, no idempotent resend on the server, no groups (MUC is not mapped),
    /// no read receipts, no token expiry.
    pub fn new(config: XmppConfig) -> Self {
        let capabilities = Capabilities::none()
            .with(Capability::HistoryByTime)
            .with(Capability::ServerAcks)
            .with(Capability::OfflineQueue)
            .with(Capability::KickOnSecondLogin)
            .with(Capability::Heartbeat)
            .with_max_message_bytes(config.max_message_bytes);
        Self {
            config,
            capabilities,
        }
    }

    /// What every client of this vendor declares.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// A new client handle (not logged in).
    pub fn client(&self) -> XmppClient {
        let (tx, rx) = mpsc::unbounded_channel();
        XmppClient {
            vendor: self.clone(),
            conn: Mutex::new(None),
            offline: Mutex::new(Vec::new()),
            sent: Mutex::new(HashMap::new()),
            acks: Mutex::new(HashSet::new()),
            events_tx: tx,
            events_rx: Mutex::new(Some(rx)),
        }
    }
}

/// One user's handle.
pub struct XmppClient {
    vendor: XmppVendor,
    conn: Mutex<Option<Conn>>,
    /// The offline messages received at presence, newest first, handed out by
    /// `pull_offline` from the oldest end.
    offline: Mutex<Vec<Message>>,
    /// Receipts of this connection's sends by client id (a resend of the same id on the same
    /// connection is answered from here).
    sent: Mutex<HashMap<ClientMsgId, SendReceipt>>,
    /// Offline acks handed out and not used yet.
    acks: Mutex<HashSet<String>>,
    events_tx: mpsc::UnboundedSender<VendorEvent>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<VendorEvent>>>,
}

impl std::fmt::Debug for XmppClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XmppClient")
            .field("config", &self.vendor.config)
            .finish_non_exhaustive()
    }
}

/// One login's connection: its task and the channel to it.
struct Conn {
    me: UserId,
    commands: mpsc::UnboundedSender<Cmd>,
    task: JoinHandle<()>,
    /// Whether the offline batch was fetched on this connection.
    offline_fetched: bool,
    /// Why the connection ended, once it has: later calls fail with it (e.g. `Kicked`)
    /// until the next login.
    ended: Arc<Mutex<Option<E>>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the connection task is asked to do.
enum Cmd {
    /// Send a message stanza; answered once the server acknowledged it (XEP-0198).
    Send(XMessage, UserId, oneshot::Sender<Result<()>>),
    /// Send an IQ and answer with its result (or error).
    Iq(Iq, oneshot::Sender<Result<Iq>>),
    /// Send a MAM query; answer with the forwarded messages and the `fin`.
    Mam(Iq, String, MamAnswer),
    /// Send the initial presence; answer with the offline messages delivered before a
    /// following ping's result.
    Presence(oneshot::Sender<Result<Vec<XMessage>>>),
    /// The client stored every offline message: acknowledge them to the server.
    OfflineStored,
    /// Start pushing messages.
    GoOnline,
    /// Close the stream cleanly.
    Close(oneshot::Sender<()>),
}

fn now() -> Timestamp {
    crate::clock::Clock::now(&crate::clock::SystemClock)
}

/// An XEP-0199 ping to the server `domain`, with id `id`.
fn server_ping(domain: &str, id: String) -> Result<Iq> {
    let domain: Jid = domain
        .parse()
        .map_err(|e| E::Protocol(format!("bad XMPP domain {domain:?}: {e}")))?;
    let mut ping = Iq::from_get(id, Ping);
    if let Iq::Get { to, .. } = &mut ping {
        *to = Some(domain);
    }
    Ok(ping)
}

fn new_id() -> String {
    format!("i{:016x}", rand::random::<u64>())
}

fn io_error(e: impl std::fmt::Display) -> E {
    E::ConnectionLost(e.to_string())
}

impl XmppClient {
    fn jid_of(&self, user: &UserId) -> Result<BareJid> {
        format!("{user}@{}", self.vendor.config.domain)
            .parse()
            .map_err(|e| E::InvalidRequest(format!("not an XMPP user name {user:?}: {e}")))
    }

    fn commands(&self) -> Result<(UserId, mpsc::UnboundedSender<Cmd>)> {
        let conn = self.conn.lock();
        let c = conn.as_ref().ok_or(E::NotLoggedIn)?;
        if let Some(e) = c.ended.lock().clone() {
            return Err(e);
        }
        Ok((c.me.clone(), c.commands.clone()))
    }

    async fn ask<T>(&self, cmd: impl FnOnce(oneshot::Sender<Result<T>>) -> Cmd) -> Result<T> {
        let (_, commands) = self.commands()?;
        let (tx, rx) = oneshot::channel();
        commands.send(cmd(tx)).map_err(|_| E::NotLoggedIn)?;
        let timeout = self.vendor.config.request_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(E::ConnectionLost("connection closed".into())),
            Err(_) => Err(E::Timeout(timeout)),
        }
    }

    /// Tells the connection the client stored every offline message.
    fn offline_stored(&self) -> Result<()> {
        let (_, commands) = self.commands()?;
        commands
            .send(Cmd::OfflineStored)
            .map_err(|_| E::NotLoggedIn)
    }

    /// Connects, authenticates, binds and enables stream management.
    async fn open(&self, credentials: &Credentials) -> Result<(XmppStream<Io>, BareJid)> {
        let config = &self.vendor.config;
        let bare = self.jid_of(&credentials.user)?;
        let jid = Jid::from(bare.clone());
        let connector = TcpServerConnector::from(DnsConfig::Addr {
            addr: config.addr.to_string(),
        });
        let timeouts = Timeouts {
            read_timeout: Duration::from_secs(300),
            response_timeout: config.request_timeout,
        };
        let steps = async {
            let (pending, _binding) = connector
                .connect(&jid, ns::JABBER_CLIENT, timeouts)
                .await
                .map_err(|e| E::Unavailable(format!("xmpp connect: {e}")))?;
            let (features, stream) = pending.recv_features().await.map_err(io_error)?;
            let creds = sasl::common::Credentials::default()
                .with_username(credentials.user.as_str())
                .with_password(credentials.token.expose());
            let initiating = tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds)
                .await
                .map_err(|e| match e {
                    XmppError::Auth(AuthError::Fail(c)) => E::AuthFailed(format!("{c:?}")),
                    XmppError::Auth(a) => E::AuthFailed(a.to_string()),
                    other => io_error(other),
                })?;
            let pending = initiating
                .send_header(StreamHeader {
                    to: Some(config.domain.clone().into()),
                    from: None,
                    id: None,
                })
                .await
                .map_err(io_error)?;
            let (_features, mut stream): (_, XmppStream<Io>) =
                pending.recv_features().await.map_err(io_error)?;
            let bind_id = new_id();
            let bind = Iq::from_set(
                bind_id.clone(),
                BindQuery::new(Some(config.resource.clone())),
            );
            stream
                .send(&XmppStreamElement::Stanza(bind.into()))
                .await
                .map_err(io_error)?;
            loop {
                match next(&mut stream).await? {
                    XmppStreamElement::Stanza(Stanza::Iq(Iq::Result { id, payload, .. }))
                        if id == bind_id =>
                    {
                        let bound = payload
                            .map(BindResponse::try_from)
                            .transpose()
                            .map_err(|e| E::Protocol(format!("bind: {e}")))?;
                        tracing::debug!(jid = ?bound.map(|b| b.jid), "xmpp bound");
                        break;
                    }
                    XmppStreamElement::Stanza(Stanza::Iq(Iq::Error { id, .. }))
                        if id == bind_id =>
                    {
                        return Err(E::Protocol("resource binding refused".into()));
                    }
                    _ => {}
                }
            }
            stream
                .send(&XmppStreamElement::SM(sm::Nonza::Enable(Enable::new())))
                .await
                .map_err(io_error)?;
            loop {
                match next(&mut stream).await? {
                    XmppStreamElement::SM(sm::Nonza::Enabled(_)) => break,
                    XmppStreamElement::SM(sm::Nonza::Failed(_)) => {
                        return Err(E::Protocol("stream management refused".into()));
                    }
                    _ => {}
                }
            }
            Ok::<_, E>(stream)
        };
        let stream = tokio::time::timeout(config.request_timeout * 3, steps)
            .await
            .map_err(|_| E::Timeout(config.request_timeout * 3))??;
        Ok((stream, bare))
    }
}

/// The next element of a stream being set up (soft timeouts skipped).
async fn next(stream: &mut XmppStream<Io>) -> Result<XmppStreamElement> {
    loop {
        match stream
            .next()
            .await
            .map(|v| v.and_then(|v| v.into_read_error()))
        {
            Some(Ok(XmppStreamElement::StreamError(e))) => {
                return Err(E::ConnectionLost(format!("stream error: {}", e.0)));
            }
            Some(Ok(el)) => return Ok(el),
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(e)) => return Err(io_error(format!("{e:?}"))),
            None => return Err(E::ConnectionLost("stream closed".into())),
        }
    }
}

/// The answer to a MAM query: the forwarded results and the closing IQ.
type MamAnswer = oneshot::Sender<Result<(Vec<MamResult>, Iq)>>;

/// A MAM query in flight: its query id, the results so far, and who waits.
type MamQuery = (String, Vec<MamResult>, MamAnswer);

/// A sent message waiting for the server's ack.
struct PendingAck {
    /// The stanza count that covers it (XEP-0198 `h`).
    count: u32,
    /// The stanza id: an error bounce with it refuses the send.
    id: String,
    /// The addressee, for the error.
    to: UserId,
    done: oneshot::Sender<Result<()>>,
}

/// The connection task's state.
struct Task {
    stream: XmppStream<Io>,
    me: BareJid,
    domain: String,
    events: mpsc::UnboundedSender<VendorEvent>,
    /// Stanzas sent / received since stream management was enabled.
    sent: u32,
    received: u32,
    /// While the offline messages are not stored by the client, the `h` reported to the
    /// server stops before them: if the connection dies first, the server keeps them
    /// (XEP-0198 unacknowledged stanzas go back to offline storage) and the next login
    /// gets them again. ACK-online, carried over stream management.
    ack_cap: Option<u32>,
    /// Sends waiting for the server's ack.
    acks: Vec<PendingAck>,
    /// Where the reason the connection ended is left for the client's later calls.
    ended: Arc<Mutex<Option<E>>>,
    iqs: HashMap<String, oneshot::Sender<Result<Iq>>>,
    /// MAM queries: iq id → (query id, results so far, answer).
    mams: HashMap<String, MamQuery>,
    /// Presence sent: the ping id whose result ends the offline batch, and the answer.
    offline: Option<(String, oneshot::Sender<Result<Vec<XMessage>>>)>,
    /// Messages received and not pushed yet (offline, then the ones before `go_online`).
    held: Vec<XMessage>,
    online: bool,
}

impl Task {
    async fn send(&mut self, stanza: Stanza) -> std::result::Result<(), E> {
        self.stream
            .send(&XmppStreamElement::Stanza(stanza))
            .await
            .map_err(io_error)?;
        self.sent = self.sent.wrapping_add(1);
        Ok(())
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Cmd>) {
        let reason = loop {
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { break None };
                    match self.command(cmd).await {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(e) => break Some(VendorEvent::ConnectionLost { reason: e.to_string() }),
                    }
                }
                el = self.stream.next() => {
                    match el.map(|v| v.and_then(|v| v.into_read_error())) {
                        Some(Ok(el)) => {
                            if let Err(ev) = self.element(el).await {
                                break Some(ev);
                            }
                        }
                        Some(Err(ReadError::SoftTimeout)) => {}
                        Some(Err(e)) => break Some(VendorEvent::ConnectionLost { reason: format!("{e:?}") }),
                        None => break Some(VendorEvent::ConnectionLost { reason: "stream closed".into() }),
                    }
                }
            }
        };
        // Later calls fail with why it ended; everything waiting fails now.
        let error = match &reason {
            Some(VendorEvent::Kicked(k)) => E::Kicked(k.clone()),
            Some(VendorEvent::ConnectionLost { reason }) => E::ConnectionLost(reason.clone()),
            _ => E::NotLoggedIn,
        };
        *self.ended.lock() = Some(error.clone());
        for p in self.acks.drain(..) {
            let _ = p.done.send(Err(error.clone()));
        }
        if let Some(ev) = reason {
            let _ = self.events.send(ev);
        }
    }

    /// Handles one command; `Ok(false)` ends the task (closed).
    async fn command(&mut self, cmd: Cmd) -> std::result::Result<bool, E> {
        match cmd {
            Cmd::Send(message, to, done) => {
                let id = message.id.as_ref().map(|i| i.0.clone()).unwrap_or_default();
                self.send(message.into()).await?;
                self.acks.push(PendingAck {
                    count: self.sent,
                    id,
                    to,
                    done,
                });
                self.stream
                    .send(&XmppStreamElement::SM(sm::Nonza::Req(R)))
                    .await
                    .map_err(io_error)?;
            }
            Cmd::Iq(iq, done) => {
                self.iqs.insert(iq_id(&iq).to_owned(), done);
                self.send(iq.into()).await?;
            }
            Cmd::Mam(iq, queryid, done) => {
                self.mams
                    .insert(iq_id(&iq).to_owned(), (queryid, Vec::new(), done));
                self.send(iq.into()).await?;
            }
            Cmd::Presence(done) => {
                self.ack_cap = Some(self.received);
                let ping_id = new_id();
                self.offline = Some((ping_id.clone(), done));
                self.send(Presence::available().into()).await?;
                let ping = server_ping(&self.domain, ping_id)?;
                self.send(ping.into()).await?;
            }
            Cmd::OfflineStored => {
                if self.ack_cap.take().is_some() {
                    let a = XmppStreamElement::SM(sm::Nonza::Ack(A::new(self.received)));
                    self.stream.send(&a).await.map_err(io_error)?;
                }
            }
            Cmd::GoOnline => {
                self.online = true;
                for m in std::mem::take(&mut self.held) {
                    self.push(&m);
                }
            }
            Cmd::Close(done) => {
                let _ = self
                    .send(Presence::new(tokio_xmpp::parsers::presence::Type::Unavailable).into())
                    .await;
                let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.shutdown()).await;
                let _ = done.send(());
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn push(&self, m: &XMessage) {
        if let Some(message) = to_model(m, None, None) {
            let _ = self.events.send(VendorEvent::MessagePushed(message));
        }
    }

    /// Handles one received element; `Err` ends the connection with that event.
    async fn element(&mut self, el: XmppStreamElement) -> std::result::Result<(), VendorEvent> {
        match el {
            XmppStreamElement::StreamError(e) => {
                return Err(if e.0.condition == DefinedCondition::Conflict {
                    VendorEvent::Kicked(KickReason::LoggedInElsewhere)
                } else {
                    VendorEvent::ConnectionLost {
                        reason: format!("stream error: {}", e.0),
                    }
                });
            }
            XmppStreamElement::SM(sm::Nonza::Req(_)) => {
                let h = self.ack_cap.unwrap_or(self.received);
                let a = XmppStreamElement::SM(sm::Nonza::Ack(A::new(h)));
                if let Err(e) = self.stream.send(&a).await {
                    return Err(VendorEvent::ConnectionLost {
                        reason: e.to_string(),
                    });
                }
            }
            XmppStreamElement::SM(sm::Nonza::Ack(A { h })) => {
                let (done, waiting): (Vec<_>, Vec<_>) =
                    self.acks.drain(..).partition(|p| p.count <= h);
                self.acks = waiting;
                for p in done {
                    let _ = p.done.send(Ok(()));
                }
            }
            XmppStreamElement::Stanza(stanza) => {
                self.received = self.received.wrapping_add(1);
                self.stanza(stanza).await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn stanza(&mut self, stanza: Stanza) -> std::result::Result<(), VendorEvent> {
        match stanza {
            Stanza::Iq(iq) => {
                let id = iq_id(&iq).to_owned();
                match &iq {
                    Iq::Get { from, payload, .. } if payload.is("ping", ns::PING) => {
                        let mut pong = Iq::empty_result(
                            from.clone().unwrap_or_else(|| Jid::from(self.me.clone())),
                            id,
                        );
                        if from.is_none()
                            && let Iq::Result { to, .. } = &mut pong
                        {
                            *to = None;
                        }
                        if let Err(e) = self.send(pong.into()).await {
                            return Err(VendorEvent::ConnectionLost {
                                reason: e.to_string(),
                            });
                        }
                        return Ok(());
                    }
                    Iq::Result { .. } | Iq::Error { .. } => {}
                    _ => return Ok(()),
                }
                if self.offline.as_ref().is_some_and(|(p, _)| *p == id) {
                    if let Some((_, done)) = self.offline.take() {
                        let _ = done.send(Ok(std::mem::take(&mut self.held)));
                    }
                } else if let Some(done) = self.iqs.remove(&id) {
                    let _ = done.send(Ok(iq));
                } else if let Some((_, results, done)) = self.mams.remove(&id) {
                    let _ = done.send(Ok((results, iq)));
                }
            }
            Stanza::Message(m) => {
                if let Some(r) = m
                    .payloads
                    .iter()
                    .find(|p| p.is("result", ns::MAM))
                    .and_then(|p| MamResult::try_from(p.clone()).ok())
                {
                    let q = r.queryid.as_ref().map(|q| q.0.clone()).unwrap_or_default();
                    if let Some((_, results, _)) =
                        self.mams.values_mut().find(|(queryid, ..)| *queryid == q)
                    {
                        results.push(r);
                    }
                    return Ok(());
                }
                if m.type_ == MessageType::Error {
                    // A bounce comes before the ack of the refused message (the server
                    // answers stanzas in order): the send fails with it.
                    let id = m.id.as_ref().map(|i| i.0.as_str()).unwrap_or_default();
                    if let Some(i) = self.acks.iter().position(|p| p.id == id) {
                        let p = self.acks.remove(i);
                        let _ = p.done.send(Err(E::UnknownUser(p.to)));
                    }
                    return Ok(());
                }
                if m.bodies.is_empty() {
                    return Ok(());
                }
                if self.online {
                    self.push(&m);
                } else {
                    self.held.push(m);
                }
            }
            Stanza::Presence(_) => {}
        }
        Ok(())
    }
}

fn iq_id(iq: &Iq) -> &str {
    match iq {
        Iq::Get { id, .. } | Iq::Set { id, .. } | Iq::Result { id, .. } | Iq::Error { id, .. } => {
            id
        }
    }
}

fn millis(dt: &tokio_xmpp::parsers::date::DateTime) -> Timestamp {
    Timestamp::from_millis(dt.0.timestamp_millis())
}

/// A received XMPP message as a contract message. `stamp` is the archive's time (MAM), else
/// the message's own `<delay>` (offline), else now (live). `archive_id` is the MAM id.
fn to_model(m: &XMessage, stamp: Option<Timestamp>, archive_id: Option<&str>) -> Option<Message> {
    let from = m.from.as_ref()?.to_bare();
    let to = m.to.as_ref()?.to_bare();
    let sender = UserId::new(from.node()?.as_str());
    let recipient = UserId::new(to.node()?.as_str());
    let (_, body) = m.get_best_body_cloned(vec![])?;
    let origin = m
        .payloads
        .iter()
        .find(|p| p.is("origin-id", ns::SID))
        .and_then(|p| OriginId::try_from(p.clone()).ok())
        .map(|o| o.id);
    let stanza_id = m
        .payloads
        .iter()
        .find(|p| p.is("stanza-id", ns::SID))
        .and_then(|p| StanzaId::try_from(p.clone()).ok())
        .map(|s| s.id);
    let delay = m
        .payloads
        .iter()
        .find(|p| p.is("delay", ns::DELAY))
        .and_then(|p| Delay::try_from(p.clone()).ok())
        .map(|d| millis(&d.stamp));
    let id = origin
        .clone()
        .or(stanza_id)
        .or_else(|| archive_id.map(str::to_owned))
        .or_else(|| m.id.as_ref().map(|i| i.0.clone()))?;
    // The sender's millisecond (see `send`) when it agrees with the server's time.
    let server = stamp.or(delay);
    let sent_ms =
        m.id.as_ref()
            .and_then(|i| i.0.split_once('.'))
            .and_then(|(ms, _)| ms.parse::<i64>().ok())
            // Checked: the id comes from the other side, and `i64::MIN - t` or `i64::MIN.abs()`
            // would panic (debug) or wrap into "agrees" (release). Found by the fuzz target
            // `xmpp_incoming_messages` (id `-9223372036854775808.x` with a delay stamp).
            .filter(|ms| {
                server.is_none_or(|s| {
                    ms.checked_sub(s.as_millis())
                        .is_some_and(|d| d.unsigned_abs() < 60_000)
                })
            });
    let time = sent_ms
        .map(Timestamp::from_millis)
        .or(server)
        .unwrap_or_else(now);
    Some(Message {
        server_id: ServerMsgId::new(&id),
        client_id: ClientMsgId::new(origin.unwrap_or(id)),
        conversation: ConversationId::direct(&sender, &recipient),
        sender,
        seq: None,
        server_time: time,
        client_time: time,
        content: Content::Text(body),
    })
}

/// Fuzzing entry point, not part of the API: what the adapter makes of one incoming
/// `<message/>` stanza given as XML text, as [`XmppClient`]'s event loop handles it — a MAM
/// result it carries (with the archive's stamp and id), else the message itself (live or
/// offline). `None` when the XML is not a message stanza or it holds no contract message.
#[doc(hidden)]
pub fn fuzz_incoming_message(xml: &str) -> Option<Message> {
    let element: tokio_xmpp::minidom::Element = xml.parse().ok()?;
    let m = XMessage::try_from(element).ok()?;
    if let Some(r) = m
        .payloads
        .iter()
        .find(|p| p.is("result", ns::MAM))
        .and_then(|p| MamResult::try_from(p.clone()).ok())
    {
        let stamp = r.forwarded.delay.as_ref().map(|d| millis(&d.stamp));
        return to_model(&r.forwarded.message, stamp, Some(&r.id));
    }
    to_model(&m, None, None)
}

/// Messages in the server's order (oldest first, as the offline store and MAM hand them
/// out) as the contract's newest-first list: reversed, then sorted by time with a *stable*
/// sort, so messages of the same time (a foreign burst within one of the server's whole
/// seconds) stay in exactly reverse server order. Never by id: stanza-ids are random, and an
/// id tie-break scrambles such a burst (issue 16).
fn newest_first(mut in_server_order: Vec<Message>) -> Vec<Message> {
    in_server_order.reverse();
    in_server_order.sort_by_key(|m| std::cmp::Reverse(m.server_time));
    in_server_order
}

/// `t` as an XEP-0082 date-time, or `None` beyond what one can say (after year 9999, or
/// outside chrono's range): an open bound such as "until the end of time" (`i64::MAX`).
fn rfc3339(t: Timestamp) -> Option<String> {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(t.as_millis())
        .filter(|d| chrono::Datelike::year(d) <= 9999)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[async_trait]
impl Vendor for XmppClient {
    fn name(&self) -> &str {
        "xmpp"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.vendor.capabilities
    }

    fn take_events(&self) -> Option<EventStream> {
        let rx = self.events_rx.lock().take()?;
        Some(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        ))
    }

    async fn login(&self, credentials: &Credentials) -> Result<Session> {
        // A previous connection of this handle ends first.
        drop(self.conn.lock().take());
        let (stream, me) = self
            .open(credentials)
            .instrument(tracing::info_span!("xmpp_login", user = %credentials.user))
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let ended = Arc::new(Mutex::new(None));
        let task = Task {
            stream,
            me,
            ended: ended.clone(),
            domain: self.vendor.config.domain.clone(),
            events: self.events_tx.clone(),
            sent: 0,
            received: 0,
            ack_cap: None,
            acks: Vec::new(),
            iqs: HashMap::new(),
            mams: HashMap::new(),
            offline: None,
            held: Vec::new(),
            online: false,
        };
        let handle = tokio::spawn(task.run(rx));
        *self.conn.lock() = Some(Conn {
            me: credentials.user.clone(),
            commands: tx,
            task: handle,
            offline_fetched: false,
            ended,
        });
        self.offline.lock().clear();
        self.sent.lock().clear();
        self.acks.lock().clear();
        Ok(Session {
            user: credentials.user.clone(),
            token_expires_at: None,
            session_id: new_id(),
            server_time: None,
        })
    }

    async fn logout(&self) -> Result<()> {
        let conn = self.conn.lock().take();
        if let Some(conn) = conn {
            let (tx, rx) = oneshot::channel();
            if conn.commands.send(Cmd::Close(tx)).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
            }
        }
        Ok(())
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<SendReceipt> {
        let (me, _) = self.commands()?;
        let size = message.content.size();
        let max = self.vendor.capabilities.max_message_bytes;
        if size > max {
            return Err(E::MessageTooLarge { size, max });
        }
        if let Some(r) = self.sent.lock().get(&message.client_id) {
            return Ok(SendReceipt {
                duplicate: true,
                ..r.clone()
            });
        }
        let ConversationId::Direct { low, high } = &message.conversation else {
            return Err(E::Unsupported(Capability::GroupConversations));
        };
        let peer = if *low == me { high } else { low };
        let to = Jid::from(self.jid_of(peer)?);
        let body = match &message.content {
            Content::Text(t) => t.clone(),
            Content::Custom { .. } => {
                return Err(E::InvalidRequest("XMPP carries text messages only".into()));
            }
            Content::Recalled { .. } => {
                return Err(E::InvalidRequest(
                    "a recalled placeholder cannot be sent: recall the message instead".into(),
                ));
            }
        };
        let sent_at = now();
        let mut stanza = XMessage::chat(to).with_body(Lang::new(), body);
        // `<millis>.<client id>`: XMPP stamps whole seconds, so the sender's millisecond
        // travels in the id and orders every copy (live, offline, MAM) the same way.
        stanza.id = Some(tokio_xmpp::parsers::message::Id(format!(
            "{}.{}",
            sent_at.as_millis(),
            message.client_id
        )));
        stanza = stanza.with_payload(OriginId {
            id: message.client_id.to_string(),
        });
        self.ask(|tx| Cmd::Send(stanza, peer.clone(), tx))
            .instrument(tracing::info_span!(
                "xmpp_send",
                client_id = %message.client_id,
                conversation = %message.conversation
            ))
            .await?;
        let receipt = SendReceipt {
            server_id: ServerMsgId::new(message.client_id.as_str()),
            seq: None,
            server_time: sent_at,
            duplicate: false,
        };
        self.sent
            .lock()
            .insert(message.client_id.clone(), receipt.clone());
        Ok(receipt)
    }

    async fn pull_offline(&self, max: u32) -> Result<OfflineBatch> {
        let fetched = self
            .conn
            .lock()
            .as_ref()
            .map(|c| c.offline_fetched)
            .ok_or(E::NotLoggedIn)?;
        if !fetched {
            // The server delivers its offline store in its own order, oldest first; that
            // order is the only one a foreign burst of one (whole) second has.
            let delivered = self.ask(Cmd::Presence).await?;
            let batch = newest_first(
                delivered
                    .iter()
                    .filter_map(|m| to_model(m, None, None))
                    .collect(),
            );
            *self.offline.lock() = batch;
            if let Some(c) = self.conn.lock().as_mut() {
                c.offline_fetched = true;
            }
        }
        let mut offline = self.offline.lock();
        let take = (max.max(1) as usize).min(offline.len());
        // The oldest chunk first, each batch newest first (module doc): the client delivers
        // a batch as it comes, so the newest chunk first would overtake the older ones.
        let oldest = offline.len().saturating_sub(take);
        let messages: Vec<Message> = offline.drain(oldest..).collect();
        let ack = (!messages.is_empty()).then(|| OfflineAck { token: new_id() });
        if let Some(a) = &ack {
            self.acks.lock().insert(a.token.clone());
        }
        let left = offline.len() as u64;
        drop(offline);
        if left == 0 && self.acks.lock().is_empty() {
            self.offline_stored()?;
        }
        Ok(OfflineBatch {
            left,
            ack,
            messages,
        })
    }

    async fn ack_offline(&self, ack: &OfflineAck) -> Result<()> {
        self.commands()?;
        // The server dropped its copies when it delivered them: the ack only checks that
        // it is one this connection handed out.
        if self.acks.lock().remove(&ack.token) {
            if self.acks.lock().is_empty() && self.offline.lock().is_empty() {
                self.offline_stored()?;
            }
            Ok(())
        } else {
            Err(E::InvalidRequest(format!(
                "unknown offline ack {:?}",
                ack.token
            )))
        }
    }

    async fn go_online(&self) -> Result<()> {
        let (_, commands) = self.commands()?;
        commands.send(Cmd::GoOnline).map_err(|_| E::NotLoggedIn)
    }

    async fn pull_history(&self, query: &HistoryQuery) -> Result<HistoryPage> {
        let (me, _) = self.commands()?;
        if query.limit == 0 {
            return Err(E::InvalidRequest("history page of 0 messages".into()));
        }
        let with = match &query.scope {
            HistoryScope::All => None,
            HistoryScope::Conversation(ConversationId::Direct { low, high }) => {
                Some(if *low == me { high } else { low })
            }
            HistoryScope::Conversation(ConversationId::Group(_)) => {
                return Err(E::Unsupported(Capability::GroupConversations));
            }
        };
        let (from, to) = match query.range {
            HistoryRange::Latest => (None, None),
            HistoryRange::Time { from, to } => (Some(from), Some(to)),
            HistoryRange::Seq { .. } => return Err(E::Unsupported(Capability::HistoryBySeq)),
        };
        let mut fields = Vec::new();
        if let Some(peer) = with {
            fields.push(Field::text_single("with", &self.jid_of(peer)?.to_string()));
        }
        // The server compares whole seconds, and a message's time here is its sender's
        // millisecond (see `to_model`): ask a second wider on each side, then keep exactly
        // `[from, to)` below.
        const MARGIN: Duration = Duration::from_secs(1);
        if let Some(f) = from {
            // Not before 1970: the server cannot read earlier dates.
            let start = f.minus(MARGIN).max(Timestamp::from_millis(0));
            // A start beyond year 9999 is left out: the exact filter below still applies.
            if let Some(start) = rfc3339(start) {
                fields.push(Field::text_single("start", &start));
            }
        }
        if let Some(t) = to {
            // An end beyond year 9999 (a catch-up "until now and later") is an open end.
            if let Some(end) = rfc3339(t.plus(MARGIN)) {
                fields.push(Field::text_single("end", &end));
            }
        }
        let queryid = new_id();
        let limit = query
            .limit
            .clamp(1, self.vendor.capabilities.history_page_max);
        let mam = Query {
            queryid: Some(QueryId(queryid.clone())),
            node: None,
            form: Some(DataForm::new(DataFormType::Submit, ns::MAM, fields)),
            set: Some(SetQuery {
                max: Some(limit as usize),
                after: None,
                before: Some(
                    query
                        .cursor
                        .as_ref()
                        .map(|c| c.0.clone())
                        .unwrap_or_default(),
                ),
                index: None,
            }),
            flip_page: false,
        };
        let iq = Iq::from_set(new_id(), mam);
        let (results, answer) = self.ask(|tx| Cmd::Mam(iq, queryid, tx)).await?;
        let fin = match answer {
            Iq::Result {
                payload: Some(p), ..
            } => Fin::try_from(p).map_err(|e| E::Protocol(format!("mam fin: {e}")))?,
            Iq::Error { error, .. } => {
                use tokio_xmpp::parsers::stanza_error::DefinedCondition as C;
                return Err(match error.defined_condition {
                    // An unknown cursor or a malformed query.
                    C::ItemNotFound | C::BadRequest | C::NotAcceptable => {
                        E::InvalidRequest(format!("history query refused: {error:?}"))
                    }
                    _ => E::Server {
                        code: 0,
                        message: format!("history query refused: {error:?}"),
                    },
                });
            }
            other => return Err(E::Protocol(format!("unexpected mam answer {other:?}"))),
        };
        let messages = results
            .iter()
            .filter_map(|r| {
                let stamp = r.forwarded.delay.as_ref().map(|d| millis(&d.stamp));
                to_model(&r.forwarded.message, stamp, Some(&r.id))
            })
            .filter(|m| {
                from.is_none_or(|f| m.server_time >= f) && to.is_none_or(|t| m.server_time < t)
            })
            .collect::<Vec<_>>();
        // A page comes oldest first, in archive order; the contract reads newest first, and
        // messages of the same time keep archive order (reversed; see `newest_first`).
        let messages = newest_first(messages);
        let next = if fin.complete {
            None
        } else {
            fin.set.first.map(|f| crate::vendor::PageCursor(f.item))
        };
        Ok(HistoryPage {
            messages,
            next,
            horizon: None,
        })
    }

    async fn ping(&self) -> Result<Duration> {
        let iq = server_ping(&self.vendor.config.domain, new_id())?;
        let started = Instant::now();
        match self.ask(|tx| Cmd::Iq(iq, tx)).await? {
            Iq::Result { .. } => Ok(started.elapsed()),
            other => Err(E::Protocol(format!("ping answered with {other:?}"))),
        }
    }

    async fn mark_read(&self, _conversation: &ConversationId, _up_to: &ServerMsgId) -> Result<()> {
        Err(E::Unsupported(Capability::ReadReceipts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(id: &str, millis: i64) -> Message {
        let (a, b) = (UserId::new("a"), UserId::new("b"));
        Message {
            server_id: ServerMsgId::new(id),
            client_id: ClientMsgId::new(id),
            conversation: ConversationId::direct(&a, &b),
            sender: a,
            seq: None,
            server_time: Timestamp::from_millis(millis),
            client_time: Timestamp::from_millis(millis),
            content: Content::text(id),
        }
    }

    fn ids(ms: &[Message]) -> Vec<&str> {
        ms.iter().map(|m| m.server_id.as_str()).collect()
    }

    /// Issue 16: a burst stamped with one whole second keeps exactly reverse server order,
    /// whatever its (random) ids; different times still go newest first.
    #[test]
    fn newest_first_keeps_server_order_on_ties_and_never_sorts_by_id() {
        let server_order = vec![
            at("z", 1_000),
            at("m", 2_000),
            at("a", 2_000),
            at("q", 2_000),
            at("b", 1_500),
        ];
        assert_eq!(ids(&newest_first(server_order)), ["q", "a", "m", "b", "z"]);
    }
}
