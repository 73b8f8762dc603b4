//! `XmppVendor`/`XmppClient`: the [`Vendor`] adapter for XMPP servers (tested against
//! Prosody 0.12 and ejabberd 23.01 on loopback, the same code for both; feature `xmpp`).
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
//!   until `go_online`. The ack travels over stream management: the `h` the adapter
//!   reports stops before the offline messages until the client acknowledged the last
//!   batch, so a connection lost before that returns them to offline storage and the next
//!   login gets them again (see "Offline and XEP-0013" below);
//! * history: MAM (XEP-0313) with `with`, start/end and RSM `before` paging, newest first
//!   (a cursor is `mam:<archive id>`: one this adapter did not issue is refused the same on
//!   every server, see `CURSOR_PREFIX`);
//! * heartbeat: XEP-0199 ping to the server, answered with the round-trip time.
//!
//! Deployments. What differs between servers is a property of the deployment, not of XMPP:
//! [`XmppConfig::server`] ([`XmppServerFeatures`]) says which optional XEPs this one offers
//! (carbons, MAM, stream management, XEP-0013), the declared capabilities follow it
//! (`MultiDevice` needs carbons, `HistoryByTime` MAM), and the first login of a vendor asks
//! the server (disco#info on the domain and on the account, and the stream features) and
//! refuses to run on a server that lacks what the configuration declares
//! ([`XmppVendor::server_features`] keeps what it said). Server differences the adapter
//! evens out: a history cursor the adapter did not issue (Prosody: `item-not-found`,
//! ejabberd: an empty page) is refused by the adapter itself.
//!
//! Offline and XEP-0013. ejabberd offers flexible offline retrieval (list the offline
//! store's nodes, view a page of them, remove them once stored); Prosody 0.12 does not. The
//! offline pass does not use it: the flood at presence with the XEP-0198 `h` held back until
//! the client stored the batch (`Task::ack_cap`) already keeps ACK-online on both servers —
//! a connection lost before the ack returns the unacknowledged messages to offline storage
//! (Prosody's smacks, ejabberd's `resend_on_timeout: if_offline`; test
//! `an_offline_batch_not_acknowledged_comes_back_at_the_next_login` on both) — so one code
//! path serves every server. XEP-0013 would move the ack to the server page by page, but it
//! must run before the initial presence (after it the store is flooded as usual) and would
//! be a second offline path that only some deployments take; what it adds, a server-side
//! acknowledgement per page instead of per batch, the client does not need, since it stores
//! a whole batch before acknowledging. `XmppServerFeatures::flexible_offline` says whether
//! a deployment could.
//!
//! The message lifecycle (issue 20), as far as the servers carry it (Prosody 0.12 and
//! ejabberd 23.01 only store and route these stanzas; every rule is the adapter's):
//! * recall: an XEP-0424 `<retract id=origin-id xmlns='urn:xmpp:message-retract:1'/>` with
//!   the XEP's fallback body, `<fallback for=…>` and a `<store/>` hint (XEP-0334), so the
//!   offline store and MAM keep it; edit: an XEP-0308 `<replace id=…/>` with the new body,
//!   referring to the original's stanza `id` (`<millis>.<origin-id>` for ours; a receiver
//!   resolves either form to the origin-id). Both are checked on the sending side with
//!   [`LifecyclePolicy::check`] (recall window from [`XmppConfig::lifecycle`], edits by the
//!   sender only): the message must be known, from this handle's sends and receipts, else
//!   from the newest MAM pages of the conversation, which give its sender and its
//!   millisecond. What no adapter can enforce: a foreign client may send a retraction or a
//!   correction of anything, at any time; on receipt, one whose author is not the target's
//!   sender is ignored (never a change, never a message), and a change of a message this
//!   handle has not seen is checked against the newest MAM page of the conversation (live,
//!   by the connection task; offline, by `pull_offline`), else waits for the message to
//!   show up in a history page (applied then, if its sender made it). The recall
//!   window of a foreign sender is not checked on receipt (XEP-0424 has none);
//! * revision: XMPP has none; it is the change's time in tenths of a second since 2024
//!   (the sender's millisecond travels in our stanza ids, so every copy gives the same);
//! * read state: `mark_read` sends an XEP-0333 `<displayed/>` (our messages are
//!   `<markable/>`); a received one is a [`VendorEvent::ReadReceipt`], whose reader is me
//!   when it comes from my other device (a carbon);
//! * several devices ([`XmppConfig::multi_device`]): each handle binds its own resource and
//!   enables XEP-0280 carbons (Prosody's `mod_carbons`): a carbon `sent` copy from my other
//!   device is pushed as my own message; a carbon must come from my own bare JID, and a
//!   message already delivered on the connection (a `received` copy of one routed to me
//!   directly) is not delivered twice. Default: one fixed resource, a second login kicks;
//! * away: retractions, corrections and markers arrive in the offline flood and in MAM like
//!   messages and are never returned as messages: a change in the same offline pass or MAM
//!   page as its target is applied to it (current state; a history page applies what this
//!   handle learned from newer pages too); the offline pass's other changes (a message
//!   delivered before, looked up in MAM when this handle never saw it) and its markers are
//!   pushed as `MessageChanged`/`ReadReceipt` events at `go_online`, before the held live
//!   messages. No [`Capability::ChangeFeed`]: Prosody keeps no per-user change log, the
//!   offline store holds only what arrived while *no* device was online, so a buffer of
//!   the offline pass would be a per-login, incomplete feed; `pull_changes` is
//!   `Unsupported`. No delete-for-me (no XEP): `Unsupported`.
//!
//! Order without sequences. A message's time is its sender's millisecond when our adapter
//! sent it (carried in the stanza id), else the server's stamp, which Prosody gives in whole
//! seconds (ejabberd below the second): a burst from a foreign client shares one time. The server's own order is the
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
use std::collections::VecDeque;
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
use tokio_xmpp::parsers::carbons::{Enable as CarbonsEnable, Received, Sent};
use tokio_xmpp::parsers::data_forms::{DataForm, DataFormType, Field};
use tokio_xmpp::parsers::delay::Delay;
use tokio_xmpp::parsers::disco::{DiscoInfoQuery, DiscoInfoResult};
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::jid::{BareJid, Jid};
use tokio_xmpp::parsers::mam::{Fin, Query, QueryId, Result_ as MamResult};
use tokio_xmpp::parsers::message::{Lang, Message as XMessage, MessageType};
use tokio_xmpp::parsers::message_correct::Replace;
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
use crate::clock::now;
use crate::error::KickReason;
use crate::lifecycle::{ChangeKind, ChangeRefusal, LifecyclePolicy, MessageChange, ReadReceipt};
use crate::model::{
    ClientMsgId, Content, ConversationId, Message, OutgoingMessage, ServerMsgId, Timestamp, UserId,
};
use crate::offline::{self, FirstChunk, OfflinePass, newest_first};
use crate::vendor::{
    Credentials, EventStream, HistoryPage, HistoryQuery, HistoryScope, OfflineAck, OfflineBatch,
    SendReceipt, Session, Vendor, VendorEvent,
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
    /// Several devices per user: each client handle binds its own resource
    /// (`{resource}-{random}`, stable for the handle's life) and enables XEP-0280 carbons, so
    /// a second login does not kick the first and my sends reach my other devices
    /// ([`Capability::MultiDevice`]). `false` (the default): every login binds `resource`,
    /// and a second login of the same user kicks the first ([`Capability::KickOnSecondLogin`]).
    pub multi_device: bool,
    /// The recall window (XEP-0424 has none; this adapter enforces it on the sending side).
    /// Edits are always sender-only (XEP-0308), whatever `edit_permission` says.
    pub lifecycle: LifecyclePolicy,
    /// What this deployment offers beyond core XMPP: the capabilities the vendor declares
    /// follow it (not the protocol), and every login checks it against the server's
    /// disco#info ([`XmppVendor::server_features`]).
    pub server: XmppServerFeatures,
}

