//! The only module of the demo that names concrete vendors and servers: it starts the
//! environment (the reference vendor and the company archive in process, the in-memory
//! vendor, or a real server reached through a fault-injecting proxy) and hands the business
//! code `ImClient`s and QC metrics. Everything else speaks `im-arch` and `im-qc`.
//!
//! A real server (`--vendor xmpp --addr HOST:PORT` on Prosody, `--vendor matrix --url
//! http://HOST:PORT` on Synapse; each is one constructor of [`RealServer`]) plays the same day with these differences, each reported in the summary
//! (its `business_time`, `outage.method` and `not_applicable` fields), none hidden:
//! * accounts: created through the server's own admin command, `--register-with CMD` (default:
//!   `$IM_DEMO_REGISTER`, else this repository's `tests/prosody/prosody.sh register`, which
//!   runs `prosodyctl register`, or `tests/synapse/synapse.sh register`, Synapse's
//!   shared-secret `register_new_matrix_user`), run once per account as `CMD USER PASSWORD`
//!   (or with `{user}`, `{password}`, `{domain}` in CMD replaced). Not XEP-0077 in-band
//!   registration (nor Matrix's open registration): the test servers do not allow it, and
//!   allowing it would let any client create accounts. Names get a per-run prefix (`d1a2b3c4-tenant-1`) so reruns
//!   on the same server never meet an earlier run's accounts, offline messages or archive;
//!   passwords are random per run and never printed;
//! * business time: the server's clock cannot be moved, so the day's jumps (a minute to
//!   read, a busy housekeeper's seven, to the next hour) move a [`BusinessClock`] instead,
//!   and every client sees the vendor through [`BusinessTimeVendor`], which maps the
//!   server's real timestamps to business time; QC's response rate, the overdue rule and
//!   the history windows then run unchanged;
//! * the outage at noon: the clients connect to a fault-injecting TCP proxy in front of the
//!   server, and the outage is the proxy's (every connection dropped, new ones refused until
//!   it heals), not the vendor's: the server itself never notices;
//! * the company archive is fed by the reference vendor's signed callbacks; a real server
//!   sends none, so no archive is started and its check is reported as not applicable (the
//!   server's own archive, MAM on XMPP, serves the clients' history instead).
//!
//! Every other check holds as on the reference vendor and is checked the same way: no
//! message lost or duplicated (across the outage too), the outage detected by QC and
//! resolved, the measured response rate equal to the script's, recalls, "seen" receipts,
//! and the housekeeper on two devices (XMPP: one resource per device, carbons; Matrix: one
//! device per client handle).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use im_arch::{
    ArchiveHistory, Backoff, ClientConfig, HistoryWindow, ImClient, Jitter, LogStore, RetryPolicy,
};
use im_archive::{ArchiveConfig, ArchiveServer, ArchiveStore, SledArchive};
use im_qc::{QcVendor, UnknownDevice, VendorMetrics};
use im_service::matrix::{DevicePolicy, MatrixConfig, MatrixVendor};
use im_service::memory::{MemoryVendor, MemoryVendorConfig, VendorOp};
use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::xmpp::{XmppConfig, XmppVendor};
use im_service::{Clock, Credentials, ServiceError, ShiftedClock, Token, UserId, Vendor};
use im_vendor_sim::{CallbackConfig, FaultProxy, ReferenceServer, ServerConfig};

use crate::business_time::{BusinessClock, BusinessTimeVendor};

/// Which vendor the demo rents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VendorChoice {
    /// The in-process vendor (no network).
    Memory,
    /// The reference vendor over TCP on 127.0.0.1, with the company archive fed by its
    /// callbacks (the default).
    Reference,
    /// An XMPP server (Prosody) at `--addr`, accounts made with `--register-with`.
    Xmpp,
    /// A Matrix homeserver (Synapse) at `--url`, accounts made with `--register-with`.
    Matrix,
}

