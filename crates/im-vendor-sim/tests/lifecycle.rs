//! The message lifecycle over the reference protocol, version 2, on real sockets: the
//! version handshake (version 1 refused with a clear error, both ways), recall, edit and
//! delete for me with their typed refusals, live change and read-receipt events, the change
//! feed after an absence, several devices of one user, and bad lifecycle frames.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use im_service::codec::{self, CodecError};
use im_service::memory::MemoryVendorConfig;
use im_service::reference::ReferenceClient;
use im_service::reference::protocol::{PROTOCOL_VERSION, frame_bytes};
use im_service::reference::{ClientFrame, ReferenceConfig, ReferenceVendor, Request, ServerFrame};
use im_service::{
    Capabilities, Capability, ChangeCursor, ChangeKind, ChangeRefusal, Content, ConversationId,
    Credentials, EditPermission, EventStream, HistoryQuery, LifecyclePolicy, Message, ServerMsgId,
    ServiceError, Timestamp, Vendor, VendorEvent,
};
use im_testkit::contract::text;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use im_vendor_sim::{ReferenceServer, ServerConfig};

mod common;
use common::{online, read_body, read_frame, server, users};

/// The overall deadline of any one wait in these tests.
const WAIT: Duration = Duration::from_secs(5);

/// Writes `frames` on a fresh connection to `addr`.
async fn raw(addr: SocketAddr, frames: &[ClientFrame]) -> TcpStream {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    for f in frames {
        sock.write_all(&frame_bytes(f).unwrap()).await.unwrap();
    }
    sock
}

fn hello_v2() -> ClientFrame {
    ClientFrame::HelloV2 {
        version: PROTOCOL_VERSION,
    }
}

/// The one fatal frame a refused connection gets, after checking the server closes.
async fn fatal_then_closed(sock: &mut TcpStream) -> ServiceError {
    let frame = read_frame(sock).await;
    let Some(ServerFrame::Fatal(e)) = frame else {
        panic!("expected a fatal frame, got {frame:?}")
    };
    assert_eq!(
        read_frame(sock).await,
        None,
        "the server closes after the fatal frame"
    );
    e
}

#[tokio::test]
async fn version_1_clients_are_refused_with_a_clear_error() {
    let server = ReferenceServer::start(ServerConfig::default())
        .await
        .unwrap();
    let creds = server
        .vendor()
        .register_user(&im_service::UserId::new("alice"));
    let login = ClientFrame::Request {
        id: 1,
        request: Request::Login(creds.clone()),
    };
    // A version 1 client opens with `Hello`, or (on a login connection) with `Login`.
    for opening in [vec![ClientFrame::Hello], vec![login.clone()]] {
        let mut sock = raw(server.addr(), &opening).await;
        let e = fatal_then_closed(&mut sock).await;
        let ServiceError::Protocol(text) = &e else {
            panic!("version 1 refused with {e:?}, not a protocol error")
        };
        assert!(
            text.contains("protocol version 1 is no longer served")
                && text.contains(&format!("speaks version {PROTOCOL_VERSION}")),
            "the refusal names both versions: {text}"
        );
    }
    // A version below 2 in HelloV2 is refused too; a newer client is told to speak 2.
    let mut sock = raw(server.addr(), &[ClientFrame::HelloV2 { version: 1 }]).await;
    assert!(matches!(
        fatal_then_closed(&mut sock).await,
        ServiceError::Protocol(_)
    ));
    let mut sock = raw(server.addr(), &[ClientFrame::HelloV2 { version: 9 }, login]).await;
    match read_frame(&mut sock).await {
        Some(ServerFrame::WelcomeV2 { protocol, .. }) => assert_eq!(protocol, PROTOCOL_VERSION),
        other => panic!("expected WelcomeV2, got {other:?}"),
    }
    assert!(matches!(
        read_frame(&mut sock).await,
        Some(ServerFrame::Response {
            id: 1,
            result: Ok(_)
        })
    ));
    // The refused connections cost the server nothing it keeps.
    let vendor = ReferenceVendor::discover(server.addr(), ReferenceConfig::default())
        .await
        .unwrap();
    vendor.client().login(&creds).await.unwrap();
}

