//! The XMPP harness: a real XMPP server — Prosody (`tests/prosody/prosody.sh`) or ejabberd
//! (`tests/ejabberd/ejabberd.sh`), one adapter for both — accounts created through the
//! server's own admin command or API, failures injected client-side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use im_service::memory::VendorOp;
use im_service::xmpp::XmppServerFeatures;
use im_service::{Clock, Credentials, ServiceError, Token, UserId};

use im_vendor_sim::{FaultProxy, ProxyConfig};

use super::{ContractConfig, VendorHarness};
use crate::faulty::{Failures, FaultyVendor};

/// The XMPP domain of the test servers (`tests/prosody/prosody.cfg.lua`,
/// `tests/ejabberd/ejabberd.yml`).
pub const XMPP_DOMAIN: &str = "im.test";

/// The password of an XMPP test account (the contract's token): one per user, so one
/// user's token does not open another's account.
fn xmpp_password(user: &str) -> String {
    format!("pw-{user}")
}

/// One XMPP server deployment the suite runs the same adapter against: where it listens,
/// how accounts are made on it, and which variable turns a missing server into a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmppServer {
    /// The server's name in messages ("Prosody", "ejabberd").
    pub name: &'static str,
    /// The variable with its `host:port` (e.g. `IM_PROSODY_ADDR`).
    pub addr_var: &'static str,
    /// Where it listens when the variable is unset.
    pub default_port: u16,
    /// The variable with the script's state directory (e.g. `IM_PROSODY_DIR`), passed on
    /// to the script's `register` when a caller names another directory.
    pub dir_var: &'static str,
    /// The variable CI sets: then a missing server fails the tests instead of skipping them.
    pub require_var: &'static str,
    /// The script that starts, stops and registers on it, relative to the repository.
    pub script: &'static str,
    /// The XMPP domain its accounts live on.
    pub domain: &'static str,
    /// What the adapter is configured with for this deployment (checked against the
    /// server's disco#info at login).
    pub features: XmppServerFeatures,
}

/// The test Prosody 0.12 (`tests/prosody/prosody.sh`): no XEP-0013.
pub const PROSODY: XmppServer = XmppServer {
    name: "Prosody",
    addr_var: "IM_PROSODY_ADDR",
    default_port: 5222,
    dir_var: "IM_PROSODY_DIR",
    require_var: "IM_REQUIRE_PROSODY",
    script: "tests/prosody/prosody.sh",
    domain: XMPP_DOMAIN,
    features: XmppServerFeatures {
        carbons: true,
        flexible_offline: false,
        mam: true,
        stream_management: true,
    },
};

/// The test ejabberd 23.01 (`tests/ejabberd/ejabberd.sh`, accounts through its admin API):
/// offers XEP-0013 flexible offline retrieval too.
pub const EJABBERD: XmppServer = XmppServer {
    name: "ejabberd",
    addr_var: "IM_EJABBERD_ADDR",
    default_port: 5322,
    dir_var: "IM_EJABBERD_DIR",
    require_var: "IM_REQUIRE_EJABBERD",
    script: "tests/ejabberd/ejabberd.sh",
    domain: XMPP_DOMAIN,
    features: XmppServerFeatures {
        carbons: true,
        flexible_offline: true,
        mam: true,
        stream_management: true,
    },
};

impl XmppServer {
    /// Where the server listens: `$addr_var`, else 127.0.0.1:`default_port`. Panics when
    /// the variable is set but not `host:port` (a typo must not test some other server).
    pub fn addr(&self) -> SocketAddr {
        match std::env::var(self.addr_var) {
            Ok(a) => a
                .parse()
                .unwrap_or_else(|_| panic!("{}={a:?} is not host:port", self.addr_var)),
            Err(_) => SocketAddr::from(([127, 0, 0, 1], self.default_port)),
        }
    }

    /// Whether the server answers at [`XmppServer::addr`].
    pub fn running(&self) -> bool {
        std::net::TcpStream::connect_timeout(&self.addr(), Duration::from_millis(500)).is_ok()
    }