/// The optional XEPs a deployment offers that the adapter's mapping depends on. Which ones
/// a server has is a property of the deployment (its version and enabled modules), not of
/// XMPP: configured per target ([`XmppConfig::server`]) and discovered at login
/// ([`XmppServerFeatures::from_disco`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmppServerFeatures {
    /// XEP-0280 message carbons (`urn:xmpp:carbons:2`): needed for
    /// [`XmppConfig::multi_device`] ([`Capability::MultiDevice`]).
    pub carbons: bool,
    /// XEP-0013 flexible offline message retrieval (`http://jabber.org/protocol/offline`):
    /// ejabberd has it, Prosody 0.12 does not. Not used by the offline pass (see the module
    /// doc, "Offline and XEP-0013").
    pub flexible_offline: bool,
    /// XEP-0313 message archive management, version 2 (`urn:xmpp:mam:2`) on the account:
    /// history ([`Capability::HistoryByTime`]).
    pub mam: bool,
    /// XEP-0198 stream management (`urn:xmpp:sm:3` stream feature): server acks of sends
    /// ([`Capability::ServerAcks`]) and the acknowledged offline pass.
    pub stream_management: bool,
}

/// XEP-0013 flexible offline message retrieval.
pub const NS_FLEXIBLE_OFFLINE: &str = "http://jabber.org/protocol/offline";

impl XmppServerFeatures {
    /// What the adapter assumes without being told: carbons, MAM and stream management
    /// (Prosody 0.12 with the modules `tests/prosody/prosody.cfg.lua` enables), no XEP-0013.
    pub const ASSUMED: XmppServerFeatures = XmppServerFeatures {
        carbons: true,
        flexible_offline: false,
        mam: true,
        stream_management: true,
    };

    /// The features a server states: `server` is its disco#info features (the domain's),
    /// `account` the user's bare JID's (where MAM is announced), `stream_management` whether
    /// the stream features after login offered `urn:xmpp:sm:3`.
    pub fn from_disco<'a>(
        server: impl IntoIterator<Item = &'a str> + Clone,
        account: impl IntoIterator<Item = &'a str> + Clone,
        stream_management: bool,
    ) -> Self {
        let has = |ns: &str| {
            server.clone().into_iter().any(|f| f == ns)
                || account.clone().into_iter().any(|f| f == ns)
        };
        XmppServerFeatures {
            carbons: has(ns::CARBONS),
            flexible_offline: has(NS_FLEXIBLE_OFFLINE),
            mam: has(ns::MAM),
            stream_management,
        }
    }

    /// What this configuration claims and `found` lacks, by XEP (empty: consistent).
    pub fn missing_in(&self, found: &XmppServerFeatures) -> Vec<&'static str> {
        [
            (self.carbons && !found.carbons, "XEP-0280 carbons"),
            (
                self.flexible_offline && !found.flexible_offline,
                "XEP-0013 flexible offline retrieval",
            ),
            (self.mam && !found.mam, "XEP-0313 MAM (urn:xmpp:mam:2)"),
            (
                self.stream_management && !found.stream_management,
                "XEP-0198 stream management",
            ),
        ]
        .into_iter()
        .filter_map(|(missing, name)| missing.then_some(name))
        .collect()
    }
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
            multi_device: false,
            lifecycle: LifecyclePolicy::default(),
            server: XmppServerFeatures::ASSUMED,
        }
    }

    /// The same settings with one resource per client handle and carbons
    /// ([`XmppConfig::multi_device`]).
    #[must_use]
    pub fn with_multi_device(mut self) -> Self {
        self.multi_device = true;
        self
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
    /// What the server said of itself at the first login of any of this vendor's clients
    /// (one disco#info per vendor, not per login).
    discovered: Arc<Mutex<Option<XmppServerFeatures>>>,
}

impl XmppVendor {
    /// The vendor at `config`. Capabilities are what XMPP with the XEPs above offers: no
    /// sequence numbers, no idempotent resend on the server, no groups (MUC is not mapped),
    /// no token expiry, no delete-for-me (no XEP), no change feed (see the module doc);
    /// recall, edit and read markers both ways; several devices only with
    /// [`XmppConfig::multi_device`].
    pub fn new(config: XmppConfig) -> Self {
        let mut capabilities = Capabilities::none();
        // Per deployment (`XmppConfig::server`): several devices need carbons, history
        // needs MAM on the account.
        if !config.multi_device {
            capabilities = capabilities.with(Capability::KickOnSecondLogin);
        } else if config.server.carbons {
            capabilities = capabilities.with(Capability::MultiDevice);
        }
        if config.server.mam {
            capabilities = capabilities.with(Capability::HistoryByTime);
        }
        let capabilities = capabilities
            .with(Capability::ServerAcks)
            .with(Capability::OfflineQueue)
            .with(Capability::Heartbeat)
            .with(Capability::ReadReceipts)
            .with(Capability::ReadReceiptEvents)
            .with(Capability::Recall)
            .with(Capability::Edit)
            .with_max_message_bytes(config.max_message_bytes);
        Self {
            config,
            capabilities,
            discovered: Arc::new(Mutex::new(None)),
        }
    }

    /// What the server stated at the first login of one of this vendor's clients
    /// (disco#info on the domain and the account, and the stream features); `None` before.
    pub fn server_features(&self) -> Option<XmppServerFeatures> {
        *self.discovered.lock()
    }

    /// What every client of this vendor declares.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// A new client handle (not logged in).
    pub fn client(&self) -> XmppClient {
        let (tx, rx) = mpsc::unbounded_channel();
        let resource = if self.config.multi_device {
            format!("{}-{:08x}", self.config.resource, rand::random::<u32>())
        } else {
            self.config.resource.clone()
        };
        XmppClient {
            vendor: self.clone(),
            resource,
            known: Arc::new(Mutex::new(Known::default())),
            conn: Mutex::new(None),
            offline: Mutex::new(None),
            sent: Mutex::new(HashMap::new()),
            events_tx: tx,
            events_rx: Mutex::new(Some(rx)),
        }
    }
}

/// One user's handle.
pub struct XmppClient {
    vendor: XmppVendor,
    /// The resource this handle binds (the device, with `multi_device`).
    resource: String,
    /// What this handle knows of messages it has seen, for the lifecycle rules (who sent a
    /// message, when, its latest change); shared with the connection task.
    known: Arc<Mutex<Known>>,
    conn: Mutex<Option<Conn>>,
    /// This connection's offline pass (the messages received at presence), once fetched:
    /// handed out from the oldest end; its changes and read markers whose target was not in
    /// it are pushed as events at `go_online`, before the held live messages.
    offline: Mutex<Option<OfflinePass>>,
    /// Receipts of this connection's sends by client id (a resend of the same id on the same
    /// connection is answered from here).
    sent: Mutex<HashMap<ClientMsgId, SendReceipt>>,
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

    /// Me and my peer in the direct conversation `conversation`.
    fn peer(&self, conversation: &ConversationId) -> Result<(UserId, UserId)> {
        let (me, _) = self.commands()?;
        let ConversationId::Direct { low, high } = conversation else {
            return Err(E::Unsupported(Capability::GroupConversations));
        };
        let peer = if *low == me {
            high.clone()
        } else if *high == me {
            low.clone()
        } else {
            return Err(E::InvalidRequest(format!("{me} is not in {conversation}")));
        };
        Ok((me, peer))
    }

    /// What a correction or a marker refers to for `target`: its stanza id when known
    /// (XEP-0308/0333 refer to the `id` attribute), else its origin-id.
    fn reference(&self, target: &ServerMsgId) -> String {
        self.known
            .lock()
            .messages
            .get(target)
            .and_then(|k| k.stanza_id.clone())
            .unwrap_or_else(|| target.to_string())
    }

