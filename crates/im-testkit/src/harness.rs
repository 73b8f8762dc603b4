//! Harnesses: everything the contract suite needs from a vendor beyond the [`Vendor`] trait
//! itself (creating accounts and groups, issuing tokens, moving vendor time).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use im_service::LifecyclePolicy;
use im_service::memory::{MemoryClient, MemoryVendor, MemoryVendorConfig, VendorOp};
use im_service::reference::{ReferenceClient, ReferenceConfig, ReferenceVendor};
use im_service::{Clock, Credentials, GroupId, ManualClock, ServiceError, Token, UserId, Vendor};

use crate::faulty::{Failures, FaultyVendor};
use im_vendor_sim::{ReferenceServer, ServerConfig};

/// Settings every harness applies when it builds its vendor, so one suite can assert exact
/// limits against every adapter.
#[derive(Debug, Clone)]
pub struct ContractConfig {
    /// History retention the vendor is configured with.
    pub retention: Duration,
    /// Largest message content the vendor accepts.
    pub max_message_bytes: usize,
    /// Whether several devices of one user stay logged in at once (`MultiDevice`) instead
    /// of a second login kicking the first (`KickOnSecondLogin`).
    pub multi_device: bool,
    /// The recall window the vendor is configured with; `None` keeps the vendor's default.
    /// A short one lets a case pass it on a server whose clock only real time moves.
    pub recall_window: Option<Duration>,
}

impl ContractConfig {
    /// `vendor` with this contract's settings applied: the one mapping the memory vendor
    /// and the reference server (whose storage engine it is) share.
    pub fn apply_to(&self, vendor: MemoryVendorConfig) -> MemoryVendorConfig {
        MemoryVendorConfig {
            retention: Some(self.retention),
            max_message_bytes: self.max_message_bytes,
            multi_device: self.multi_device,
            lifecycle: LifecyclePolicy {
                recall_window: self.recall_window.or(vendor.lifecycle.recall_window),
                ..vendor.lifecycle.clone()
            },
            ..vendor
        }
    }
}

impl Default for ContractConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            max_message_bytes: 4096,
            multi_device: false,
            recall_window: None,
        }
    }
}

/// A vendor under test plus its administration side.
#[async_trait]
pub trait VendorHarness: Send + Sync + 'static {
    /// The client handle type of this vendor.
    type Client: Vendor + 'static;

    /// The configuration the harness was built with.
    fn config(&self) -> &ContractConfig;

    /// Registers `name` and returns credentials whose token never expires.
    async fn user(&self, name: &str) -> Credentials;

    /// Issues a token for `user` that expires after `ttl` of vendor time.
    async fn token(&self, user: &UserId, ttl: Duration) -> Token;

    /// Creates a group with the given members.
    async fn group(&self, id: &str, members: &[UserId]);

    /// A new client handle, not logged in.
    async fn client(&self) -> Self::Client;

    /// Moves vendor time forward and lets the vendor act on it (token events, retention).
    async fn advance(&self, by: Duration);

    /// Makes the next `count` calls of `op` fail with `error` (any client).
    fn fail_next(&self, op: VendorOp, count: u32, error: ServiceError);

    /// The vendor's clock (what [`VendorHarness::advance`] moves): a client measuring
    /// history windows must read the same time.
    fn clock(&self) -> Arc<dyn Clock>;

    /// Where the vendor's wire protocol listens, for cases that write raw bytes to it;
    /// `None` for an in-process vendor.
    fn wire_addr(&self) -> Option<SocketAddr>;
}

/// [`VendorHarness`] for the in-process [`MemoryVendor`] on a manual clock.
#[derive(Debug, Clone)]
pub struct MemoryHarness {
    /// The vendor under test; exposed so tests can inspect its state.
    pub vendor: MemoryVendor,
    /// The vendor's clock.
    pub clock: ManualClock,
    config: ContractConfig,
}

impl MemoryHarness {
    /// A memory vendor configured from `config`.
    pub fn new(config: ContractConfig) -> Self {
        let (vendor, clock) = MemoryVendor::with_manual_clock(config.apply_to(Default::default()));
        Self {
            vendor,
            clock,
            config,
        }
    }
}

#[async_trait]
impl VendorHarness for MemoryHarness {
    type Client = MemoryClient;

    fn config(&self) -> &ContractConfig {
        &self.config
    }

    async fn user(&self, name: &str) -> Credentials {
        self.vendor.register_user(&UserId::new(name))
    }

