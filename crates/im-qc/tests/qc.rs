//! Quality control against the reference vendor over TCP with its fault injection: an outage
//! drives the verdict to Down and fires the alert, recovery resolves it; injected latency
//! shows in p99; failing pulls lower the success ratio by the injected amount. Business
//! metrics from a scripted conversation, and the Prometheus endpoint scraped and parsed;
//! slow calls make the verdict Degraded.
//!
//! These tests use real time (real sockets), with short intervals and generous deadlines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use im_arch::{Backoff, ClientConfig, DeliveryPolicy, Filter, ImClient, Jitter, RetryPolicy};
use im_qc::{
    Agents, AlertRule, BusinessMetrics, Comparison, Metric, MetricsServer, Op, QcConfig, QcEvent,
    QcMonitor, QcVendor, Severity, UnknownDevice, Verdict, Watch,
};
use im_service::memory::{MemoryVendor, MemoryVendorConfig, VendorOp};
use im_service::{
    Content, ConversationId, HistoryQuery, OutgoingMessage, ServiceError, SystemClock, Timestamp,
    UserId, Vendor,
};
use im_testkit::TcpWorld;
use im_vendor_sim::Faults;

fn client_config() -> ClientConfig {
    ClientConfig {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(200),
        max_missed_heartbeats: 2,
        reconnect: Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(200),
            jitter: Jitter::None,
        },
        retry: RetryPolicy {
            max_attempts: 2,
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(50),
                jitter: Jitter::None,
            },
            deadline: None,
        },
        ..ClientConfig::default()
    }
}

fn qc_config(for_duration: Duration) -> QcConfig {
    QcConfig {
        eval_interval: Duration::from_millis(100),
        verdict_window: Duration::from_secs(2),
        down_when_disconnected_for: Duration::from_millis(500),
        failover_after: Duration::from_secs(1),
        rules: vec![AlertRule {
            name: "vendor_down".into(),
            metric: Metric::Verdict,
            comparison: Comparison::Above,
            threshold: 1.5,
            for_duration,
            severity: Severity::Critical,
        }],
        ..QcConfig::default()
    }
}

fn watch(qc: &QcVendor, client: &ImClient) -> Watch {
    Watch {
        metrics: qc.metrics(),
        bus: client.bus().clone(),
        roles: Some(Box::new(Agents::default())),
        user: None,
        device: Arc::new(UnknownDevice),
        clock: Arc::new(SystemClock),
    }
}

