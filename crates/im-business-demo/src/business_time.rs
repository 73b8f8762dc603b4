//! Business time on a vendor whose clock the demo cannot move (a real server): the scripted
//! day jumps ahead (a minute to read a question, seven to leave a tenant waiting, to the
//! next hour), while the server keeps stamping messages with the real time.
//!
//! [`BusinessClock`] is the system clock plus the jumps made so far, and remembers when
//! each jump happened. A vendor time `t` maps to business time `t + (the jumps made before
//! t)`, so a message keeps the business time of the moment it was sent whenever it is read
//! (live, offline, from history), and its wait until an answer is measured in business time
//! by QC exactly as on a vendor whose own clock was shifted. [`BusinessTimeVendor`] is the
//! decorator that applies the map to everything a vendor returns (messages, receipts,
//! changes, read receipts, sessions, history horizons) and its inverse to what goes down (a
//! history range in business time, a client's send time). It holds as long as the vendor's
//! clock and this machine's agree to well under the jumps (a server on the same machine:
//! the XMPP adapter stamps our messages with the sender's millisecond).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use im_service::{
    Capabilities, ChangeBatch, ChangeCursor, Clock, Content, ConversationId, Credentials,
    EventStream, HistoryPage, HistoryQuery, HistoryRange, LifecyclePolicy, Message, MessageChange,
    OfflineAck, OfflineBatch, OutgoingMessage, ReadReceipt, SendReceipt, ServerMsgId, Session,
    SystemClock, Timestamp, Vendor, VendorEvent,
};
use parking_lot::Mutex;

/// The system clock plus the jumps of the scripted day, each remembered with the real time
/// it was made at. Clones share the jumps.
#[derive(Debug, Clone, Default)]
pub struct BusinessClock {
    /// (real time of the jump, total offset from then on), in ms, oldest first; the offset
    /// before the first entry is 0.
    jumps: Arc<Mutex<Vec<(i64, i64)>>>,
}

impl BusinessClock {
    /// A clock showing the system time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Business time moves on by `by`, from now on.
    pub fn shift(&self, by: Duration) {
        let now = SystemClock.now().as_millis();
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let mut jumps = self.jumps.lock();
        let total = jumps.last().map_or(0, |j| j.1).saturating_add(by);
        jumps.push((now, total));
    }

    /// The offset in force at real time `t`.
    fn offset_at(jumps: &[(i64, i64)], t: i64) -> i64 {
        // Jumps are in real-time order: the last one made at or before `t` counts.
        let i = jumps.partition_point(|(at, _)| *at <= t);
        if i == 0 { 0 } else { jumps[i - 1].1 }
    }

    /// The business time of vendor (real) time `t`.
    pub fn to_business(&self, t: Timestamp) -> Timestamp {
        let jumps = self.jumps.lock();
        Timestamp::from_millis(
            t.as_millis()
                .saturating_add(Self::offset_at(&jumps, t.as_millis())),
        )
    }

    /// The vendor (real) time of business time `b`: the inverse of
    /// [`to_business`](Self::to_business); a business time a jump skipped maps to the jump.
    pub fn to_vendor(&self, b: Timestamp) -> Timestamp {
        let b = b.as_millis();
        let jumps = self.jumps.lock();
        // Segment i runs from jump i (real) with its offset; the first segment whose
        // business start is after `b` ends the search.
        let mut real = b;
        let mut start_offset = 0;
        let mut start_at = i64::MIN;
        for (at, offset) in jumps.iter() {
            if at.saturating_add(*offset) > b {
                // `b` lies in the previous segment, or in the gap the jump skipped.
                return Timestamp::from_millis(
                    b.saturating_sub(start_offset).min(*at).max(start_at),
                );
            }
            start_at = *at;
            start_offset = *offset;
            real = b.saturating_sub(*offset);
        }
        Timestamp::from_millis(real.max(start_at))
    }

    fn message(&self, mut m: Message) -> Message {
        m.server_time = self.to_business(m.server_time);
        m.client_time = self.to_business(m.client_time);
        m.content = self.content(m.content);
        m
    }

    fn content(&self, c: Content) -> Content {
        match c {
            Content::Recalled { by, at } => Content::Recalled {
                by,
                at: self.to_business(at),
            },
            other => other,
        }
    }

    fn change(&self, mut c: MessageChange) -> MessageChange {
        c.at = self.to_business(c.at);
        c
    }

    fn receipt(&self, mut r: ReadReceipt) -> ReadReceipt {
        r.up_to_time = self.to_business(r.up_to_time);
        r.at = self.to_business(r.at);
        r
    }

    fn event(&self, e: VendorEvent) -> VendorEvent {
        match e {
            VendorEvent::MessagePushed(m) => VendorEvent::MessagePushed(self.message(m)),
            VendorEvent::MessageChanged(c) => VendorEvent::MessageChanged(self.change(c)),
            VendorEvent::ReadReceipt(r) => VendorEvent::ReadReceipt(self.receipt(r)),
            VendorEvent::TokenWillExpire { expires_at } => VendorEvent::TokenWillExpire {
                expires_at: self.to_business(expires_at),
            },
            other => other,
        }
    }
}

impl Clock for BusinessClock {
    fn now(&self) -> Timestamp {
        self.to_business(SystemClock.now())
    }
}

