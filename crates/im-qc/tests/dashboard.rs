//! The metrics server as a dashboard: the page's static files and the data behind a bearer
//! token (wrong tokens throttled per peer), several seats in one exposition and one view,
//! a bounded history the page reads incrementally, the desk's combined business figures,
//! the alert log with fired and resolved times, and nothing served that carries a message
//! body or the token.
//!
//! Real time and the in-memory vendor; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use im_arch::ImClient;
use im_qc::{
    Agents, AlertRule, BusinessSnapshot, Comparison, Metric, MetricsServer, QcConfig, QcMonitor,
    QcVendor, Severity, UnknownDevice, Watch,
};
use im_service::memory::{MemoryVendor, VendorOp};
use im_service::throttle::FailureBudget;
use im_service::{
    Content, ConversationId, HistoryQuery, ServiceError, SystemClock, UserId, Vendor,
};
use serde_json::Value;

const TOKEN: &str = "a-long-random-dashboard-token";
const DEADLINE: Duration = Duration::from_secs(20);

/// One agent's console: a client and the monitor watching it.
struct Seat {
    client: ImClient,
    /// The client's vendor, through QC's decorator (calls on it count in the monitor).
    qc: Arc<QcVendor>,
    monitor: QcMonitor,
}

fn seat(vendor: &MemoryVendor, agent: &str, agents: &[&str], config: QcConfig) -> Seat {
    let user = UserId::new(agent);
    let creds = vendor.register_user(&user);
    let qc = Arc::new(QcVendor::new(
        Arc::new(vendor.client()),
        Arc::new(UnknownDevice),
    ));
    let client = ImClient::builder(qc.clone(), creds).build();
    let qc_calls = qc.clone();
    let monitor = QcMonitor::start(
        config,
        Watch {
            metrics: qc.metrics(),
            bus: client.bus().clone(),
            roles: Some(Box::new(Agents::new(
                agents.iter().map(|a| UserId::new(*a)),
            ))),
            user: Some(user),
            device: Arc::new(UnknownDevice),
            clock: Arc::new(SystemClock),
        },
    )
    .unwrap();
    Seat {
        client,
        qc: qc_calls,
        monitor,
    }
}

fn fast() -> QcConfig {
    QcConfig {
        eval_interval: Duration::from_millis(20),
        ..QcConfig::default()
    }
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn view(base: &str, since: u64) -> Value {
    let response = get(&format!("{base}/api/dashboard?since={since}"), Some(TOKEN)).await;
    assert_eq!(response.status(), 200, "the view with the token");
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

/// Polls `f` every 20 ms until it returns `Some`, failing with `what` at the deadline.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_public_and_the_data_needs_the_token() {
    let vendor = MemoryVendor::default();
    let s = seat(&vendor, "keeper-1", &["keeper-1"], fast());
    let server = MetricsServer::builder()
        .seat("keeper-1", s.monitor.source())
        .bearer_token(TOKEN)
        .auth_failures(FailureBudget {
            burst: 5,
            refill: Duration::from_secs(600),
        })
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", server.addr());
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let r = get(&format!("{base}{path}"), None).await;
        assert_eq!(r.status(), 200, "{path} is served without a token");
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h
            .get("content-security-policy")
            .unwrap_or_else(|| panic!("{path} carries a content security policy"))
            .to_str()
            .unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
            "{path}: the page may reach its own origin only: {csp}"
        );
    }
    // Three data routes without a token, two with a wrong one: five failures.
    for path in ["/api/dashboard", "/metrics", "/snapshot.json"] {
        let r = get(&format!("{base}{path}"), None).await;
        assert_eq!(r.status(), 401, "{path} without a token");
        assert_eq!(r.headers()["www-authenticate"], "Bearer", "{path}");
    }
    for _ in 0..2 {
        let r = get(&format!("{base}/metrics"), Some("guess")).await;
        assert_eq!(r.status(), 401, "a wrong token");
    }
    let r = get(
        &format!("{base}/api/dashboard"),
        Some(&TOKEN[..TOKEN.len() - 1]),
    )
    .await;
    assert_eq!(
        r.status(),
        429,
        "past its failure budget a peer is refused before its token is looked at"
    );
    assert!(
        r.headers().contains_key("retry-after"),
        "429 says when to retry"
    );
    let r = get(&format!("{base}/"), None).await;
    assert_eq!(r.status(), 200, "the page itself stays reachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_token_reads_everything_and_nothing_carries_a_body_or_the_token() {
    let vendor = MemoryVendor::default();
    let s = seat(&vendor, "keeper-1", &["keeper-1"], fast());
    let tina = vendor.register_user(&UserId::new("tina"));
    let t = ImClient::builder(Arc::new(vendor.client()), tina.clone()).build();
    s.client.login().await.unwrap();
    t.login().await.unwrap();
    let secret = "tina's private question about her lease";
    t.send(
        ConversationId::direct(&tina.user, &UserId::new("keeper-1")),
        Content::text(secret),
    )
    .await
    .unwrap();
    let server = MetricsServer::builder()
        .seat("keeper-1", s.monitor.source())
        .bearer_token(TOKEN)
        .history(Duration::from_millis(20), 100)
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", server.addr());
    until("the message reached the monitor", || async {
        (s.monitor.snapshot().processing.messages_ingested_total >= 1).then_some(())
    })
    .await;
    for path in [
        "/api/dashboard",
        "/metrics",
        "/snapshot.json",
        "/snapshot.json?seat=keeper-1",
    ] {
        let r = get(&format!("{base}{path}"), Some(TOKEN)).await;
        assert_eq!(r.status(), 200, "{path} with the token");
        let body = r.text().await.unwrap();
        assert!(!body.contains(secret), "{path} shows a message body");
        assert!(!body.contains(TOKEN), "{path} shows the token");
    }
    let r = get(&format!("{base}/snapshot.json?seat=nobody"), Some(TOKEN)).await;
    assert_eq!(r.status(), 404, "an unknown seat");
    let r = get(&format!("{base}/api/dashboard?since=x"), Some(TOKEN)).await;
    assert_eq!(r.status(), 400, "a malformed since");
}

