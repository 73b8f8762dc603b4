//! A property of the memory vendor's lifecycle, the reference semantics: over random
//! sequences of sends, edits, recalls, deletions for me, reads on either of two devices,
//! disconnects, reconnects and time passing, a device that applies what the vendor tells
//! it (pushes, change events by revision, offline and history pulls, the change feed)
//! ends, after one sync, with exactly the vendor's current state for its user, and the
//! devices of one user agree on the read position.
#![cfg(feature = "memory")]
// Helpers outside `#[test]` functions fail the test the same way.
#![allow(clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use im_service::memory::{MemoryClient, MemoryVendor, MemoryVendorConfig};
use im_service::{
    ChangeCursor, ChangeKind, Content, ConversationId, Credentials, EventStream, HistoryQuery,
    HistoryScope, ManualClock, Message, MessageChange, OutgoingMessage, ReadReceipt, ServerMsgId,
    Timestamp, UserId, Vendor, VendorEvent,
};
use proptest::prelude::*;

/// One device and what it has learned.
struct Device {
    who: Credentials,
    client: MemoryClient,
    events: EventStream,
    online: bool,
    /// Its local store: message id → (message, revision of the last change applied).
    messages: BTreeMap<ServerMsgId, (Message, u32)>,
    deleted: BTreeSet<ServerMsgId>,
    /// Newest read position of its own user: (global position, message id).
    read: Option<(u64, ServerMsgId)>,
    cursor: Option<ChangeCursor>,
}

fn global(id: &ServerMsgId) -> u64 {
    id.as_str()
        .strip_prefix("m:")
        .and_then(|n| n.parse().ok())
        .expect("memory ids are m:<n>")
}

impl Device {
    fn learn(&mut self, m: &Message) {
        if !self.deleted.contains(&m.server_id) {
            self.messages
                .entry(m.server_id.clone())
                .or_insert_with(|| (m.clone(), 0));
        }
    }

    fn change(&mut self, c: &MessageChange) {
        if c.kind == ChangeKind::DeletedForMe {
            self.deleted.insert(c.target.clone());
            self.messages.remove(&c.target);
            return;
        }
        if let Some((m, rev)) = self.messages.get_mut(&c.target)
            && c.revision > *rev
        {
            *rev = c.revision;
            if let Some(next) = c.apply(m) {
                *m = next;
            }
        }
    }

    fn receipt(&mut self, r: &ReadReceipt) {
        if r.reader == self.who.user {
            self.read_up_to(&r.up_to);
        }
    }

    fn read_up_to(&mut self, id: &ServerMsgId) {
        let g = global(id);
        if self.read.as_ref().is_none_or(|(old, _)| g > *old) {
            self.read = Some((g, id.clone()));
        }
    }

    fn drain(&mut self) {
        while let Some(Some(e)) = self.events.next().now_or_never() {
            match e {
                VendorEvent::MessagePushed(m) => self.learn(&m),
                VendorEvent::MessageChanged(c) => self.change(&c),
                VendorEvent::ReadReceipt(r) => self.receipt(&r),
                VendorEvent::ConnectionLost { .. } | VendorEvent::Kicked(_) => self.online = false,
                VendorEvent::TokenWillExpire { .. } | VendorEvent::TokenExpired => {}
            }
        }
    }

    /// Login and the ACK-online pass: offline messages, history for what other devices
    /// took live, the change feed, then live.
    async fn sync(&mut self, conv: &ConversationId) {
        self.client.login(&self.who).await.expect("login");
        loop {
            let batch = self.client.pull_offline(3).await.expect("offline");
            for m in &batch.messages {
                self.learn(m);
            }
            if let Some(ack) = &batch.ack {
                self.client.ack_offline(ack).await.expect("ack");
            }
            if batch.left == 0 {
                break;
            }
        }
        loop {
            let batch = self
                .client
                .pull_changes(self.cursor.clone(), 2)
                .await
                .expect("changes");
            for c in &batch.changes {
                self.change(c);
            }
            for r in &batch.receipts {
                self.receipt(r);
            }
            self.cursor = Some(batch.next);
            if batch.left == 0 {
                break;
            }
        }
        // After the feed: a message first learned here is in its current state already.
        let mut query = HistoryQuery {
            scope: HistoryScope::All,
            ..HistoryQuery::latest(conv.clone(), 100)
        };
        loop {
            let page = self.client.pull_history(&query).await.expect("history");
            for m in &page.messages {
                self.learn(m);
            }
            match page.next {
                Some(next) => query.cursor = Some(next),
                None => break,
            }
        }
        self.client.go_online().await.expect("online");
        self.online = true;
        self.drain();
    }
}

