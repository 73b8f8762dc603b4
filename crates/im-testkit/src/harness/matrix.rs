//! The Matrix harness: a real Synapse started by `tests/synapse/synapse.sh`, accounts
//! registered through Synapse's shared-secret admin API, failures injected client-side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use im_service::matrix::{DevicePolicy, MatrixClient, MatrixConfig, MatrixVendor};
use im_service::memory::VendorOp;
use im_service::{Clock, Credentials, GroupId, ServiceError, Token, UserId, Vendor};
use im_vendor_sim::{FaultProxy, ProxyConfig};

use super::{ContractConfig, VendorHarness};
use crate::faulty::{Failures, FaultyVendor};

/// The server name of the test Synapse (`tests/synapse/homeserver.yaml`).
pub const MATRIX_SERVER_NAME: &str = "localhost";

/// The registration secret of the test Synapse (`tests/synapse/homeserver.yaml`): a fixed
/// test value, never a real secret.
const SHARED_SECRET: &str = "im-layers-test-shared-secret";

/// The password of a Matrix test account (the contract's token), one per user.
fn matrix_password(user: &str) -> String {
    format!("pw-{user}")
}

/// Where the test Synapse answers: `IM_SYNAPSE_URL`, else `http://127.0.0.1:8008`.
pub fn synapse_url() -> String {
    std::env::var("IM_SYNAPSE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8008".into())
        .trim_end_matches('/')
        .to_string()
}

/// The host and port of [`synapse_url`]. Panics when it is not `http://host:port` (a typo
/// must not test some other server).
fn synapse_addr() -> SocketAddr {
    let url = synapse_url();
    let hostport = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("IM_SYNAPSE_URL={url:?} is not http://host:port"));
    hostport
        .parse()
        .unwrap_or_else(|_| panic!("IM_SYNAPSE_URL={url:?} is not http://host:port"))
}

/// Whether a Synapse listens at [`synapse_url`].
pub fn synapse_running() -> bool {
    std::net::TcpStream::connect_timeout(&synapse_addr(), Duration::from_millis(500)).is_ok()
}

/// The gate of every Matrix test: true when a Synapse listens at [`synapse_url`].
/// Otherwise prints why the test is skipped and returns false, or panics when
/// `IM_REQUIRE_SYNAPSE` is set (CI starts a Synapse and sets it).
pub fn synapse_or_skip() -> bool {
    let url = synapse_url();
    match std::net::TcpStream::connect_timeout(&synapse_addr(), Duration::from_millis(500)) {
        Ok(_) => true,
        Err(e) if std::env::var_os("IM_REQUIRE_SYNAPSE").is_some() => {
            panic!("no Synapse at {url} ({e}) although IM_REQUIRE_SYNAPSE is set")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: no Synapse at {url} ({e}); start one with `tests/synapse/synapse.sh start`"
            );
            false
        }
    }
}

/// Registers `user` with `password` on the Synapse at `url` through the shared-secret admin
/// API (`/_synapse/admin/v1/register`: a nonce, then an HMAC-SHA1 over
/// `nonce\0user\0password\0notadmin`). An account that exists already is fine.
pub async fn register_matrix_user(url: &str, user: &str, password: &str) -> Result<(), String> {
    let http = reqwest::Client::new();
    let endpoint = format!("{url}/_synapse/admin/v1/register");
    let nonce = http
        .get(&endpoint)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("nonce: {e}"))?
        .text()
        .await
        .map_err(|e| format!("nonce: {e}"))?;
    let nonce: serde_json::Value =
        serde_json::from_str(&nonce).map_err(|e| format!("nonce: {e}"))?;
    let nonce = nonce["nonce"].as_str().ok_or("no nonce in the answer")?;
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes())
        .map_err(|e| format!("hmac: {e}"))?;
    mac.update(format!("{nonce}\0{user}\0{password}\0notadmin").as_bytes());
    let mac = hex::encode(mac.finalize().into_bytes());
    let body = serde_json::json!({
        "nonce": nonce, "username": user, "password": password, "admin": false, "mac": mac,
    });
    let resp = http
        .post(&endpoint)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("register {user}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status.is_success() || text.contains("M_USER_IN_USE") {
        Ok(())
    } else {
        Err(format!("register {user}: {status} {text}"))
    }
}

/// [`VendorHarness`] for a real Synapse (started by `tests/synapse/synapse.sh`, shared by
/// every harness: accounts and group aliases get a per-harness suffix so cases do not
/// meet). Its clock cannot be moved ([`VendorHarness::advance`] only waits a few seconds);
/// failures are injected client-side ([`FaultyVendor`]).
#[derive(Debug)]
pub struct MatrixHarness {
    /// The adapter.
    pub vendor: MatrixVendor,
    /// The homeserver itself: registration and the harness's own logins go here directly.
    url: String,
    /// Between every contract client and the homeserver ([`VendorHarness::network`]).
    proxy: FaultProxy,
    failures: Failures,
    suffix: String,
    config: ContractConfig,
}

