//! The headless-Chromium driver (`im_testkit::browser`) against a real Chromium: a page is
//! opened, evaluated, awaited, its requests recorded (a blocked one too) and screenshotted; a
//! wait that cannot succeed fails with its named timeout. Skips when Chromium is missing
//! (fails instead with `IM_REQUIRE_CHROMIUM=1`).

use std::time::Duration;

use anyhow::Context as _;
use im_testkit::browser::{Browser, BrowserError};

/// A page with an image from a host that does not exist (`.invalid` never resolves) and a
/// script-free body: the image request must still be recorded.
const PAGE: &str = "data:text/html,<!doctype html><title>t</title><body data-x=\"7\">\
<p id=\"p\">hello</p><img src=\"http://example.invalid/x.png\"></body>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_opens_evaluates_waits_records_and_screenshots() -> anyhow::Result<()> {
    let Some(browser) = Browser::launch().await.context("launching chromium")? else {
        return Ok(());
    };
    let version = browser.version().await.context("Browser.getVersion")?;
    assert!(
        version.contains("Chrom"),
        "the product names Chrome or Chromium: {version}"
    );
    let page = browser.new_page().await.context("a new page")?;
    page.navigate(PAGE).await.context("navigating")?;
    let text = page
        .wait_for(
            "the paragraph",
            "document.getElementById('p') && document.getElementById('p').textContent",
            Duration::from_secs(20),
        )
        .await
        .context("waiting for the paragraph")?;
    assert_eq!(text, "hello", "the paragraph's text comes back by value");
    let x = page
        .evaluate("Number(document.body.dataset.x) * 6")
        .await
        .context("evaluating")?;
    assert_eq!(x, 42, "numbers come back by value");

    let thrown = page.evaluate("(() => { throw new Error('boom') })()").await;
    assert!(
        matches!(&thrown, Err(BrowserError::Js { message, .. }) if message.contains("boom")),
        "a throwing expression is a named Js error: {thrown:?}"
    );

    let started = std::time::Instant::now();
    let never = page
        .wait_for(
            "a thing that never comes",
            "false",
            Duration::from_millis(800),
        )
        .await;
    assert!(
        matches!(&never, Err(BrowserError::WaitTimeout { what, .. }) if what == "a thing that never comes"),
        "an impossible wait fails with a named timeout: {never:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the wait keeps its overall deadline: {:?}",
        started.elapsed()
    );
    let message = never.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("timed out waiting for a thing that never comes"),
        "the error's text names the wait: {message}"
    );

    // The image request is attempted (and fails: the host does not resolve).
    let recorded = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let urls: Vec<String> = browser.requests().into_iter().map(|r| r.url).collect();
            if urls.iter().any(|u| u == "http://example.invalid/x.png") {
                return urls;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        recorded.is_ok(),
        "the foreign image request is recorded; saw {:?}",
        browser.requests()
    );

    let png = page.screenshot().await.context("a screenshot")?;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is a PNG ({} bytes)",
        png.len()
    );
    Ok(())
}