    async fn token(&self, user: &UserId, ttl: Duration) -> Token {
        match self.vendor.issue_token(user, Some(ttl)) {
            Ok(t) => t,
            Err(e) => panic!("cannot issue token for {user}: {e}"),
        }
    }

    async fn group(&self, id: &str, members: &[UserId]) {
        if let Err(e) = self.vendor.create_group(&GroupId::new(id), members) {
            panic!("cannot create group {id}: {e}");
        }
    }

    async fn client(&self) -> MemoryClient {
        self.vendor.client()
    }

    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.vendor.sweep();
    }

    fn fail_next(&self, op: VendorOp, count: u32, error: ServiceError) {
        self.vendor.fail_next(op, count, error);
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(self.clock.clone())
    }

    fn wire_addr(&self) -> Option<SocketAddr> {
        None
    }
}

/// [`VendorHarness`] for the reference vendor over TCP on 127.0.0.1: a real server in the
/// test process, reached through the `reference` adapter.
#[derive(Debug)]
pub struct ReferenceHarness {
    /// The running server (administration, faults, clock).
    pub server: ReferenceServer,
    /// The adapter, discovered from the server.
    pub vendor: ReferenceVendor,
    config: ContractConfig,
}

impl ReferenceHarness {
    /// Starts a server configured from `config` and discovers it.
    pub async fn start(config: ContractConfig) -> Self {
        Self::start_with(config, ServerConfig::default()).await
    }

    /// Starts a server from `server` with the contract's retention and size limit applied.
    pub async fn start_with(config: ContractConfig, mut server: ServerConfig) -> Self {
        server.vendor = config.apply_to(server.vendor);
        let server = match ReferenceServer::start(server).await {
            Ok(s) => s,
            Err(e) => panic!("cannot start the reference vendor: {e}"),
        };
        let vendor =
            match ReferenceVendor::discover(server.addr(), ReferenceConfig::default()).await {
                Ok(v) => v,
                Err(e) => panic!("cannot discover the reference vendor: {e}"),
            };
        Self {
            server,
            vendor,
            config,
        }
    }
}

#[async_trait]
impl VendorHarness for ReferenceHarness {
    type Client = ReferenceClient;

    fn config(&self) -> &ContractConfig {
        &self.config
    }

    async fn user(&self, name: &str) -> Credentials {
        self.server.vendor().register_user(&UserId::new(name))
    }

    async fn token(&self, user: &UserId, ttl: Duration) -> Token {
        match self.server.vendor().issue_token(user, Some(ttl)) {
            Ok(t) => t,
            Err(e) => panic!("cannot issue token for {user}: {e}"),
        }
    }

    async fn group(&self, id: &str, members: &[UserId]) {
        if let Err(e) = self
            .server
            .vendor()
            .create_group(&GroupId::new(id), members)
        {
            panic!("cannot create group {id}: {e}");
        }
    }

    async fn client(&self) -> ReferenceClient {
        self.vendor.client()
    }

    async fn advance(&self, by: Duration) {
        self.server.shift_clock(by);
    }

    fn fail_next(&self, op: VendorOp, count: u32, error: ServiceError) {
        self.server.fail_next(op, count, error);
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(self.server.clock().clone())
    }

    fn wire_addr(&self) -> Option<SocketAddr> {
        Some(self.server.addr())
    }
}

/// The XMPP domain of the test Prosody (`tests/prosody/prosody.cfg.lua`).
pub const XMPP_DOMAIN: &str = "im.test";

/// The password of an XMPP test account (the contract's token): one per user, so one
/// user's token does not open another's account.
fn xmpp_password(user: &str) -> String {
    format!("pw-{user}")
}

/// Where the test Prosody listens: `IM_PROSODY_ADDR`, else 127.0.0.1:5222. Panics when
/// the variable is set but not `host:port` (a typo must not test some other server).
pub fn prosody_addr() -> SocketAddr {
    match std::env::var("IM_PROSODY_ADDR") {
        Ok(a) => a
            .parse()
            .unwrap_or_else(|_| panic!("IM_PROSODY_ADDR={a:?} is not host:port")),
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 5222)),
    }
}

/// Whether a Prosody answers at [`prosody_addr`].
pub fn prosody_running() -> bool {
    std::net::TcpStream::connect_timeout(&prosody_addr(), Duration::from_millis(500)).is_ok()
}