#[derive(Debug, Clone)]
enum Op {
    Send(usize),
    Edit(usize, usize),
    Recall(usize, usize),
    Delete(usize, usize),
    Read(usize, usize),
    Disconnect(usize),
    Reconnect(usize),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let device = 0..3usize; // 0: alice, 1 and 2: bob's two devices
    let msg = 0..8usize;
    prop_oneof![
        3 => device.clone().prop_map(Op::Send),
        2 => (device.clone(), msg.clone()).prop_map(|(d, m)| Op::Edit(d, m)),
        2 => (device.clone(), msg.clone()).prop_map(|(d, m)| Op::Recall(d, m)),
        1 => (device.clone(), msg.clone()).prop_map(|(d, m)| Op::Delete(d, m)),
        2 => (device.clone(), msg).prop_map(|(d, m)| Op::Read(d, m)),
        1 => device.clone().prop_map(Op::Disconnect),
        1 => device.prop_map(Op::Reconnect),
        1 => (0..90u64).prop_map(Op::Wait),
    ]
}

async fn device(vendor: &MemoryVendor, who: &Credentials, conv: &ConversationId) -> Device {
    let client = vendor.client();
    let events = client.take_events().expect("events");
    let mut d = Device {
        who: who.clone(),
        client,
        events,
        online: false,
        messages: BTreeMap::new(),
        deleted: BTreeSet::new(),
        read: None,
        cursor: None,
    };
    d.sync(conv).await;
    d
}

async fn run(ops: Vec<Op>) {
    let (vendor, clock): (MemoryVendor, ManualClock) =
        MemoryVendor::with_manual_clock(MemoryVendorConfig {
            multi_device: true,
            ..MemoryVendorConfig::default()
        });
    let alice = vendor.register_user(&UserId::new("alice"));
    let bob = vendor.register_user(&UserId::new("bob"));
    let conv = ConversationId::direct(&alice.user, &bob.user);
    let mut devices = vec![
        device(&vendor, &alice, &conv).await,
        device(&vendor, &bob, &conv).await,
        device(&vendor, &bob, &conv).await,
    ];
    let mut sent: Vec<ServerMsgId> = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        let pick = |m: usize| sent.get(m % sent.len().max(1)).cloned();
        match op {
            Op::Send(d) if devices[d].online => {
                let msg = OutgoingMessage::new(
                    conv.clone(),
                    Content::text(format!("m{i}")),
                    Timestamp::from_millis(0),
                );
                let receipt = devices[d].client.send(&msg).await.expect("send");
                // The sender stores its own message (its local echo).
                let stored = vendor
                    .stored_messages(&conv)
                    .into_iter()
                    .find(|m| m.server_id == receipt.server_id)
                    .expect("stored");
                devices[d].learn(&stored);
                sent.push(receipt.server_id);
            }
            Op::Edit(d, m) | Op::Recall(d, m) | Op::Delete(d, m) if devices[d].online => {
                let Some(target) = pick(m) else { continue };
                let dev = &mut devices[d];
                let result = match op {
                    Op::Edit(..) => {
                        let content = Content::text(format!("e{i}"));
                        dev.client.edit(&conv, &target, &content).await
                    }
                    Op::Recall(..) => dev.client.recall(&conv, &target).await,
                    _ => dev.client.delete_for_me(&conv, &target).await,
                };
                // Refusals (window, permission, recalled, deleted) change nothing.
                if let Ok(change) = result {
                    dev.change(&change);
                }
            }
            Op::Read(d, m) if devices[d].online => {
                let Some(target) = pick(m) else { continue };
                devices[d]
                    .client
                    .mark_read(&conv, &target)
                    .await
                    .expect("mark read");
                devices[d].read_up_to(&target);
            }
            Op::Disconnect(d) if devices[d].online => {
                devices[d].client.logout().await.expect("logout");
                devices[d].online = false;
            }
            Op::Reconnect(d) if !devices[d].online => devices[d].sync(&conv).await,
            Op::Wait(secs) => clock.advance(Duration::from_secs(secs)),
            _ => {}
        }
        for dev in &mut devices {
            dev.drain();
        }
    }
    for dev in &mut devices {
        if !dev.online {
            dev.sync(&conv).await;
        }
    }
    for dev in &mut devices {
        dev.drain();
    }
    for (i, dev) in devices.iter().enumerate() {
        let query = HistoryQuery {
            scope: HistoryScope::All,
            ..HistoryQuery::latest(conv.clone(), 100)
        };
        let truth: BTreeMap<ServerMsgId, Content> = dev
            .client
            .pull_history(&query)
            .await
            .expect("history")
            .messages
            .into_iter()
            .map(|m| (m.server_id, m.content))
            .collect();
        let seen: BTreeMap<ServerMsgId, Content> = dev
            .messages
            .iter()
            .map(|(id, (m, _))| (id.clone(), m.content.clone()))
            .collect();
        assert_eq!(
            seen, truth,
            "device {i} converges on the vendor's current state"
        );
    }
    let vendor_read = vendor
        .read_position(&bob.user, &conv)
        .map(|r| global(&r.up_to));
    for (i, dev) in devices.iter().enumerate().skip(1) {
        assert_eq!(
            dev.read.as_ref().map(|(g, _)| *g),
            vendor_read,
            "bob's device {i} ends with the vendor's read position"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_device_converges_on_the_current_state(ops in proptest::collection::vec(op(), 0..40)) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(run(ops));
    }
}
