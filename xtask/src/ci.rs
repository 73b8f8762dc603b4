//! `cargo xtask ci`: the one list of gates CI runs (`.ci/run` only installs and starts the
//! servers, then calls this). Each step prints its name, then the time it took and the total
//! so far; the first failing step stops the run with a non-zero exit.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{build_crash_binaries, cargo, project_root, run_cargo, run_sim, testkit_bin};

/// Runs named steps in order, timing each.
#[derive(Debug)]
pub struct Steps {
    started: Instant,
    done: Vec<(String, Duration)>,
}

impl Default for Steps {
    fn default() -> Self {
        Self::new()
    }
}

impl Steps {
    /// A run starting now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Runs one step: prints `== name`, then `(name: N s; total M s)`; an error names the step.
    pub fn step(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        println!("== {name}");
        let at = Instant::now();
        let outcome = f();
        let took = at.elapsed();
        println!(
            "   ({name}: {} s; total {} s{}){}",
            took.as_secs(),
            self.started.elapsed().as_secs(),
            disk_report(&project_root().join("target"))
                .map(|d| format!("; {d}"))
                .unwrap_or_default(),
            if outcome.is_err() { " FAILED" } else { "" }
        );
        self.done.push((name.to_string(), took));
        outcome.with_context(|| format!("ci step `{name}` failed"))
    }

    /// The table of steps and their times.
    pub fn summary(&self) -> String {
        let mut out = String::from("| step | seconds |\n|---|---:|\n");
        for (name, took) in &self.done {
            out.push_str(&format!("| {name} | {:.1} |\n", took.as_secs_f64()));
        }
        out.push_str(&format!(
            "| total | {:.1} |\n",
            self.started.elapsed().as_secs_f64()
        ));
        out
    }
}

/// "target N GB, M GB free": the build directory's size and the space left on its disk,
/// printed after every step, because a clean-clone run once failed its last step on a full
/// disk with nothing in the log to say how close the earlier steps had come. `None` where
/// `du` or `df` is missing or the directory does not exist yet.
pub fn disk_report(target: &Path) -> Option<String> {
    let field = |program: &str, args: &[&str], line: usize, column: usize| -> Option<u64> {
        let out = Command::new(program).args(args).arg(target).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        text.lines()
            .nth(line)?
            .split_whitespace()
            .nth(column)?
            .parse()
            .ok()
    };
    let used_kib = field("du", &["-sk"], 0, 0)?;
    let free_kib = field("df", &["-Pk"], 1, 3)?;
    let gb = |kib: u64| kib as f64 / (1024.0 * 1024.0);
    Some(format!(
        "target {:.1} GB, {:.1} GB free",
        gb(used_kib),
        gb(free_kib)
    ))
}

/// The vendor targets of the case library CI runs, in order.
pub const CASE_TARGETS: &[&str] = &["memory", "reference", "xmpp", "xmpp-ejabberd", "matrix"];

/// The fewest cases an essential run may report (the check that the JUnit file is not a
/// truncated or empty run).
pub const MIN_CASES: usize = 40;

