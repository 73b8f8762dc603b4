//! The Grafana dashboard `dashboards/im-qc.json` checked against the export: it is an
//! importable dashboard (a `DS_PROMETHEUS` input, panels with a datasource, queries and a
//! place), every metric its queries name (template variables included) is a series that
//! `prometheus_text` really writes for a live `QcMonitor`, and every family the export writes
//! is on a panel or in the short list of families left out on purpose.
//!
//! The monitor watches an agent's console on the in-process memory vendor; the only waits
//! are for its evaluation to have filled every family, each with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use im_arch::{ClientConfig, DeliveryPolicy, EventKind, Filter, ImClient};
use im_qc::{Agents, QcConfig, QcMonitor, QcSnapshot, QcVendor, UnknownDevice, Watch};
use im_service::memory::MemoryVendor;
use im_service::{Clock, Content, ConversationId, OutgoingMessage, SystemClock, UserId, Vendor};
use serde_json::Value;

/// The dashboard, from the repository root.
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dashboards/im-qc.json");

/// Exported families deliberately on no panel, each with the reason. Keep it short: a family
/// added to the export should get a panel; a line here is for one nobody would chart. Today
/// every family has a panel.
const NOT_ON_THE_DASHBOARD: &[&str] = &[];

/// Suffixes a sample name adds to its family's name in the exposition (`_total` on
/// counters; the rest for histograms and summaries, should the export ever write one).
const SAMPLE_SUFFIXES: &[&str] = &["_total", "_created", "_bucket", "_sum", "_count", "_info"];

fn dashboard() -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(DASHBOARD).with_context(|| format!("reading {DASHBOARD}"))?;
    serde_json::from_str(&text).with_context(|| format!("{DASHBOARD} is not JSON"))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn title(panel: &Value) -> String {
    panel["title"].as_str().unwrap_or("(untitled)").to_string()
}

/// Every PromQL query of the dashboard with where it is: panel targets' `expr` and the
/// template variables' queries (a string, or an object with `query`).
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((format!("panel {:?}", title(p)), expr.to_string()));
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let query = v["query"]["query"].as_str().or(v["query"].as_str());
        if let Some(query) = query {
            let name = v["name"].as_str().unwrap_or("?");
            out.push((format!("variable ${name}"), query.to_string()));
        }
    }
    out
}

/// The end of the bracketed group opening at `open` (`(`, `[` or `{`), skipping strings;
/// `chars.len()` if it never closes.
fn group_end(chars: &[char], open: usize) -> usize {
    let mut depth = 0usize;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = string_end(chars, i),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

/// The closing quote of the string literal opening at `open`.
fn string_end(chars: &[char], open: usize) -> usize {
    let quote = chars[open];
    let mut i = open + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names a PromQL query (with Grafana's variables) selects: identifiers starting
/// `im_qc_` in a metric's place. Not names: functions (followed by `(`), label names (in
/// `{…}` matchers, in `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` lists and
/// as `label_values`' label argument), string literals, range and subquery brackets,
/// Grafana variables (`$x`, `${x}`), numbers and durations, and `#` comments.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    scan(&chars, &mut out);
    out
}

fn scan(chars: &[char], out: &mut BTreeSet<String>) {
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = string_end(chars, i) + 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            // Label matchers and range / subquery durations hold no metric names.
            '{' | '[' => i = group_end(chars, i) + 1,
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = group_end(chars, i) + 1;
                } else {
                    while i < chars.len() && ident_char(chars[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number or a duration (`0.99`, `1e3`, `5m`): one token.
                while i < chars.len() && (ident_char(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let call = chars.get(next) == Some(&'(');
                if call && LABEL_LISTS.contains(&word.as_str()) {
                    i = group_end(chars, next) + 1;
                } else if call && word == "label_values" {
                    // `label_values(label)` or `label_values(selector, label)`: only a
                    // selector before the last top-level comma names metrics.
                    let end = group_end(chars, next);
                    let args = &chars[next + 1..end.min(chars.len())];
                    if let Some(comma) = last_top_level_comma(args) {
                        scan(&args[..comma], out);
                    }
                    i = end + 1;
                } else if !call && word.starts_with("im_qc_") {
                    out.insert(word);
                }
            }
            _ => i += 1,
        }
    }
}

fn last_top_level_comma(chars: &[char]) -> Option<usize> {
    let mut last = None;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = string_end(chars, i),
            '(' | '[' | '{' => i = group_end(chars, i),
            ',' => last = Some(i),
            _ => {}
        }
        i += 1;
    }
    last
}

/// What `prometheus_text` wrote: families (from `# TYPE`) with their kind, and the sample
/// names of every family.
struct Exposition {
    text: String,
    families: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

impl Exposition {
    fn parse(text: String) -> anyhow::Result<Exposition> {
        let mut families = BTreeMap::new();
        let mut samples = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .with_context(|| format!("bad TYPE line {line:?}"))?;
                families.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_string());
            }
        }
        Ok(Exposition {
            text,
            families,
            samples,
        })
    }

    /// The family a sample name belongs to.
    fn family_of(&self, sample: &str) -> Option<&str> {
        if let Some((name, _)) = self.families.get_key_value(sample) {
            return Some(name);
        }
        SAMPLE_SUFFIXES.iter().find_map(|suffix| {
            let base = sample.strip_suffix(suffix)?;
            self.families.get_key_value(base).map(|(n, _)| n.as_str())
        })
    }
}

