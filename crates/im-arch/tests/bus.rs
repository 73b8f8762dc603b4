//! The distribution bus on its own: filters, delivery policies, unsubscription, isolation of
//! slow subscribers, and a proptest of random subscribe / unsubscribe / publish / drain
//! interleavings against a simple model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use im_arch::{Bus, BusStream, ClientEvent, DeliveryPolicy, EventKind, Filter, Routed};
use im_service::ConversationId;
use proptest::prelude::*;

/// A test event: a kind, maybe a conversation, and a serial number.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Data {
        kind: usize,
        conversation: Option<ConversationId>,
        n: u64,
    },
    Lagged(u64),
}

const KINDS: usize = 4;

impl Routed for Ev {
    const KINDS: usize = KINDS + 1;

    fn kind(&self) -> usize {
        match self {
            Ev::Data { kind, .. } => *kind,
            Ev::Lagged(_) => KINDS,
        }
    }

    fn conversation(&self) -> Option<&ConversationId> {
        match self {
            Ev::Data { conversation, .. } => conversation.as_ref(),
            Ev::Lagged(_) => None,
        }
    }

    fn lagged(dropped: u64) -> Self {
        Ev::Lagged(dropped)
    }
}

fn conv(i: usize) -> ConversationId {
    ConversationId::group(format!("g{i}"))
}

fn ev(kind: usize, conversation: Option<usize>, n: u64) -> Ev {
    Ev::Data {
        kind,
        conversation: conversation.map(conv),
        n,
    }
}

/// Everything queued now, without waiting.
fn drain(stream: &mut BusStream<Ev>) -> Vec<Ev> {
    let mut out = Vec::new();
    while let Some(Some(e)) = stream.recv().now_or_never() {
        out.push((*e).clone());
    }
    out
}

const BIG: DeliveryPolicy = DeliveryPolicy::Reliable { capacity: 1 << 20 };

#[tokio::test]
async fn filters_deliver_exactly_the_matching_events() {
    let bus: Bus<Ev> = Bus::new();
    let filters = [
        Filter::all(),
        Filter::kinds([1]),
        Filter::all().in_conversations([conv(0)]),
        Filter::kinds([1, 2]).in_conversations([conv(0), conv(2)]),
        Filter::kinds([3]),
        Filter::kinds([]),
    ];
    let mut streams: Vec<_> = filters
        .iter()
        .map(|f| bus.subscribe(f.clone(), BIG))
        .collect();
    let mut published = Vec::new();
    let mut n = 0;
    for kind in 0..KINDS {
        for c in [None, Some(0), Some(1), Some(2)] {
            for _ in 0..2 {
                let e = ev(kind, c, n);
                n += 1;
                bus.publish(e.clone()).await;
                published.push(e);
            }
        }
    }
    for (filter, stream) in filters.iter().zip(&mut streams) {
        let want: Vec<Ev> = published
            .iter()
            .filter(|e| filter.matches(*e))
            .cloned()
            .collect();
        assert_eq!(drain(stream), want, "filter {filter:?}");
    }
    // Spot checks of the semantics the generic check relies on.
    let only_c0 = Filter::all().in_conversations([conv(0)]);
    assert!(only_c0.matches(&ev(0, Some(0), 0)));
    assert!(!only_c0.matches(&ev(0, Some(1), 0)));
    assert!(
        only_c0.matches(&ev(0, None, 0)),
        "events of no conversation pass a conversation filter by kind"
    );
    assert!(!Filter::kinds([]).matches(&ev(0, None, 0)));
}