impl VendorChoice {
    /// What every account name of this run starts with: accounts on a real server outlive
    /// the run, so a per-run prefix keeps reruns apart; the in-process vendors start empty.
    pub fn account_prefix(self) -> String {
        match self {
            VendorChoice::Memory | VendorChoice::Reference => String::new(),
            VendorChoice::Xmpp | VendorChoice::Matrix => {
                format!("d{:08x}-", rand::random::<u32>())
            }
        }
    }
}

/// Where a real server is and how to make accounts on it (ignored by the in-process
/// vendors, except `addr` for the reference vendor's listener).
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The reference vendor's listener, or the XMPP server's client port.
    pub addr: Option<SocketAddr>,
    /// The XMPP domain or Matrix server name (`None`: the test server's).
    pub domain: Option<String>,
    /// The Matrix homeserver's URL.
    pub url: Option<String>,
    /// The admin command that creates an account (see the module doc).
    pub register_with: Option<String>,
}

/// A real server behind the fault proxy: how to make a client of it, and what the run
/// changes on it. A protocol is one constructor ([`RealServer::xmpp`], [`RealServer::matrix`])
/// and nothing else: business time, the outage and the seats are shared.
struct RealServer {
    /// The vendor's name, for display and the summary.
    name: &'static str,
    /// Where the server really is (display).
    server: String,
    /// A new client handle of the adapter, connecting through the proxy.
    client: Box<dyn Fn() -> Arc<dyn Vendor> + Send + Sync>,
    /// The proxy between every client and the server; the outage is its.
    proxy: FaultProxy,
    /// Business time over the server's real clock.
    clock: BusinessClock,
}

/// What the fault proxy did to the clients' connections (a real server's outage).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ProxyCounts {
    /// Open connections the outage dropped.
    pub dropped: u64,
    /// New connections refused while it lasted (the clients' reconnect attempts).
    pub refused: u64,
}

/// An account script of this repository (`tests/{dir}/{script} register`), when the
/// binary runs from the source tree it was built in (as with `cargo run`), else `None`.
/// `$IM_DEMO_REGISTER` names another admin command.
fn repository_script(dir: &str, script: &str) -> Option<String> {
    if let Ok(cmd) = std::env::var("IM_DEMO_REGISTER") {
        return Some(cmd);
    }
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "..", "tests", dir, script]
        .iter()
        .collect();
    path.exists()
        .then(|| format!("bash {} register", path.display()))
}

/// Creates every account of `users` with a fresh random password through `cmd`.
async fn register_all(
    cmd: &str,
    domain: &str,
    users: &[UserId],
) -> Result<HashMap<UserId, Credentials>> {
    let mut credentials = HashMap::new();
    for user in users {
        let password = format!("pw-{:016x}", rand::random::<u64>());
        register_with(cmd, domain, user, &password).await?;
        credentials.insert(user.clone(), Credentials::new(user.as_str(), password));
    }
    Ok(credentials)
}

