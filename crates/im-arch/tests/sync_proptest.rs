//! Property: whatever the vendor does to the push stream (duplicates, reorderings, losses)
//! and however often the connection drops, every conversation is delivered to a subscriber
//! exactly as sent: each message once, in sequence order.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use im_arch::{Backoff, ClientConfig, ClientEvent, ImClient, Jitter, RetryPolicy};
use im_service::memory::{MemoryVendor, MemoryVendorConfig};
use im_service::{Content, ConversationId, Message, OutgoingMessage, Timestamp, UserId, Vendor};
use im_testkit::{FaultyVendor, PushFaults};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    /// Peer `i` sends Bob a message.
    Send(usize),
    /// Bob's connection breaks.
    Disconnect,
    /// Time passes (heartbeats, backoff).
    Wait(u64),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![
            6 => (0usize..3).prop_map(Step::Send),
            1 => Just(Step::Disconnect),
            1 => (1u64..3000).prop_map(Step::Wait),
        ],
        1..40,
    )
}

fn config() -> ClientConfig {
    ClientConfig {
        heartbeat_interval: Duration::from_secs(5),
        heartbeat_timeout: Duration::from_secs(1),
        reconnect: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            jitter: Jitter::Full,
        },
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: Backoff {
                base: Duration::from_millis(50),
                max: Duration::from_millis(500),
                jitter: Jitter::Full,
            },
            deadline: None,
        },
        offline_batch: 3,
        ..ClientConfig::default()
    }
}

async fn run(
    steps: Vec<Step>,
    seed: u64,
    duplicate: f64,
    reorder: bool,
    lose_one_in: u64,
) -> Result<(), TestCaseError> {
    let vendor = MemoryVendor::new(MemoryVendorConfig::default());
    let bob = vendor.register_user(&UserId::new("bob"));
    let mut peers = Vec::new();
    for name in ["alice", "carol", "dave"] {
        let creds = vendor.register_user(&UserId::new(name));
        let c = vendor.client();
        c.login(&creds).await.unwrap();
        peers.push((c, ConversationId::direct(&creds.user, &bob.user)));
    }
    let faulty = Arc::new(FaultyVendor::new(Arc::new(vendor.client()), seed));
    let lose: im_testkit::faulty::LoseFilter = Arc::new(move |m: &Message| {
        lose_one_in > 0
            && m.seq.is_some_and(|s| {
                (s.0.wrapping_mul(2_654_435_761) ^ seed).is_multiple_of(lose_one_in)
            })
    });
    faulty.set_push_faults(PushFaults {
        duplicate,
        reorder,
        lose: Some(lose),
    });
    let client = ImClient::builder(faulty, bob.clone())
        .config(config())
        .build();
    let mut sub = client.subscribe();
    client.login().await.unwrap();

    let mut sent: HashMap<ConversationId, u64> = HashMap::new();
    for step in steps {
        match step {
            Step::Send(i) => {
                let (c, conv) = &peers[i];
                let msg = OutgoingMessage::new(
                    conv.clone(),
                    Content::text("x"),
                    Timestamp::from_millis(0),
                );
                c.send(&msg).await.unwrap();
                *sent.entry(conv.clone()).or_default() += 1;
            }
            Step::Disconnect => vendor.disconnect(&bob.user),
            Step::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
        tokio::task::yield_now().await;
    }
    // A lost final push is only noticed at the next (re)connect: force one.
    client.reconnect_now().await;

    let mut delivered: HashMap<ConversationId, Vec<u64>> = HashMap::new();
    let complete = |d: &HashMap<ConversationId, Vec<u64>>| {
        sent.iter()
            .all(|(c, n)| d.get(c).map_or(0, Vec::len) as u64 >= *n)
    };
    // One bound for the whole wait: heartbeats must not keep an incomplete run alive.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    while !complete(&delivered) {
        match tokio::time::timeout_at(deadline, sub.recv())
            .await
            .map(|ev| ev.as_deref().cloned())
        {
            Ok(Some(ClientEvent::Message(r))) => delivered
                .entry(r.message.conversation.clone())
                .or_default()
                .push(r.message.seq.map_or(0, |s| s.0)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // Let anything extra (a duplicate) surface before judging.
    let settle = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(ev)) = tokio::time::timeout_at(settle, sub.recv()).await {
        if let ClientEvent::Message(r) = &*ev {
            delivered
                .entry(r.message.conversation.clone())
                .or_default()
                .push(r.message.seq.map_or(0, |s| s.0));
        }
    }
    client.logout().await;
    for (conv, n) in &sent {
        let expected: Vec<u64> = (1..=*n).collect();
        prop_assert_eq!(
            delivered.get(conv).cloned().unwrap_or_default(),
            expected,
            "conversation {}",
            conv
        );
    }
    prop_assert_eq!(delivered.len(), sent.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_conversation_is_delivered_exactly_as_sent(
        steps in steps(),
        seed in any::<u64>(),
        duplicate in prop_oneof![Just(0.0), Just(0.3), Just(1.0)],
        reorder in any::<bool>(),
        lose_one_in in prop_oneof![Just(0u64), Just(3), Just(7)],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(run(steps, seed, duplicate, reorder, lose_one_in))?;
    }
}
