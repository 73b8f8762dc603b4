//! The XMPP adapter against a real Prosody (`tests/prosody/prosody.sh`). Skipped, with a
//! message, when no Prosody answers at `IM_PROSODY_ADDR` (default 127.0.0.1:5222);
//! `.ci/run` always starts one and sets `IM_REQUIRE_PROSODY`, which turns a skip into a
//! failure. Users get a unique suffix per test, so tests share the server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use std::sync::Arc;

use im_arch::{HistoryWindow, ImClient};
use im_service::xmpp::{XmppClient, XmppConfig, XmppVendor};
use im_service::{
    Content, ConversationId, Credentials, EventStream, HistoryQuery, HistoryRange, KickReason,
    OutgoingMessage, ServiceError, Timestamp, Token, UserId, Vendor, VendorEvent,
};
use im_testkit::harness::register_xmpp_user;

const DOMAIN: &str = "im.test";

/// The server, or `None` (and a note on stderr) when none runs.
fn prosody() -> Option<SocketAddr> {
    let addr: SocketAddr = std::env::var("IM_PROSODY_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:5222".into())
        .parse()
        .expect("IM_PROSODY_ADDR is host:port");
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(_) => Some(addr),
        // CI starts one and sets IM_REQUIRE_PROSODY: there, a missing server is a failure.
        Err(e) if std::env::var_os("IM_REQUIRE_PROSODY").is_some() => {
            panic!("no Prosody at {addr} ({e}) although IM_REQUIRE_PROSODY is set")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: no Prosody at {addr} ({e}); start one with `tests/prosody/prosody.sh start`"
            );
            None
        }
    }
}

/// Registers `name` (made unique) and returns its credentials.
async fn user(name: &str) -> Credentials {
    user_in(None, name).await
}

/// [`user`] on the server whose data lives in `dir` (`None`: the default one).
async fn user_in(dir: Option<&str>, name: &str) -> Credentials {
    let unique = format!("{name}-{:08x}", rand::random::<u32>());
    register_xmpp_user(&unique, "pw-secret", dir.map(std::path::Path::new))
        .await
        .unwrap();
    Credentials {
        user: UserId::new(unique),
        token: Token::new("pw-secret"),
    }
}

fn vendor(addr: SocketAddr) -> XmppVendor {
    XmppVendor::new(XmppConfig::new(addr, DOMAIN))
}

fn text(conv: &ConversationId, body: &str) -> OutgoingMessage {
    OutgoingMessage::new(conv.clone(), Content::text(body), Timestamp::from_millis(0))
}