/// Two agents' seats: one exposition with a `seat` label and every family once; one view
/// with both seats in order, the history bounded and read incrementally, and the desk's
/// response rate combined from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_seats_make_one_desk() {
    let vendor = MemoryVendor::default();
    let agents = ["keeper-1", "keeper-2"];
    let seats: Vec<Seat> = agents
        .iter()
        .map(|a| seat(&vendor, a, &agents, fast()))
        .collect();
    let tenants: Vec<(UserId, ImClient)> = ["tina", "tom", "tara"]
        .iter()
        .map(|name| {
            let user = UserId::new(*name);
            let creds = vendor.register_user(&user);
            (
                user,
                ImClient::builder(Arc::new(vendor.client()), creds).build(),
            )
        })
        .collect();
    for s in &seats {
        s.client.login().await.unwrap();
    }
    for (_, c) in &tenants {
        c.login().await.unwrap();
    }
    // tina and tom ask keeper-1, tara asks keeper-2; keeper-1 answers tina only.
    let asks = [(0, 0), (1, 0), (2, 1)];
    for (t, k) in asks {
        let (user, client) = &tenants[t];
        client
            .send(
                ConversationId::direct(user, &UserId::new(agents[k])),
                Content::text("a question"),
            )
            .await
            .unwrap();
    }
    // keeper-1 answers once it has both its questions (an answer before the question
    // arrives would answer nothing).
    until("keeper-1 has its two questions", || async {
        (seats[0]
            .monitor
            .snapshot()
            .processing
            .messages_ingested_total
            >= 2)
            .then_some(())
    })
    .await;
    seats[0]
        .client
        .send(
            ConversationId::direct(&UserId::new(agents[0]), &tenants[0].0),
            Content::text("an answer"),
        )
        .await
        .unwrap();
    let server = MetricsServer::builder()
        .seat(agents[0], seats[0].monitor.source())
        .seat(agents[1], seats[1].monitor.source())
        .bearer_token(TOKEN)
        .history(Duration::from_millis(20), 5)
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", server.addr());
    until("both seats saw their messages and the answer", || async {
        let b = seats[0].monitor.snapshot().business?;
        let answered = b
            .agents
            .iter()
            .any(|a| a.agent == "keeper-1" && a.replies == 1);
        let seen = seats[1]
            .monitor
            .snapshot()
            .processing
            .messages_ingested_total
            >= 1;
        (answered && seen).then_some(())
    })
    .await;

    let v = until("eight history points", || async {
        let v = view(&base, 0).await;
        (v["seq"].as_u64().unwrap() >= 8).then_some(v)
    })
    .await;
    let names: Vec<&str> = v["seats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, agents, "the seats, in the order given");
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 5, "the history keeps its capacity, no more");
    let seqs: Vec<u64> = points.iter().map(|p| p["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1)
            && *seqs.last().unwrap() == v["seq"].as_u64().unwrap(),
        "the newest points, oldest first: {seqs:?}"
    );
    assert!(
        points
            .iter()
            .all(|p| p["seats"].as_array().unwrap().len() == 2),
        "every point holds every seat"
    );
    let since = v["seq"].as_u64().unwrap();
    let later = until("two more points", || async {
        let v = view(&base, since).await;
        (v["seq"].as_u64().unwrap() >= since + 2).then_some(v)
    })
    .await;
    let newer: Vec<u64> = later["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert!(
        !newer.is_empty() && newer.iter().all(|s| *s > since),
        "since={since} answers only newer points: {newer:?}"
    );

    // The desk: keeper-1 answered tina in time; tom's and tara's questions are not yet
    // overdue, so they count nowhere: 1 of 1. The combined figure is QC's own combine.
    let parts: Vec<BusinessSnapshot> = seats
        .iter()
        .filter_map(|s| s.monitor.snapshot().business)
        .collect();
    let desk = BusinessSnapshot::combine(&parts).unwrap();
    assert_eq!(desk.response_rate, Some(1.0));
    assert_eq!(later["desk"]["response_rate"].as_f64(), desk.response_rate);
    assert_eq!(
        later["desk"]["conversations"].as_u64(),
        Some(desk.conversations),
        "the desk counts each seat's conversations"
    );
    assert_eq!(
        later["points"].as_array().unwrap().last().unwrap()["desk"]["response_rate"].as_f64(),
        Some(1.0),
        "the points carry the desk's figures"
    );

    let text = get(&format!("{base}/metrics"), Some(TOKEN))
        .await
        .text()
        .await
        .unwrap();
    let mut families = std::collections::HashSet::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(
            families.insert(line.to_owned()),
            "a family appears twice: {line}"
        );
    }
    for agent in agents {
        assert!(
            text.lines().any(|l| l.starts_with("im_qc_vendor_verdict{")
                && l.contains(&format!("seat=\"{agent}\""))),
            "{agent}'s verdict is exported under its seat label"
        );
    }
}

