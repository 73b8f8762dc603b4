//! Shared machinery of the decoder fuzz targets (`tests/fuzz_*.rs` of im-service, im-arch
//! and im-archive, which include this file): a counting global allocator that measures what
//! decoding one input allocates, and a seeded proptest runner with a long mode.
//!
//! * Default (`cargo test`): each target runs a fixed number of cases from a seed derived from
//!   its name, so a run is reproducible and takes a few seconds in debug.
//! * Long mode: `IM_FUZZ_SECONDS=S` runs each target for `S` seconds, in rounds of fresh
//!   seeds (`cargo xtask fuzz --minutes N` sets it from N and the number of targets).
//! * `IM_FUZZ_SEED=N` replays one round with seed `N` (the seed a failure printed).
//!
//! Every target prints `fuzz target NAME: I inputs, F failures in T s`; a failure prints the
//! seed and proptest's minimal (shrunk) input, then fails the test.

#![allow(dead_code)]

use std::cell::Cell;
use std::fmt::Debug;
use std::sync::Once;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use tracking_allocator::{AllocationGroupId, AllocationRegistry, AllocationTracker, Allocator};

/// Every allocation of the test binary goes through the tracking allocator; the tracker
/// below counts only the allocations of a thread inside [`measure`].
#[global_allocator]
static GLOBAL: Allocator<std::alloc::System> = Allocator::system();

thread_local! {
    /// Whether this thread is inside [`measure`].
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    /// Bytes allocated minus bytes freed by this thread since [`measure`] began.
    static IN_USE: Cell<i64> = const { Cell::new(0) };
    /// Largest value `IN_USE` reached.
    static PEAK: Cell<i64> = const { Cell::new(0) };
    /// Largest single allocation (or reallocation target).
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The tracker: plain thread-local counters (const-initialised `Cell`s: touching them never
/// allocates, which an allocator hook must not do).
struct Counter;

impl AllocationTracker for Counter {
    fn allocated(&self, _addr: usize, size: usize, _wrapped: usize, _group: AllocationGroupId) {
        let _ = MEASURING.try_with(|on| {
            if on.get() {
                let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
                let _ = IN_USE.try_with(|u| {
                    let now = u.get().saturating_add(size as i64);
                    u.set(now);
                    let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
                });
            }
        });
    }

    fn deallocated(
        &self,
        _addr: usize,
        size: usize,
        _wrapped: usize,
        _source: AllocationGroupId,
        _current: AllocationGroupId,
    ) {
        let _ = MEASURING.try_with(|on| {
            if on.get() {
                let _ = IN_USE.try_with(|u| u.set(u.get().saturating_sub(size as i64)));
            }
        });
    }
}

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Only this module sets a tracker in these binaries, so this cannot fail; if it
        // did, every footprint would read 0 and `measure_works` would say so.
        let _ = AllocationRegistry::set_global_tracker(Counter);
        AllocationRegistry::enable_tracking();
    });
}

/// What one call allocated on its thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// The largest single allocation, in bytes.
    pub largest: usize,
    /// The most bytes held at once (allocated during the call and not yet freed).
    pub peak: usize,
}

/// Runs `f` and measures what it allocates on this thread.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Footprint) {
    install();
    IN_USE.with(|c| c.set(0));
    PEAK.with(|c| c.set(0));
    LARGEST.with(|c| c.set(0));
    MEASURING.with(|c| c.set(true));
    let out = f();
    MEASURING.with(|c| c.set(false));
    let footprint = Footprint {
        largest: LARGEST.with(Cell::get),
        peak: usize::try_from(PEAK.with(Cell::get)).unwrap_or(0),
    };
    (out, footprint)
}

/// Fails the case when `footprint` exceeds `bound` bytes (largest allocation or peak).
pub fn check_bounded(
    what: &str,
    footprint: Footprint,
    bound: usize,
    input_len: usize,
) -> Result<(), TestCaseError> {
    if footprint.largest > bound || footprint.peak > bound {
        return Err(TestCaseError::fail(format!(
            "unbounded allocation: {what} of a {input_len}-byte input allocated {} bytes at \
             once and held {} bytes at peak; the bound is {bound}",
            footprint.largest, footprint.peak
        )));
    }
    Ok(())
}

