//! The offline hand-out shared by the adapters whose server gives a whole offline pass at
//! once (XMPP at presence, Matrix from its sync position): the pass's messages handed out in
//! batches with ack tokens, its changes and receipts kept for `go_online`, and the one moment
//! every batch is acknowledged, when the adapter commits the pass to the server.

use std::collections::HashSet;

use crate::model::Message;
use crate::vendor::{OfflineAck, OfflineBatch, VendorEvent};
use crate::{Result, ServiceError as E};

/// Which end of a pass the first batch comes from (each batch is newest first either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstChunk {
    /// The newest messages first, as the contract's `pull_offline` says.
    #[cfg_attr(not(feature = "matrix"), allow(dead_code))]
    Newest,
    /// The oldest first: a client that delivers each batch as it comes keeps the order.
    #[cfg_attr(not(feature = "xmpp"), allow(dead_code))]
    Oldest,
}

/// One offline pass, handed out in batches.
#[derive(Debug)]
pub(crate) struct OfflinePass {
    /// Messages not handed out yet, newest first.
    remaining: Vec<Message>,
    /// Tokens of the batches handed out and not acknowledged.
    acks: HashSet<String>,
    first: FirstChunk,
    /// Changes and receipts of the pass not applied to one of its messages: pushed as events
    /// at `go_online`, before the live ones.
    pub(crate) later: Vec<VendorEvent>,
    settled: bool,
}

impl OfflinePass {
    /// A pass of `messages` in the server's order (oldest first; see [`newest_first`]).
    pub(crate) fn new(messages: Vec<Message>, later: Vec<VendorEvent>, first: FirstChunk) -> Self {
        Self {
            remaining: newest_first(messages),
            acks: HashSet::new(),
            first,
            later,
            settled: false,
        }
    }

    /// The next batch: at most `max` (at least one) messages, newest first, with an ack
    /// token when it is not empty.
    pub(crate) fn batch(&mut self, max: u32) -> OfflineBatch {
        let take = (max.max(1) as usize).min(self.remaining.len());
        let range = match self.first {
            FirstChunk::Newest => 0..take,
            FirstChunk::Oldest => self.remaining.len() - take..self.remaining.len(),
        };
        let messages: Vec<Message> = self.remaining.drain(range).collect();
        let ack = (!messages.is_empty()).then(|| OfflineAck {
            token: format!("o{:016x}", rand::random::<u64>()),
        });
        if let Some(a) = &ack {
            self.acks.insert(a.token.clone());
        }
        let left = self.remaining.len() as u64;
        OfflineBatch {
            left,
            ack,
            messages,
        }
    }

    /// `true` once: when every message is handed out and every batch acknowledged, the
    /// moment the adapter commits the pass (moves its position, acknowledges the server).
    pub(crate) fn settle(&mut self) -> bool {
        let done = !self.settled && self.remaining.is_empty() && self.acks.is_empty();
        self.settled |= done;
        done
    }
}

/// Takes `ack`'s batch back into `pass` (`None`: none was handed out); `Ok(true)` when that
/// settles the pass ([`OfflinePass::settle`]). A token not handed out is `InvalidRequest`.
pub(crate) fn ack(pass: Option<&mut OfflinePass>, ack: &OfflineAck) -> Result<bool> {
    match pass.filter(|p| p.acks.contains(&ack.token)) {
        Some(p) => {
            p.acks.remove(&ack.token);
            Ok(p.settle())
        }
        None => Err(E::InvalidRequest(format!(
            "unknown offline ack {:?}",
            ack.token
        ))),
    }
}

/// Messages in the server's order (oldest first, as offline stores and archives hand them
/// out) as the contract's newest-first list: reversed, then sorted by time with a *stable*
/// sort, so messages of the same time (a foreign burst within one of the server's whole
/// seconds, or of rooms merged) stay in exactly reverse server order. Never by id: ids are
/// random, and an id tie-break scrambles such a burst (issue 16).
pub(crate) fn newest_first(mut in_server_order: Vec<Message>) -> Vec<Message> {
    in_server_order.reverse();
    in_server_order.sort_by_key(|m| std::cmp::Reverse(m.server_time));
    in_server_order
}
