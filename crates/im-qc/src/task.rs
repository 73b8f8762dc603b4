//! The monitor's task, the background observer: takes the client's events off its bus in
//! batches into the state, and every `eval_interval` runs one evaluation and publishes
//! what it produced on QC's bus.
//!
//! Owned by the `QcMonitor` that spawned it (aborted when that is dropped). The state's
//! lock is never held across an `.await`: each pass takes it, updates, and lets it go.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use im_arch::{Bus, BusStream, ClientEvent, DroppedCounter};
use tokio::time::Instant;

use crate::event::QcEvent;
use crate::state::SharedState;

/// Runs until aborted: observes `events` into `state` (counting them in `seen`) and
/// evaluates every `every`, publishing on `out`; `dropped` is the client bus's count of
/// events its subscribers lost.
pub(crate) async fn run(
    state: SharedState,
    seen: Arc<AtomicU64>,
    mut events: BusStream<ClientEvent>,
    dropped: DroppedCounter,
    out: Bus<QcEvent>,
    every: Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    loop {
        tokio::select! {
            ev = events.recv(), if open => match ev {
                Some(ev) => {
                    // Let the publisher run on first: a busy bus then hands over its events
                    // in batches, and the fixed cost of a pass (clocks, locks, the select)
                    // is paid once per batch, not once per event.
                    tokio::task::yield_now().await;
                    // Take the whole backlog with one lock of the queue and one of the state.
                    let backlog = events.drain_now();
                    let now = Instant::now();
                    let mut st = state.lock();
                    let wall = st.wall_now();
                    st.observe_batch(
                        std::iter::once(&*ev).chain(backlog.iter().map(|e| &**e)),
                        now,
                        wall,
                    );
                    drop(st);
                    seen.fetch_add(1 + backlog.len() as u64, Ordering::Relaxed);
                }
                // The client is gone; keep evaluating what was recorded.
                None => open = false,
            },
            _ = ticker.tick() => {
                let published = state.lock().tick(Instant::now(), dropped.get());
                for e in published {
                    out.publish(e).await;
                }
            }
        }
    }
}