/// An alert that fires and resolves is in the log with both times, newest first, and in
/// the dashboard's log under its seat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_log_keeps_when_an_alert_fired_and_resolved() {
    let vendor = MemoryVendor::default();
    let config = QcConfig {
        rules: vec![AlertRule {
            name: "calls_failing".into(),
            metric: Metric::SuccessRatio {
                window: Duration::from_secs(60),
            },
            comparison: Comparison::Below,
            threshold: 0.9,
            for_duration: Duration::ZERO,
            severity: Severity::Warning,
        }],
        ..fast()
    };
    let s = seat(&vendor, "keeper-1", &["keeper-1"], config);
    let tina = vendor.register_user(&UserId::new("tina"));
    s.client.login().await.unwrap();
    let conv = ConversationId::direct(&UserId::new("keeper-1"), &tina.user);
    let pull = HistoryQuery::latest(conv, 10);
    let server = MetricsServer::builder()
        .seat("keeper-1", s.monitor.source())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", server.addr());
    let before = im_service::Clock::now(&SystemClock).as_millis();
    // Most calls fail: the ratio drops below 90%, the rule fires.
    vendor.fail_next(
        VendorOp::PullHistory,
        6,
        ServiceError::Unavailable("injected".into()),
    );
    for _ in 0..6 {
        assert!(
            s.qc.pull_history(&pull).await.is_err(),
            "an injected failure"
        );
    }
    until("the alert fired", || async {
        s.monitor
            .snapshot()
            .alerts
            .iter()
            .any(|a| a.firing)
            .then_some(())
    })
    .await;
    let open = s.monitor.snapshot().alert_log;
    assert_eq!(open.len(), 1, "one firing: {open:?}");
    assert!(
        open[0].fired_at_ms >= before,
        "fired at the watched clock's time"
    );
    assert_eq!(open[0].resolved_at_ms, None, "still firing");
    // Many calls succeed: the ratio recovers above 90%, the rule resolves.
    for _ in 0..80 {
        s.qc.pull_history(&pull).await.unwrap();
    }
    let log = until("the alert resolved", || async {
        let log = s.monitor.snapshot().alert_log;
        log.first().and_then(|r| r.resolved_at_ms).map(|_| log)
    })
    .await;
    assert_eq!(
        log.len(),
        1,
        "the firing was closed, not a second one opened"
    );
    assert!(log[0].resolved_at_ms.unwrap() >= log[0].fired_at_ms);
    let v: Value = serde_json::from_str(
        &get(&format!("{base}/api/dashboard"), None)
            .await
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let shown = &v["alert_log"][0];
    assert_eq!(shown["seat"], "keeper-1");
    assert_eq!(shown["rule"], "calls_failing");
    assert_eq!(shown["fired_at_ms"].as_i64(), Some(log[0].fired_at_ms));
    assert_eq!(shown["resolved_at_ms"].as_i64(), log[0].resolved_at_ms);
}

/// Past `max_connections` open connections a new one is closed at once, and a freed slot
/// serves again: idle connections from strangers cannot grow the server without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_bound_are_closed() {
    let vendor = MemoryVendor::default();
    let s = seat(&vendor, "keeper-1", &["keeper-1"], fast());
    let server = MetricsServer::builder()
        .seat("keeper-1", s.monitor.source())
        .max_connections(2)
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let idle_a = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let _idle_b = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let url = format!("http://{}/", server.addr());
    // A fresh client per request: no pooled connection may be reused.
    let fetch = || async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        tokio::time::timeout(DEADLINE, http.get(&url).send())
            .await
            .expect("an answer or a close within the deadline")
    };
    assert!(
        fetch().await.is_err(),
        "a third connection is closed without an answer"
    );
    drop(idle_a);
    until("a freed slot serves a new connection", || async {
        fetch().await.ok().filter(|r| r.status() == 200).map(|_| ())
    })
    .await;
}
