//! The message lifecycle in the contract: what happens to a message after it was sent
//! (recall, edit, delete for me), read state in both directions, and the change feed by
//! which a client that was away learns what changed.
//!
//! Why a change is its own value, not a new field of [`Message`]: a message as sent is
//! immutable and stored everywhere (wire, client store, archive) in a positional format; a
//! change names its target and carries a per-message `revision`, so every receiver can apply
//! changes idempotently and in any order (the highest revision wins), whether they come
//! live ([`VendorEvent::MessageChanged`](crate::VendorEvent::MessageChanged)), from the feed
//! ([`Vendor::pull_changes`](crate::Vendor::pull_changes)) or twice. Where a vendor returns a
//! message (offline and history pulls) it returns its **current state**: an edit's content,
//! a recalled message as [`Content::Recalled`], a message deleted for the caller not at all.
//!
//! The rules on who may change what, and until when, are data ([`LifecyclePolicy`]) checked
//! in one place ([`LifecyclePolicy::check`]) by every vendor that enforces them itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Content, ConversationId, Message, ServerMsgId, Timestamp, UserId};

/// What a change does to its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// Recalled ("unsent") by its sender: gone for everyone; clients show that a message was
    /// recalled, never its old content.
    Recalled,
    /// The content is replaced by this one (shown once, with its latest content).
    Edited(Content),
    /// Deleted for the user who asked, on all their devices; everyone else keeps it.
    DeletedForMe,
}

impl ChangeKind {
    /// Short name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeKind::Recalled => "recalled",
            ChangeKind::Edited(_) => "edited",
            ChangeKind::DeletedForMe => "deleted_for_me",
        }
    }
}

/// A change made to a message after it was sent, as the vendor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageChange {
    /// The conversation of the changed message.
    pub conversation: ConversationId,
    /// The changed message.
    pub target: ServerMsgId,
    /// What changed.
    pub kind: ChangeKind,
    /// Who changed it.
    pub by: UserId,
    /// The vendor's time of the change.
    pub at: Timestamp,
    /// The message's revision after this change: higher than every earlier change's of the
    /// same message (counting vendors give 1, 2, 3 …; XMPP, which has no counter, derives it
    /// from the change's time). A receiver applies a change only when it is newer than the
    /// revision it holds, so duplicated or reordered changes converge on the same state.
    pub revision: u32,
}

impl MessageChange {
    /// `message` as it is after this change (`None` when the change removes it for the
    /// receiver: [`ChangeKind::DeletedForMe`]). The message's ids, sender, sequence and times
    /// never change.
    pub fn apply(&self, message: &Message) -> Option<Message> {
        let mut out = message.clone();
        match &self.kind {
            ChangeKind::Recalled => {
                out.content = Content::Recalled {
                    by: self.by.clone(),
                    at: self.at,
                };
            }
            ChangeKind::Edited(content) => {
                // A recalled message stays recalled: an edit cannot bring its content back.
                if !matches!(message.content, Content::Recalled { .. }) {
                    out.content = content.clone();
                }
            }
            ChangeKind::DeletedForMe => return None,
        }
        Some(out)
    }

    /// The change `kind` of `target` by `by` at the vendor's time `at`, its revision derived
    /// from that time (tenths of a second since 2024): for vendors without a per-message
    /// counter (XMPP, Matrix), whose every copy of a change carries the same time.
    pub fn timed(
        conversation: &ConversationId,
        target: ServerMsgId,
        kind: ChangeKind,
        by: UserId,
        at: Timestamp,
    ) -> Self {
        let conversation = conversation.clone();
        let revision = revision_at(at);
        Self {
            conversation,
            target,
            kind,
            by,
            at,
            revision,
        }
    }
}

/// 2024-01-01T00:00:00Z: the origin of time-based revisions.
pub(crate) const REVISION_EPOCH_MS: i64 = 1_704_067_200_000;

