//! Runs the scripted day on the desk: every participant is an `ImClient`, every housekeeper
//! is watched by a `QcMonitor`, and the business rules of `desk.rs` decide who answers
//! what. Counts every message sent and received so the summary can prove none was lost or
//! delivered twice. Speaks only `im-arch`, `im-qc` and the vendor-neutral model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use im_arch::{ClientEvent, DeliveryPolicy, EventKind, Filter, ImClient, SendStatus};
use im_qc::{
    Agents, AlertRule, BusinessSnapshot, Comparison, Metric, MetricsServer, Op, QcConfig, QcEvent,
    QcMonitor, QcSnapshot, Severity, UnknownDevice, Verdict, Watch,
};
use im_service::{
    ChangeKind, ClientMsgId, Clock, Content, ConversationId, ServerMsgId, Timestamp, UserId,
};
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
/// Bound on a wait inside a step for something a check then counts (another device in
/// step): it takes milliseconds, and a broken rule should fail the summary, not stall the
/// day for `WAIT` at every reply.
const CHECK_WAIT: Duration = Duration::from_secs(2);

/// How the day is run.
#[derive(Debug, Clone)]
pub struct DayOptions {
    /// Tenants.
    pub tenants: usize,
    /// Housekeepers.
    pub housekeepers: usize,
    /// Prepended to every account name (unique per run on a real server, else empty).
    pub prefix: String,
    /// Seed of the script.
    pub seed: u64,
    /// Pause between steps is 300 ms divided by this.
    pub speed: f64,
    /// Print the live view.
    pub live: bool,
    /// The first housekeeper is a person typing on stdin.
    pub interactive: bool,
    /// Serve QC's live dashboard.
    pub dashboard: Option<DashboardOptions>,
}

impl DayOptions {
    /// The tenants' accounts: `{prefix}tenant-1` …
    pub fn tenant_ids(&self) -> Vec<UserId> {
        (1..=self.tenants)
            .map(|i| UserId::new(format!("{}tenant-{i}", self.prefix)))
            .collect()
    }

    /// The housekeepers' accounts: `{prefix}keeper-1` …
    pub fn housekeeper_ids(&self) -> Vec<UserId> {
        (1..=self.housekeepers)
            .map(|i| UserId::new(format!("{}keeper-{i}", self.prefix)))
            .collect()
    }
}

/// A check of the summary that cannot apply on this vendor, and why (printed, never
/// dropped silently).
#[derive(Debug, Clone, Serialize)]
pub struct NotApplicable {
    /// The summary field of the check.
    pub check: String,
    /// Why it cannot apply here.
    pub reason: String,
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
    /// How business time is kept: the vendor's clock moved, or mapped from a real server's.
    pub business_time: String,
    /// Checks that cannot apply on this vendor, with the reason.
    pub not_applicable: Vec<NotApplicable>,
    /// Wrong quick replies recalled and corrected.
    pub recalls: RecallReport,
    /// Replies tenants read, reported back to their housekeepers as "seen".
    pub seen: SeenReport,
    /// The housekeeper who works from two devices.
    pub two_devices: DevicesReport,
    /// Every check passed.
    pub ok: bool,
}

/// Wrong quick replies: sent, recalled, then the right one sent. A recalled message was
/// delivered (it counts as received, never as lost) and then changed for everyone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecallReport {
    /// Slips in the script (typed answers in `--interactive` do not slip).
    pub expected: u64,
    /// Wrong replies recalled.
    pub done: u64,
    /// Recalls the vendor or the client refused.
    pub failed: u64,
    /// Recalls the tenant's client announced exactly once (`MessageChanged`).
    pub reached_tenant_once: u64,
    /// Recalls the tenant's timeline shows as "message recalled", never with their text.
    pub shown_as_recalled: u64,
}

/// "Seen": every reply a tenant read comes back to its housekeeper as a read receipt.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SeenReport {
    /// Replies tenants read (they mark their conversation read when a reply arrives).
    pub replies_read: u64,
    /// Of those, reported to the housekeeper's client exactly once (`ReadBy`).
    pub reported_once: u64,
    /// Replies seen, per housekeeper.
    pub by_housekeeper: BTreeMap<String, u64>,
}

