//! The reference vendor against Mosquitto (MQTT QoS 1) and NATS core on one load generator
//! (issue 22, acceptance 3): N senders → N receivers over loopback, 100-byte messages
//! ([`Payload`]), a closed loop of K messages in flight per pair (a message is in flight from
//! its send until its receiver has it; each arrival sends one more), each message counted
//! when the receiver gets it; 1 s warm-up, then `--secs` (default 10) measured. Loads: light
//! (10 pairs × 1 in flight) and heavy (100 pairs × 10).
//!
//! Systems, each spoken to by a minimal client of `im_benches::load`:
//! * **reference (wire)**: the reference vendor (`ReferenceServer`, default config, in
//!   process on a tokio runtime of its own with one worker thread, as Mosquitto runs on
//!   one; `--server-threads N` changes it), its wire protocol spoken directly: `Send`
//!   requests on the sender's connection (their receipts read beside), `MessagePushed`
//!   events on the receiver's;
//! * **reference (wire, server on 2 threads)**: the same on tokio's default runtime (one
//!   worker per core), to show what the cross-thread wakeups cost on two shared cores;
//! * **reference (adapter)**: the same server through the `reference` adapter
//!   (`ReferenceClient::send`, the receiver's push stream), for comparison;
//! * **Mosquitto QoS 1**: `mosquitto` started on a free loopback port from a config this
//!   file writes (no persistence), PUBLISH QoS 1 (PUBACKed) to a topic per pair, the
//!   receiver subscribed at QoS 1 and PUBACKing each delivery;
//! * **NATS core**: `nats-server` likewise, PUB to a subject per pair, the receiver's SUB.
//!
//! A server whose binary is missing (`mosquitto` and `nats-server` on the PATH or in
//! /usr/sbin; `MOSQUITTO`/`NATS_SERVER` name another) is skipped with a line saying so. The
//! ratios the issue asks for are printed and written as figures (`cargo xtask bench --bench
//! vendor_compare`): reference / Mosquitto msgs/s per load (goal ≥ 1.5) and the light-load
//! p99 of the reference vendor against NATS core's (goal ≤). `--reps N` repeats every run,
//! the systems interleaved, and reports each system's median run. Checked, not timed: every
//! message reaches its own receiver exactly once and nothing fails; any breach fails the run.

// A benchmark binary: a panic is how it reports a broken invariant.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use im_benches::load::reference::{RawReader, RawReference, RawWriter};
use im_benches::load::{LoadError, Payload, mqtt, nats};
use im_benches::{HEAVY, LIGHT, Load};
use im_service::reference::{ReferenceClient, ReferenceConfig, ReferenceVendor};
use im_service::{
    Content, ConversationId, Credentials, EventStream, OutgoingMessage, Timestamp, UserId, Vendor,
    VendorEvent,
};
use im_vendor_sim::{ReferenceServer, ServerConfig};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

const WARM_UP: Duration = Duration::from_secs(1);
const DEFAULT_SECS: f64 = 10.0;
/// How long after the window the last messages may take before the run fails.
const DRAIN: Duration = Duration::from_secs(30);
/// The goals (reported against, not asserted).
const GOAL_VS_MOSQUITTO: f64 = 1.5;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    ReferenceWire,
    ReferenceWire2,
    ReferenceAdapter,
    Mosquitto,
    Nats,
}

impl System {
    const ALL: [System; 5] = [
        System::ReferenceWire,
        System::ReferenceWire2,
        System::ReferenceAdapter,
        System::Mosquitto,
        System::Nats,
    ];

    fn label(self) -> &'static str {
        match self {
            System::ReferenceWire => "reference (wire)",
            System::ReferenceWire2 => "reference (wire, server on 2 threads)",
            System::ReferenceAdapter => "reference (adapter)",
            System::Mosquitto => "Mosquitto QoS 1",
            System::Nats => "NATS core",
        }
    }
}