/// `cargo xtask ci`.
pub fn run() -> Result<()> {
    let root = project_root();
    let prosody = std::env::var("IM_PROSODY_ADDR").ok();
    let mut steps = Steps::new();
    let outcome = (|| -> Result<()> {
        steps.step("toolchain", || {
            run_cargo(&["--version"], &[])?;
            let rustc = crate::tidy::rustc_version()?;
            println!("{rustc}");
            if let Some(problem) = crate::tidy::rust_version_problem(&root)? {
                bail!("{problem}");
            }
            Ok(())
        })?;
        steps.step("format", || run_cargo(&["fmt", "--all", "--check"], &[]))?;
        steps.step("lint", || {
            run_cargo(
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
                &[],
            )
        })?;
        steps.step("docs (broken intra-doc links fail)", || {
            run_cargo(
                &["doc", "--workspace", "--no-deps", "-q"],
                &[("RUSTDOCFLAGS", "-D warnings")],
            )
        })?;
        steps.step(
            "im-service with each adapter feature alone and with none",
            || feature_builds(&root),
        )?;
        steps.step("layers", || {
            crate::layers::run()?;
            let independent = root.join("../shared/tools/check-layers");
            if independent.exists() {
                run_program(&independent, &[], &root)?;
            }
            Ok(())
        })?;
        steps.step("tests (the README's test command)", || tests(&root))?;
        steps.step(
            "deterministic simulation (2,000 random fault schedules, paused time)",
            || run_sim(&["--schedules", "2000"]),
        )?;
        steps.step(
            "case library on every vendor, and the vendor matrix",
            || case_library(&root),
        )?;
        steps.step(
            "examples (README.md's Examples, against the servers it starts)",
            || examples(&root, prosody.as_deref()),
        )?;
        Ok(())
    })();
    println!("\n{}", steps.summary());
    outcome
}

/// `cargo check -p im-service` with no adapter feature, then with each alone.
fn feature_builds(root: &Path) -> Result<()> {
    let manifest = std::fs::read_to_string(root.join("crates/im-service/Cargo.toml"))
        .context("reading crates/im-service/Cargo.toml")?;
    let features = features(&manifest);
    if features.is_empty() {
        bail!("crates/im-service/Cargo.toml lists no features");
    }
    run_cargo(
        &["check", "-q", "-p", "im-service", "--no-default-features"],
        &[],
    )?;
    for feature in &features {
        run_cargo(
            &[
                "check",
                "-q",
                "-p",
                "im-service",
                "--no-default-features",
                "--features",
                feature,
            ],
            &[],
        )?;
    }
    Ok(())
}

/// The features a manifest's `[features]` table declares, `default` excepted.
pub fn features(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[features]";
            continue;
        }
        if !inside || line.starts_with('#') {
            continue;
        }
        if let Some((name, _)) = line.split_once('=') {
            let name = name.trim();
            if !name.is_empty() && name != "default" {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// `cargo test --workspace`, its output also in `target/ci-tests.log`; then the crash
/// harness's summary lines, which must be there; then, with a PostgreSQL server
/// (`IM_POSTGRES_URL`), the archive's HTTP and end-to-end suites on it.
fn tests(root: &Path) -> Result<()> {
    let log_path = root.join("target/ci-tests.log");
    std::fs::create_dir_all(root.join("target"))?;
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let args = ["test", "--workspace"];
    eprintln!("$ cargo {}", args.join(" "));
    // One pipe for both streams, so the log keeps the order the terminal shows.
    let (reader, writer) = std::io::pipe()?;
    let mut command = Command::new(cargo());
    command
        .args(args)
        .current_dir(root)
        .stdout(writer.try_clone()?)
        .stderr(writer);
    let mut child = command.spawn()?;
    // The command holds the pipe's write ends: drop it so the reader sees the end.
    drop(command);
    let mut text = String::new();
    for line in BufReader::new(reader).lines() {
        let line = line?;
        println!("{line}");
        writeln!(log, "{line}")?;
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "cargo test --workspace failed ({status}); log: {}",
            log_path.display()
        );
    }
    println!("-- crash harness summary");
    let lines = crash_summary_lines(&text);
    if lines.is_empty() {
        bail!("no crash harness summary line in {}", log_path.display());
    }
    for line in lines {
        println!("{line}");
    }
    // The archive's HTTP and end-to-end suites once more, on PostgreSQL (the workspace run
    // had them on the in-memory store and sled; the conformance, replica and restart suites
    // ran on PostgreSQL already).
    if std::env::var("IM_POSTGRES_URL").is_ok_and(|u| !u.is_empty()) {
        run_cargo(
            &[
                "test",
                "-q",
                "-p",
                "im-archive",
                "--test",
                "http",
                "--test",
                "end_to_end",
            ],
            &[("IM_ARCHIVE_TEST_STORE", "postgres")],
        )?;
    } else if std::env::var("IM_REQUIRE_POSTGRES").is_ok() {
        bail!("IM_REQUIRE_POSTGRES is set but IM_POSTGRES_URL names no server");
    }
    Ok(())
}

/// Lines `crash harness (reference|xmpp): N kill points, M lost…` of a test log.
pub fn crash_summary_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| {
            let rest = ["reference", "xmpp"]
                .iter()
                .find_map(|v| line.strip_prefix(&format!("crash harness ({v}): ")));
            let Some(rest) = rest else {
                return false;
            };
            let mut words = rest.split_whitespace();
            let number = |w: Option<&str>| w.is_some_and(|w| w.parse::<u64>().is_ok());
            number(words.next())
                && words.next() == Some("kill")
                && words.next() == Some("points,")
                && number(words.next())
                && words.next().is_some_and(|w| w.starts_with("lost"))
        })
        .collect()
}

