//! What the app configures on a client: its tunables ([`ClientConfig`]) and where fresh
//! tokens come from ([`TokenProvider`]). A leaf: it names no other part of the client.

use std::time::Duration;

use async_trait::async_trait;
use im_service::{ServiceError, Token, UserId};

use crate::retry::{Backoff, Jitter, RetryPolicy};

/// Where fresh tokens come from (the company backend). Called once per expiry.
#[async_trait]
pub trait TokenProvider: Send + Sync {
    /// A token for `user` that is valid now.
    async fn token(&self, user: &UserId) -> Result<Token, ServiceError>;
}

/// Tunables of the client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Time between heartbeats while online.
    pub heartbeat_interval: Duration,
    /// A heartbeat unanswered for this long counts as missed.
    pub heartbeat_timeout: Duration,
    /// Consecutive misses that mean the connection is dead.
    pub max_missed_heartbeats: u32,
    /// Delays between reconnect attempts.
    pub reconnect: Backoff,
    /// Give up reconnecting after this many attempts (`None`: never).
    pub max_reconnect_attempts: Option<u32>,
    /// Retries of pulls, acks and going online.
    pub retry: RetryPolicy,
    /// Offline batch size asked for.
    pub offline_batch: u32,
    /// Largest hole filled live; older parts stay reachable as history.
    pub gap_fill_limit: u64,
    /// Page size of gap fills and catch-up pulls.
    pub page_size: u32,
    /// Queue size of each subscription.
    pub subscriber_capacity: usize,
    /// How many of the most recently active conversations are checked for a lost tail
    /// after every (re)connect.
    pub catch_up_conversations: usize,
    /// Most pages of the all-conversations catch-up query after a reconnect.
    pub catch_up_pages: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(10),
            max_missed_heartbeats: 2,
            reconnect: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
                jitter: Jitter::Full,
            },
            max_reconnect_attempts: None,
            retry: RetryPolicy::default(),
            offline_batch: 200,
            gap_fill_limit: 500,
            page_size: 100,
            subscriber_capacity: 1024,
            catch_up_conversations: 50,
            catch_up_pages: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failure class 7: the client retries with the default policy (pinned in
    /// `retry::tests`) and spreads its reconnects with full jitter. (Moved here from
    /// `retry::tests::the_default_policy_retries_at_least_three_times_with_full_jitter`.)
    #[test]
    fn the_client_uses_the_default_policy_and_jittered_reconnects() {
        let client = ClientConfig::default();
        assert_eq!(
            client.retry,
            RetryPolicy::default(),
            "the client uses the default policy"
        );
        assert_eq!(
            client.reconnect.jitter,
            Jitter::Full,
            "reconnects are spread with full jitter"
        );
    }
}
