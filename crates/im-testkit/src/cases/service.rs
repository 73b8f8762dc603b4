//! Service-layer cases: the vendor contract suite, wired once. One table row per scenario of
//! [`crate::contract`] gives its case-library entry (`SVC-…`); the same table generates the
//! per-adapter tests ([`vendor_contract_tests!`](crate::vendor_contract_tests)), so every
//! adapter, XMPP included, runs the same checks as the library.

use super::{Case, Target};
use crate::harness::synapse_or_skip;

/// The vendor contract suite: one row per scenario of [`crate::contract`], wired once.
///
/// In a test crate, `vendor_contract_tests!(Target::…)` generates one
/// `#[tokio::test]` per scenario, named after it, that runs the scenario on that target's
/// harness (with [`ContractConfig::default`](crate::harness::ContractConfig)) through
/// [`run_contract_case`](crate::cases::run_contract_case):
///
/// ```text
/// im_testkit::vendor_contract_tests!(im_testkit::cases::Target::Memory);
/// ```
///
/// The case library builds its `SVC-…` cases from the same rows (`@cases`, crate-internal).
/// A row is `"ID" scenario { title, needs: [Capability…], harness: [HarnessNeed…],
/// guards: [FailureClass?], expected, steps: [...] }`.
#[macro_export]
macro_rules! vendor_contract_tests {
    (@rows [$($mode:tt)*]) => {
        $crate::vendor_contract_tests! { @emit [$($mode)*]
            "SVC-001" offline_queue_delivered_after_login {
                title: "Offline messages are delivered after login (ACK-online)",
                needs: [OfflineQueue],
                harness: [],
                guards: [],
                expected: "every message sent while away arrives once, after login, before any push; acknowledged batches do not come back",
                steps: [
                    "alice sends 3 messages while bob is offline",
                    "bob logs in and pulls offline",
                    "bob acknowledges and pulls again",
                ],
            }
            "SVC-002" offline_batches_page_newest_first {
                title: "Offline batches page newest first with a remaining count",
                needs: [OfflineQueue],
                harness: [],
                guards: [],
                expected: "batches come newest first, each with how many are left",
                steps: [
                    "queue more messages than one batch",
                    "pull batches until none are left",
                ],
            }
            "SVC-003" pushes_start_only_after_go_online {
                title: "Pushes start only after go_online",
                needs: [OfflineQueue],
                harness: [],
                guards: [],
                expected: "no live push reaches a client that has not declared itself online",
                steps: [
                    "bob logs in without going online",
                    "alice sends",
                    "bob goes online",
                ],
            }
            "SVC-004" retention_cuts_old_history {
                title: "Retention cuts history older than the vendor keeps",
                needs: [HistoryByTime],
                harness: [VendorClock],
                guards: [],
                expected: "messages older than the retention are gone from history pulls",
                steps: [
                    "send messages",
                    "advance vendor time past retention",
                    "pull history",
                ],
            }
            "SVC-005" time_range_pull_newest_first_paged {
                title: "History by time range: newest first, paged",
                needs: [HistoryByTime],
                harness: [VendorClock],
                guards: [],
                expected: "pages come newest first, cursors continue without loss or repeat",
                steps: [
                    "send messages over time",
                    "pull a time range in small pages",
                ],
            }
            "SVC-006" seq_range_pull_newest_first_paged {
                title: "History by sequence range: newest first, paged",
                needs: [HistoryBySeq],
                harness: [],
                guards: [SequenceGap],
                expected: "a sequence range returns exactly the messages between, newest first",
                steps: [
                    "send messages",
                    "pull a sequence range in small pages",
                ],
            }
            "SVC-007" all_conversations_pull_newest_first {
                title: "History across all conversations, newest first",
                needs: [HistoryByTime],
                harness: [],
                guards: [],
                expected: "messages of every conversation of the user, newest first",
                steps: [
                    "send in two conversations",
                    "pull all conversations",
                ],
            }
            "SVC-008" idempotent_send {
                title: "Resending a client message id stores one message",
                needs: [IdempotentSend],
                harness: [],
                guards: [DuplicateAfterLostAck],
                expected: "the second send returns the same server id and the conversation has one message",
                steps: [
                    "send a message",
                    "send it again with the same client id",
                ],
            }
            "SVC-009" kick_on_second_login {
                title: "A second login kicks the first connection",
                needs: [KickOnSecondLogin],
                harness: [],
                guards: [],
                expected: "the first connection gets Kicked(LoggedInElsewhere) and its calls fail",
                steps: [
                    "alice logs in on device 1",
                    "alice logs in on device 2",
                ],
            }
            "SVC-010" token_expiry_events {
                title: "Token expiry is warned before and reported at expiry",
                needs: [TokenExpiry],
                // Moves the vendor's clock by minutes (`h.advance`).
                harness: [VendorClock],
                guards: [ReconnectStorm],
                expected: "TokenWillExpire comes first, then TokenExpired, and calls fail with TokenExpired",
                steps: [
                    "log in with a short-lived token",
                    "advance vendor time",
                ],
            }
            "SVC-011" oversized_message_rejected {
                title: "Oversized messages are refused with a typed error",
                needs: [],
                harness: [],
                guards: [],
                expected: "MessageTooLarge with the size and the limit; nothing is stored",
                steps: [
                    "send content over the vendor's limit",
                    "pull history",
                ],
            }
            "SVC-012" bad_credentials_and_no_session {
                title: "Bad credentials and calls without a session get typed errors",
                needs: [],
                harness: [],
                guards: [],
                expected: "AuthFailed / UnknownUser / NotLoggedIn, never a panic or a hang",
                steps: [
                    "log in with a wrong token",
                    "log in as an unknown user",
                    "call without logging in",
                ],
            }
            "SVC-013" group_conversation {
                title: "Group conversations deliver to every member",
                needs: [GroupConversations],
                harness: [],
                guards: [],
                expected: "every member gets the message once; non-members are refused",
                steps: [
                    "create a group",
                    "send into it",
                    "a non-member sends into it",
                ],
            }
            "SVC-014" heartbeat_rtt {
                title: "Heartbeat returns a round-trip time",
                needs: [Heartbeat],
                harness: [],
                guards: [],
                expected: "ping answers with a plausible RTT",
                steps: [
                    "log in",
                    "ping",
                ],
            }
            "SVC-015" invalid_requests_and_undeclared_features {
                title: "Invalid requests and undeclared features are refused",
                needs: [],
                harness: [],
                guards: [],
                expected: "InvalidRequest / Unsupported errors; the session stays usable",
                steps: [
                    "send malformed requests",
                    "use a feature the vendor does not declare",
                    "send a valid message",
                ],
            }
        }
    };
    (@emit [cases] $($id:literal $scenario:ident {
        title: $title:literal,
        needs: [$($need:ident),* $(,)?],
        harness: [$($harness:ident),* $(,)?],
        guards: [$($class:ident)?],
        expected: $expected:literal,
        steps: [$($step:literal),* $(,)?] $(,)?
    })*) => {
        ::std::vec![$(
            $crate::cases::Case {
                id: $id,
                title: $title,
                category: $crate::cases::Category::Essential,
                layer: $crate::cases::Layer::Service,
                needs: &[$(::im_service::Capability::$need),*],
                harness: &[$($crate::cases::HarnessNeed::$harness),*],
                steps: &[$($step),*],
                expected: $expected,
                guards: $crate::vendor_contract_tests!(@guard $($class)?),
                run: |t| {
                    ::std::boxed::Box::pin(async move {
                        $crate::on_target!(t, $crate::contract::$scenario)
                    })
                },
            }
        ),*]
    };
    (@emit [tests $target:expr] $($id:literal $scenario:ident { $($row:tt)* })*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                $crate::cases::run_contract_case($target, $id).await;
            }
        )*
    };
    (@guard) => { ::std::option::Option::None };
    (@guard $class:ident) => {
        ::std::option::Option::Some($crate::cases::FailureClass::$class)
    };
    (@cases) => { $crate::vendor_contract_tests! { @rows [cases] } };
    ($target:expr) => { $crate::vendor_contract_tests! { @rows [tests $target] } };
}

pub(super) fn cases() -> Vec<Case> {
    crate::vendor_contract_tests!(@cases)
}

/// Runs contract case `id` (`SVC-…`) on `target` as a test; what
/// [`vendor_contract_tests!`](crate::vendor_contract_tests) generates calls this. Panics when
/// a check fails. Returns early, printing why on stderr, when the target cannot run the case:
/// it is not applicable there (the case library reports it so too), or the target is XMPP and
/// its server does not answer ([`XmppServer::or_skip`](crate::harness::XmppServer::or_skip),
/// which panics instead under the server's `IM_REQUIRE_…`); likewise for Matrix and
/// Synapse ([`synapse_or_skip`], `IM_REQUIRE_SYNAPSE`).
pub async fn run_contract_case(target: Target, id: &str) {
    if let Some(server) = target.xmpp_server()
        && !server.or_skip()
    {
        return;
    }
    if target == Target::Matrix && !synapse_or_skip() {
        return;
    }
    let Some(case) = cases().into_iter().find(|c| c.id == id) else {
        panic!("no contract case {id}");
    };
    let missing = case.missing(target);
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED: {id} is not applicable on {}: needs {}",
            target.name(),
            missing.join(", ")
        );
        return;
    }
    (case.run)(target).await;
}