/// Seconds per target in long mode (`IM_FUZZ_SECONDS`), `None` in the default mode.
fn long_mode() -> Option<Duration> {
    std::env::var("IM_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
}

fn replay_seed() -> Option<u64> {
    std::env::var("IM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// splitmix64: spreads a seed over the 32 bytes of proptest's ChaCha RNG.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn rng(seed: u64) -> TestRng {
    let mut state = seed;
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&splitmix(&mut state).to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// The fixed seed of a target in the default mode (FNV-1a of its name).
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A seed for a long-mode round: the clock and the round number mixed.
fn fresh_seed(round: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut state = nanos ^ round.rotate_left(32);
    splitmix(&mut state)
}

/// Runs fuzz target `name`: `cases` inputs from `strategy` in the default mode, or rounds of
/// fresh seeds for `IM_FUZZ_SECONDS` in long mode. Panics (failing the test by name) with
/// the seed and the minimal failing input when `test` fails or panics on an input.
///
/// Runs on a thread of its own with a large stack: proptest's value trees of these nested
/// strategies, and shrinking them, recurse deeply in debug builds.
pub fn fuzz<S, T>(name: &str, cases: u32, strategy: S, test: T)
where
    S: Strategy + Send,
    S::Value: Debug,
    T: Fn(S::Value) -> Result<(), TestCaseError> + Send,
{
    std::thread::scope(|scope| {
        let runner = std::thread::Builder::new()
            .name(format!("fuzz-{name}"))
            .stack_size(64 << 20)
            .spawn_scoped(scope, move || fuzz_here(name, cases, strategy, test))
            .expect("spawn the fuzz thread");
        if let Err(panic) = runner.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

fn fuzz_here<S, T>(name: &str, cases: u32, strategy: S, test: T)
where
    S: Strategy,
    S::Value: Debug,
    T: Fn(S::Value) -> Result<(), TestCaseError>,
{
    let started = Instant::now();
    let tried = Cell::new(0u64);
    let counted = |v: S::Value| {
        tried.set(tried.get() + 1);
        test(v)
    };
    let run = |seed: u64, cases: u32| {
        let config = Config {
            cases,
            failure_persistence: None,
            // Shrinking a failure to its minimal input: bounded, so a failure never spins.
            max_shrink_iters: 4096,
            max_shrink_time: 60_000,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, rng(seed));
        runner.run(&strategy, counted)
    };
    let fail = |seed: u64, error: TestError<S::Value>| -> ! {
        let (why, minimal) = match error {
            TestError::Fail(why, minimal) => (why.to_string(), format!("{minimal:#?}")),
            TestError::Abort(why) => (why.to_string(), "(none: the run aborted)".to_string()),
        };
        println!(
            "fuzz target {name}: {} inputs, 1 failures in {:.1} s",
            tried.get(),
            started.elapsed().as_secs_f64()
        );
        panic!(
            "fuzz target {name} failed with seed {seed} (replay: IM_FUZZ_SEED={seed}): {why}\n\
             minimal input: {minimal}"
        );
    };
    match (replay_seed(), long_mode()) {
        (Some(seed), _) => {
            if let Err(e) = run(seed, cases) {
                fail(seed, e);
            }
        }
        (None, None) => {
            let seed = name_seed(name);
            if let Err(e) = run(seed, cases) {
                fail(seed, e);
            }
        }
        (None, Some(budget)) => {
            let mut round = 0u64;
            while started.elapsed() < budget {
                let seed = fresh_seed(round);
                round += 1;
                if let Err(e) = run(seed, 256) {
                    fail(seed, e);
                }
            }
        }
    }
    println!(
        "fuzz target {name}: {} inputs, 0 failures in {:.1} s",
        tried.get(),
        started.elapsed().as_secs_f64()
    );
}

/// The measuring allocator sees a large allocation, a free, and nothing of other threads.
pub fn assert_measure_works() {
    let (_, fp) = measure(|| {
        let v = vec![1u8; 1 << 20];
        drop(v);
        let w = vec![2u8; 1000];
        std::thread::spawn(|| vec![3u8; 8 << 20].len())
            .join()
            .map_or(0, |n| n + w.len())
    });
    assert!(
        fp.largest >= 1 << 20 && fp.largest < 8 << 20,
        "the counting allocator missed the 1 MiB allocation or counted another thread's: {fp:?}"
    );
    assert!(
        fp.peak >= 1 << 20 && fp.peak < (1 << 20) + (1 << 18),
        "the counting allocator's peak is off: {fp:?}"
    );
}

/// Strategies for valid values of the contract's model: the "mostly valid" seeds that the
/// mutations below then damage.
pub mod model {
    use std::time::Duration;

    use im_service::{
        Capabilities, Capability, ClientMsgId, Content, ConversationId, Message, OutgoingMessage,
        Seq, ServerMsgId, Timestamp, UserId,
    };
    use proptest::prelude::*;

    /// Short text with any characters, now and then a longer one.
    pub fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => ".{0,12}",
            1 => "[a-z]{200,600}",
        ]
    }

    /// An id-like string (what the vendors put in ids).
    pub fn id() -> impl Strategy<Value = String> {
        prop_oneof![4 => "[a-z0-9:.-]{1,12}", 1 => ".{1,8}"]
    }

    /// A user.
    pub fn user() -> impl Strategy<Value = UserId> {
        id().prop_map(UserId::new)
    }

    /// A conversation, direct or group.
    pub fn conversation() -> impl Strategy<Value = ConversationId> {
        prop_oneof![
            (user(), user()).prop_map(|(a, b)| ConversationId::direct(&a, &b)),
            id().prop_map(ConversationId::group),
        ]
    }

    /// A timestamp: mostly realistic, sometimes an extreme.
    pub fn time() -> impl Strategy<Value = Timestamp> {
        prop_oneof![
            6 => 1_600_000_000_000i64..1_900_000_000_000,
            1 => any::<i64>(),
            1 => prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1i64), Just(0i64)],
        ]
        .prop_map(Timestamp::from_millis)
    }

    /// Message content.
    pub fn content() -> impl Strategy<Value = Content> {
        prop_oneof![
            3 => text().prop_map(Content::Text),
            1 => ("[a-z-]{0,12}", proptest::collection::vec(any::<u8>(), 0..48))
                .prop_map(|(type_tag, payload)| Content::Custom { type_tag, payload }),
        ]
    }

    /// A stored message.
    pub fn message() -> impl Strategy<Value = Message> {
        (
            id(),
            id(),
            conversation(),
            user(),
            proptest::option::of(any::<u64>()),
            time(),
            time(),
            content(),
        )
            .prop_map(
                |(sid, cid, conversation, sender, seq, server_time, client_time, content)| {
                    Message {
                        server_id: ServerMsgId::new(sid),
                        client_id: ClientMsgId::new(cid),
                        conversation,
                        sender,
                        seq: seq.map(Seq),
                        server_time,
                        client_time,
                        content,
                    }
                },
            )
    }

    /// A message as sent.
    pub fn outgoing() -> impl Strategy<Value = OutgoingMessage> {
        message().prop_map(|m| OutgoingMessage {
            client_id: m.client_id,
            conversation: m.conversation,
            content: m.content,
            client_time: m.client_time,
        })
    }

    /// A duration, sometimes an extreme one.
    pub fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..100_000).prop_map(Duration::from_millis),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }

    /// Capabilities.
    pub fn capabilities() -> impl Strategy<Value = Capabilities> {
        (
            proptest::collection::vec(any::<bool>(), Capability::ALL.len()),
            proptest::option::of(duration()),
            any::<u16>(),
        )
            .prop_map(|(bits, retention, max)| {
                let mut caps = Capabilities::none()
                    .with_retention(retention)
                    .with_max_message_bytes(usize::from(max));
                for (cap, on) in Capability::ALL.iter().zip(bits) {
                    if on {
                        caps = caps.with(*cap);
                    }
                }
                caps
            })
    }
}

