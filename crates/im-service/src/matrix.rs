//! `MatrixVendor`/`MatrixClient`: the [`Vendor`] adapter for Matrix homeservers (feature
//! `matrix`; tested on Synapse 1.163): `ruma`'s client-API types over `reqwest` (plain HTTP on
//! loopback), not `matrix-sdk`, whose sync loop, send queue, crypto and store would duplicate
//! `im-arch`. Bodies are read up to [`MatrixConfig::max_response_bytes`] (else a typed error).
//!
//! Mapping of the contract:
//! * accounts: a [`Credentials`] `user` is the localpart on [`MatrixConfig::server_name`], its
//!   token the password. Every login names a device ([`DevicePolicy`]). [`DevicePolicy::Shared`]
//!   (default): one device per user, so a transaction id (= client message id) stays
//!   idempotent across restarts; a login first ends the device's other sessions (a throwaway
//!   session deletes the device; the server keeps transaction ids by device id), and the
//!   previous handle learns `Kicked(LoggedInElsewhere)` from `M_UNKNOWN_TOKEN`, asked every
//!   [`MatrixConfig::session_check`] ([`Capability::KickOnSecondLogin`]).
//!   [`DevicePolicy::PerHandle`]: a device per handle ([`Capability::MultiDevice`]);
//! * direct conversation = a room listed for the peer in my `m.direct`, else one created with
//!   `is_direct` and the peer invited; invites are joined automatically (direct ones added to
//!   `m.direct`). Rooms both sides created at once are one conversation; sends go to the
//!   lowest room id, which both sides converge on;
//! * group = the room with alias `#{group_alias_prefix}{group id}:{server}` (bytes outside
//!   `[a-z0-9._-]` as `=hh`), made by [`MatrixClient::create_group`] (administration). A room
//!   maps to its conversation by alias, else `m.direct`, else its two members;
//! * ACK-online: the offline position is the `/sync` `next_batch` token, in account data per
//!   device (`im.layers.position.<device>`). `pull_offline` runs one pass of syncs from it
//!   (joining invites, filling limited timelines by `/messages`), hands it out newest first
//!   and stores its token once every batch is acknowledged. `go_online` starts a long-poll
//!   `/sync` task that pushes events and moves the position past them. My own messages are
//!   never offline, and are pushed only from my other devices;
//! * order: no sequences; the server's stream order in a room, rooms merged by
//!   `origin_server_ts`;
//! * history: `/messages` backwards from the event `timestamp_to_event` finds before the
//!   range's end; cursors are `/messages` tokens with a count to skip;
//! * send: `PUT /send/m.room.message/{client id}` (a repeated transaction gets the first
//!   event); server id = event id, time = its `origin_server_ts`; a resend of a client id this
//!   handle tried is `duplicate`;
//! * lifecycle: recall = redaction, edit = `m.replace`, sender-only, checked here by
//!   [`LifecyclePolicy::check`] (a room admin may redact anything: changes by others than
//!   the sender are ignored on receipt); revisions from the change's time. Pulls return
//!   current state (redactions, the bundled latest edit); the change feed is the `/sync`
//!   stream from a token. No delete-for-me;
//! * read state: `m.read` receipts both ways (echoes of this handle's own dropped);
//! * errors: `M_LIMIT_EXCEEDED` → `RateLimited` (`retry_after_ms`, else 1 s), `M_UNKNOWN_TOKEN`
//!   → `TokenExpired` (soft logout) or `Kicked`, `M_FORBIDDEN`/`M_NOT_FOUND` on a room →
//!   `NotMember`, 400 → `InvalidRequest`, timeouts → `Timeout`, refused connections →
//!   `Unavailable`, others → `Server`;
//! * heartbeat: a timed `/account/whoami`. No token expiry (passwords do not expire).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use ruma::api::client::{
    account::whoami, alias::get_alias, config::get_global_account_data,
    config::set_global_account_data, context::get_context, device::delete_device,
    filter::FilterDefinition, membership::join_room_by_id, membership::joined_members,
    membership::joined_rooms, message::get_message_events, message::send_message_event,
    profile::get_profile, receipt::create_receipt, redact::redact_event, room::create_room,
    room::get_event_by_timestamp, room::get_room_event, session::login, session::logout,
    state::get_state_event_for_key, sync::sync_events, uiaa, uiaa::MatrixUserIdentifier,
    uiaa::UserIdentifier,
};
use ruma::api::error::{Error as MxError, ErrorKind, FromHttpResponseError, RetryAfter};
use ruma::api::{
    Direction, IncomingResponse, IncomingResponseExt, OutgoingRequest, OutgoingRequestExt,
    SupportedVersions, auth_scheme::AuthScheme, auth_scheme::SendAccessToken,
    path_builder::PathBuilder,
};
use ruma::events::StateEventType;
use ruma::serde::Raw;
use ruma::{EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId};
use ruma::{RoomId, UInt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::capabilities::{Capabilities, Capability};
use crate::clock::now;
use crate::error::KickReason;
use crate::lifecycle::{
    ChangeBatch, ChangeCursor, ChangeKind, ChangeRefusal, LifecyclePolicy, MessageChange,
    ReadReceipt,
};
use crate::model::{
    ClientMsgId, Content, ConversationId, GroupId, Message, OutgoingMessage, ServerMsgId,
    Timestamp, UserId,
};
use crate::offline::{self, FirstChunk, OfflinePass};
use crate::vendor::{
    Credentials, EventStream, HistoryPage, HistoryQuery, HistoryScope, OfflineAck, OfflineBatch,
    PageCursor, SendReceipt, Session, Vendor, VendorEvent,
};
use crate::{Result, ServiceError as E};

/// Which Matrix device a client handle logs in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Every handle of a user is this one device: transaction ids stay idempotent across
    /// reconnects and restarts; no second device.
    Shared(String),
    /// Each handle is its own device `{prefix}{random}` for its life
    /// ([`Capability::MultiDevice`]); idempotency holds within the handle.
    PerHandle(String),
}

/// Settings of the Matrix adapter.
#[derive(Debug, Clone)]
pub struct MatrixConfig {
    /// The homeserver's base URL (`http://127.0.0.1:8008`; plain HTTP on loopback only).
    pub homeserver: String,
    /// The server name user ids live on (`@user:server`).
    pub server_name: String,
    /// Which device each handle logs in as.
    pub devices: DevicePolicy,
    /// How long a request waits for its answer.
    pub request_timeout: Duration,
    /// How long one long-poll `/sync` waits on the server.
    pub sync_timeout: Duration,
    /// How often a shared-device session asks whether another login ended it.
    pub session_check: Duration,
    /// Largest message content sent (a typed, client-side refusal).
    pub max_message_bytes: usize,
    /// Largest response body read; a larger one is a `Protocol` error.
    pub max_response_bytes: usize,
    /// Timeline events per room and sync (limited timelines are filled by `/messages`).
    pub sync_timeline_limit: u32,
    /// Prefix of group room aliases, so several test runs (or apps) share a server.
    pub group_alias_prefix: String,
    /// The recall window and edit rule this adapter enforces (Matrix itself has none).
    pub lifecycle: LifecyclePolicy,
}

impl MatrixConfig {
    /// Settings for `server_name` served at `homeserver`: one shared device `IMLAYERS`,
    /// 10 s requests, 25 s long polls, a session check every 10 s, 64 KiB messages, 16 MiB
    /// responses.
    pub fn new(homeserver: impl Into<String>, server_name: impl Into<String>) -> Self {
        Self {
            homeserver: homeserver.into().trim_end_matches('/').to_string(),
            server_name: server_name.into(),
            devices: DevicePolicy::Shared("IMLAYERS".into()),
            request_timeout: Duration::from_secs(10),
            sync_timeout: Duration::from_secs(25),
            session_check: Duration::from_secs(10),
            max_message_bytes: 64 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            sync_timeline_limit: 100,
            group_alias_prefix: "im-".into(),
            lifecycle: LifecyclePolicy::default(),
        }
    }
}