/// The runner's closing line: `N cases: P passed, F failed, A not applicable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuiteSummary {
    /// Cases run or skipped.
    pub total: usize,
    /// Passed.
    pub passed: usize,
    /// Failed or timed out.
    pub failed: usize,
    /// Not applicable (skipped).
    pub not_applicable: usize,
}

/// Finds the runner's summary line in its output (the last one, if several).
pub fn suite_summary(output: &str) -> Option<SuiteSummary> {
    output.lines().rev().find_map(|line| {
        let (total, rest) = line.trim().split_once(" cases: ")?;
        let mut counts = rest.split(", ").map(|part| {
            let (n, _) = part.split_once(' ')?;
            n.parse::<usize>().ok()
        });
        Some(SuiteSummary {
            total: total.parse().ok()?,
            passed: counts.next()??,
            failed: counts.next()??,
            not_applicable: counts.next()??,
        })
    })
}

/// Checks a JUnit report against the runner's summary by a scan of its elements: as many
/// `<testcase` as cases, `<failure`/`<error` as failures, `<skipped` as not-applicable
/// cases, the same counts in the first `<testsuite` element's attributes where it has them,
/// and at least `min_cases` cases.
pub fn check_junit(xml: &str, summary: &SuiteSummary, min_cases: usize) -> Result<(), String> {
    if !xml.trim_start().starts_with("<?xml") || !xml.trim_end().ends_with("</testsuites>") {
        return Err("not a complete JUnit document (<?xml … </testsuites>)".into());
    }
    let count = |tag: &str| {
        xml.match_indices(tag)
            .filter(|(i, _)| {
                xml[i + tag.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c == ' ' || c == '>' || c == '/')
            })
            .count()
    };
    let cases = count("<testcase");
    let failures = count("<failure") + count("<error");
    let skipped = count("<skipped");
    let mut problems = Vec::new();
    if cases != summary.total {
        problems.push(format!(
            "{cases} testcases, the runner ran {}",
            summary.total
        ));
    }
    if cases < min_cases {
        problems.push(format!("{cases} testcases, fewer than {min_cases}"));
    }
    if failures != summary.failed {
        problems.push(format!(
            "{failures} failures, the runner counted {}",
            summary.failed
        ));
    }
    if skipped != summary.not_applicable {
        problems.push(format!(
            "{skipped} skipped, the runner counted {} not applicable",
            summary.not_applicable
        ));
    }
    if let Some(start) = xml.find("<testsuite ") {
        let element = &xml[start..start + xml[start..].find('>').unwrap_or(0)];
        // Each count the element carries must agree; failures and errors together (a
        // writer may file a time-out as either).
        let number = |name: &str| -> Option<Result<usize, String>> {
            let raw = attribute_value(element, name)?;
            Some(
                raw.parse()
                    .map_err(|_| format!("testsuite {name}=\"{raw}\" does not parse")),
            )
        };
        let failures = match (number("failures"), number("errors")) {
            (None, None) => None,
            (f, e) => Some(
                f.unwrap_or(Ok(0))
                    .and_then(|f| e.unwrap_or(Ok(0)).map(|e| f + e)),
            ),
        };
        for (what, found, expected) in [
            ("tests", number("tests"), summary.total),
            ("failures+errors", failures, summary.failed),
            ("skipped", number("skipped"), summary.not_applicable),
        ] {
            match found {
                None => {}
                Some(Ok(n)) if n == expected => {}
                Some(Ok(n)) => problems.push(format!("testsuite {what}={n}, expected {expected}")),
                Some(Err(e)) => problems.push(e),
            }
        }
    } else {
        problems.push("no <testsuite> element".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// `name="value"` in one element's text.
fn attribute_value<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = element.find(&key)? + key.len();
    let len = element[start..].find('"')?;
    Some(&element[start..start + len])
}

/// The case library on every vendor target whose server is up (one run of `im-test-suite
/// --vendor all`; a target whose `IM_REQUIRE_*` is set and is not up fails it), each JUnit
/// report checked against its part of the run, then the vendor matrix it wrote compared
/// with the committed `docs/vendor-matrix.md` (when every target ran).
fn case_library(root: &Path) -> Result<()> {
    // The CRASH cases run `im-crash-client` and `im-vendor-sim` found beside the suite.
    build_crash_binaries()?;
    let matrix = root.join("target/test-suite/vendor-matrix.md");
    let matrix_arg = matrix.to_string_lossy().into_owned();
    let args = testkit_bin(
        "im-test-suite",
        &["--vendor", "all", "--matrix", matrix_arg.as_str()],
    );
    eprintln!("$ cargo {}", args.join(" "));
    let mut child = Command::new(cargo())
        .args(args)
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut output = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            output.push_str(&line);
            output.push('\n');
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("the case library failed ({status})");
    }
    let sections = target_sections(&output);
    let mut not_run = Vec::new();
    for target in CASE_TARGETS {
        let Some(section) = sections.iter().find(|(t, _)| t == target).map(|(_, s)| s) else {
            // The suite itself fails on a target whose IM_REQUIRE_* is set and that is not
            // up; here a target missing from the run is one nobody required.
            println!("case library on {target}: not run (its server is not up)");
            not_run.push(*target);
            continue;
        };
        let summary = suite_summary(section)
            .with_context(|| format!("no summary line in the case library's output on {target}"))?;
        let path = root.join(format!("target/test-suite/cases-{target}.xml"));
        let xml = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        check_junit(&xml, &summary, MIN_CASES)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        println!(
            "junit {target}: {} cases ({} passed, {} not applicable), agrees with the run",
            summary.total, summary.passed, summary.not_applicable
        );
    }
    if !not_run.is_empty() {
        println!(
            "docs/vendor-matrix.md not compared: {} not run",
            not_run.join(", ")
        );
        return Ok(());
    }
    let generated = std::fs::read_to_string(&matrix)
        .with_context(|| format!("reading {}", matrix.display()))?;
    let committed = std::fs::read_to_string(root.join("docs/vendor-matrix.md"))
        .context("reading docs/vendor-matrix.md")?;
    if let Some(line) = first_difference(&committed, &generated) {
        bail!(
            "docs/vendor-matrix.md differs from this run's {} (first difference: {line}); \
             run `cargo xtask test-suite --vendor all` with every server up and commit it",
            matrix.display()
        );
    }
    println!("docs/vendor-matrix.md agrees with this run");
    Ok(())
}

/// A run of several targets split at its `== cases on TARGET` lines: (target, its output).
pub fn target_sections(output: &str) -> Vec<(String, String)> {
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in output.lines() {
        if let Some(target) = line.strip_prefix("== cases on ") {
            sections.push((target.trim().to_string(), String::new()));
        } else if let Some((_, text)) = sections.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    sections
}

/// The first line (1-based, with both versions) where `a` and `b` differ, if they do.
pub fn first_difference(a: &str, b: &str) -> Option<String> {
    if a == b {
        return None;
    }
    let (mut left, mut right) = (a.lines(), b.lines());
    let mut n = 0;
    loop {
        n += 1;
        match (left.next(), right.next()) {
            (Some(x), Some(y)) if x == y => continue,
            (x, y) => {
                return Some(format!(
                    "line {n}: committed {:?}, generated {:?}",
                    x.unwrap_or("<end>"),
                    y.unwrap_or("<end>")
                ));
            }
        }
    }
}

/// A server started for the examples, killed (and reaped) when dropped.
struct Server {
    name: &'static str,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("stopping {}: {e}", self.name);
        }
        let _ = self.child.wait();
    }
}

