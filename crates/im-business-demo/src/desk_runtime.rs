//! Runs the scripted day on the desk: every participant is an `ImClient`, every housekeeper
//! is watched by a `QcMonitor`, and the business rules of `desk.rs` decide who answers
//! what. Counts every message sent and received so the summary can prove none was lost or
//! delivered twice. Speaks only `im-arch`, `im-qc` and the vendor-neutral model.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use im_arch::{ClientEvent, DeliveryPolicy, EventKind, Filter, ImClient, SendStatus};
use im_qc::{
    Agents, AlertRule, BusinessSnapshot, Comparison, Metric, Op, QcConfig, QcEvent, QcMonitor,
    QcSnapshot, Severity, UnknownDevice, Verdict, Watch,
};
use im_service::{ClientMsgId, Clock, Content, ConversationId, Timestamp, UserId};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::day::{self, Answer, Step};
use crate::desk::{self, Assignments, LATE_PREFIX};
use crate::panel::Panel;
use crate::wiring::{Environment, Seat};

/// A tenant waits at most this long (business time) for an answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5 * 60);
/// How long the injected vendor outage lasts (real time).
pub const OUTAGE: Duration = Duration::from_secs(3);
/// Bound on every wait for something the system must do (a delivery, a QC verdict).
const WAIT: Duration = Duration::from_secs(30);

/// How the day is run.
#[derive(Debug, Clone)]
pub struct DayOptions {
    /// Tenants.
    pub tenants: usize,
    /// Housekeepers.
    pub housekeepers: usize,
    /// Seed of the script.
    pub seed: u64,
    /// Pause between steps is 300 ms divided by this.
    pub speed: f64,
    /// Print the live view.
    pub live: bool,
    /// The first housekeeper is a person typing on stdin.
    pub interactive: bool,
}

/// What the run proves, printed as JSON with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The vendor.
    pub vendor: String,
    /// Script seed.
    pub seed: u64,
    /// Participants.
    pub tenants: usize,
    /// Participants.
    pub housekeepers: usize,
    /// Messages sent by anyone.
    pub messages_sent: u64,
    /// Of those, received by their addressee.
    pub messages_received: u64,
    /// Sent but never received.
    pub missing: u64,
    /// Received more than once.
    pub duplicates: u64,
    /// The outage.
    pub outage: OutageReport,
    /// Tenant questions asked.
    pub questions: u64,
    /// Answered within the response time by the script.
    pub expected_answered_in_time: u64,
    /// The response rate the script implies.
    pub expected_response_rate: f64,
    /// The response rate QC measured.
    pub measured_response_rate: Option<f64>,
    /// Tenants answered by the "unanswered too long" rule.
    pub escalations: u64,
    /// Replies typed by the person at the keyboard (`--interactive`).
    pub typed_replies: u64,
    /// QC alerts fired, by rule.
    pub alerts_fired: BTreeMap<String, u64>,
    /// Tenants per housekeeper.
    pub assignments: BTreeMap<String, usize>,
    /// Messages in the company archive at the end (when one runs).
    pub archived: Option<u64>,
    /// Every check passed.
    pub ok: bool,
}

/// What QC saw of the outage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutageReport {
    /// An outage was injected.
    pub injected: bool,
    /// QC's verdict went Down.
    pub detected: bool,
    /// After how long, ms.
    pub detected_after_ms: Option<u64>,
    /// The `vendor_down` alert fired.
    pub alert_fired: bool,
    /// The verdict left Down and the alert resolved.
    pub resolved: bool,
    /// After how long from the start, ms.
    pub resolved_after_ms: Option<u64>,
}

/// One message seen by its addressee.
struct Seen {
    user: UserId,
    id: ClientMsgId,
}

/// A participant.
struct Person {
    user: UserId,
    client: ImClient,
}

