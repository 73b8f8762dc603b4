//! Waiting on a client's event [`Subscription`] in tests and cases: one overall deadline for
//! the whole wait, and a panic that names what was awaited and lists what was seen.
//!
//! Why an overall deadline and not one per event: heartbeats and state changes keep events
//! flowing, so a per-event timeout would never fire and a regression would spin instead of
//! failing. Under paused tokio time (`start_paused`) the deadline is virtual and costs no
//! wall-clock time.

use std::sync::Arc;
use std::time::Duration;

use im_arch::{ClientEvent, Subscription};

/// Events from `sub` until `stop` matches one (included), in delivery order.
///
/// Panics (failing the test or case) if that takes longer than `within` in all, listing
/// every event seen; panics too if the client goes away first.
pub async fn until(
    sub: &mut Subscription,
    within: Duration,
    stop: impl FnMut(&ClientEvent) -> bool,
) -> Vec<ClientEvent> {
    collect(sub, within, "a matching event", stop).await
}

/// The first event from `sub` that `want` matches, skipping the others; like [`until`], but
/// the panic names `what` was awaited ("never saw the kick within 60s …").
pub async fn wait_for(
    sub: &mut Subscription,
    within: Duration,
    what: &str,
    want: impl FnMut(&ClientEvent) -> bool,
) -> ClientEvent {
    let mut seen = collect(sub, within, what, want).await;
    match seen.pop() {
        Some(ev) => ev,
        // `collect` returns only once an event matched, and pushes it last.
        None => unreachable!("wait::collect returned no events"),
    }
}

async fn collect(
    sub: &mut Subscription,
    within: Duration,
    what: &str,
    mut stop: impl FnMut(&ClientEvent) -> bool,
) -> Vec<ClientEvent> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let ev = match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(ev)) => Arc::unwrap_or_clone(ev),
            Ok(None) => panic!("the client went away before {what} came; saw {seen:#?}"),
            Err(_) => panic!(
                "never saw {what} within {within:?} in all (overall deadline); saw {seen:#?}"
            ),
        };
        let done = stop(&ev);
        seen.push(ev);
        if done {
            return seen;
        }
    }
}