/// A one-connection fake server: reads the client's first frame, answers `answer`.
async fn fake_server(answer: ServerFrame) -> (SocketAddr, tokio::task::JoinHandle<ClientFrame>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let body = read_body(&mut sock).await.expect("a first frame");
        let first: ClientFrame = codec::decode(&body).unwrap();
        sock.write_all(&frame_bytes(&answer).unwrap())
            .await
            .unwrap();
        first
    });
    (addr, task)
}

#[tokio::test]
async fn discover_reports_a_server_of_another_version_with_a_typed_error() {
    let caps = Capabilities::none();
    let answers = [
        // A version 1 server that somehow answers the greeting.
        (
            ServerFrame::Welcome {
                server: "old".into(),
                capabilities: caps.clone(),
            },
            "version 1",
        ),
        // What a version 1 server really answers: it cannot decode HelloV2.
        (
            ServerFrame::Fatal(ServiceError::Codec(CodecError::Malformed(
                "unknown variant index 2".into(),
            ))),
            "older version",
        ),
        (
            ServerFrame::WelcomeV2 {
                server: "future".into(),
                capabilities: caps.clone(),
                lifecycle: Default::default(),
                protocol: 3,
            },
            "version 3",
        ),
    ];
    for (answer, names) in answers {
        let (addr, task) = fake_server(answer).await;
        let e = ReferenceVendor::discover(addr, ReferenceConfig::default())
            .await
            .expect_err("another version is refused");
        let ServiceError::Protocol(text) = &e else {
            panic!("expected a protocol error, got {e:?}")
        };
        assert!(
            text.contains(names) && text.contains("speaks protocol version 2"),
            "{text}"
        );
        assert_eq!(
            task.await.unwrap(),
            hello_v2(),
            "discovery greets with HelloV2"
        );
    }
}

#[tokio::test]
async fn undeclared_lifecycle_calls_fail_unsupported_without_a_request() {
    // The server declares nothing: the adapter answers from the declaration, before it
    // even needs a session (not logged in, it still says `Unsupported`, not `NotLoggedIn`).
    let (addr, task) = fake_server(ServerFrame::WelcomeV2 {
        server: "bare".into(),
        capabilities: Capabilities::none(),
        lifecycle: Default::default(),
        protocol: PROTOCOL_VERSION,
    })
    .await;
    let vendor = ReferenceVendor::discover(addr, ReferenceConfig::default())
        .await
        .unwrap();
    task.await.unwrap();
    let c = vendor.client();
    let conv = im_service::ConversationId::group("g");
    let id = im_service::ServerMsgId::new("m");
    assert_eq!(
        c.recall(&conv, &id).await,
        Err(ServiceError::Unsupported(Capability::Recall))
    );
    assert_eq!(
        c.edit(&conv, &id, &im_service::Content::text("x")).await,
        Err(ServiceError::Unsupported(Capability::Edit))
    );
    assert_eq!(
        c.delete_for_me(&conv, &id).await,
        Err(ServiceError::Unsupported(Capability::DeleteForMe))
    );
    assert_eq!(
        c.pull_changes(None, 10).await,
        Err(ServiceError::Unsupported(Capability::ChangeFeed))
    );
}

// ---- the lifecycle end to end: adapter, wire, server, MemoryVendor ----

async fn started(vendor: MemoryVendorConfig) -> (ReferenceServer, ReferenceVendor) {
    server(ServerConfig {
        vendor,
        ..ServerConfig::default()
    })
    .await
}

/// Every event up to and including the first that `stop` matches, under one overall
/// deadline; the panic names what was awaited and lists what came.
async fn events_until(
    events: &mut EventStream,
    what: &str,
    mut stop: impl FnMut(&VendorEvent) -> bool,
) -> Vec<VendorEvent> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(ev)) => {
                let done = stop(&ev);
                seen.push(ev);
                if done {
                    return seen;
                }
            }
            Ok(None) => panic!("the event stream ended before {what}; saw {seen:#?}"),
            Err(_) => panic!("never saw {what} within {WAIT:?}; saw {seen:#?}"),
        }
    }
}

/// The first event `want` matches, skipping others.
async fn next_matching(
    events: &mut EventStream,
    what: &str,
    want: impl FnMut(&VendorEvent) -> bool,
) -> VendorEvent {
    events_until(events, what, want)
        .await
        .pop()
        .expect("events_until returns the matching event last")
}

