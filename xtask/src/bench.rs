//! `cargo xtask bench`: runs the criterion benchmarks, then prints one summary table of this
//! run with each result's ratio to the baseline(s) of its group (functions named
//! `baseline_*`, measured in the same run), plus the figures benchmark binaries measured
//! themselves (memory, paired ratios, and the `throughput` load generator's msgs/s,
//! latencies and ratios to the bare adapter, which is not a criterion benchmark).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::Deserialize;

/// Criterion's `new/benchmark.json`.
#[derive(Deserialize)]
struct BenchmarkJson {
    group_id: String,
    function_id: Option<String>,
    value_str: Option<String>,
    throughput: Option<Throughput>,
}

#[derive(Deserialize)]
enum Throughput {
    Elements(u64),
    Bytes(u64),
}

/// Criterion's `new/estimates.json` (the part we read).
#[derive(Deserialize)]
struct Estimates {
    mean: Estimate,
}

#[derive(Deserialize)]
struct Estimate {
    point_estimate: f64,
}

/// A figure a benchmark binary measured itself (memory per subscription, a paired ratio),
/// written under `criterion/figures/` as a JSON list.
#[derive(Deserialize)]
pub struct Figure {
    /// What was measured, with its unit.
    pub name: String,
    /// The value.
    pub value: f64,
}

/// One measured benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Criterion group.
    pub group: String,
    /// Parameter (e.g. subscriber count), empty when none.
    pub param: String,
    /// Function name.
    pub function: String,
    /// Mean time per iteration, nanoseconds.
    pub mean_ns: f64,
    /// Elements (or bytes) per iteration, when declared.
    pub per_iter: Option<u64>,
}

impl Row {
    fn is_baseline(&self) -> bool {
        self.function.starts_with("baseline_")
    }

    /// Elements (or bytes) per second.
    fn rate(&self) -> Option<f64> {
        self.per_iter.map(|n| n as f64 / (self.mean_ns / 1e9))
    }
}

/// The criterion output directory of this workspace.
pub fn criterion_dir(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    target.join("criterion")
}

/// Every benchmark result written at or after `since`.
pub fn collect(dir: &Path, since: SystemTime) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    visit(dir, &mut |path| {
        if !path.ends_with("new/benchmark.json") {
            return Ok(());
        }
        let modified = path.metadata()?.modified()?;
        if modified < since {
            return Ok(());
        }
        let bench: BenchmarkJson = serde_json::from_slice(&std::fs::read(path)?)
            .with_context(|| format!("reading {}", path.display()))?;
        let estimates_path = path.with_file_name("estimates.json");
        let estimates: Estimates = serde_json::from_slice(&std::fs::read(&estimates_path)?)
            .with_context(|| format!("reading {}", estimates_path.display()))?;
        rows.push(Row {
            group: bench.group_id,
            param: bench.value_str.unwrap_or_default(),
            function: bench.function_id.unwrap_or_default(),
            mean_ns: estimates.mean.point_estimate,
            per_iter: bench.throughput.map(|t| match t {
                Throughput::Elements(n) | Throughput::Bytes(n) => n,
            }),
        });
        Ok(())
    })?;
    rows.sort_by(|a, b| {
        (&a.group, param_key(&a.param), a.is_baseline(), &a.function).cmp(&(
            &b.group,
            param_key(&b.param),
            b.is_baseline(),
            &b.function,
        ))
    });
    Ok(rows)
}

/// Numeric parameters sort numerically.
fn param_key(p: &str) -> (u64, String) {
    (p.parse().unwrap_or(u64::MAX), p.to_string())
}

fn visit(dir: &Path, f: &mut dyn FnMut(&Path) -> Result<()>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            visit(&path, f)?;
        } else {
            f(&path)?;
        }
    }
    Ok(())
}

/// Figures written at or after `since`.
pub fn figures(dir: &Path, since: SystemTime) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    visit(&dir.join("figures"), &mut |path| {
        if path.extension().is_some_and(|e| e == "json") && path.metadata()?.modified()? >= since {
            out.extend(serde_json::from_slice::<Vec<Figure>>(&std::fs::read(
                path,
            )?)?);
        }
        Ok(())
    })?;
    Ok(out)
}