/// One housekeeper on two devices (desk and phone) of a multi-device vendor.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DevicesReport {
    /// Who (the first housekeeper).
    pub housekeeper: Option<String>,
    /// Messages sent from the second device.
    pub replies_from_second: u64,
    /// Of those, shown once on the first device as its user's own.
    pub shown_once_on_first: u64,
    /// Messages sent from the first device.
    pub replies_from_first: u64,
    /// Of those, shown once on the second device as its user's own.
    pub shown_once_on_second: u64,
    /// Times the other device showed a conversation unread after its own reply arrived.
    pub own_reply_left_unread: u64,
    /// Reads on one device while the other showed the conversation unread.
    pub reads: u64,
    /// Of those, cleared on the other device too.
    pub reads_synced: u64,
}

/// What QC saw of the outage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutageReport {
    /// An outage was injected.
    pub injected: bool,
    /// How (the vendor's own switch, or a fault proxy in front of a real server).
    pub method: String,
    /// What the fault proxy did, on a real server.
    pub proxy: Option<crate::wiring::ProxyCounts>,
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

/// What a client's bus reported, for the ledger.
enum Observed {
    /// A message from someone else reached device `device` of `user`.
    Received {
        user: UserId,
        device: usize,
        id: ClientMsgId,
        server_id: ServerMsgId,
    },
    /// My own message, sent from my other device, reached this one.
    Own { device: usize, id: ClientMsgId },
    /// A message was recalled, as shown on device `device` of `user`.
    Recalled {
        user: UserId,
        device: usize,
        target: ServerMsgId,
    },
    /// A peer has read up to `up_to` ("seen"), as shown on device `device` of `user`.
    ReadBy {
        user: UserId,
        device: usize,
        up_to: ServerMsgId,
    },
}

/// A participant: one client per device (the first is the one QC watches).
struct Person {
    user: UserId,
    client: ImClient,
    second: Option<ImClient>,
}

/// A recalled wrong reply.
struct Recall {
    tenant: UserId,
    conversation: ConversationId,
    server_id: ServerMsgId,
}

/// The ledger of the two-device housekeeper.
#[derive(Default)]
struct DevicesLedger {
    housekeeper: Option<UserId>,
    /// Messages sent per device (0: first, 1: second).
    sent: [Vec<ClientMsgId>; 2],
    /// Own messages from the other device, per (receiving device, client id).
    own: HashMap<(usize, ClientMsgId), u64>,
    /// Messages from others that reached the second device.
    second_received: HashMap<ClientMsgId, u64>,
    /// Replies sent so far (which device sends the next).
    replies: u64,
    own_reply_left_unread: u64,
    reads: u64,
    reads_synced: u64,
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
    observed: mpsc::UnboundedReceiver<Observed>,
    /// Forwarders from client and QC buses into the channels above; aborted on drop.
    tasks: Tasks,
    /// (addressee, client id) → times received.
    received: HashMap<(UserId, ClientMsgId), u64>,
    /// Every message sent: (addressee, client id).
    sent: Vec<(UserId, ClientMsgId)>,
    /// Vendor ids of delivered messages, by client id.
    server_ids: HashMap<ClientMsgId, ServerMsgId>,
    /// Recalls announced, per (user, device, message).
    recalls_shown: HashMap<(UserId, usize, ServerMsgId), u64>,
    /// Read receipts announced, per (housekeeper, device, message read up to).
    read_by: HashMap<(UserId, usize, ServerMsgId), u64>,
    recalls: Vec<Recall>,
    recall_failures: u64,
    /// Replies tenants read: (housekeeper, reply).
    replies_read: Vec<(UserId, ServerMsgId)>,
    devices: DevicesLedger,
    alerts_fired: BTreeMap<String, u64>,
    /// Latest verdict per monitor index.
    verdicts: Vec<Verdict>,
    panel: Panel,
    options: DayOptions,
    escalations: u64,
    /// Replies a person typed (interactive mode).
    typed_replies: u64,
    /// Slips of the script played (a typed answer does not slip).
    slips: u64,
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
/// tenants, so their agent rows add up without counting anything twice (QC's desk view,
/// the same figure the dashboard shows).
fn response_rate(businesses: &[BusinessSnapshot]) -> Option<f64> {
    BusinessSnapshot::combine(businesses).and_then(|desk| desk.response_rate)
}

/// The live dashboard of a run (`--dashboard`).
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// The bearer token it requires, if any.
    pub token: Option<String>,
}

