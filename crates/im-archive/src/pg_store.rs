//! [`PgArchive`]: the archive's history on PostgreSQL (feature `postgres`), so that several
//! archive processes can serve one company's history from a database it already runs.
//!
//! Same rules as the other stores (`store.rs`, one conformance suite): each message once per
//! (vendor, vendor id), each change once per revision, history in its current state, newest
//! first. What is particular to a shared database:
//!
//! * **Idempotence across replicas** is the primary key of `messages` (vendor, vendor id): a
//!   callback delivered to two replicas inserts once, the other insert does nothing and is
//!   answered `Duplicate`.
//! * **A message and its changes meet in one place.** A change may reach one replica while
//!   its message reaches another. Both take a transaction-scoped advisory lock on (vendor,
//!   vendor id) first, so one of them commits before the other reads: the message sees the
//!   change and applies it, or the change sees the message. Without the lock each could
//!   miss the other and the change would never show. The locks of one call are taken in
//!   sorted order, so two replicas storing overlapping batches cannot deadlock.
//! * **Durable on commit**: every write is one transaction, committed before the call returns
//!   (PostgreSQL's `synchronous_commit`), so [`ArchiveStore::flush`] has nothing left to do.
//! * **The database away** (restarting, unreachable, every pooled connection busy for longer
//!   than [`PgConfig::wait`]) is [`ArchiveError::Unavailable`]: the server answers 503 with
//!   `Retry-After`, never hangs, and the next call tries a fresh connection.
//! * **Months are partitions.** `messages` is partitioned by month of server time (schema
//!   version 2), so retention drops a whole month at once
//!   ([`PgArchive::drop_months_before`]) instead of deleting rows; the uniqueness of
//!   (vendor, vendor id) lives in `message_ids` (a partitioned table's unique key must hold
//!   its partition key). A month's partition is created before its first message is
//!   stored; times before 1970 or past year 9999 go to a default partition.
//! * **Callbacks arriving together share a commit.** A callback's message joins the others
//!   queued at that moment in one call of `im_archive_store_many` (migration 3: one round
//!   trip, one implicit transaction); each caller is answered once that call committed.
//! * **Statements are prepared once per connection** (deadpool's statement cache): a call
//!   costs one round trip per statement, not a prepare and an execute.
//! * **Schema** migrations are SQL files in `crates/im-archive/migrations/`, applied in order
//!   at start under an advisory lock (replicas starting together apply them once); a database
//!   whose schema is newer than this build knows is refused with a clear error.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Config, ManagerConfig, Pool, PoolConfig, PoolError, RecyclingMethod, Runtime, Timeouts,
};
use im_service::{ConversationId, Message, MessageChange, ServerMsgId, UserId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use crate::error::ArchiveError;
use crate::store::{
    ArchiveStore, ChangeStored, PageQuery, Stored, StoredPage, apply_log, finish_page, members_of,
    outcome, wrong_conversation,
};

/// The schema migrations, in order; the database records how many it has applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_month_partitions.sql"),
    include_str!("../migrations/0003_store_function.sql"),
];

/// The SQLSTATE `im_archive_store_many` raises when changes came before a message.
const CHANGES_FIRST: &str = "IMA01";

/// The advisory lock key that serialises migrations between replicas starting together.
const MIGRATION_LOCK: i64 = 0x1a_7c_41_7e;

/// How [`PgArchive`] connects.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// `postgres://user@host:port/database` (tokio-postgres's URL or key=value form).
    pub url: String,
    /// Most connections this process keeps open.
    pub max_connections: usize,
    /// How long a call waits for a pooled connection (or for a new one to connect) before it
    /// is answered [`ArchiveError::Unavailable`]: a database that is away, or a pool that is
    /// exhausted, costs a caller this long at most, never a hang.
    pub wait: Duration,
}

impl PgConfig {
    /// `url` with 16 connections and a 2 s wait.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            wait: Duration::from_secs(2),
        }
    }
}