/// The running desk.
struct Desk {
    env: Environment,
    clock: Arc<dyn Clock>,
    people: HashMap<UserId, Person>,
    tenants: Vec<UserId>,
    assignments: Assignments,
    monitors: Vec<QcMonitor>,
    qc_events: mpsc::UnboundedReceiver<Arc<QcEvent>>,
    seen_rx: mpsc::UnboundedReceiver<Seen>,
    /// Forwarders from client and QC buses into the channels above; aborted on drop.
    tasks: Tasks,
    /// (addressee, client id) → times received.
    received: HashMap<(UserId, ClientMsgId), u64>,
    /// Every message sent: (addressee, client id).
    sent: Vec<(UserId, ClientMsgId)>,
    alerts_fired: BTreeMap<String, u64>,
    /// Latest verdict per monitor index.
    verdicts: Vec<Verdict>,
    panel: Panel,
    options: DayOptions,
    escalations: u64,
    /// Replies a person typed (interactive mode).
    typed_replies: u64,
    /// 09:00 of the scripted day, vendor time (ms), once the day has begun.
    day_start: Option<i64>,
}

/// The desk's forwarding tasks; dropping this stops them (on every exit path).
#[derive(Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn qc_config() -> QcConfig {
    QcConfig {
        eval_interval: Duration::from_millis(100),
        verdict_window: Duration::from_secs(2),
        down_when_disconnected_for: Duration::from_millis(500),
        failover_after: Duration::from_secs(2),
        answer_within: ANSWER_WITHIN,
        rules: vec![
            AlertRule {
                name: "vendor_down".into(),
                metric: Metric::Verdict,
                comparison: Comparison::Above,
                threshold: 1.5,
                for_duration: Duration::from_secs(1),
                severity: Severity::Critical,
            },
            AlertRule {
                name: "tenant_waiting_too_long".into(),
                metric: Metric::OverdueConversations,
                comparison: Comparison::Above,
                threshold: 0.5,
                for_duration: Duration::ZERO,
                severity: Severity::Warning,
            },
        ],
        ..QcConfig::default()
    }
}

/// The desk's response rate over every housekeeper's monitor: each sees only its own
/// tenants, so the agent rows add up without counting anything twice.
fn response_rate(businesses: &[BusinessSnapshot]) -> Option<f64> {
    let (inbound, answered) = businesses
        .iter()
        .flat_map(|b| &b.agents)
        .fold((0u64, 0u64), |(i, a), row| {
            (i + row.inbound, a + row.answered_in_time)
        });
    (inbound > 0).then(|| answered as f64 / inbound as f64)
}

/// Runs the day on `env` and returns its summary.
pub async fn run(env: Environment, options: DayOptions) -> Result<Summary> {
    let tenants: Vec<UserId> = (1..=options.tenants)
        .map(|i| UserId::new(format!("tenant-{i}")))
        .collect();
    let housekeepers: Vec<UserId> = (1..=options.housekeepers)
        .map(|i| UserId::new(format!("keeper-{i}")))
        .collect();
    let clock = env.clock();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let (qc_tx, qc_events) = mpsc::unbounded_channel();
    let mut people = HashMap::new();
    let mut monitors = Vec::new();
    let mut tasks = Tasks::default();
    for user in tenants.iter().chain(&housekeepers) {
        let Seat { client, metrics } = env.seat(user)?;
        // Deliveries, for the ledger. The client never waits for a reader: this queue of
        // 1,024 is far above a seat's traffic (the task below forwards at once), and should
        // it ever overflow, the missing messages fail the summary's "received once" check.
        let mut messages = client.subscribe_with(
            Filter::of([EventKind::Message]),
            DeliveryPolicy::DropOldest { capacity: 1024 },
        );
        let tx = seen_tx.clone();
        let me = user.clone();
        tasks.0.push(tokio::spawn(async move {
            while let Some(ev) = messages.recv().await {
                if let ClientEvent::Message(m) = &*ev
                    && m.message.sender != me
                {
                    let _ = tx.send(Seen {
                        user: me.clone(),
                        id: m.message.client_id.clone(),
                    });
                }
            }
        }));
        if housekeepers.contains(user) {
            let monitor = QcMonitor::start(
                qc_config(),
                Watch {
                    metrics,
                    bus: client.bus().clone(),
                    roles: Some(Box::new(Agents::new(housekeepers.iter().cloned()))),
                    user: Some(user.clone()),
                    device: Arc::new(UnknownDevice),
                    clock: clock.clone(),
                },
            )?;
            let mut events =
                monitor.subscribe(Filter::all(), DeliveryPolicy::Reliable { capacity: 256 });
            let tx = qc_tx.clone();
            tasks.0.push(tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    let _ = tx.send(ev);
                }
            }));
            monitors.push(monitor);
        }
        people.insert(
            user.clone(),
            Person {
                user: user.clone(),
                client,
            },
        );
    }
    for p in people.values() {
        p.client
            .login()
            .await
            .with_context(|| format!("{} logs in", p.user))?;
    }
    let verdicts = vec![Verdict::Healthy; monitors.len()];
    let desk = Desk {
        panel: Panel::new(options.live, env.vendor_name()),
        env,
        clock,
        people,
        tenants,
        assignments: Assignments::new(housekeepers),
        monitors,
        qc_events,
        seen_rx,
        tasks,
        received: HashMap::new(),
        sent: Vec::new(),
        alerts_fired: BTreeMap::new(),
        verdicts,
        options,
        escalations: 0,
        typed_replies: 0,
        day_start: None,
    };
    desk.day().await
}