fn pushed(body: &'static str) -> impl FnMut(&VendorEvent) -> bool {
    move |ev| matches!(ev, VendorEvent::MessagePushed(m) if m.content == Content::text(body))
}

fn changed(ev: &VendorEvent) -> bool {
    matches!(ev, VendorEvent::MessageChanged(_))
}

async fn history(c: &ReferenceClient, conv: &ConversationId) -> Vec<Message> {
    c.pull_history(&HistoryQuery::latest(conv.clone(), 50))
        .await
        .unwrap()
        .messages
}

#[tokio::test]
async fn welcome_carries_the_servers_lifecycle_rules_and_capabilities() {
    let policy = LifecyclePolicy {
        recall_window: Some(Duration::from_secs(30)),
        edit_window: Some(Duration::from_secs(600)),
        edit_permission: EditPermission::AnyMember,
    };
    let (server, vendor) = started(MemoryVendorConfig {
        lifecycle: policy.clone(),
        ..MemoryVendorConfig::default()
    })
    .await;
    assert_eq!(vendor.lifecycle(), &policy);
    assert_eq!(vendor.client().lifecycle(), policy);
    let caps = vendor.client().capabilities().clone();
    assert_eq!(
        caps,
        server.capabilities(),
        "capabilities come from the server"
    );
    for cap in [
        Capability::Recall,
        Capability::Edit,
        Capability::DeleteForMe,
        Capability::ReadReceiptEvents,
        Capability::ChangeFeed,
        Capability::KickOnSecondLogin,
    ] {
        assert!(caps.supports(cap), "{cap:?} declared");
    }
    assert!(!caps.supports(Capability::MultiDevice));
}

#[tokio::test]
async fn recall_edit_and_delete_for_me_round_trip_with_live_events() {
    let (server, vendor) = started(MemoryVendorConfig::default()).await;
    let (a, b, conv) = users(&server);
    let (alice, mut alice_events) = online(&vendor, &a).await;
    let (bob, mut bob_events) = online(&vendor, &b).await;

    let m = alice
        .send(&text(&conv, "teh typo"))
        .await
        .unwrap()
        .server_id;
    next_matching(&mut bob_events, "the message", pushed("teh typo")).await;

    let edit = alice
        .edit(&conv, &m, &Content::text("the typo"))
        .await
        .unwrap();
    assert_eq!(
        (&edit.target, &edit.kind, &edit.by, edit.revision),
        (
            &m,
            &ChangeKind::Edited(Content::text("the typo")),
            &a.user,
            1
        )
    );
    let live = next_matching(&mut bob_events, "the edit", changed).await;
    assert_eq!(live, VendorEvent::MessageChanged(edit));

    let recall = alice.recall(&conv, &m).await.unwrap();
    assert_eq!((&recall.kind, recall.revision), (&ChangeKind::Recalled, 2));
    let live = next_matching(&mut bob_events, "the recall", changed).await;
    assert_eq!(live, VendorEvent::MessageChanged(recall.clone()));
    // History shows the current state: recalled, the old content gone.
    let shown = history(&bob, &conv).await;
    assert_eq!(shown.len(), 1);
    assert_eq!(
        shown[0].content,
        Content::Recalled {
            by: a.user.clone(),
            at: recall.at
        }
    );

    // Delete for me: gone for bob, kept for alice, and alice is not told.
    let m2 = alice.send(&text(&conv, "keep it")).await.unwrap().server_id;
    next_matching(&mut bob_events, "the second message", pushed("keep it")).await;
    let gone = bob.delete_for_me(&conv, &m2).await.unwrap();
    assert_eq!(
        (&gone.kind, &gone.by, gone.revision),
        (&ChangeKind::DeletedForMe, &b.user, 1)
    );
    assert!(history(&bob, &conv).await.iter().all(|x| x.server_id != m2));
    assert!(
        history(&alice, &conv)
            .await
            .iter()
            .any(|x| x.server_id == m2)
    );
    bob.send(&text(&conv, "marker")).await.unwrap();
    let seen = events_until(&mut alice_events, "bob's marker", pushed("marker")).await;
    assert!(
        !seen.iter().any(changed),
        "another user's delete for me is not pushed: {seen:#?}"
    );
}