/// The archive's store on PostgreSQL. Cheap to share: a pool of connections.
pub struct PgArchive {
    pool: Pool,
    /// Single-message stores (callbacks) waiting to be merged into one call of
    /// `im_archive_store_many` (bounded: a full queue makes callers wait).
    queue: tokio::sync::mpsc::Sender<Queued>,
    /// The task that merges them; aborted (with the batches it runs) when the store drops.
    batcher: tokio::task::JoinHandle<()>,
    /// Month partitions known to exist (their first millisecond): created at most once
    /// per process, never on the write path once known.
    months: parking_lot::Mutex<std::collections::HashSet<i64>>,
}

/// One month's partition: its bounds in milliseconds (`lo` inclusive, `hi` exclusive) and
/// its table's name (`messages_2026m11`, as migration 2 names them).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Month {
    lo: i64,
    hi: i64,
    name: String,
}

/// The first millisecond after the last month that gets a partition (year 10000).
const LAST_PARTITIONED_MS: i64 = 253_402_300_800_000;

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of the first of `month` (1–12) of `year`, proleptic Gregorian
/// (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month) of day `days` since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// The month partition of a time (UTC), or `None` for the default partition.
fn month_of(ms: i64) -> Option<Month> {
    if !(0..LAST_PARTITIONED_MS).contains(&ms) {
        return None;
    }
    let (year, month) = civil_from_days(ms.div_euclid(DAY_MS));
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    Some(Month {
        lo: days_from_civil(year, month) * DAY_MS,
        hi: days_from_civil(next_year, next_month) * DAY_MS,
        name: format!("messages_{year:04}m{month:02}"),
    })
}

impl std::fmt::Debug for PgArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("PgArchive")
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// The schema version this build knows: the number of SQL migrations in
/// `crates/im-archive/migrations/`.
pub const PG_SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

