//! What quality control costs: the same work with and without it, in the same run.
//! * send: 2,000 sends through a `MemoryVendor` client (in process, ~5 µs a send), and 200
//!   through the reference vendor over loopback TCP (the send benchmark of issue 3), bare
//!   (baseline) and wrapped in the `QcVendor` decorator;
//! * distribution: fan-out of 10,000 message events to 16 Reliable subscribers, on two
//!   workers and on one thread, without (baseline) and with a `QcMonitor` observing the
//!   same bus (it processes every event: counters, windows, end-to-end latency); then with
//!   business metrics on as well, and, to split the cost, with a 17th subscriber that does
//!   nothing (what observing through the bus costs before any QC work).
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
use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::{
    ClientMsgId, Content, ConversationId, Message, Origin, OutgoingMessage, ReceivedMessage, Seq,
    ServerMsgId, SystemClock, Timestamp, UserId, Vendor,
};
use im_vendor_sim::{ReferenceServer, ServerConfig};
use tokio::runtime::Runtime;

const SENDS: u64 = 2_000;
const TCP_SENDS: u64 = 200;
const EVENTS: u64 = 10_000;
const SUBSCRIBERS: usize = 16;
/// Alternating runs per paired figure.
const PAIRS: usize = 101;

fn send(c: &mut Criterion, rt: &Runtime) -> f64 {
    let vendor = MemoryVendor::new(MemoryVendorConfig {
        retention: None,
        ..MemoryVendorConfig::default()
    });
    // One session, one conversation with an absent peer, used bare and through the
    // decorator: the two variants do exactly the same vendor work.
    let alice = vendor.register_user(&UserId::new("alice"));
    let carol = vendor.register_user(&UserId::new("carol"));
    let conv = ConversationId::direct(&alice.user, &carol.user);
    let session = Arc::new(vendor.client());
    let bare: Arc<dyn Vendor> = session.clone();
    let wrapped: Arc<dyn Vendor> = Arc::new(QcVendor::new(session, Arc::new(UnknownDevice)));
    rt.block_on(async { bare.login(&alice).await.unwrap() });
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
        || run(&bare, &conv),
        || run(&wrapped, &conv),
        PAIRS,
    );
    group.finish();
    ratio
}

