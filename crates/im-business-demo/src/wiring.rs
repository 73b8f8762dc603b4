//! The only module of the demo that names concrete vendors and servers: it starts the
//! environment (the reference vendor and the company archive in process, or the in-memory
//! vendor) and hands the business code `ImClient`s and QC metrics. Everything else speaks
//! `im-arch` and `im-qc`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use im_arch::{
    ArchiveHistory, Backoff, ClientConfig, HistoryWindow, ImClient, Jitter, RetryPolicy, SledStore,
};
use im_archive::{ArchiveConfig, ArchiveServer, ArchiveStore, SledArchive};
use im_qc::{QcVendor, UnknownDevice, VendorMetrics};
use im_service::memory::{MemoryVendor, MemoryVendorConfig, VendorOp};
use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::{Clock, Credentials, ServiceError, ShiftedClock, Token, UserId, Vendor};
use im_vendor_sim::{CallbackConfig, ReferenceServer, ServerConfig};

/// Which vendor the demo rents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VendorChoice {
    /// The in-process vendor (no network).
    Memory,
    /// The reference vendor over TCP on 127.0.0.1, with the company archive fed by its
    /// callbacks (the default).
    Reference,
    /// An XMPP server (Prosody): refused with the reason (see `Environment::start`).
    Xmpp,
}

/// The vendor behind the environment.
enum Backend {
    Memory {
        vendor: MemoryVendor,
        clock: Arc<ShiftedClock>,
    },
    Reference {
        server: ReferenceServer,
        factory: ReferenceVendor,
    },
}

/// The archive the reference vendor's callbacks feed.
struct Archive {
    server: ArchiveServer,
    store: Arc<SledArchive>,
    tokens: HashMap<UserId, String>,
}

/// One user's seat: their client and, for agents, the QC metrics of their connection.
pub struct Seat {
    /// The user's client (not yet logged in).
    pub client: ImClient,
    /// Call metrics of the user's vendor connection (QC decorator).
    pub metrics: Arc<VendorMetrics>,
}

/// The running environment.
pub struct Environment {
    backend: Backend,
    archive: Option<Archive>,
    credentials: HashMap<UserId, Credentials>,
    /// Clients handed out (devices), for the in-process outage's count of refused logins.
    devices: AtomicU32,
    /// Every client's sled store lives here; removed when the environment is dropped.
    data: tempfile::TempDir,
}

/// Client settings of the demo: quick heartbeats and reconnects, so an outage and its end
/// are noticed within a second.
fn client_config() -> ClientConfig {
    ClientConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_millis(300),
        max_missed_heartbeats: 2,
        reconnect: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
            jitter: Jitter::Full,
        },
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: Backoff {
                base: Duration::from_millis(20),
                max: Duration::from_millis(200),
                jitter: Jitter::Full,
            },
            deadline: None,
        },
        ..ClientConfig::default()
    }
}

/// The vendor's semantics for the demo: its defaults (the two-minute recall window, edits
/// by their sender), and several devices per user, so a housekeeper's phone and desk both
/// stay logged in and see each other's replies.
fn vendor_config() -> MemoryVendorConfig {
    MemoryVendorConfig {
        multi_device: true,
        ..MemoryVendorConfig::default()
    }
}

impl Environment {
    /// Starts the environment for `users` on `choice`; `addr` is where the embedded
    /// reference vendor listens (default `127.0.0.1:0`) or the XMPP server's address.
    pub async fn start(
        choice: VendorChoice,
        addr: Option<SocketAddr>,
        users: &[UserId],
    ) -> Result<Environment> {
        let data = tempfile::tempdir().context("temporary directory")?;
        let (backend, archive) = match choice {
            VendorChoice::Memory => {
                let clock = Arc::new(ShiftedClock::new());
                let vendor = MemoryVendor::with_clock(vendor_config(), clock.clone());
                (Backend::Memory { vendor, clock }, None)
            }
            VendorChoice::Reference => {
                let tokens: HashMap<UserId, String> = users
                    .iter()
                    .map(|u| {
                        (
                            u.clone(),
                            format!("archive-token-{u}-{}", rand::random::<u64>()),
                        )
                    })
                    .collect();
                let secret = format!("callback-secret-{}", rand::random::<u64>()).into_bytes();
                let store = Arc::new(
                    SledArchive::open(data.path().join("archive")).context("archive store")?,
                );
                let server = ArchiveServer::start(
                    ArchiveConfig {
                        vendors: HashMap::from([("reference".to_owned(), secret.clone())]),
                        tokens: tokens.iter().map(|(u, t)| (t.clone(), u.clone())).collect(),
                        // The vendor signs with its own (shifted) clock: accept its whole day.
                        replay_window: Duration::from_secs(2 * 24 * 3600),
                        ..ArchiveConfig::default()
                    },
                    store.clone() as Arc<dyn ArchiveStore>,
                )
                .await
                .context("starting the archive")?;
                let mut callbacks =
                    CallbackConfig::new(format!("{}/v1/callbacks/reference", server.url()), secret);
                callbacks.base_backoff = Duration::from_millis(50);
                callbacks.max_backoff = Duration::from_millis(500);
                callbacks.max_attempts = 100;
                let vendor_server = ReferenceServer::start(ServerConfig {
                    listen: addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
                    callbacks: Some(callbacks),
                    vendor: vendor_config(),
                    ..ServerConfig::default()
                })
                .await
                .context("starting the reference vendor")?;
                let factory = ReferenceVendor::discover(
                    vendor_server.addr(),
                    ReferenceConfig {
                        request_timeout: Duration::from_millis(800),
                        ..ReferenceConfig::default()
                    },
                )
                .await
                .context("discovering the reference vendor")?;
                (
                    Backend::Reference {
                        server: vendor_server,
                        factory,
                    },
                    Some(Archive {
                        server,
                        store,
                        tokens,
                    }),
                )
            }
            VendorChoice::Xmpp => bail!(
                "--vendor xmpp: the scripted day needs a vendor it can administer (accounts, \
                 business time, an outage), which a real XMPP server does not offer; the XMPP \
                 adapter runs the case library instead (`cargo xtask test-suite --vendor xmpp`)"
            ),
        };
        let credentials = users
            .iter()
            .map(|u| {
                let c = match &backend {
                    Backend::Memory { vendor, .. } => vendor.register_user(u),
                    Backend::Reference { server, .. } => server.vendor().register_user(u),
                };
                (u.clone(), c)
            })
            .collect();
        Ok(Environment {
            backend,
            archive,
            credentials,
            devices: AtomicU32::new(0),
            data,
        })
    }