#[tokio::test]
async fn refused_changes_arrive_as_typed_change_refused() {
    let (server, vendor) = started(MemoryVendorConfig::default()).await;
    let (a, b, conv) = users(&server);
    let alice = vendor.client();
    alice.login(&a).await.unwrap();
    let bob = vendor.client();
    bob.login(&b).await.unwrap();
    let m = alice.send(&text(&conv, "mine")).await.unwrap().server_id;

    let refused = |r: ChangeRefusal| Err(ServiceError::ChangeRefused(r));
    assert_eq!(
        bob.recall(&conv, &m).await,
        refused(ChangeRefusal::NotAllowed)
    );
    assert_eq!(
        bob.edit(&conv, &m, &Content::text("theirs")).await,
        refused(ChangeRefusal::NotAllowed)
    );
    assert_eq!(
        alice.recall(&conv, &ServerMsgId::new("no-such-id")).await,
        refused(ChangeRefusal::UnknownMessage)
    );
    // Past the window (two minutes by default) the sender may no longer recall.
    server.shift_clock(Duration::from_secs(121));
    assert_eq!(
        alice.recall(&conv, &m).await,
        refused(ChangeRefusal::WindowPassed {
            window: Duration::from_secs(120)
        })
    );
    // A recalled message takes no more changes.
    let m2 = alice.send(&text(&conv, "oops")).await.unwrap().server_id;
    alice.recall(&conv, &m2).await.unwrap();
    assert_eq!(
        alice.edit(&conv, &m2, &Content::text("back")).await,
        refused(ChangeRefusal::Recalled)
    );
    // Refusals end nothing: both sessions go on.
    alice.ping().await.unwrap();
    bob.ping().await.unwrap();
    assert_eq!(
        server.vendor().stored_messages(&conv)[0].content,
        Content::text("mine"),
        "a refused change changes nothing"
    );
}

#[tokio::test]
async fn a_peer_online_sees_the_read_receipt() {
    let (server, vendor) = started(MemoryVendorConfig::default()).await;
    let (a, b, conv) = users(&server);
    let (alice, mut alice_events) = online(&vendor, &a).await;
    let (bob, mut bob_events) = online(&vendor, &b).await;
    let m = alice.send(&text(&conv, "seen?")).await.unwrap();
    next_matching(&mut bob_events, "the message", pushed("seen?")).await;
    bob.mark_read(&conv, &m.server_id).await.unwrap();
    let ev = next_matching(&mut alice_events, "bob's read receipt", |ev| {
        matches!(ev, VendorEvent::ReadReceipt(_))
    })
    .await;
    let VendorEvent::ReadReceipt(r) = ev else {
        unreachable!()
    };
    assert_eq!(
        (&r.conversation, &r.reader, &r.up_to, r.up_to_time),
        (&conv, &b.user, &m.server_id, m.server_time)
    );
}

#[tokio::test]
async fn an_offline_peer_learns_the_changes_from_the_feed_after_login() {
    let (server, vendor) = started(MemoryVendorConfig {
        change_batch_max: 2,
        ..MemoryVendorConfig::default()
    })
    .await;
    let (a, b, conv) = users(&server);
    let bob = vendor.client();
    bob.login(&b).await.unwrap();
    let start = bob.pull_changes(None, 100).await.unwrap();
    assert!(start.changes.is_empty() && start.receipts.is_empty() && start.left == 0);
    bob.logout().await.unwrap();

    let alice = vendor.client();
    alice.login(&a).await.unwrap();
    let m = alice.send(&text(&conv, "draft")).await.unwrap().server_id;
    let edit = alice
        .edit(&conv, &m, &Content::text("final"))
        .await
        .unwrap();
    let bobs = bob_message(&server, &b, &a).await;
    alice.mark_read(&conv, &bobs).await.unwrap();
    let recall = alice.recall(&conv, &m).await.unwrap();

    let bob = vendor.client();
    bob.login(&b).await.unwrap();
    // Offline messages come in their current state.
    let offline = bob.pull_offline(100).await.unwrap();
    let mine = offline.messages.iter().find(|x| x.server_id == m).unwrap();
    assert!(matches!(mine.content, Content::Recalled { .. }), "{mine:?}");
    // The feed pages by the server's cap (2 here) however much is asked.
    let first = bob.pull_changes(Some(start.next), u32::MAX).await.unwrap();
    assert_eq!(first.changes.len() + first.receipts.len(), 2);
    assert_eq!(first.left, 1);
    let rest = bob.pull_changes(Some(first.next), 100).await.unwrap();
    assert_eq!(rest.left, 0);
    let changes: Vec<_> = first.changes.into_iter().chain(rest.changes).collect();
    assert_eq!(changes, vec![edit, recall]);
    let receipts: Vec<_> = first.receipts.into_iter().chain(rest.receipts).collect();
    assert_eq!(receipts.len(), 1);
    assert_eq!((&receipts[0].reader, &receipts[0].up_to), (&a.user, &bobs));
}

