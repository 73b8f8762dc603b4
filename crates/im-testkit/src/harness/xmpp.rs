//! The XMPP harness: a real Prosody started by `tests/prosody/prosody.sh`, accounts created
//! through its admin command, failures injected client-side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use im_service::memory::VendorOp;
use im_service::{Clock, Credentials, ServiceError, Token, UserId};

use im_vendor_sim::{FaultProxy, ProxyConfig};

use super::{ContractConfig, VendorHarness};
use crate::faulty::{Failures, FaultyVendor};

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
}

impl XmppHarness {
    /// A harness on the running Prosody. Panics with the way to start one if none runs.
    /// Must be called inside a tokio runtime (the proxy's tasks run there).
    pub fn start(config: ContractConfig) -> Self {
        let addr = prosody_addr();
        assert!(
            prosody_running(),
            "no Prosody at {addr}: run `tests/prosody/prosody.sh start` (or set IM_PROSODY_ADDR)"
        );
        let proxy = FaultProxy::start_now(addr, ProxyConfig::default())
            .unwrap_or_else(|e| panic!("cannot start the fault proxy: {e}"));
        let mut xmpp = im_service::xmpp::XmppConfig::new(proxy.addr(), XMPP_DOMAIN);
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

    fn network(&self) -> Option<&FaultProxy> {
        Some(&self.proxy)
    }
}
