//! Runs cases of the library against a target, concurrently, each in its own task with a
//! time limit, and writes the reports: a text table, JUnit XML and a self-contained HTML
//! page.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite, XmlString};

use crate::cases::{Case, Target};

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
pub enum Outcome {
    /// Every assertion held.
    Passed,
    /// An assertion failed (the message) or the scenario panicked.
    Failed(String),
    /// The target lacks these capabilities.
    NotApplicable(Vec<String>),
    /// It did not finish in time.
    TimedOut,
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The case id.
    pub id: &'static str,
    /// Its title.
    pub title: &'static str,
    /// Its layer, for grouping.
    pub layer: String,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it ran.
    pub time: Duration,
}

/// Runs `cases` against `target`, at most `parallel` at a time, each within `limit`;
/// `progress` sees every result as it comes. Results come back in catalogue order.
pub async fn run(
    target: Target,
    cases: &[Case],
    parallel: usize,
    limit: Duration,
    mut progress: impl FnMut(&CaseResult),
) -> Vec<CaseResult> {
    let mut results: Vec<CaseResult> = futures::stream::iter(cases.iter().copied())
        .map(|case| async move {
            let started = Instant::now();
            let missing = case.missing(target);
            let outcome = if !missing.is_empty() {
                Outcome::NotApplicable(missing)
            } else {
                // Its own task: a panic (a failed assertion) is caught as a JoinError.
                let task = tokio::spawn((case.run)(target));
                let abort = task.abort_handle();
                match tokio::time::timeout(limit, task).await {
                    Ok(Ok(())) => Outcome::Passed,
                    Ok(Err(e)) => Outcome::Failed(panic_message(e)),
                    Err(_) => {
                        abort.abort();
                        Outcome::TimedOut
                    }
                }
            };
            CaseResult {
                id: case.id,
                title: case.title,
                layer: format!("{:?}", case.layer).to_lowercase(),
                outcome,
                time: started.elapsed(),
            }
        })
        .buffer_unordered(parallel.max(1))
        .inspect(|r| progress(r))
        .collect()
        .await;
    results.sort_by_key(|r| r.id);
    results
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".to_string()),
        Err(e) => e.to_string(),
    }
}

/// Counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Cases run or skipped.
    pub total: usize,
    /// Passed.
    pub passed: usize,
    /// Failed or timed out.
    pub failed: usize,
    /// Not applicable.
    pub not_applicable: usize,
}

/// Counts `results`.
pub fn totals(results: &[CaseResult]) -> Totals {
    let mut t = Totals {
        total: results.len(),
        ..Totals::default()
    };
    for r in results {
        match r.outcome {
            Outcome::Passed => t.passed += 1,
            Outcome::Failed(_) | Outcome::TimedOut => t.failed += 1,
            Outcome::NotApplicable(_) => t.not_applicable += 1,
        }
    }
    t
}

fn short(o: &Outcome) -> String {
    match o {
        Outcome::Passed => "pass".into(),
        Outcome::Failed(_) => "FAIL".into(),
        Outcome::TimedOut => "TIMEOUT".into(),
        Outcome::NotApplicable(m) => format!("n/a (needs {})", m.join(", ")),
    }
}

/// The plain-text table.
pub fn table(results: &[CaseResult]) -> String {
    let mut out = format!(
        "{:<10} {:<70} {:<12} {:>8}\n",
        "id", "title", "result", "time"
    );
    for r in results {
        out.push_str(&format!(
            "{:<10} {:<70} {:<12} {:>6}ms\n",
            r.id,
            r.title.chars().take(70).collect::<String>(),
            short(&r.outcome),
            r.time.as_millis()
        ));
        if let Outcome::Failed(m) = &r.outcome {
            out.push_str(&format!(
                "           └ {}\n",
                m.lines().next().unwrap_or("")
            ));
        }
    }
    let t = totals(results);
    out.push_str(&format!(
        "\n{} cases: {} passed, {} failed, {} not applicable\n",
        t.total, t.passed, t.failed, t.not_applicable
    ));
    out
}

/// JUnit XML: one `testsuite` for the target (a `skipped` count beside quick-junit's
/// `disabled`, for readers that expect it); one `testcase` per case named `ID title`;
/// failures carry the first line of the message as `message` and all of it as text;
/// not-applicable cases are `skipped` with what they need.
pub fn junit(target: Target, results: &[CaseResult]) -> String {
    let mut suite = TestSuite::new(target.name());
    for r in results {
        let status = match &r.outcome {
            Outcome::Passed => TestCaseStatus::success(),
            Outcome::Failed(m) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(m.lines().next().unwrap_or(""))
                    .set_description(m.as_str());
                s
            }
            Outcome::TimedOut => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message("timed out").set_description("timed out");
                s
            }
            Outcome::NotApplicable(missing) => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(format!("not applicable: needs {}", missing.join(", ")));
                s
            }
        };
        let mut case = TestCase::new(format!("{} {}", r.id, r.title), status);
        case.set_classname(format!("{}.{}", target.name(), r.layer))
            .set_time(r.time);
        suite.add_test_case(case);
    }
    let time: Duration = results.iter().map(|r| r.time).sum();
    suite.set_time(time);
    suite.extra.insert(
        XmlString::new("skipped"),
        XmlString::new(suite.disabled.to_string()),
    );
    let mut report = Report::new("im-layers case library");
    report.set_time(time).add_test_suite(suite);
    // Cannot fail: quick-junit writes into a `Vec<u8>` (no I/O error) from `XmlString`s,
    // which are valid UTF-8 with invalid XML characters already stripped.
    #[allow(clippy::expect_used)]
    report
        .to_string()
        .expect("serialising a JUnit report into memory cannot fail")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A self-contained HTML page (inline style, no scripts).
pub fn html(target: Target, results: &[CaseResult]) -> String {
    let t = totals(results);
    let mut rows = String::new();
    for r in results {
        let (class, detail) = match &r.outcome {
            Outcome::Passed => ("pass", String::new()),
            Outcome::Failed(m) => ("fail", html_escape(m)),
            Outcome::TimedOut => ("fail", "timed out".to_string()),
            Outcome::NotApplicable(m) => ("na", format!("needs {}", html_escape(&m.join(", ")))),
        };
        rows.push_str(&format!(
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td><pre>{detail}</pre></td></tr>\n",
            r.id,
            html_escape(r.title),
            r.layer,
            short(&r.outcome),
            r.time.as_millis()
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>im-layers cases: {name}</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.pass td:nth-child(4){{color:#060}}tr.fail{{background:#fdd}}tr.na{{color:#777}}pre{{margin:0;white-space:pre-wrap}}</style></head>\n<body><h1>Case library on <code>{name}</code></h1>\n<p>{} cases: {} passed, {} failed, {} not applicable.</p>\n<table><tr><th>id</th><th>title</th><th>layer</th><th>result</th><th>time</th><th>detail</th></tr>\n{rows}</table></body></html>\n",
        t.total,
        t.passed,
        t.failed,
        t.not_applicable,
        name = target.name()
    )
}
