//! Home of the workspace's criterion benchmarks (see `benches/`); `cargo xtask bench` runs them.

use std::path::PathBuf;

pub mod load;

/// Where figures a benchmark binary measures itself (memory, paired ratios) go, for
/// `cargo xtask bench`'s summary: `<target>/criterion/figures/`.
pub fn figures_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion/figures")
}

/// Prints `figures` and writes them as `<file>.json`: a list of `{"name", "value"}` objects,
/// what `cargo xtask bench` reads back (its `Figure`). A value that is not a finite number
/// is written as `null`, which the reader refuses, as it should.
pub fn write_figures(file: &str, figures: &[(String, f64)]) -> std::io::Result<()> {
    for (name, value) in figures {
        println!("{name}: {value:.3}");
    }
    let dir = figures_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{file}.json")), figures_json(figures))
}

/// A closed-loop load of issue 22's load generators (`throughput`, `vendor_compare`): `pairs`
/// senders → receivers, each with `in_flight` messages out at any time.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Its name in figures and filters (`light`, `heavy`).
    pub name: &'static str,
    /// Sender → receiver pairs.
    pub pairs: usize,
    /// Messages in flight per pair.
    pub in_flight: usize,
}

/// Issue 22's light load: 10 pairs × 1 in flight.
pub const LIGHT: Load = Load {
    name: "light",
    pairs: 10,
    in_flight: 1,
};

/// Issue 22's heavy load: 100 pairs × 10 in flight.
pub const HEAVY: Load = Load {
    name: "heavy",
    pairs: 100,
    in_flight: 10,
};

/// A multi-threaded tokio runtime whose threads are named `name` (so `/proc` tells their
/// CPU time apart: the server's from the load generator's), with `worker_threads` workers
/// (tokio's default, one per core, when `None`).
///
/// # Panics
/// If the runtime cannot be built (a benchmark binary's way to fail).
pub fn runtime(name: &str, worker_threads: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    builder
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime {name}: {e}"))
}

/// The `p` quantile (0..=1, nearest rank) of `sorted` latencies, in milliseconds; NaN for
/// none.
pub fn percentile_ms(sorted: &[std::time::Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

/// Criterion's flags that take a value (`cargo xtask bench -- --save-baseline NAME` passes
/// them to every benchmark binary): a figures-only binary skips each with its value, so the
/// value is not read as a filter.
pub const CRITERION_VALUE_FLAGS: [&str; 14] = [
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--save-baseline",
    "--baseline",
    "--load-baseline",
    "--profile-time",
    "--color",
    "--output-format",
    "--plotting-backend",
];

/// The command line of a figures-only benchmark binary: its own flags that take a value
/// (`own`, e.g. `--secs`), criterion's (skipped), other flags (ignored: `cargo bench` passes
/// `--bench`), and the rest as criterion-style filters.
#[derive(Debug, Default, PartialEq)]
pub struct BenchArgs {
    /// Each of `own` given, with its value, in order.
    pub values: Vec<(String, String)>,
    /// Arguments that are not flags.
    pub filters: Vec<String>,
}

impl BenchArgs {
    /// Reads `args` (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>, own: &[&str]) -> Self {
        let mut parsed = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if own.contains(&arg.as_str()) {
                if let Some(value) = args.next() {
                    parsed.values.push((arg, value));
                }
            } else if CRITERION_VALUE_FLAGS.contains(&arg.as_str()) {
                args.next();
            } else if !arg.starts_with('-') {
                parsed.filters.push(arg);
            }
        }
        parsed
    }

    /// The last value of `flag`, parsed; `None` if absent. Panics on a value that does not
    /// parse (a benchmark binary's way to refuse its command line).
    pub fn value<T: std::str::FromStr>(&self, flag: &str) -> Option<T> {
        self.values
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{flag} does not take {v:?}"))
            })
    }

    /// Every value of a repeatable `flag`, in order.
    pub fn values_of<'a>(&'a self, flag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values
            .iter()
            .filter(move |(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a run named `name` is selected (no filters, or one that `name` contains).
    pub fn selects(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
    }
}

fn figures_json(figures: &[(String, f64)]) -> String {
    let list: Vec<serde_json::Value> = figures
        .iter()
        .map(|(name, value)| serde_json::json!({ "name": name, "value": value }))
        .collect();
    serde_json::Value::Array(list).to_string()
}

#[cfg(test)]
mod tests {
    use super::BenchArgs;

    #[test]
    fn bench_args_skip_criterion_values_and_keep_filters() {
        let args = ["--bench", "--save-baseline", "main", "--secs", "2", "light"];
        let parsed = BenchArgs::parse(args.map(String::from), &["--secs"]);
        assert_eq!(parsed.filters, ["light"]);
        assert_eq!(parsed.value::<f64>("--secs"), Some(2.0));
        assert!(parsed.selects("vendor_compare light NATS core"));
        assert!(!parsed.selects("vendor_compare heavy NATS core"));
    }

    #[test]
    fn figures_are_a_json_list_of_name_and_value() {
        let json = super::figures_json(&[
            ("ratio \"paired\"".to_string(), 1.5),
            ("bytes/msg".to_string(), 96.0),
        ]);
        assert_eq!(
            json,
            r#"[{"name":"ratio \"paired\"","value":1.5},{"name":"bytes/msg","value":96.0}]"#
        );
    }
}