#[tokio::test]
async fn drop_oldest_reports_exactly_how_many_it_dropped() {
    let bus: Bus<Ev> = Bus::new();
    let mut ui = bus.subscribe(Filter::all(), DeliveryPolicy::DropOldest { capacity: 3 });
    for n in 0..10 {
        assert_eq!(bus.publish(ev(0, Some(0), n)).await, 1);
    }
    assert_eq!(
        drain(&mut ui),
        [
            Ev::Lagged(7),
            ev(0, Some(0), 7),
            ev(0, Some(0), 8),
            ev(0, Some(0), 9)
        ]
    );
    assert_eq!(bus.dropped_total(), 7);
    // Kept up: no notice.
    bus.publish(ev(0, Some(0), 10)).await;
    assert_eq!(drain(&mut ui), [ev(0, Some(0), 10)]);
    // Latest: only the newest, after a notice.
    let mut latest = bus.subscribe(Filter::all(), DeliveryPolicy::LATEST);
    for n in 11..15 {
        bus.publish(ev(0, None, n)).await;
    }
    assert_eq!(drain(&mut latest), [Ev::Lagged(3), ev(0, None, 14)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_never_loses_and_keeps_order_with_a_slow_reader() {
    let bus: Bus<Ev> = Bus::new();
    let mut slow = bus.subscribe(Filter::all(), DeliveryPolicy::Reliable { capacity: 4 });
    let total = 5_000u64;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(e) = slow.recv().await {
            if let Ev::Data { n, .. } = &*e {
                got.push(*n);
            }
            if got.len() % 97 == 0 {
                tokio::task::yield_now().await;
            }
        }
        got
    });
    for n in 0..total {
        bus.publish(ev((n % 4) as usize, Some((n % 3) as usize), n))
            .await;
    }
    drop(bus); // ends the stream once drained
    let got = reader.await.unwrap();
    assert_eq!(got, (0..total).collect::<Vec<_>>());
}

/// `publish_all` delivers what one `publish` per event would, in the same order, to the
/// same subscribers; a reader waiting before the batch is woken by it; and a Reliable queue
/// smaller than the batch makes it wait for the reader, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_all_delivers_in_order_wakes_readers_and_waits_for_room() {
    let bus: Bus<Ev> = Bus::new();
    let filters = [
        Filter::all(),
        Filter::kinds([1]),
        Filter::all().in_conversations([conv(0)]),
        Filter::kinds([1, 2]).in_conversations([conv(0), conv(2)]),
    ];
    let mut streams: Vec<_> = filters
        .iter()
        .map(|f| bus.subscribe(f.clone(), BIG))
        .collect();
    let batch: Vec<Ev> = (0..64u64)
        .map(|n| {
            ev(
                (n % 4) as usize,
                [None, Some(0), Some(1), Some(2)][(n % 4) as usize],
                n,
            )
        })
        .collect();
    bus.publish_all(batch.clone()).await;
    for (filter, stream) in filters.iter().zip(&mut streams) {
        let want: Vec<Ev> = batch
            .iter()
            .filter(|e| filter.matches(*e))
            .cloned()
            .collect();
        assert_eq!(drain(stream), want, "publish_all, filter {filter:?}");
    }

    // A reader already waiting, on a queue far smaller than the batch.
    let mut slow = bus.subscribe(Filter::all(), DeliveryPolicy::Reliable { capacity: 4 });
    let total = 1_000u64;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(e) = slow.recv().await {
            if let Ev::Data { n, .. } = &*e {
                got.push(*n);
            }
        }
        got
    });
    tokio::task::yield_now().await;
    let all: Vec<Ev> = (0..total).map(|n| ev(0, Some(1), n)).collect();
    tokio::time::timeout(Duration::from_secs(20), bus.publish_all(all))
        .await
        .expect("publish_all: the reader was not woken to make room");
    drop(streams);
    drop(bus);
    let got = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the reader never finished")
        .unwrap();
    assert_eq!(
        got,
        (0..total).collect::<Vec<_>>(),
        "publish_all to a Reliable queue"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_ui_subscriber_does_not_stall_a_reliable_one() {
    let bus: Bus<Ev> = Bus::new();
    // Never read: a frozen screen.
    let _frozen = bus.subscribe(Filter::all(), DeliveryPolicy::DropOldest { capacity: 8 });
    let mut store = bus.subscribe(Filter::all(), DeliveryPolicy::Reliable { capacity: 8 });
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for n in 0..1_000 {
                bus.publish(ev(0, Some(0), n)).await;
            }
        })
    };
    let mut got = 0;
    while got < 1_000 {
        let e = tokio::time::timeout(Duration::from_secs(5), store.recv())
            .await
            .expect("the reliable subscriber was stalled")
            .unwrap();
        assert_eq!(*e, ev(0, Some(0), got));
        got += 1;
    }
    publisher.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropping_a_stream_removes_the_subscription_and_releases_a_waiting_publisher() {
    let bus: Bus<Ev> = Bus::new();
    let keep = bus.subscribe(Filter::all(), BIG);
    let full = bus.subscribe(Filter::all(), DeliveryPolicy::Reliable { capacity: 1 });
    let scoped = bus.subscribe(Filter::all().in_conversations([conv(1)]), BIG);
    assert_eq!(bus.subscriber_count(), 3);
    bus.publish(ev(0, Some(1), 0)).await;
    // `full` is full: this publish waits for it...
    let blocked = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.publish(ev(0, Some(1), 1)).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!blocked.is_finished());
    // ...until it goes away.
    drop(full);
    assert_eq!(blocked.await.unwrap(), 3);
    assert_eq!(bus.subscriber_count(), 2);
    drop(scoped);
    assert_eq!(bus.subscriber_count(), 1);
    assert_eq!(bus.publish(ev(0, Some(1), 2)).await, 1);
    drop(keep);
    assert_eq!(bus.subscriber_count(), 0);
    assert_eq!(bus.publish(ev(0, Some(1), 3)).await, 0);
}

#[tokio::test]
async fn streams_end_after_draining_when_the_bus_is_gone() {
    let bus: Bus<Ev> = Bus::new();
    let mut s = bus.subscribe(Filter::all(), BIG);
    bus.publish(ev(0, None, 0)).await;
    drop(bus);
    assert_eq!(*s.recv().await.unwrap(), ev(0, None, 0));
    assert!(s.recv().await.is_none());
}