impl MatrixHarness {
    /// The adapter's settings for `config` on the Synapse at `url` with alias prefix
    /// `prefix`: the one mapping [`Target::capabilities`](crate::cases::Target) uses too.
    pub fn matrix_config(config: &ContractConfig, url: &str, prefix: &str) -> MatrixConfig {
        let mut matrix = MatrixConfig::new(url, MATRIX_SERVER_NAME);
        matrix.max_message_bytes = config.max_message_bytes;
        matrix.group_alias_prefix = prefix.to_string();
        // A kick must show within the contract's event wait (5 s).
        matrix.session_check = Duration::from_secs(1);
        if config.multi_device {
            matrix.devices = DevicePolicy::PerHandle("IMLAYERS-".into());
        }
        if let Some(window) = config.recall_window {
            matrix.lifecycle.recall_window = Some(window);
        }
        matrix
    }

    /// A harness on the running Synapse. Panics with the way to start one if none runs.
    /// Must be called inside a tokio runtime (the fault proxy's tasks run there).
    pub fn start(config: ContractConfig) -> Self {
        let url = synapse_url();
        assert!(
            synapse_running(),
            "no Synapse at {url}: run `tests/synapse/synapse.sh start` (or set IM_SYNAPSE_URL)"
        );
        let upstream = url
            .strip_prefix("http://")
            .and_then(|rest| rest.trim_end_matches('/').parse::<SocketAddr>().ok())
            .unwrap_or_else(|| {
                panic!("IM_SYNAPSE_URL={url:?} is not http://IP:PORT (the fault proxy needs one)")
            });
        let proxy = FaultProxy::start_now(upstream, ProxyConfig::default())
            .unwrap_or_else(|e| panic!("cannot start the fault proxy: {e}"));
        let suffix = format!("{:08x}", rand::random::<u32>());
        // Clients speak HTTP to the proxy, which forwards the bytes to Synapse.
        let through_proxy = format!("http://{}", proxy.addr());
        let matrix = Self::matrix_config(&config, &through_proxy, &format!("im-{suffix}-"));
        Self {
            vendor: MatrixVendor::new(matrix),
            url,
            proxy,
            failures: Failures::default(),
            suffix,
            config,
        }
    }

    /// A handle of its own device (never the contract clients' device) logged in as `user`.
    async fn admin_client(&self, user: &UserId) -> MatrixClient {
        let mut config =
            Self::matrix_config(&self.config, &self.url, &format!("im-{}-", self.suffix));
        config.devices = DevicePolicy::Shared("IMLAYERS-HARNESS".into());
        let client = MatrixVendor::new(config).client();
        let creds = Credentials::new(user.as_str(), matrix_password(user.as_str()));
        if let Err(e) = client.login(&creds).await {
            panic!("harness login of {user} failed: {e}");
        }
        client
    }
}

#[async_trait]
impl VendorHarness for MatrixHarness {
    type Client = FaultyVendor<MatrixClient>;

    fn config(&self) -> &ContractConfig {
        &self.config
    }

    async fn user(&self, name: &str) -> Credentials {
        let user = format!("{name}-{}", self.suffix);
        if let Err(e) = register_matrix_user(&self.url, &user, &matrix_password(&user)).await {
            panic!("{e}");
        }
        Credentials {
            token: Token::new(matrix_password(&user)),
            user: UserId::new(user),
        }
    }

    async fn token(&self, user: &UserId, _ttl: Duration) -> Token {
        // Passwords do not expire (no TokenExpiry capability): the TTL cannot apply.
        Token::new(matrix_password(user.as_str()))
    }

    async fn group(&self, id: &str, members: &[UserId]) {
        let Some((creator, others)) = members.split_first() else {
            panic!("group {id} without members");
        };
        let group = GroupId::new(id);
        let admin = self.admin_client(creator).await;
        if let Err(e) = admin.create_group(&group, members).await {
            panic!("cannot create group {id}: {e}");
        }
        let _ = admin.logout().await;
        for member in others {
            let c = self.admin_client(member).await;
            if let Err(e) = c.join_group(&group).await {
                panic!("{member} cannot join group {id}: {e}");
            }
            let _ = c.logout().await;
        }
    }

    async fn client(&self) -> Self::Client {
        FaultyVendor::new(Arc::new(self.vendor.client()), rand::random())
            .with_failures(self.failures.clone())
    }

    async fn advance(&self, by: Duration) {
        super::wait_real_time(by).await;
    }

    fn fail_next(&self, op: VendorOp, count: u32, error: ServiceError) {
        self.failures.fail_next(op, count, error);
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(im_service::SystemClock)
    }

    fn wire_addr(&self) -> Option<SocketAddr> {
        // Raw frames of the reference protocol mean nothing to a Matrix server.
        None
    }

    fn network(&self) -> Option<&FaultProxy> {
        Some(&self.proxy)
    }

    fn persistent_connection(&self) -> bool {
        // Every call is its own HTTP request over reqwest's connection pool: a dropped idle
        // connection is replaced silently, and a cut may hit any request of a send.
        false
    }
}
