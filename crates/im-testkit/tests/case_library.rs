//! The case library itself: the catalogue is well formed and `docs/test-cases.md` is
//! current; the runner reports passes, failures (with the assertion message), time-outs
//! and not-applicable cases, and its JUnit XML carries the right counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use im_service::Capability;
use im_testkit::cases::{Case, Category, Layer, Target, catalogue, markdown};
use im_testkit::runner::{self, Outcome};

#[test]
fn ids_are_unique_and_well_formed() {
    let cases = catalogue();
    let mut seen = HashSet::new();
    for c in &cases {
        assert!(seen.insert(c.id), "duplicate id {}", c.id);
        let (prefix, number) = c.id.split_once('-').expect("PREFIX-NNN");
        assert!(prefix.chars().all(|ch| ch.is_ascii_uppercase()), "{}", c.id);
        assert!(
            number.len() == 3 && number.chars().all(|ch| ch.is_ascii_digit()),
            "{}",
            c.id
        );
        assert!(!c.title.is_empty() && !c.steps.is_empty() && !c.expected.is_empty());
        if let Some(class) = c.guards {
            assert!((1..=10).contains(&class), "{}: failure class {class}", c.id);
        }
    }
}

#[test]
fn the_generated_catalogue_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/test-cases.md");
    let on_disk = std::fs::read_to_string(path).expect("docs/test-cases.md exists");
    assert!(
        on_disk == markdown(),
        "docs/test-cases.md is stale: run `cargo xtask test-suite --list --markdown > docs/test-cases.md`"
    );
}

fn case(
    id: &'static str,
    needs: &'static [Capability],
    run: fn(Target) -> futures::future::BoxFuture<'static, ()>,
) -> Case {
    Case {
        id,
        title: "synthetic",
        category: Category::Extended,
        layer: Layer::Service,
        needs,
        steps: &["run"],
        expected: "as named",
        guards: None,
        run,
    }
}

#[tokio::test]
async fn the_runner_reports_each_outcome_and_junit_counts_them() {
    // A capability the memory target does not declare, if there is one.
    let caps = Target::Memory.capabilities();
    let lacking: &'static [Capability] = Box::leak(
        Capability::ALL
            .into_iter()
            .filter(|c| !caps.supports(*c))
            .take(1)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let mut cases = vec![
        case("T-001", &[], |_| Box::pin(async {})),
        case("T-002", &[], |_| {
            Box::pin(async { assert_eq!(1 + 1, 3, "arithmetic is broken") })
        }),
        case("T-003", &[], |_| {
            Box::pin(async { tokio::time::sleep(Duration::from_secs(30)).await })
        }),
    ];
    if !lacking.is_empty() {
        cases.push(case("T-004", lacking, |_| {
            Box::pin(async { panic!("must not run") })
        }));
    }
    let mut seen = 0;
    let results = runner::run(
        Target::Memory,
        &cases,
        4,
        Duration::from_millis(300),
        |_| seen += 1,
    )
    .await;
    assert_eq!(seen, cases.len());
    assert_eq!(results[0].outcome, Outcome::Passed);
    assert!(
        matches!(&results[1].outcome, Outcome::Failed(m) if m.contains("arithmetic is broken"))
    );
    assert_eq!(results[2].outcome, Outcome::TimedOut);
    if !lacking.is_empty() {
        assert_eq!(
            results[3].outcome,
            Outcome::NotApplicable(vec![format!("{:?}", lacking[0])])
        );
    }
    let t = runner::totals(&results);
    assert_eq!((t.passed, t.failed), (1, 2));
    let xml = runner::junit(Target::Memory, &results);
    assert!(xml.starts_with("<?xml version=\"1.0\""));
    assert!(xml.contains(&format!(
        "<testsuite name=\"memory\" tests=\"{}\" failures=\"2\" errors=\"0\" skipped=\"{}\"",
        cases.len(),
        t.not_applicable
    )));
    assert_eq!(xml.matches("<testcase ").count(), cases.len());
    assert_eq!(xml.matches("<failure ").count(), 2);
    // Balanced: every opened element is closed.
    assert_eq!(
        xml.matches("<testsuite ").count(),
        xml.matches("</testsuite>").count()
    );
    let page = runner::html(Target::Memory, &results);
    assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
    assert!(page.contains("arithmetic is broken"));
}