/// A change's revision from its time: tenths of a second since 2024 (a `u32` lasts until
/// 2037), so every receiver of any copy derives the same revision and a later change wins.
/// Two edits within the same tenth of a second tie (the second is dropped by receivers that
/// hold the first); a recall wins anyway ([`MessageChange::apply`]).
pub(crate) fn revision_at(at: Timestamp) -> u32 {
    let tenths = at.as_millis().saturating_sub(REVISION_EPOCH_MS) / 100;
    u32::try_from(tenths.max(1)).unwrap_or(u32::MAX)
}

/// A read position reported back: `reader` has read `conversation` up to and including
/// the message `up_to`. When `reader` is the receiving client's own user the read happened
/// on another of its devices (unread counts follow); otherwise a peer has read ("seen").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReceipt {
    /// The conversation read.
    pub conversation: ConversationId,
    /// Who read it.
    pub reader: UserId,
    /// The newest message read.
    pub up_to: ServerMsgId,
    /// The server time of `up_to`, so a receiver can order read positions without a lookup.
    pub up_to_time: Timestamp,
    /// When the vendor recorded the read.
    pub at: Timestamp,
}

/// An opaque position in a user's change feed, returned by
/// [`Vendor::pull_changes`](crate::Vendor::pull_changes) and handed back to continue from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ChangeCursor(pub Vec<u8>);

/// One pull of the change feed: the changes and read receipts after a cursor, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// Message changes that concern the caller (its conversations; its own deletions).
    pub changes: Vec<MessageChange>,
    /// Read receipts that concern the caller (peers' reads of its conversations, and its own
    /// reads on other devices).
    pub receipts: Vec<ReadReceipt>,
    /// Where the next pull continues.
    pub next: ChangeCursor,
    /// How many more entries wait after `next` (0 when the caller is up to date).
    pub left: u32,
}

/// Who may edit a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EditPermission {
    /// Only its sender (Easemob, Tencent IM, Matrix, XMPP).
    Sender,
    /// Anyone in the conversation.
    AnyMember,
}

/// A vendor's rules for changing messages, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecyclePolicy {
    /// How long after sending its sender may recall a message (`None`: no limit).
    pub recall_window: Option<Duration>,
    /// How long after sending a message may be edited (`None`: no limit).
    pub edit_window: Option<Duration>,
    /// Who may edit.
    pub edit_permission: EditPermission,
}

impl Default for LifecyclePolicy {
    /// Two minutes to recall (Easemob's, Tencent IM's default), edits by the sender at any
    /// time.
    fn default() -> Self {
        Self {
            recall_window: Some(Duration::from_secs(120)),
            edit_window: None,
            edit_permission: EditPermission::Sender,
        }
    }
}

/// Why a vendor refused a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ChangeRefusal {
    /// The recall or edit window has passed.
    #[error("the {window:?} window for this change has passed")]
    WindowPassed {
        /// The window in force.
        window: Duration,
    },
    /// The caller may not make this change (not the sender).
    #[error("only the sender may change this message")]
    NotAllowed,
    /// The message is recalled; nothing more can change it.
    #[error("the message is recalled")]
    Recalled,
    /// No such message in that conversation (or not visible to the caller).
    #[error("no such message")]
    UnknownMessage,
}

impl LifecyclePolicy {
    /// This policy with edits allowed to the sender only: the rule of adapters that check
    /// changes themselves on a server that would let others change a message (XMPP, Matrix).
    pub fn sender_only(&self) -> Self {
        let edit_permission = EditPermission::Sender;
        Self {
            edit_permission,
            ..self.clone()
        }
    }