fn human_time(ns: f64) -> String {
    match ns {
        n if n >= 1e9 => format!("{:.2} s", n / 1e9),
        n if n >= 1e6 => format!("{:.2} ms", n / 1e6),
        n if n >= 1e3 => format!("{:.2} µs", n / 1e3),
        n => format!("{n:.0} ns"),
    }
}

fn human_rate(r: f64) -> String {
    match r {
        r if r >= 1e6 => format!("{:.2} M/s", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k/s", r / 1e3),
        r => format!("{r:.1} /s"),
    }
}

/// The summary table: one line per non-baseline result with its ratio to each baseline of
/// the same group and parameter (> 1 means faster than the baseline), then the baselines.
pub fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        // A run of benchmarks that only write figures (`throughput`): no empty table.
        return "(no criterion results in this run)\n".into();
    }
    let mut by_case: BTreeMap<(&str, (u64, String)), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_case
            .entry((r.group.as_str(), param_key(&r.param)))
            .or_default()
            .push(r);
    }
    let mut out = String::from(
        "| group | param | benchmark | mean | throughput | vs baseline (×, >1 is faster) |\n\
         |---|---|---|---|---|---|\n",
    );
    for ((group, _), case) in by_case {
        let baselines: Vec<&&Row> = case.iter().filter(|r| r.is_baseline()).collect();
        for r in &case {
            let ratios = if r.is_baseline() {
                "(baseline)".to_string()
            } else {
                baselines
                    .iter()
                    .map(|b| format!("{}: {:.2}", b.function, b.mean_ns / r.mean_ns))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            out.push_str(&format!(
                "| {group} | {} | {} | {} | {} | {ratios} |\n",
                r.param,
                r.function,
                human_time(r.mean_ns),
                r.rate().map(human_rate).unwrap_or_default(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(group: &str, param: &str, function: &str, mean_ns: f64) -> Row {
        Row {
            group: group.into(),
            param: param.into(),
            function: function.into(),
            mean_ns,
            per_iter: Some(1000),
        }
    }

    #[test]
    fn ratios_are_against_the_baselines_of_the_same_case() {
        let rows = vec![
            row("g", "16", "ours", 50.0),
            row("g", "16", "baseline_a", 100.0),
            row("g", "4", "ours", 10.0),
            row("g", "4", "baseline_a", 5.0),
        ];
        let t = table(&rows);
        assert!(
            t.contains("| g | 16 | ours | 50 ns | 20000.00 M/s | baseline_a: 2.00 |"),
            "{t}"
        );
        assert!(
            t.contains("| g | 4 | ours | 10 ns | 100000.00 M/s | baseline_a: 0.50 |"),
            "{t}"
        );
        assert!(
            t.contains("| g | 4 | baseline_a | 5 ns | 200000.00 M/s | (baseline) |"),
            "{t}"
        );
    }

    #[test]
    fn a_run_without_criterion_results_prints_no_empty_table() {
        assert_eq!(table(&[]), "(no criterion results in this run)\n");
    }

    #[test]
    fn reads_criterion_output_of_this_run_only() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        let case = dir.join("grp/fn/8/new");
        std::fs::create_dir_all(&case).unwrap();
        std::fs::write(
            case.join("benchmark.json"),
            r#"{"group_id":"grp","function_id":"fn","value_str":"8","throughput":{"Elements":80}}"#,
        )
        .unwrap();
        std::fs::write(
            case.join("estimates.json"),
            r#"{"mean":{"point_estimate":2000.0}}"#,
        )
        .unwrap();
        let rows = collect(&dir, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(rows, [row_with(80)]);
        let later = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert!(collect(&dir, later).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();

        fn row_with(n: u64) -> Row {
            Row {
                group: "grp".into(),
                param: "8".into(),
                function: "fn".into(),
                mean_ns: 2000.0,
                per_iter: Some(n),
            }
        }
    }
}