/// Structure-aware damage to a valid encoding.
pub mod mutate {
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// A length or count a hostile input claims: around the limits, and far past them.
    pub fn claim() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(u64::MAX),
            Just(u64::from(u32::MAX)),
            Just(4 << 30),
            Just(16 << 20),
            Just((16 << 20) - 2),
            Just(1 << 20),
            Just((1 << 20) + 1),
            0u64..1 << 24,
            any::<u64>(),
        ]
    }

    /// One change to a byte string.
    #[derive(Debug, Clone)]
    pub enum Mutation {
        /// XOR one byte with a non-zero mask.
        Flip(Index, u8),
        /// Cut everything from here on.
        Truncate(Index),
        /// Remove up to this many bytes from here.
        Delete(Index, usize),
        /// Insert bytes here.
        Insert(Index, Vec<u8>),
        /// Copy a piece from one place to another (splices a frame or field into another).
        Splice(Index, Index, usize),
        /// Overwrite the 4-byte big-endian length prefix of a frame (the index picks the
        /// frame among `starts`, or any offset when there are none).
        Prefix(Index, u32),
        /// Insert a bincode varint claiming this length or count.
        Varint(Index, u64),
        /// Insert bytes that are not UTF-8.
        BadUtf8(Index),
    }

    /// Any mutation; `claims` lengths for [`Mutation::Prefix`].
    pub fn mutation() -> impl Strategy<Value = Mutation> {
        let prefix = prop_oneof![
            Just(u32::MAX),
            Just(1u32 << 20),
            Just((1u32 << 20) + 1),
            Just(16u32 << 20),
            0u32..64,
            any::<u32>(),
        ];
        prop_oneof![
            4 => (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
            2 => any::<Index>().prop_map(Mutation::Truncate),
            2 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
            2 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16))
                .prop_map(|(i, b)| Mutation::Insert(i, b)),
            2 => (any::<Index>(), any::<Index>(), 1usize..64)
                .prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
            3 => (any::<Index>(), prefix).prop_map(|(i, v)| Mutation::Prefix(i, v)),
            3 => (any::<Index>(), claim()).prop_map(|(i, v)| Mutation::Varint(i, v)),
            1 => any::<Index>().prop_map(Mutation::BadUtf8),
        ]
    }

    /// The bincode (standard config) varint encoding of `v`.
    pub fn varint(v: u64) -> Vec<u8> {
        match v {
            0..=250 => vec![v as u8],
            251..=0xFFFF => [vec![251], (v as u16).to_le_bytes().to_vec()].concat(),
            0x1_0000..=0xFFFF_FFFF => [vec![252], (v as u32).to_le_bytes().to_vec()].concat(),
            _ => [vec![253], v.to_le_bytes().to_vec()].concat(),
        }
    }

    /// Applies `mutations` in order to `bytes`; `starts` are the offsets of the frames'
    /// length prefixes (empty for unframed input).
    pub fn apply(mut bytes: Vec<u8>, starts: &[usize], mutations: &[Mutation]) -> Vec<u8> {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
        for m in mutations {
            let len = bytes.len();
            match m {
                Mutation::Flip(i, mask) => {
                    if len > 0 {
                        let i = i.index(len);
                        bytes[i] ^= mask;
                    }
                }
                Mutation::Truncate(i) => bytes.truncate(at(i, len)),
                Mutation::Delete(i, n) => {
                    let from = at(i, len);
                    let to = (from + n).min(len);
                    bytes.drain(from..to);
                }
                Mutation::Insert(i, b) => {
                    let from = at(i, len);
                    bytes.splice(from..from, b.iter().copied());
                }
                Mutation::Splice(a, b, n) => {
                    if len > 0 {
                        let src = a.index(len);
                        let piece = bytes[src..(src + n).min(len)].to_vec();
                        let dst = at(b, len);
                        bytes.splice(dst..dst, piece);
                    }
                }
                Mutation::Prefix(i, v) => {
                    let start = if starts.is_empty() {
                        at(i, len)
                    } else {
                        starts[i.index(starts.len())]
                    };
                    for (k, b) in v.to_be_bytes().iter().enumerate() {
                        if let Some(slot) = bytes.get_mut(start + k) {
                            *slot = *b;
                        }
                    }
                }
                Mutation::Varint(i, v) => {
                    let from = at(i, len);
                    bytes.splice(from..from, varint(*v));
                }
                Mutation::BadUtf8(i) => {
                    let from = at(i, len);
                    bytes.splice(from..from, [0xC3, 0x28, 0xFF, 0xED, 0xA0, 0x80]);
                }
            }
        }
        bytes
    }

    /// Damage that knows JSON: deep nesting, huge numbers, long strings, escapes.
    #[derive(Debug, Clone)]
    pub enum JsonDamage {
        /// Any byte-level mutation.
        Bytes(Mutation),
        /// `[[[…]]]` this deep, inserted here.
        Nest(Index, usize),
        /// A JSON fragment that strains a decoder, inserted here.
        Insert(Index, &'static str),
    }

    /// Any JSON damage.
    pub fn json_damage() -> impl Strategy<Value = JsonDamage> {
        prop_oneof![
            4 => mutation().prop_map(JsonDamage::Bytes),
            1 => (any::<Index>(), 1usize..20_000)
                .prop_map(|(i, d)| JsonDamage::Nest(i, d)),
            2 => (
                any::<Index>(),
                proptest::sample::select(vec![
                    "1e999999999", "-0.0000000000000000000001e-9999", "18446744073709551616",
                    "\"\\ud800\"", "\"\\u0000\"", "null", "{}", "[]", ",", ":", "\"",
                    "\"message\":null,", "\"vendor\":1,", "9223372036854775808", "-9223372036854775809",
                    "\"\\uDBFF\\uDFFF\"", "tru", "{\"a\":", "\u{feff}",
                ])
            )
                .prop_map(|(i, s)| JsonDamage::Insert(i, s)),
        ]
    }

    /// Applies `damage` in order to a JSON body.
    pub fn apply_json(body: Vec<u8>, damage: &[JsonDamage]) -> Vec<u8> {
        let mut body = body;
        for d in damage {
            match d {
                JsonDamage::Bytes(m) => body = apply(body, &[], std::slice::from_ref(m)),
                JsonDamage::Nest(i, depth) => {
                    let at = i.index(body.len() + 1);
                    let mut deep = "[".repeat(*depth);
                    deep.push_str(&"]".repeat(*depth));
                    body.splice(at..at, deep.bytes());
                }
                JsonDamage::Insert(i, s) => {
                    let at = i.index(body.len() + 1);
                    body.splice(at..at, s.bytes());
                }
            }
        }
        body
    }
}