/// The next QC event matching `pick`, within `within`.
async fn next_event(
    events: &mut im_arch::BusStream<QcEvent>,
    within: Duration,
    mut pick: impl FnMut(&QcEvent) -> bool,
) -> (QcEvent, tokio::time::Instant) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("no such QC event in time")
            .expect("monitor gone");
        if pick(&ev) {
            return ((*ev).clone(), tokio::time::Instant::now());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_goes_down_fires_the_alert_and_recovery_resolves_it() {
    let w = TcpWorld::start().await;
    let qc = Arc::new(QcVendor::new(
        Arc::new(w.vendor.client()),
        Arc::new(UnknownDevice),
    ));
    let client = ImClient::builder(qc.clone(), w.bob.clone())
        .config(client_config())
        .build();
    let for_duration = Duration::from_secs(1);
    let monitor = QcMonitor::start(qc_config(for_duration), watch(&qc, &client)).unwrap();
    let mut events = monitor.subscribe(Filter::all(), DeliveryPolicy::Reliable { capacity: 64 });
    client.login().await.unwrap();
    // Healthy while it works.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        monitor.verdict().verdict,
        Verdict::Healthy,
        "{:?}",
        monitor.verdict()
    );

    w.server.outage(Duration::from_secs(4));
    let (down, down_at) = next_event(&mut events, Duration::from_secs(5), |e| {
        matches!(
            e,
            QcEvent::VerdictChanged {
                to: Verdict::Down,
                ..
            }
        )
    })
    .await;
    let QcEvent::VerdictChanged { reasons, .. } = down else {
        unreachable!()
    };
    assert!(!reasons.is_empty());
    let (fired, fired_at) = next_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, QcEvent::AlertFired { .. })
    })
    .await;
    assert!(matches!(
        fired,
        QcEvent::AlertFired { ref rule, severity: Severity::Critical, .. } if rule == "vendor_down"
    ));
    // Fired once the condition held for the for-duration (plus at most a few ticks).
    let after = fired_at - down_at;
    assert!(
        after >= for_duration - Duration::from_millis(150) && after <= for_duration * 3,
        "fired {after:?} after going down"
    );
    assert!(monitor.snapshot().alerts.iter().any(|a| a.firing));

    // The outage ends: the client reconnects, the verdict recovers, the alert resolves.
    next_event(
        &mut events,
        Duration::from_secs(10),
        |e| matches!(e, QcEvent::AlertResolved { rule } if rule == "vendor_down"),
    )
    .await;
    assert_ne!(monitor.verdict().verdict, Verdict::Down);
    assert!(monitor.snapshot().alerts.iter().all(|a| !a.firing));
    client.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_latency_shows_in_p99() {
    let w = TcpWorld::start().await;
    let qc = QcVendor::new(Arc::new(w.vendor.client()), Arc::new(UnknownDevice));
    qc.login(&w.bob).await.unwrap();
    let send = |i: u32| {
        OutgoingMessage::new(
            w.conv.clone(),
            Content::text(format!("m{i}")),
            Timestamp::from_millis(0),
        )
    };
    for i in 0..20 {
        qc.send(&send(i)).await.unwrap();
    }
    let window = Duration::from_secs(60);
    let fast = qc.metrics().window(Some(Op::Send), None, window);
    let fast_p99 = fast.latency.quantile(0.99).unwrap();
    assert!(fast_p99 < Duration::from_millis(150), "{fast_p99:?}");
    w.server.set_faults(Faults {
        frame_delay: Some(Duration::from_millis(200)),
        ..Faults::none()
    });
    for i in 20..40 {
        qc.send(&send(i)).await.unwrap();
    }
    let all = qc.metrics().window(Some(Op::Send), None, window);
    let p99 = all.latency.quantile(0.99).unwrap();
    assert!(
        p99 >= Duration::from_millis(200) && p99 < Duration::from_millis(400),
        "p99 {p99:?} should carry the injected 200 ms"
    );
    assert_eq!(all.calls, 40);
    assert_eq!(all.errors(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pulls_lower_the_success_ratio_by_the_injected_amount() {
    let w = TcpWorld::start().await;
    let qc = QcVendor::new(Arc::new(w.vendor.client()), Arc::new(UnknownDevice));
    qc.login(&w.bob).await.unwrap();
    let query = HistoryQuery::latest(w.conv.clone(), 10);
    // 23 of 100 pulls fail: the ratio must read 77% (±1 point).
    w.server.fail_next(
        VendorOp::PullHistory,
        23,
        ServiceError::Unavailable("injected".into()),
    );
    let mut failed = 0;
    for _ in 0..100 {
        if qc.pull_history(&query).await.is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 23);
    let pulls = qc
        .metrics()
        .window(Some(Op::Pull), None, Duration::from_secs(60));
    assert_eq!(pulls.calls, 100);
    assert_eq!(pulls.transient, 23);
    let ratio = pulls.success_ratio().unwrap();
    assert!((ratio - 0.77).abs() <= 0.01, "{ratio}");
    // Totals agree, and the other operations are untouched.
    assert_eq!(qc.metrics().total(Some(Op::Pull), None).calls, 100);
    assert_eq!(qc.metrics().total(Some(Op::Login), None).calls, 1);
}

/// Tenant Tina writes four times; housekeeper Hank answers the first three within a minute
/// and the fourth after 100 s: 3 of 4 answered in time, 75%.
#[tokio::test]
async fn business_metrics_of_a_scripted_conversation() {
    let (vendor, clock) = MemoryVendor::with_manual_clock(MemoryVendorConfig::default());
    let tina = vendor.register_user(&UserId::new("tina"));
    let hank = vendor.register_user(&UserId::new("hank"));
    let conv = ConversationId::direct(&tina.user, &hank.user);
    let (t, h) = (vendor.client(), vendor.client());
    t.login(&tina).await.unwrap();
    h.login(&hank).await.unwrap();
    let script: [(u64, bool); 8] = [
        (0, true),    // tina #1
        (30, false),  // hank answers #1 in 30 s
        (100, true),  // tina #2
        (150, false), // hank answers #2 in 50 s
        (200, true),  // tina #3
        (210, false), // hank answers #3 in 10 s
        (300, true),  // tina #4
        (400, false), // hank answers #4 in 100 s: late
    ];
    let mut last = 0;
    for (at, from_tina) in script {
        clock.advance(Duration::from_secs(at - last));
        last = at;
        let msg = OutgoingMessage::new(conv.clone(), Content::text("…"), Timestamp::from_millis(0));
        if from_tina {
            t.send(&msg).await.unwrap();
        } else {
            h.send(&msg).await.unwrap();
        }
    }
    let mut metrics =
        BusinessMetrics::new(Duration::from_secs(60), Agents::new([UserId::new("hank")]));
    let messages = vendor.stored_messages(&conv);
    assert_eq!(messages.len(), 8);
    for m in messages.iter().chain(messages.iter()) {
        metrics.observe(m); // every message twice: repeats are ignored
    }
    let snap = metrics.snapshot(vendor.now());
    assert_eq!(snap.response_rate, Some(0.75));
    let hank_row = &snap.agents[0];
    assert_eq!(hank_row.agent, "hank");
    assert_eq!(
        (
            hank_row.inbound,
            hank_row.answered_in_time,
            hank_row.replies
        ),
        (4, 3, 4)
    );
    assert_eq!(hank_row.first_response_p50_secs, Some(30.0));
    // 4 replies in one conversation over 400 s of activity (counted as one hour).
    assert_eq!(snap.replies_per_conversation_per_hour, Some(4.0));
    assert!(snap.overdue.is_empty());

    // A fifth message nobody answers: overdue after a minute, and it counts as missed.
    clock.advance(Duration::from_secs(10));
    let msg = OutgoingMessage::new(
        conv.clone(),
        Content::text("hello?"),
        Timestamp::from_millis(0),
    );
    t.send(&msg).await.unwrap();
    let fifth = vendor.stored_messages(&conv).pop().unwrap();
    metrics.observe(&fifth);
    assert_eq!(
        metrics.snapshot(vendor.now()).response_rate,
        Some(0.75),
        "not overdue yet"
    );
    clock.advance(Duration::from_secs(61));
    let snap = metrics.snapshot(vendor.now());
    assert_eq!(snap.response_rate, Some(0.6));
    assert_eq!(snap.overdue.len(), 1);
    assert_eq!(snap.overdue[0].0, conv);
}

/// Scrapes `/metrics` over HTTP and checks it parses as the text exposition and follows the
/// naming conventions; `/snapshot.json` parses as JSON with the same verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_endpoint_is_scraped_and_parsed() {
    let w = TcpWorld::start().await;
    let qc = Arc::new(QcVendor::new(
        Arc::new(w.vendor.client()),
        Arc::new(UnknownDevice),
    ));
    let client = ImClient::builder(qc.clone(), w.bob.clone())
        .config(client_config())
        .build();
    let monitor = QcMonitor::start(qc_config(Duration::from_secs(1)), watch(&qc, &client)).unwrap();
    client.login().await.unwrap();
    client
        .send(w.conv.clone(), Content::text("hello"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let server = MetricsServer::serve("127.0.0.1:0".parse().unwrap(), monitor.source())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let body = http
        .get(format!("http://{}/metrics", server.addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut types = std::collections::HashMap::new();
    let mut samples = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
        } else if line.starts_with('#') {
            continue;
        } else {
            // name{labels} value
            let (name_labels, value) = line.rsplit_once(' ').unwrap();
            let name = name_labels.split('{').next().unwrap();
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            samples.push((name.to_string(), name_labels.to_string(), value));
        }
    }
    assert!(body.trim_end().ends_with("# EOF"));
    assert!(!samples.is_empty());
    for (name, kind) in &types {
        assert!(
            name.starts_with("im_qc_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name}"
        );
        if name.contains("latency") || name.contains("duration") || name.contains("rtt") {
            assert!(name.ends_with("_seconds"), "{name} lacks its unit suffix");
        }
        if kind == "counter" {
            assert!(
                samples
                    .iter()
                    .any(|(s, _, _)| *s == format!("{name}_total")),
                "counter {name} has no _total sample"
            );
        }
    }
    for (sample, _, _) in &samples {
        let family = sample.strip_suffix("_total").unwrap_or(sample);
        assert!(
            types.contains_key(family) || types.contains_key(sample.as_str()),
            "{sample}"
        );
    }
    let value = |needle: &str| {
        samples
            .iter()
            .find(|(_, nl, _)| nl.starts_with(needle))
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no {needle} in\n{body}"))
    };
    assert!(value("im_qc_vendor_calls_total{") >= 1.0);
    assert_eq!(value("im_qc_vendor_verdict{"), 0.0);
    assert_eq!(value("im_qc_sends_total{result=\"sent\"}"), 1.0);

    let json: serde_json::Value = serde_json::from_str(
        &http
            .get(format!("http://{}/snapshot.json", server.addr()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["verdict"]["verdict"], "healthy");
    assert_eq!(json["processing"]["sends_ok"], 1);
    server.shutdown().await;
    client.logout().await;
}

/// A device that switches networks mid-run: every sample carries the network it was taken
/// on, so degradation can be split by network.
struct Switchable(std::sync::atomic::AtomicU8);

impl im_qc::DeviceContext for Switchable {
    fn sample(&self) -> im_qc::DeviceSample {
        im_qc::DeviceSample {
            network: self.network(),
            signal: None,
            background: false,
            os: "test".into(),
        }
    }

    fn network(&self) -> im_qc::NetworkType {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => im_qc::NetworkType::Wifi,
            _ => im_qc::NetworkType::Cellular,
        }
    }
}

#[tokio::test]
async fn samples_are_split_by_network() {
    let vendor = MemoryVendor::new(MemoryVendorConfig::default());
    let tina = vendor.register_user(&UserId::new("tina"));
    let hank = vendor.register_user(&UserId::new("hank"));
    let conv = ConversationId::direct(&tina.user, &hank.user);
    let device = Arc::new(Switchable(std::sync::atomic::AtomicU8::new(0)));
    let qc = QcVendor::new(Arc::new(vendor.client()), device.clone());
    qc.login(&tina).await.unwrap();
    let msg = OutgoingMessage::new(conv, Content::text("hi"), Timestamp::from_millis(0));
    for _ in 0..3 {
        qc.send(&msg.clone()).await.unwrap();
    }
    device.0.store(1, std::sync::atomic::Ordering::Relaxed);
    // On cellular the vendor fails twice.
    vendor.fail_next(
        VendorOp::Send,
        2,
        ServiceError::Unavailable("weak signal".into()),
    );
    for _ in 0..4 {
        let m = OutgoingMessage::new(
            msg.conversation.clone(),
            Content::text("hi"),
            Timestamp::from_millis(0),
        );
        let _ = qc.send(&m).await;
    }
    let window = Duration::from_secs(60);
    let wifi = qc
        .metrics()
        .window(Some(Op::Send), Some(im_qc::NetworkType::Wifi), window);
    let cell = qc
        .metrics()
        .window(Some(Op::Send), Some(im_qc::NetworkType::Cellular), window);
    assert_eq!((wifi.calls, wifi.errors()), (3, 0));
    assert_eq!((cell.calls, cell.errors()), (4, 2));
    assert_eq!(
        qc.metrics().keys(),
        [
            (Op::Login, im_qc::NetworkType::Wifi),
            (Op::Send, im_qc::NetworkType::Wifi),
            (Op::Send, im_qc::NetworkType::Cellular)
        ]
    );
}

/// Waits for `n` events on `inbox`.
async fn seen(inbox: &mut im_arch::BusStream<im_arch::ClientEvent>, n: usize) {
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .expect("question received")
            .unwrap();
    }
}

/// On an agent's console the replies are the agent's own sends: with `Watch::user`, the
/// monitor counts them from the bus's `Sent` statuses (vendor server times), so response
/// rates come out of the box. 2 questions answered after 30 s, 1 after 90 s → 2/3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_own_replies_count_through_watch_user() {
    let (vendor, clock) = MemoryVendor::with_manual_clock(MemoryVendorConfig::default());
    let tina = vendor.register_user(&UserId::new("tina"));
    let hank = vendor.register_user(&UserId::new("hank"));
    let conv = ConversationId::direct(&tina.user, &hank.user);
    let t = vendor.client();
    t.login(&tina).await.unwrap();
    let qc = Arc::new(QcVendor::new(
        Arc::new(vendor.client()),
        Arc::new(UnknownDevice),
    ));
    let console = ImClient::builder(qc.clone(), hank.clone())
        .clock(Arc::new(clock.clone()))
        .build();
    let monitor = QcMonitor::start(
        QcConfig {
            eval_interval: Duration::from_millis(50),
            ..QcConfig::default()
        },
        Watch {
            roles: Some(Box::new(Agents::new([hank.user.clone()]))),
            user: Some(hank.user.clone()),
            clock: Arc::new(clock.clone()),
            ..watch(&qc, &console)
        },
    )
    .unwrap();
    let mut sent = console.subscribe_with(
        Filter::of([im_arch::EventKind::SendStatus]),
        DeliveryPolicy::Reliable { capacity: 64 },
    );
    console.login().await.unwrap();
    let ask = |body: &str| {
        OutgoingMessage::new(conv.clone(), Content::text(body), Timestamp::from_millis(0))
    };
    let mut inbox = console.subscribe_with(
        Filter::of([im_arch::EventKind::Message]),
        DeliveryPolicy::Reliable { capacity: 64 },
    );
    // Business time passes, then the agent replies and the vendor acknowledges it (the send
    // queue is asynchronous: the reply's server time is when the vendor stored it).
    let mut reply = async |after: Duration| {
        clock.advance(after);
        let id = console
            .send(conv.clone(), Content::text("on it"))
            .await
            .unwrap();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), sent.recv())
                .await
                .expect("sent in time")
                .unwrap();
            if let im_arch::ClientEvent::SendStatus {
                client_id,
                status: Some(im_arch::SendStatus::Sent { .. }),
                server_time,
                ..
            } = &*ev
                && *client_id == id
            {
                assert!(
                    server_time.is_some(),
                    "a Sent status carries the server time"
                );
                return;
            }
        }
    };
    t.send(&ask("q1")).await.unwrap();
    t.send(&ask("q2")).await.unwrap();
    // The agent answers what it has seen: wait for the questions on the console first.
    seen(&mut inbox, 2).await;
    reply(Duration::from_secs(30)).await;
    t.send(&ask("q3")).await.unwrap();
    seen(&mut inbox, 1).await;
    reply(Duration::from_secs(90)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let business = loop {
        let b = monitor.snapshot().business.unwrap();
        if b.agents.iter().any(|a| a.agent == "hank" && a.replies == 2) {
            break b;
        }
        assert!(tokio::time::Instant::now() < deadline, "{b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let row = business.agents.iter().find(|a| a.agent == "hank").unwrap();
    assert_eq!((row.inbound, row.answered_in_time), (3, 2), "{business:?}");
    assert!((business.response_rate.unwrap() - 2.0 / 3.0).abs() < 1e-9);
    console.logout().await;
}

/// QC's latency rule: calls slower than `slow_p99` at the 99th percentile make the verdict
/// Degraded, with the p99 named as the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_make_the_verdict_degraded() {
    let w = TcpWorld::start().await;
    let qc = Arc::new(QcVendor::new(
        Arc::new(w.vendor.client()),
        Arc::new(UnknownDevice),
    ));
    let client = ImClient::builder(qc.clone(), w.bob.clone()).build();
    let config = QcConfig {
        slow_p99: Duration::from_millis(100),
        ..qc_config(Duration::from_secs(60))
    };
    let monitor = QcMonitor::start(config, watch(&qc, &client)).unwrap();
    client.login().await.unwrap();
    w.server.set_faults(Faults {
        frame_delay: Some(Duration::from_millis(200)),
        ..Faults::none()
    });
    for i in 0..5 {
        let message = OutgoingMessage::new(
            w.conv.clone(),
            Content::text(format!("slow {i}")),
            Timestamp::from_millis(0),
        );
        qc.send(&message).await.unwrap();
    }
    // One overall deadline: the monitor evaluates every 100 ms.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let report = loop {
        let report = monitor.verdict();
        if report.reasons.iter().any(|r| r.starts_with("p99 latency")) {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no p99 latency reason within 5 s: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report.verdict, Verdict::Degraded, "{report:?}");
    client.logout().await;
}
