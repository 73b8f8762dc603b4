//! The archive's HTTP service (axum): signed vendor callbacks in, history out. Its routes,
//! query, bodies and statuses are the contract in [`im_service::archive_api`] (shared with
//! the client, `im-arch`'s `ArchiveHistory`): `POST /v1/callbacks/{vendor}`,
//! `GET /v1/history`, `GET /v1/conversations`, `GET /healthz`, `GET /readyz`.
//!
//! A callback is acknowledged (200) only after the store made it durable, so a crash
//! before the answer makes the vendor retry, and the retry is recognised as a duplicate.
//! `message.changed` callbacks go to [`ArchiveStore::change`]: applied (`stored`), kept
//! for a message still to come (`pending`) or a `duplicate`; history then shows each message
//! in its current state (the rules: `store.rs`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use im_service::archive_api::{
    CALLBACK_ROUTE, CONVERSATIONS_PATH, DEFAULT_MAX_PAGE, DEFAULT_PAGE, HEALTH_PATH, HISTORY_PATH,
    HistoryParams, READY_PATH,
};
pub use im_service::archive_api::{CallbackOutcome, ErrorBody};
use im_service::listener::BoundedListener;
use im_service::webhook::{self, Callback, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use im_service::{Clock, ConversationId, GroupId, HistoryPage, MessageChange, SystemClock, UserId};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::ArchiveError;
use crate::store::{ArchiveStore, ChangeStored, PageQuery, Position, Stored};

/// How the archive runs. `Debug` never prints secrets or tokens.
#[derive(Clone)]
pub struct ArchiveConfig {
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Callback secret per vendor name (the `{vendor}` of the callback route).
    pub vendors: HashMap<String, Vec<u8>>,
    /// Bearer token → the user it authenticates (issued by the company backend).
    pub tokens: HashMap<String, UserId>,
    /// Group rosters: members may read a group's history before they ever wrote in it.
    pub groups: HashMap<GroupId, HashSet<UserId>>,
    /// Callbacks signed further than this from the archive's clock are refused (replay).
    pub replay_window: Duration,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Connections held open at once; past it a new one is closed as soon as it is
    /// accepted, and the refusal logged (each open connection costs a task and buffers).
    pub max_connections: usize,
    /// Largest page a client may ask for (400 above).
    pub max_page: u32,
    /// The clock replay windows are judged by.
    pub clock: Arc<dyn Clock>,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            vendors: HashMap::new(),
            tokens: HashMap::new(),
            groups: HashMap::new(),
            replay_window: Duration::from_secs(300),
            max_body_bytes: 64 * 1024,
            max_connections: 1024,
            max_page: DEFAULT_MAX_PAGE,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for ArchiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut vendors: Vec<&String> = self.vendors.keys().collect();
        vendors.sort();
        f.debug_struct("ArchiveConfig")
            .field("listen", &self.listen)
            .field("vendors", &vendors)
            .field("tokens", &self.tokens.len())
            .field("groups", &self.groups.len())
            .field("replay_window", &self.replay_window)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_page", &self.max_page)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// What the request handlers share.
struct Shared {
    store: Arc<dyn ArchiveStore>,
    vendors: HashMap<String, Vec<u8>>,
    /// SHA-256 of each token → user: tokens themselves are not kept, and a lookup compares
    /// digests, not the secret strings.
    tokens: HashMap<[u8; 32], UserId>,
    groups: HashMap<GroupId, HashSet<UserId>>,
    replay_window: Duration,
    max_page: u32,
    clock: Arc<dyn Clock>,
    ready: AtomicBool,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What a 503 for a store that is away tells the caller to wait before retrying, in seconds.
const RETRY_AFTER_SECS: &str = "1";

impl IntoResponse for ArchiveError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            axum::Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if matches!(self, ArchiveError::Unavailable(_)) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

impl Shared {
    fn user(&self, headers: &HeaderMap) -> Result<UserId, ArchiveError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ArchiveError::Unauthorized)?;
        self.tokens
            .get(&digest(token))
            .cloned()
            .ok_or(ArchiveError::Unauthorized)
    }

    async fn may_read(&self, user: &UserId, c: &ConversationId) -> Result<bool, ArchiveError> {
        Ok(match c {
            ConversationId::Direct { .. } => c.is_direct_member(user),
            ConversationId::Group(g) => {
                self.groups.get(g).is_some_and(|m| m.contains(user))
                    || self.store.is_known_member(user, c).await?
            }
        })
    }
}

async fn callback(
    State(shared): State<Arc<Shared>>,
    Path(vendor): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<CallbackOutcome>, ArchiveError> {
    let secret = shared
        .vendors
        .get(&vendor)
        .ok_or_else(|| ArchiveError::UnknownVendor(vendor.clone()))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = webhook::unix_seconds(shared.clock.now());
    let payload = match webhook::verify_callback(
        secret,
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        now,
        shared.replay_window,
    )
    .inspect_err(|e| tracing::warn!(%vendor, error = %e, "callback refused"))?
    {
        Callback::Message(payload) => payload,
        Callback::Changed(payload) => return changed(&shared, &vendor, &payload.change).await,
    };
    if payload.event != webhook::MESSAGE_STORED {
        tracing::debug!(%vendor, event = %payload.event, "callback event ignored");
        return Ok(axum::Json(CallbackOutcome::Ignored));
    }
    let m = &payload.message;
    tracing::Span::current().record("conversation", tracing::field::display(&m.conversation));
    let stored = shared.store.store(&vendor, std::slice::from_ref(m)).await?;
    // Durable before the acknowledgement: a crash after this line is answered by the
    // vendor's retry, which is then a duplicate.
    shared.store.flush().await?;
    Ok(axum::Json(match stored.first() {
        Some(Stored::New) => CallbackOutcome::Stored,
        _ => CallbackOutcome::Duplicate,
    }))
}

/// A verified `message.changed` callback: recorded and applied (see `store.rs`), durable
/// before the answer like a message.
async fn changed(
    shared: &Shared,
    vendor: &str,
    change: &MessageChange,
) -> Result<axum::Json<CallbackOutcome>, ArchiveError> {
    let span = tracing::Span::current();
    span.record(
        "conversation",
        tracing::field::display(&change.conversation),
    );
    let stored = shared.store.change(vendor, change).await?;
    shared.store.flush().await?;
    tracing::debug!(
        %vendor,
        target_id = %change.target,
        kind = change.kind.as_str(),
        revision = change.revision,
        outcome = ?stored,
        "change recorded"
    );
    Ok(axum::Json(match stored {
        ChangeStored::Applied => CallbackOutcome::Stored,
        ChangeStored::Pending => CallbackOutcome::Pending,
        ChangeStored::Duplicate => CallbackOutcome::Duplicate,
    }))
}

async fn history(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(p): Query<HistoryParams>,
) -> Result<axum::Json<HistoryPage>, ArchiveError> {
    let user = shared.user(&headers)?;
    tracing::Span::current().record("user", tracing::field::display(&user));
    let conversation: ConversationId = p
        .conversation()
        .map_err(|e: im_service::ParseConversationError| ArchiveError::BadRequest(e.to_string()))?;
    // Without a limit: the default page, or the largest allowed if that is smaller.
    let limit = p.limit.unwrap_or(DEFAULT_PAGE.min(shared.max_page));
    if limit == 0 || limit > shared.max_page {
        return Err(ArchiveError::BadRequest(format!(
            "limit {limit} outside 1..={}",
            shared.max_page
        )));
    }
    let before = p.page_cursor().map(|c| Position::parse(&c)).transpose()?;
    if !shared.store.knows(&conversation).await? {
        return Err(ArchiveError::UnknownConversation(conversation.to_string()));
    }
    if !shared.may_read(&user, &conversation).await? {
        return Err(ArchiveError::Forbidden {
            user: user.to_string(),
            conversation: conversation.to_string(),
        });
    }
    let (from, to) = p.time_range();
    let page = shared
        .store
        .page(&PageQuery {
            conversation,
            from,
            to,
            before,
            limit: limit as usize,
        })
        .await?;
    Ok(axum::Json(HistoryPage {
        messages: page.messages,
        next: page.next.map(|p| p.cursor()),
        horizon: None,
    }))
}

async fn conversations(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<axum::Json<Vec<String>>, ArchiveError> {
    let user = shared.user(&headers)?;
    let mut all: Vec<ConversationId> = shared.store.conversations_of(&user).await?;
    for (g, members) in &shared.groups {
        let c = ConversationId::Group(g.clone());
        if members.contains(&user) && !all.contains(&c) && shared.store.knows(&c).await? {
            all.push(c);
        }
    }
    all.sort();
    Ok(axum::Json(all.iter().map(|c| c.to_string()).collect()))
}

/// Ready while serving and while the store can serve (a database that is away makes the
/// archive not ready until it is back; it becomes ready again by itself).
async fn ready(State(shared): State<Arc<Shared>>) -> StatusCode {
    if !shared.ready.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match shared.store.ready().await {
        Ok(()) => StatusCode::OK,
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the store cannot serve");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// A span per request with the fields an operator filters on; the status is recorded when
/// the answer is ready. Bodies and tokens are never recorded.
async fn traced(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "archive_request",
        method = %request.method(),
        path = %request.uri().path(),
        status = tracing::field::Empty,
        user = tracing::field::Empty,
        conversation = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    span.in_scope(|| {
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "answered"
        );
    });
    response
}

/// The running archive service. Dropping it stops the server (in-flight requests finish).
pub struct ArchiveServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ArchiveServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ArchiveServer {
    /// Binds `config.listen` and serves `store`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), im_archive::ArchiveError> {
    /// use std::sync::Arc;
    /// use im_archive::{ArchiveConfig, ArchiveServer, MemoryArchive};
    /// let mut config = ArchiveConfig::default();
    /// config.vendors.insert("reference".into(), b"callback secret".to_vec());
    /// let server = ArchiveServer::start(config, Arc::new(MemoryArchive::new())).await?;
    /// println!("callbacks go to http://{}/v1/callbacks/reference", server.addr());
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn start(
        config: ArchiveConfig,
        store: Arc<dyn ArchiveStore>,
    ) -> Result<ArchiveServer, ArchiveError> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let listener = BoundedListener::new(listener, config.max_connections);
        let shared = Arc::new(Shared {
            store,
            vendors: config.vendors,
            tokens: config
                .tokens
                .iter()
                .map(|(t, u)| (digest(t), u.clone()))
                .collect(),
            groups: config.groups,
            replay_window: config.replay_window,
            max_page: config.max_page,
            clock: config.clock,
            ready: AtomicBool::new(true),
        });
        let app = Router::new()
            .route(CALLBACK_ROUTE, post(callback))
            .route(HISTORY_PATH, get(history))
            .route(CONVERSATIONS_PATH, get(conversations))
            .route(HEALTH_PATH, get(|| async { "ok" }))
            .route(READY_PATH, get(ready))
            .layer(DefaultBodyLimit::max(config.max_body_bytes))
            .layer(axum::middleware::from_fn(traced))
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "archive server stopped");
            }
        });
        tracing::info!(%addr, "archive serving");
        Ok(ArchiveServer {
            addr,
            shared,
            stop: Some(stop),
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL clients and vendors use (`http://addr`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops: readiness turns 503, no new connections, requests in flight finish, the store
    /// is flushed.
    pub async fn shutdown(mut self) {
        self.shared.ready.store(false, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        if let Err(e) = self.shared.store.flush().await {
            tracing::warn!(error = %e, "final flush failed");
        }
    }
}

impl Drop for ArchiveServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
