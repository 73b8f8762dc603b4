//! The live dashboard (issue 24) in headless Chromium, end to end: the demo binary plays its
//! scripted day with `--dashboard`, the page is opened with the token in its fragment, and
//! the test waits until the page shows what the day did: live data, the vendor outage at noon
//! (a Down stretch on the verdict chart and the `vendor_down` alert, fired then resolved, with
//! both times), the recovery (verdict healthy again) and the desk's response rate equal to the
//! one the demo's JSON summary reports, with its chart. It saves a full-page screenshot to
//! `target/dashboard-screenshot.png` and checks that the page asked no host but its own,
//! that the API refuses a request without the token, and that the page is served with its
//! Content-Security-Policy.
//!
//! Skips when Chromium is missing (`im_testkit::browser`), fails instead with
//! `IM_REQUIRE_CHROMIUM=1` (CI). Every wait has an overall deadline.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use im_testkit::browser::{Browser, BrowserError, Page, PageEvent};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

/// How long the demo may take to print its dashboard address.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long the page may take to show its first data.
const LIVE_DEADLINE: Duration = Duration::from_secs(30);
/// How long the outage and its recovery may take to show, in all.
const DAY_DEADLINE: Duration = Duration::from_secs(120);
/// How long the desk's figures may take to match the summary once the day is over.
const DESK_DEADLINE: Duration = Duration::from_secs(30);

/// What the demo wrote so far (stdout: the JSON summary; stderr: its log and the address).
#[derive(Default)]
struct Output {
    stdout: String,
    stderr: String,
}

/// The last `n` characters of `s` (on a char boundary).
fn tail(s: &str, n: usize) -> &str {
    let mut cut = s.len().saturating_sub(n);
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    &s[cut..]
}

/// Names what failed, with where the page's live updates stand and what the page and the
/// demo said, for a failing wait.
async fn failure(
    what: &str,
    err: &BrowserError,
    page: &Page,
    browser: &Browser,
    out: &Mutex<Output>,
) -> anyhow::Error {
    let state = page
        .evaluate(
            "`last seq ${document.body.dataset.seq}, ${document.body.dataset.points} points, \
             live ${document.getElementById('live').dataset.state}, updated \
             ${document.getElementById('last-update').textContent}, verdict \
             ${document.getElementById('verdict').dataset.verdict}`",
        )
        .await
        .map_or_else(
            |e| format!("unknown ({e})"),
            |v| v.as_str().unwrap_or("?").to_string(),
        );
    let events: Vec<String> = browser
        .events()
        .iter()
        .rev()
        .take(15)
        .map(|e| format!("{e:?}"))
        .collect();
    anyhow!(
        "{what}: {err}\n--- the page: {state}\n--- last page events (newest first):\n{}\n\
         --- demo stderr ends with:\n{}",
        events.join("\n"),
        tail(&out.lock().stderr, 3000)
    )
}

/// `page.wait_for` with the rest of `deadline`, failing with [`failure`].
async fn wait(
    page: &Page,
    browser: &Browser,
    out: &Mutex<Output>,
    what: &str,
    expr: &str,
    deadline: Instant,
) -> anyhow::Result<Value> {
    let within = deadline.saturating_duration_since(Instant::now());
    match page.wait_for(what, expr, within).await {
        Ok(v) => Ok(v),
        Err(e) => Err(failure(what, &e, page, browser, out).await),
    }
}