/// How often the dashboard samples the monitors: a day of the script takes about a
/// minute, so the outage spans a dozen points.
const DASHBOARD_SAMPLE: Duration = Duration::from_millis(250);

/// Runs the day on `env` and returns its summary, and the dashboard server when one was
/// asked for (it keeps serving the monitors' last state until dropped).
pub async fn run(
    env: Environment,
    options: DayOptions,
) -> Result<(Summary, Option<MetricsServer>)> {
    let tenants = options.tenant_ids();
    let housekeepers = options.housekeeper_ids();
    let clock = env.clock();
    let (observed_tx, observed) = mpsc::unbounded_channel();
    let (qc_tx, qc_events) = mpsc::unbounded_channel();
    let mut people = HashMap::new();
    let mut monitors = Vec::new();
    let mut tasks = Tasks::default();
    // The first housekeeper works from two devices (desk and phone).
    let two_devices = housekeepers.first().cloned();
    for user in tenants.iter().chain(&housekeepers) {
        let Seat { client, metrics } = env.seat(user)?;
        tasks.0.push(observe(&client, user, 0, &observed_tx));
        let second = if two_devices.as_ref() == Some(user) {
            let seat = env.second_device(user)?;
            tasks.0.push(observe(&seat.client, user, 1, &observed_tx));
            Some(seat.client)
        } else {
            None
        };
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
                second,
            },
        );
    }
    for p in people.values() {
        for client in std::iter::once(&p.client).chain(&p.second) {
            client
                .login()
                .await
                .with_context(|| format!("{} logs in", p.user))?;
        }
    }
    let dashboard = match &options.dashboard {
        Some(d) => {
            let mut builder = MetricsServer::builder().history(DASHBOARD_SAMPLE, 14_400);
            for (keeper, monitor) in housekeepers.iter().zip(&monitors) {
                builder = builder.seat(keeper.as_str(), monitor.source());
            }
            if let Some(token) = &d.token {
                builder = builder.bearer_token(token.clone());
            }
            let server = builder.serve(d.addr).await?;
            // The address goes to stderr: stdout may be the JSON summary (`--json`). The
            // token is never printed: logs of a run are read by others.
            eprintln!("dashboard: http://{}/", server.addr());
            if d.token.is_some() {
                eprintln!("dashboard: open it with #token=<the token> after the address");
            }
            Some(server)
        }
        None => None,
    };
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
        observed,
        tasks,
        received: HashMap::new(),
        sent: Vec::new(),
        server_ids: HashMap::new(),
        recalls_shown: HashMap::new(),
        read_by: HashMap::new(),
        recalls: Vec::new(),
        recall_failures: 0,
        replies_read: Vec::new(),
        devices: DevicesLedger {
            housekeeper: two_devices,
            ..DevicesLedger::default()
        },
        alerts_fired: BTreeMap::new(),
        verdicts,
        options,
        escalations: 0,
        typed_replies: 0,
        slips: 0,
        day_start: None,
    };
    Ok((desk.day().await?, dashboard))
}