impl PgArchive {
    /// Connects and brings the schema up to date (refusing a newer one).
    pub async fn connect(config: &PgConfig) -> Result<Self, ArchiveError> {
        let mut cfg = Config::new();
        cfg.url = Some(config.url.clone());
        cfg.manager = Some(ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        });
        cfg.pool = Some(PoolConfig {
            max_size: config.max_connections.max(1),
            timeouts: Timeouts {
                wait: Some(config.wait),
                create: Some(config.wait),
                recycle: Some(config.wait),
            },
            ..PoolConfig::default()
        });
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1), NoTls)
            .map_err(|e| ArchiveError::Storage(format!("postgres pool: {e}")))?;
        let (queue, queued) = tokio::sync::mpsc::channel(QUEUE);
        let batcher = tokio::spawn(batch_loop(pool.clone(), queued));
        let archive = Self {
            pool,
            queue,
            batcher,
            months: parking_lot::Mutex::default(),
        };
        archive.migrate().await?;
        Ok(archive)
    }

    /// Creates the month partitions `messages` need that are not known to exist yet (under
    /// the migration lock: replicas creating the same month do it once).
    async fn ensure_months(&self, messages: &[Message]) -> Result<(), ArchiveError> {
        let missing: Vec<Month> = {
            let known = self.months.lock();
            let mut missing: Vec<Month> = messages
                .iter()
                .filter_map(|m| month_of(m.server_time.as_millis()))
                .filter(|month| !known.contains(&month.lo))
                .collect();
            missing.sort_by_key(|m| m.lo);
            missing.dedup();
            missing
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        for month in &missing {
            // Names and bounds are this module's own (digits), never a caller's text.
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF messages FOR VALUES FROM ({}) TO ({})",
                month.name, month.lo, month.hi
            ))
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        self.months.lock().extend(missing.iter().map(|m| m.lo));
        Ok(())
    }

    /// Retention: drops every month partition that ends at or before `before` (whole
    /// months, each one `DROP TABLE`, however many messages it holds), and their messages'
    /// ids. Returns the partitions dropped. Changes of dropped messages stay (a few rows,
    /// and a change may still be waiting for a message that is not archived).
    pub async fn drop_months_before(
        &self,
        before: im_service::Timestamp,
    ) -> Result<Vec<String>, ArchiveError> {
        let cut = before.as_millis();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        let rows = tx
            .query(
                "SELECT c.relname::text FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid \
                 JOIN pg_class p ON p.oid = i.inhparent \
                 WHERE p.relname = 'messages' AND c.relname ~ '^messages_[0-9]{4}m[0-9]{2}$'",
                &[],
            )
            .await
            .map_err(db)?;
        let mut dropped = Vec::new();
        for row in rows {
            let name: String = row.get(0);
            let Some(month) = month_name_bounds(&name) else {
                continue;
            };
            if month.hi <= cut {
                tx.batch_execute(&format!("DROP TABLE {}", month.name))
                    .await
                    .map_err(db)?;
                tx.execute(
                    "DELETE FROM message_ids WHERE server_time >= $1 AND server_time < $2",
                    &[&month.lo, &month.hi],
                )
                .await
                .map_err(db)?;
                dropped.push(month.name);
            }
        }
        tx.commit().await.map_err(db)?;
        let mut known = self.months.lock();
        for name in &dropped {
            if let Some(month) = month_name_bounds(name) {
                known.remove(&month.lo);
            }
        }
        dropped.sort();
        Ok(dropped)
    }

    /// Whether the database answers now (for `/readyz`).
    pub async fn ping(&self) -> Result<(), ArchiveError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(db)?;
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, ArchiveError> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn migrate(&self) -> Result<(), ArchiveError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS im_archive_schema (version integer NOT NULL)")
            .await
            .map_err(db)?;
        let applied: Option<i32> = tx
            .query_one("SELECT max(version) FROM im_archive_schema", &[])
            .await
            .map_err(db)?
            .get(0);
        let applied = applied.unwrap_or(0);
        if applied > PG_SCHEMA_VERSION {
            return Err(ArchiveError::Storage(format!(
                "the database has archive schema version {applied}; this im-archive knows up \
                 to {PG_SCHEMA_VERSION}: upgrade im-archive (nothing was changed)"
            )));
        }
        for (n, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
            tx.batch_execute(sql).await.map_err(db)?;
            let version = n as i32 + 1;
            tx.execute(
                "INSERT INTO im_archive_schema (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(db)?;
            tracing::info!(version, "archive schema migrated");
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }
}

impl Drop for PgArchive {
    fn drop(&mut self) {
        self.batcher.abort();
    }
}

/// Most single-message stores waiting for the batcher.
const QUEUE: usize = 4096;

/// Most messages in one call of `im_archive_store_many`.
const BATCH: usize = 64;

/// Most calls of `im_archive_store_many` one store runs at once (each on its own pooled
/// connection; what arrives meanwhile waits and goes in the next call).
const CONCURRENT_BATCHES: usize = 2;

/// One single-message store waiting for the batcher, and where its answer goes (`None`:
/// changes came before a message of its call; the caller takes the full path).
struct Queued {
    vendor: String,
    message: Message,
    answer: tokio::sync::oneshot::Sender<Result<Option<Stored>, ArchiveError>>,
}

/// Merges the single-message stores that arrive together into calls of
/// `im_archive_store_many` (group commit: one round trip and one commit for all of them),
/// at most [`CONCURRENT_BATCHES`] at once. Ends when the store drops its queue.
async fn batch_loop(pool: Pool, mut queued: tokio::sync::mpsc::Receiver<Queued>) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            first = queued.recv(), if running.len() < CONCURRENT_BATCHES => {
                let Some(first) = first else { break };
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match queued.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                running.spawn(run_batch(pool.clone(), batch));
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    while running.join_next().await.is_some() {}
}