    /// The vendor's name, for display.
    pub fn vendor_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory { .. } => "memory",
            Backend::Reference { .. } => "reference",
        }
    }

    /// Where the vendor listens, if on a network.
    pub fn vendor_addr(&self) -> Option<SocketAddr> {
        match &self.backend {
            Backend::Memory { .. } => None,
            Backend::Reference { server, .. } => Some(server.addr()),
        }
    }

    /// Where the company archive listens, if running.
    pub fn archive_url(&self) -> Option<String> {
        self.archive.as_ref().map(|a| a.server.url())
    }

    /// The vendor's clock: server times of messages, and business time.
    pub fn clock(&self) -> Arc<dyn Clock> {
        match &self.backend {
            Backend::Memory { clock, .. } => clock.clone(),
            Backend::Reference { server, .. } => Arc::new(server.clock().clone()),
        }
    }

    /// Business time passes (the scripted day is compressed): the vendor's clock moves on.
    pub fn advance(&self, by: Duration) {
        match &self.backend {
            Backend::Memory { clock, .. } => clock.shift(by),
            Backend::Reference { server, .. } => server.shift_clock(by),
        }
    }

    /// A vendor outage of about `duration`: connections break and logins fail meanwhile.
    pub fn outage(&self, duration: Duration) {
        match &self.backend {
            Backend::Memory { vendor, .. } => {
                // The in-process vendor has no network to cut: every connection is dropped
                // and logins are refused until about `duration` of reconnect attempts
                // (the demo's clients retry every 100–500 ms, 300 ms on average) failed.
                let attempts = (duration.as_millis() / 300).max(1) as u32;
                let devices = self.devices.load(Ordering::Relaxed).max(1);
                vendor.fail_next(
                    VendorOp::Login,
                    attempts * devices,
                    ServiceError::Unavailable("injected outage".into()),
                );
                for user in self.credentials.keys() {
                    vendor.disconnect(user);
                }
            }
            Backend::Reference { server, .. } => server.outage(duration),
        }
    }

    /// A seat for `user`: a client on its own sled store, on the vendor's clock, its
    /// vendor connection wrapped in the QC decorator, and its `Old` history window served
    /// by the company archive when one runs.
    pub fn seat(&self, user: &UserId) -> Result<Seat> {
        self.device(user, 1)
    }

    /// A second device of `user`: another client of the same account
    /// on its own store. Both stay logged in: the vendor is configured multi-device.
    pub fn second_device(&self, user: &UserId) -> Result<Seat> {
        self.device(user, 2)
    }

    fn device(&self, user: &UserId, n: u32) -> Result<Seat> {
        let credentials = self
            .credentials
            .get(user)
            .with_context(|| format!("{user} was not registered"))?
            .clone();
        let inner: Arc<dyn Vendor> = match &self.backend {
            Backend::Memory { vendor, .. } => Arc::new(vendor.client()),
            Backend::Reference { factory, .. } => Arc::new(factory.client()),
        };
        let qc = Arc::new(QcVendor::new(inner, Arc::new(UnknownDevice)));
        let vendor = qc.clone();
        let store = SledStore::open(self.store_dir(user, n)).context("client store")?;
        self.devices.fetch_add(1, Ordering::Relaxed);
        let mut builder = ImClient::builder(vendor, credentials)
            .store(Arc::new(store))
            .clock(self.clock())
            .config(client_config());
        if let Some(archive) = &self.archive {
            let token = archive
                .tokens
                .get(user)
                .with_context(|| format!("no archive token for {user}"))?;
            let source = ArchiveHistory::new(archive.server.url(), Token::new(token.clone()))?;
            builder = builder.history_source(HistoryWindow::Old, Some(Arc::new(source)));
        }
        Ok(Seat {
            client: builder.build(),
            metrics: qc.metrics(),
        })
    }

    fn store_dir(&self, user: &UserId, device: u32) -> PathBuf {
        match device {
            1 => self.data.path().join(format!("client-{user}")),
            n => self.data.path().join(format!("client-{user}-device-{n}")),
        }
    }

    /// Messages the company archive holds (`None` without an archive), once the vendor's
    /// callbacks have settled (bounded wait).
    pub async fn archived(&self, expected: u64) -> Option<u64> {
        let archive = self.archive.as_ref()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = archive.store.len().unwrap_or(0);
            if n >= expected || tokio::time::Instant::now() >= deadline {
                return Some(n);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the servers.
    pub async fn shutdown(self) {
        if let Backend::Reference { server, .. } = self.backend {
            server.shutdown().await;
        }
        if let Some(a) = self.archive {
            a.server.shutdown().await;
        }
    }
}
