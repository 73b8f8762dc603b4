//! The reference vendor logs every refused peer at `warn`, with the peer and never the
//! token. In a test binary of its own: it installs a scoped log subscriber, and other tests
//! of the same binary hitting the same log call sites on their threads at the same moment
//! made tracing drop its events now and then (an empty capture in one CI run of seven).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::Arc;

use im_service::UserId;
use im_service::reference::protocol::{PROTOCOL_VERSION, frame_bytes};
use im_service::reference::{ClientFrame, Request, ServerFrame};
use im_vendor_sim::ServerConfig;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod common;
use common::{login, read_frame, server, users, wrong};

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn refusals_leave_a_warning_with_the_peer_and_never_the_token() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (server, vendor) = server(ServerConfig {
        max_frame_len: 1024,
        ..Default::default()
    })
    .await;
    let (a, _, _) = users(&server);
    // A wrong token, an unknown user, an oversized frame, a request before logging in.
    let _ = login(&vendor, &wrong(&a.user)).await;
    let _ = login(&vendor, &wrong(&UserId::new("ghost"))).await;
    let mut sock = TcpStream::connect(server.addr()).await.unwrap();
    sock.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    assert!(matches!(
        read_frame(&mut sock).await,
        Some(ServerFrame::Fatal(_))
    ));
    let mut sock = TcpStream::connect(server.addr()).await.unwrap();
    let mut bytes = frame_bytes(&ClientFrame::HelloV2 {
        version: PROTOCOL_VERSION,
    })
    .unwrap();
    bytes.extend(
        frame_bytes(&ClientFrame::Request {
            id: 1,
            request: Request::Ping,
        })
        .unwrap(),
    );
    sock.write_all(&bytes).await.unwrap();
    while read_frame(&mut sock).await.is_some() {}
    server.shutdown().await;

    let log = String::from_utf8(captured.0.lock().clone()).unwrap();
    for refusal in ["login_refused", "bad_frame", "not_logged_in"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("refusal=\"{refusal}\"")))
            .unwrap_or_else(|| panic!("no warning for {refusal} in:\n{log}"));
        assert!(line.contains(" WARN "), "{line}");
        assert!(line.contains("peer=127.0.0.1:"), "no peer in {line}");
    }
    assert!(
        log.contains("\"ghost\""),
        "the refused user is named:\n{log}"
    );
    assert!(!log.contains("hunter2"), "a token reached the log:\n{log}");
}