/// The gate of every XMPP test: true when a Prosody answers at [`prosody_addr`]. Otherwise
/// prints why the test is skipped and returns false, or panics when `IM_REQUIRE_PROSODY` is
/// set: CI starts a Prosody and sets it, so there a missing server is a failure, not a skip.
pub fn prosody_or_skip() -> bool {
    let addr = prosody_addr();
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(_) => true,
        Err(e) if std::env::var_os("IM_REQUIRE_PROSODY").is_some() => {
            panic!("no Prosody at {addr} ({e}) although IM_REQUIRE_PROSODY is set")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: no Prosody at {addr} ({e}); start one with `tests/prosody/prosody.sh start`"
            );
            false
        }
    }
}

/// [`VendorHarness`] for a real Prosody (started by `tests/prosody/prosody.sh`, shared by
/// every harness: accounts get a per-harness suffix so cases do not meet). What a real
/// server cannot do is declared, not faked: its clock cannot be moved
/// ([`VendorHarness::advance`] panics; cases needing it are "not applicable"), and groups
/// are not mapped. Failures are injected client-side ([`FaultyVendor`]), before the call
/// reaches the server.
#[derive(Debug)]
pub struct XmppHarness {
    /// The adapter.
    pub vendor: im_service::xmpp::XmppVendor,
    failures: Failures,
    suffix: String,
    config: ContractConfig,
}

impl XmppHarness {
    /// A harness on the running Prosody. Panics with the way to start one if none runs.
    pub fn start(config: ContractConfig) -> Self {
        let addr = prosody_addr();
        assert!(
            prosody_running(),
            "no Prosody at {addr}: run `tests/prosody/prosody.sh start` (or set IM_PROSODY_ADDR)"
        );
        let mut xmpp = im_service::xmpp::XmppConfig::new(addr, XMPP_DOMAIN);
        xmpp.max_message_bytes = config.max_message_bytes;
        // Several devices of one user: a resource per client handle, carbons on.
        xmpp.multi_device = config.multi_device;
        if let Some(window) = config.recall_window {
            xmpp.lifecycle.recall_window = Some(window);
        }
        Self {
            vendor: im_service::xmpp::XmppVendor::new(xmpp),
            failures: Failures::default(),
            suffix: format!("{:08x}", rand::random::<u32>()),
            config,
        }
    }
}

/// Registers (or re-registers) `user` with `password` on the test Prosody whose data lives in
/// `dir` (`None`: `$IM_PROSODY_DIR`), through `tests/prosody/prosody.sh register`.
pub async fn register_xmpp_user(
    user: &str,
    password: &str,
    dir: Option<&std::path::Path>,
) -> Result<(), String> {
    let script: std::path::PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "tests",
        "prosody",
        "prosody.sh",
    ]
    .iter()
    .collect();
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(script).args(["register", user, password]);
    if let Some(dir) = dir {
        cmd.env("IM_PROSODY_DIR", dir);
    }
    match cmd.output().await {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "cannot register {user}: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("cannot run prosody.sh: {e}")),
    }
}

#[async_trait]
impl VendorHarness for XmppHarness {
    type Client = FaultyVendor<im_service::xmpp::XmppClient>;

    fn config(&self) -> &ContractConfig {
        &self.config
    }

    async fn user(&self, name: &str) -> Credentials {
        let user = format!("{name}-{}", self.suffix);
        if let Err(e) = register_xmpp_user(&user, &xmpp_password(&user), None).await {
            panic!("{e}");
        }
        Credentials {
            token: Token::new(xmpp_password(&user)),
            user: UserId::new(user),
        }
    }

    async fn token(&self, user: &UserId, _ttl: Duration) -> Token {
        // XMPP passwords do not expire (no TokenExpiry capability): the TTL cannot apply.
        Token::new(xmpp_password(user.as_str()))
    }

    async fn group(&self, id: &str, _members: &[UserId]) {
        panic!("group {id}: XMPP groups (MUC) are not mapped (no GroupConversations)");
    }

    async fn client(&self) -> Self::Client {
        FaultyVendor::new(Arc::new(self.vendor.client()), rand::random())
            .with_failures(self.failures.clone())
    }

    async fn advance(&self, by: Duration) {
        // A real server's time moves only by waiting: fine for the few seconds a case uses
        // to separate timestamps, impossible for days (such cases need `VendorClock`).
        assert!(
            by <= Duration::from_secs(5),
            "a real server's clock cannot move {by:?}: the case needs VendorClock"
        );
        tokio::time::sleep(by).await;
    }

    fn fail_next(&self, op: VendorOp, count: u32, error: ServiceError) {
        self.failures.fail_next(op, count, error);
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(im_service::SystemClock)
    }

    fn wire_addr(&self) -> Option<SocketAddr> {
        // Raw frames of the reference protocol mean nothing to an XMPP server.
        None
    }
}
