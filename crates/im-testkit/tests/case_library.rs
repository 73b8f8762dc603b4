//! The case library itself: the catalogue is well formed and `docs/test-cases.md` is
//! current; the runner reports passes, failures (with the assertion message), time-outs
//! and not-applicable cases, and its JUnit XML carries the right counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use im_service::Capability;
use im_testkit::cases::{Case, Category, FailureClass, Layer, Target, catalogue, markdown};
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
            assert!(
                (1..=10).contains(&class.number()),
                "{}: failure class {class}",
                c.id
            );
        }
    }
}

#[test]
fn every_failure_class_is_documented_and_guarded() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/failure-classes.md");
    let doc = std::fs::read_to_string(path)
        .expect("docs/failure-classes.md exists")
        .to_lowercase();
    let cases = catalogue();
    for (i, class) in FailureClass::ALL.into_iter().enumerate() {
        assert_eq!(
            usize::from(class.number()),
            i + 1,
            "{class}: numbered in order"
        );
        let heading = format!("\n## {}. {}\n", class.number(), class.name());
        assert!(
            doc.contains(&heading),
            "docs/failure-classes.md lacks {heading:?}"
        );
        assert!(
            cases.iter().any(|c| c.guards == Some(class)),
            "no case guards failure class {class}"
        );
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

#[test]
fn the_declared_part_of_the_vendor_matrix_is_current() {
    // Without servers: what the adapters declare. CI checks the whole file, case results
    // included, against a run on every vendor.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/vendor-matrix.md");
    let matrix = std::fs::read_to_string(path).expect("docs/vendor-matrix.md exists");
    assert!(
        matrix.contains(&im_testkit::vendor_matrix::markdown()),
        "docs/vendor-matrix.md's declared capabilities are stale: run \
         `cargo xtask test-suite --vendor all` with every server up"
    );
}

#[test]
fn the_adapter_sizes_in_the_vendor_matrix_are_current() {
    // The sizes come from the tree, not from a run: a stale row is caught here, without
    // servers, rather than only by CI's regeneration.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let matrix = std::fs::read_to_string(root.join("docs/vendor-matrix.md"))
        .expect("docs/vendor-matrix.md exists");
    for target in Target::ALL {
        let size = im_testkit::vendor_matrix::adapter_size(&root, target).expect("adapter sources");
        let row = matrix
            .lines()
            .find(|l| l.starts_with(&format!("| {} | `", target.name())))
            .unwrap_or_else(|| panic!("no adapter row for {}", target.name()));
        assert!(
            row.contains(&format!("` | {} | {} |", size.lines, size.code)),
            "docs/vendor-matrix.md's size of the {} adapter is stale: {row:?}, the tree has \
             {} lines, {} code lines (run `cargo xtask test-suite --vendor all` with every \
             server up)",
            target.name(),
            size.lines,
            size.code
        );
    }
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
        harness: &[],
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
    assert!(xml.contains(&format!("skipped=\"{}\"", t.not_applicable)));
    assert_eq!(xml.matches("<testcase ").count(), cases.len());
    // It parses back as JUnit and agrees with the run.
    let report = quick_junit::Report::deserialize_from_str(&xml).expect("valid JUnit XML");
    let [suite] = &report.test_suites[..] else {
        panic!("one testsuite per target: {report:?}")
    };
    assert_eq!(suite.name.as_str(), "memory");
    assert_eq!(
        (suite.tests, suite.failures, suite.errors, suite.disabled),
        (cases.len(), 2, 0, t.not_applicable)
    );
    assert_eq!(suite.test_cases[0].name.as_str(), "T-001 synthetic");
    assert_eq!(
        suite.test_cases[0].classname.as_ref().map(|c| c.as_str()),
        Some("memory.service")
    );
    match &suite.test_cases[1].status {
        quick_junit::TestCaseStatus::NonSuccess {
            message,
            description,
            ..
        } => {
            assert!(
                message
                    .as_ref()
                    .is_some_and(|m| m.contains("arithmetic is broken"))
            );
            assert!(
                description
                    .as_ref()
                    .is_some_and(|d| d.contains("arithmetic is broken"))
            );
        }
        other => panic!("T-002 is a failure: {other:?}"),
    }
    if !lacking.is_empty() {
        assert!(matches!(
            &suite.test_cases[3].status,
            quick_junit::TestCaseStatus::Skipped { message: Some(m), .. }
                if m.starts_with("not applicable: needs ")
        ));
    }
    let page = runner::html(Target::Memory, &results);
    assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
    assert!(page.contains("arithmetic is broken"));
}

// --- Cases catch the bugs they name: a deliberately broken vendor makes them fail. ---

use async_trait::async_trait;
use im_service::memory::MemoryClient;
use im_service::{
    Capabilities, ClientMsgId, ConversationId, Credentials, EventStream, HistoryPage, HistoryQuery,
    OfflineAck, OfflineBatch, OutgoingMessage, SendReceipt, ServerMsgId, Session, Token, UserId,
    Vendor,
};
use im_testkit::{ContractConfig, MemoryHarness, VendorHarness, contract};

/// What the broken vendor gets wrong.
#[derive(Clone, Copy)]
enum Sabotage {
    /// Every send gets a fresh client id: resends duplicate (failure class 1).
    ForgetClientIds,
    /// Offline batches lose their oldest message (failure class 4).
    LoseOfflineMessage,
    /// History pages come oldest first (breaks newest-first).
    OldestFirst,
}

struct Broken {
    inner: MemoryClient,
    sabotage: Sabotage,
}

#[async_trait]
impl Vendor for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn take_events(&self) -> Option<EventStream> {
        self.inner.take_events()
    }
    async fn login(&self, c: &Credentials) -> im_service::Result<Session> {
        self.inner.login(c).await
    }
    async fn logout(&self) -> im_service::Result<()> {
        self.inner.logout().await
    }
    async fn send(&self, m: &OutgoingMessage) -> im_service::Result<SendReceipt> {
        match self.sabotage {
            Sabotage::ForgetClientIds => {
                let mut m = m.clone();
                m.client_id = ClientMsgId::new(format!("x{}", rand_suffix()));
                self.inner.send(&m).await
            }
            _ => self.inner.send(m).await,
        }
    }
    async fn send_after(
        &self,
        m: &OutgoingMessage,
        after: &ClientMsgId,
    ) -> im_service::Result<SendReceipt> {
        match self.sabotage {
            Sabotage::ForgetClientIds => {
                let mut m = m.clone();
                m.client_id = ClientMsgId::new(format!("x{}", rand_suffix()));
                self.inner.send_after(&m, after).await
            }
            _ => self.inner.send_after(m, after).await,
        }
    }
    async fn pull_offline(&self, max: u32) -> im_service::Result<OfflineBatch> {
        let mut batch = self.inner.pull_offline(max).await?;
        if let Sabotage::LoseOfflineMessage = self.sabotage {
            batch.messages.pop();
        }
        Ok(batch)
    }
    async fn ack_offline(&self, a: &OfflineAck) -> im_service::Result<()> {
        self.inner.ack_offline(a).await
    }
    async fn go_online(&self) -> im_service::Result<()> {
        self.inner.go_online().await
    }
    async fn pull_history(&self, q: &HistoryQuery) -> im_service::Result<HistoryPage> {
        let mut page = self.inner.pull_history(q).await?;
        if let Sabotage::OldestFirst = self.sabotage {
            page.messages.reverse();
        }
        Ok(page)
    }
    async fn ping(&self) -> im_service::Result<Duration> {
        self.inner.ping().await
    }
    async fn mark_read(&self, c: &ConversationId, up_to: &ServerMsgId) -> im_service::Result<()> {
        self.inner.mark_read(c, up_to).await
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

struct BrokenHarness {
    inner: MemoryHarness,
    sabotage: Sabotage,
}

#[async_trait]
impl VendorHarness for BrokenHarness {
    type Client = Broken;
    fn config(&self) -> &ContractConfig {
        self.inner.config()
    }
    async fn user(&self, name: &str) -> Credentials {
        self.inner.user(name).await
    }
    async fn token(&self, user: &UserId, ttl: Duration) -> Token {
        self.inner.token(user, ttl).await
    }
    async fn group(&self, id: &str, members: &[UserId]) {
        self.inner.group(id, members).await
    }
    async fn client(&self) -> Broken {
        Broken {
            inner: self.inner.client().await,
            sabotage: self.sabotage,
        }
    }
    async fn advance(&self, by: Duration) {
        self.inner.advance(by).await
    }
    fn fail_next(
        &self,
        op: im_service::memory::VendorOp,
        count: u32,
        error: im_service::ServiceError,
    ) {
        self.inner.fail_next(op, count, error)
    }
    fn clock(&self) -> std::sync::Arc<dyn im_service::Clock> {
        self.inner.clock()
    }
    fn wire_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.wire_addr()
    }
}

fn broken(sabotage: Sabotage) -> BrokenHarness {
    BrokenHarness {
        inner: MemoryHarness::new(ContractConfig::default()),
        sabotage,
    }
}

/// Runs a scenario in its own task and says whether it failed.
async fn fails<F>(scenario: F) -> bool
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(scenario).await.is_err()
}

#[tokio::test]
async fn svc_008_catches_a_vendor_that_duplicates_resends() {
    assert!(fails(contract::idempotent_send(broken(Sabotage::ForgetClientIds))).await);
    // The same scenario passes on the honest vendor.
    assert!(
        !fails(contract::idempotent_send(MemoryHarness::new(
            ContractConfig::default()
        )))
        .await
    );
}

#[tokio::test]
async fn svc_001_catches_a_vendor_that_loses_offline_messages() {
    assert!(
        fails(contract::offline_queue_delivered_after_login(broken(
            Sabotage::LoseOfflineMessage
        )))
        .await
    );
    assert!(
        !fails(contract::offline_queue_delivered_after_login(
            MemoryHarness::new(ContractConfig::default())
        ))
        .await
    );
}

#[tokio::test]
async fn svc_005_catches_a_vendor_that_pages_oldest_first() {
    assert!(
        fails(contract::time_range_pull_newest_first_paged(broken(
            Sabotage::OldestFirst
        )))
        .await
    );
    assert!(
        !fails(contract::time_range_pull_newest_first_paged(
            MemoryHarness::new(ContractConfig::default())
        ))
        .await
    );
}