    /// The offline pass: messages in server order, current state (a change in the pass
    /// applied to its target in the pass), once each; the changes of other messages and the
    /// read markers as events for `go_online`.
    fn offline_pass(
        &self,
        delivered: &[XMessage],
        me: &BareJid,
    ) -> (
        Vec<Message>,
        Vec<VendorEvent>,
        Vec<(ConversationId, ServerMsgId)>,
    ) {
        let mut known = self.known.lock();
        let mut messages: Vec<Message> = Vec::new();
        let mut index: HashMap<ServerMsgId, usize> = HashMap::new();
        let mut later = Vec::new();
        let mut unknown = Vec::new();
        for x in delivered {
            let Some((x, stamp)) = uncarbon(x, me) else {
                continue;
            };
            match parse(&x, stamp, None) {
                Some(Parsed::Message { message, stanza_id }) => {
                    known.learn(&message, stanza_id.as_deref());
                    if known.delivered.insert(message.server_id.clone()) {
                        index.insert(message.server_id.clone(), messages.len());
                        messages.push(message);
                    }
                }
                Some(Parsed::Change(c)) => {
                    let target = known.resolve(&c.target);
                    if !known.messages.contains_key(&target) {
                        unknown.push((c.conversation.clone(), target));
                    }
                    if let Some(change) = known.change(c)
                        && !index.contains_key(&change.target)
                    {
                        later.push(VendorEvent::MessageChanged(change));
                    }
                }
                Some(Parsed::Read(r)) => later.push(VendorEvent::ReadReceipt(known.read(r))),
                None => {}
            }
        }
        let messages = messages.into_iter().map(|m| known.current(m)).collect();
        (messages, later, unknown)
    }

