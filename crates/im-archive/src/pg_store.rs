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
const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_init.sql")];

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
        let archive = Self { pool };
        archive.migrate().await?;
        Ok(archive)
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

/// The advisory-lock key of one message (see the module doc), hashed by the server. Two
/// messages whose keys collide only share a lock (a little less concurrency), never an
/// answer. (Not NUL as the separator: PostgreSQL's text cannot hold it.)
fn lock_key(vendor: &str, id: &ServerMsgId) -> String {
    format!("{vendor}\n{id}")
}

/// Reads `vendor`'s change log of `target` in revision order.
async fn change_log(
    tx: &deadpool_postgres::Transaction<'_>,
    vendor: &str,
    target: &ServerMsgId,
) -> Result<Vec<MessageChange>, ArchiveError> {
    let rows = tx
        .query(
            "SELECT change FROM changes WHERE vendor = $1 AND target = $2 ORDER BY revision",
            &[&vendor, &target.as_str()],
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
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut keys: Vec<String> = messages
            .iter()
            .map(|m| lock_key(vendor, &m.server_id))
            .collect();
        keys.sort();
        keys.dedup();
        for key in &keys {
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[key],
            )
            .await
            .map_err(db)?;
        }
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let original = to_json(m)?;
            let conversation = m.conversation.to_string();
            let time = m.server_time.as_millis();
            let params: [&(dyn ToSql + Sync); 5] = [
                &vendor,
                &m.server_id.as_str(),
                &conversation,
                &time,
                &original,
            ];
            let inserted = tx
                .execute(
                    "INSERT INTO messages (vendor, server_id, conversation, server_time, original, current) \
                     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT DO NOTHING",
                    &params,
                )
                .await
                .map_err(db)?;
            if inserted == 0 {
                out.push(Stored::Duplicate);
                continue;
            }
            // Changes that came before the message apply now.
            let log = change_log(&tx, vendor, &m.server_id).await?;
            if !log.is_empty() {
                let current = to_json(&apply_log(m, &log))?;
                tx.execute(
                    "UPDATE messages SET current = $3 WHERE vendor = $1 AND server_id = $2",
                    &[&vendor, &m.server_id.as_str(), &current],
                )
                .await
                .map_err(db)?;
            }
            let conversation_json = to_json(&m.conversation)?;
            for user in members_of(m) {
                tx.execute(
                    "INSERT INTO members (user_id, conversation, conversation_json) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&user.as_str(), &conversation, &conversation_json],
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
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&lock_key(vendor, &change.target)],
        )
        .await
        .map_err(db)?;
        let target = change.target.as_str();
        let row = tx
            .query_opt(
                "SELECT original, current FROM messages WHERE vendor = $1 AND server_id = $2",
                &[&vendor, &target],
            )
            .await
            .map_err(db)?;
        let archived: Option<(Message, Message)> = match row {
            Some(r) => Some((from_json(target, r.get(0))?, from_json(target, r.get(1))?)),
            None => None,
        };
        if let Some((m, _)) = &archived
            && m.conversation != change.conversation
        {
            return Err(wrong_conversation(change, m));
        }
        let newest: Option<i64> = tx
            .query_one(
                "SELECT max(revision) FROM changes WHERE vendor = $1 AND target = $2",
                &[&vendor, &target],
            )
            .await
            .map_err(db)?
            .get(0);
        let revision = i64::from(change.revision);
        let recorded = tx
            .execute(
                "INSERT INTO changes (vendor, target, revision, change) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[&vendor, &target, &revision, &to_json(change)?],
            )
            .await
            .map_err(db)?;
        if recorded == 0 {
            tx.commit().await.map_err(db)?;
            return Ok(ChangeStored::Duplicate);
        }
        let Some((original, current)) = archived else {
            tx.commit().await.map_err(db)?;
            return Ok(ChangeStored::Pending);
        };
        let log = change_log(&tx, vendor, &change.target).await?;
        let next = apply_log(&original, &log);
        let changed = next != current;
        if changed {
            tx.execute(
                "UPDATE messages SET current = $3 WHERE vendor = $1 AND server_id = $2",
                &[&vendor, &target, &to_json(&next)?],
            )
            .await
            .map_err(db)?;
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
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT change FROM changes WHERE vendor = $1 AND target = $2 ORDER BY revision",
                &[&vendor, &target.as_str()],
            )
            .await
            .map_err(db)?;
        rows.into_iter()
            .map(|r| from_json(target.as_str(), r.get(0)))
            .collect()
    }

    async fn original(
        &self,
        vendor: &str,
        target: &ServerMsgId,
    ) -> Result<Option<Message>, ArchiveError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT original FROM messages WHERE vendor = $1 AND server_id = $2",
                &[&vendor, &target.as_str()],
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
        let conversation = q.conversation.to_string();
        let from = q.from.as_millis();
        let to = q.to.as_millis();
        let limit = (q.limit.max(1) + 1) as i64;
        let rows = match &q.before {
            Some(before) => {
                let time = before.time.as_millis();
                let id = before.id.as_str();
                let params: [&(dyn ToSql + Sync); 6] =
                    [&conversation, &from, &to, &time, &id, &limit];
                client
                    .query(
                        "SELECT server_id, current FROM messages \
                         WHERE conversation = $1 AND server_time >= $2 AND server_time < $3 \
                           AND (server_time, server_id) < ($4, $5) \
                         ORDER BY server_time DESC, server_id DESC LIMIT $6",
                        &params,
                    )
                    .await
            }
            None => {
                client
                    .query(
                        "SELECT server_id, current FROM messages \
                         WHERE conversation = $1 AND server_time >= $2 AND server_time < $3 \
                         ORDER BY server_time DESC, server_id DESC LIMIT $4",
                        &[&conversation, &from, &to, &limit],
                    )
                    .await
            }
        }
        .map_err(db)?;
        let mut hits = rows
            .into_iter()
            .map(|r| {
                let id: String = r.get(0);
                from_json(&id, r.get(1))
            })
            .collect::<Result<Vec<Message>, _>>()?;
        Ok(finish_page(&mut hits, q.limit))
    }

    async fn knows(&self, conversation: &ConversationId) -> Result<bool, ArchiveError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE conversation = $1)",
                &[&conversation.to_string()],
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
                "SELECT EXISTS (SELECT 1 FROM members WHERE user_id = $1 AND conversation = $2)",
                &[&user.as_str(), &conversation.to_string()],
            )
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }

    async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, ArchiveError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT conversation, conversation_json FROM members WHERE user_id = $1",
                &[&user.as_str()],
            )
            .await
            .map_err(db)?;
        let mut out = rows
            .into_iter()
            .map(|r| {
                let key: String = r.get(0);
                from_json(&key, r.get(1))
            })
            .collect::<Result<Vec<ConversationId>, _>>()?;
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
            .query_one("SELECT count(*) FROM messages", &[])
            .await
            .map_err(db)?
            .get(0);
        Ok(n.max(0) as u64)
    }
}