/// Forwards what device `device` of `user` receives, recalls and hears read into the
/// ledger. The client never waits for a reader: this queue of 1,024 is far above a seat's
/// traffic (the task forwards at once), and should it ever overflow, the missing events
/// fail the summary's checks.
fn observe(
    client: &ImClient,
    user: &UserId,
    device: usize,
    tx: &mpsc::UnboundedSender<Observed>,
) -> JoinHandle<()> {
    let mut events = client.subscribe_with(
        Filter::of([
            EventKind::Message,
            EventKind::MessageChanged,
            EventKind::ReadBy,
        ]),
        DeliveryPolicy::DropOldest { capacity: 1024 },
    );
    let tx = tx.clone();
    let me = user.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let observed = match &*ev {
                ClientEvent::Message(m) if m.message.sender != me => Observed::Received {
                    user: me.clone(),
                    device,
                    id: m.message.client_id.clone(),
                    server_id: m.message.server_id.clone(),
                },
                ClientEvent::Message(m) => Observed::Own {
                    device,
                    id: m.message.client_id.clone(),
                },
                ClientEvent::MessageChanged { change, .. }
                    if change.kind == ChangeKind::Recalled =>
                {
                    Observed::Recalled {
                        user: me.clone(),
                        device,
                        target: change.target.clone(),
                    }
                }
                ClientEvent::ReadBy { up_to, .. } => Observed::ReadBy {
                    user: me.clone(),
                    device,
                    up_to: up_to.clone(),
                },
                _ => continue,
            };
            let _ = tx.send(observed);
        }
    })
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

    /// Device `device` (0: the first) of `user`.
    fn device(&self, user: &UserId, device: usize) -> Result<&ImClient> {
        let p = self.person(user)?;
        match device {
            0 => Ok(&p.client),
            _ => p
                .second
                .as_ref()
                .with_context(|| format!("{user} has no second device")),
        }
    }

    /// Whether `user` works from two devices.
    fn has_two_devices(&self, user: &UserId) -> bool {
        self.devices.housekeeper.as_ref() == Some(user)
    }

    /// Unread messages of `conversation` on device `device` of `user` (0 without a row).
    fn unread(&self, user: &UserId, device: usize, conversation: &ConversationId) -> u64 {
        self.device(user, device).map_or(0, |c| {
            c.conversations(0, usize::MAX)
                .into_iter()
                .find(|r| &r.id == conversation)
                .map_or(0, |r| r.unread)
        })
    }

    /// Sends `text` from `from` to `to`; returns the message's client id.
    async fn say(&mut self, from: &UserId, to: &UserId, text: &str) -> Result<ClientMsgId> {
        self.say_from(from, 0, to, text).await
    }

    /// Sends `text` from device `device` of `from` to `to`; returns the client id.
    async fn say_from(
        &mut self,
        from: &UserId,
        device: usize,
        to: &UserId,
        text: &str,
    ) -> Result<ClientMsgId> {
        let conv = ConversationId::direct(from, to);
        let id = self
            .device(from, device)?
            .send(conv, Content::text(text))
            .await
            .with_context(|| format!("{from} sends"))?;
        self.sent.push((to.clone(), id.clone()));
        if self.has_two_devices(from) {
            self.devices.sent[device.min(1)].push(id.clone());
        }
        let label = match device {
            0 => from.to_string(),
            _ => format!("{from} (phone)"),
        };
        self.panel.message(self.now(), &label, to, text);
        Ok(id)
    }

    /// A housekeeper answers a tenant: reads the question (on the device they answer
    /// from), sends `wrong` first and recalls it when the script has them slip, sends the
    /// reply, and the tenant receives and reads it. (The housekeeper's QC monitor counts
    /// the reply from the `Sent` status on the housekeeper's bus, `Watch::user`, or, sent
    /// from the phone, as their own message arriving on the watched device.)
    async fn answer(
        &mut self,
        keeper: &UserId,
        tenant: &UserId,
        text: &str,
        wrong: Option<&str>,
    ) -> Result<()> {
        let conv = ConversationId::direct(keeper, tenant);
        let device = if self.has_two_devices(keeper) {
            let d = desk::reply_device(self.devices.replies);
            self.devices.replies += 1;
            d
        } else {
            0
        };
        self.read_question(keeper, device, &conv).await?;
        if let Some(wrong) = wrong {
            let id = self.say_from(keeper, device, tenant, wrong).await?;
            self.delivered(tenant, &id).await?;
            self.own_reply_elsewhere(keeper, device, &conv, &id).await;
            self.recall(keeper, device, tenant, &conv, &id).await?;
        }
        let id = self.say_from(keeper, device, tenant, text).await?;
        self.delivered(tenant, &id).await?;
        self.own_reply_elsewhere(keeper, device, &conv, &id).await;
        self.tenant_reads(tenant, keeper, &conv, &id).await
    }

    /// The housekeeper reads `conv` on `device`; with two devices, the other one's unread
    /// count follows (the vendor's read receipt for "my other device").
    async fn read_question(
        &mut self,
        keeper: &UserId,
        device: usize,
        conv: &ConversationId,
    ) -> Result<()> {
        let other = 1 - device.min(1);
        let unread_elsewhere = self.has_two_devices(keeper) && self.unread(keeper, other, conv) > 0;
        if let Err(e) = self.device(keeper, device)?.mark_read(conv).await {
            self.panel
                .note(&format!("{keeper} could not mark {conv} read: {e}"));
            return Ok(());
        }
        if unread_elsewhere {
            self.devices.reads += 1;
            let k = keeper.clone();
            let c = conv.clone();
            if self
                .wait_for(CHECK_WAIT, |d| d.unread(&k, other, &c) == 0)
                .await
            {
                self.devices.reads_synced += 1;
            } else {
                self.panel.note(&format!(
                    "{keeper}'s other device still shows {conv} unread"
                ));
            }
        }
        Ok(())
    }

    /// With two devices, my reply `id` sent from `device` must reach the other one once,
    /// as mine, leaving the conversation read there.
    async fn own_reply_elsewhere(
        &mut self,
        keeper: &UserId,
        device: usize,
        conv: &ConversationId,
        id: &ClientMsgId,
    ) {
        if !self.has_two_devices(keeper) {
            return;
        }
        let key = (1 - device.min(1), id.clone());
        if self
            .wait_for(CHECK_WAIT, |d| d.devices.own.contains_key(&key))
            .await
            && self.unread(keeper, key.0, conv) > 0
        {
            self.devices.own_reply_left_unread += 1;
        }
    }

    /// The housekeeper recalls their wrong reply `id`; the tenant's client announces it.
    async fn recall(
        &mut self,
        keeper: &UserId,
        device: usize,
        tenant: &UserId,
        conv: &ConversationId,
        id: &ClientMsgId,
    ) -> Result<()> {
        let Some(server_id) = self.server_ids.get(id).cloned() else {
            self.recall_failures += 1;
            return Ok(());
        };
        match self.device(keeper, device)?.recall(conv, &server_id).await {
            Ok(_) => {
                self.panel.note(&format!(
                    "{keeper} recalls the wrong reply; {tenant} sees \"message recalled\""
                ));
                self.recalls.push(Recall {
                    tenant: tenant.clone(),
                    conversation: conv.clone(),
                    server_id,
                });
            }
            Err(e) => {
                self.recall_failures += 1;
                self.panel
                    .note(&format!("{keeper} could not recall a reply: {e}"));
            }
        }
        Ok(())
    }

    /// The tenant reads the reply `id`; the housekeeper's client hears it was seen.
    async fn tenant_reads(
        &mut self,
        tenant: &UserId,
        keeper: &UserId,
        conv: &ConversationId,
        id: &ClientMsgId,
    ) -> Result<()> {
        let Some(server_id) = self.server_ids.get(id).cloned() else {
            return Ok(());
        };
        if let Err(e) = self.person(tenant)?.client.mark_read(conv).await {
            self.panel
                .note(&format!("{tenant} could not mark {conv} read: {e}"));
            return Ok(());
        }
        self.replies_read.push((keeper.clone(), server_id));
        Ok(())
    }

    /// Takes one observation into the ledger.
    fn on_observed(&mut self, o: Observed) {
        match o {
            Observed::Received {
                user,
                device: 0,
                id,
                server_id,
            } => {
                self.server_ids.insert(id.clone(), server_id);
                *self.received.entry((user, id)).or_default() += 1;
            }
            Observed::Received { id, .. } => {
                *self.devices.second_received.entry(id).or_default() += 1;
            }
            Observed::Own { device, id } => {
                *self.devices.own.entry((device, id)).or_default() += 1;
            }
            Observed::Recalled {
                user,
                device,
                target,
            } => {
                *self
                    .recalls_shown
                    .entry((user, device, target))
                    .or_default() += 1
            }
            Observed::ReadBy {
                user,
                device,
                up_to,
            } => *self.read_by.entry((user, device, up_to)).or_default() += 1,
        }
    }

    /// Takes in what arrived and what QC said, without waiting.
    fn absorb(&mut self) {
        while let Ok(o) = self.observed.try_recv() {
            self.on_observed(o);
        }
        while let Ok(ev) = self.qc_events.try_recv() {
            self.on_qc(&ev);
        }
    }

    /// Waits (bounded) until `done` holds of the ledger or the clients; false on timeout.
    async fn wait_for(&mut self, within: Duration, done: impl Fn(&Desk) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.absorb();
            if done(self) {
                return true;
            }
            // Client state (unread counts) is polled; events wake the loop early.
            tokio::select! {
                o = self.observed.recv() => if let Some(o) = o { self.on_observed(o) },
                ev = self.qc_events.recv() => if let Some(ev) = ev { self.on_qc(&ev) },
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                self.absorb();
                return done(self);
            }
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

    /// Waits until `user` received message `id` (on every device of theirs).
    async fn delivered(&mut self, user: &UserId, id: &ClientMsgId) -> Result<()> {
        let key = (user.clone(), id.clone());
        if !self.wait_for(WAIT, |d| d.received.contains_key(&key)).await {
            bail!("{user} never received {id}");
        }
        if self.has_two_devices(user)
            && !self
                .wait_for(WAIT, |d| d.devices.second_received.contains_key(id))
                .await
        {
            bail!("{user}'s second device never received {id}");
        }
        Ok(())
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
                o = self.observed.recv() => {
                    if let Some(o) = o {
                        self.on_observed(o);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// A housekeeper's reply to a tenant: a typed answer in interactive mode for the first
    /// housekeeper, the matching quick reply otherwise; `true` when it was typed.
    async fn reply_text(
        &mut self,
        keeper: &UserId,
        tenant: &UserId,
        question: &str,
    ) -> (String, bool) {
        let quick = desk::quick_reply(question).text.to_owned();
        let me = self.assignments.housekeepers().first() == Some(keeper);
        if !(self.options.interactive && me) {
            return (quick, false);
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
                (l.trim().to_owned(), true)
            }
            _ => (quick, false),
        }
    }

    /// One tenant question, handled as the script says.
    async fn question(
        &mut self,
        tenant: &UserId,
        text: &str,
        answer: Answer,
        slip: bool,
    ) -> Result<()> {
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
                let (reply, typed) = self.reply_text(&keeper, tenant, text).await;
                // A slip: the wrong quick reply goes out first (a person typing does not).
                let wrong = (slip && !typed).then(|| desk::wrong_quick_reply(text).text);
                if wrong.is_some() {
                    self.slips += 1;
                }
                self.answer(&keeper, tenant, &reply, wrong).await?;
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
                    self.answer(&e.housekeeper, &tenant, &reply, None).await?;
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

    /// Waits (bounded) until every recall so far was announced to its tenant and every
    /// reply read so far was reported back as seen.
    async fn settle(&mut self) -> bool {
        self.wait_for(WAIT, |d| {
            d.recalls.iter().all(|r| {
                d.recalls_shown
                    .contains_key(&(r.tenant.clone(), 0, r.server_id.clone()))
            }) && d
                .replies_read
                .iter()
                .all(|(k, id)| d.read_by.contains_key(&(k.clone(), 0, id.clone())))
        })
        .await
    }

    async fn outage(
        &mut self,
        during: &[(usize, String)],
        report: &mut OutageReport,
    ) -> Result<()> {
        // The morning's last read and recall have the rest of the hour to arrive before
        // the vendor goes down at noon. A compressed day would otherwise cut the network a
        // few milliseconds after them, and on XMPP a read marker in flight then is lost for
        // good (no offline storage for markers; the adapter reads them from MAM only in
        // the offline pass): a fault of the compression, not of the business day. Bounded:
        // one that never arrives still fails the summary's check.
        self.settle().await;
        let started = tokio::time::Instant::now();
        report.injected = true;
        report.method = self.env.outage_method().to_owned();
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
        report.proxy = self.env.proxy_counts();
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
            let (reply, _) = self.reply_text(&keeper, &tenant, &text).await;
            self.answer(&keeper, &tenant, &reply, None).await?;
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
                    slip,
                } => {
                    let tenant = self.tenants[*tenant % self.tenants.len()].clone();
                    self.question(&tenant, text, *answer, *slip).await?;
                }
                Step::Outage { during } => self.outage(during, &mut outage).await?,
            }
            self.panel.render(&self.view());
            self.pause().await;
        }
        // Let the last events settle, then read the figures: every recall announced to its
        // tenant and every reply read reported back (bounded: a missing one fails a check).
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.settle().await;
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
        let recalls = self.recall_report(day::slips(&steps)).await?;
        let seen = self.seen_report();
        let two_devices = self.devices_report();
        let ok = received == sent
            && duplicates == 0
            && outage.detected
            && outage.alert_fired
            && outage.resolved
            && measured.is_some_and(|m| (m - expected).abs() < 1e-9)
            && archived.is_none_or(|a| a == sent)
            && recalls.failed == 0
            && recalls.done == self.slips
            && (self.options.interactive || recalls.done == recalls.expected)
            && recalls.reached_tenant_once == recalls.done
            && recalls.shown_as_recalled == recalls.done
            && seen.replies_read > 0
            && seen.reported_once == seen.replies_read
            && (two_devices.housekeeper.is_none() || two_devices.replies_from_second > 0)
            && two_devices.shown_once_on_first == two_devices.replies_from_second
            && two_devices.shown_once_on_second == two_devices.replies_from_first
            && two_devices.own_reply_left_unread == 0
            && two_devices.reads_synced == two_devices.reads;
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
            business_time: self.env.business_time().to_owned(),
            not_applicable: self
                .env
                .not_applicable()
                .into_iter()
                .map(|(check, reason)| NotApplicable {
                    check: check.to_owned(),
                    reason,
                })
                .collect(),
            recalls,
            seen,
            two_devices,
            ok,
        };
        for p in self.people.values() {
            for client in std::iter::once(&p.client).chain(&p.second) {
                client.logout().await;
            }
        }
        let Desk { env, tasks, .. } = self;
        drop(tasks);
        env.shutdown().await;
        Ok(summary)
    }

    /// The recalls, checked on the tenants' side: announced once, and the timeline (store,
    /// then the history windows) shows each recalled reply once, as recalled.
    async fn recall_report(&self, expected: u64) -> Result<RecallReport> {
        let mut report = RecallReport {
            expected,
            done: self.recalls.len() as u64,
            failed: self.recall_failures,
            ..RecallReport::default()
        };
        for r in &self.recalls {
            let key = (r.tenant.clone(), 0, r.server_id.clone());
            if self.recalls_shown.get(&key) == Some(&1) {
                report.reached_tenant_once += 1;
            }
            let page = self
                .person(&r.tenant)?
                .client
                .timeline_before(&r.conversation, None, 500)
                .await?;
            let shown: Vec<_> = page
                .messages
                .iter()
                .filter(|m| m.server_id == r.server_id)
                .collect();
            if let [m] = shown.as_slice()
                && matches!(m.content, Content::Recalled { .. })
            {
                report.shown_as_recalled += 1;
            }
        }
        Ok(report)
    }

    /// The replies tenants read, and how many came back as "seen" (on the housekeepers'
    /// first devices).
    fn seen_report(&self) -> SeenReport {
        let mut report = SeenReport {
            by_housekeeper: self
                .assignments
                .housekeepers()
                .iter()
                .map(|h| (h.to_string(), 0))
                .collect(),
            ..SeenReport::default()
        };
        let mut counted = HashSet::new();
        for (keeper, reply) in &self.replies_read {
            if !counted.insert((keeper, reply)) {
                continue;
            }
            report.replies_read += 1;
            if self.read_by.get(&(keeper.clone(), 0, reply.clone())) == Some(&1) {
                report.reported_once += 1;
                *report.by_housekeeper.entry(keeper.to_string()).or_default() += 1;
            }
        }
        report
    }

    /// What the two-device housekeeper's devices showed of each other.
    fn devices_report(&self) -> DevicesReport {
        let d = &self.devices;
        let once_on = |device: usize, ids: &[ClientMsgId]| {
            ids.iter()
                .filter(|id| d.own.get(&(device, (*id).clone())) == Some(&1))
                .count() as u64
        };
        DevicesReport {
            housekeeper: d.housekeeper.as_ref().map(ToString::to_string),
            replies_from_second: d.sent[1].len() as u64,
            shown_once_on_first: once_on(0, &d.sent[1]),
            replies_from_first: d.sent[0].len() as u64,
            shown_once_on_second: once_on(1, &d.sent[0]),
            own_reply_left_unread: d.own_reply_left_unread,
            reads: d.reads,
            reads_synced: d.reads_synced,
        }
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
            seen: self
                .assignments
                .housekeepers()
                .iter()
                .map(|h| {
                    let n = self
                        .read_by
                        .keys()
                        .filter(|(k, device, _)| k == h && *device == 0)
                        .count() as u64;
                    (h.to_string(), n)
                })
                .collect(),
            online: self
                .people
                .values()
                .flat_map(|p| std::iter::once(&p.client).chain(&p.second))
                .filter(|c| c.state().is_online())
                .count(),
            people: self
                .people
                .values()
                .map(|p| 1 + usize::from(p.second.is_some()))
                .sum(),
            sent: self.sent.len(),
            received: self.received.len(),
        }
    }
}