/// A message bob sent alice while bob was away (through a session of its own), for alice to
/// read: sent straight to the storage engine, as another device of bob would.
async fn bob_message(server: &ReferenceServer, b: &Credentials, a: &Credentials) -> ServerMsgId {
    let conv = ConversationId::direct(&a.user, &b.user);
    let device = server.vendor().client();
    device.login(b).await.unwrap();
    let id = device
        .send(&text(&conv, "from bob"))
        .await
        .unwrap()
        .server_id;
    device.logout().await.unwrap();
    id
}

#[tokio::test]
async fn multi_device_keeps_both_logins_and_mirrors_sends_and_reads() {
    let (server, vendor) = started(MemoryVendorConfig {
        multi_device: true,
        ..MemoryVendorConfig::default()
    })
    .await;
    assert!(
        vendor
            .client()
            .capabilities()
            .supports(Capability::MultiDevice)
    );
    assert!(
        !vendor
            .client()
            .capabilities()
            .supports(Capability::KickOnSecondLogin)
    );
    let (a, b, conv) = users(&server);
    let (phone, mut phone_events) = online(&vendor, &a).await;
    let (desk, mut desk_events) = online(&vendor, &a).await;
    let (bob, mut bob_events) = online(&vendor, &b).await;

    let m = phone.send(&text(&conv, "from my phone")).await.unwrap();
    // The other device gets it once, as the user's own message.
    let on_desk = events_until(
        &mut desk_events,
        "the phone's send",
        pushed("from my phone"),
    )
    .await;
    let VendorEvent::MessagePushed(copy) = on_desk.last().unwrap() else {
        unreachable!()
    };
    assert_eq!((&copy.server_id, &copy.sender), (&m.server_id, &a.user));
    assert!(
        on_desk
            .iter()
            .all(|ev| !matches!(ev, VendorEvent::Kicked(_))),
        "the second login kicked nobody: {on_desk:#?}"
    );
    next_matching(&mut bob_events, "the phone's send", pushed("from my phone")).await;

    bob.send(&text(&conv, "marker")).await.unwrap();
    for (device, events) in [("phone", &mut phone_events), ("desk", &mut desk_events)] {
        let seen = events_until(events, "bob's marker", pushed("marker")).await;
        let copies = seen
            .iter()
            .filter(|ev| matches!(ev, VendorEvent::MessagePushed(x) if x.server_id == m.server_id))
            .count();
        assert_eq!(
            copies, 0,
            "the {device} got the phone's send again: {seen:#?}"
        );
        assert!(
            seen.iter().all(|ev| !matches!(
                ev,
                VendorEvent::Kicked(_) | VendorEvent::ConnectionLost { .. }
            )),
            "the {device} stays logged in: {seen:#?}"
        );
    }
    phone.ping().await.unwrap();
    desk.ping().await.unwrap();

    // A read on the desk reaches the phone (the user's own receipt) and bob ("seen").
    let marker = history(&desk, &conv).await[0].server_id.clone();
    desk.mark_read(&conv, &marker).await.unwrap();
    for events in [&mut phone_events, &mut bob_events] {
        let ev = next_matching(events, "the desk's read", |ev| {
            matches!(ev, VendorEvent::ReadReceipt(_))
        })
        .await;
        assert!(
            matches!(&ev, VendorEvent::ReadReceipt(r) if r.reader == a.user && r.up_to == marker),
            "{ev:?}"
        );
    }
}