/// The folder `target/` of this build: `CARGO_TARGET_TMPDIR` is `<target>/tmp`.
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_outage_the_recovery_and_the_desk_in_chromium() -> anyhow::Result<()> {
    let Some(browser) = Browser::launch().await.context("starting chromium")? else {
        return Ok(());
    };
    let token = format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );

    let mut demo = Command::new(env!("CARGO_BIN_EXE_im-business-demo"))
        .args(["--dashboard", "127.0.0.1:0", "--dashboard-token", &token])
        .args(["--json", "--speed", "2"])
        .env_remove("IM_QC_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the demo")?;
    let out = Arc::new(Mutex::new(Output::default()));
    let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stderr = demo.stderr.take().context("the demo's stderr")?;
    let stdout = demo.stdout.take().context("the demo's stdout")?;
    {
        let out = Arc::clone(&out);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("dashboard: ")
                    && url.starts_with("http")
                {
                    let _ = addr_tx.send(url.trim().to_string());
                }
                let mut o = out.lock();
                o.stderr.push_str(&line);
                o.stderr.push('\n');
            }
        });
    }
    {
        let out = Arc::clone(&out);
        tokio::spawn(async move {
            let mut stdout = stdout;
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                out.lock()
                    .stdout
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }

    // The address line, then the page right away (the outage comes a few seconds in). The
    // demo prints the address without the token (it never logs it): the fragment is ours.
    let printed = match tokio::time::timeout(START_DEADLINE, addr_rx.recv()).await {
        Ok(Some(url)) => url,
        _ => bail!(
            "the demo never printed its `dashboard: http://...` line within {START_DEADLINE:?}; \
             stderr:\n{}",
            tail(&out.lock().stderr, 3000)
        ),
    };
    let origin = Some(printed.as_str())
        .filter(|o| o.starts_with("http://127.0.0.1:") && o.ends_with('/') && !o.contains('#'))
        .map(str::to_string)
        .with_context(|| format!("the dashboard address is http://127.0.0.1:PORT/: {printed}"))?;
    assert!(
        !out.lock().stderr.contains(&token),
        "the demo does not print the token on stderr"
    );
    let url = format!("{origin}#token={token}");

    let page = browser.new_page().await.context("opening a tab")?;
    page.navigate(&url)
        .await
        .with_context(|| format!("navigating to {url}"))?;

    let live_deadline = Instant::now() + LIVE_DEADLINE;
    wait(
        &page,
        &browser,
        &out,
        "live data on the page (body[data-live=true] after a successful poll)",
        "document.body && document.body.dataset.live === 'true' && Number(document.body.dataset.seq) > 0",
        live_deadline,
    )
    .await?;
    let href = page.evaluate("location.href").await?;
    assert!(
        !href.as_str().unwrap_or_default().contains(&token),
        "the page removes the token from the address bar: {href}"
    );

    // The day: the outage and its recovery, within one overall deadline.
    let day_deadline = Instant::now() + DAY_DEADLINE;
    let times = wait(
        &page,
        &browser,
        &out,
        "the page's live updates to show the vendor_down alert resolved, with its fired and \
         resolved times",
        r#"(() => {
            const hms = /^\d\d:\d\d:\d\d$/;
            for (const r of document.querySelectorAll('#alerts tbody tr[data-rule="vendor_down"][data-state="resolved"]')) {
                const fired = r.querySelector('td.fired-at').textContent.trim();
                const resolved = r.querySelector('td.resolved-at').textContent.trim();
                if (hms.test(fired) && hms.test(resolved)) return [r.dataset.seat, fired, resolved];
            }
            return null;
        })()"#,
        day_deadline,
    )
    .await?;
    println!("vendor_down (seat, fired, resolved): {times}");
    wait(
        &page,
        &browser,
        &out,
        "a Down point on the verdict chart",
        "(() => { const s = document.querySelector('#verdict-chart svg'); \
           return s && Number(s.dataset.downPoints) > 0 \
             && document.querySelectorAll('#verdict-chart rect.band-down').length > 0; })()",
        day_deadline,
    )
    .await?;
    wait(
        &page,
        &browser,
        &out,
        "the desk verdict healthy again after the outage",
        "document.getElementById('verdict').dataset.verdict === 'healthy'",
        day_deadline,
    )
    .await?;

    // The demo's summary, once the day is over: stdout holds one complete JSON object.
    let summary_deadline = Instant::now() + DAY_DEADLINE;
    let summary = loop {
        let text = out.lock().stdout.clone();
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(text.trim()) {
            break v;
        }
        if Instant::now() >= summary_deadline {
            bail!(
                "the demo printed no complete JSON summary within {DAY_DEADLINE:?}; stdout so far:\n{}\n\
                 stderr ends with:\n{}",
                tail(&text, 2000),
                tail(&out.lock().stderr, 3000)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rate = summary["measured_response_rate"]
        .as_f64()
        .with_context(|| format!("the summary has a measured_response_rate: {summary}"))?;

    let shown = wait(
        &page,
        &browser,
        &out,
        &format!(
            "#response-rate-value's data-value equal to the summary's measured_response_rate \
             {rate} and its chart with 2 points or more"
        ),
        &format!(
            "(() => {{ const e = document.getElementById('response-rate-value'); \
               const path = document.querySelector('#response-rate-chart svg path.series'); \
               const v = parseFloat(e.dataset.value); \
               const n = path ? Number(path.dataset.points) : 0; \
               return Math.abs(v - ({rate:e})) <= 1e-9 && n >= 2 ? [e.textContent, v, n] : null; }})()"
        ),
        Instant::now() + DESK_DEADLINE,
    )
    .await?;
    let text = shown[0].as_str().unwrap_or_default();
    let shown_pct: f64 = text
        .strip_suffix('%')
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("the response rate reads like 83.3%: {text:?}"))?;
    assert!(
        (shown_pct - rate * 100.0).abs() <= 0.05 + 1e-9
            && text.split('.').nth(1).map(str::len) == Some(2),
        "the response rate is written as a percentage with one decimal: {text:?} for {rate}"
    );

    // The screenshot for the closing note.
    let shot = target_dir().join("dashboard-screenshot.png");
    page.save_screenshot(&shot)
        .await
        .with_context(|| format!("saving the screenshot to {}", shot.display()))?;
    // Straight to stderr, past the test harness's capture: CI's log shows where it is.
    let _ = writeln!(
        std::io::stderr(),
        "dashboard screenshot: {}",
        shot.display()
    );

    // No request to any host but its own.
    let urls: Vec<String> = browser.requests().into_iter().map(|r| r.url).collect();
    assert!(
        urls.iter()
            .any(|u| u.starts_with(&format!("{origin}api/dashboard?since="))),
        "the recorded requests include the page's polls of {origin}api/dashboard: {urls:?}"
    );
    let offenders: Vec<&String> = urls.iter().filter(|u| !u.starts_with(&origin)).collect();
    assert!(
        offenders.is_empty(),
        "the page made requests to hosts other than its own origin {origin}: {offenders:?}"
    );
    let broken: Vec<String> = browser
        .events()
        .into_iter()
        .filter_map(|e| match e {
            PageEvent::Exception(text) => Some(format!("uncaught exception: {text}")),
            PageEvent::Log { text, .. } if text.contains("Content Security Policy") => {
                Some(format!("CSP violation: {text}"))
            }
            _ => None,
        })
        .collect();
    assert!(
        broken.is_empty(),
        "the page runs without exceptions or Content-Security-Policy violations: {broken:#?}"
    );

    // The server's side of safety: the API wants the token, the page carries its CSP.
    let http = reqwest::Client::new();
    let api = http
        .get(format!("{origin}api/dashboard"))
        .send()
        .await
        .context("GET /api/dashboard without a token")?;
    assert_eq!(
        api.status().as_u16(),
        401,
        "GET {origin}api/dashboard without a token is refused with 401"
    );
    let index = http.get(&origin).send().await.context("GET / (the page)")?;
    let csp = index
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "the page is served with its Content-Security-Policy header (got {csp:?})"
    );

    let _ = demo.start_kill();
    Ok(())
}
