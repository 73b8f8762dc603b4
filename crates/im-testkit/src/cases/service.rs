//! Service-layer cases: the vendor contract scenarios (`crate::contract`), one case each.

use im_service::Capability as C;

use super::{Case, Category, HarnessNeed, Layer};
use crate::contract;
use crate::on_target;

/// Builds a service case from a contract scenario.
macro_rules! contract_case {
    ($id:literal, $scenario:ident, $title:literal, $needs:expr, $guards:expr, $expected:literal, [$($step:literal),* $(,)?]) => {
        contract_case!($id, $scenario, $title, $needs, $guards, $expected, [$($step),*], harness: &[])
    };
    ($id:literal, $scenario:ident, $title:literal, $needs:expr, $guards:expr, $expected:literal, [$($step:literal),* $(,)?], harness: $harness:expr) => {
        Case {
            id: $id,
            title: $title,
            category: Category::Essential,
            layer: Layer::Service,
            needs: $needs,
            harness: $harness,
            steps: &[$($step),*],
            expected: $expected,
            guards: $guards,
            run: |t| Box::pin(async move { on_target!(t, contract::$scenario) }),
        }
    };
}

pub(super) fn cases() -> Vec<Case> {
    vec![
        contract_case!(
            "SVC-001",
            offline_queue_delivered_after_login,
            "Offline messages are delivered after login (ACK-online)",
            &[C::OfflineQueue],
            None,
            "every message sent while away arrives once, after login, before any push; acknowledged batches do not come back",
            [
                "alice sends 3 messages while bob is offline",
                "bob logs in and pulls offline",
                "bob acknowledges and pulls again"
            ]
        ),
        contract_case!(
            "SVC-002",
            offline_batches_page_newest_first,
            "Offline batches page newest first with a remaining count",
            &[C::OfflineQueue],
            None,
            "batches come newest first, each with how many are left",
            [
                "queue more messages than one batch",
                "pull batches until none are left"
            ]
        ),
        contract_case!(
            "SVC-003",
            pushes_start_only_after_go_online,
            "Pushes start only after go_online",
            &[C::OfflineQueue],
            None,
            "no live push reaches a client that has not declared itself online",
            [
                "bob logs in without going online",
                "alice sends",
                "bob goes online"
            ]
        ),
        contract_case!(
            "SVC-004",
            retention_cuts_old_history,
            "Retention cuts history older than the vendor keeps",
            &[C::HistoryByTime],
            None,
            "messages older than the retention are gone from history pulls",
            [
                "send messages",
                "advance vendor time past retention",
                "pull history"
            ],
            harness: &[HarnessNeed::VendorClock]
        ),
        contract_case!(
            "SVC-005",
            time_range_pull_newest_first_paged,
            "History by time range: newest first, paged",
            &[C::HistoryByTime],
            None,
            "pages come newest first, cursors continue without loss or repeat",
            [
                "send messages over time",
                "pull a time range in small pages"
            ],
            harness: &[HarnessNeed::VendorClock]
        ),
        contract_case!(
            "SVC-006",
            seq_range_pull_newest_first_paged,
            "History by sequence range: newest first, paged",
            &[C::HistoryBySeq],
            Some(2),
            "a sequence range returns exactly the messages between, newest first",
            ["send messages", "pull a sequence range in small pages"]
        ),
        contract_case!(
            "SVC-007",
            all_conversations_pull_newest_first,
            "History across all conversations, newest first",
            &[C::HistoryByTime],
            None,
            "messages of every conversation of the user, newest first",
            ["send in two conversations", "pull all conversations"]
        ),
        contract_case!(
            "SVC-008",
            idempotent_send,
            "Resending a client message id stores one message",
            &[C::IdempotentSend],
            Some(1),
            "the second send returns the same server id and the conversation has one message",
            ["send a message", "send it again with the same client id"]
        ),
        contract_case!(
            "SVC-009",
            kick_on_second_login,
            "A second login kicks the first connection",
            &[C::KickOnSecondLogin],
            None,
            "the first connection gets Kicked(LoggedInElsewhere) and its calls fail",
            ["alice logs in on device 1", "alice logs in on device 2"]
        ),
        contract_case!(
            "SVC-010",
            token_expiry_events,
            "Token expiry is warned before and reported at expiry",
            &[C::TokenExpiry],
            Some(7),
            "TokenWillExpire comes first, then TokenExpired, and calls fail with TokenExpired",
            ["log in with a short-lived token", "advance vendor time"]
        ),
        contract_case!(
            "SVC-011",
            oversized_message_rejected,
            "Oversized messages are refused with a typed error",
            &[],
            None,
            "MessageTooLarge with the size and the limit; nothing is stored",
            ["send content over the vendor's limit", "pull history"]
        ),
        contract_case!(
            "SVC-012",
            bad_credentials_and_no_session,
            "Bad credentials and calls without a session get typed errors",
            &[],
            None,
            "AuthFailed / UnknownUser / NotLoggedIn, never a panic or a hang",
            [
                "log in with a wrong token",
                "log in as an unknown user",
                "call without logging in"
            ]
        ),
        contract_case!(
            "SVC-013",
            group_conversation,
            "Group conversations deliver to every member",
            &[C::GroupConversations],
            None,
            "every member gets the message once; non-members are refused",
            [
                "create a group",
                "send into it",
                "a non-member sends into it"
            ]
        ),
        contract_case!(
            "SVC-014",
            heartbeat_rtt,
            "Heartbeat returns a round-trip time",
            &[C::Heartbeat],
            None,
            "ping answers with a plausible RTT",
            ["log in", "ping"]
        ),
        contract_case!(
            "SVC-015",
            invalid_requests_and_undeclared_features,
            "Invalid requests and undeclared features are refused",
            &[],
            None,
            "InvalidRequest / Unsupported errors; the session stays usable",
            [
                "send malformed requests",
                "use a feature the vendor does not declare",
                "send a valid message"
            ]
        ),
    ]
}