#[tokio::test]
async fn bad_lifecycle_frames_get_typed_errors_and_lose_nothing() {
    let (server, vendor) = {
        let server = ReferenceServer::start(ServerConfig {
            max_frame_len: 64 * 1024,
            ..ServerConfig::default()
        })
        .await
        .unwrap();
        let vendor = ReferenceVendor::discover(server.addr(), ReferenceConfig::default())
            .await
            .unwrap();
        (server, vendor)
    };
    let (a, b, conv) = users(&server);
    let alice = vendor.client();
    alice.login(&a).await.unwrap();
    let m = alice
        .send(&text(&conv, "original"))
        .await
        .unwrap()
        .server_id;
    let max = vendor.client().capabilities().max_message_bytes;

    let request = |id, request| ClientFrame::Request { id, request };
    // Bob on a raw connection: a second login of alice would kick her session.
    let login = request(1, Request::Login(b.clone()));
    // Typed answers on a connection that stays open.
    let mut sock = raw(server.addr(), &[hello_v2(), login]).await;
    assert!(matches!(
        read_frame(&mut sock).await,
        Some(ServerFrame::WelcomeV2 { .. })
    ));
    assert!(matches!(
        read_frame(&mut sock).await,
        Some(ServerFrame::Response {
            id: 1,
            result: Ok(_)
        })
    ));
    let asks = [
        (
            Request::Edit(conv.clone(), m.clone(), Content::text("x".repeat(max + 1))),
            ServiceError::MessageTooLarge { size: max + 1, max },
        ),
        (
            Request::Edit(
                conv.clone(),
                m.clone(),
                Content::Recalled {
                    by: b.user.clone(),
                    at: Timestamp::from_millis(0),
                },
            ),
            ServiceError::InvalidRequest(String::new()),
        ),
        (
            Request::PullChanges(None, 0),
            ServiceError::InvalidRequest(String::new()),
        ),
        (
            Request::PullChanges(Some(ChangeCursor(vec![0xff; 40])), 10),
            ServiceError::InvalidRequest(String::new()),
        ),
    ];
    for (id, (ask, want)) in (2u64..).zip(asks) {
        let kind = ask.kind();
        sock.write_all(&frame_bytes(&request(id, ask)).unwrap())
            .await
            .unwrap();
        match read_frame(&mut sock).await {
            Some(ServerFrame::Response {
                id: got,
                result: Err(e),
            }) if got == id => assert_eq!(
                std::mem::discriminant(&e),
                std::mem::discriminant(&want),
                "{kind}: {e:?}"
            ),
            other => panic!("{kind}: expected a typed error, got {other:?}"),
        }
    }
    sock.write_all(&frame_bytes(&request(9, Request::Ping)).unwrap())
        .await
        .unwrap();
    assert!(matches!(
        read_frame(&mut sock).await,
        Some(ServerFrame::Response {
            id: 9,
            result: Ok(_)
        })
    ));

    // Frames the decoder refuses: a fatal codec error, then the connection closes.
    let huge = frame_bytes(&request(
        2,
        Request::Edit(conv.clone(), m.clone(), Content::text("y".repeat(100_000))),
    ))
    .unwrap();
    let mut sock = raw(server.addr(), &[hello_v2()]).await;
    sock.write_all(&huge).await.unwrap();
    assert!(matches!(
        read_frame(&mut sock).await,
        Some(ServerFrame::WelcomeV2 { .. })
    ));
    assert!(matches!(
        fatal_then_closed(&mut sock).await,
        ServiceError::Codec(CodecError::Oversized { max: 65_536, .. })
    ));
    let pull = codec::encode(&request(
        3,
        Request::PullChanges(Some(ChangeCursor(vec![1; 8])), 5),
    ))
    .unwrap();
    let mut cut = ((pull.len() - 3) as u32).to_be_bytes().to_vec();
    cut.extend_from_slice(&pull[..pull.len() - 3]);
    let mut sock = raw(server.addr(), &[hello_v2()]).await;
    sock.write_all(&cut).await.unwrap();
    assert!(matches!(
        read_frame(&mut sock).await,
        Some(ServerFrame::WelcomeV2 { .. })
    ));
    assert_eq!(
        fatal_then_closed(&mut sock).await,
        ServiceError::Codec(CodecError::Truncated)
    );

    // Nothing was lost or changed; the session goes on.
    assert_eq!(
        server.vendor().stored_messages(&conv)[0].content,
        Content::text("original")
    );
    alice.ping().await.unwrap();
}
