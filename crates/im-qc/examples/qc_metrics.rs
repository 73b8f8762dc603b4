//! A client under quality control: alice's vendor (the reference vendor over TCP) is wrapped
//! in `QcVendor`, a `QcMonitor` watches it and the client's bus, and a `MetricsServer` serves
//! the result at `/metrics` (Prometheus), `/snapshot.json` and the live dashboard at `/`,
//! behind a bearer token. Alice sends bob a message; the example waits until QC counts it,
//! scrapes `/metrics` once with the token and prints QC's lines about sends.
//!
//! Start the reference vendor (README.md), then run the example in another terminal:
//!
//! ```sh
//! cargo run -p im-vendor-sim -- --user alice:alice-secret --user bob:bob-secret
//! cargo run -p im-qc --example qc_metrics    # IM_VENDOR_ADDR=host:port for another server
//! ```
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use im_arch::ImClient;
use im_qc::{MetricsServer, QcConfig, QcMonitor, QcVendor, UnknownDevice, Verdict::Healthy, Watch};
use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::{Content, ConversationId, Credentials, SystemClock, UserId};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("IM_VENDOR_ADDR").unwrap_or_else(|_| "127.0.0.1:7700".into());
    let addr: SocketAddr = addr.parse().context("bad IM_VENDOR_ADDR")?;
    let vendor = ReferenceVendor::discover(addr, ReferenceConfig::default())
        .await
        .with_context(|| format!("no reference vendor at {addr} (see README.md)"))?;

    // The decorator records every vendor call; the monitor judges them with the client's events.
    let device = Arc::new(UnknownDevice);
    let qc = Arc::new(QcVendor::new(Arc::new(vendor.client()), device.clone()));
    let metrics = qc.metrics();
    let client = ImClient::builder(qc, Credentials::new("alice", "alice-secret")).build();
    let watch = Watch {
        metrics,
        bus: client.bus().clone(),
        roles: None,
        user: Some(UserId::new("alice")),
        device,
        clock: Arc::new(SystemClock),
    };
    let monitor = QcMonitor::start(QcConfig::default(), watch)?;
    // Anyone who can reach the port sees the page, but only holders of the token its data.
    let token = std::env::var("IM_QC_TOKEN").unwrap_or_else(|_| "change-me".into());
    let server = MetricsServer::builder()
        .seat("alice", monitor.source())
        .bearer_token(token.clone())
        .serve(([127, 0, 0, 1], 0).into())
        .await?;
    println!(
        "dashboard: http://{}/ (open it with #token=<IM_QC_TOKEN>)",
        server.addr()
    );

    let hint = "alice cannot log in: is im-vendor-sim running?";
    let login = tokio::time::timeout(Duration::from_secs(10), client.login()).await;
    login.context(hint)?.context(hint)?;
    let bob = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    client.send(bob, Content::text("hello, QC")).await?;
    // Wait (at most 10 s) until QC has seen the send acknowledged and judged the vendor
    // healthy (it evaluates once a second).
    let ready =
        || monitor.snapshot().processing.sends_ok > 0 && monitor.verdict().verdict == Healthy;
    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        while !ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let verdict = counted.await.map(|()| monitor.verdict());
    let verdict = verdict.map_err(|_| anyhow!("no healthy verdict with the send in 10 s"))?;

    let url = format!("http://{}/metrics", server.addr());
    let scrape = async {
        let request = reqwest::Client::new().get(&url).bearer_auth(&token);
        request.send().await?.error_for_status()?.text().await
    };
    let text = tokio::time::timeout(Duration::from_secs(5), scrape)
        .await
        .context("timed out")??;
    let sent = text
        .lines()
        .find(|l| l.starts_with("im_qc_sends_total{result=\"sent\"}"));
    let sent = sent.with_context(|| format!("no im_qc_sends_total in {url}"))?;
    println!("scraped {url}: {sent}; verdict {:?}", verdict.verdict);
    client.logout().await;
    println!("qc_metrics: ok");
    Ok(())
}