fn bodies(ms: &[im_service::Message]) -> Vec<String> {
    ms.iter()
        .map(|m| match &m.content {
            Content::Text(t) => t.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// The next event within 5 s.
async fn event(events: &mut EventStream) -> VendorEvent {
    tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event in time")
        .expect("stream open")
}

/// No event within `ms`.
async fn quiet(events: &mut EventStream, ms: u64) {
    if let Ok(ev) = tokio::time::timeout(Duration::from_millis(ms), events.next()).await {
        panic!("unexpected event {ev:?}");
    }
}

/// Logs in and runs ACK-online: all offline messages, then online.
async fn online(c: &XmppClient, who: &Credentials) -> Vec<im_service::Message> {
    c.login(who).await.unwrap();
    let mut all = Vec::new();
    loop {
        let batch = c.pull_offline(100).await.unwrap();
        all.extend(batch.messages);
        if let Some(ack) = batch.ack {
            c.ack_offline(&ack).await.unwrap();
        }
        if batch.left == 0 {
            break;
        }
    }
    c.go_online().await.unwrap();
    all
}

#[tokio::test]
async fn login_checks_the_password() {
    let Some(addr) = prosody() else { return };
    let alice = user("alice").await;
    let c = vendor(addr).client();
    let wrong = Credentials {
        token: Token::new("guess"),
        ..alice.clone()
    };
    let err = c.login(&wrong).await.unwrap_err();
    assert!(matches!(err, ServiceError::AuthFailed(_)), "{err:?}");
    let session = c.login(&alice).await.unwrap();
    assert_eq!(session.user, alice.user);
    let rtt = c.ping().await.unwrap();
    assert!(rtt < Duration::from_secs(5));
    c.logout().await.unwrap();
    assert_eq!(c.ping().await.unwrap_err(), ServiceError::NotLoggedIn);
}

#[tokio::test]
async fn sends_are_acked_and_pushed_live_with_the_origin_id() {
    let Some(addr) = prosody() else { return };
    let v = vendor(addr);
    let (alice, bob) = (user("alice").await, user("bob").await);
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let (a, b) = (v.client(), v.client());
    let mut events = b.take_events().unwrap();
    assert!(online(&b, &bob).await.is_empty());
    a.login(&alice).await.unwrap();
    let out = text(&conv, "hello bob");
    let receipt = a.send(&out).await.unwrap();
    assert!(!receipt.duplicate);
    assert_eq!(receipt.server_id.as_str(), out.client_id.as_str());
    assert!(
        a.send(&out).await.unwrap().duplicate,
        "a resend on the connection"
    );
    match event(&mut events).await {
        VendorEvent::MessagePushed(m) => {
            assert_eq!(m.server_id, receipt.server_id);
            assert_eq!(m.client_id, out.client_id);
            assert_eq!(m.conversation, conv);
            assert_eq!(m.sender, alice.user);
            assert_eq!(bodies(&[m]), ["hello bob"]);
        }
        other => panic!("{other:?}"),
    }
    quiet(&mut events, 300).await;
    a.logout().await.unwrap();
    b.logout().await.unwrap();
}

#[tokio::test]
async fn offline_messages_come_first_and_live_ones_wait_for_go_online() {
    let Some(addr) = prosody() else { return };
    let v = vendor(addr);
    let (alice, bob) = (user("alice").await, user("bob").await);
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = v.client();
    a.login(&alice).await.unwrap();
    for i in 1..=3 {
        a.send(&text(&conv, &format!("offline {i}"))).await.unwrap();
        // Distinct delay stamps (Prosody stamps to the second or finer).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = v.client();
    let mut events = b.take_events().unwrap();
    b.login(&bob).await.unwrap();
    let first = b.pull_offline(2).await.unwrap();
    assert_eq!(first.messages.len(), 2);
    assert_eq!(first.left, 1);
    let rest = b.pull_offline(2).await.unwrap();
    assert_eq!(rest.left, 0);
    let mut offline = first.messages;
    offline.extend(rest.messages);
    let mut got = bodies(&offline);
    got.sort();
    assert_eq!(got, ["offline 1", "offline 2", "offline 3"]);
    assert!(
        offline
            .windows(2)
            .all(|w| w[0].server_time >= w[1].server_time),
        "newest first"
    );
    // Sent while bob syncs: held until go_online.
    a.send(&text(&conv, "live")).await.unwrap();
    quiet(&mut events, 300).await;
    b.go_online().await.unwrap();
    match event(&mut events).await {
        VendorEvent::MessagePushed(m) => assert_eq!(bodies(&[m]), ["live"]),
        other => panic!("{other:?}"),
    }
    quiet(&mut events, 300).await;
    a.logout().await.unwrap();
    b.logout().await.unwrap();
}

#[tokio::test]
async fn history_comes_from_mam_newest_first_in_pages() {
    let Some(addr) = prosody() else { return };
    let v = vendor(addr);
    let (alice, bob) = (user("alice").await, user("bob").await);
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let a = v.client();
    a.login(&alice).await.unwrap();
    let mut sent = Vec::new();
    for i in 1..=5 {
        let out = text(&conv, &format!("m{i}"));
        a.send(&out).await.unwrap();
        sent.push(out.client_id.to_string());
    }
    let b = v.client();
    online(&b, &bob).await;
    let mut query = HistoryQuery::latest(conv.clone(), 2);
    let mut pages = Vec::new();
    loop {
        let page = b.pull_history(&query).await.unwrap();
        assert!(page.messages.len() <= 2);
        pages.extend(page.messages);
        match page.next {
            Some(c) => query.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(bodies(&pages), ["m5", "m4", "m3", "m2", "m1"]);
    let ids: Vec<String> = pages.iter().map(|m| m.server_id.to_string()).collect();
    let mut want = sent.clone();
    want.reverse();
    assert_eq!(ids, want, "the origin-id is the id every copy shares");
    // A time range that ends before now holds nothing newer.
    let range = HistoryQuery {
        range: HistoryRange::Time {
            from: Timestamp::from_millis(0),
            to: pages[4].server_time,
        },
        ..HistoryQuery::latest(conv.clone(), 10)
    };
    assert!(b.pull_history(&range).await.unwrap().messages.is_empty());
    a.logout().await.unwrap();
    b.logout().await.unwrap();
}

#[tokio::test]
async fn a_second_login_kicks_the_first() {
    let Some(addr) = prosody() else { return };
    let v = vendor(addr);
    let bob = user("bob").await;
    let first = v.client();
    let mut events = first.take_events().unwrap();
    first.login(&bob).await.unwrap();
    let second = v.client();
    second.login(&bob).await.unwrap();
    match event(&mut events).await {
        VendorEvent::Kicked(KickReason::LoggedInElsewhere) => {}
        other => panic!("{other:?}"),
    }
    assert!(second.ping().await.is_ok(), "the newer session stays");
    second.logout().await.unwrap();
}

/// The second test server, whose clock the test moves (`prosody.sh` with
/// `IM_PROSODY_FAKETIME_FILE`): its address, data directory and clock file, from
/// `IM_PROSODY_FAKETIME_ADDR`, `IM_PROSODY_FAKETIME_DIR`, `IM_PROSODY_FAKETIME_FILE`.
fn shifted_prosody() -> Option<(SocketAddr, String, String)> {
    let vars = (
        std::env::var("IM_PROSODY_FAKETIME_ADDR"),
        std::env::var("IM_PROSODY_FAKETIME_DIR"),
        std::env::var("IM_PROSODY_FAKETIME_FILE"),
    );
    match vars {
        (Ok(addr), Ok(dir), Ok(file)) => Some((addr.parse().expect("host:port"), dir, file)),
        _ if std::env::var_os("IM_REQUIRE_PROSODY").is_some() => {
            panic!("IM_REQUIRE_PROSODY is set but the shifted-clock Prosody is not configured")
        }
        _ => {
            eprintln!(
                "SKIPPED: no shifted-clock Prosody (set IM_PROSODY_FAKETIME_ADDR/_DIR/_FILE, \
                 see tests/prosody/README.md)"
            );
            None
        }
    }
}

/// Messages stored 40 days, 15 days and 1 hour ago (the server's clock moved back while
/// they were sent): through the client's history windows, `Recent` and `Middle` come from
/// MAM with the right message each, and `Old` (no source configured) is an explicit gap.
#[tokio::test]
async fn history_windows_of_weeks_come_from_mam() {
    let Some((addr, dir, clock)) = shifted_prosody() else {
        return;
    };
    let v = vendor(addr);
    let (alice, bob) = (
        user_in(Some(&dir), "alice").await,
        user_in(Some(&dir), "bob").await,
    );
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let set_clock = |offset: &str| std::fs::write(&clock, format!("{offset}\n")).unwrap();
    for (offset, body) in [
        ("-40d", "40 days ago"),
        ("-15d", "15 days ago"),
        ("-1h", "an hour ago"),
    ] {
        set_clock(offset);
        let a = v.client();
        a.login(&alice).await.unwrap();
        a.send(&text(&conv, body)).await.unwrap();
        a.logout().await.unwrap();
    }
    set_clock("+0");
    let vendor: Arc<dyn Vendor> = Arc::new(v.client());
    let client = ImClient::builder(vendor, bob.clone()).build();
    client.login().await.unwrap();
    for (window, want) in [
        (HistoryWindow::Recent, "an hour ago"),
        (HistoryWindow::Middle, "15 days ago"),
    ] {
        let page = client.history(&conv, window, 10, None).await.unwrap();
        assert_eq!(bodies(&page.messages), [want], "{window:?}: {page:?}");
        assert!(page.gaps.is_empty(), "{window:?}");
        let age = Timestamp::from_millis(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        )
        .as_millis()
            - page.messages[0].server_time.as_millis();
        let days = age / 86_400_000;
        assert_eq!(
            days,
            if window == HistoryWindow::Middle {
                15
            } else {
                0
            },
            "the server's time, not the sender's"
        );
    }
    let old = client
        .history(&conv, HistoryWindow::Old, 10, None)
        .await
        .unwrap();
    assert!(old.messages.is_empty() && old.gaps.len() == 1, "{old:?}");
    client.logout().await;
}
