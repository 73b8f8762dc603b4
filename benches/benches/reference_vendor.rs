//! Reference vendor throughput and latency on loopback: 100 senders → 100 receivers, each
//! sender with 10 messages in flight, against a raw TCP echo of the same frames on the same
//! loopback in the same run (the baseline: what the network stack alone costs).

// A benchmark binary: a panic is how it reports a broken invariant, and criterion macros
// generate undocumented items.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use futures::future::join_all;
use im_service::reference::{ReferenceClient, ReferenceConfig, ReferenceVendor};
use im_service::{
    Content, ConversationId, EventStream, OutgoingMessage, Timestamp, UserId, Vendor, VendorEvent,
};
use im_vendor_sim::{ReferenceServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const PAIRS: usize = 100;
const IN_FLIGHT: usize = 10;
const PAYLOAD: usize = 100;

struct Pair {
    sender: Arc<ReferenceClient>,
    receiver_events: EventStream,
    conversation: ConversationId,
    /// Kept alive so the receiver stays online.
    _receiver: ReferenceClient,
}

struct VendorSetup {
    _server: ReferenceServer,
    pairs: Vec<Pair>,
}

async fn vendor_setup() -> VendorSetup {
    let server = ReferenceServer::start(ServerConfig::default())
        .await
        .unwrap();
    let vendor = ReferenceVendor::discover(server.addr(), ReferenceConfig::default())
        .await
        .unwrap();
    let mut pairs = Vec::with_capacity(PAIRS);
    for i in 0..PAIRS {
        let s = server.vendor().register_user(&UserId::new(format!("s{i}")));
        let r = server.vendor().register_user(&UserId::new(format!("r{i}")));
        let sender = vendor.client();
        sender.login(&s).await.unwrap();
        let receiver = vendor.client();
        let receiver_events = receiver.take_events().unwrap();
        receiver.login(&r).await.unwrap();
        receiver.go_online().await.unwrap();
        pairs.push(Pair {
            sender: Arc::new(sender),
            receiver_events,
            conversation: ConversationId::direct(&s.user, &r.user),
            _receiver: receiver,
        });
    }
    VendorSetup {
        _server: server,
        pairs,
    }
}

/// One round: every sender sends IN_FLIGHT messages concurrently; returns when every
/// receiver got all of them. Returns the send→push latency of each message.
async fn vendor_round(setup: &mut VendorSetup) -> Vec<Duration> {
    let body = "x".repeat(PAYLOAD);
    let work = setup.pairs.iter_mut().map(|pair| {
        let body = body.clone();
        async move {
            let started = Instant::now();
            let sends = (0..IN_FLIGHT).map(|_| {
                let msg = OutgoingMessage::new(
                    pair.conversation.clone(),
                    Content::text(body.clone()),
                    Timestamp::from_millis(0),
                );
                let sender = pair.sender.clone();
                async move { sender.send(&msg).await.unwrap() }
            });
            let receive = async {
                let mut at = Vec::with_capacity(IN_FLIGHT);
                while at.len() < IN_FLIGHT {
                    match pair.receiver_events.next().await {
                        Some(VendorEvent::MessagePushed(_)) => at.push(started.elapsed()),
                        Some(other) => panic!("unexpected event {other:?}"),
                        None => panic!("events ended"),
                    }
                }
                at
            };
            let (_, at) = tokio::join!(join_all(sends), receive);
            at
        }
    });
    join_all(work).await.into_iter().flatten().collect()
}

struct EchoSetup {
    conns: Vec<TcpStream>,
}

async fn echo_setup() -> EchoSetup {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            sock.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if sock.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut conns = Vec::with_capacity(PAIRS);
    for _ in 0..PAIRS {
        let c = TcpStream::connect(addr).await.unwrap();
        c.set_nodelay(true).unwrap();
        conns.push(c);
    }
    EchoSetup { conns }
}

/// The baseline round: each connection writes IN_FLIGHT frames and reads them back.
async fn echo_round(setup: &mut EchoSetup) -> Vec<Duration> {
    let frame = vec![7u8; PAYLOAD + 4];
    let work = setup.conns.iter_mut().map(|c| {
        let frame = frame.clone();
        async move {
            let started = Instant::now();
            let (mut r, mut w) = c.split();
            let write = async {
                for _ in 0..IN_FLIGHT {
                    w.write_all(&frame).await.unwrap();
                }
            };
            let read = async {
                let mut at = Vec::with_capacity(IN_FLIGHT);
                let mut buf = vec![0u8; frame.len()];
                for _ in 0..IN_FLIGHT {
                    r.read_exact(&mut buf).await.unwrap();
                    at.push(started.elapsed());
                }
                at
            };
            let (_, at) = tokio::join!(write, read);
            at
        }
    });
    join_all(work).await.into_iter().flatten().collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let mut vendor = rt.block_on(vendor_setup());
    let mut echo = rt.block_on(echo_setup());

    // Latency distribution over a fixed number of rounds, reported next to criterion's times.
    for (name, lat) in [
        ("baseline_tcp_echo", {
            let mut all = Vec::new();
            for _ in 0..30 {
                all.extend(rt.block_on(echo_round(&mut echo)));
            }
            all
        }),
        ("reference_vendor", {
            let mut all = Vec::new();
            for _ in 0..30 {
                all.extend(rt.block_on(vendor_round(&mut vendor)));
            }
            all
        }),
    ] {
        let mut lat = lat;
        lat.sort();
        println!(
            "latency {name}: p50 {:?} p99 {:?} over {} messages",
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            lat.len()
        );
    }

    let mut group = c.benchmark_group("loopback_100_pairs_10_in_flight");
    group.throughput(Throughput::Elements((PAIRS * IN_FLIGHT) as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("baseline_tcp_echo", |b| {
        b.iter(|| rt.block_on(echo_round(&mut echo)))
    });
    group.bench_function("reference_vendor_send_to_push", |b| {
        b.iter(|| rt.block_on(vendor_round(&mut vendor)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
