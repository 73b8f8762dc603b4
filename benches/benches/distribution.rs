//! Distribution throughput of the bus, each group with its baselines in the same run:
//! * fan-out, 1 publisher → 1/4/16/64 Reliable subscribers (deliveries/s), against
//!   `tokio::sync::broadcast` (which may drop: only what arrived is counted) and against one
//!   `tokio::sync::mpsc` per subscriber. Every channel carries the same `Arc`ed event, so
//!   the comparison is of routing and queueing, not of deep copies.
//! * routing: 10,000 conversations, 1,000 subscribers each following 10 of them, random
//!   publishes (messages/s, publish + every subscriber draining its queue), against a naive
//!   `HashMap<conversation, Vec<mpsc::Sender>>` router doing the same: once copying the
//!   event per subscriber (the naive router), once sharing it in an `Arc` (to show what the
//!   index alone buys).

// A benchmark binary: a panic is how it reports a broken invariant, and criterion macros
// generate undocumented items.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use im_arch::{Bus, ClientEvent, DeliveryPolicy, EventKind, Filter};
use im_service::{
    ClientMsgId, Content, ConversationId, Message, Origin, ReceivedMessage, Seq, ServerMsgId,
    Timestamp, UserId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::runtime::Runtime;
use tokio::sync::{broadcast, mpsc};

const FANOUT_EVENTS: u64 = 10_000;
const CAPACITY: usize = 1024;
const CONVERSATIONS: usize = 10_000;
const SUBSCRIBERS: usize = 1_000;
const FOLLOWED: usize = 10;
const PUBLISHES: usize = 20_000;

fn event(conversation: ConversationId, i: u64) -> ClientEvent {
    ClientEvent::Message(ReceivedMessage {
        message: Message {
            server_id: ServerMsgId::new(format!("m{i}")),
            client_id: ClientMsgId::new(format!("c{i}")),
            conversation,
            sender: UserId::new("peer"),
            seq: Some(Seq(i + 1)),
            server_time: Timestamp::from_millis(i as i64),
            client_time: Timestamp::from_millis(i as i64),
            content: Content::text("x".repeat(100)),
        },
        origin: Origin::Online,
    })
}

fn fan_out(c: &mut Criterion, rt: &Runtime) {
    let conversation = ConversationId::group("room");
    let shared: Vec<Arc<ClientEvent>> = (0..FANOUT_EVENTS)
        .map(|i| Arc::new(event(conversation.clone(), i)))
        .collect();
    let mut group = c.benchmark_group("fanout_reliable");
    group.sample_size(10);
    for n in [1usize, 4, 16, 64] {
        group.throughput(Throughput::Elements(FANOUT_EVENTS * n as u64));
        group.bench_with_input(BenchmarkId::new("bus_reliable", n), &n, |b, &n| {
            b.iter(|| {
                rt.block_on(async {
                    let bus: Bus<ClientEvent> = Bus::new();
                    let readers: Vec<_> = (0..n)
                        .map(|_| {
                            let mut s = bus.subscribe(
                                Filter::all(),
                                DeliveryPolicy::Reliable { capacity: CAPACITY },
                            );
                            tokio::spawn(async move {
                                let mut got = 0u64;
                                while s.recv().await.is_some() {
                                    got += 1;
                                }
                                got
                            })
                        })
                        .collect();
                    for e in &shared {
                        bus.publish_shared(e.clone()).await;
                    }
                    drop(bus);
                    let mut total = 0;
                    for r in readers {
                        total += r.await.unwrap();
                    }
                    // Reliable: nothing lost.
                    assert_eq!(total, FANOUT_EVENTS * n as u64);
                })
            })
        });
        group.bench_with_input(BenchmarkId::new("baseline_broadcast", n), &n, |b, &n| {
            // broadcast drops what a slow receiver misses: time is scaled to what was
            // actually delivered, so the figure is true deliveries/s.
            b.iter_custom(|iters| {
                let mut elapsed = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let start = std::time::Instant::now();
                    let delivered = rt.block_on(async {
                        let (tx, _) = broadcast::channel::<Arc<ClientEvent>>(CAPACITY);
                        let readers: Vec<_> = (0..n)
                            .map(|_| {
                                let mut rx = tx.subscribe();
                                tokio::spawn(async move {
                                    let mut got = 0u64;
                                    loop {
                                        match rx.recv().await {
                                            Ok(_) => got += 1,
                                            Err(broadcast::error::RecvError::Lagged(_)) => {}
                                            Err(broadcast::error::RecvError::Closed) => break,
                                        }
                                    }
                                    got
                                })
                            })
                            .collect();
                        for e in &shared {
                            // Never waits: a slow receiver lags and loses events.
                            tx.send(e.clone()).unwrap();
                        }
                        drop(tx);
                        let mut total = 0;
                        for r in readers {
                            total += r.await.unwrap();
                        }
                        total
                    });
                    let expected = FANOUT_EVENTS * n as u64;
                    elapsed += start
                        .elapsed()
                        .mul_f64(expected as f64 / delivered.max(1) as f64);
                }
                elapsed
            })
        });
        group.bench_with_input(
            BenchmarkId::new("baseline_mpsc_per_subscriber", n),
            &n,
            |b, &n| {
                b.iter(|| {
                    rt.block_on(async {
                        let (senders, readers): (Vec<_>, Vec<_>) = (0..n)
                            .map(|_| {
                                let (tx, mut rx) = mpsc::channel::<Arc<ClientEvent>>(CAPACITY);
                                let reader = tokio::spawn(async move {
                                    let mut got = 0u64;
                                    while rx.recv().await.is_some() {
                                        got += 1;
                                    }
                                    got
                                });
                                (tx, reader)
                            })
                            .unzip();
                        for e in &shared {
                            for tx in &senders {
                                tx.send(e.clone()).await.unwrap();
                            }
                        }
                        drop(senders);
                        let mut total = 0;
                        for r in readers {
                            total += r.await.unwrap();
                        }
                        assert_eq!(total, FANOUT_EVENTS * n as u64);
                    })
                })
            },
        );
    }
    group.finish();
}