    /// The gate of every test on this server: true when it answers. Otherwise prints why
    /// the test is skipped and returns false, or panics when `$require_var` is set: CI
    /// starts the server and sets it, so there a missing server is a failure, not a skip.
    pub fn or_skip(&self) -> bool {
        let addr = self.addr();
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(_) => true,
            Err(e) if std::env::var_os(self.require_var).is_some() => panic!(
                "no {} at {addr} ({e}) although {} is set",
                self.name, self.require_var
            ),
            Err(e) => {
                eprintln!(
                    "SKIPPED: no {} at {addr} ({e}); start one with `{} start`",
                    self.name, self.script
                );
                false
            }
        }
    }

    /// The adapter's settings for this server: its address and domain, and the features
    /// this deployment is configured with.
    pub fn xmpp_config(&self) -> im_service::xmpp::XmppConfig {
        let mut config = im_service::xmpp::XmppConfig::new(self.addr(), self.domain);
        config.server = self.features;
        config
    }

    /// Registers (or re-registers) `user` with `password` on this server, whose state lives
    /// in `dir` (`None`: `$dir_var`), through its script's `register`.
    pub async fn register(
        &self,
        user: &str,
        password: &str,
        dir: Option<&std::path::Path>,
    ) -> Result<(), String> {
        let script: std::path::PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "..", self.script]
            .iter()
            .collect();
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(script).args(["register", user, password]);
        if let Some(dir) = dir {
            cmd.env(self.dir_var, dir);
        }
        match cmd.output().await {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "cannot register {user} on {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => Err(format!("cannot run {}: {e}", self.script)),
        }
    }
}

/// Where the test Prosody listens ([`PROSODY`]'s [`XmppServer::addr`]).
pub fn prosody_addr() -> SocketAddr {
    PROSODY.addr()
}

/// Whether a Prosody answers at [`prosody_addr`].
pub fn prosody_running() -> bool {
    PROSODY.running()
}

/// The gate of every Prosody test ([`PROSODY`]'s [`XmppServer::or_skip`]).
pub fn prosody_or_skip() -> bool {
    PROSODY.or_skip()
}

/// [`VendorHarness`] for a real XMPP server ([`XmppServer`]: Prosody or ejabberd, started
/// by its script and shared by every harness: accounts get a per-harness suffix so cases
/// do not meet). What a real
/// server cannot do is declared, not faked: its clock cannot be moved
/// ([`VendorHarness::advance`] panics; cases needing it are "not applicable"), and groups
/// are not mapped. Failures are injected client-side ([`FaultyVendor`]), before the call
/// reaches the server; network faults by the [`FaultProxy`] every client connects through
/// (accounts are registered directly, through the server's admin command).
#[derive(Debug)]
pub struct XmppHarness {
    /// The adapter, pointed at the proxy.
    pub vendor: im_service::xmpp::XmppVendor,
    /// The proxy between the clients and Prosody.
    pub proxy: FaultProxy,
    failures: Failures,
    suffix: String,
    config: ContractConfig,
    server: &'static XmppServer,
}

impl XmppHarness {
    /// A harness on the running Prosody. Panics with the way to start one if none runs.
    /// Must be called inside a tokio runtime (the proxy's tasks run there).
    pub fn start(config: ContractConfig) -> Self {
        Self::start_on(&PROSODY, config)
    }

    /// A harness on the running `server`. Panics with the way to start one if none runs.
    pub fn start_on(server: &'static XmppServer, config: ContractConfig) -> Self {
        assert!(
            server.running(),
            "no {} at {}: run `{} start` (or set {})",
            server.name,
            server.addr(),
            server.script,
            server.addr_var
        );
        let proxy = FaultProxy::start_now(server.addr(), ProxyConfig::default())
            .unwrap_or_else(|e| panic!("cannot start the fault proxy: {e}"));
        let mut xmpp = server.xmpp_config();
        // Clients reach the server through the proxy; registration goes to it directly.
        xmpp.addr = proxy.addr();
        xmpp.max_message_bytes = config.max_message_bytes;
        // Several devices of one user: a resource per client handle, carbons on.
        xmpp.multi_device = config.multi_device;
        if let Some(window) = config.recall_window {
            xmpp.lifecycle.recall_window = Some(window);
        }
        Self {
            vendor: im_service::xmpp::XmppVendor::new(xmpp),
            proxy,
            failures: Failures::default(),
            suffix: format!("{:08x}", rand::random::<u32>()),
            config,
            server,
        }
    }

    /// The server this harness runs on.
    pub fn server(&self) -> &'static XmppServer {
        self.server
    }
}

/// Registers (or re-registers) `user` with `password` on the test Prosody whose data lives in
/// `dir` (`None`: `$IM_PROSODY_DIR`), through `tests/prosody/prosody.sh register`.
pub async fn register_xmpp_user(
    user: &str,
    password: &str,
    dir: Option<&std::path::Path>,
) -> Result<(), String> {
    PROSODY.register(user, password, dir).await
}

#[async_trait]
impl VendorHarness for XmppHarness {
    type Client = FaultyVendor<im_service::xmpp::XmppClient>;

    fn config(&self) -> &ContractConfig {
        &self.config
    }

    async fn user(&self, name: &str) -> Credentials {
        let user = format!("{name}-{}", self.suffix);
        if let Err(e) = self
            .server
            .register(&user, &xmpp_password(&user), None)
            .await
        {
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

    fn network(&self) -> Option<&FaultProxy> {
        Some(&self.proxy)
    }
}