/// Creates `user` with `password` through the admin command `cmd` (see the module doc).
/// Blocking process work runs off the runtime's threads.
async fn register_with(cmd: &str, domain: &str, user: &UserId, password: &str) -> Result<()> {
    let mut words: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
    let templated = words.iter().any(|w| w.contains("{user}"));
    for w in &mut words {
        *w = w
            .replace("{user}", user.as_str())
            .replace("{password}", password)
            .replace("{domain}", domain);
    }
    if !templated {
        words.push(user.to_string());
        words.push(password.to_owned());
    }
    let Some((program, args)) = words.split_first() else {
        bail!("--register-with is empty");
    };
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running the admin command {program}"))?;
    if !out.status.success() {
        // The command line holds the password: name the program and the account only.
        bail!(
            "the admin command {program} could not create {user}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl RealServer {
    /// An XMPP server at `target.addr`: a proxy in front of it, one multi-device adapter
    /// (a resource per client handle, carbons) through the proxy, and the accounts.
    async fn xmpp(
        target: &Target,
        users: &[UserId],
    ) -> Result<(RealServer, HashMap<UserId, Credentials>)> {
        let upstream = target.addr.context(
            "--vendor xmpp needs --addr HOST:PORT of the XMPP server's client port \
             (tests/prosody/prosody.sh start PORT starts one)",
        )?;
        let register = target
            .register_with
            .clone()
            .or_else(|| repository_script("prosody", "prosody.sh"))
            .context("--vendor xmpp needs --register-with CMD (the admin command that creates an account)")?;
        let domain = target.domain.clone().unwrap_or_else(|| "im.test".into());
        let credentials = register_all(&register, &domain, users).await?;
        let proxy = FaultProxy::start(upstream)
            .await
            .context("starting the fault proxy")?;
        let mut config = XmppConfig::new(proxy.addr(), domain).with_multi_device();
        // The demo's clients notice an outage within a second; a request waits no longer.
        config.request_timeout = Duration::from_secs(2);
        let vendor = XmppVendor::new(config);
        Ok((
            RealServer {
                name: "xmpp",
                server: upstream.to_string(),
                client: Box::new(move || Arc::new(vendor.client()) as Arc<dyn Vendor>),
                proxy,
                clock: BusinessClock::new(),
            },
            credentials,
        ))
    }

    /// A Matrix homeserver at `target.url` (plain HTTP on loopback): a proxy in front of its
    /// port, the adapter's base URL pointing at the proxy, one Matrix device per client
    /// handle (several devices at once), and the accounts (default admin command: this
    /// repository's `tests/synapse/synapse.sh register`, Synapse's shared-secret
    /// registration).
    async fn matrix(
        target: &Target,
        users: &[UserId],
    ) -> Result<(RealServer, HashMap<UserId, Credentials>)> {
        let url = target.url.as_deref().context(
            "--vendor matrix needs --url http://HOST:PORT of the homeserver \
             (tests/synapse/synapse.sh start PORT starts one)",
        )?;
        let upstream: SocketAddr = url
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or(rest))
            .and_then(|hostport| hostport.parse().ok())
            .with_context(|| {
                format!("--url {url}: expected http://IP:PORT (plain HTTP on loopback)")
            })?;
        let register = target
            .register_with
            .clone()
            .or_else(|| repository_script("synapse", "synapse.sh"))
            .context("--vendor matrix needs --register-with CMD (the admin command that creates an account)")?;
        let server_name = target.domain.clone().unwrap_or_else(|| "localhost".into());
        let credentials = register_all(&register, &server_name, users).await?;
        let proxy = FaultProxy::start(upstream)
            .await
            .context("starting the fault proxy")?;
        let mut config = MatrixConfig::new(format!("http://{}", proxy.addr()), server_name);
        config.devices = DevicePolicy::PerHandle("DEMO".into());
        // The demo's clients notice an outage within a second; a request waits no longer,
        // and a long poll ends often enough to notice a dropped connection.
        config.request_timeout = Duration::from_secs(2);
        config.sync_timeout = Duration::from_secs(1);
        let vendor = MatrixVendor::new(config);
        Ok((
            RealServer {
                name: "matrix",
                server: url.to_owned(),
                client: Box::new(move || Arc::new(vendor.client()) as Arc<dyn Vendor>),
                proxy,
                clock: BusinessClock::new(),
            },
            credentials,
        ))
    }
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
    Real(RealServer),
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
    /// Starts the environment for `users` on `choice`; `target.addr` is where the embedded
    /// reference vendor listens (default `127.0.0.1:0`) or the XMPP server's address.
    pub async fn start(
        choice: VendorChoice,
        target: &Target,
        users: &[UserId],
    ) -> Result<Environment> {
        let addr = target.addr;
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
            VendorChoice::Xmpp | VendorChoice::Matrix => {
                let (server, credentials) = match choice {
                    VendorChoice::Matrix => RealServer::matrix(target, users).await?,
                    _ => RealServer::xmpp(target, users).await?,
                };
                return Ok(Environment {
                    backend: Backend::Real(server),
                    archive: None,
                    credentials,
                    devices: AtomicU32::new(0),
                    data,
                });
            }
        };
        // The in-process vendors register accounts directly (a real server's admin command
        // ran above).
        let credentials = users
            .iter()
            .filter_map(|u| {
                let c = match &backend {
                    Backend::Memory { vendor, .. } => vendor.register_user(u),
                    Backend::Reference { server, .. } => server.vendor().register_user(u),
                    Backend::Real(_) => return None,
                };
                Some((u.clone(), c))
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
        match &self.backend {
            Backend::Memory { .. } => "memory",
            Backend::Reference { .. } => "reference",
            Backend::Real(r) => r.name,
        }
    }

    /// Where a real server is and the proxy in front of it (display), if any.
    pub fn route(&self) -> Option<String> {
        match &self.backend {
            Backend::Real(r) => Some(format!(
                "{} through the fault proxy on {}",
                r.server,
                r.proxy.addr()
            )),
            _ => None,
        }
    }

    /// How the day's business time is kept on this vendor (for the summary).
    pub fn business_time(&self) -> &'static str {
        match &self.backend {
            Backend::Memory { .. } | Backend::Reference { .. } => "the vendor's clock is moved",
            Backend::Real(_) => {
                "the server's clock is real: business time is mapped from its timestamps"
            }
        }
    }

    /// How the outage is injected (for the summary).
    pub fn outage_method(&self) -> &'static str {
        match &self.backend {
            Backend::Memory { .. } => {
                "the in-process vendor drops every connection and refuses logins"
            }
            Backend::Reference { .. } => "the reference vendor's own outage switch",
            Backend::Real(_) => {
                "a fault proxy between the clients and the server drops every connection and refuses new ones"
            }
        }
    }

    /// What the fault proxy in front of a real server did so far (`None` without one).
    pub fn proxy_counts(&self) -> Option<ProxyCounts> {
        match &self.backend {
            Backend::Real(r) => {
                let s = r.proxy.stats();
                Some(ProxyCounts {
                    dropped: s.dropped,
                    refused: s.refused,
                })
            }
            _ => None,
        }
    }

    /// Checks of the summary that cannot apply on this vendor, with the reason.
    pub fn not_applicable(&self) -> Vec<(&'static str, String)> {
        match &self.backend {
            Backend::Reference { .. } => Vec::new(),
            Backend::Memory { .. } => vec![(
                "archived",
                "the company archive is fed by a vendor's signed callbacks; the in-process \
                 vendor sends none, so no archive runs"
                    .to_owned(),
            )],
            Backend::Real(r) => vec![(
                "archived",
                format!(
                    "the company archive is fed by a vendor's signed callbacks; {} sends none, \
                     so no archive runs (the clients read history from the server's own archive)",
                    r.name
                ),
            )],
        }
    }

    /// Where the vendor listens, if on a network.
    pub fn vendor_addr(&self) -> Option<SocketAddr> {
        match &self.backend {
            Backend::Memory { .. } => None,
            Backend::Reference { server, .. } => Some(server.addr()),
            Backend::Real(_) => None,
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
            Backend::Real(r) => Arc::new(r.clock.clone()),
        }
    }

    /// Business time passes (the scripted day is compressed): the vendor's clock moves on.
    pub fn advance(&self, by: Duration) {
        match &self.backend {
            Backend::Memory { clock, .. } => clock.shift(by),
            Backend::Reference { server, .. } => server.shift_clock(by),
            Backend::Real(r) => r.clock.shift(by),
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
            // Every connection through the proxy drops and new ones are refused until the
            // proxy heals by itself; the server keeps running.
            Backend::Real(r) => r.proxy.outage(duration),
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
            Backend::Real(r) => Arc::new(BusinessTimeVendor::new((r.client)(), r.clock.clone())),
        };
        let qc = Arc::new(QcVendor::new(inner, Arc::new(UnknownDevice)));
        let vendor = qc.clone();
        let store = LogStore::open(self.store_dir(user, n)).context("client store")?;
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
            let n = archive.store.len().await.unwrap_or(0);
            if n >= expected || tokio::time::Instant::now() >= deadline {
                return Some(n);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the servers (a real server keeps running: only the proxy in front of it stops).
    pub async fn shutdown(self) {
        match self.backend {
            Backend::Reference { server, .. } => server.shutdown().await,
            Backend::Real(r) => r.proxy.shutdown().await,
            Backend::Memory { .. } => {}
        }
        if let Some(a) = self.archive {
            a.server.shutdown().await;
        }
    }
}