/// The Matrix vendor: a factory of [`MatrixClient`]s.
///
/// Against the test Synapse (`tests/synapse/synapse.sh start`, server name `localhost`):
///
/// ```no_run
/// # async fn demo() -> im_service::Result<()> {
/// use im_service::matrix::{MatrixConfig, MatrixVendor};
/// use im_service::{Credentials, Vendor};
///
/// let vendor = MatrixVendor::new(MatrixConfig::new("http://127.0.0.1:8008", "localhost"));
/// let alice = vendor.client();
/// alice.login(&Credentials::new("alice", "alice-password")).await?;
/// alice.logout().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MatrixVendor {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: MatrixConfig,
    capabilities: Capabilities,
    http: reqwest::Client,
    versions: SupportedVersions,
}

impl MatrixVendor {
    /// The vendor at `config`. Capabilities: history by time, server acks (an event id per
    /// send), offline queue with explicit ack (the sync position), groups, read receipts
    /// both ways, heartbeat, idempotent send, recall, edit and the change feed; a second
    /// login kicks the first with [`DevicePolicy::Shared`], several devices with
    /// [`DevicePolicy::PerHandle`]. No sequences, no token expiry, no delete-for-me.
    pub fn new(config: MatrixConfig) -> Self {
        let capabilities = Capabilities::none()
            .with(Capability::HistoryByTime)
            .with(Capability::ServerAcks)
            .with(Capability::OfflineQueue)
            .with(Capability::ExplicitOfflineAck)
            .with(Capability::GroupConversations)
            .with(Capability::ReadReceipts)
            .with(Capability::ReadReceiptEvents)
            .with(Capability::Heartbeat)
            .with(Capability::IdempotentSend)
            .with(Capability::Recall)
            .with(Capability::Edit)
            .with(Capability::ChangeFeed)
            .with(match config.devices {
                DevicePolicy::Shared(_) => Capability::KickOnSecondLogin,
                DevicePolicy::PerHandle(_) => Capability::MultiDevice,
            })
            .with_max_message_bytes(config.max_message_bytes);
        let versions = SupportedVersions::from_parts(&["v1.11".to_string()], &BTreeMap::new());
        let http = reqwest::Client::new();
        Self {
            shared: Arc::new(Shared {
                config,
                capabilities,
                http,
                versions,
            }),
        }
    }

    /// What every client of this vendor declares.
    pub fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    /// A new client handle (not logged in).
    pub fn client(&self) -> MatrixClient {
        let device = match &self.shared.config.devices {
            DevicePolicy::Shared(d) => d.clone(),
            DevicePolicy::PerHandle(prefix) => format!("{prefix}{:08X}", rand::random::<u32>()),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        MatrixClient {
            shared: self.shared.clone(),
            device,
            known: Arc::new(Mutex::new(Known::default())),
            session: Mutex::new(None),
            events_tx: tx,
            events_rx: Mutex::new(Some(rx)),
        }
    }
}

/// One user's handle.
pub struct MatrixClient {
    shared: Arc<Shared>,
    /// The Matrix device this handle logs in as.
    device: String,
    /// Rooms, direct-room lists and messages this handle knows; shared with its sync task.
    known: Arc<Mutex<Known>>,
    session: Mutex<Option<Sess>>,
    events_tx: mpsc::UnboundedSender<VendorEvent>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<VendorEvent>>>,
}

impl std::fmt::Debug for MatrixClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut f = f.debug_struct("MatrixClient");
        f.field("device", &self.device).finish_non_exhaustive()
    }
}

/// One login.
struct Sess {
    api: Api,
    /// The acknowledged offline position (account data), `None` before the first pass.
    position: Option<String>,
    /// The running offline pass and the sync token it ends at.
    pass: Option<(String, OfflinePass)>,
    /// The long-poll task after `go_online`.
    live: Option<JoinHandle<()>>,
    /// The session watcher (shared device only).
    watch: Option<JoinHandle<()>>,
}

impl Drop for Sess {
    fn drop(&mut self) {
        for t in [&self.live, &self.watch].into_iter().flatten() {
            t.abort();
        }
    }
}

/// What a handle knows (bounded: messages forgotten wholesale past `KNOWN_MAX`).
#[derive(Default)]
struct Known {
    rooms: HashMap<OwnedRoomId, ConversationId>,
    direct: Direct,
    /// Sender and server time of the messages seen, by event id.
    messages: HashMap<String, (UserId, Timestamp)>,
    attempted: HashSet<ClientMsgId>,
    sent: HashMap<ClientMsgId, SendReceipt>,
    /// Events this handle marked read: their echoes are not events.
    my_reads: HashSet<String>,
}

const KNOWN_MAX: usize = 50_000;

/// `m.direct`: peer user id → room ids.
type Direct = BTreeMap<String, BTreeSet<OwnedRoomId>>;

impl Known {
    /// Remembers message `m`'s sender and time.
    fn learn(&mut self, m: &Message) {
        if self.messages.len() >= KNOWN_MAX {
            self.messages.clear();
        }
        let id = m.server_id.to_string();
        self.messages.insert(id, (m.sender.clone(), m.server_time));
    }
}

/// The HTTP side of one login: base URL, token, limits.
#[derive(Clone)]
struct Api {
    shared: Arc<Shared>,
    /// What the handle knows (shared by its sessions and their tasks).
    known: Arc<Mutex<Known>>,
    token: Option<String>,
    me: UserId,
    mxid: String,
    device: String,
    events: mpsc::UnboundedSender<VendorEvent>,
    /// Why the session ended on the server side, once a task saw it.
    ended: Arc<Mutex<Option<E>>>,
}

/// A minimal view of a timeline event (the fields the mapping reads).
#[derive(Debug, Deserialize)]
struct Ev {
    #[serde(rename = "type")]
    kind: String,
    event_id: String,
    sender: String,
    origin_server_ts: i64,
    #[serde(default)]
    content: Value,
    redacts: Option<String>,
    #[serde(default)]
    unsigned: Value,
    state_key: Option<String>,
}

/// What a timeline event means for the contract.
#[derive(Debug)]
enum Item {
    /// A message, and whether this device sent it.
    Msg(Message, bool),
    Change(MessageChange),
    Read(ReadReceipt),
}

/// The localpart of `@local:server` (the whole id, without `@`, for other servers).
fn localpart(mxid: &str, server: &str) -> UserId {
    let id = mxid.strip_prefix('@').unwrap_or(mxid);
    match id.split_once(':') {
        Some((local, s)) if s == server => UserId::new(local),
        _ => UserId::new(id),
    }
}

/// `#{prefix}{group}:{server}` with characters outside `[a-z0-9._-]` as `=hh`.
fn group_alias(prefix: &str, group: &GroupId, server: &str) -> String {
    let mut local = String::from(prefix);
    for b in group.as_str().bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => local.push(char::from(b)),
            _ => local.push_str(&format!("={b:02x}")),
        }
    }
    format!("#{local}:{server}")
}

/// The group of an alias made by [`group_alias`], if it is one.
fn group_of_alias(prefix: &str, alias: &str, server: &str) -> Option<GroupId> {
    let local = alias.strip_prefix('#')?.strip_suffix(server)?;
    let local = local.strip_suffix(':')?.strip_prefix(prefix)?;
    let (mut out, mut rest) = (Vec::new(), local);
    while let Some((plain, escaped)) = rest.split_once('=') {
        out.extend(plain.bytes());
        out.push(u8::from_str_radix(escaped.get(..2)?, 16).ok()?);
        rest = escaped.get(2..)?;
    }
    out.extend(rest.bytes());
    Some(GroupId::new(String::from_utf8(out).ok()?))
}

/// The event content of `content` (text as `m.text`, custom payloads hex-encoded).
fn content_json(content: &Content, id: &ClientMsgId, time: Timestamp) -> Result<Value> {
    let mut v = match content {
        Content::Text(t) => json!({ "msgtype": "m.text", "body": t }),
        Content::Custom { type_tag, payload } => json!({
            "msgtype": "im.layers.custom", "body": format!("[{type_tag}]"),
            "im.layers.type": type_tag, "im.layers.payload": hex::encode(payload),
        }),
        Content::Recalled { .. } => {
            let why = "a recalled placeholder cannot be sent: recall the message instead";
            return Err(E::InvalidRequest(why.into()));
        }
    };
    v["im.layers.client_id"] = json!(id.as_str());
    v["im.layers.client_time"] = json!(time.as_millis());
    Ok(v)
}