/// One merged call; every caller gets the answer for its message (or the call's error).
async fn run_batch(pool: Pool, batch: Vec<Queued>) {
    let outcome = async {
        let client = pool.get().await.map_err(pool_error)?;
        let items: Vec<(&str, &Message)> = batch
            .iter()
            .map(|q| (q.vendor.as_str(), &q.message))
            .collect();
        store_many(&client, &items).await
    }
    .await;
    match outcome {
        Ok(Some(stored)) => {
            for (q, s) in batch.into_iter().zip(stored) {
                let _ = q.answer.send(Ok(Some(s)));
            }
        }
        Ok(None) => {
            for q in batch {
                let _ = q.answer.send(Ok(None));
            }
        }
        Err(e) => {
            for q in batch {
                let _ = q.answer.send(Err(same_error(&e)));
            }
        }
    }
}

/// `e` again, for each caller of a failed merged call (the error is not `Clone`): the same
/// kind where it matters (`Unavailable` stays retryable), the same text.
fn same_error(e: &ArchiveError) -> ArchiveError {
    match e {
        ArchiveError::Unavailable(why) => ArchiveError::Unavailable(why.clone()),
        other => ArchiveError::Storage(other.to_string()),
    }
}

/// Stores `items` (vendor, message) with one call of `im_archive_store_many`, atomically;
/// `None` when changes came before one of them (the call rolled back). The advisory locks
/// are taken in sorted order, so concurrent calls cannot deadlock.
async fn store_many(
    client: &deadpool_postgres::Object,
    items: &[(&str, &Message)],
) -> Result<Option<Vec<Stored>>, ArchiveError> {
    let mut order: Vec<(usize, (i32, i32))> = items
        .iter()
        .enumerate()
        .map(|(i, (vendor, m))| (i, lock_key(vendor, &m.server_id)))
        .collect();
    order.sort_by_key(|(_, key)| *key);
    let mut vendors = Vec::with_capacity(items.len());
    let mut ids = Vec::with_capacity(items.len());
    let mut conversations = Vec::with_capacity(items.len());
    let mut times = Vec::with_capacity(items.len());
    let mut bodies = Vec::with_capacity(items.len());
    let mut lock_high = Vec::with_capacity(items.len());
    let mut lock_low = Vec::with_capacity(items.len());
    let mut member_users = Vec::new();
    let mut member_conversations = Vec::new();
    let mut member_json = Vec::new();
    for (i, (high, low)) in &order {
        let (vendor, m) = items[*i];
        let conversation = m.conversation.to_string().into_bytes();
        let conversation_json = to_json(&m.conversation)?;
        for user in members_of(m) {
            member_users.push(user.as_str().as_bytes().to_vec());
            member_conversations.push(conversation.clone());
            member_json.push(conversation_json.clone());
        }
        vendors.push(vendor);
        ids.push(key_bytes(m.server_id.as_str()));
        conversations.push(conversation);
        times.push(m.server_time.as_millis());
        bodies.push(to_json(m)?);
        lock_high.push(*high);
        lock_low.push(*low);
    }
    let statement = client
        .prepare_cached("SELECT im_archive_store_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
        .await
        .map_err(db)?;
    let params: [&(dyn ToSql + Sync); 10] = [
        &vendors,
        &ids,
        &conversations,
        &times,
        &bodies,
        &lock_high,
        &lock_low,
        &member_users,
        &member_conversations,
        &member_json,
    ];
    let new: Vec<bool> = match client.query_one(&statement, &params).await {
        Ok(row) => row.get(0),
        Err(e) if e.code().is_some_and(|c| c.code() == CHANGES_FIRST) => return Ok(None),
        Err(e) => return Err(db(e)),
    };
    let mut stored = vec![Stored::Duplicate; items.len()];
    for ((i, _), is_new) in order.iter().zip(new) {
        if is_new {
            stored[*i] = Stored::New;
        }
    }
    Ok(Some(stored))
}

/// The month of a partition named `messages_YYYYmMM`.
fn month_name_bounds(name: &str) -> Option<Month> {
    let rest = name.strip_prefix("messages_")?;
    let (year, month) = rest.split_once('m')?;
    let (year, month): (i64, i64) = (year.parse().ok()?, month.parse().ok()?);
    if !(1..=12).contains(&month) {
        return None;
    }
    month_of(days_from_civil(year, month) * DAY_MS)
}

/// A database error. What a later attempt can get past is `Unavailable` (answered 503 with
/// `Retry-After`): the connection gone (a restart, the network), SQLSTATE classes 08
/// (connection exception), 53 (insufficient resources) and 57 (operator intervention: the
/// "terminating connection due to administrator command" of a restart), a serialization
/// failure or deadlock (40001, 40P01). The rest is `Storage`.
fn db(e: tokio_postgres::Error) -> ArchiveError {
    let retryable = match e.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            ["08", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "40001"
                || code == "40P01"
        }
    };
    // tokio-postgres's Display of a server error is only "db error": name what the server said.
    let what = match e.as_db_error() {
        Some(d) => format!("postgres: {} ({})", d.message(), d.code().code()),
        None => format!("postgres: {e}"),
    };
    if retryable || e.is_closed() {
        ArchiveError::Unavailable(what)
    } else {
        ArchiveError::Storage(what)
    }
}