/// Who follows what, and the publish sequence: seeded, the same for both routers.
fn routing_world() -> (Vec<ConversationId>, Vec<Vec<usize>>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(7);
    let conversations: Vec<ConversationId> = (0..CONVERSATIONS)
        .map(|i| ConversationId::group(format!("g{i:05}")))
        .collect();
    let follows: Vec<Vec<usize>> = (0..SUBSCRIBERS)
        .map(|_| {
            (0..FOLLOWED)
                .map(|_| rng.random_range(0..CONVERSATIONS))
                .collect()
        })
        .collect();
    let publishes: Vec<usize> = (0..PUBLISHES)
        .map(|_| rng.random_range(0..CONVERSATIONS))
        .collect();
    (conversations, follows, publishes)
}

fn routing(c: &mut Criterion) {
    let (conversations, follows, publishes) = routing_world();
    let events: Vec<ClientEvent> = publishes
        .iter()
        .enumerate()
        .map(|(i, &c)| event(conversations[c].clone(), i as u64))
        .collect();
    let shared: Vec<Arc<ClientEvent>> = events.into_iter().map(Arc::new).collect();
    let mut group = c.benchmark_group("routing_10000_conversations_1000_subscribers");
    group.throughput(Throughput::Elements(PUBLISHES as u64));
    group.sample_size(20);

    // The bus: each subscriber follows its 10 conversations, Message events only.
    let bus: Bus<ClientEvent> = Bus::new();
    let mut streams: Vec<_> = follows
        .iter()
        .map(|f| {
            bus.subscribe(
                Filter::of([EventKind::Message])
                    .in_conversations(f.iter().map(|&c| conversations[c].clone())),
                DeliveryPolicy::Reliable { capacity: 1 << 16 },
            )
        })
        .collect();
    group.bench_function("bus_subscription_index", |b| {
        b.iter(|| {
            for e in &shared {
                assert_eq!(bus.try_publish_shared(e.clone()), 0);
            }
            let mut got = 0usize;
            for s in &mut streams {
                got += s.drain_now().len();
            }
            got
        })
    });

    // The naive router: conversation → senders, one mpsc per subscriber, each subscriber
    // getting its own copy of the event (what a router without shared payloads does).
    let mut router: HashMap<ConversationId, Vec<mpsc::Sender<ClientEvent>>> = HashMap::new();
    let mut receivers = Vec::new();
    for f in &follows {
        let (tx, rx) = mpsc::channel(1 << 16);
        for &c in f {
            router
                .entry(conversations[c].clone())
                .or_default()
                .push(tx.clone());
        }
        receivers.push(rx);
    }
    group.bench_function("baseline_hashmap_of_mpsc_senders_copying", |b| {
        b.iter(|| {
            for e in &shared {
                let ClientEvent::Message(r) = &**e else {
                    unreachable!()
                };
                if let Some(senders) = router.get(&r.message.conversation) {
                    for tx in senders {
                        tx.try_send((**e).clone()).unwrap();
                    }
                }
            }
            let mut got = 0usize;
            for rx in &mut receivers {
                while rx.try_recv().is_ok() {
                    got += 1;
                }
            }
            got
        })
    });

    // The same router with shared payloads (`Arc`): what the index alone buys.
    let mut router: HashMap<ConversationId, Vec<mpsc::Sender<Arc<ClientEvent>>>> = HashMap::new();
    let mut receivers = Vec::new();
    for f in &follows {
        let (tx, rx) = mpsc::channel(1 << 16);
        for &c in f {
            router
                .entry(conversations[c].clone())
                .or_default()
                .push(tx.clone());
        }
        receivers.push(rx);
    }
    group.bench_function("baseline_hashmap_of_mpsc_senders_shared", |b| {
        b.iter(|| {
            for e in &shared {
                let ClientEvent::Message(r) = &**e else {
                    unreachable!()
                };
                if let Some(senders) = router.get(&r.message.conversation) {
                    for tx in senders {
                        tx.try_send(e.clone()).unwrap();
                    }
                }
            }
            let mut got = 0usize;
            for rx in &mut receivers {
                while rx.try_recv().is_ok() {
                    got += 1;
                }
            }
            got
        })
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    fan_out(c, &rt);
    routing(c);
}

criterion_group!(benches, bench);
criterion_main!(benches);
