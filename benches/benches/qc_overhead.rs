//! What quality control costs: the same work with and without it, in the same run.
//! * send: 2,000 sends through a `MemoryVendor` client, bare (baseline) and wrapped in the
//!   `QcVendor` decorator;
//! * distribution: fan-out of 10,000 message events to 16 Reliable subscribers, without
//!   (baseline) and with a `QcMonitor` observing the same bus (it processes every event:
//!   end-to-end latency, business metrics, counters).
//!
//! Goal: QC costs under 5% of throughput: the paired ratio (see `compare`) ≥ 0.95.

// A benchmark binary: a panic is how it reports a broken invariant, and criterion macros
// generate undocumented items.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use im_arch::{Bus, ClientEvent, DeliveryPolicy, Filter};
use im_qc::{Agents, QcConfig, QcMonitor, QcVendor, UnknownDevice, Watch};
use im_service::memory::{MemoryVendor, MemoryVendorConfig};
use im_service::{
    ClientMsgId, Content, ConversationId, Message, Origin, OutgoingMessage, ReceivedMessage, Seq,
    ServerMsgId, SystemClock, Timestamp, UserId, Vendor,
};
use tokio::runtime::Runtime;

const SENDS: u64 = 2_000;
const EVENTS: u64 = 10_000;
const SUBSCRIBERS: usize = 16;

fn send(c: &mut Criterion, rt: &Runtime) -> f64 {
    let vendor = MemoryVendor::new(MemoryVendorConfig {
        retention: None,
        ..MemoryVendorConfig::default()
    });
    // Two senders in two conversations with absent peers: both runs do the same work (an
    // offline-queue append), and neither sender receives the other's pushes.
    let alice = vendor.register_user(&UserId::new("alice"));
    let bob = vendor.register_user(&UserId::new("bob"));
    let carol = vendor.register_user(&UserId::new("carol"));
    let dave = vendor.register_user(&UserId::new("dave"));
    let bare_conv = ConversationId::direct(&alice.user, &carol.user);
    let wrapped_conv = ConversationId::direct(&bob.user, &dave.user);
    let bare: Arc<dyn Vendor> = Arc::new(vendor.client());
    let wrapped_inner = Arc::new(vendor.client());
    let wrapped: Arc<dyn Vendor> = Arc::new(QcVendor::new(wrapped_inner, Arc::new(UnknownDevice)));
    rt.block_on(async {
        bare.login(&alice).await.unwrap();
        wrapped.login(&bob).await.unwrap();
    });
    let mut group = c.benchmark_group("qc_overhead_send");
    group.throughput(Throughput::Elements(SENDS));
    group.sample_size(20);
    let run = |v: &Arc<dyn Vendor>, conv: &ConversationId| {
        rt.block_on(async {
            for _ in 0..SENDS {
                let m = OutgoingMessage::new(
                    conv.clone(),
                    Content::text("hello"),
                    Timestamp::from_millis(0),
                );
                v.send(&m).await.unwrap();
            }
        })
    };
    let ratio = compare(
        &mut group,
        ("baseline_bare_vendor", "with_qc_decorator"),
        || run(&bare, &bare_conv),
        || run(&wrapped, &wrapped_conv),
        41,
    );
    group.finish();
    ratio
}

fn event(i: u64) -> Arc<ClientEvent> {
    Arc::new(ClientEvent::Message(ReceivedMessage {
        message: Message {
            server_id: ServerMsgId::new(format!("m{i}")),
            client_id: ClientMsgId::new(format!("c{i}")),
            conversation: ConversationId::group(format!("g{}", i % 100)),
            sender: UserId::new(format!("u{}", i % 7)),
            seq: Some(Seq(i + 1)),
            server_time: Timestamp::from_millis(1_764_000_000_000 + i as i64),
            client_time: Timestamp::from_millis(1_764_000_000_000 + i as i64),
            content: Content::text("x".repeat(100)),
        },
        origin: Origin::Online,
    }))
}

fn distribution(c: &mut Criterion, rt: &Runtime) -> f64 {
    let events: Vec<Arc<ClientEvent>> = (0..EVENTS).map(event).collect();
    let vendor = MemoryVendor::new(MemoryVendorConfig::default());
    let metrics_source = QcVendor::new(Arc::new(vendor.client()), Arc::new(UnknownDevice));
    let mut group = c.benchmark_group("qc_overhead_distribution_16_subscribers");
    group.throughput(Throughput::Elements(EVENTS * SUBSCRIBERS as u64));
    group.sample_size(30);
    let run = |with_qc: bool| {
        rt.block_on(async {
            let bus: Bus<ClientEvent> = Bus::new();
            let monitor = with_qc.then(|| {
                QcMonitor::start(
                    QcConfig::default(),
                    Watch {
                        metrics: metrics_source.metrics(),
                        bus: bus.clone(),
                        roles: Box::new(Agents::default()),
                        device: Arc::new(UnknownDevice),
                        clock: Arc::new(SystemClock),
                    },
                )
                .unwrap()
            });
            let readers: Vec<_> = (0..SUBSCRIBERS)
                .map(|_| {
                    let mut s =
                        bus.subscribe(Filter::all(), DeliveryPolicy::Reliable { capacity: 1024 });
                    tokio::spawn(async move {
                        let mut got = 0u64;
                        while s.recv().await.is_some() {
                            got += 1;
                        }
                        got
                    })
                })
                .collect();
            for e in &events {
                bus.publish_shared(e.clone()).await;
            }
            drop(bus);
            let mut total = 0;
            for r in readers {
                total += r.await.unwrap();
            }
            assert_eq!(total, EVENTS * SUBSCRIBERS as u64);
            if let Some(m) = monitor {
                // Count the monitor's whole work: wait until it processed every event.
                while m.events_seen() < EVENTS {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let ratio = compare(
        &mut group,
        ("baseline_without_qc", "with_qc_monitor"),
        || run(false),
        || run(true),
        41,
    );
    group.finish();
    ratio
}

/// Both variants as criterion functions (absolute figures), then the ratio that judges
/// the goal: `pairs` alternating runs of both, each pair's time ratio, the median. Pairs see
/// the same machine conditions and vendor state; this 2-core machine drifts by ±20% over a
/// run, far more than the 5% being judged, so unpaired means cannot decide it.
fn compare(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    (base, with): (&str, &str),
    mut a: impl FnMut(),
    mut b: impl FnMut(),
    pairs: usize,
) -> f64 {
    group.bench_function(base, |bencher| bencher.iter(&mut a));
    group.bench_function(with, |bencher| bencher.iter(&mut b));
    let time = |f: &mut dyn FnMut()| {
        let start = std::time::Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    let mut ratios: Vec<f64> = (0..pairs)
        .map(|i| {
            let (ta, tb) = if i % 2 == 0 {
                let ta = time(&mut a);
                (ta, time(&mut b))
            } else {
                let tb = time(&mut b);
                (time(&mut a), tb)
            };
            ta / tb
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let send = send(c, &rt);
    let distribution = distribution(c, &rt);
    im_benches::write_figures(
        "qc_overhead",
        &[
            (
                "QC decorator: send throughput with / without (median of 41 pairs)".into(),
                send,
            ),
            (
                "QC monitor: fan-out throughput with / without (median of 41 pairs)".into(),
                distribution,
            ),
        ],
    )
    .unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