/// The send benchmark over TCP: the reference vendor on loopback, one session used bare and
/// through the decorator.
fn send_over_tcp(c: &mut Criterion, rt: &Runtime) -> f64 {
    let (server, session, conv) = rt.block_on(async {
        let server = ReferenceServer::start(ServerConfig::default())
            .await
            .unwrap();
        let factory = ReferenceVendor::discover(server.addr(), ReferenceConfig::default())
            .await
            .unwrap();
        let alice = server.vendor().register_user(&UserId::new("alice"));
        let carol = server.vendor().register_user(&UserId::new("carol"));
        let conv = ConversationId::direct(&alice.user, &carol.user);
        let session = Arc::new(factory.client());
        session.login(&alice).await.unwrap();
        (server, session, conv)
    });
    let bare: Arc<dyn Vendor> = session.clone();
    let wrapped: Arc<dyn Vendor> = Arc::new(QcVendor::new(session, Arc::new(UnknownDevice)));
    let mut group = c.benchmark_group("qc_overhead_send_over_tcp");
    group.throughput(Throughput::Elements(TCP_SENDS));
    group.sample_size(20);
    let run = |v: &Arc<dyn Vendor>| {
        rt.block_on(async {
            for _ in 0..TCP_SENDS {
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
        || run(&bare),
        || run(&wrapped),
        PAIRS,
    );
    group.finish();
    rt.block_on(server.shutdown());
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

/// What observes the fan-out besides its 16 readers.
#[derive(Clone, Copy, PartialEq)]
enum Observer {
    /// Nothing (the baseline).
    None,
    /// A 17th subscriber that only counts: what subscribing alone costs.
    IdleSubscriber,
    /// A `QcMonitor` as a client runs it (no roles: no business metrics).
    Monitor,
    /// A `QcMonitor` with roles: business metrics on every message as well.
    MonitorWithBusiness,
}

/// Fan-out of `EVENTS` to `SUBSCRIBERS` Reliable readers with `observer` watching; returns
/// the paired ratios of each variant in `against` to the bare baseline.
fn distribution(c: &mut Criterion, rt: &Runtime, threads: &str, against: &[Observer]) -> Vec<f64> {
    let events: Vec<Arc<ClientEvent>> = (0..EVENTS).map(event).collect();
    let vendor = MemoryVendor::new(MemoryVendorConfig::default());
    let metrics_source = QcVendor::new(Arc::new(vendor.client()), Arc::new(UnknownDevice));
    let mut group = c.benchmark_group(format!("qc_overhead_distribution_16_subscribers_{threads}"));
    group.throughput(Throughput::Elements(EVENTS * SUBSCRIBERS as u64));
    group.sample_size(30);
    let run = |observer: Observer| {
        rt.block_on(async {
            let bus: Bus<ClientEvent> = Bus::new();
            let monitor = matches!(observer, Observer::Monitor | Observer::MonitorWithBusiness)
                .then(|| {
                    QcMonitor::start(
                        QcConfig::default(),
                        Watch {
                            metrics: metrics_source.metrics(),
                            bus: bus.clone(),
                            roles: (observer == Observer::MonitorWithBusiness)
                                .then(|| Box::new(Agents::default()) as _),
                            user: None,
                            device: Arc::new(UnknownDevice),
                            clock: Arc::new(SystemClock),
                        },
                    )
                    .unwrap()
                });
            let readers = SUBSCRIBERS + usize::from(observer == Observer::IdleSubscriber);
            let readers: Vec<_> = (0..readers)
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
            let expected = SUBSCRIBERS as u64 + u64::from(observer == Observer::IdleSubscriber);
            assert_eq!(total, EVENTS * expected);
            if let Some(m) = monitor {
                // Count the monitor's whole work: wait until it processed every event.
                while m.events_seen() < EVENTS {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let ratios = against
        .iter()
        .enumerate()
        .map(|(i, &observer)| {
            let name = match observer {
                Observer::None => "baseline_without_qc",
                Observer::IdleSubscriber => "with_idle_17th_subscriber",
                Observer::Monitor => "with_qc_monitor",
                Observer::MonitorWithBusiness => "with_qc_monitor_and_business_metrics",
            };
            compare(
                &mut group,
                (if i == 0 { "baseline_without_qc" } else { "" }, name),
                || run(Observer::None),
                || run(observer),
                PAIRS,
            )
        })
        .collect();
    group.finish();
    ratios
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
    // A group comparing several variants to one baseline measures the baseline once.
    if !base.is_empty() {
        group.bench_function(base, |bencher| bencher.iter(&mut a));
    }
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
        .enable_all()
        .build()
        .unwrap();
    let send = send(c, &rt);
    let send_tcp = send_over_tcp(c, &rt);
    // Fan-out twice: on two workers (throughput: the monitor mostly runs beside the
    // publisher, and the figure carries the runtime's scheduling noise) and on one thread
    // (deterministic scheduling: the figure is the CPU cost QC adds).
    let two_workers = distribution(
        c,
        &rt,
        "2_workers",
        &[Observer::Monitor, Observer::MonitorWithBusiness],
    );
    let one_thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let one_thread = distribution(
        c,
        &one_thread,
        "1_thread",
        &[
            Observer::Monitor,
            Observer::MonitorWithBusiness,
            Observer::IdleSubscriber,
        ],
    );
    let fig = |name: &str, value: f64| (format!("{name} (median of {PAIRS} pairs)"), value);
    im_benches::write_figures(
        "qc_overhead",
        &[
            fig(
                "QC decorator: in-process send throughput with / without",
                send,
            ),
            fig(
                "QC decorator: send over TCP throughput with / without",
                send_tcp,
            ),
            fig(
                "QC monitor: fan-out throughput with / without, 2 workers",
                two_workers[0],
            ),
            fig(
                "QC monitor + business metrics: fan-out with / without, 2 workers",
                two_workers[1],
            ),
            fig(
                "QC monitor: fan-out with / without, 1 thread",
                one_thread[0],
            ),
            fig(
                "QC monitor + business metrics: fan-out with / without, 1 thread",
                one_thread[1],
            ),
            fig(
                "a 17th idle subscriber (no QC): fan-out with / without, 1 thread",
                one_thread[2],
            ),
        ],
    )
    .unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