impl Desk {
    fn person(&self, user: &UserId) -> Result<&Person> {
        self.people
            .get(user)
            .with_context(|| format!("no seat for {user}"))
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    async fn pause(&self) {
        let ms = (300.0 / self.options.speed.max(0.01)) as u64;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Sends `text` from `from` to `to`; returns the message's client id.
    async fn say(&mut self, from: &UserId, to: &UserId, text: &str) -> Result<ClientMsgId> {
        let conv = ConversationId::direct(from, to);
        let id = self
            .person(from)?
            .client
            .send(conv, Content::text(text))
            .await
            .with_context(|| format!("{from} sends"))?;
        self.sent.push((to.clone(), id.clone()));
        self.panel.message(self.now(), from, to, text);
        Ok(id)
    }

    /// A housekeeper answers a tenant: the reply is sent, the conversation marked read, and
    /// the tenant receives it. (The housekeeper's QC monitor counts the reply from the
    /// `Sent` status on the housekeeper's bus: `Watch::user`.)
    async fn answer(&mut self, keeper: &UserId, tenant: &UserId, text: &str) -> Result<()> {
        let conv = ConversationId::direct(keeper, tenant);
        let id = self.say(keeper, tenant, text).await?;
        let client = &self.person(keeper)?.client;
        if let Err(e) = client.mark_read(&conv).await {
            self.panel
                .note(&format!("{keeper} could not mark {tenant} read: {e}"));
        }
        self.delivered(tenant, &id).await
    }

    /// Takes in what arrived and what QC said, without waiting.
    fn absorb(&mut self) {
        while let Ok(seen) = self.seen_rx.try_recv() {
            *self.received.entry((seen.user, seen.id)).or_default() += 1;
        }
        while let Ok(ev) = self.qc_events.try_recv() {
            self.on_qc(&ev);
        }
    }

    fn on_qc(&mut self, ev: &QcEvent) {
        match ev {
            QcEvent::AlertFired { rule, .. } => {
                *self.alerts_fired.entry(rule.clone()).or_default() += 1;
                self.panel.note(&format!("QC alert fired: {rule}"));
            }
            QcEvent::AlertResolved { rule } => {
                self.panel.note(&format!("QC alert resolved: {rule}"));
            }
            QcEvent::VerdictChanged {
                vendor,
                to,
                reasons,
                ..
            } => {
                self.panel.note(&format!(
                    "QC verdict for {vendor}: {to:?} ({})",
                    reasons.join("; ")
                ));
            }
            QcEvent::FailoverRecommended { vendor, .. } => {
                self.panel
                    .note(&format!("QC recommends failing over from {vendor}"));
            }
            QcEvent::Lagged { .. } => {}
        }
        for (i, m) in self.monitors.iter().enumerate() {
            self.verdicts[i] = m.verdict().verdict;
        }
    }

    /// Waits until `user` received message `id`.
    async fn delivered(&mut self, user: &UserId, id: &ClientMsgId) -> Result<()> {
        let key = (user.clone(), id.clone());
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.absorb();
            if self.received.contains_key(&key) {
                return Ok(());
            }
            let seen = tokio::select! {
                s = self.seen_rx.recv() => s,
                ev = self.qc_events.recv() => {
                    if let Some(ev) = ev { self.on_qc(&ev); }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => bail!("{user} never received {id}"),
            };
            if let Some(s) = seen {
                *self.received.entry((s.user, s.id)).or_default() += 1;
            }
        }
    }

    /// Waits for a QC event matching `pick`.
    async fn qc_event(&mut self, mut pick: impl FnMut(&QcEvent) -> bool) -> Option<QcEvent> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            tokio::select! {
                ev = self.qc_events.recv() => {
                    let ev = ev?;
                    self.on_qc(&ev);
                    if pick(&ev) {
                        return Some((*ev).clone());
                    }
                }
                s = self.seen_rx.recv() => {
                    if let Some(s) = s {
                        *self.received.entry((s.user, s.id)).or_default() += 1;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// A housekeeper's reply to a tenant: a typed answer in interactive mode for the first
    /// housekeeper, the matching quick reply otherwise.
    async fn reply_text(&mut self, keeper: &UserId, tenant: &UserId, question: &str) -> String {
        let quick = desk::quick_reply(question).text.to_owned();
        let me = self.assignments.housekeepers().first() == Some(keeper);
        if !(self.options.interactive && me) {
            return quick;
        }
        // Prompts go to stderr: stdout stays the view (or the JSON summary).
        eprintln!("\n{tenant} asks {keeper} (you): {question}");
        eprintln!("  type your answer, or press Enter for the quick reply: {quick}");
        let line = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await;
        match line {
            Ok(Ok(l)) if !l.trim().is_empty() => {
                self.typed_replies += 1;
                l.trim().to_owned()
            }
            _ => quick,
        }
    }

    /// One tenant question, handled as the script says.
    async fn question(&mut self, tenant: &UserId, text: &str, answer: Answer) -> Result<()> {
        let keeper = self
            .assignments
            .assign(tenant)
            .context("the desk has no housekeeper")?;
        let id = self.say(tenant, &keeper, text).await?;
        self.delivered(&keeper, &id).await?;
        let conv = ConversationId::direct(tenant, &keeper);
        match answer {
            Answer::Prompt => {
                // Reading and typing take a minute of business time.
                self.env.advance(Duration::from_secs(60));
                let reply = self.reply_text(&keeper, tenant, text).await;
                self.answer(&keeper, tenant, &reply).await?;
            }
            Answer::Busy => {
                // The housekeeper is busy: business time passes beyond the response time,
                // and the desk's rule answers whatever QC lists as overdue.
                self.env.advance(ANSWER_WITHIN + Duration::from_secs(120));
                self.panel
                    .note(&format!("{keeper} is busy; {tenant} keeps waiting"));
                // The unanswered question shows as unread on the housekeeper's list.
                self.panel.render(&self.view());
                self.escalate(&conv).await?;
            }
        }
        Ok(())
    }

    /// The "unanswered for too long" rule, driven by QC's business metrics.
    async fn escalate(&mut self, waiting: &ConversationId) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let tenants = self.tenants.clone();
        let tenant_of = move |c: &ConversationId| -> Option<UserId> {
            tenants.iter().find(|t| c.is_direct_member(t)).cloned()
        };
        loop {
            self.absorb();
            let overdue: Vec<desk::Escalation> = self
                .monitors
                .iter()
                .filter_map(|m| m.snapshot().business)
                .flat_map(|b| desk::escalations(&b, &self.assignments, &tenant_of))
                .collect();
            if overdue.iter().any(|e| &e.conversation == waiting) {
                for e in overdue {
                    let Some(tenant) = tenant_of(&e.conversation) else {
                        continue;
                    };
                    let last = self
                        .person(&e.housekeeper)?
                        .client
                        .conversations(0, usize::MAX)
                        .into_iter()
                        .find(|s| s.id == e.conversation)
                        .and_then(|s| s.last_message)
                        .map(|m| match m.content {
                            Content::Text(t) => t,
                            Content::Custom { .. } | Content::Recalled { .. } => String::new(),
                        })
                        .unwrap_or_default();
                    let reply = format!("{LATE_PREFIX}{}", desk::quick_reply(&last).text);
                    self.panel.note(&format!(
                        "{tenant} waited {} min: the desk answers",
                        e.waited_secs / 60
                    ));
                    self.answer(&e.housekeeper, &tenant, &reply).await?;
                    self.escalations += 1;
                }
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("QC never listed {waiting} as overdue");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn outage(
        &mut self,
        during: &[(usize, String)],
        report: &mut OutageReport,
    ) -> Result<()> {
        let started = tokio::time::Instant::now();
        report.injected = true;
        self.panel
            .note(&format!("the vendor goes down for {} s", OUTAGE.as_secs()));
        self.env.outage(OUTAGE);
        // Tenants keep writing: their messages wait in their outboxes.
        let mut pending = Vec::new();
        for (t, text) in during {
            let tenant = self.tenants[*t % self.tenants.len()].clone();
            let keeper = self
                .assignments
                .assign(&tenant)
                .context("the desk has no housekeeper")?;
            let id = self.say(&tenant, &keeper, text).await?;
            pending.push((tenant, keeper, id, text.clone()));
        }
        let down = self
            .qc_event(|e| {
                matches!(
                    e,
                    QcEvent::VerdictChanged {
                        to: Verdict::Down,
                        ..
                    }
                )
            })
            .await;
        report.detected = down.is_some();
        report.detected_after_ms = down.map(|_| started.elapsed().as_millis() as u64);
        report.alert_fired = self.alerts_fired.contains_key("vendor_down")
            || self
                .qc_event(
                    |e| matches!(e, QcEvent::AlertFired { rule, .. } if rule == "vendor_down"),
                )
                .await
                .is_some();
        self.panel.render(&self.view());
        let resolved = self
            .qc_event(|e| matches!(e, QcEvent::AlertResolved { rule } if rule == "vendor_down"))
            .await;
        // Every monitor has left Down.
        let deadline = tokio::time::Instant::now() + WAIT;
        while self
            .monitors
            .iter()
            .any(|m| m.verdict().verdict == Verdict::Down)
            && tokio::time::Instant::now() < deadline
        {
            self.absorb();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        report.resolved = resolved.is_some()
            && self
                .monitors
                .iter()
                .all(|m| m.verdict().verdict != Verdict::Down);
        report.resolved_after_ms = report
            .resolved
            .then(|| started.elapsed().as_millis() as u64);
        // A message whose attempts all fell into the outage is parked as failed; the app
        // sends it again once the vendor is back (same client id: never a duplicate).
        for (tenant, ..) in &pending {
            let client = &self.person(tenant)?.client;
            for item in client.outbox().await? {
                if let SendStatus::Failed {
                    recoverable: true, ..
                } = item.status
                {
                    self.panel
                        .note(&format!("{tenant}'s app resends a message"));
                    client.resend(&item.message.client_id).await?;
                }
            }
        }
        // The questions written during the outage arrive and are answered at once.
        for (tenant, keeper, id, text) in pending {
            self.delivered(&keeper, &id).await?;
            let reply = self.reply_text(&keeper, &tenant, &text).await;
            self.answer(&keeper, &tenant, &reply).await?;
        }
        Ok(())
    }

    async fn day(mut self) -> Result<Summary> {
        let steps = day::script(self.options.tenants, self.options.seed);
        let mut outage = OutageReport::default();
        self.panel.start(
            &self.env,
            self.tenants.len(),
            self.assignments.housekeepers().len(),
        );
        for step in &steps {
            self.absorb();
            match step {
                Step::Hour(h) => {
                    self.until_hour(*h);
                    self.panel.hour(*h);
                }
                Step::Question {
                    tenant,
                    text,
                    answer,
                } => {
                    let tenant = self.tenants[*tenant % self.tenants.len()].clone();
                    self.question(&tenant, text, *answer).await?;
                }
                Step::Outage { during } => self.outage(during, &mut outage).await?,
            }
            self.panel.render(&self.view());
            self.pause().await;
        }
        // Let the last events settle, then read the figures.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.absorb();
        let (questions, in_time) = day::expected(&steps);
        let businesses: Vec<_> = self
            .monitors
            .iter()
            .filter_map(|m| m.snapshot().business)
            .collect();
        let measured = response_rate(&businesses);
        let expected = if questions == 0 {
            1.0
        } else {
            in_time as f64 / questions as f64
        };
        let sent = self.sent.len() as u64;
        let received = self
            .sent
            .iter()
            .filter(|k| self.received.contains_key(*k))
            .count() as u64;
        let duplicates = self.received.values().filter(|n| **n > 1).count() as u64;
        let archived = self.env.archived(sent).await;
        let ok = received == sent
            && duplicates == 0
            && outage.detected
            && outage.alert_fired
            && outage.resolved
            && measured.is_some_and(|m| (m - expected).abs() < 1e-9)
            && archived.is_none_or(|a| a == sent);
        let summary = Summary {
            vendor: self.env.vendor_name().to_owned(),
            seed: self.options.seed,
            tenants: self.tenants.len(),
            housekeepers: self.assignments.housekeepers().len(),
            messages_sent: sent,
            messages_received: received,
            missing: sent - received,
            duplicates,
            outage,
            questions,
            expected_answered_in_time: in_time,
            expected_response_rate: expected,
            measured_response_rate: measured,
            escalations: self.escalations,
            typed_replies: self.typed_replies,
            alerts_fired: self.alerts_fired.clone(),
            assignments: self
                .assignments
                .load()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            archived,
            ok,
        };
        for p in self.people.values() {
            p.client.logout().await;
        }
        let Desk { env, tasks, .. } = self;
        drop(tasks);
        env.shutdown().await;
        Ok(summary)
    }

    /// Business time moves on to `hour`:00 (UTC) of the scripted day: the first call moves
    /// the vendor's clock to the next 09:00, later ones to the hour if it is still ahead.
    fn until_hour(&mut self, hour: u32) {
        const HOUR_MS: i64 = 3_600_000;
        const DAY_MS: i64 = 24 * HOUR_MS;
        let now = self.now().as_millis();
        let day_start = *self.day_start.get_or_insert_with(|| {
            let midnight = now.div_euclid(DAY_MS) * DAY_MS;
            let start = midnight + i64::from(day::HOURS.start) * HOUR_MS;
            if start >= now { start } else { start + DAY_MS }
        });
        let target = day_start + i64::from(hour - day::HOURS.start) * HOUR_MS;
        if target > now {
            self.env
                .advance(Duration::from_millis((target - now) as u64));
        }
    }

    /// What the panels show now.
    fn view(&self) -> crate::panel::View {
        let snapshots: Vec<QcSnapshot> = self.monitors.iter().map(QcMonitor::snapshot).collect();
        let worst = snapshots
            .iter()
            .map(|s| s.verdict.verdict)
            .max()
            .unwrap_or(Verdict::Healthy);
        let send_p99 = snapshots
            .iter()
            .flat_map(|s| s.operations.iter())
            .filter(|o| o.op == Op::Send)
            .filter_map(|o| o.latency_ms_1m[2])
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.max(v)))
            });
        let businesses: Vec<_> = snapshots
            .iter()
            .filter_map(|s| s.business.clone())
            .collect();
        let firing: Vec<String> = snapshots
            .iter()
            .flat_map(|s| s.alerts.iter())
            .filter(|a| a.firing)
            .map(|a| a.rule.clone())
            .collect();
        let conversations = self
            .assignments
            .housekeepers()
            .iter()
            .filter_map(|h| {
                let p = self.people.get(h)?;
                let rows = p
                    .client
                    .conversations(0, 8)
                    .into_iter()
                    .map(|s| {
                        let other =
                            s.id.to_string()
                                .split(':')
                                .filter(|part| *part != "d" && *part != h.as_str())
                                .collect::<Vec<_>>()
                                .join(":");
                        (other, s.unread)
                    })
                    .collect();
                Some((h.to_string(), rows))
            })
            .collect();
        crate::panel::View {
            verdict: worst,
            send_p99_ms: send_p99,
            response_rate: response_rate(&businesses),
            firing,
            conversations,
            online: self
                .people
                .values()
                .filter(|p| p.client.state().is_online())
                .count(),
            people: self.people.len(),
            sent: self.sent.len(),
            received: self.received.len(),
        }
    }
}
