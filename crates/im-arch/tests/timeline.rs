//! The timeline's gaps: clock skew between client and vendor is not a gap, a retention
//! horizon is.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use im_arch::ImClient;
use im_service::memory::{MemoryVendor, MemoryVendorConfig};
use im_service::{
    Clock, Content, ConversationId, ManualClock, OutgoingMessage, Timestamp, UserId, Vendor,
};

/// A fresh three-message conversation read by a client whose clock is 2 ms behind the
/// vendor's: the vendor's 7-day horizon falls 2 ms inside the client's Recent window. That
/// is clock noise (measured at login), not a range anyone lost; the 23 days of the Middle
/// window the vendor no longer keeps are a real gap.
#[tokio::test]
async fn clock_skew_is_not_a_gap_but_the_retention_horizon_is() {
    let (vendor, vendor_clock) = MemoryVendor::with_manual_clock(MemoryVendorConfig::default());
    let alice = vendor.register_user(&UserId::new("alice"));
    let bob = vendor.register_user(&UserId::new("bob"));
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let sender = vendor.client();
    sender.login(&alice).await.unwrap();
    for body in ["one", "two", "three"] {
        let m = OutgoingMessage::new(conv.clone(), Content::text(body), vendor_clock.now());
        sender.send(&m).await.unwrap();
        vendor_clock.advance(Duration::from_millis(5));
    }
    let behind = ManualClock::new(Timestamp::from_millis(vendor_clock.now().as_millis() - 2));
    let client = ImClient::builder(Arc::new(vendor.client()), bob)
        .clock(Arc::new(behind))
        .build();
    client.login().await.unwrap();

    let page = client.timeline_before(&conv, None, 10).await.unwrap();
    assert_eq!(page.messages.len(), 3, "the three messages, newest first");
    let tiny: Vec<_> = page
        .gaps
        .iter()
        .filter(|g| g.to.as_millis() - g.from.as_millis() < 1000)
        .collect();
    assert!(
        tiny.is_empty(),
        "clock skew reported as a gap: {tiny:?} (all gaps: {:?})",
        page.gaps
    );
    let days = |g: &im_arch::HistoryGap| (g.to.as_millis() - g.from.as_millis()) / 86_400_000;
    assert!(
        page.gaps.iter().any(|g| days(g) >= 22),
        "the Middle window past the vendor's 7-day retention is a gap: {:?}",
        page.gaps
    );
    client.logout().await;
}