/// The model content of a message event's content, `None` when it is not one we map.
fn parse_content(c: &Value) -> Option<Content> {
    match c["msgtype"].as_str()? {
        "im.layers.custom" => Some(Content::Custom {
            type_tag: c["im.layers.type"].as_str()?.to_string(),
            payload: hex::decode(c["im.layers.payload"].as_str()?).ok()?,
        }),
        _ => Some(Content::Text(c["body"].as_str()?.to_string())),
    }
}

/// Maps one timeline event of `conversation` to the contract (`None`: not ours to map).
/// A message is marked mine when this device sent it (`unsigned.transaction_id`).
fn to_item(ev: &Ev, conversation: &ConversationId, server: &str) -> Option<Item> {
    let sender = localpart(&ev.sender, server);
    let at = Timestamp::from_millis(ev.origin_server_ts);
    let (c, unsigned) = (&ev.content, &ev.unsigned);
    let change = |target: &str, kind| {
        let (target, by) = (ServerMsgId::new(target), sender.clone());
        Item::Change(MessageChange::timed(conversation, target, kind, by, at))
    };
    match ev.kind.as_str() {
        "m.room.redaction" => {
            let target = ev.redacts.as_deref().or(c["redacts"].as_str())?;
            Some(change(target, ChangeKind::Recalled))
        }
        "m.room.message" if c["m.relates_to"]["rel_type"] == "m.replace" => {
            let target = c["m.relates_to"]["event_id"].as_str()?;
            let kind = ChangeKind::Edited(parse_content(&c["m.new_content"])?);
            Some(change(target, kind))
        }
        "m.room.message" => {
            let redacted = &unsigned["redacted_because"];
            let content = match redacted["sender"].as_str() {
                Some(by) => Content::Recalled {
                    by: localpart(by, server),
                    at: Timestamp::from_millis(redacted["origin_server_ts"].as_i64()?),
                },
                None => {
                    // The server bundles the latest edit: current state, by its sender only.
                    let edit = &unsigned["m.relations"]["m.replace"];
                    let edit = (edit["sender"] == ev.sender.as_str())
                        .then(|| parse_content(&edit["content"]["m.new_content"]));
                    edit.flatten().or_else(|| parse_content(c))?
                }
            };
            let client_id = c["im.layers.client_id"].as_str().unwrap_or(&ev.event_id);
            let client_time = c["im.layers.client_time"].as_i64();
            let message = Message {
                server_id: ServerMsgId::new(&ev.event_id),
                client_id: ClientMsgId::new(client_id),
                conversation: conversation.clone(),
                sender,
                seq: None,
                server_time: at,
                client_time: client_time.map_or(at, Timestamp::from_millis),
                content,
            };
            Some(Item::Msg(message, !unsigned["transaction_id"].is_null()))
        }
        _ => None,
    }
}

/// The message of a timeline event (`None`: not a message we map).
fn to_message(ev: &Ev, conversation: &ConversationId, server: &str) -> Option<Message> {
    match to_item(ev, conversation, server)? {
        Item::Msg(m, _) => Some(m),
        _ => None,
    }
}

/// The read receipts of one `m.receipt` ephemeral event: (event id, reader, time).
fn receipts(content: &Value, server: &str) -> Vec<(String, UserId, Timestamp)> {
    let mut out = Vec::new();
    for (event_id, kinds) in content.as_object().into_iter().flatten() {
        for (reader, data) in kinds["m.read"].as_object().into_iter().flatten() {
            let at = Timestamp::from_millis(data["ts"].as_i64().unwrap_or(0));
            out.push((event_id.clone(), localpart(reader, server), at));
        }
    }
    out
}

/// The contract's error for a Matrix error answer.
fn map_mx(e: &MxError) -> E {
    let kind = e.error_kind();
    let message = kind.map(|k| k.errcode().to_string()).unwrap_or_default();
    match kind {
        Some(ErrorKind::LimitExceeded(d)) => E::RateLimited {
            retry_after: match d.retry_after {
                Some(RetryAfter::Delay(d)) => d,
                Some(RetryAfter::DateTime(t)) => t
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default(),
                None => Duration::from_secs(1),
            },
        },
        Some(ErrorKind::UnknownToken(d)) if d.soft_logout => E::TokenExpired,
        // With a shared device, another login ended this session (module doc).
        Some(ErrorKind::UnknownToken(_)) => E::Kicked(KickReason::LoggedInElsewhere),
        Some(ErrorKind::Forbidden) if e.status_code.as_u16() == 403 => {
            E::AuthFailed(format!("forbidden ({message})"))
        }
        Some(ErrorKind::TooLarge) => E::InvalidRequest("request too large".into()),
        _ if e.status_code.as_u16() == 400 => E::InvalidRequest(format!("refused: {message}")),
        _ => E::Server {
            code: u32::from(e.status_code.as_u16()),
            message,
        },
    }
}

/// A response as the contract sees it: the typed answer, a mapped Matrix error, or a
/// `Protocol` error for a body that does not parse.
fn decode<T: IncomingResponse<EndpointError = MxError>>(
    response: http::Response<&[u8]>,
) -> Result<T> {
    let status = response.status();
    T::try_from_http_response(response).map_err(|e| match e {
        FromHttpResponseError::Server(e) => map_mx(&e),
        FromHttpResponseError::Deserialization(e) => {
            E::Protocol(format!("malformed answer ({status}): {e}"))
        }
        _ => E::Protocol(format!("unexpected answer ({status})")),
    })
}

/// A room-scoped call's error: a forbidden or unknown room means not a member.
fn in_room(e: E, conversation: &ConversationId) -> E {
    match e {
        E::AuthFailed(_) | E::Server { code: 404, .. } => E::NotMember(conversation.clone()),
        other => other,
    }
}

/// A client-API request as this adapter sends them: with the session's access token and the
/// fixed supported versions (the bounds once, for every request type).
trait Req: OutgoingRequest {
    fn build(self, api: &Api) -> Result<reqwest::Request>;
}

impl<R: OutgoingRequest> Req for R
where
    for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    for<'a> R::PathBuilder: PathBuilder<Input<'a> = Cow<'a, SupportedVersions>>,
{
    fn build(self, api: &Api) -> Result<reqwest::Request> {
        let token = api.token.as_deref();
        let token = token.map_or(SendAccessToken::None, SendAccessToken::IfRequired);
        let (base, versions) = (&api.config().homeserver, &api.shared.versions);
        let build = |e: String| E::InvalidRequest(format!("cannot build the request: {e}"));
        let request: http::Request<Vec<u8>> =
            (self.try_into_http_request(base, token, Cow::Borrowed(versions)))
                .map_err(|e| build(e.to_string()))?;
        reqwest::Request::try_from(request).map_err(|e| build(e.to_string()))
    }
}

impl Api {
    fn config(&self) -> &MatrixConfig {
        &self.shared.config
    }

    fn mxid_of(&self, user: &UserId) -> Result<OwnedUserId> {
        OwnedUserId::try_from(format!("@{user}:{}", self.config().server_name))
            .map_err(|e| E::InvalidRequest(format!("not a Matrix user name {user:?}: {e}")))
    }

    fn my_id(&self) -> Result<OwnedUserId> {
        OwnedUserId::try_from(self.mxid.as_str()).map_err(|e| E::Protocol(e.to_string()))
    }