/// A vendor seen in business time (see the module doc). Forwards every call, the
/// lifecycle ones included, to the vendor it wraps.
pub struct BusinessTimeVendor {
    inner: Arc<dyn Vendor>,
    clock: BusinessClock,
}

impl BusinessTimeVendor {
    /// `inner`, its times mapped through `clock`.
    pub fn new(inner: Arc<dyn Vendor>, clock: BusinessClock) -> Self {
        Self { inner, clock }
    }
}

#[async_trait]
impl Vendor for BusinessTimeVendor {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    fn take_events(&self) -> Option<EventStream> {
        let clock = self.clock.clone();
        let events = self.inner.take_events()?;
        Some(Box::pin(events.map(move |e| clock.event(e))))
    }

    async fn login(&self, credentials: &Credentials) -> im_service::Result<Session> {
        let mut s = self.inner.login(credentials).await?;
        s.server_time = s.server_time.map(|t| self.clock.to_business(t));
        s.token_expires_at = s.token_expires_at.map(|t| self.clock.to_business(t));
        Ok(s)
    }

    async fn logout(&self) -> im_service::Result<()> {
        self.inner.logout().await
    }

    async fn send(&self, message: &OutgoingMessage) -> im_service::Result<SendReceipt> {
        let mut down = message.clone();
        down.client_time = self.clock.to_vendor(message.client_time);
        let mut r = self.inner.send(&down).await?;
        r.server_time = self.clock.to_business(r.server_time);
        Ok(r)
    }

    async fn send_after(
        &self,
        message: &OutgoingMessage,
        after: &im_service::ClientMsgId,
    ) -> im_service::Result<SendReceipt> {
        let mut down = message.clone();
        down.client_time = self.clock.to_vendor(message.client_time);
        let mut r = self.inner.send_after(&down, after).await?;
        r.server_time = self.clock.to_business(r.server_time);
        Ok(r)
    }

    async fn pull_offline(&self, max: u32) -> im_service::Result<OfflineBatch> {
        let mut b = self.inner.pull_offline(max).await?;
        b.messages = b
            .messages
            .into_iter()
            .map(|m| self.clock.message(m))
            .collect();
        Ok(b)
    }

    async fn ack_offline(&self, ack: &OfflineAck) -> im_service::Result<()> {
        self.inner.ack_offline(ack).await
    }

    async fn go_online(&self) -> im_service::Result<()> {
        self.inner.go_online().await
    }

    async fn pull_history(&self, query: &HistoryQuery) -> im_service::Result<HistoryPage> {
        let mut down = query.clone();
        if let HistoryRange::Time { from, to } = query.range {
            down.range = HistoryRange::Time {
                from: self.clock.to_vendor(from),
                to: self.clock.to_vendor(to),
            };
        }
        let mut page = self.inner.pull_history(&down).await?;
        page.messages = page
            .messages
            .into_iter()
            .map(|m| self.clock.message(m))
            .collect();
        page.horizon = page.horizon.map(|t| self.clock.to_business(t));
        Ok(page)
    }

    async fn ping(&self) -> im_service::Result<Duration> {
        self.inner.ping().await
    }

    async fn mark_read(
        &self,
        conversation: &ConversationId,
        up_to: &ServerMsgId,
    ) -> im_service::Result<()> {
        self.inner.mark_read(conversation, up_to).await
    }

    fn lifecycle(&self) -> LifecyclePolicy {
        self.inner.lifecycle()
    }

    async fn recall(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> im_service::Result<MessageChange> {
        let c = self.inner.recall(conversation, target).await?;
        Ok(self.clock.change(c))
    }

    async fn edit(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
        content: &Content,
    ) -> im_service::Result<MessageChange> {
        let c = self.inner.edit(conversation, target, content).await?;
        Ok(self.clock.change(c))
    }

    async fn delete_for_me(
        &self,
        conversation: &ConversationId,
        target: &ServerMsgId,
    ) -> im_service::Result<MessageChange> {
        let c = self.inner.delete_for_me(conversation, target).await?;
        Ok(self.clock.change(c))
    }

    async fn pull_changes(
        &self,
        since: Option<ChangeCursor>,
        max: u32,
    ) -> im_service::Result<ChangeBatch> {
        let mut b = self.inner.pull_changes(since, max).await?;
        b.changes = b
            .changes
            .into_iter()
            .map(|c| self.clock.change(c))
            .collect();
        b.receipts = b
            .receipts
            .into_iter()
            .map(|r| self.clock.receipt(r))
            .collect();
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_times_keep_the_business_time_of_their_moment() {
        let clock = BusinessClock::new();
        let before = SystemClock.now();
        assert_eq!(clock.to_business(before), before, "no jump yet");
        std::thread::sleep(Duration::from_millis(5));
        clock.shift(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
        let after = SystemClock.now();
        // A message stamped before the jump keeps its time; one after it is a minute later.
        assert_eq!(clock.to_business(before), before);
        assert_eq!(
            clock.to_business(after).as_millis(),
            after.as_millis() + 60_000
        );
        assert!(clock.now().as_millis() >= after.as_millis() + 60_000);
        // The inverse: business times round-trip, a skipped one maps to the jump.
        for t in [before, after] {
            assert_eq!(clock.to_vendor(clock.to_business(t)), t);
        }
        let skipped = Timestamp::from_millis(after.as_millis() + 30_000 - 5);
        let jump = clock.to_vendor(skipped);
        assert!(jump > before && jump < after, "{jump:?}");
    }
}
