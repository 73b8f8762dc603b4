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

use im_vendor_sim::{FaultProxy, ReferenceServer, ServerConfig};

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

    /// The fault-injecting proxy every client of this harness connects through
    /// ([`HarnessNeed::NetworkFaults`](crate::cases::HarnessNeed::NetworkFaults)); `None`
    /// when there is no network between client and vendor (the in-process memory vendor).
    fn network(&self) -> Option<&FaultProxy> {
        None
    }

    /// Whether a logged-in client of this vendor holds one long-lived connection (a stream,
    /// as XMPP and the reference protocol keep), so a dropped or cut connection is something
    /// the client itself sees: it reconnects, and the request in flight fails. `false` for a
    /// vendor reached by independent requests (Matrix over HTTP), whose HTTP client opens a
    /// new connection for the next request, so a drop between requests goes unnoticed and a
    /// cut may fall on another request than the one aimed at. The network cases assert
    /// "noticed" and "the cut send fails" only where this is true; what holds for every
    /// vendor (nothing lost, nothing twice, order kept, typed errors, no hang) they assert
    /// everywhere. The default is the stricter `true`.
    fn persistent_connection(&self) -> bool {
        true
    }
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
/// test process, reached through the `reference` adapter. Clients connect through a
/// [`FaultProxy`] (network faults, as on a real vendor); administration and raw-frame cases
/// go to the server directly.
#[derive(Debug)]
pub struct ReferenceHarness {
    /// The running server (administration, faults, clock).
    pub server: ReferenceServer,
    /// The adapter, discovered through the proxy: its clients connect through it.
    pub vendor: ReferenceVendor,
    /// The proxy between the clients and the server.
    pub proxy: FaultProxy,
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
        let proxy = match FaultProxy::start(server.addr()).await {
            Ok(p) => p,
            Err(e) => panic!("cannot start the fault proxy: {e}"),
        };
        let vendor = match ReferenceVendor::discover(proxy.addr(), ReferenceConfig::default()).await
        {
            Ok(v) => v,
            Err(e) => panic!("cannot discover the reference vendor: {e}"),
        };
        Self {
            server,
            vendor,
            proxy,
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

    fn network(&self) -> Option<&FaultProxy> {
        Some(&self.proxy)
    }
}

/// [`VendorHarness::advance`] on a real server, whose time moves only by waiting: fine for
/// the few seconds a case uses to separate timestamps, impossible for days (such cases need
/// [`HarnessNeed::VendorClock`](crate::cases::HarnessNeed::VendorClock)).
async fn wait_real_time(by: Duration) {
    assert!(
        by <= Duration::from_secs(5),
        "a real server's clock cannot move {by:?}: the case needs VendorClock"
    );
    tokio::time::sleep(by).await;
}

mod xmpp;

pub use xmpp::{
    EJABBERD, PROSODY, XMPP_DOMAIN, XmppHarness, XmppServer, prosody_addr, prosody_or_skip,
    prosody_running, register_xmpp_user,
};

mod matrix;

pub use matrix::{
    MATRIX_SERVER_NAME, MatrixHarness, register_matrix_user, synapse_or_skip, synapse_running,
    synapse_url,
};
