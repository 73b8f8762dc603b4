//! What keeps strangers from knocking the reference vendor over: failed-login throttling
//! per account and per peer address, built on the workspace's one failure throttle and
//! warning limit (`im_service::throttle`).
//!
//! Runs on tokio's clock, so tests move it with `tokio::time::pause`/`advance`.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::time::Duration;

use im_service::UserId;
pub use im_service::throttle::FailureBudget;
use im_service::throttle::FailureThrottle;
pub(crate) use im_service::throttle::WarnLimit;
use parking_lot::Mutex;
use tokio::time::Instant;

/// Failed-login throttling of the reference vendor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginThrottleConfig {
    /// Per account (user name, registered or not): stops guessing one account's token. A
    /// successful login clears the account's record.
    pub per_account: FailureBudget,
    /// Per peer IP address: stops one peer from spraying guesses over many accounts.
    pub per_peer: FailureBudget,
    /// Most accounts, and most peers, remembered at once: past it the records that have
    /// fully refilled (they carry nothing) go first, then the one closest to refilled.
    pub max_tracked: usize,
}

impl Default for LoginThrottleConfig {
    fn default() -> Self {
        Self {
            // 5 guesses, then one every 5 s: a legitimate user with a stale token is slowed
            // only after 5 mistakes; a guesser gets ~720 an hour.
            per_account: FailureBudget {
                burst: 5,
                refill: Duration::from_secs(5),
            },
            // A peer behind a NAT may host many users: more room, refilled faster.
            per_peer: FailureBudget {
                burst: 20,
                refill: Duration::from_secs(1),
            },
            max_tracked: 10_000,
        }
    }
}

/// Failed-login throttling per account and per peer address (see [`LoginThrottleConfig`]).
/// Accounts are remembered by a keyed hash of the name, not the name: a stranger chooses
/// names (up to a frame's length), and the table must be bounded in bytes, not only keys.
#[derive(Debug)]
pub(crate) struct LoginThrottle {
    accounts: Mutex<FailureThrottle<u64>>,
    peers: Mutex<FailureThrottle<IpAddr>>,
    /// Random per server, so a stranger cannot pick names that collide.
    hasher: RandomState,
}

impl LoginThrottle {
    pub(crate) fn new(config: &LoginThrottleConfig) -> Self {
        Self {
            accounts: Mutex::new(FailureThrottle::new(config.per_account, config.max_tracked)),
            peers: Mutex::new(FailureThrottle::new(config.per_peer, config.max_tracked)),
            hasher: RandomState::new(),
        }
    }

    fn account(&self, user: &UserId) -> u64 {
        self.hasher.hash_one(user.as_str())
    }

    /// `Err(wait)` if `peer` or `user` has used up its failures: the attempt is refused
    /// before its credentials are looked at.
    pub(crate) fn check(&self, peer: IpAddr, user: &UserId) -> Result<(), Duration> {
        let now = Instant::now();
        let by_peer = self.peers.lock().check(&peer, now);
        let by_account = self.accounts.lock().check(&self.account(user), now);
        match (by_peer, by_account) {
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(w), Ok(())) | (Ok(()), Err(w)) => Err(w),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// Records a refused login.
    pub(crate) fn failed(&self, peer: IpAddr, user: &UserId) {
        let now = Instant::now();
        self.peers.lock().fail(&peer, now);
        self.accounts.lock().fail(&self.account(user), now);
    }

    /// Records an accepted login: the account starts afresh (the peer does not: it may be
    /// guessing other accounts).
    pub(crate) fn succeeded(&self, user: &UserId) {
        self.accounts.lock().clear(&self.account(user));
    }

    /// Accounts and peers remembered (for tests of the bound).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> (usize, usize) {
        (self.accounts.lock().len(), self.peers.lock().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_gets_its_burst_then_one_failure_per_refill() {
        let t = LoginThrottle::new(&LoginThrottleConfig {
            per_account: FailureBudget {
                burst: 3,
                refill: Duration::from_secs(10),
            },
            per_peer: FailureBudget {
                burst: 1000,
                refill: Duration::from_millis(1),
            },
            max_tracked: 100,
        });
        let bob = UserId::new("bob");
        for i in 0..3 {
            assert_eq!(
                t.check(ip(i), &bob),
                Ok(()),
                "failure {i} is within the burst"
            );
            t.failed(ip(i), &bob);
        }
        assert_eq!(
            t.check(ip(9), &bob),
            Err(Duration::from_secs(10)),
            "the account is throttled from any peer"
        );
        assert_eq!(t.check(ip(9), &UserId::new("carol")), Ok(()));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.check(ip(9), &bob), Ok(()), "one more after a refill");
        t.failed(ip(9), &bob);
        assert_eq!(t.check(ip(9), &bob), Err(Duration::from_secs(10)));
        t.succeeded(&bob);
        assert_eq!(t.check(ip(9), &bob), Ok(()), "a success clears the account");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_is_throttled_across_accounts() {
        let t = LoginThrottle::new(&LoginThrottleConfig {
            per_peer: FailureBudget {
                burst: 2,
                refill: Duration::from_secs(1),
            },
            ..LoginThrottleConfig::default()
        });
        t.failed(ip(1), &UserId::new("a"));
        t.failed(ip(1), &UserId::new("b"));
        assert_eq!(
            t.check(ip(1), &UserId::new("c")),
            Err(Duration::from_secs(1))
        );
        assert_eq!(t.check(ip(2), &UserId::new("c")), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_tables_stay_bounded() {
        let t = LoginThrottle::new(&LoginThrottleConfig {
            max_tracked: 50,
            ..LoginThrottleConfig::default()
        });
        for i in 0..10_000u32 {
            t.failed(ip((i % 200) as u8), &UserId::new(format!("u{i}")));
        }
        let (accounts, peers) = t.tracked();
        assert!(accounts <= 50, "{accounts} accounts remembered");
        assert!(peers <= 50, "{peers} peers remembered");
    }
}
