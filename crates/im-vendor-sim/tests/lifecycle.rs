//! The message lifecycle over the reference protocol, version 2, on real sockets: the
//! version handshake (version 1 refused with a clear error, both ways), recall, edit and
//! delete for me with their typed refusals, live change and read-receipt events, the change
//! feed after an absence, several devices of one user, and bad lifecycle frames.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use im_service::codec::{self, CodecError};
use im_service::reference::protocol::{PROTOCOL_VERSION, frame_bytes};
use im_service::reference::{ClientFrame, ReferenceConfig, ReferenceVendor, Request, ServerFrame};
use im_service::{Capabilities, Capability, ServiceError, Vendor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use im_vendor_sim::{ReferenceServer, ServerConfig};

/// The overall deadline of any one wait in these tests.
const WAIT: Duration = Duration::from_secs(5);

/// Reads one frame body from a raw socket; `None` on EOF.
async fn read_body(sock: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    let read = tokio::time::timeout(WAIT, sock.read_exact(&mut len))
        .await
        .expect("the peer answers in time");
    if read.is_err() {
        return None;
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    sock.read_exact(&mut body).await.unwrap();
    Some(body)
}

/// Reads one server frame from a raw socket; `None` on EOF.
async fn read_frame(sock: &mut TcpStream) -> Option<ServerFrame> {
    Some(codec::decode(&read_body(sock).await?).unwrap())
}

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