    /// What this handle knows of `target`, looked up in the newest [`LOOKUP_PAGES`] MAM
    /// pages of `conversation` when it has not seen it (a history page teaches it).
    async fn find(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> Result<Option<KnownMsg>> {
        let mut found = self.known.lock().messages.get(target).cloned();
        if found.is_none() {
            let mut query = HistoryQuery::latest(
                conversation.clone(),
                self.vendor.capabilities.history_page_max,
            );
            for _ in 0..LOOKUP_PAGES {
                let page = self.pull_history(&query).await?;
                found = self.known.lock().messages.get(target).cloned();
                match page.next {
                    Some(c) if found.is_none() => query.cursor = Some(c),
                    _ => break,
                }
            }
        }
        Ok(found)
    }

    /// Recall or edit `target`, checked on this side (the server checks nothing): the
    /// message must be known (seen by this handle, else found in the newest MAM pages of
    /// the conversation) and the policy must allow it.
    async fn change(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
        kind: ChangeKind,
    ) -> Result<MessageChange> {
        let (me, peer) = self.peer(conversation)?;
        let known = self
            .find(conversation, target)
            .await?
            .filter(|k| k.conversation == *conversation)
            .ok_or(E::ChangeRefused(ChangeRefusal::UnknownMessage))?;
        let as_is = Message {
            server_id: target.clone(),
            client_id: ClientMsgId::new(target.as_str()),
            conversation: conversation.clone(),
            sender: known.sender.clone(),
            seq: None,
            server_time: known.time,
            client_time: known.time,
            content: Content::text(""),
        };
        let current = match &known.latest {
            Some(c) => c.apply(&as_is).unwrap_or(as_is),
            None => as_is,
        };
        let mut at = now();
        if let Some(prev) = &known.latest {
            // The revision is the change's time in tenths of a second: a change within
            // 100 ms of the previous one is stamped 100 ms after it, so it always gets a
            // higher revision (receivers keep the highest; a tie would lose this change).
            let floor = prev.at.plus(std::time::Duration::from_millis(100));
            if at < floor {
                at = floor;
            }
        }
        self.lifecycle()
            .check(&current, &kind, &me, at)
            .map_err(E::ChangeRefused)?;
        let to = Jid::from(self.jid_of(&peer)?);
        let origin = ClientMsgId::generate();
        let stanza = match &kind {
            ChangeKind::Recalled => retraction(to, target.as_str(), at, origin.as_str())?,
            ChangeKind::Edited(Content::Text(body)) => correction(
                to,
                &known
                    .stanza_id
                    .clone()
                    .unwrap_or_else(|| target.to_string()),
                body.clone(),
                at,
                origin.as_str(),
            ),
            ChangeKind::Edited(_) | ChangeKind::DeletedForMe => {
                return Err(E::Unsupported(Capability::DeleteForMe));
            }
        };
        self.ask(|tx| Cmd::Send(stanza, peer.clone(), tx)).await?;
        let stated = StatedChange {
            conversation: conversation.clone(),
            target: target.to_string(),
            kind: kind.clone(),
            by: me.clone(),
            at,
        };
        let timed = || MessageChange::timed(conversation, target.clone(), kind, me, at);
        Ok(self.known.lock().change(stated).unwrap_or_else(timed))
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
            let (features, mut stream): (_, XmppStream<Io>) =
                pending.recv_features().await.map_err(io_error)?;
            let sm_offered = features.stream_management.is_some();
            let bind_id = new_id();
            let bind = Iq::from_set(bind_id.clone(), BindQuery::new(Some(self.resource.clone())));
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
            // Before stream management (its stanza count starts at `enable`): what the
            // deployment offers, once per vendor, checked against what it is configured with
            // (its declared capabilities follow the configuration).
            let cached = *self.vendor.discovered.lock();
            if cached.is_none() {
                let found = discover(&mut stream, &config.domain, &bare, sm_offered).await?;
                let missing = config.server.missing_in(&found);
                if !missing.is_empty() {
                    return Err(E::Protocol(format!(
                        "the server lacks {} which XmppConfig::server declares",
                        missing.join(", ")
                    )));
                }
                tracing::debug!(?found, "xmpp server features");
                *self.vendor.discovered.lock() = Some(found);
            }
            if config.multi_device {
                // Before stream management: its stanza count starts at `enable`, and the
                // connection task counts from there.
                let carbons_id = new_id();
                let carbons = Iq::from_set(carbons_id.clone(), CarbonsEnable);
                stream
                    .send(&XmppStreamElement::Stanza(carbons.into()))
                    .await
                    .map_err(io_error)?;
                loop {
                    match next(&mut stream).await? {
                        XmppStreamElement::Stanza(Stanza::Iq(Iq::Result { id, .. }))
                            if id == carbons_id =>
                        {
                            break;
                        }
                        XmppStreamElement::Stanza(Stanza::Iq(Iq::Error { id, .. }))
                            if id == carbons_id =>
                        {
                            return Err(E::Protocol(
                                "carbons (XEP-0280) refused: multi_device needs mod_carbons".into(),
                            ));
                        }
                        _ => {}
                    }
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

/// What every history cursor this adapter hands out starts with (then the archive id of the
/// page's oldest message). Servers differ on a cursor they never issued: Prosody refuses an
/// unknown archive id (`item-not-found`), ejabberd answers an empty, complete page; so the
/// adapter refuses what it did not issue itself, the same on every server.
const CURSOR_PREFIX: &str = "mam:";

/// The archive id in a history cursor this adapter issued, else `InvalidRequest`.
fn mam_position(cursor: &crate::vendor::PageCursor) -> Result<&str> {
    cursor
        .0
        .strip_prefix(CURSOR_PREFIX)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            E::InvalidRequest(format!(
                "not a history cursor of this adapter: {:?}",
                cursor.0
            ))
        })
}

/// Asks the server (`domain`) and the account (`me`) for their disco#info and reads the
/// answers into [`XmppServerFeatures`] (`sm_offered`: the stream features had XEP-0198).
async fn discover(
    stream: &mut XmppStream<Io>,
    domain: &str,
    me: &BareJid,
    sm_offered: bool,
) -> Result<XmppServerFeatures> {
    let domain: Jid = domain
        .parse()
        .map_err(|e| E::Protocol(format!("bad XMPP domain {domain:?}: {e}")))?;
    let mut asked = Vec::new();
    for to in [domain, Jid::from(me.clone())] {
        let id = new_id();
        let mut iq = Iq::from_get(id.clone(), DiscoInfoQuery { node: None });
        if let Iq::Get { to: t, .. } = &mut iq {
            *t = Some(to);
        }
        stream
            .send(&XmppStreamElement::Stanza(iq.into()))
            .await
            .map_err(io_error)?;
        asked.push(id);
    }
    let mut answers: HashMap<String, Vec<String>> = HashMap::new();
    while answers.len() < asked.len() {
        match next(stream).await? {
            XmppStreamElement::Stanza(Stanza::Iq(Iq::Result { id, payload, .. }))
                if asked.contains(&id) =>
            {
                answers.insert(id, disco_features(payload)?);
            }
            // An entity that does not answer disco#info offers nothing we can rely on.
            XmppStreamElement::Stanza(Stanza::Iq(Iq::Error { id, .. })) if asked.contains(&id) => {
                answers.insert(id, Vec::new());
            }
            _ => {}
        }
    }
    let of = |i: usize| {
        asked
            .get(i)
            .and_then(|id| answers.get(id))
            .cloned()
            .unwrap_or_default()
    };
    let (server, account) = (of(0), of(1));
    Ok(XmppServerFeatures::from_disco(
        server.iter().map(String::as_str),
        account.iter().map(String::as_str),
        sm_offered,
    ))
}

/// The features of a disco#info result's payload (none without one).
fn disco_features(payload: Option<tokio_xmpp::minidom::Element>) -> Result<Vec<String>> {
    Ok(payload
        .map(DiscoInfoResult::try_from)
        .transpose()
        .map_err(|e| E::Protocol(format!("disco#info: {e}")))?
        .map(|r| r.features.into_iter().collect())
        .unwrap_or_default())
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
    /// The id of the server ping sent behind a send to an addressee not yet confirmed on
    /// this connection, until its answer: the send completes only after it (see
    /// [`Task::confirmed`]).
    probe: Option<String>,
    /// The server's ack covered it (with `probe` pending, it waits for the pong).
    acked: bool,
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
    /// Addressees a send already reached on this connection without a bounce. A bounce for
    /// an unknown user is routed, and on ejabberd it may come after the stream ack of the
    /// same message; a server ping sent behind the first message to an addressee is answered
    /// after that bounce, so that send completes only once the pong is in.
    confirmed: HashSet<UserId>,
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
    /// The handle's lifecycle knowledge (see [`Known`]).
    known: Arc<Mutex<Known>>,
    /// MAM lookups of live changes' unknown targets, in flight (owned by this task).
    lookups: futures::stream::FuturesUnordered<Lookup>,
}

/// A MAM lookup in flight: the change waiting for it, and the page's results.
type Lookup =
    std::pin::Pin<Box<dyn std::future::Future<Output = (StatedChange, Vec<MamResult>)> + Send>>;

impl Task {
    async fn send(&mut self, stanza: Stanza) -> std::result::Result<(), E> {
        self.stream
            .send(&XmppStreamElement::Stanza(stanza))
            .await
            .map_err(io_error)?;
        self.sent = self.sent.wrapping_add(1);
        Ok(())
    }

    /// Completes the sends the server acked whose probe (if any) is answered: no bounce
    /// came for them, and their addressee is confirmed for this connection.
    fn complete_sends(&mut self) {
        let (done, waiting): (Vec<_>, Vec<_>) =
            (self.acks.drain(..)).partition(|p| p.acked && p.probe.is_none());
        self.acks = waiting;
        for p in done {
            self.confirmed.insert(p.to);
            let _ = p.done.send(Ok(()));
        }
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
                Some((c, results)) = self.lookups.next(), if !self.lookups.is_empty() => {
                    self.looked_up(c, results);
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
                let count = self.sent;
                let probe = match self.confirmed.contains(&to) {
                    true => None,
                    false => {
                        let ping_id = new_id();
                        self.send(server_ping(&self.domain, ping_id.clone())?.into())
                            .await?;
                        Some(ping_id)
                    }
                };
                self.acks.push(PendingAck {
                    count,
                    id,
                    to,
                    probe,
                    acked: false,
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
                    if let Some(c) = self.deliver(&m) {
                        self.look_up(c).await?;
                    }
                }
            }
            Cmd::Close(done) => {
                // The final XEP-0198 ack: what was handed on counts as received, else a
                // server that requeues unacknowledged stanzas at close (ejabberd's
                // `resend_on_timeout`) stores a push the app already has as offline again.
                // Offline messages not yet acknowledged stay out of it (`ack_cap`).
                let h = self.ack_cap.unwrap_or(self.received);
                let a = XmppStreamElement::SM(sm::Nonza::Ack(A::new(h)));
                let _ = self.stream.send(&a).await;
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

    /// Pushes what a live stanza means: a message (once, whether it came directly or as a
    /// carbon), a change of a known message by its sender, or a read marker.
    /// A change of a message this handle has not seen is returned (it waits in [`Known`]):
    /// the caller looks the message up ([`Task::look_up`]).
    fn deliver(&self, m: &XMessage) -> Option<StatedChange> {
        let (m, stamp) = uncarbon(m, &self.me)?;
        let event = match parse(&m, stamp, None) {
            Some(Parsed::Message { message, stanza_id }) => {
                let mut known = self.known.lock();
                known.learn(&message, stanza_id.as_deref());
                if !known.delivered.insert(message.server_id.clone()) {
                    return None;
                }
                VendorEvent::MessagePushed(known.current(message))
            }
            Some(Parsed::Change(c)) => {
                let mut known = self.known.lock();
                let unknown = !known.messages.contains_key(&known.resolve(&c.target));
                match known.change(c.clone()) {
                    Some(change) => VendorEvent::MessageChanged(change),
                    None if unknown => return Some(c),
                    None => return None,
                }
            }
            Some(Parsed::Read(r)) => VendorEvent::ReadReceipt(self.known.lock().read(r)),
            None => return None,
        };
        let _ = self.events.send(event);
        None
    }

    /// Looks up the target of a live change this handle has not seen (a message delivered
    /// before it existed) in the newest MAM page of the conversation; [`Task::looked_up`]
    /// applies the answer. At most [`LOOKUPS_MAX`] at once (more are dropped, logged).
    async fn look_up(&mut self, c: StatedChange) -> std::result::Result<(), E> {
        let me = UserId::new(self.me.node().map(|n| n.as_str()).unwrap_or_default());
        let Some(peer) = c.conversation.peer_of(&me).cloned() else {
            return Ok(());
        };
        if self.lookups.len() >= LOOKUPS_MAX {
            tracing::warn!(target = %c.target, "xmpp change lookup dropped: too many in flight");
            return Ok(());
        }
        let with: BareJid = format!("{peer}@{}", self.domain)
            .parse()
            .map_err(|e| E::Protocol(format!("bad peer {peer}: {e}")))?;
        let queryid = new_id();
        let iq = Iq::from_set(
            new_id(),
            Query {
                queryid: Some(QueryId(queryid.clone())),
                node: None,
                form: Some(DataForm::new(
                    DataFormType::Submit,
                    ns::MAM,
                    vec![Field::text_single("with", &with.to_string())],
                )),
                set: Some(SetQuery {
                    max: Some(100),
                    after: None,
                    before: Some(String::new()),
                    index: None,
                }),
                flip_page: false,
            },
        );
        let (tx, rx) = oneshot::channel();
        self.mams
            .insert(iq_id(&iq).to_owned(), (queryid, Vec::new(), tx));
        self.send(iq.into()).await?;
        self.lookups.push(Box::pin(async move {
            let results = match rx.await {
                Ok(Ok((results, _))) => results,
                _ => Vec::new(),
            };
            (c, results)
        }));
        Ok(())
    }

    /// Applies a lookup's MAM page: the messages teach their senders, and the change is
    /// pushed if its target is there and its sender made it.
    fn looked_up(&self, c: StatedChange, results: Vec<MamResult>) {
        let mut known = self.known.lock();
        for r in &results {
            let stamp = r.forwarded.delay.as_ref().map(|d| millis(&d.stamp));
            match parse(&r.forwarded.message, stamp, Some(&r.id)) {
                Some(Parsed::Message { message, stanza_id }) => {
                    known.learn(&message, stanza_id.as_deref());
                }
                Some(Parsed::Change(other)) => {
                    let _ = known.change(other);
                }
                Some(Parsed::Read(_)) | None => {}
            }
        }
        let target = known.resolve(&c.target);
        let latest = known.messages.get(&target).and_then(|k| k.latest.clone());
        drop(known);
        if let Some(change) = latest.filter(|l| l.by == c.by && l.kind == c.kind) {
            let _ = self.events.send(VendorEvent::MessageChanged(change));
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
                for p in self.acks.iter_mut().filter(|p| p.count <= h) {
                    p.acked = true;
                }
                self.complete_sends();
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
                if let Some(p) = self.acks.iter_mut().find(|p| p.probe.as_ref() == Some(&id)) {
                    p.probe = None;
                    self.complete_sends();
                } else if self.offline.as_ref().is_some_and(|(p, _)| *p == id) {
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
                // Bodiless stanzas (markers, retractions, carbons …) count too: `parse`
                // drops what means nothing here (chat states).
                if self.online {
                    if let Some(c) = self.deliver(&m)
                        && let Err(e) = self.look_up(c).await
                    {
                        return Err(VendorEvent::ConnectionLost {
                            reason: e.to_string(),
                        });
                    }
                } else {
                    self.held.push(m);
                }
            }
            Stanza::Presence(_) => {}
        }
        Ok(())
    }
}

/// XEP-0424 message retraction (v0.4+).
const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
/// XEP-0428 fallback indication.
const NS_FALLBACK: &str = "urn:xmpp:fallback:0";
/// XEP-0334 message processing hints.
const NS_HINTS: &str = "urn:xmpp:hints";
/// XEP-0333 chat markers.
const NS_MARKERS: &str = "urn:xmpp:chat-markers:0";
/// The body a client without XEP-0424 shows instead of a retraction (the XEP's wording).
const RETRACT_FALLBACK: &str =
    "This person attempted to retract a previous message, but it's unsupported by your client.";
/// Most messages a handle remembers for the lifecycle rules (oldest forgotten first).
const KNOWN_MAX: usize = 10_000;
/// How many MAM pages (of `history_page_max`) `recall`/`edit` search for a message this
/// handle has not seen.
const LOOKUP_PAGES: usize = 3;
/// Most MAM lookups of live changes' targets in flight at once on one connection.
const LOOKUPS_MAX: usize = 16;
/// What the handle remembers of one message.
#[derive(Debug, Clone)]
struct KnownMsg {
    conversation: ConversationId,
    sender: UserId,
    time: Timestamp,
    /// The stanza's `id` attribute (what XEP-0308 and XEP-0333 refer to).
    stanza_id: Option<String>,
    /// The newest change applied to it.
    latest: Option<MessageChange>,
}

/// A change as a stanza states it, before its target is resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatedChange {
    conversation: ConversationId,
    /// The id the stanza refers to (an origin-id, or a stanza `id` attribute).
    target: String,
    kind: ChangeKind,
    by: UserId,
    at: Timestamp,
}

/// A read marker as a stanza states it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatedRead {
    conversation: ConversationId,
    reader: UserId,
    target: String,
    at: Timestamp,
}

/// What one received message stanza means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Parsed {
    /// A message, with its stanza `id` attribute.
    Message {
        message: Message,
        stanza_id: Option<String>,
    },
    /// A retraction (XEP-0424) or correction (XEP-0308).
    Change(StatedChange),
    /// A displayed marker (XEP-0333).
    Read(StatedRead),
}

/// The lifecycle knowledge of one handle: the messages it has seen or sent (bounded), so a
/// change can be checked against its message's sender and applied to later copies of it.
#[derive(Debug, Default)]
struct Known {
    messages: HashMap<ServerMsgId, KnownMsg>,
    /// Insertion order, to forget the oldest beyond [`KNOWN_MAX`].
    order: VecDeque<ServerMsgId>,
    /// Stanza `id` attribute → server id.
    aliases: HashMap<String, ServerMsgId>,
    /// Changes to messages not seen yet, by target: checked and applied when the target
    /// shows up (a history page older than the change's page). Bounded like `messages`.
    waiting: HashMap<ServerMsgId, StatedChange>,
    /// Messages pushed or handed out on this connection: a second copy (a carbon of one
    /// received directly) is not delivered twice. Cleared at login, so the redelivery of
    /// unacknowledged offline messages after a lost connection still arrives.
    delivered: HashSet<ServerMsgId>,
}

impl Known {
    /// The server id a stanza's reference means: an alias (a stanza `id` attribute), a
    /// known server id, our `<millis>.<origin-id>` stanza id, else the reference itself.
    fn resolve(&self, reference: &str) -> ServerMsgId {
        if let Some(id) = self.aliases.get(reference) {
            return id.clone();
        }
        let id = ServerMsgId::new(reference);
        if self.messages.contains_key(&id) {
            return id;
        }
        match reference.split_once('.') {
            Some((ms, rest))
                if !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty() =>
            {
                ServerMsgId::new(rest)
            }
            _ => id,
        }
    }

    /// Remembers `m` (first sight wins), and applies a waiting change to it if its sender
    /// made that change.
    fn learn(&mut self, m: &Message, stanza_id: Option<&str>) {
        if self.messages.contains_key(&m.server_id) {
            return;
        }
        if self.order.len() >= KNOWN_MAX
            && let Some(old) = self.order.pop_front()
            && let Some(k) = self.messages.remove(&old)
            && let Some(s) = k.stanza_id
        {
            self.aliases.remove(&s);
        }
        if let Some(s) = stanza_id {
            self.aliases.insert(s.to_owned(), m.server_id.clone());
        }
        self.order.push_back(m.server_id.clone());
        self.messages.insert(
            m.server_id.clone(),
            KnownMsg {
                conversation: m.conversation.clone(),
                sender: m.sender.clone(),
                time: m.server_time,
                stanza_id: stanza_id.map(str::to_owned),
                latest: None,
            },
        );
        if let Some(c) = self.waiting.remove(&m.server_id) {
            let _ = self.change(c);
        }
    }

    /// `m` in its current state (its newest change applied).
    fn current(&self, m: Message) -> Message {
        match self
            .messages
            .get(&m.server_id)
            .and_then(|k| k.latest.as_ref())
        {
            Some(c) => c.apply(&m).unwrap_or(m),
            None => m,
        }
    }

    /// Checks and applies a stated change: the change as stored when it is new and its
    /// target's sender made it (XEP-0424 and XEP-0308 allow only the sender; anything
    /// else is ignored); `None` when ignored, already applied, or its target is unknown
    /// (then it waits for the target).
    fn change(&mut self, c: StatedChange) -> Option<MessageChange> {
        let target = self.resolve(&c.target);
        let Some(k) = self.messages.get_mut(&target) else {
            if self.waiting.len() < KNOWN_MAX {
                self.waiting.insert(target, c);
            }
            return None;
        };
        if k.sender != c.by || k.conversation != c.conversation {
            tracing::debug!(target = %target, by = %c.by, "xmpp change by a non-sender ignored");
            return None;
        }
        let change = MessageChange::timed(&c.conversation, target, c.kind, c.by, c.at);
        let newer = match &k.latest {
            None => true,
            Some(l) if matches!(l.kind, ChangeKind::Recalled) => false,
            Some(l) => {
                change.revision > l.revision
                    || (change.revision == l.revision
                        && matches!(change.kind, ChangeKind::Recalled))
            }
        };
        if !newer {
            return None;
        }
        k.latest = Some(change.clone());
        Some(change)
    }

    /// A stated read marker as a receipt (the target's time from what is known, else from
    /// our stanza id's millisecond, else the marker's time).
    fn read(&self, r: StatedRead) -> ReadReceipt {
        let up_to = self.resolve(&r.target);
        let up_to_time = self
            .messages
            .get(&up_to)
            .map(|k| k.time)
            .or_else(|| {
                r.target
                    .split_once('.')
                    .and_then(|(ms, _)| ms.parse::<i64>().ok())
                    .map(Timestamp::from_millis)
            })
            .unwrap_or(r.at);
        ReadReceipt {
            conversation: r.conversation,
            reader: r.reader,
            up_to,
            up_to_time,
            at: r.at,
        }
    }
}

/// A carbon copy (XEP-0280) unwrapped: the forwarded message and its stamp; any other
/// message as it is. `None` for a carbon not from my own bare JID (a forgery: only my
/// server may copy my traffic to me).
fn uncarbon(m: &XMessage, me: &BareJid) -> Option<(XMessage, Option<Timestamp>)> {
    let forwarded = m.payloads.iter().find_map(|p| {
        if p.is("sent", ns::CARBONS) {
            Some(Sent::try_from(p.clone()).map(|s| s.forwarded).ok())
        } else if p.is("received", ns::CARBONS) {
            Some(Received::try_from(p.clone()).map(|r| r.forwarded).ok())
        } else {
            None
        }
    });
    match forwarded {
        None => Some((m.clone(), None)),
        Some(f) => {
            let f = f?;
            let from_me = m.from.as_ref().is_some_and(|f| f.to_bare() == *me);
            if !from_me {
                tracing::warn!(from = ?m.from, "xmpp carbon not from my own account ignored");
                return None;
            }
            Some((f.message, f.delay.map(|d| millis(&d.stamp))))
        }
    }
}

/// What one message stanza means: a retraction, a correction or a displayed marker (never
/// a message, though the first two carry a body), else a message. `stamp` and
/// `archive_id` as for [`to_model`].
fn parse(m: &XMessage, stamp: Option<Timestamp>, archive_id: Option<&str>) -> Option<Parsed> {
    let payload = |name: &str, ns: &str| m.payloads.iter().find(|p| p.is(name, ns));
    let reference = |name: &str, ns: &str| {
        payload(name, ns)
            .and_then(|p| p.attr("id"))
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
    };
    if let Some(target) = reference("retract", NS_RETRACT) {
        let (by, peer, at) = envelope(m, stamp)?;
        return Some(Parsed::Change(StatedChange {
            conversation: ConversationId::direct(&by, &peer),
            target,
            kind: ChangeKind::Recalled,
            by,
            at,
        }));
    }
    if let Some(target) = reference("replace", ns::MESSAGE_CORRECT) {
        let (by, peer, at) = envelope(m, stamp)?;
        let (_, body) = m.get_best_body_cloned(vec![])?;
        return Some(Parsed::Change(StatedChange {
            conversation: ConversationId::direct(&by, &peer),
            target,
            kind: ChangeKind::Edited(Content::Text(body)),
            by,
            at,
        }));
    }
    if let Some(target) = reference("displayed", NS_MARKERS) {
        let (reader, peer, at) = envelope(m, stamp)?;
        return Some(Parsed::Read(StatedRead {
            conversation: ConversationId::direct(&reader, &peer),
            reader,
            target,
            at,
        }));
    }
    let message = to_model(m, stamp, archive_id)?;
    Some(Parsed::Message {
        message,
        stanza_id: m.id.as_ref().map(|i| i.0.clone()),
    })
}

/// An element `<name xmlns=ns attr=value …/>`.
fn element(name: &str, ns: &str, attrs: &[(&str, &str)]) -> Result<tokio_xmpp::minidom::Element> {
    let mut b = tokio_xmpp::minidom::Element::builder(name, ns);
    for (k, v) in attrs {
        let k = tokio_xmpp::minidom::rxml::NcName::try_from(*k)
            .map_err(|e| E::Protocol(format!("attribute name {k:?}: {e}")))?;
        b = b.attr(k, *v);
    }
    Ok(b.build())
}

/// A chat stanza to `to` with our id scheme: `<millis>.<origin-id>` (see `send`) and the
/// origin-id (XEP-0359).
fn stanza(to: Jid, at: Timestamp, origin: &str) -> XMessage {
    let mut m = XMessage::chat(to);
    m.id = Some(tokio_xmpp::parsers::message::Id(format!(
        "{}.{origin}",
        at.as_millis()
    )));
    m.with_payload(OriginId {
        id: origin.to_owned(),
    })
}

/// An XEP-0424 retraction of `target` (its origin-id), with the XEP's fallback body and a
/// `store` hint so the offline store and MAM keep it.
fn retraction(to: Jid, target: &str, at: Timestamp, origin: &str) -> Result<XMessage> {
    let mut m = stanza(to, at, origin).with_body(Lang::new(), RETRACT_FALLBACK.into());
    m.payloads.extend([
        element("retract", NS_RETRACT, &[("id", target)])?,
        element("fallback", NS_FALLBACK, &[("for", NS_RETRACT)])?,
        element("store", NS_HINTS, &[])?,
    ]);
    Ok(m)
}

/// An XEP-0308 correction of the message whose stanza id is `target`, with the new body.
fn correction(to: Jid, target: &str, body: String, at: Timestamp, origin: &str) -> XMessage {
    stanza(to, at, origin)
        .with_body(Lang::new(), body)
        .with_payload(Replace {
            id: tokio_xmpp::parsers::message::Id(target.to_owned()),
        })
}

/// An XEP-0333 displayed marker for the message whose stanza id is `target`.
fn displayed(to: Jid, target: &str, at: Timestamp, origin: &str) -> Result<XMessage> {
    let mut m = stanza(to, at, origin);
    m.payloads.extend([
        element("displayed", NS_MARKERS, &[("id", target)])?,
        element("store", NS_HINTS, &[])?,
    ]);
    Ok(m)
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

/// The sender, the addressee and the time of a received stanza. `stamp` is the archive's
/// time (MAM) or a carbon's, else the stanza's own `<delay>` (offline), else now (live); the
/// sender's millisecond in our stanza ids (see `send`) wins when it agrees with it.
fn envelope(m: &XMessage, stamp: Option<Timestamp>) -> Option<(UserId, UserId, Timestamp)> {
    let from = m.from.as_ref()?.to_bare();
    let to = m.to.as_ref()?.to_bare();
    let sender = UserId::new(from.node()?.as_str());
    let recipient = UserId::new(to.node()?.as_str());
    let delay = m
        .payloads
        .iter()
        .find(|p| p.is("delay", ns::DELAY))
        .and_then(|p| Delay::try_from(p.clone()).ok())
        .map(|d| millis(&d.stamp));
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
    Some((sender, recipient, time))
}

/// A received XMPP message as a contract message. `stamp` as for [`envelope`];
/// `archive_id` is the MAM id.
fn to_model(m: &XMessage, stamp: Option<Timestamp>, archive_id: Option<&str>) -> Option<Message> {
    let (sender, recipient, time) = envelope(m, stamp)?;
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
    let id = origin
        .clone()
        .or(stanza_id)
        .or_else(|| archive_id.map(str::to_owned))
        .or_else(|| m.id.as_ref().map(|i| i.0.clone()))?;
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
            confirmed: HashSet::new(),
            iqs: HashMap::new(),
            mams: HashMap::new(),
            offline: None,
            held: Vec::new(),
            online: false,
            known: self.known.clone(),
            lookups: futures::stream::FuturesUnordered::new(),
        };
        let handle = tokio::spawn(task.run(rx));
        *self.conn.lock() = Some(Conn {
            me: credentials.user.clone(),
            commands: tx,
            task: handle,
            ended,
        });
        *self.offline.lock() = None;
        self.sent.lock().clear();
        self.known.lock().delivered.clear();
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
        self.vendor.capabilities.check_size(&message.content)?;
        if let Some(r) = self.sent.lock().get(&message.client_id) {
            return Ok(r.as_duplicate());
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
        // `<millis>.<client id>`: XMPP stamps whole seconds, so the sender's millisecond
        // travels in the id and orders every copy (live, offline, MAM) the same way.
        // XEP-0333 `markable`: peers may answer with displayed markers.
        let mut stanza =
            stanza(to, sent_at, message.client_id.as_str()).with_body(Lang::new(), body);
        stanza.payloads.push(element("markable", NS_MARKERS, &[])?);
        let stanza_id = stanza.id.as_ref().map(|i| i.0.clone());
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
        // Known for the lifecycle rules: the sender may recall or edit it.
        self.known.lock().learn(
            &Message {
                server_id: receipt.server_id.clone(),
                client_id: message.client_id.clone(),
                conversation: message.conversation.clone(),
                sender: me,
                seq: None,
                server_time: sent_at,
                client_time: sent_at,
                content: message.content.clone(),
            },
            stanza_id.as_deref(),
        );
        Ok(receipt)
    }

    async fn pull_offline(&self, max: u32) -> Result<OfflineBatch> {
        self.conn.lock().as_ref().ok_or(E::NotLoggedIn)?;
        if self.offline.lock().is_none() {
            // The server delivers its offline store in its own order, oldest first; that
            // order is the only one a foreign burst of one (whole) second has.
            let delivered = self.ask(Cmd::Presence).await?;
            let (me, _) = self.commands()?;
            let me = self.jid_of(&me)?;
            let (messages, mut later, unknown) = self.offline_pass(&delivered, &me);
            // Changes of messages this handle has not seen (delivered before it existed):
            // their targets are looked up in MAM, which checks the sender and applies them.
            let mut looked = HashSet::new();
            for (conversation, target) in unknown {
                if !looked.insert(target.clone()) {
                    continue;
                }
                if let Some(change) = self
                    .find(&conversation, &target)
                    .await?
                    .and_then(|k| k.latest)
                {
                    later.push(VendorEvent::MessageChanged(change));
                }
            }
            // The oldest chunk first, each batch newest first (module doc): the client
            // delivers a batch as it comes, so the newest chunk first would overtake the
            // older ones.
            let pass = OfflinePass::new(messages, later, FirstChunk::Oldest);
            self.offline.lock().get_or_insert(pass);
        }
        let (batch, settled) = {
            let mut offline = self.offline.lock();
            let pass = offline.as_mut().ok_or(E::NotLoggedIn)?;
            (pass.batch(max), pass.settle())
        };
        if settled {
            self.offline_stored()?;
        }
        Ok(batch)
    }

    async fn ack_offline(&self, ack: &OfflineAck) -> Result<()> {
        self.commands()?;
        // The server dropped its copies when it delivered them: the ack only checks that
        // it is one this connection handed out.
        if offline::ack(self.offline.lock().as_mut(), ack)? {
            self.offline_stored()?;
        }
        Ok(())
    }

    async fn go_online(&self) -> Result<()> {
        let (_, commands) = self.commands()?;
        // The offline pass's changes of messages it did not hold, before the live ones.
        let later = self
            .offline
            .lock()
            .as_mut()
            .map(|p| std::mem::take(&mut p.later));
        for event in later.unwrap_or_default() {
            let _ = self.events_tx.send(event);
        }
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
        let (from, to) = query.time_bounds()?;
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
                before: Some(match &query.cursor {
                    None => String::new(),
                    Some(c) => mam_position(c)?.to_owned(),
                }),
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
        // Changes and markers in the page are not messages: a change applies to its
        // target (here, or in an older page later), the page holds current states.
        let mut messages = Vec::new();
        {
            let mut known = self.known.lock();
            for r in &results {
                let stamp = r.forwarded.delay.as_ref().map(|d| millis(&d.stamp));
                match parse(&r.forwarded.message, stamp, Some(&r.id)) {
                    Some(Parsed::Message { message, stanza_id }) => {
                        known.learn(&message, stanza_id.as_deref());
                        messages.push(message);
                    }
                    Some(Parsed::Change(c)) => {
                        let _ = known.change(c);
                    }
                    Some(Parsed::Read(_)) | None => {}
                }
            }
            messages = messages
                .into_iter()
                .map(|m| known.current(m))
                .filter(|m| {
                    from.is_none_or(|f| m.server_time >= f) && to.is_none_or(|t| m.server_time < t)
                })
                .collect();
        }
        // A page comes oldest first, in archive order; the contract reads newest first, and
        // messages of the same time keep archive order (reversed; see `newest_first`).
        let messages = newest_first(messages);
        let next = if fin.complete {
            None
        } else {
            fin.set
                .first
                .map(|f| crate::vendor::PageCursor(format!("{CURSOR_PREFIX}{}", f.item)))
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

    /// An XEP-0333 `displayed` marker to the peer (and, by carbons, to my other devices),
    /// referring to the message's stanza id when this handle knows it (it carries the
    /// message's millisecond), else its origin-id.
    async fn mark_read(&self, conversation: &ConversationId, up_to: &ServerMsgId) -> Result<()> {
        let (_, peer) = self.peer(conversation)?;
        let reference = self.reference(up_to);
        let at = now();
        let origin = ClientMsgId::generate();
        let marker = displayed(
            Jid::from(self.jid_of(&peer)?),
            &reference,
            at,
            origin.as_str(),
        )?;
        self.ask(|tx| Cmd::Send(marker, peer.clone(), tx)).await
    }

    fn lifecycle(&self) -> LifecyclePolicy {
        self.vendor.config.lifecycle.sender_only()
    }

    async fn recall(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> Result<MessageChange> {
        self.change(conversation, target, ChangeKind::Recalled)
            .await
    }

    async fn edit(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
        content: &Content,
    ) -> Result<MessageChange> {
        let Content::Text(_) = content else {
            return Err(E::InvalidRequest("XMPP corrections carry text only".into()));
        };
        self.vendor.capabilities.check_size(content)?;
        self.change(conversation, target, ChangeKind::Edited(content.clone()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::REVISION_EPOCH_MS;

    /// A disco#info result with `features` (the shape both servers answer with).
    fn disco(features: &[&str]) -> tokio_xmpp::minidom::Element {
        let vars: String = features
            .iter()
            .map(|f| format!("<feature var='{f}'/>"))
            .collect();
        format!(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='server' type='im' name='test'/>{vars}</query>"
        )
        .parse()
        .unwrap()
    }

    fn features(server: &[&str], account: &[&str], sm: bool) -> XmppServerFeatures {
        let server = disco_features(Some(disco(server))).unwrap();
        let account = disco_features(Some(disco(account))).unwrap();
        XmppServerFeatures::from_disco(
            server.iter().map(String::as_str),
            account.iter().map(String::as_str),
            sm,
        )
    }

    #[test]
    fn disco_results_are_read_into_server_features() {
        // ejabberd 23.01 (tests/ejabberd/ejabberd.yml), the domain's answer as seen: XEP-0013,
        // carbons and MAM all on the domain.
        let ejabberd = features(
            &[
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "http://jabber.org/protocol/offline",
                "iq",
                "msgoffline",
                "presence",
                "urn:xmpp:carbons:2",
                "urn:xmpp:carbons:rules:0",
                "urn:xmpp:mam:0",
                "urn:xmpp:mam:1",
                "urn:xmpp:mam:2",
                "urn:xmpp:mam:tmp",
                "urn:xmpp:ping",
            ],
            &[],
            true,
        );
        assert_eq!(
            ejabberd,
            XmppServerFeatures {
                carbons: true,
                flexible_offline: true,
                mam: true,
                stream_management: true,
            }
        );
        // Prosody 0.12 (tests/prosody/prosody.cfg.lua), the domain's answer as seen: no
        // XEP-0013, and MAM only on the account; the assumed features.
        let prosody = features(
            &[
                "jabber:iq:roster",
                "msgoffline",
                "urn:xmpp:carbons:rules:0",
                "urn:xmpp:carbons:2",
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "urn:xmpp:ping",
            ],
            &["urn:xmpp:mam:2"],
            true,
        );
        assert_eq!(prosody, XmppServerFeatures::ASSUMED);
        // MAM version 1 only is not what the adapter speaks; nothing announced, nothing had.
        let old = features(&["urn:xmpp:carbons:2"], &["urn:xmpp:mam:1"], false);
        assert!(!old.mam && !old.stream_management && !old.flexible_offline);
        assert_eq!(disco_features(None).unwrap(), Vec::<String>::new());
        assert!(matches!(
            disco_features(Some("<query xmlns='urn:xmpp:ping'/>".parse().unwrap())),
            Err(E::Protocol(_))
        ));
    }

    #[test]
    fn a_configuration_is_checked_against_what_the_server_states() {
        let found = XmppServerFeatures::ASSUMED;
        assert!(XmppServerFeatures::ASSUMED.missing_in(&found).is_empty());
        let claims = XmppServerFeatures {
            flexible_offline: true,
            ..XmppServerFeatures::ASSUMED
        };
        assert_eq!(
            claims.missing_in(&found),
            ["XEP-0013 flexible offline retrieval"]
        );
        let bare = XmppServerFeatures {
            carbons: false,
            flexible_offline: false,
            mam: false,
            stream_management: false,
        };
        assert_eq!(XmppServerFeatures::ASSUMED.missing_in(&bare).len(), 3);
        assert!(
            bare.missing_in(&found).is_empty(),
            "less than offered is fine"
        );
    }

    #[test]
    fn capabilities_follow_the_deployment() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let caps = |server: XmppServerFeatures, multi: bool| {
            let mut config = XmppConfig::new(addr, "im.test");
            config.server = server;
            config.multi_device = multi;
            XmppVendor::new(config).capabilities().clone()
        };
        let full = XmppServerFeatures::ASSUMED;
        assert!(caps(full, true).supports(Capability::MultiDevice));
        assert!(caps(full, false).supports(Capability::HistoryByTime));
        let without = XmppServerFeatures {
            carbons: false,
            mam: false,
            ..full
        };
        assert!(
            !caps(without, true).supports(Capability::MultiDevice),
            "several devices need carbons"
        );
        assert!(
            !caps(without, false).supports(Capability::HistoryByTime),
            "history needs MAM"
        );
        assert!(caps(without, false).supports(Capability::KickOnSecondLogin));
    }

    #[test]
    fn only_cursors_this_adapter_issued_are_taken() {
        use crate::vendor::PageCursor;
        assert_eq!(
            mam_position(&PageCursor("mam:1700000000123456".into())),
            Ok("1700000000123456")
        );
        for bad in ["garbage", "mam:", "", "1700000000123456"] {
            assert!(
                matches!(
                    mam_position(&PageCursor(bad.into())),
                    Err(E::InvalidRequest(_))
                ),
                "{bad:?}"
            );
        }
    }

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

    fn jid(s: &str) -> Jid {
        s.parse().unwrap()
    }

    /// `m` as the receiver gets it: from alice's device to bob, through XML and back.
    fn received(mut m: XMessage) -> XMessage {
        m.from = Some(jid("alice@im.test/phone"));
        let el: tokio_xmpp::minidom::Element = m.into();
        XMessage::try_from(el).unwrap()
    }

    fn conv() -> ConversationId {
        ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"))
    }

    #[test]
    fn a_retraction_is_a_stored_change_with_a_fallback_never_a_message() {
        let at = Timestamp::from_millis(1_800_000_000_123);
        let m = retraction(jid("bob@im.test"), "c-orig", at, "c-new").unwrap();
        assert!(m.payloads.iter().any(|p| p.is("store", NS_HINTS)));
        assert!(
            m.payloads
                .iter()
                .any(|p| p.is("fallback", NS_FALLBACK) && p.attr("for") == Some(NS_RETRACT))
        );
        assert_eq!(
            m.get_best_body_cloned(vec![]).map(|(_, b)| b).as_deref(),
            Some(RETRACT_FALLBACK)
        );
        assert_eq!(
            parse(&received(m), None, None),
            Some(Parsed::Change(StatedChange {
                conversation: conv(),
                target: "c-orig".into(),
                kind: ChangeKind::Recalled,
                by: UserId::new("alice"),
                at,
            }))
        );
    }

    #[test]
    fn a_correction_and_a_marker_parse_as_change_and_read() {
        let at = Timestamp::from_millis(1_800_000_000_456);
        let fix = correction(jid("bob@im.test"), "17.c-orig", "fixed".into(), at, "c-2");
        assert_eq!(
            parse(&received(fix), None, None),
            Some(Parsed::Change(StatedChange {
                conversation: conv(),
                target: "17.c-orig".into(),
                kind: ChangeKind::Edited(Content::text("fixed")),
                by: UserId::new("alice"),
                at,
            }))
        );
        let read = displayed(jid("bob@im.test"), "17.c-orig", at, "c-3").unwrap();
        assert_eq!(
            parse(&received(read), None, None),
            Some(Parsed::Read(StatedRead {
                conversation: conv(),
                reader: UserId::new("alice"),
                target: "17.c-orig".into(),
                at,
            }))
        );
        let plain = stanza(jid("bob@im.test"), at, "c-4").with_body(Lang::new(), "hi".into());
        match parse(&received(plain), None, None) {
            Some(Parsed::Message { message, stanza_id }) => {
                assert_eq!(message.server_id.as_str(), "c-4");
                assert_eq!(message.server_time, at);
                assert_eq!(stanza_id.as_deref(), Some("1800000000456.c-4"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_my_own_server_may_hand_me_a_carbon() {
        let me: BareJid = "alice@im.test".parse().unwrap();
        let inner = stanza(jid("bob@im.test"), Timestamp::from_millis(5), "c-9")
            .with_body(Lang::new(), "from my phone".into());
        let mut inner = inner;
        inner.from = Some(jid("alice@im.test/phone"));
        let forwarded = tokio_xmpp::parsers::forwarding::Forwarded {
            delay: None,
            message: inner.clone(),
        };
        let mut carbon = XMessage::chat(jid("alice@im.test/laptop")).with_payload(Sent {
            forwarded: forwarded.clone(),
        });
        carbon.from = Some(jid("alice@im.test"));
        let (unwrapped, _) = uncarbon(&carbon, &me).unwrap();
        assert_eq!(unwrapped.id, inner.id);
        match parse(&unwrapped, None, None) {
            Some(Parsed::Message { message, .. }) => {
                assert_eq!(message.sender, UserId::new("alice"), "my own message");
            }
            other => panic!("{other:?}"),
        }
        carbon.from = Some(jid("mallory@im.test"));
        assert!(
            uncarbon(&carbon, &me).is_none(),
            "a forged carbon is dropped"
        );
        let plain = XMessage::chat(jid("alice@im.test"));
        assert!(uncarbon(&plain, &me).is_some());
    }

    fn stated(kind: ChangeKind, by: &str, target: &str, ms: i64) -> StatedChange {
        StatedChange {
            conversation: conv(),
            target: target.into(),
            kind,
            by: UserId::new(by),
            at: Timestamp::from_millis(REVISION_EPOCH_MS + ms),
        }
    }

    #[test]
    fn changes_need_the_sender_and_apply_newest_once() {
        let mut known = Known::default();
        let mut m = at("c-1", REVISION_EPOCH_MS);
        m.sender = UserId::new("alice");
        m.conversation = conv();
        known.learn(&m, Some("1000.c-1"));
        let edit = |t: &str, ms| {
            stated(
                ChangeKind::Edited(Content::text(t)),
                "alice",
                "1000.c-1",
                ms,
            )
        };
        assert_eq!(
            known.change(stated(ChangeKind::Recalled, "bob", "c-1", 1_000)),
            None,
            "a non-sender's recall is ignored"
        );
        assert_eq!(
            known.change(stated(
                ChangeKind::Edited(Content::text("x")),
                "bob",
                "c-1",
                1_000
            )),
            None,
            "a non-sender's edit is ignored"
        );
        let first = known.change(edit("one", 1_000)).expect("the sender's edit");
        assert_eq!(
            first.target.as_str(),
            "c-1",
            "the stanza id resolves to the origin-id"
        );
        assert_eq!(first.revision, 10);
        assert_eq!(
            known.change(edit("one", 1_000)),
            None,
            "seen twice, applied once"
        );
        assert_eq!(known.change(edit("old", 500)), None, "an older edit loses");
        let recall = known
            .change(stated(ChangeKind::Recalled, "alice", "c-1", 2_000))
            .expect("the recall");
        assert!(recall.revision > first.revision);
        assert_eq!(
            known.change(edit("late", 3_000)),
            None,
            "recalled stays recalled"
        );
        assert!(matches!(known.current(m).content, Content::Recalled { .. }));
    }

    #[test]
    fn a_change_waits_for_its_target_and_still_needs_its_sender() {
        let mut known = Known::default();
        assert_eq!(
            known.change(stated(ChangeKind::Recalled, "bob", "c-7", 1)),
            None
        );
        assert_eq!(
            known.change(stated(
                ChangeKind::Edited(Content::text("y")),
                "alice",
                "c-8",
                1
            )),
            None
        );
        let mut theirs = at("c-7", REVISION_EPOCH_MS);
        theirs.sender = UserId::new("alice");
        theirs.conversation = conv();
        known.learn(&theirs, None);
        assert_eq!(
            known.current(theirs.clone()),
            theirs,
            "bob's recall never applies"
        );
        let mut edited = at("c-8", REVISION_EPOCH_MS);
        edited.sender = UserId::new("alice");
        edited.conversation = conv();
        known.learn(&edited, None);
        assert_eq!(known.current(edited).content, Content::text("y"));
    }

    #[test]
    fn a_read_marker_takes_the_time_from_our_stanza_id() {
        let known = Known::default();
        let r = known.read(StatedRead {
            conversation: conv(),
            reader: UserId::new("bob"),
            target: "1234.c-1".into(),
            at: Timestamp::from_millis(9_999),
        });
        assert_eq!(r.up_to.as_str(), "c-1");
        assert_eq!(r.up_to_time, Timestamp::from_millis(1234));
    }
}