/// The family names `src/export.rs` registers (its `"im_qc_…"` string literals): the
/// families a snapshot with every figure present must export.
fn families_in_export_source() -> anyhow::Result<BTreeSet<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/export.rs");
    let source = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("im_qc_") && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(str::to_string)
        .collect())
}

/// Whether every optional figure of `s` is there, so that every family of its export has
/// rows (the encoder writes no line at all of a family without rows).
fn every_family_has_rows(s: &QcSnapshot) -> bool {
    let p = &s.processing;
    s.operations
        .iter()
        .any(|o| o.latency_ms_1m.iter().all(Option::is_some))
        && s.availability.iter().all(|w| {
            w.success_ratio.is_some()
                && w.uptime_ratio.is_some()
                && w.heartbeat_rtt_p50_ms.is_some()
        })
        && p.last_sync_ms.is_some()
        && p.send_ack_ms.iter().all(Option::is_some)
        && p.end_to_end_ms.iter().all(Option::is_some)
        && s.business.as_ref().is_some_and(|b| {
            b.response_rate.is_some()
                && b.replies_per_conversation_per_hour.is_some()
                && b.agents.iter().any(|a| a.response_rate.is_some())
        })
        && !s.alerts.is_empty()
}

/// The export of a live monitor on an agent's console (business metrics on, the default
/// `vendor_down` rule) once every family has rows: hank (an agent) logs in, tina (a
/// customer) asks twice, hank answers what he has seen, heartbeats run.
async fn live_exposition() -> anyhow::Result<Exposition> {
    let vendor = MemoryVendor::default();
    let tina = vendor.register_user(&UserId::new("tina"));
    let hank = vendor.register_user(&UserId::new("hank"));
    let conv = ConversationId::direct(&tina.user, &hank.user);
    let customer = vendor.client();
    customer.login(&tina).await?;
    let qc = Arc::new(QcVendor::new(
        Arc::new(vendor.client()),
        Arc::new(UnknownDevice),
    ));
    let console = ImClient::builder(qc.clone(), hank.clone())
        .config(ClientConfig {
            heartbeat_interval: Duration::from_millis(50),
            ..ClientConfig::default()
        })
        .build();
    let config = QcConfig {
        eval_interval: Duration::from_millis(50),
        ..QcConfig::default()
    };
    ensure!(
        config.rules.iter().any(|r| r.name == "vendor_down"),
        "QcConfig::default() lost its vendor_down rule: im_qc_alert_firing would have no rows"
    );
    let monitor = QcMonitor::start(
        config,
        Watch {
            metrics: qc.metrics(),
            bus: console.bus().clone(),
            roles: Some(Box::new(Agents::new([hank.user.clone()]))),
            user: Some(hank.user.clone()),
            device: Arc::new(UnknownDevice),
            clock: Arc::new(SystemClock),
        },
    )?;
    let mut inbox = console.subscribe_with(
        Filter::of([EventKind::Message]),
        DeliveryPolicy::Reliable { capacity: 64 },
    );
    tokio::time::timeout(Duration::from_secs(10), console.login())
        .await
        .context("hank's console did not log in within 10 s")??;
    let questions = ["is the boiler fixed?", "hello?"];
    for question in questions {
        let ask = OutgoingMessage::new(conv.clone(), Content::text(question), SystemClock.now());
        customer.send(&ask).await?;
    }
    // Hank answers what he has seen: both questions on his console first.
    for _ in questions {
        tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .context("a question did not reach hank's console within 10 s")?
            .context("hank's console bus closed")?;
    }
    console.send(conv.clone(), Content::text("on it")).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        let snapshot = monitor.snapshot();
        if every_family_has_rows(&snapshot) {
            break snapshot;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("after 10 s the monitor still lacks figures for some families: {snapshot:#?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    console.logout().await;
    let exposition = Exposition::parse(im_qc::prometheus_text(&snapshot)?)?;
    // The encoder leaves out a family without rows: make sure none was left out.
    let written: BTreeSet<String> = exposition.families.keys().cloned().collect();
    let expected = families_in_export_source()?;
    ensure!(
        written == expected,
        "the live monitor's export lacks families src/export.rs registers (every_family_has_rows \
         should wait for them): missing {:?}, unexpected {:?}\n{}",
        expected.difference(&written).collect::<Vec<_>>(),
        written.difference(&expected).collect::<Vec<_>>(),
        exposition.text
    );
    Ok(exposition)
}

/// Every metric name the dashboard's queries select, with where each is used.
fn dashboard_metrics(dashboard: &Value) -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, expr) in queries(dashboard) {
        for name in metric_names(&expr) {
            used.entry(name).or_default().push(place.clone());
        }
    }
    used
}

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard() -> anyhow::Result<()> {
    let d = dashboard()?;
    for key in ["title", "uid"] {
        ensure!(
            d[key].as_str().is_some_and(|s| !s.is_empty()),
            "{DASHBOARD}: no {key}"
        );
    }
    ensure!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{DASHBOARD}: schemaVersion {} is older than Grafana 9",
        d["schemaVersion"]
    );
    let inputs = d["__inputs"].as_array().context("no __inputs")?;
    ensure!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{DASHBOARD}: no __inputs entry for the Prometheus datasource DS_PROMETHEUS"
    );
    let all = panels(&d);
    ensure!(!all.is_empty(), "{DASHBOARD}: no panels");
    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for p in &all {
        let name = title(p);
        match p["id"].as_u64() {
            Some(id) if !ids.insert(id) => problems.push(format!("{name:?}: id {id} twice")),
            Some(_) => {}
            None => problems.push(format!("{name:?}: no id")),
        }
        let grid = &p["gridPos"];
        if !["h", "w", "x", "y"].iter().all(|k| grid[k].is_u64()) {
            problems.push(format!("{name:?}: no gridPos"));
        }
        if p["type"] == "row" {
            // A row only groups panels: no query of its own.
            continue;
        }
        if p["datasource"]["uid"] != "${DS_PROMETHEUS}" {
            problems.push(format!("{name:?}: datasource is not ${{DS_PROMETHEUS}}"));
        }
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if !targets
            .iter()
            .any(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()))
        {
            problems.push(format!("{name:?}: no target with an expr"));
        }
        if let Some(t) = targets
            .iter()
            .find(|t| t["datasource"]["uid"] != "${DS_PROMETHEUS}")
        {
            problems.push(format!(
                "{name:?}: target {} on another datasource",
                t["refId"]
            ));
        }
    }
    ensure!(problems.is_empty(), "{DASHBOARD}: {problems:#?}");
    // The template variables the queries use, and how `seat` selects.
    let vars = d["templating"]["list"]
        .as_array()
        .context("no templating")?;
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    ensure!(var("vendor").is_some(), "no vendor variable");
    let seat = var("seat").context("no seat variable")?;
    ensure!(
        seat["includeAll"] == true && seat["allValue"] == ".*",
        "$seat must offer All as .* (which also matches metrics without a seat label)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_on_the_dashboard_is_exported() -> anyhow::Result<()> {
    let d = dashboard()?;
    let used = dashboard_metrics(&d);
    ensure!(
        !used.is_empty(),
        "{DASHBOARD}: no metric names found in its queries"
    );
    let exposition = live_exposition().await?;
    let unknown: Vec<String> = used
        .iter()
        .filter(|(name, _)| !exposition.samples.contains(*name))
        .map(|(name, places)| format!("{name} (in {})", places.join(", ")))
        .collect();
    ensure!(
        unknown.is_empty(),
        "dashboard metrics the export does not produce: {unknown:#?}\nthe export's series: {:#?}",
        exposition.samples
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_family_is_on_the_dashboard_or_left_out_on_purpose() -> anyhow::Result<()> {
    let d = dashboard()?;
    let exposition = live_exposition().await?;
    let used: BTreeSet<String> = dashboard_metrics(&d)
        .keys()
        .filter_map(|name| exposition.family_of(name).map(str::to_owned))
        .collect();
    let missing: Vec<&String> = exposition
        .families
        .keys()
        .filter(|f| !used.contains(*f) && !NOT_ON_THE_DASHBOARD.contains(&f.as_str()))
        .collect();
    ensure!(
        missing.is_empty(),
        "exported families on no panel of {DASHBOARD} and not in NOT_ON_THE_DASHBOARD: {missing:#?}"
    );
    // The allow-list stays true: only real families, none of them charted after all.
    let stale: Vec<&&str> = NOT_ON_THE_DASHBOARD
        .iter()
        .filter(|f| !exposition.families.contains_key(**f) || used.contains(**f))
        .collect();
    ensure!(
        stale.is_empty(),
        "NOT_ON_THE_DASHBOARD lists families the export lacks or a panel uses: {stale:?}"
    );
    Ok(())
}

#[test]
fn metric_names_skip_functions_labels_strings_and_variables() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (im_qc_label) (rate(im_qc_a_total{im_qc_l="im_qc_s", seat=~"$seat"}[$__rate_interval]))"#
        ),
        ["im_qc_a_total"]
    );
    assert_eq!(
        names("im_qc_fn(im_qc_b) / on (im_qc_c) group_left(im_qc_e) im_qc_d"),
        ["im_qc_b", "im_qc_d"]
    );
    assert_eq!(
        names(r#"label_values(im_qc_vendor_verdict{x="}"}, im_qc_label)"#),
        ["im_qc_vendor_verdict"]
    );
    assert_eq!(names("label_values(im_qc_label)"), Vec::<String>::new());
    assert_eq!(
        names("${im_qc_var} * $im_qc_var2 + 0.5e3 + max_over_time(x[5m:1m]) # im_qc_comment"),
        Vec::<String>::new()
    );
    assert_eq!(
        names("sum(im_qc_x) without (im_qc_y) or im_qc_z offset 5m"),
        ["im_qc_x", "im_qc_z"]
    );
}
