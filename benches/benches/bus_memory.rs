//! Memory per idle bus subscription, measured: a counting global allocator records the
//! bytes live before and after 10,000 subscriptions are made (and nothing published), for
//! three shapes of subscription. The figures are printed and written under
//! `<target>/criterion/figures/` for `cargo xtask bench`'s summary.

// A benchmark binary: a panic is how it reports a broken invariant.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use im_arch::{Bus, ClientEvent, DeliveryPolicy, EventKind, Filter};
use im_service::ConversationId;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Live bytes added since the region began.
fn live(region: &Region<'_, std::alloc::System>) -> isize {
    let s = region.change();
    s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated
}

const N: usize = 10_000;

fn measure(name: &str, filter: impl Fn(usize) -> Filter, policy: DeliveryPolicy) -> (String, f64) {
    let bus: Bus<ClientEvent> = Bus::new();
    // Warm the index's tables so the figure is per subscription, not the first growth.
    drop(bus.subscribe(filter(0), policy));
    // The filters are the caller's; the Vec holding the streams is the benchmark's.
    let filters: Vec<Filter> = (0..N).map(&filter).collect();
    let mut streams = Vec::with_capacity(N);
    let region = Region::new(GLOBAL);
    for f in filters {
        streams.push(bus.subscribe(f, policy));
    }
    let per = live(&region) as f64 / N as f64;
    drop(streams);
    (name.to_string(), per)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument would be ignored: this binary is fast.
    let figures = [
        measure(
            "bus idle subscription, all events, Reliable(1024) (bytes)",
            |_| Filter::all(),
            DeliveryPolicy::Reliable { capacity: 1024 },
        ),
        measure(
            "bus idle subscription, one conversation, messages, DropOldest(64) (bytes)",
            |i| {
                Filter::of([EventKind::Message])
                    .in_conversations([ConversationId::group(format!("g{i:05}"))])
            },
            DeliveryPolicy::DropOldest { capacity: 64 },
        ),
        measure(
            "bus idle subscription, ten conversations, all kinds, Reliable(256) (bytes)",
            |i| {
                Filter::all().in_conversations(
                    (0..10).map(|k| ConversationId::group(format!("g{:05}", i * 10 + k))),
                )
            },
            DeliveryPolicy::Reliable { capacity: 256 },
        ),
    ];
    let figures: Vec<(String, f64)> = figures.into_iter().collect();
    im_benches::write_figures("bus_memory", &figures).unwrap();
}