    /// Sends `req` and reads its answer within `timeout` and the body limit (a larger body
    /// is a `Protocol` error).
    async fn exchange(&self, req: impl Req, timeout: Duration) -> Result<http::Response<Vec<u8>>> {
        let mut request = req.build(self)?;
        *request.timeout_mut() = Some(timeout);
        let response = self.shared.http.execute(request).await;
        let mut response = response.map_err(|e| transport(e, timeout))?;
        let mut out = http::Response::new(Vec::new());
        (*out.status_mut(), *out.headers_mut()) = (response.status(), response.headers().clone());
        let max = self.config().max_response_bytes;
        let over = || E::Protocol(format!("response over {max} bytes"));
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(over());
        }
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(e, timeout))? {
            if out.body().len() + chunk.len() > max {
                return Err(over());
            }
            out.body_mut().extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Sends `req` and decodes its answer within `timeout`.
    async fn call<R>(&self, req: R, timeout: Duration) -> Result<R::IncomingResponse>
    where
        R: Req<EndpointError = MxError>,
    {
        let (parts, body) = self.exchange(req, timeout).await?.into_parts();
        let response = decode(http::Response::from_parts(parts, body.as_slice()));
        let revoked = || KickReason::Admin("the access token was revoked".into());
        match (response, &self.config().devices) {
            (Err(E::Kicked(_)), DevicePolicy::PerHandle(_)) => Err(E::Kicked(revoked())),
            (response, _) => response,
        }
    }

    /// Sends `req` and decodes its answer within the request timeout.
    async fn req<R: Req<EndpointError = MxError>>(&self, req: R) -> Result<R::IncomingResponse> {
        self.call(req, self.config().request_timeout).await
    }

    /// [`Api::req`] in the room of `conv`: a forbidden or unknown room means not a member.
    async fn in_room<R>(&self, req: R, conv: &ConversationId) -> Result<R::IncomingResponse>
    where
        R: Req<EndpointError = MxError>,
    {
        self.req(req).await.map_err(|e| in_room(e, conv))
    }

    fn event_id(id: &ServerMsgId) -> Result<OwnedEventId> {
        OwnedEventId::try_from(id.as_str())
            .map_err(|_| E::ChangeRefused(ChangeRefusal::UnknownMessage))
    }

    async fn account_data<T: DeserializeOwned>(&self, kind: &str) -> Result<Option<T>> {
        let req = get_global_account_data::v3::Request::new(self.my_id()?, kind.into());
        match self.req(req).await {
            Ok(r) => (r.account_data.deserialize_as_unchecked().map(Some))
                .map_err(|e| E::Protocol(format!("account data {kind}: {e}"))),
            Err(E::Server { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn set_account_data(&self, kind: &str, value: &impl Serialize) -> Result<()> {
        let raw = Raw::new(value).map_err(|e| E::Protocol(e.to_string()))?;
        let (me, kind, raw) = (self.my_id()?, kind.into(), raw.cast_unchecked());
        let req = set_global_account_data::v3::Request::new_raw(me, kind, raw);
        self.req(req).await.map(|_| ())
    }

    fn position_kind(&self) -> String {
        format!("im.layers.position.{}", self.device)
    }

    /// The stored offline position of this device.
    async fn position(&self) -> Result<Option<String>> {
        let position: Option<Value> = self.account_data(&self.position_kind()).await?;
        Ok(position.and_then(|v| v["next_batch"].as_str().map(str::to_string)))
    }

    async fn save_position(&self, token: &str) -> Result<()> {
        let (kind, position) = (self.position_kind(), json!({ "next_batch": token }));
        self.set_account_data(&kind, &position).await
    }

    /// `m.login.password` as `credentials` on `device` (`None`: a new one); the logged-in
    /// copy of this API.
    async fn password_login(&self, credentials: &Credentials, device: Option<&str>) -> Result<Api> {
        let id = UserIdentifier::Matrix(MatrixUserIdentifier::new(credentials.user.to_string()));
        let password = credentials.token.expose().to_string();
        let info = login::v3::LoginInfo::Password(login::v3::Password::new(id, password));
        let mut req = login::v3::Request::new(info);
        req.device_id = device.map(Into::into);
        let resp = self.req(req).await?;
        let (token, mxid) = (Some(resp.access_token), resp.user_id.to_string());
        Ok(Api {
            token,
            mxid,
            ..self.clone()
        })
    }

    /// Deletes this handle's device (and so every session on it), authenticating with the
    /// password (user-interactive auth). An unknown device is fine.
    async fn delete_device(&self, credentials: &Credentials) -> Result<()> {
        let id = UserIdentifier::Matrix(MatrixUserIdentifier::new(credentials.user.to_string()));
        let password = uiaa::Password::new(id, credentials.token.expose().to_string());
        let mut req = delete_device::v3::Request::new(self.device.as_str().into());
        req.auth = Some(uiaa::AuthData::Password(password));
        let resp = self.exchange(req, self.config().request_timeout).await?;
        match resp.status().as_u16() {
            200 | 404 => Ok(()),
            429 => Err(E::RateLimited {
                retry_after: Duration::from_secs(1),
            }),
            code => Err(E::Server {
                code: u32::from(code),
                message: "cannot end the device's other sessions".into(),
            }),
        }
    }

    /// One `/sync` from `since`, waiting up to `wait`; `limit` timeline events per room.
    async fn sync(&self, since: Option<&str>, wait: Duration, limit: u32) -> Result<SyncResponse> {
        let mut filter = FilterDefinition::default();
        filter.room.timeline.limit = Some(UInt::from(limit));
        filter.room.timeline.types = Some(vec!["m.room.message".into(), "m.room.redaction".into()]);
        filter.room.state.types = Some(vec!["m.room.canonical_alias".into()]);
        filter.room.ephemeral.types = Some(vec!["m.receipt".into()]);
        filter.presence.types = Some(Vec::new());
        let mut req = sync_events::v3::Request::new();
        req.filter = Some(sync_events::v3::Filter::FilterDefinition(filter));
        req.since = since.map(str::to_string);
        req.timeout = Some(wait);
        self.call(req, wait + self.config().request_timeout).await
    }

    /// The conversation of `room`, from what this handle knows, else from the room's
    /// alias or its two members.
    async fn conversation_of(&self, room: &RoomId) -> Result<Option<ConversationId>> {
        if let Some(c) = self.known.lock().rooms.get(room) {
            return Ok(Some(c.clone()));
        }
        let server = &self.config().server_name;
        let peer = {
            let known = self.known.lock();
            let peer = known.direct.iter().find(|(_, rooms)| rooms.contains(room));
            peer.map(|(peer, _)| localpart(peer, server))
        };
        let conversation = match peer {
            Some(peer) => Some(ConversationId::direct(&self.me, &peer)),
            None => self.probe(room).await?,
        };
        if let Some(c) = &conversation {
            self.known.lock().rooms.insert(room.into(), c.clone());
        }
        Ok(conversation)
    }

    /// Asks the server what `room` is: a group by its canonical alias, else a direct room
    /// by its two joined members.
    async fn probe(&self, room: &RoomId) -> Result<Option<ConversationId>> {
        let config = self.config();
        let kind = StateEventType::RoomCanonicalAlias;
        let req = get_state_event_for_key::v3::Request::new(room.into(), kind, String::new());
        if let Ok(r) = self.req(req).await
            && let Ok(Some(alias)) = r.into_content().get_field::<String>("alias")
            && let Some(g) = group_of_alias(&config.group_alias_prefix, &alias, &config.server_name)
        {
            return Ok(Some(ConversationId::Group(g)));
        }
        let req = joined_members::v3::Request::new(room.into());
        let members = self.req(req).await?;
        let ids: Vec<&str> = members.joined.keys().map(|u| u.as_str()).collect();
        Ok(match ids.as_slice() {
            [a, b] if *a == self.mxid || *b == self.mxid => {
                let peer = localpart(if *a == self.mxid { b } else { a }, &config.server_name);
                Some(ConversationId::direct(&self.me, &peer))
            }
            _ => None,
        })
    }

    /// The event `id` of `room` (`None`: unknown, or not visible to me).
    async fn event(&self, room: &RoomId, id: &ServerMsgId) -> Result<Option<Ev>> {
        let req = get_room_event::v3::Request::new(room.into(), Self::event_id(id)?);
        match self.req(req).await {
            Ok(r) => (r.event.deserialize_as_unchecked().map(Some))
                .map_err(|e| E::Protocol(format!("event: {e}"))),
            Err(E::Server { code: 404, .. } | E::AuthFailed(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The server's time of event `id` (this machine's clock if it cannot be read).
    async fn event_time(&self, room: &RoomId, id: &EventId) -> Timestamp {
        let event = self.event(room, &ServerMsgId::new(id.as_str())).await;
        let time = event.ok().flatten().map(|e| e.origin_server_ts);
        time.map_or_else(now, Timestamp::from_millis)
    }

    /// Message `id` of `room` as the server has it now (`None`: no message of ours).
    async fn message(
        &self,
        room: &RoomId,
        conv: &ConversationId,
        id: &ServerMsgId,
    ) -> Result<Option<Message>> {
        let ev = self.event(room, id).await?;
        Ok(ev.and_then(|ev| to_message(&ev, conv, &self.config().server_name)))
    }

    /// The sender and time of message `id`: what this handle knows, else what the server
    /// says (`None`: no message of ours).
    async fn lookup(
        &self,
        room: &RoomId,
        conv: &ConversationId,
        id: &ServerMsgId,
    ) -> Result<Option<(UserId, Timestamp)>> {
        if let Some(hit) = self.known.lock().messages.get(id.as_str()) {
            return Ok(Some(hit.clone()));
        }
        let message = self.message(room, conv, id).await?;
        Ok(message.map(|m| (m.sender, m.server_time)))
    }

    /// Joins invited rooms (adding direct ones to `m.direct`) and maps one sync answer to
    /// items, room by room in stream order; `since` is the position it was asked from
    /// (limited timelines are filled back to it). A change counts only when its author is
    /// the message's sender (the server lets a room admin redact anything); echoes of this
    /// handle's own reads are dropped. Returns the items and whether it joined a room.
    async fn digest(&self, resp: &SyncResponse, since: Option<&str>) -> Result<(Vec<Item>, bool)> {
        let server = self.config().server_name.clone();
        for ev in &resp.account_data.events {
            if ev.get_field::<String>("type").ok().flatten().as_deref() == Some("m.direct")
                && let Ok(Some(direct)) = ev.get_field::<Direct>("content")
            {
                self.known.lock().direct = direct;
            }
        }
        for (room, invite) in &resp.rooms.invite {
            let direct_from = (invite.invite_state.events.iter())
                .filter_map(|ev| ev.deserialize_as_unchecked::<Value>().ok())
                .filter(|v| v["type"] == "m.room.member" && v["state_key"] == self.mxid.as_str())
                .filter(|v| v["content"]["is_direct"] == true)
                .find_map(|v| v["sender"].as_str().map(str::to_string));
            let join = join_room_by_id::v3::Request::new(room.clone());
            self.req(join).await?;
            if let Some(peer) = direct_from {
                self.add_direct(&peer, room).await?;
            }
        }
        let mut items = Vec::new();
        for (room, data) in &resp.rooms.join {
            let Some(conv) = self.conversation_of(room).await? else {
                continue;
            };
            let mut events = match (data.timeline.limited, &data.timeline.prev_batch, since) {
                (true, Some(from), Some(to)) => self.backfill(room, from, to).await?,
                _ => Vec::new(),
            };
            for raw in &data.timeline.events {
                match raw.deserialize_as_unchecked::<Ev>() {
                    Ok(ev) => events.push(ev),
                    Err(e) => tracing::warn!(room = %room, "skipped a malformed event: {e}"),
                }
            }
            for ev in events.iter().filter(|e| e.state_key.is_none()) {
                match to_item(ev, &conv, &server) {
                    Some(Item::Msg(m, mine)) => {
                        self.known.lock().learn(&m);
                        items.push(Item::Msg(m, mine));
                    }
                    Some(Item::Change(c)) => {
                        let msg = self.lookup(room, &conv, &c.target).await?;
                        if msg.is_some_and(|(sender, _)| sender == c.by) {
                            items.push(Item::Change(c));
                        }
                    }
                    _ => {}
                }
            }
            let ephemeral = data.ephemeral.events.iter();
            let ephemeral =
                ephemeral.filter_map(|raw| raw.deserialize_as_unchecked::<Value>().ok());
            for v in ephemeral.filter(|v| v["type"] == "m.receipt") {
                for (event, reader, at) in receipts(&v["content"], &server) {
                    if reader == self.me && self.known.lock().my_reads.contains(&event) {
                        continue;
                    }
                    let up_to = ServerMsgId::new(&event);
                    let Some((_, up_to_time)) = self.lookup(room, &conv, &up_to).await? else {
                        continue;
                    };
                    let conversation = conv.clone();
                    let read = ReadReceipt {
                        conversation,
                        reader,
                        up_to,
                        up_to_time,
                        at,
                    };
                    items.push(Item::Read(read));
                }
            }
        }
        Ok((items, !resp.rooms.invite.is_empty()))
    }

    /// The events of `room` from `from` back to the position `to`, oldest first.
    async fn backfill(&self, room: &RoomId, from: &str, to: &str) -> Result<Vec<Ev>> {
        let (mut out, mut from) = (Vec::new(), from.to_string());
        for _ in 0..50 {
            let mut req = get_message_events::v3::Request::new(room.into(), Direction::Backward);
            req.from = Some(from.clone());
            req.to = Some(to.to_string());
            req.limit = UInt::from(100u32);
            let resp = self.req(req).await?;
            let events = resp.chunk.iter();
            out.extend(events.filter_map(|raw| raw.deserialize_as_unchecked::<Ev>().ok()));
            match resp.end {
                Some(end) if !resp.chunk.is_empty() => from = end,
                _ => break,
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Adds `room` to my `m.direct` for `peer` (read, modify, write).
    async fn add_direct(&self, peer: &str, room: &RoomId) -> Result<()> {
        let mut direct: Direct = self.account_data("m.direct").await?.unwrap_or_default();
        if direct
            .entry(peer.to_string())
            .or_default()
            .insert(room.into())
        {
            self.set_account_data("m.direct", &direct).await?;
        }
        self.known.lock().direct = direct;
        Ok(())
    }

    /// The room of `conv` (`None`: there is none and `create` is false); `create` makes a
    /// direct room when there is none.
    async fn room_for(&self, conv: &ConversationId, create: bool) -> Result<Option<OwnedRoomId>> {
        let config = self.config();
        let peer = match conv {
            ConversationId::Group(g) => {
                let alias = group_alias(&config.group_alias_prefix, g, &config.server_name);
                let alias = ruma::OwnedRoomAliasId::try_from(alias)
                    .map_err(|e| E::InvalidRequest(format!("bad group id {g}: {e}")))?;
                let req = get_alias::v3::Request::new(alias);
                let room = self.in_room(req, conv).await?.room_id;
                (self.known.lock().rooms).insert(room.clone(), conv.clone());
                return Ok(Some(room));
            }
            ConversationId::Direct { .. } => conv
                .peer_of(&self.me)
                .ok_or_else(|| E::InvalidRequest(format!("{} is not in {conv}", self.me)))?,
        };
        let peer_id = self.mxid_of(peer)?;
        // The lowest room id: both sides of a simultaneous creation pick the same. A room
        // mapped by its members counts too: my other device may have joined the peer's
        // invite and not yet listed it in `m.direct`.
        let pick = || {
            let known = self.known.lock();
            let listed = known.direct.get(peer_id.as_str()).and_then(|r| r.first());
            let mapped = || {
                known
                    .rooms
                    .iter()
                    .filter(|(_, c)| *c == conv)
                    .map(|(r, _)| r)
            };
            listed.or_else(|| mapped().min()).cloned()
        };
        if let Some(room) = pick() {
            return Ok(Some(room));
        }
        // My `m.direct` as stored, and rooms the peer made and invited me to (joined
        // rather than making one).
        if let Some(direct) = self.account_data("m.direct").await? {
            self.known.lock().direct = direct;
        }
        let invites = self.sync(None, Duration::ZERO, 0).await?;
        self.digest(&invites, None).await?;
        if let Some(room) = pick() {
            return Ok(Some(room));
        }
        // Joined rooms I have not mapped yet, by their members.
        for room in self
            .req(joined_rooms::v3::Request::new())
            .await?
            .joined_rooms
        {
            self.conversation_of(&room).await?;
        }
        if let Some(room) = pick() {
            return Ok(Some(room));
        } else if !create {
            return Ok(None);
        }
        let profile = self
            .req(get_profile::v3::Request::new(peer_id.clone()))
            .await;
        match profile {
            Err(E::Server { code: 404, .. }) => return Err(E::UnknownUser(peer.clone())),
            other => other?,
        };
        let mut req = create_room::v3::Request::new();
        req.is_direct = true;
        req.invite = vec![peer_id.clone()];
        req.preset = Some(create_room::v3::RoomPreset::TrustedPrivateChat);
        let room = self.req(req).await?.room_id;
        (self.known.lock().rooms).insert(room.clone(), conv.clone());
        self.add_direct(peer_id.as_str(), &room).await?;
        Ok(pick().or(Some(room)))
    }

    /// Runs the offline pass: syncs from the position until no invite is left to join; the
    /// pass (current state, my own messages left out) and the sync token it ends at.
    async fn offline_pass(&self, position: Option<String>) -> Result<(String, OfflinePass)> {
        let (mut since, mut items) = (position, Vec::new());
        let limit = self.config().sync_timeline_limit;
        for _ in 0..4 {
            let resp = self.sync(since.as_deref(), Duration::ZERO, limit).await?;
            let (got, joined) = self.digest(&resp, since.as_deref()).await?;
            items.extend(got);
            since = Some(resp.next_batch);
            if !joined {
                break;
            }
        }
        let (mut messages, mut later) = (Vec::<Message>::new(), Vec::new());
        let mut index: HashMap<ServerMsgId, usize> = HashMap::new();
        for item in items {
            match item {
                Item::Msg(m, _) if m.sender == self.me || index.contains_key(&m.server_id) => {}
                Item::Msg(m, _) => {
                    index.insert(m.server_id.clone(), messages.len());
                    messages.push(m);
                }
                Item::Change(c) => match index.get(&c.target) {
                    Some(&i) => {
                        if let Some(changed) = c.apply(&messages[i]) {
                            messages[i] = changed;
                        }
                    }
                    None => later.push(VendorEvent::MessageChanged(c)),
                },
                Item::Read(r) => later.push(VendorEvent::ReadReceipt(r)),
            }
        }
        // Stream order within a room, merged across rooms by the message's time (stable).
        let pass = OfflinePass::new(messages, later, FirstChunk::Newest);
        Ok((since.unwrap_or_default(), pass))
    }

    /// Sends the `m.room.message` event `body` to `room` as transaction `txn`.
    async fn send_event(
        &self,
        room: OwnedRoomId,
        conversation: &ConversationId,
        txn: &ClientMsgId,
        body: &Value,
    ) -> Result<OwnedEventId> {
        let raw = Raw::new(body).map_err(|e| E::Protocol(e.to_string()))?;
        let (txn, kind) = (txn.as_str().into(), "m.room.message".into());
        let req = send_message_event::v3::Request::new_raw(room, txn, kind, raw.cast_unchecked());
        Ok(self.in_room(req, conversation).await?.event_id)
    }

    /// Recalls or edits `target` as this handle's user, once the lifecycle policy allows it.
    async fn change(
        &self,
        conv: &ConversationId,
        target: &ServerMsgId,
        kind: ChangeKind,
    ) -> Result<MessageChange> {
        let unknown = || E::ChangeRefused(ChangeRefusal::UnknownMessage);
        let room = self.room_for(conv, false).await?.ok_or_else(unknown)?;
        let message = self.message(&room, conv, target).await?;
        let message = message.ok_or_else(unknown)?;
        let policy = self.config().lifecycle.sender_only();
        (policy.check(&message, &kind, &self.me, now())).map_err(E::ChangeRefused)?;
        let event_id = match &kind {
            ChangeKind::Edited(content) => {
                let txn = ClientMsgId::generate();
                let new = content_json(content, &txn, now())?;
                let mut body = new.clone();
                if let Some(b) = new["body"].as_str() {
                    body["body"] = json!(format!("* {b}"));
                }
                body["m.new_content"] = new;
                body["m.relates_to"] =
                    json!({ "rel_type": "m.replace", "event_id": target.as_str() });
                self.send_event(room.clone(), conv, &txn, &body).await?
            }
            _ => {
                let txn = ClientMsgId::generate().as_str().into();
                let req = redact_event::v3::Request::new(room.clone(), Api::event_id(target)?, txn);
                self.in_room(req, conv).await?.event_id
            }
        };
        // The server's time of the change: what every receiver derives its revision from.
        let at = self.event_time(&room, &event_id).await;
        let (target, by) = (target.clone(), self.me.clone());
        Ok(MessageChange::timed(conv, target, kind, by, at))
    }

    /// One page of `room`, newest first: `/messages` backwards from the cursor, or from the
    /// event `timestamp_to_event` finds before `to`, keeping messages in `[from, to)`. Each
    /// request asks for no more events than the page still lacks, so a full page ends with a
    /// whole chunk and the next page starts at its end token.
    async fn page(
        &self,
        room: &RoomId,
        conv: &ConversationId,
        (from, to): Range,
        mut token: Option<String>,
        limit: usize,
    ) -> Result<(Vec<Message>, Option<PageCursor>)> {
        if let (None, Some(to)) = (&token, to) {
            let ms = UInt::try_from(to.as_millis().max(1) - 1).unwrap_or_default();
            let (ts, back) = (MilliSecondsSinceUnixEpoch(ms), Direction::Backward);
            let req = get_event_by_timestamp::v1::Request::new(room.into(), ts, back);
            let found = match self.req(req).await {
                Ok(found) => found.event_id,
                // No event before `to`: the range is empty.
                Err(E::Server { code: 404, .. }) => return Ok((Vec::new(), None)),
                Err(e) => return Err(in_room(e, conv)),
            };
            let mut ctx = get_context::v3::Request::new(room.into(), found);
            ctx.limit = UInt::from(0u32);
            token = self.req(ctx).await?.end;
        }
        let (mut out, server) = (Vec::new(), &self.config().server_name);
        loop {
            let mut req = get_message_events::v3::Request::new(room.into(), Direction::Backward);
            req.from = token;
            req.limit = UInt::try_from((limit - out.len()).min(100) as u64).unwrap_or_default();
            req.filter.types = Some(vec!["m.room.message".into()]);
            let resp = self.in_room(req, conv).await?;
            let events = resp
                .chunk
                .iter()
                .filter_map(|raw| raw.deserialize_as_unchecked().ok());
            for m in events.filter_map(|ev| to_message(&ev, conv, server)) {
                if from.is_some_and(|f| m.server_time < f) {
                    return Ok((out, None));
                }
                if to.is_none_or(|t| m.server_time < t) {
                    self.known.lock().learn(&m);
                    out.push(m);
                }
            }
            token = resp.end.filter(|_| !resp.chunk.is_empty());
            match &token {
                Some(t) if out.len() == limit => {
                    return Ok((out, Some(PageCursor(format!("mx1:0:{t}")))));
                }
                Some(_) => {}
                None => return Ok((out, None)),
            }
        }
    }

    /// History across all joined rooms: each room's newest page, merged newest first. A
    /// cursor here is `mx1:{count}:{millis}`: continue before that time, skipping the
    /// `count` messages of exactly that time already returned.
    async fn history_all(
        &self,
        (from, to): Range,
        cursor: Option<(usize, String)>,
        limit: usize,
    ) -> Result<(Vec<Message>, Option<PageCursor>)> {
        let (skip_at, to) = match &cursor {
            Some((n, ms)) => {
                let bad = |_| E::InvalidRequest("not a history cursor of this vendor".into());
                let ms: i64 = ms.parse().map_err(bad)?;
                (Some((*n, ms)), Some(Timestamp::from_millis(ms + 1)))
            }
            None => (None, to),
        };
        let (mut all, want) = (Vec::new(), limit + skip_at.map_or(0, |(n, _)| n));
        let rooms = self
            .req(joined_rooms::v3::Request::new())
            .await?
            .joined_rooms;
        for room in rooms {
            if let Some(conv) = self.conversation_of(&room).await? {
                all.extend(self.page(&room, &conv, (from, to), None, want).await?.0);
            }
        }
        // Stable: messages of the same time keep their room's stream order (rooms in the
        // server's order), never an order by id.
        all.sort_by_key(|m| std::cmp::Reverse(m.server_time));
        let (n, ms) = skip_at.unwrap_or_default();
        let mut seen = 0;
        all.retain(|m| {
            let skip = m.server_time.as_millis() == ms && seen < n;
            seen += usize::from(skip);
            !skip
        });
        let more = all.len() > limit;
        all.truncate(limit);
        let next = all.last().filter(|_| more).map(|last| {
            let at = last.server_time.as_millis();
            let same = all.iter().filter(|m| m.server_time.as_millis() == at);
            let carried = if ms == at { n } else { 0 };
            PageCursor(format!("mx1:{}:{at}", same.count() + carried))
        });
        Ok((all, next))
    }
}

type SyncResponse = sync_events::v3::Response;

/// A time range `[from, to)`, each end open when `None`.
type Range = (Option<Timestamp>, Option<Timestamp>);

fn transport(e: reqwest::Error, timeout: Duration) -> E {
    if e.is_timeout() {
        E::Timeout(timeout)
    } else if e.is_connect() {
        E::Unavailable(format!("homeserver unreachable: {e}"))
    } else {
        E::ConnectionLost(format!("request failed: {e}"))
    }
}

/// Cursor of a page: `mx1:{count}:{position}`, a `/messages` or `/sync` token and how many
/// items from it were returned already (history across rooms: a time in milliseconds).
fn parse_cursor(c: &PageCursor) -> Result<(usize, String)> {
    let bad = || E::InvalidRequest(format!("not a history cursor of this vendor: {:?}", c.0));
    let rest = c.0.strip_prefix("mx1:").ok_or_else(bad)?;
    let (skip, token) = rest.split_once(':').ok_or_else(bad)?;
    Ok((skip.parse().map_err(|_| bad())?, token.to_string()))
}

impl MatrixClient {
    /// The session's API, or why there is none.
    fn api(&self) -> Result<Api> {
        let s = self.session.lock();
        let s = s.as_ref().ok_or(E::NotLoggedIn)?;
        match s.api.ended.lock().clone() {
            Some(e) => Err(e),
            None => Ok(s.api.clone()),
        }
    }

    /// Creates the group room `group` (alias from the group id) and invites `members`;
    /// invited members' clients join it at their next sync ([`MatrixClient::join_group`]
    /// joins at once). Administration for harnesses and demos, not part of [`Vendor`].
    pub async fn create_group(&self, group: &GroupId, members: &[UserId]) -> Result<()> {
        let api = self.api()?;
        let config = &self.shared.config;
        let alias = group_alias(&config.group_alias_prefix, group, &config.server_name);
        let mut req = create_room::v3::Request::new();
        // The alias's localpart: `:` is escaped in it, so the first `:` ends it.
        req.room_alias_name = alias[1..].split(':').next().map(str::to_string);
        req.name = Some(group.to_string());
        req.preset = Some(create_room::v3::RoomPreset::PrivateChat);
        let others = members.iter().filter(|m| **m != api.me);
        req.invite = others.map(|m| api.mxid_of(m)).collect::<Result<_>>()?;
        let room = api.req(req).await?.room_id;
        let group = ConversationId::Group(group.clone());
        self.known.lock().rooms.insert(room, group);
        Ok(())
    }

    /// Joins the group room `group` (after an invite).
    pub async fn join_group(&self, group: &GroupId) -> Result<()> {
        let api = self.api()?;
        let conversation = ConversationId::Group(group.clone());
        let room = api.room_for(&conversation, false).await?;
        let room = room.ok_or(E::NotMember(conversation.clone()))?;
        let req = join_room_by_id::v3::Request::new(room);
        api.in_room(req, &conversation).await.map(|_| ())
    }

    /// Makes `token` the offline position: every batch of the pass it ends is acknowledged.
    async fn commit(&self, api: &Api, token: Option<String>) -> Result<()> {
        let Some(token) = token else { return Ok(()) };
        if let Some(s) = self.session.lock().as_mut() {
            s.position = Some(token.clone());
        }
        api.save_position(&token).await
    }
}

impl Api {
    /// Asks every `session_check` whether the session still stands; ends it with an event
    /// when the server revoked the token (another login of the shared device).
    async fn watch(self) {
        loop {
            tokio::time::sleep(self.config().session_check).await;
            if self.ended.lock().is_some() {
                return;
            }
            let answer = self.req(whoami::v3::Request::new()).await;
            if let Err(e @ (E::Kicked(_) | E::TokenExpired)) = answer {
                return self.end(e);
            }
        }
    }

    /// Records why the session ended and tells the client, once.
    fn end(&self, e: E) {
        let (event, e) = match e {
            E::TokenExpired => (VendorEvent::TokenExpired, e),
            E::Kicked(r) => (VendorEvent::Kicked(r.clone()), E::Kicked(r)),
            other => {
                let reason = other.to_string();
                let event = VendorEvent::ConnectionLost {
                    reason: reason.clone(),
                };
                (event, E::ConnectionLost(reason))
            }
        };
        let mut ended = self.ended.lock();
        if ended.is_none() {
            *ended = Some(e);
            let _ = self.events.send(event);
        }
    }

    /// The long-poll loop of one session: pushes what each sync brings (my own messages
    /// only from my other devices), moves the position past what it delivered.
    async fn live(self, mut since: String) {
        let (wait, limit) = (
            self.config().sync_timeout,
            self.config().sync_timeline_limit,
        );
        loop {
            let step = async {
                let resp = self.sync(Some(&since), wait, limit).await?;
                let (items, _) = self.digest(&resp, Some(&since)).await?;
                Ok::<_, E>((items, resp.next_batch))
            };
            let (items, next) = match step.await {
                Ok(r) => r,
                Err(e) => return self.end(e),
            };
            let mut delivered = false;
            for item in items {
                let event = match item {
                    Item::Msg(_, true) => continue,
                    Item::Msg(m, false) => VendorEvent::MessagePushed(m),
                    Item::Change(c) => VendorEvent::MessageChanged(c),
                    Item::Read(r) => VendorEvent::ReadReceipt(r),
                };
                delivered = true;
                if self.events.send(event).is_err() {
                    return;
                }
            }
            since = next;
            if delivered {
                // Delivered on the long connection: not offline any more (best effort).
                let _ = self.save_position(&since).await;
            }
        }
    }
}

#[async_trait]
impl Vendor for MatrixClient {
    fn name(&self) -> &str {
        "matrix"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    fn take_events(&self) -> Option<EventStream> {
        let rx = self.events_rx.lock().take()?;
        Some(Box::pin(UnboundedReceiverStream::new(rx)))
    }

    async fn login(&self, credentials: &Credentials) -> Result<Session> {
        drop(self.session.lock().take());
        let server = &self.shared.config.server_name;
        let api = Api {
            shared: self.shared.clone(),
            known: self.known.clone(),
            token: None,
            me: credentials.user.clone(),
            mxid: format!("@{}:{server}", credentials.user),
            device: self.device.clone(),
            events: self.events_tx.clone(),
            ended: Arc::new(Mutex::new(None)),
        };
        let shared_device = matches!(self.shared.config.devices, DevicePolicy::Shared(_));
        if shared_device {
            // One device per user: a new login ends the device's other sessions, as a fixed
            // XMPP resource does (a throwaway session deletes the device; its transaction
            // ids stay with the device id for the server's 24 h).
            let tmp = api.password_login(credentials, None).await?;
            let ended = tmp.delete_device(credentials).await;
            let _ = tmp.req(logout::v3::Request::new()).await;
            ended?;
        }
        let api = api.password_login(credentials, Some(&self.device)).await?;
        let position = api.position().await?;
        if let Some(direct) = api.account_data("m.direct").await? {
            self.known.lock().direct = direct;
        }
        // Nothing tells a Matrix client that its token was revoked until it asks: with a
        // shared device a watcher asks, so a kick is an event even before `go_online`.
        let watch = shared_device.then(|| tokio::spawn(api.clone().watch()));
        *self.session.lock() = Some(Sess {
            api,
            position,
            pass: None,
            live: None,
            watch,
        });
        Ok(Session {
            user: credentials.user.clone(),
            token_expires_at: None,
            session_id: format!("{}/{}", self.device, ClientMsgId::generate()),
            server_time: None,
        })
    }

    async fn logout(&self) -> Result<()> {
        let session = self.session.lock().take();
        if let Some(s) = session {
            let api = s.api.clone();
            drop(s);
            // The access token is revoked; the device (and its transaction ids) stays.
            let _ = api.req(logout::v3::Request::new()).await;
        }
        Ok(())
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<SendReceipt> {
        let (api, client_id) = (self.api()?, &message.client_id);
        self.shared.capabilities.check_size(&message.content)?;
        let body = content_json(&message.content, client_id, message.client_time)?;
        if let Some(r) = self.known.lock().sent.get(client_id) {
            return Ok(r.as_duplicate());
        }
        let conversation = &message.conversation;
        let room = api.room_for(conversation, true).await?;
        let room = room.ok_or(E::NotMember(conversation.clone()))?;
        let attempted = self.known.lock().attempted.insert(client_id.clone());
        let sent = api.send_event(room.clone(), conversation, client_id, &body);
        let event_id = sent.await?;
        let server_id = ServerMsgId::new(event_id.as_str());
        // The stored event's time (the ordering clock), not this machine's.
        let server_time = api.event_time(&room, &event_id).await;
        let receipt = SendReceipt {
            server_id: server_id.clone(),
            seq: None,
            server_time,
            duplicate: !attempted,
        };
        let mut known = self.known.lock();
        (known.sent).insert(client_id.clone(), receipt.clone());
        let id = server_id.to_string();
        known.messages.insert(id, (api.me.clone(), server_time));
        Ok(receipt)
    }

    async fn pull_offline(&self, max: u32) -> Result<OfflineBatch> {
        let api = self.api()?;
        let position = {
            let s = self.session.lock();
            let s = s.as_ref().ok_or(E::NotLoggedIn)?;
            s.pass.is_none().then(|| s.position.clone())
        };
        if let Some(position) = position {
            let pass = api.offline_pass(position).await?;
            if let Some(s) = self.session.lock().as_mut() {
                s.pass.get_or_insert(pass);
            }
        }
        let (batch, settled) = {
            let mut s = self.session.lock();
            let pass = s.as_mut().and_then(|s| s.pass.as_mut());
            let (token, pass) = pass.ok_or(E::NotLoggedIn)?;
            (pass.batch(max), pass.settle().then(|| token.clone()))
        };
        self.commit(&api, settled).await?;
        Ok(batch)
    }

    async fn ack_offline(&self, ack: &OfflineAck) -> Result<()> {
        let api = self.api()?;
        let settled = {
            let mut s = self.session.lock();
            let pass = s.as_mut().and_then(|s| s.pass.as_mut());
            let token = pass.as_ref().map(|(token, _)| token.clone());
            let settled = offline::ack(pass.map(|(_, p)| p), ack)?;
            token.filter(|_| settled)
        };
        self.commit(&api, settled).await
    }

    async fn go_online(&self) -> Result<()> {
        let api = self.api()?;
        let (start, later) = {
            let mut s = self.session.lock();
            let s = s.as_mut().ok_or(E::NotLoggedIn)?;
            if s.live.is_some() {
                return Ok(());
            }
            match s.pass.as_mut() {
                Some((token, p)) => (Some(token.clone()), std::mem::take(&mut p.later)),
                None => (s.position.clone(), Vec::new()),
            }
        };
        let start = match start {
            Some(s) => s,
            None => api.sync(None, Duration::ZERO, 0).await?.next_batch,
        };
        for event in later {
            let _ = self.events_tx.send(event);
        }
        let task = tokio::spawn(api.live(start));
        match self.session.lock().as_mut() {
            Some(s) => s.live = Some(task),
            None => task.abort(),
        }
        Ok(())
    }

    async fn pull_history(&self, query: &HistoryQuery) -> Result<HistoryPage> {
        let api = self.api()?;
        if query.limit == 0 {
            return Err(E::InvalidRequest("history page of 0 messages".into()));
        }
        let range = query.time_bounds()?;
        let cursor = query.cursor.as_ref().map(parse_cursor).transpose()?;
        let limit = query.limit.min(self.shared.capabilities.history_page_max) as usize;
        let (messages, next) = match &query.scope {
            HistoryScope::All => api.history_all(range, cursor, limit).await?,
            HistoryScope::Conversation(c) => match api.room_for(c, false).await? {
                Some(room) => {
                    let token = cursor.map(|(_, token)| token);
                    api.page(&room, c, range, token, limit).await?
                }
                None => (Vec::new(), None),
            },
        };
        Ok(HistoryPage {
            messages,
            next,
            horizon: None,
        })
    }

    async fn ping(&self) -> Result<Duration> {
        let api = self.api()?;
        let started = Instant::now();
        api.req(whoami::v3::Request::new()).await?;
        Ok(started.elapsed())
    }

    async fn mark_read(&self, conversation: &ConversationId, up_to: &ServerMsgId) -> Result<()> {
        let api = self.api()?;
        let room = api.room_for(conversation, false).await?;
        let room = room.ok_or(E::NotMember(conversation.clone()))?;
        self.known.lock().my_reads.insert(up_to.to_string());
        let event = OwnedEventId::try_from(up_to.as_str())
            .map_err(|e| E::InvalidRequest(format!("not an event id: {e}")))?;
        let kind = create_receipt::v3::ReceiptType::Read;
        let req = create_receipt::v3::Request::new(room, kind, event);
        api.in_room(req, conversation).await.map(|_| ())
    }

    fn lifecycle(&self) -> LifecyclePolicy {
        self.shared.config.lifecycle.sender_only()
    }

    async fn recall(&self, conv: &ConversationId, id: &ServerMsgId) -> Result<MessageChange> {
        let api = self.api()?;
        api.change(conv, id, ChangeKind::Recalled).await
    }

    /// The feed is the `/sync` stream from the cursor's token: its redactions, edits and
    /// read receipts (`mx1:{skip}:{token}` pages one answer by `max`).
    async fn pull_changes(&self, since: Option<ChangeCursor>, max: u32) -> Result<ChangeBatch> {
        let api = self.api()?;
        // No cursor: the feed starts at the stream's current end.
        let (skip, token) = match since {
            Some(c) => parse_cursor(&PageCursor(String::from_utf8_lossy(&c.0).into()))?,
            None => (0, api.sync(None, Duration::ZERO, 0).await?.next_batch),
        };
        let limit = self.shared.config.sync_timeline_limit;
        let resp = api.sync(Some(&token), Duration::ZERO, limit).await?;
        let (mut feed, _) = api.digest(&resp, Some(&token)).await?;
        feed.retain(|i| !matches!(i, Item::Msg(..)));
        let rest = feed.len().saturating_sub(skip);
        let take = (max.max(1) as usize).min(rest);
        let mut batch = ChangeBatch::default();
        for item in feed.into_iter().skip(skip).take(take) {
            match item {
                Item::Change(c) => batch.changes.push(c),
                Item::Read(r) => batch.receipts.push(r),
                Item::Msg(..) => {}
            }
        }
        batch.left = u32::try_from(rest - take).unwrap_or(u32::MAX);
        let next = match rest - take {
            0 => format!("mx1:0:{}", resp.next_batch),
            _ => format!("mx1:{}:{token}", skip + take),
        };
        batch.next = ChangeCursor(next.into_bytes());
        Ok(batch)
    }

    async fn edit(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
        content: &Content,
    ) -> Result<MessageChange> {
        self.shared.capabilities.check_size(content)?;
        let kind = ChangeKind::Edited(content.clone());
        self.api()?.change(conversation, target, kind).await
    }
}

#[cfg(test)]
mod tests;