/// No connection within the wait: the database is away or every connection is busy.
fn pool_error(e: PoolError) -> ArchiveError {
    ArchiveError::Unavailable(format!("postgres: {e}"))
}

fn to_json<T: Serialize>(value: &T) -> Result<serde_json::Value, ArchiveError> {
    serde_json::to_value(value).map_err(|e| ArchiveError::Storage(format!("encode: {e}")))
}

fn from_json<T: DeserializeOwned>(key: &str, value: serde_json::Value) -> Result<T, ArchiveError> {
    serde_json::from_value(value).map_err(|e| ArchiveError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Rows of (key bytes, JSON) decoded; a row that does not decode is `Corrupt`, named by
/// its key.
fn decode_keyed<T: DeserializeOwned>(
    rows: Vec<tokio_postgres::Row>,
) -> Result<Vec<T>, ArchiveError> {
    rows.into_iter()
        .map(|r| {
            let key: Vec<u8> = r.get(0);
            from_json(&String::from_utf8_lossy(&key), r.get(1))
        })
        .collect()
}

/// The advisory-lock key of one message (see the module doc): FNV-1a of vendor and id,
/// split into the two 32-bit halves of `pg_advisory_xact_lock(int, int)` (a key space apart
/// from the one-key migration lock). The same on every replica; two messages whose keys
/// collide only share a lock (a little less concurrency), never an answer.
fn lock_key(vendor: &str, id: &ServerMsgId) -> (i32, i32) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in vendor.bytes().chain([0xff]).chain(id.as_str().bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ((hash >> 32) as u32 as i32, hash as u32 as i32)
}

/// An id or conversation key as stored: its bytes (`bytea`: any character, bytewise order).
fn key_bytes(text: &str) -> &[u8] {
    text.as_bytes()
}

/// Sets the current state (after its changes) of `vendor`'s message with key `id`, stored
/// at `time` (the partition key, so the update touches one month's partition).
async fn set_current(
    tx: &impl deadpool_postgres::GenericClient,
    vendor: &str,
    id: &[u8],
    time: i64,
    current: &(dyn ToSql + Sync),
) -> Result<(), ArchiveError> {
    tx.execute(
        &tx.prepare_cached(
            "UPDATE messages SET current = $3 \
             WHERE vendor = $1 AND server_id = $2 AND server_time = $4",
        )
        .await
        .map_err(db)?,
        &[&vendor, &id, current, &time],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Reads `vendor`'s change log of `target` in revision order (inside a write's
/// transaction, or on a pooled connection for `changes_of`).
async fn change_log(
    tx: &impl deadpool_postgres::GenericClient,
    vendor: &str,
    target: &ServerMsgId,
) -> Result<Vec<MessageChange>, ArchiveError> {
    let rows = tx
        .query(
            &tx.prepare_cached(
                "SELECT change FROM changes WHERE vendor = $1 AND target = $2 ORDER BY revision",
            )
            .await
            .map_err(db)?,
            &[&vendor, &key_bytes(target.as_str())],
        )
        .await
        .map_err(db)?;
    rows.into_iter()
        .map(|r| from_json(target.as_str(), r.get(0)))
        .collect()
}

#[async_trait]
impl ArchiveStore for PgArchive {
    async fn store(&self, vendor: &str, messages: &[Message]) -> Result<Vec<Stored>, ArchiveError> {
        self.ensure_months(messages).await?;
        // One call of `im_archive_store_many` unless changes came before a message: a
        // callback's message merged with the others arriving now, or the caller's batch.
        let fast = match messages {
            [] => Some(Vec::new()),
            [m] => {
                let (answer, answered) = tokio::sync::oneshot::channel();
                let stopped = || ArchiveError::Unavailable("the archive's batcher stopped".into());
                self.queue
                    .send(Queued {
                        vendor: vendor.to_owned(),
                        message: m.clone(),
                        answer,
                    })
                    .await
                    .map_err(|_| stopped())?;
                answered.await.map_err(|_| stopped())??.map(|s| vec![s])
            }
            _ => {
                let client = self.client().await?;
                let items: Vec<(&str, &Message)> = messages.iter().map(|m| (vendor, m)).collect();
                store_many(&client, &items).await?
            }
        };
        if let Some(stored) = fast {
            return Ok(stored);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut keys: Vec<(i32, i32)> = messages
            .iter()
            .map(|m| lock_key(vendor, &m.server_id))
            .collect();
        keys.sort();
        keys.dedup();
        for (high, low) in &keys {
            tx.execute(
                &tx.prepare_cached("SELECT pg_advisory_xact_lock($1, $2)")
                    .await
                    .map_err(db)?,
                &[high, low],
            )
            .await
            .map_err(db)?;
        }
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let original = to_json(m)?;
            let conversation_text = m.conversation.to_string();
            let conversation = key_bytes(&conversation_text);
            let id = key_bytes(m.server_id.as_str());
            let time = m.server_time.as_millis();
            let new = tx
                .execute(
                    &tx.prepare_cached("INSERT INTO message_ids (vendor, server_id, server_time) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING").await.map_err(db)?,
                    &[&vendor, &id, &time],
                )
                .await
                .map_err(db)?;
            if new == 0 {
                out.push(Stored::Duplicate);
                continue;
            }
            let params: [&(dyn ToSql + Sync); 5] = [&vendor, &id, &conversation, &time, &original];
            tx.execute(
                &tx.prepare_cached("INSERT INTO messages (vendor, server_id, conversation, server_time, original, current) \
                 VALUES ($1, $2, $3, $4, $5, $5)").await.map_err(db)?,
                &params,
            )
            .await
            .map_err(db)?;
            // Changes that came before the message apply now.
            let log = change_log(&tx, vendor, &m.server_id).await?;
            if !log.is_empty() {
                let current = to_json(&apply_log(m, &log))?;
                set_current(&tx, vendor, id, time, &current).await?;
            }
            let conversation_json = to_json(&m.conversation)?;
            for user in members_of(m) {
                tx.execute(
                    &tx.prepare_cached(
                        "INSERT INTO members (user_id, conversation, conversation_json) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    )
                    .await
                    .map_err(db)?,
                    &[&key_bytes(user.as_str()), &conversation, &conversation_json],
                )
                .await
                .map_err(db)?;
            }
            out.push(Stored::New);
        }
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    async fn change(
        &self,
        vendor: &str,
        change: &MessageChange,
    ) -> Result<ChangeStored, ArchiveError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let (high, low) = lock_key(vendor, &change.target);
        tx.execute(
            &tx.prepare_cached("SELECT pg_advisory_xact_lock($1, $2)")
                .await
                .map_err(db)?,
            &[&high, &low],
        )
        .await
        .map_err(db)?;
        let target = change.target.as_str();
        let target_key = key_bytes(target);
        let row = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT m.original, m.current, m.server_time FROM message_ids i \
                 JOIN messages m ON m.vendor = i.vendor AND m.server_id = i.server_id \
                   AND m.server_time = i.server_time \
                 WHERE i.vendor = $1 AND i.server_id = $2",
                )
                .await
                .map_err(db)?,
                &[&vendor, &target_key],
            )
            .await
            .map_err(db)?;
        let archived: Option<(Message, Message, i64)> = match row {
            Some(r) => Some((
                from_json(target, r.get(0))?,
                from_json(target, r.get(1))?,
                r.get(2),
            )),
            None => None,
        };
        if let Some((m, _, _)) = &archived
            && m.conversation != change.conversation
        {
            return Err(wrong_conversation(change, m));
        }
        let newest: Option<i64> = tx
            .query_one(
                &tx.prepare_cached(
                    "SELECT max(revision) FROM changes WHERE vendor = $1 AND target = $2",
                )
                .await
                .map_err(db)?,
                &[&vendor, &target_key],
            )
            .await
            .map_err(db)?
            .get(0);
        let revision = i64::from(change.revision);
        let recorded = tx
            .execute(
                &tx.prepare_cached("INSERT INTO changes (vendor, target, revision, change) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING").await.map_err(db)?,
                &[&vendor, &target_key, &revision, &to_json(change)?],
            )
            .await
            .map_err(db)?;
        if recorded == 0 {
            tx.commit().await.map_err(db)?;
            return Ok(ChangeStored::Duplicate);
        }
        let Some((original, current, time)) = archived else {
            tx.commit().await.map_err(db)?;
            return Ok(ChangeStored::Pending);
        };
        let log = change_log(&tx, vendor, &change.target).await?;
        let next = apply_log(&original, &log);
        let changed = next != current;
        if changed {
            set_current(&tx, vendor, target_key, time, &to_json(&next)?).await?;
        }
        tx.commit().await.map_err(db)?;
        let newest = newest.and_then(|n| u32::try_from(n).ok());
        Ok(outcome(changed, newest, change.revision))
    }

    async fn changes_of(
        &self,
        vendor: &str,
        target: &ServerMsgId,
    ) -> Result<Vec<MessageChange>, ArchiveError> {
        change_log(&self.client().await?, vendor, target).await
    }

    async fn original(
        &self,
        vendor: &str,
        target: &ServerMsgId,
    ) -> Result<Option<Message>, ArchiveError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT m.original FROM message_ids i \
                 JOIN messages m ON m.vendor = i.vendor AND m.server_id = i.server_id \
                   AND m.server_time = i.server_time \
                 WHERE i.vendor = $1 AND i.server_id = $2",
                    )
                    .await
                    .map_err(db)?,
                &[&vendor, &key_bytes(target.as_str())],
            )
            .await
            .map_err(db)?;
        row.map(|r| from_json(target.as_str(), r.get(0)))
            .transpose()
    }

    /// Every write committed before it returned: nothing to do.
    async fn flush(&self) -> Result<(), ArchiveError> {
        Ok(())
    }

    async fn page(&self, q: &PageQuery) -> Result<StoredPage, ArchiveError> {
        let client = self.client().await?;
        let conversation_text = q.conversation.to_string();
        let conversation = key_bytes(&conversation_text);
        let from = q.from.as_millis();
        let to = q.to.as_millis();
        let limit = (q.limit.max(1) + 1) as i64;
        let rows = match &q.before {
            Some(before) => {
                let time = before.time.as_millis();
                let id = key_bytes(before.id.as_str());
                let params: [&(dyn ToSql + Sync); 6] =
                    [&conversation, &from, &to, &time, &id, &limit];
                client
                    .query(
                        &client
                            .prepare_cached(
                                "SELECT server_id, current FROM messages \
                         WHERE conversation = $1 AND server_time >= $2 AND server_time < $3 \
                           AND (server_time, server_id) < ($4, $5) \
                         ORDER BY server_time DESC, server_id DESC LIMIT $6",
                            )
                            .await
                            .map_err(db)?,
                        &params,
                    )
                    .await
            }
            None => {
                client
                    .query(
                        &client
                            .prepare_cached(
                                "SELECT server_id, current FROM messages \
                         WHERE conversation = $1 AND server_time >= $2 AND server_time < $3 \
                         ORDER BY server_time DESC, server_id DESC LIMIT $4",
                            )
                            .await
                            .map_err(db)?,
                        &[&conversation, &from, &to, &limit],
                    )
                    .await
            }
        }
        .map_err(db)?;
        let mut hits: Vec<Message> = decode_keyed(rows)?;
        Ok(finish_page(&mut hits, q.limit))
    }

    async fn knows(&self, conversation: &ConversationId) -> Result<bool, ArchiveError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM messages WHERE conversation = $1)",
                    )
                    .await
                    .map_err(db)?,
                &[&key_bytes(&conversation.to_string())],
            )
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }

    async fn is_known_member(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<bool, ArchiveError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client.prepare_cached("SELECT EXISTS (SELECT 1 FROM members WHERE user_id = $1 AND conversation = $2)").await.map_err(db)?,
                &[
                    &key_bytes(user.as_str()),
                    &key_bytes(&conversation.to_string()),
                ],
            )
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }

    async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, ArchiveError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT conversation, conversation_json FROM members WHERE user_id = $1",
                    )
                    .await
                    .map_err(db)?,
                &[&key_bytes(user.as_str())],
            )
            .await
            .map_err(db)?;
        let mut out: Vec<ConversationId> = decode_keyed(rows)?;
        // Sorted as the other stores sort them (by the id's own order, not its text).
        out.sort();
        Ok(out)
    }

    async fn ready(&self) -> Result<(), ArchiveError> {
        self.ping().await
    }

    async fn len(&self) -> Result<u64, ArchiveError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                &client
                    .prepare_cached("SELECT count(*) FROM message_ids")
                    .await
                    .map_err(db)?,
                &[],
            )
            .await
            .map_err(db)?
            .get(0);
        Ok(n.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_have_the_calendars_bounds_and_names() {
        let jan_1970 = month_of(0).unwrap();
        assert_eq!((jan_1970.lo, jan_1970.hi), (0, 31 * DAY_MS));
        assert_eq!(jan_1970.name, "messages_1970m01");
        // 2024 is a leap year: February has 29 days.
        let feb = month_of(1_706_745_600_000 + DAY_MS).unwrap(); // 2024-02-02
        assert_eq!(feb.lo, 1_706_745_600_000, "2024-02-01");
        assert_eq!(feb.hi, 1_709_251_200_000, "2024-03-01");
        assert_eq!(feb.name, "messages_2024m02");
        // The last millisecond of a month is in it; the next one is not.
        let dec = month_of(1_798_761_599_999).unwrap(); // 2026-12-31T23:59:59.999
        assert_eq!(dec.name, "messages_2026m12");
        assert_eq!(
            month_of(1_798_761_600_000).unwrap().name,
            "messages_2027m01"
        );
        assert_eq!(month_of(-1), None, "before 1970: the default partition");
        assert_eq!(month_of(LAST_PARTITIONED_MS), None);
        assert_eq!(month_name_bounds("messages_2024m02"), Some(feb));
        assert_eq!(month_name_bounds("messages_2024m13"), None);
        assert_eq!(month_name_bounds("messages_default"), None);
    }
}