/// Starts `cargo run -q <args>` (cargo execs the binary, so the child is the server).
fn start_server(name: &'static str, root: &Path, args: &[&str]) -> Result<Server> {
    eprintln!("$ cargo {} &", args.join(" "));
    let child = Command::new(cargo())
        .args(args)
        .current_dir(root)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Server { name, child })
}

/// Waits (up to a minute) until something accepts on `127.0.0.1:port`.
fn wait_port(port: u16) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on {addr}")
}

/// README.md's examples against the servers it names: `im-vendor-sim` on 7700, the archive
/// on 8090 and (with `prosody`) the test Prosody with alice and bob registered.
fn examples(root: &Path, prosody: Option<&str>) -> Result<()> {
    run_cargo(&["build", "-q", "--workspace", "--examples"], &[])?;
    run_cargo(
        &[
            "build",
            "-q",
            "-p",
            "im-vendor-sim",
            "--bin",
            "im-vendor-sim",
            "-p",
            "im-archive",
            "--bin",
            "im-archive",
        ],
        &[],
    )?;
    let data = std::env::temp_dir().join(format!("im-examples-ci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let archive_dir = data.join("archive");
    let archive_dir = archive_dir.to_string_lossy();
    let outcome = (|| -> Result<()> {
        let _vendor = start_server(
            "im-vendor-sim",
            root,
            &[
                "run",
                "-q",
                "-p",
                "im-vendor-sim",
                "--",
                "--user",
                "alice:alice-secret",
                "--user",
                "bob:bob-secret",
            ],
        )?;
        let _archive = start_server(
            "im-archive",
            root,
            &[
                "run",
                "-q",
                "-p",
                "im-archive",
                "--",
                "--data-dir",
                &archive_dir,
                "--vendor",
                "reference=SECRET",
                "--token",
                "TOKEN=alice",
            ],
        )?;
        wait_port(7700)?;
        wait_port(8090)?;
        run_cargo(
            &["run", "-q", "-p", "im-arch", "--example", "quickstart"],
            &[],
        )?;
        match prosody {
            Some(_) => {
                let script = root.join("tests/prosody/prosody.sh");
                run_program(&script, &["register", "alice", "alice-secret"], root)?;
                run_program(&script, &["register", "bob", "bob-secret"], root)?;
                run_cargo(
                    &["run", "-q", "-p", "im-arch", "--example", "xmpp_quickstart"],
                    &[],
                )?;
            }
            None if std::env::var_os("IM_REQUIRE_PROSODY").is_some() => {
                bail!("IM_REQUIRE_PROSODY is set but IM_PROSODY_ADDR is not")
            }
            None => println!("example xmpp_quickstart: skipped (IM_PROSODY_ADDR unset)"),
        }
        match std::env::var("IM_SYNAPSE_URL") {
            Ok(_) => {
                let script = root.join("tests/synapse/synapse.sh");
                run_program(&script, &["register", "alice", "alice-secret"], root)?;
                run_program(&script, &["register", "bob", "bob-secret"], root)?;
                run_cargo(
                    &[
                        "run",
                        "-q",
                        "-p",
                        "im-service",
                        "--features",
                        "matrix",
                        "--example",
                        "matrix_hello",
                    ],
                    &[],
                )?;
            }
            Err(_) if std::env::var_os("IM_REQUIRE_SYNAPSE").is_some() => {
                bail!("IM_REQUIRE_SYNAPSE is set but IM_SYNAPSE_URL is not")
            }
            Err(_) => println!("example matrix_hello: skipped (IM_SYNAPSE_URL unset)"),
        }
        run_cargo(
            &["run", "-q", "-p", "im-qc", "--example", "qc_metrics"],
            &[],
        )?;
        run_cargo(
            &[
                "run",
                "-q",
                "-p",
                "im-archive",
                "--example",
                "archive_history",
            ],
            &[],
        )
    })();
    let _ = std::fs::remove_dir_all(&data);
    outcome
}

/// Runs a program (not cargo) in `dir`; fails on a non-zero exit.
fn run_program(program: &Path, args: &[&str], dir: &Path) -> Result<()> {
    eprintln!("$ {} {}", program.display(), args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .with_context(|| format!("running {}", program.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", program.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_several_targets_splits_at_its_headers() {
        let out = "build noise\n== cases on memory\nSVC-001 pass\n3 cases: 3 passed, 0 failed, 0 not applicable\n== cases on xmpp\n2 cases: 1 passed, 0 failed, 1 not applicable\n";
        let sections = target_sections(out);
        let names: Vec<&str> = sections.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, ["memory", "xmpp"]);
        assert_eq!(suite_summary(&sections[0].1).map(|s| s.total), Some(3));
        assert_eq!(
            suite_summary(&sections[1].1).map(|s| s.not_applicable),
            Some(1)
        );
    }

    #[test]
    fn the_first_difference_names_its_line() {
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        let d = first_difference("a\nb\n", "a\nc\n").unwrap_or_default();
        assert!(d.starts_with("line 2:"), "{d}");
        let d = first_difference("a\n", "a\nmore\n").unwrap_or_default();
        assert!(d.contains("<end>"), "{d}");
    }

    #[test]
    fn the_disk_report_names_the_build_directory_and_the_free_space() {
        let dir = project_root().join("xtask/src");
        let report = disk_report(&dir).unwrap_or_default();
        assert!(
            report.starts_with("target ") && report.ends_with(" GB free"),
            "{report}"
        );
        assert_eq!(disk_report(&project_root().join("no/such/dir")), None);
    }

    #[test]
    fn features_come_from_the_features_table_only() {
        let manifest = "[package]\nname = \"x\"\n\n[features]\ndefault = []\n# comment\nmemory = []\nmock = [\"dep:mockall\"]\n\n[dependencies]\nserde = \"1\"\n";
        assert_eq!(features(manifest), ["memory", "mock"]);
        assert!(features("[package]\nname = \"x\"\n").is_empty());
    }

    #[test]
    fn the_real_service_crate_has_adapter_features() {
        let manifest =
            std::fs::read_to_string(project_root().join("crates/im-service/Cargo.toml")).unwrap();
        let found = features(&manifest);
        for f in ["memory", "reference", "webhook", "xmpp"] {
            assert!(found.iter().any(|x| x == f), "{f} in {found:?}");
        }
    }

    #[test]
    fn crash_summaries_are_recognised() {
        let log = "running 2 tests\ncrash harness (reference): 200 kill points, 0 lost, 0 duplicated, 0 stuck (seed 7)\ncrash harness (reference): 200 kill points, seed 7 (replay: IM_CRASH_SEED=7)\ncrash harness (xmpp): 100 kill points, 0 lost\n";
        assert_eq!(
            crash_summary_lines(log),
            [
                "crash harness (reference): 200 kill points, 0 lost, 0 duplicated, 0 stuck (seed 7)",
                "crash harness (xmpp): 100 kill points, 0 lost"
            ]
        );
        assert!(crash_summary_lines("test result: ok").is_empty());
    }

    #[test]
    fn the_runner_summary_parses() {
        let out = "| id | outcome |\n\n52 cases: 48 passed, 0 failed, 4 not applicable\n";
        assert_eq!(
            suite_summary(out),
            Some(SuiteSummary {
                total: 52,
                passed: 48,
                failed: 0,
                not_applicable: 4
            })
        );
        assert_eq!(suite_summary("no summary here"), None);
    }

    fn junit(cases: usize, failures: usize, skipped: usize) -> String {
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"x\" tests=\"{cases}\" failures=\"{failures}\">\n  <testsuite name=\"memory\" tests=\"{cases}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\">\n"
        );
        for i in 0..cases {
            xml.push_str(&format!("    <testcase classname=\"c\" name=\"case {i}\""));
            if i < failures {
                xml.push_str(">\n      <failure message=\"m\">m</failure>\n    </testcase>\n");
            } else if i < failures + skipped {
                xml.push_str(">\n      <skipped message=\"n/a\"/>\n    </testcase>\n");
            } else {
                xml.push_str("/>\n");
            }
        }
        xml.push_str("  </testsuite>\n</testsuites>\n");
        xml
    }

    #[test]
    fn junit_counts_must_agree_with_the_run() {
        let summary = SuiteSummary {
            total: 45,
            passed: 41,
            failed: 0,
            not_applicable: 4,
        };
        assert_eq!(check_junit(&junit(45, 0, 4), &summary, 40), Ok(()));
        // Fewer cases than the run, a failure the run did not count, too few cases.
        assert!(check_junit(&junit(44, 0, 4), &summary, 40).is_err());
        let err = check_junit(&junit(45, 1, 3), &summary, 40).unwrap_err();
        assert!(err.contains("1 failures"), "{err}");
        let small = SuiteSummary {
            total: 3,
            passed: 3,
            failed: 0,
            not_applicable: 0,
        };
        assert!(check_junit(&junit(3, 0, 0), &small, 40).is_err());
        // A truncated document.
        let cut = junit(45, 0, 4);
        assert!(check_junit(&cut[..cut.len() / 2], &summary, 40).is_err());
    }

    #[test]
    fn the_testsuite_attributes_are_checked_where_present() {
        let summary = SuiteSummary {
            total: 45,
            passed: 41,
            failed: 0,
            not_applicable: 4,
        };
        let wrong = junit(45, 0, 4).replace("tests=\"45\" failures", "tests=\"46\" failures");
        let err = check_junit(&wrong, &summary, 40).unwrap_err();
        assert!(err.contains("testsuite tests=46, expected 45"), "{err}");
        // A time-out filed as an error counts as a failure of the run.
        let one_failed = SuiteSummary {
            failed: 1,
            passed: 40,
            ..summary
        };
        let as_error = junit(45, 1, 4)
            .replace("failures=\"1\" errors=\"0\"", "failures=\"0\" errors=\"1\"")
            .replace(
                "<failure message=\"m\">m</failure>",
                "<error message=\"m\"/>",
            );
        assert_eq!(check_junit(&as_error, &one_failed, 40), Ok(()));
        let without = junit(45, 0, 4).replace(" skipped=\"4\"", "");
        assert_eq!(check_junit(&without, &summary, 40), Ok(()));
    }

    #[test]
    fn steps_time_and_name_their_failure() {
        let mut steps = Steps::new();
        steps.step("one", || Ok(())).unwrap();
        let err = steps.step("two", || bail!("broken")).unwrap_err();
        assert!(format!("{err:#}").contains("ci step `two` failed: broken"));
        let table = steps.summary();
        assert!(
            table.contains("| one |") && table.contains("| two |") && table.contains("| total |")
        );
    }
}
