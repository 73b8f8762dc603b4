//! The TCP test world: a reference server on 127.0.0.1 (port 0), its adapter discovered
//! over real TCP, two registered users (alice, bob) and their direct conversation. The one
//! home of the world `im-arch`'s `over_tcp` tests and `im-qc`'s QC tests run in.

use std::time::Duration;

use im_service::memory::MemoryClient;
use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::{ConversationId, Credentials, UserId, Vendor};

use im_vendor_sim::{ReferenceServer, ServerConfig};

/// A reference server with a default configuration, reachable over TCP, and two users.
///
/// Faults are injected through [`TcpWorld::server`]; clients under test are made from
/// [`TcpWorld::vendor`] (each `client()` opens its own connection). A peer that must not
/// be hit by faults on TCP talks to the server's store in process
/// ([`TcpWorld::in_process`]). Dropping the world stops the server.
///
/// ```no_run
/// # async fn demo() {
/// use std::sync::Arc;
/// use im_arch::ImClient;
/// use im_testkit::TcpWorld;
///
/// let w = TcpWorld::start().await;
/// let alice = w.in_process(&w.alice).await; // faults on TCP do not reach her
/// let bob = ImClient::builder(Arc::new(w.vendor.client()), w.bob.clone()).build();
/// bob.login().await.unwrap();
/// # drop(alice);
/// # }
/// ```
pub struct TcpWorld {
    /// The running server: administration, fault injection, clock.
    pub server: ReferenceServer,
    /// The adapter, discovered from the server, with a [`TcpWorld::REQUEST_TIMEOUT`].
    pub vendor: ReferenceVendor,
    /// Alice, registered.
    pub alice: Credentials,
    /// Bob, registered.
    pub bob: Credentials,
    /// Alice and Bob's direct conversation.
    pub conv: ConversationId,
}

impl std::fmt::Debug for TcpWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpWorld")
            .field("addr", &self.server.addr())
            .field("conv", &self.conv)
            .finish_non_exhaustive()
    }
}

impl TcpWorld {
    /// The adapter's request timeout: short, so that an outage or a dropped connection
    /// shows as failed calls within the tests' deadlines.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

    /// Starts the server on 127.0.0.1 (a free port), discovers it and registers alice
    /// and bob.
    ///
    /// # Panics
    ///
    /// If the server cannot start or be discovered: the test using the world fails.
    pub async fn start() -> TcpWorld {
        let server = match ReferenceServer::start(ServerConfig::default()).await {
            Ok(s) => s,
            Err(e) => panic!("cannot start the reference vendor: {e}"),
        };
        let config = ReferenceConfig {
            request_timeout: Self::REQUEST_TIMEOUT,
            ..ReferenceConfig::default()
        };
        let vendor = match ReferenceVendor::discover(server.addr(), config).await {
            Ok(v) => v,
            Err(e) => panic!("cannot discover the reference vendor: {e}"),
        };
        let alice = server.vendor().register_user(&UserId::new("alice"));
        let bob = server.vendor().register_user(&UserId::new("bob"));
        let conv = ConversationId::direct(&alice.user, &bob.user);
        TcpWorld {
            server,
            vendor,
            alice,
            bob,
            conv,
        }
    }

    /// A client of `who`, logged in, that talks to the server's store in process rather
    /// than over TCP: faults injected on the server's connections do not reach it.
    ///
    /// # Panics
    ///
    /// If the login is refused (`who` is not registered here).
    pub async fn in_process(&self, who: &Credentials) -> MemoryClient {
        let client = self.server.vendor().client();
        if let Err(e) = client.login(who).await {
            panic!("{} cannot log in in process: {e}", who.user);
        }
        client
    }
}