    /// Whether `by` may make `kind` to `message` at `now`, by this policy. Deleting for
    /// oneself is always allowed (it changes nobody else's view).
    pub fn check(
        &self,
        message: &Message,
        kind: &ChangeKind,
        by: &UserId,
        now: Timestamp,
    ) -> Result<(), ChangeRefusal> {
        if matches!(kind, ChangeKind::DeletedForMe) {
            return Ok(());
        }
        if matches!(message.content, Content::Recalled { .. }) {
            return Err(ChangeRefusal::Recalled);
        }
        let (window, sender_only) = match kind {
            ChangeKind::Recalled => (self.recall_window, true),
            ChangeKind::Edited(_) => (
                self.edit_window,
                self.edit_permission == EditPermission::Sender,
            ),
            ChangeKind::DeletedForMe => (None, false),
        };
        if sender_only && &message.sender != by {
            return Err(ChangeRefusal::NotAllowed);
        }
        if let Some(window) = window
            && now > message.server_time.plus(window)
        {
            return Err(ChangeRefusal::WindowPassed { window });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClientMsgId, Seq};

    fn message(sender: &str, at: i64) -> Message {
        Message {
            server_id: ServerMsgId::new("m1"),
            client_id: ClientMsgId::new("c1"),
            conversation: ConversationId::group("g"),
            sender: UserId::new(sender),
            seq: Some(Seq(1)),
            server_time: Timestamp::from_millis(at),
            client_time: Timestamp::from_millis(at),
            content: Content::text("hello"),
        }
    }

    #[test]
    fn the_policy_enforces_sender_and_windows() {
        let policy = LifecyclePolicy::default();
        let m = message("alice", 1_000);
        let alice = UserId::new("alice");
        let bob = UserId::new("bob");
        let at = |ms| Timestamp::from_millis(ms);
        assert_eq!(
            policy.check(&m, &ChangeKind::Recalled, &alice, at(121_000)),
            Ok(())
        );
        assert_eq!(
            policy.check(&m, &ChangeKind::Recalled, &alice, at(121_001)),
            Err(ChangeRefusal::WindowPassed {
                window: Duration::from_secs(120)
            })
        );
        assert_eq!(
            policy.check(&m, &ChangeKind::Recalled, &bob, at(2_000)),
            Err(ChangeRefusal::NotAllowed)
        );
        let edit = ChangeKind::Edited(Content::text("fixed"));
        assert_eq!(policy.check(&m, &edit, &alice, at(i64::MAX)), Ok(()));
        assert_eq!(
            policy.check(&m, &edit, &bob, at(2_000)),
            Err(ChangeRefusal::NotAllowed)
        );
        let anyone = LifecyclePolicy {
            edit_permission: EditPermission::AnyMember,
            ..policy.clone()
        };
        assert_eq!(anyone.check(&m, &edit, &bob, at(2_000)), Ok(()));
        assert_eq!(
            policy.check(&m, &ChangeKind::DeletedForMe, &bob, at(i64::MAX)),
            Ok(())
        );
    }

    #[test]
    fn a_recalled_message_stays_recalled() {
        let policy = LifecyclePolicy::default();
        let alice = UserId::new("alice");
        let m = message("alice", 1_000);
        let recall = MessageChange {
            conversation: m.conversation.clone(),
            target: m.server_id.clone(),
            kind: ChangeKind::Recalled,
            by: alice.clone(),
            at: Timestamp::from_millis(2_000),
            revision: 1,
        };
        let recalled = recall.apply(&m).expect("still there");
        assert!(matches!(recalled.content, Content::Recalled { .. }));
        let edit = MessageChange {
            kind: ChangeKind::Edited(Content::text("back")),
            revision: 2,
            ..recall.clone()
        };
        assert_eq!(edit.apply(&recalled), Some(recalled.clone()));
        assert_eq!(
            policy.check(
                &recalled,
                &ChangeKind::Edited(Content::text("x")),
                &alice,
                Timestamp::from_millis(3_000)
            ),
            Err(ChangeRefusal::Recalled)
        );
        let gone = MessageChange {
            kind: ChangeKind::DeletedForMe,
            ..recall
        };
        assert_eq!(gone.apply(&m), None);
    }
}