/// A broker in a child process, killed (by its PID, through `Child`) when dropped.
struct External {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl External {
    /// Starts `system`'s broker on a free loopback port, from a config written here; `None`
    /// with the reason when its binary is missing.
    fn start(system: System) -> Result<External, String> {
        let (var, name) = match system {
            System::Mosquitto => ("MOSQUITTO", "mosquitto"),
            System::Nats => ("NATS_SERVER", "nats-server"),
            _ => unreachable!("in process"),
        };
        let binary = find_binary(var, name)
            .ok_or_else(|| format!("{name} not found (PATH, /usr/sbin, or ${var})"))?;
        let port = free_port();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("server.conf");
        let (text, args): (String, Vec<String>) = match system {
            // No persistence, anonymous clients on loopback only; queues large enough for
            // the heavy load (10 in flight per client is within the default 20 in flight).
            System::Mosquitto => (
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                     max_queued_messages 10000\nlog_dest stderr\nlog_type error\n"
                ),
                vec!["-c".into(), config.display().to_string()],
            ),
            // The server's pings every 5 minutes: the minimal client does not answer them
            // on a sending connection, and a run is far shorter.
            System::Nats => (
                format!("listen: 127.0.0.1:{port}\nping_interval: \"5m\"\n"),
                vec!["-c".into(), config.display().to_string()],
            ),
            _ => unreachable!(),
        };
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("server.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&binary)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        let external = External {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(external.addr).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(external._dir.path().join("server.log"));
                return Err(format!("{name} did not listen within 10 s: {log:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(external)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn find_binary(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A port nothing listens on right now (bound and released: the broker binds it next).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The sending side of one pair.
enum Sender {
    Wire(RawWriter, ConversationId),
    Adapter(
        Arc<ReferenceClient>,
        ConversationId,
        JoinSet<Result<(), String>>,
    ),
    Mqtt(mqtt::MqttWriter, String),
    Nats(nats::NatsWriter, String),
}

impl Sender {
    /// Sends one payload (flushed); the adapter's send runs as a task of its own.
    async fn send(&mut self, payload: String) -> Result<(), String> {
        let result = match self {
            Sender::Wire(w, conversation) => w.send_text(conversation, payload).await,
            Sender::Adapter(client, conversation, sends) => {
                let client = client.clone();
                let message = OutgoingMessage::new(
                    conversation.clone(),
                    Content::text(payload),
                    Timestamp::from_millis(0),
                );
                sends.spawn(async move {
                    client
                        .send(&message)
                        .await
                        .map(drop)
                        .map_err(|e| format!("ReferenceClient::send: {e}"))
                });
                Ok(())
            }
            Sender::Mqtt(w, topic) => w.publish(topic, payload.as_bytes()).await.map(drop),
            Sender::Nats(w, subject) => w.publish(subject, payload.as_bytes()).await,
        };
        result.map_err(|e| format!("send: {e}"))
    }
}

/// What reads the sending connection's acknowledgements (the reference receipts, MQTT
/// PUBACKs, NATS errors), until the connection closes at the end.
enum SenderAcks {
    Wire(RawReader),
    Mqtt(mqtt::MqttReader),
    Nats(nats::NatsReader),
    None,
}

impl SenderAcks {
    /// Whether every send is acknowledged (NATS core acknowledges nothing).
    fn acknowledges(&self) -> bool {
        matches!(self, SenderAcks::Wire(_) | SenderAcks::Mqtt(_))
    }

    /// Reads acknowledgements, publishing their count, until the connection fails or
    /// closes (the driver stops the task when it has all it expects; nothing here is
    /// cancelled halfway through a packet before then).
    async fn run(self, acked: tokio::sync::watch::Sender<u64>) -> Result<(), String> {
        match self {
            SenderAcks::Wire(mut r) => loop {
                r.next_receipt()
                    .await
                    .map_err(|e| format!("receipt: {e}"))?;
                acked.send_modify(|n| *n += 1);
            },
            SenderAcks::Mqtt(mut r) => loop {
                r.puback().await.map_err(|e| format!("PUBACK: {e}"))?;
                acked.send_modify(|n| *n += 1);
            },
            SenderAcks::Nats(mut r) => loop {
                match r.next().await {
                    Ok(_) => {}
                    Err(LoadError::Closed(_)) => return Ok(()),
                    Err(e) => return Err(format!("NATS sender: {e}")),
                }
            },
            SenderAcks::None => Ok(()),
        }
    }
}

/// The receiving side of one pair.
enum Receiver {
    /// The reader, and the writer kept open (dropping a write half shuts the socket's
    /// sending side, which the server reads as the client leaving).
    Wire(RawReader, #[allow(dead_code)] RawWriter),
    /// The push stream, and the client keeping the session open.
    Adapter(EventStream, #[allow(dead_code)] ReferenceClient),
    Mqtt(mqtt::MqttReader, mqtt::MqttWriter),
    Nats(nats::NatsReader, nats::NatsWriter),
}

impl Receiver {
    /// The next payload received (acknowledging it where the protocol asks).
    async fn next(&mut self) -> Result<Vec<u8>, String> {
        loop {
            let got = match self {
                Receiver::Wire(r, _) => r.next_push().await.map(|m| m.content),
                Receiver::Adapter(events, _) => match events.next().await {
                    Some(VendorEvent::MessagePushed(m)) => Ok(m.content),
                    Some(e @ (VendorEvent::ConnectionLost { .. } | VendorEvent::Kicked(_))) => {
                        return Err(format!("receiver lost its session: {e:?}"));
                    }
                    Some(_) => continue,
                    None => return Err("the push stream ended".into()),
                },
                Receiver::Mqtt(r, w) => {
                    let d = r
                        .delivery()
                        .await
                        .map_err(|e| format!("MQTT receive: {e}"))?;
                    if let Some(id) = d.packet_id {
                        w.puback(id).await.map_err(|e| format!("PUBACK: {e}"))?;
                        // One write for the acknowledgements of a burst (at most 10 are
                        // in flight, within the broker's window of 20: none waits on them).
                        if !r.has_buffered() {
                            w.flush().await.map_err(|e| format!("PUBACK: {e}"))?;
                        }
                    }
                    return Ok(d.payload);
                }
                Receiver::Nats(r, w) => match r.next().await {
                    Ok(nats::Incoming::Msg(payload)) => return Ok(payload),
                    Ok(nats::Incoming::Ping) => {
                        w.pong().await.map_err(|e| format!("PONG: {e}"))?;
                        continue;
                    }
                    Ok(nats::Incoming::Pong) => continue,
                    Err(e) => return Err(format!("NATS receive: {e}")),
                },
            };
            return match got {
                Ok(Content::Text(text)) => Ok(text.into_bytes()),
                Ok(other) => Err(format!("content the generator did not send: {other:?}")),
                Err(e) => Err(format!("reference receive: {e}")),
            };
        }
    }
}

struct Pair {
    sender: Sender,
    acks: SenderAcks,
    receiver: Receiver,
}

/// Opens pair `i`'s connections on `system` (the receiver subscribed or online first).
async fn connect_pair(
    system: System,
    addr: SocketAddr,
    server: Option<&ReferenceServer>,
    adapter: Option<&ReferenceVendor>,
    i: usize,
) -> Result<Pair, String> {
    let e = |what: &'static str| move |e: LoadError| format!("{what}: {e}");
    Ok(match system {
        System::ReferenceWire | System::ReferenceWire2 | System::ReferenceAdapter => {
            let server = server.ok_or("no reference server")?;
            let from: Credentials = server.vendor().register_user(&UserId::new(format!("s{i}")));
            let to: Credentials = server.vendor().register_user(&UserId::new(format!("r{i}")));
            let conversation = ConversationId::direct(&from.user, &to.user);
            if system != System::ReferenceAdapter {
                let mut receiver = RawReference::connect(addr, None)
                    .await
                    .map_err(e("connect"))?;
                receiver.login(&to).await.map_err(e("login"))?;
                receiver.go_online().await.map_err(e("go online"))?;
                let mut sender = RawReference::connect(addr, None)
                    .await
                    .map_err(e("connect"))?;
                sender.login(&from).await.map_err(e("login"))?;
                let (acks, writer) = sender.split();
                let (reader, keep) = receiver.split();
                Pair {
                    sender: Sender::Wire(writer, conversation),
                    acks: SenderAcks::Wire(acks),
                    receiver: Receiver::Wire(reader, keep),
                }
            } else {
                let vendor = adapter.ok_or("no adapter")?;
                let receiver = vendor.client();
                let events = receiver.take_events().ok_or("no event stream")?;
                receiver
                    .login(&to)
                    .await
                    .map_err(|e| format!("login: {e}"))?;
                receiver
                    .go_online()
                    .await
                    .map_err(|e| format!("go_online: {e}"))?;
                let sender = vendor.client();
                sender
                    .login(&from)
                    .await
                    .map_err(|e| format!("login: {e}"))?;
                Pair {
                    sender: Sender::Adapter(Arc::new(sender), conversation, JoinSet::new()),
                    acks: SenderAcks::None,
                    receiver: Receiver::Adapter(events, receiver),
                }
            }
        }
        System::Mosquitto => {
            let topic = format!("pair/{i}");
            let (mut rr, mut rw) = mqtt::connect(addr, &format!("r{i}"))
                .await
                .map_err(e("connect"))?;
            rw.subscribe(&topic).await.map_err(e("subscribe"))?;
            rr.suback().await.map_err(e("subscribe"))?;
            let (sr, sw) = mqtt::connect(addr, &format!("s{i}"))
                .await
                .map_err(e("connect"))?;
            Pair {
                sender: Sender::Mqtt(sw, topic),
                acks: SenderAcks::Mqtt(sr),
                receiver: Receiver::Mqtt(rr, rw),
            }
        }
        System::Nats => {
            let subject = format!("pair.{i}");
            let (mut rr, mut rw) = nats::connect(addr).await.map_err(e("connect"))?;
            rw.sub(&subject, 1).await.map_err(e("sub"))?;
            // The PONG comes after the SUB is processed: nothing published is missed.
            rw.ping().await.map_err(e("ping"))?;
            rr.pong().await.map_err(e("pong"))?;
            let (sr, sw) = nats::connect(addr).await.map_err(e("connect"))?;
            Pair {
                sender: Sender::Nats(sw, subject),
                acks: SenderAcks::Nats(sr),
                receiver: Receiver::Nats(rr, rw),
            }
        }
    })
}

#[derive(Default)]
struct PairOutcome {
    counted: u64,
    latencies: Vec<Duration>,
    sent: u64,
}

/// The closed loop of one pair: `in_flight` out until the window ends, then every one in.
async fn drive(
    pair: Pair,
    in_flight: usize,
    epoch: Instant,
    counted_from: Instant,
    end: Instant,
) -> Result<PairOutcome, String> {
    let Pair {
        mut sender,
        acks,
        mut receiver,
    } = pair;
    let acknowledges = acks.acknowledges();
    let (acked_tx, mut acked) = tokio::sync::watch::channel(0u64);
    let acks = tokio::spawn(acks.run(acked_tx));
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let receiving = tokio::spawn(async move {
        loop {
            let payload = receiver.next().await?;
            let now = Instant::now();
            if arrived_tx.send((payload, now)).is_err() {
                return Ok::<_, String>(receiver);
            }
        }
    });
    let mut out = PairOutcome::default();
    let mut seen: Vec<bool> = Vec::new();
    for _ in 0..in_flight {
        sender
            .send(Payload::now(seen.len() as u64, epoch).encode())
            .await?;
        seen.push(false);
    }
    let mut outstanding = in_flight;
    let deadline = end + DRAIN;
    while outstanding > 0 {
        let Ok(got) = tokio::time::timeout_at(deadline.into(), arrived.recv()).await else {
            return Err(format!(
                "{outstanding} messages not received {DRAIN:?} after the window"
            ));
        };
        let Some((payload, now)) = got else {
            let why = receiving.await.map_err(|e| e.to_string())?.err();
            return Err(format!("the receiver stopped: {why:?}"));
        };
        let p = Payload::decode(&payload).map_err(|e| e.to_string())?;
        let Some(seen_before) = seen.get_mut(p.seq as usize) else {
            return Err(format!("message {} received but never sent", p.seq));
        };
        if std::mem::replace(seen_before, true) {
            return Err(format!("message {} received twice", p.seq));
        }
        outstanding -= 1;
        if now >= counted_from && now < end {
            out.counted += 1;
            out.latencies.push(p.latency(epoch));
        }
        if now < end {
            sender
                .send(Payload::now(seen.len() as u64, epoch).encode())
                .await?;
            seen.push(false);
            outstanding += 1;
        }
    }
    out.sent = seen.len() as u64;
    if let Sender::Adapter(_, _, sends) = &mut sender {
        while let Some(sent) = sends.join_next().await {
            sent.map_err(|e| e.to_string())??;
        }
    }
    if acknowledges {
        let sent = out.sent;
        let all = tokio::time::timeout(DRAIN, acked.wait_for(|n| *n >= sent))
            .await
            .is_ok_and(|r| r.is_ok());
        if !all {
            let why = if acks.is_finished() {
                acks.await.map_err(|e| e.to_string())?.err()
            } else {
                None
            };
            return Err(format!(
                "{} acknowledgements for {sent} sends ({why:?})",
                *acked.borrow()
            ));
        }
        if *acked.borrow() != sent {
            return Err(format!(
                "{} acknowledgements for {sent} sends",
                *acked.borrow()
            ));
        }
    } else if acks.is_finished() {
        acks.await.map_err(|e| e.to_string())??;
        return Ok(out);
    }
    acks.abort();
    drop(sender);
    receiving.abort();
    Ok(out)
}

struct Measured {
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    sent: u64,
    server_cores: f64,
    generator_cores: f64,
}

/// CPU (user + system) of the process's threads named `server` and of the whole process,
/// or of process `pid`: from `/proc`, in clock ticks of 10 ms.
fn cpu(pid: Option<u32>) -> (Duration, Duration) {
    fn ticks(stat: &str) -> u64 {
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return 0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let at = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        at(11) + at(12)
    }
    let read = |p: &Path| std::fs::read_to_string(p).map_or(0, |s| ticks(&s));
    let me = read(Path::new("/proc/self/stat"));
    let server = match pid {
        Some(pid) => read(&PathBuf::from(format!("/proc/{pid}/stat"))),
        None => std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim_end() == "server")
                    })
                    .map(|t| read(&t.path().join("stat")))
                    .sum()
            })
            .unwrap_or(0),
    };
    (
        Duration::from_millis(server * 10),
        Duration::from_millis(me * 10),
    )
}

/// One system under one load, on a fresh server.
fn measure(
    load_rt: &Runtime,
    server_rt: &Runtime,
    system: System,
    load: Load,
    secs: f64,
) -> Result<Measured, String> {
    let (server, external) = match system {
        System::ReferenceWire | System::ReferenceWire2 | System::ReferenceAdapter => (
            Some(
                server_rt
                    .block_on(ReferenceServer::start(ServerConfig::default()))
                    .map_err(|e| format!("server: {e}"))?,
            ),
            None,
        ),
        _ => (None, Some(External::start(system)?)),
    };
    let addr = server
        .as_ref()
        .map(ReferenceServer::addr)
        .or(external.as_ref().map(|x| x.addr))
        .ok_or("no server")?;
    let adapter = match system {
        System::ReferenceAdapter => Some(
            load_rt
                .block_on(ReferenceVendor::discover(addr, ReferenceConfig::default()))
                .map_err(|e| format!("discover: {e}"))?,
        ),
        _ => None,
    };
    let pairs = load_rt.block_on(async {
        let mut pairs = Vec::new();
        for i in 0..load.pairs {
            pairs.push(connect_pair(system, addr, server.as_ref(), adapter.as_ref(), i).await?);
        }
        Ok::<_, String>(pairs)
    })?;
    let epoch = Instant::now();
    let counted_from = epoch + WARM_UP;
    let end = counted_from + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|pair| load_rt.spawn(drive(pair, load.in_flight, epoch, counted_from, end)))
        .collect();
    let pid = external.as_ref().map(External::pid);
    let (from, to) = load_rt.block_on(async {
        tokio::time::sleep_until(counted_from.into()).await;
        let from = cpu(pid);
        tokio::time::sleep_until(end.into()).await;
        (from, cpu(pid))
    });
    let server_time = (to.0 - from.0).as_secs_f64();
    let process_time = (to.1 - from.1).as_secs_f64();
    let generator_time = if pid.is_some() {
        process_time
    } else {
        process_time - server_time
    };
    let mut latencies = Vec::new();
    let mut counted = 0;
    let mut sent = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        let outcome = load_rt
            .block_on(task)
            .map_err(|e| format!("pair task: {e}"))?
            .map_err(|e| format!("pair {i}: {e}"))?;
        counted += outcome.counted;
        sent += outcome.sent;
        latencies.extend(outcome.latencies);
    }
    if let Some(server) = server {
        server_rt.block_on(server.shutdown());
    }
    drop(external);
    latencies.sort_unstable();
    Ok(Measured {
        msgs_per_s: counted as f64 / secs,
        p50_ms: im_benches::percentile_ms(&latencies, 0.50),
        p99_ms: im_benches::percentile_ms(&latencies, 0.99),
        sent,
        server_cores: server_time / secs,
        generator_cores: generator_time / secs,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The command line: `--secs S` (measured window, default 10 s), `--reps N` (repetitions of
/// the whole table, default 1), criterion-style filters (`light`, `heavy`, a system's
/// label; with any, only the runs whose `vendor_compare <load> <system>` contains one).
struct Args {
    secs: f64,
    reps: usize,
    /// Worker threads of the reference server's runtime (default 1).
    server_threads: Option<usize>,
    filters: Vec<String>,
}

impl Args {
    fn parse() -> Args {
        let args = im_benches::BenchArgs::parse(
            std::env::args().skip(1),
            &["--secs", "--reps", "--server-threads"],
        );
        Args {
            secs: args.value::<f64>("--secs").unwrap_or(DEFAULT_SECS).max(0.1),
            reps: args.value::<usize>("--reps").unwrap_or(1).max(1),
            server_threads: args.value::<usize>("--server-threads").map(|n| n.max(1)),
            filters: args.filters,
        }
    }

    fn runs(&self, load: Load, system: System) -> bool {
        let name = format!("vendor_compare {} {}", load.name, system.label());
        self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
    }
}

fn main() {
    let args = Args::parse();
    // The reference server on one worker thread, as Mosquitto runs on one (on two cores
    // shared with the generator, tokio's cross-thread wakeups cost more than the second
    // thread gives); `--server-threads` changes it. The second runtime has tokio's default
    // (one per core), for the row that shows what that costs.
    let server_rt = im_benches::runtime("server", Some(args.server_threads.unwrap_or(1)));
    let server_rt2 = im_benches::runtime("server", None);
    let load_rt = im_benches::runtime("load", None);
    println!(
        "vendor_compare: {} pairs × {} / {} pairs × {} in flight, 100-byte messages, closed \
         loop, {WARM_UP:?} warm-up then {} s measured, {} repetition(s); load average {}",
        LIGHT.pairs,
        LIGHT.in_flight,
        HEAVY.pairs,
        HEAVY.in_flight,
        args.secs,
        args.reps,
        load_average()
    );
    let mut figures = Vec::new();
    let mut goals = Vec::new();
    let mut table = String::from(
        "| load | system | msgs/s | p50 (ms) | p99 (ms) | CPU server | CPU generator |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    for load in [LIGHT, HEAVY] {
        // Repetitions interleave the systems, so a shared machine's other load weighs on
        // each alike.
        let mut results: Vec<(System, Vec<Measured>)> = System::ALL
            .into_iter()
            .filter(|s| args.runs(load, *s))
            .map(|s| (s, Vec::new()))
            .collect();
        let mut skipped = Vec::new();
        for rep in 0..args.reps {
            for (system, runs) in results.iter_mut() {
                let system = *system;
                if skipped.contains(&system) {
                    continue;
                }
                let server_rt = if system == System::ReferenceWire2 {
                    &server_rt2
                } else {
                    &server_rt
                };
                match measure(&load_rt, server_rt, system, load, args.secs) {
                    Ok(m) => {
                        println!(
                            "[{rep}] {} load, {}: {:.0} msgs/s, p50 {:.3} ms, p99 {:.3} ms, CPU \
                             server {:.0}%, generator {:.0}% ({} sent, each received once); \
                             load average {}",
                            load.name,
                            system.label(),
                            m.msgs_per_s,
                            m.p50_ms,
                            m.p99_ms,
                            m.server_cores * 100.0,
                            m.generator_cores * 100.0,
                            m.sent,
                            load_average()
                        );
                        runs.push(m);
                    }
                    Err(e)
                        if matches!(system, System::Mosquitto | System::Nats)
                            && e.contains("not found") =>
                    {
                        println!("{} load, {}: SKIPPED: {e}", load.name, system.label());
                        skipped.push(system);
                    }
                    Err(e) => panic!("{} load, {}: {e}", load.name, system.label()),
                }
            }
        }
        results.retain(|(_, runs)| !runs.is_empty());
        // Per system, the median repetition by rate (its p99 with it).
        let median = |runs: &[Measured]| -> (f64, f64, f64, f64, f64) {
            let mut order: Vec<usize> = (0..runs.len()).collect();
            order.sort_by(|a, b| runs[*a].msgs_per_s.total_cmp(&runs[*b].msgs_per_s));
            let m = &runs[order[order.len() / 2]];
            (
                m.msgs_per_s,
                m.p50_ms,
                m.p99_ms,
                m.server_cores,
                m.generator_cores,
            )
        };
        let get = |s: System| {
            results
                .iter()
                .find(|(x, _)| *x == s)
                .map(|(_, r)| median(r))
        };
        for (system, runs) in &results {
            let (rate, p50, p99, server, generator) = median(runs);
            table.push_str(&format!(
                "| {} ({} × {}) | {} | {rate:.0} | {p50:.3} | {p99:.3} | {:.0}% | {:.0}% |\n",
                load.name,
                load.pairs,
                load.in_flight,
                system.label(),
                server * 100.0,
                generator * 100.0
            ));
            let name = format!("vendor_compare {}, {}", load.name, system.label());
            figures.push((format!("{name}: msgs/s"), rate));
            figures.push((format!("{name}: p50 (ms)"), p50));
            figures.push((format!("{name}: p99 (ms)"), p99));
        }
        if let (Some(reference), Some(mosquitto)) =
            (get(System::ReferenceWire), get(System::Mosquitto))
        {
            let ratio = reference.0 / mosquitto.0;
            figures.push((
                format!("vendor_compare {}: reference / Mosquitto (×)", load.name),
                ratio,
            ));
            goals.push(format!(
                "reference vendor ≥ {GOAL_VS_MOSQUITTO}× Mosquitto QoS 1 at {} load: {} ({ratio:.2}×)",
                load.name,
                met(ratio >= GOAL_VS_MOSQUITTO)
            ));
        }
        if let (Some(adapter), Some(mosquitto)) =
            (get(System::ReferenceAdapter), get(System::Mosquitto))
        {
            figures.push((
                format!(
                    "vendor_compare {}: reference adapter / Mosquitto (×)",
                    load.name
                ),
                adapter.0 / mosquitto.0,
            ));
        }
        if load.name == "light"
            && let (Some(reference), Some(nats)) = (get(System::ReferenceWire), get(System::Nats))
        {
            figures.push((
                "vendor_compare light: reference p99 / NATS core p99 (×)".into(),
                reference.2 / nats.2,
            ));
            goals.push(format!(
                "reference vendor's p99 at light load ≤ NATS core's: {} ({:.3} ms vs {:.3} ms)",
                met(reference.2 <= nats.2),
                reference.2,
                nats.2
            ));
        }
    }
    println!("\n{table}");
    for goal in &goals {
        println!("goal (issue 22): {goal}");
    }
    im_benches::write_figures("vendor_compare", &figures).unwrap();
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "NOT met" }
}
