//! `im-archive`: the archive service as a process.
//!
//! ```text
//! im-archive --data-dir /var/lib/im-archive --listen 127.0.0.1:8090 \
//!     --vendor reference=$SECRET --token $TOKEN=alice --group room=alice,bob
//! ```
//! Secrets and tokens can come from the environment (`IM_ARCHIVE_VENDORS`,
//! `IM_ARCHIVE_TOKENS`, comma separated) so they stay out of process listings.
//! Stops gracefully on Ctrl-C / SIGTERM.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use clap::Parser;
use im_archive::{
    ArchiveConfig, ArchiveError, ArchiveServer, ArchiveStore, ChangeStored, PageQuery, SledArchive,
    Stored, StoredPage,
};
use im_service::{ConversationId, GroupId, Message, MessageChange, ServerMsgId, UserId};

#[derive(Debug, Parser)]
#[command(about = "The company's own message history, fed by signed vendor callbacks")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// The sled directory (created if missing): the embedded default store.
    #[arg(long, required_unless_present = "database_url")]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL database instead of sled (`postgres://user@host:port/db`): several
    /// archive processes may serve one database. The schema is created or migrated at start;
    /// a database with a newer schema is refused.
    #[arg(long, env = "IM_ARCHIVE_DATABASE_URL", conflicts_with = "data_dir")]
    database_url: Option<String>,
    /// Most connections to the database this process keeps open.
    #[arg(long, default_value_t = 16)]
    database_connections: usize,
    /// `vendor=secret` pairs: the vendors whose callbacks are accepted.
    #[arg(long = "vendor", env = "IM_ARCHIVE_VENDORS", value_delimiter = ',')]
    vendors: Vec<String>,
    /// `token=user` pairs: bearer tokens of the history API.
    #[arg(long = "token", env = "IM_ARCHIVE_TOKENS", value_delimiter = ',')]
    tokens: Vec<String>,
    /// `group=user1:user2:…` rosters.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Replay window of callback timestamps, seconds.
    #[arg(long, default_value_t = 300)]
    replay_window_secs: u64,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// Largest history page.
    #[arg(long, default_value_t = 200)]
    max_page: u32,
    /// Connections held open at once (past it a new one is closed at once).
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Fault injection for crash tests: abort the process right after the N-th callback
    /// is stored durably, before it is acknowledged.
    #[arg(long, hide = true)]
    crash_after_stores: Option<u64>,
}

fn pairs(items: &[String], what: &str) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("{what} must be name=value"))
        })
        .collect()
}

/// A store that aborts the process after `after` durable stores (see `--crash-after-stores`).
struct CrashAfter {
    inner: SledArchive,
    after: u64,
    stored: AtomicU64,
}

#[async_trait]
impl ArchiveStore for CrashAfter {
    async fn store(&self, vendor: &str, m: &[Message]) -> Result<Vec<Stored>, ArchiveError> {
        let out = self.inner.store(vendor, m).await?;
        self.stored.fetch_add(m.len() as u64, Ordering::SeqCst);
        Ok(out)
    }
    async fn change(&self, vendor: &str, c: &MessageChange) -> Result<ChangeStored, ArchiveError> {
        let out = self.inner.change(vendor, c).await?;
        self.stored.fetch_add(1, Ordering::SeqCst);
        Ok(out)
    }
    async fn changes_of(
        &self,
        vendor: &str,
        target: &ServerMsgId,
    ) -> Result<Vec<MessageChange>, ArchiveError> {
        self.inner.changes_of(vendor, target).await
    }
    async fn original(
        &self,
        vendor: &str,
        target: &ServerMsgId,
    ) -> Result<Option<Message>, ArchiveError> {
        self.inner.original(vendor, target).await
    }
    async fn flush(&self) -> Result<(), ArchiveError> {
        self.inner.flush().await?;
        if self.stored.load(Ordering::SeqCst) >= self.after {
            eprintln!("im-archive: crashing on purpose (--crash-after-stores)");
            std::process::abort();
        }
        Ok(())
    }
    async fn page(&self, q: &PageQuery) -> Result<StoredPage, ArchiveError> {
        self.inner.page(q).await
    }
    async fn knows(&self, c: &ConversationId) -> Result<bool, ArchiveError> {
        self.inner.knows(c).await
    }
    async fn is_known_member(&self, u: &UserId, c: &ConversationId) -> Result<bool, ArchiveError> {
        self.inner.is_known_member(u, c).await
    }
    async fn conversations_of(&self, u: &UserId) -> Result<Vec<ConversationId>, ArchiveError> {
        self.inner.conversations_of(u).await
    }
    async fn len(&self) -> Result<u64, ArchiveError> {
        self.inner.len().await
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let vendors: HashMap<String, Vec<u8>> = pairs(&args.vendors, "--vendor")?
        .into_iter()
        .map(|(v, s)| (v, s.into_bytes()))
        .collect();
    if vendors.is_empty() {
        bail!("no --vendor: no callback would be accepted");
    }
    let tokens = pairs(&args.tokens, "--token")?
        .into_iter()
        .map(|(t, u)| (t, UserId::new(u)))
        .collect();
    let groups = pairs(&args.groups, "--group")?
        .into_iter()
        .map(|(g, members)| {
            let members: HashSet<UserId> = members.split(':').map(UserId::new).collect();
            (GroupId::new(g), members)
        })
        .collect();
    let store: Arc<dyn ArchiveStore> = match (&args.database_url, &args.data_dir) {
        (Some(url), _) => {
            let config = im_archive::PgConfig {
                max_connections: args.database_connections,
                ..im_archive::PgConfig::new(url)
            };
            // The URL is not logged: it may carry a password.
            Arc::new(
                im_archive::PgArchive::connect(&config)
                    .await
                    .context("connecting to the database of --database-url")?,
            )
        }
        (None, Some(dir)) => {
            let sled =
                SledArchive::open(dir).with_context(|| format!("opening {}", dir.display()))?;
            match args.crash_after_stores {
                Some(after) => Arc::new(CrashAfter {
                    inner: sled,
                    after,
                    stored: AtomicU64::new(0),
                }),
                None => Arc::new(sled),
            }
        }
        (None, None) => anyhow::bail!("give --data-dir (sled) or --database-url (PostgreSQL)"),
    };
    let config = ArchiveConfig {
        listen: args.listen,
        vendors,
        tokens,
        groups,
        replay_window: Duration::from_secs(args.replay_window_secs),
        max_body_bytes: args.max_body_bytes,
        max_page: args.max_page,
        max_connections: args.max_connections,
        ..ArchiveConfig::default()
    };
    let server = ArchiveServer::start(config, store).await?;
    // The address on stdout, alone on its line: scripts and tests read it.
    println!("listening on {}", server.addr());
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