#[tokio::test]
async fn client_events_route_by_kind_and_conversation() {
    let bus: Bus<ClientEvent> = Bus::new();
    let mut chat = bus.subscribe(
        Filter::of([EventKind::Message, EventKind::State]).in_conversations([conv(0)]),
        DeliveryPolicy::DropOldest { capacity: 16 },
    );
    let mut heartbeats = bus.subscribe(Filter::of([EventKind::Heartbeat]), BIG);
    bus.publish(ClientEvent::Heartbeat {
        rtt: Duration::from_millis(5),
    })
    .await;
    bus.publish(ClientEvent::State(im_arch::ConnectionState::Online))
        .await;
    let got: Vec<EventKind> = std::iter::from_fn(|| chat.recv().now_or_never().flatten())
        .map(|e| e.kind())
        .collect();
    assert_eq!(got, [EventKind::State]);
    assert_eq!(
        heartbeats.recv().await.unwrap().kind(),
        EventKind::Heartbeat
    );
}

/// One step of the proptest.
#[derive(Debug, Clone)]
enum Op {
    Subscribe {
        kinds: Vec<usize>,
        conversations: Option<Vec<usize>>,
        drop_oldest: bool,
        capacity: usize,
    },
    Unsubscribe(usize),
    Publish {
        kind: usize,
        conversation: Option<usize>,
    },
    Drain(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (
            proptest::collection::vec(0..KINDS, 0..4),
            proptest::option::of(proptest::collection::vec(0..4usize, 0..3)),
            any::<bool>(),
            1..5usize,
        )
            .prop_map(|(kinds, conversations, drop_oldest, capacity)| Op::Subscribe {
                kinds,
                conversations,
                drop_oldest,
                capacity,
            }),
        1 => (0..8usize).prop_map(Op::Unsubscribe),
        6 => (0..KINDS, proptest::option::of(0..4usize))
            .prop_map(|(kind, conversation)| Op::Publish { kind, conversation }),
        2 => (0..8usize).prop_map(Op::Drain),
    ]
}

/// The model of one subscriber: its filter, its policy and a plain queue.
struct Model {
    filter: Filter,
    drop_oldest: bool,
    capacity: usize,
    queue: VecDeque<Ev>,
    dropped: u64,
}

impl Model {
    fn offer(&mut self, e: &Ev) -> bool {
        if !self.filter.matches(e) {
            return true;
        }
        if self.queue.len() >= self.capacity {
            if !self.drop_oldest {
                return false;
            }
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(e.clone());
        true
    }

    fn drain(&mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        if self.dropped > 0 {
            out.push(Ev::Lagged(std::mem::take(&mut self.dropped)));
        }
        out.extend(self.queue.drain(..));
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_interleavings_match_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        let bus: Bus<Ev> = Bus::new();
        let mut live: Vec<(BusStream<Ev>, Model)> = Vec::new();
        let mut n = 0;
        for op in ops {
            match op {
                Op::Subscribe { kinds, conversations, drop_oldest, capacity } => {
                    let mut filter = Filter::kinds(kinds);
                    if let Some(cs) = conversations {
                        filter = filter.in_conversations(cs.into_iter().map(conv));
                    }
                    let policy = if drop_oldest {
                        DeliveryPolicy::DropOldest { capacity }
                    } else {
                        DeliveryPolicy::Reliable { capacity }
                    };
                    let stream = bus.subscribe(filter.clone(), policy);
                    live.push((stream, Model { filter, drop_oldest, capacity, queue: VecDeque::new(), dropped: 0 }));
                }
                Op::Unsubscribe(i) if !live.is_empty() => {
                    live.remove(i % live.len());
                }
                Op::Publish { kind, conversation } => {
                    let e = ev(kind, conversation, n);
                    n += 1;
                    let refused = live.iter_mut().map(|(_, m)| m.offer(&e)).filter(|ok| !ok).count();
                    prop_assert_eq!(bus.try_publish(e), refused);
                }
                Op::Drain(i) if !live.is_empty() => {
                    let k = i % live.len();
                    let (stream, model) = &mut live[k];
                    // Both ways of reading must agree with the model.
                    let got = if i % 2 == 0 {
                        drain(stream)
                    } else {
                        stream.drain_now().iter().map(|e| (**e).clone()).collect()
                    };
                    prop_assert_eq!(got, model.drain());
                }
                _ => {}
            }
            prop_assert_eq!(bus.subscriber_count(), live.len());
        }
        for (stream, model) in &mut live {
            prop_assert_eq!(drain(stream), model.drain());
        }
    }
}

#[test]
fn events_are_shared_not_copied() {
    let bus: Bus<Ev> = Bus::new();
    let mut a = bus.subscribe(Filter::all(), BIG);
    let mut b = bus.subscribe(Filter::all(), BIG);
    assert!(bus.publish(ev(0, None, 0)).now_or_never().is_some());
    let (x, y) = (
        a.recv().now_or_never().flatten().unwrap(),
        b.recv().now_or_never().flatten().unwrap(),
    );
    assert!(Arc::ptr_eq(&x, &y));
}
