//! Mutation testing: `cargo xtask mutants` (cargo-mutants over the delivery-rule modules)
//! and `cargo xtask mutants --curated` (the hand-written mutations in `xtask/mutations/`,
//! each of which must fail a named test).
//!
//! Both run outside the developer's checkout: cargo-mutants copies the tree itself, and the
//! curated runner applies each patch in a git worktree of `HEAD` under `target/mutants/`,
//! so a mutation never leaks into the working copy (and uncommitted changes are not
//! tested: commit first).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The modules that carry the delivery rules (the list: sequencer, sync, send
/// queue, retry, conversations, history windows, bus). The sync engine lives in
/// `client/sync.rs`, driven by `client/supervisor.rs`; `durable.rs` is the app-side journal.
pub const DELIVERY_MODULES: &[&str] = &[
    "crates/im-arch/src/sequencer.rs",
    "crates/im-arch/src/client/sync.rs",
    "crates/im-arch/src/client/supervisor.rs",
    "crates/im-arch/src/durable.rs",
    "crates/im-arch/src/send_queue.rs",
    "crates/im-arch/src/retry.rs",
    "crates/im-arch/src/conversations.rs",
    "crates/im-arch/src/conversation_list.rs",
    "crates/im-arch/src/history.rs",
    "crates/im-arch/src/bus.rs",
];

/// One hand-written mutation: a patch and the commands that must fail while it is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Curated {
    /// File stem, e.g. `jitter-ceiling`.
    pub name: String,
    /// The `# mutation:` line: the bug, in one line.
    pub mutation: String,
    /// Each `# expect:` line split into cargo arguments; every one must exit non-zero.
    pub expects: Vec<Vec<String>>,
}

/// Parses a curated patch's header: `# mutation: …` once, `# expect: …` one or more times.
/// The diff that follows is left to `git apply` (which skips the header as commentary).
pub fn parse_curated(name: &str, text: &str) -> Result<Curated> {
    let mut mutation = None;
    let mut expects = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# mutation:") {
            mutation = Some(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("# expect:") {
            let args: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            if args.is_empty() {
                bail!("{name}: empty `# expect:` line");
            }
            expects.push(args);
        } else if line.starts_with("diff --git") || line.starts_with("--- ") {
            break;
        }
    }
    let Some(mutation) = mutation else {
        bail!("{name}: no `# mutation:` line");
    };
    if expects.is_empty() {
        bail!("{name}: no `# expect:` line");
    }
    Ok(Curated {
        name: name.to_string(),
        mutation,
        expects,
    })
}

/// How one expect command ended under a mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It failed with a test failure (a named assertion, a failed case): the mutation is
    /// caught.
    Caught,
    /// It passed: the mutation survived.
    Survived,
    /// It ran past the deadline: a hang, which the issue counts as not caught.
    Hang,
    /// It did not compile: the patch is stale, not a verdict on the tests.
    BuildError,
}

/// Classifies a finished command from its exit status and output.
pub fn classify(success: bool, timed_out: bool, log: &str) -> Outcome {
    if timed_out {
        Outcome::Hang
    } else if success {
        Outcome::Survived
    } else if log.contains("could not compile") || log.contains("error[E") {
        Outcome::BuildError
    } else {
        Outcome::Caught
    }
}

/// The build half of an expect command (`test …` → `test --no-run …`, `run …` → `build …`,
/// without the arguments after `--`), so that the deadline of the command itself measures
/// the tests, not a rebuild on a loaded machine. `None` for other commands.
pub fn build_step(args: &[String]) -> Option<Vec<String>> {
    let cut = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let head = &args[..cut];
    match head.first().map(String::as_str) {
        Some("test") => {
            let mut b = head.to_vec();
            b.insert(1, "--no-run".into());
            Some(b)
        }
        Some("run") => {
            let mut b = head.to_vec();
            b[0] = "build".into();
            Some(b)
        }
        _ => None,
    }
}

/// Runs `cargo args` in `dir` with the log in `log`, killed at `deadline`.
/// Returns (success, timed_out).
fn run_logged(
    dir: &Path,
    target: &Path,
    args: &[String],
    log: &Path,
    deadline: Duration,
) -> Result<(bool, bool)> {
    let file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut child = Command::new(crate::cargo())
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .spawn()
        .context("spawn cargo")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status.success(), false));
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok((false, true));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Builds what `args` will run, with no deadline (a failure here is left for the command
/// itself to report: a mutation that does not compile is classified from its log).
fn build_first(dir: &Path, target: &Path, args: &[String], log: &Path) -> Result<()> {
    if let Some(build) = build_step(args) {
        let build_log = log.with_extension("build.log");
        run_logged(
            dir,
            target,
            &build,
            &build_log,
            Duration::from_secs(24 * 3600),
        )?;
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("git").arg("-C").arg(dir).args(args).status()?;
    if !status.success() {
        bail!("git {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// A detached git worktree of `HEAD` at `at`, replacing one left by an earlier run.
fn fresh_worktree(root: &Path, at: &Path) -> Result<PathBuf> {
    if at.exists() {
        let _ = git(
            root,
            &["worktree", "remove", "--force", &at.to_string_lossy()],
        );
        let _ = std::fs::remove_dir_all(at);
    }
    git(root, &["worktree", "prune"])?;
    git(
        root,
        &["worktree", "add", "--detach", &at.to_string_lossy(), "HEAD"],
    )?;
    Ok(at.to_path_buf())
}

/// Runs the curated mutations whose names contain `filter` (all when empty): a baseline
/// run of every distinct expect command without a patch (each must pass, or the check
/// means nothing), then each patch applied in turn. Writes `target/mutants/curated.txt`
/// and fails when any mutation is not caught.
pub fn run_curated(root: &Path, filter: &str, per_command: Duration) -> Result<()> {
    let dir = root.join("xtask/mutations");
    let mut patches: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .filter(|p| {
            p.file_stem()
                .is_some_and(|s| s.to_string_lossy().contains(filter))
        })
        .collect();
    patches.sort();
    if patches.is_empty() {
        bail!("no patches in {} match {filter:?}", dir.display());
    }
    let mut curated = Vec::new();
    for p in &patches {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(p)?;
        curated.push((parse_curated(&name, &text)?, p.clone()));
    }

    let out = root.join("target/mutants");
    let logs = out.join("curated-logs");
    std::fs::create_dir_all(&logs)?;
    let wt = fresh_worktree(root, &out.join("curated-wt"))?;
    let target = out.join("curated-target");

    // Baseline: each distinct command must pass on the unmutated tree.
    let mut distinct: Vec<&Vec<String>> = curated.iter().flat_map(|(c, _)| &c.expects).collect();
    distinct.sort();
    distinct.dedup();
    for (i, args) in distinct.iter().enumerate() {
        eprintln!(
            "baseline {}/{}: cargo {}",
            i + 1,
            distinct.len(),
            args.join(" ")
        );
        let log = logs.join(format!("baseline-{i}.log"));
        build_first(&wt, &target, args, &log)?;
        let (ok, timed_out) = run_logged(&wt, &target, args, &log, per_command)?;
        if !ok {
            bail!(
                "baseline failed without any mutation ({}): cargo {} — see {}",
                if timed_out {
                    "timed out"
                } else {
                    "exit non-zero"
                },
                args.join(" "),
                log.display()
            );
        }
    }

    let mut report = String::from("| mutation | outcome | command |\n|---|---|---|\n");
    let mut uncaught = 0;
    for (c, patch) in &curated {
        git(&wt, &["apply", &patch.to_string_lossy()])
            .with_context(|| format!("{}: patch does not apply to HEAD", c.name))?;
        for (i, args) in c.expects.iter().enumerate() {
            let log = logs.join(format!("{}-{i}.log", c.name));
            build_first(&wt, &target, args, &log)?;
            let started = Instant::now();
            let (ok, timed_out) = run_logged(&wt, &target, args, &log, per_command)?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let outcome = classify(ok, timed_out, &text);
            if outcome != Outcome::Caught {
                uncaught += 1;
            }
            let line = format!(
                "| {} ({}) | {outcome:?} in {:.0?} | `cargo {}` |\n",
                c.name,
                c.mutation,
                started.elapsed(),
                args.join(" ")
            );
            eprint!("{line}");
            report.push_str(&line);
        }
        git(&wt, &["reset", "--hard", "-q"])?;
    }
    std::fs::write(out.join("curated.txt"), &report)?;
    println!("{report}");
    let _ = git(
        root,
        &["worktree", "remove", "--force", &wt.to_string_lossy()],
    );
    if uncaught > 0 {
        bail!("{uncaught} expect command(s) did not catch their mutation");
    }
    println!("all {} curated mutations caught", curated.len());
    Ok(())
}

/// Runs cargo-mutants (installing it if missing) over [`DELIVERY_MODULES`], testing with
/// im-arch's own tests; results, survivors included (`missed.txt`), land in
/// `target/mutants/mutants.out/`. `extra` goes to cargo-mutants (e.g. `--shard 1/4`,
/// `--re`). `only` narrows the run to some of those modules (by file stem, e.g. `retry`).
pub fn run_cargo_mutants(root: &Path, only: &[String], extra: &[String]) -> Result<()> {
    let installed = Command::new(crate::cargo())
        .args(["mutants", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!("$ cargo install cargo-mutants --locked");
        let status = Command::new(crate::cargo())
            .args(["install", "cargo-mutants", "--locked"])
            .status()?;
        if !status.success() {
            bail!("cargo install cargo-mutants failed ({status})");
        }
    }
    let out = root.join("target/mutants");
    std::fs::create_dir_all(&out)?;
    // Mutate a clean tree of HEAD, not the working copy (which may hold half-done edits).
    let tree = fresh_worktree(root, &out.join("tree"))?;
    let mut args: Vec<String> = vec![
        "mutants".into(),
        "--dir".into(),
        tree.to_string_lossy().into_owned(),
        "--package".into(),
        "im-arch".into(),
        "--test-workspace=false".into(),
        "--output".into(),
        out.to_string_lossy().into_owned(),
        // im-arch's tests take ~1 min in debug; a mutant that makes them hang is caught
        // by the overall deadlines inside the tests first, this is the backstop.
        "--timeout".into(),
        "300".into(),
    ];
    for m in DELIVERY_MODULES {
        let stem = Path::new(m).file_stem().map(|s| s.to_string_lossy());
        if !only.is_empty() && !only.iter().any(|o| stem.as_deref() == Some(o.as_str())) {
            continue;
        }
        args.push("--file".into());
        args.push((*m).into());
    }
    args.extend(extra.iter().cloned());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(crate::cargo())
        .args(&args)
        .current_dir(root)
        .status()?;
    // cargo-mutants exits 2 when mutants were missed, 3 on timeouts: the report is the
    // product either way; say where it is.
    eprintln!(
        "cargo-mutants finished ({status}); survivors: {}",
        out.join("mutants.out/missed.txt").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_parsed_and_the_diff_ignored() {
        let text = "# mutation: jitter is the ceiling\n\
                    # expect: test -p im-arch --lib retry::tests\n\
                    # expect: run -q -p im-testkit --bin im-test-suite -- --filter X\n\
                    diff --git a/x b/x\n# expect: not a header line\n";
        let c = parse_curated("jitter", text).expect("parses");
        assert_eq!(c.mutation, "jitter is the ceiling");
        assert_eq!(c.expects.len(), 2, "{c:?}");
        assert_eq!(
            c.expects[0],
            ["test", "-p", "im-arch", "--lib", "retry::tests"]
        );
    }

    #[test]
    fn the_build_step_drops_the_test_arguments() {
        let args = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            build_step(&args("test -p im-arch --lib -- retry::tests")),
            Some(args("test --no-run -p im-arch --lib"))
        );
        assert_eq!(
            build_step(&args("run -q -p im-testkit --bin s -- --filter X")),
            Some(args("build -q -p im-testkit --bin s"))
        );
        assert_eq!(build_step(&args("fmt")), None);
    }

    #[test]
    fn a_patch_without_expectations_is_refused() {
        assert!(parse_curated("x", "# mutation: m\ndiff --git a b\n").is_err());
        assert!(parse_curated("x", "# expect: test\n").is_err());
    }

    #[test]
    fn outcomes_are_told_apart() {
        assert_eq!(classify(false, true, ""), Outcome::Hang);
        assert_eq!(classify(true, false, ""), Outcome::Survived);
        assert_eq!(
            classify(false, false, "error[E0308]: mismatched types"),
            Outcome::BuildError
        );
        assert_eq!(
            classify(false, false, "test retry::x ... FAILED"),
            Outcome::Caught
        );
    }

    #[test]
    fn every_committed_patch_has_a_valid_header() {
        let dir = crate::project_root().join("xtask/mutations");
        let mut patches = 0;
        for e in std::fs::read_dir(&dir).expect("xtask/mutations/").flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "patch") {
                let text = std::fs::read_to_string(&p).expect("read");
                parse_curated(&p.display().to_string(), &text).expect("valid header");
                assert!(text.contains("\n--- a/"), "{}: no diff", p.display());
                patches += 1;
            }
        }
        assert!(
            patches >= 12,
            "the issue's mutations are all there: {patches}"
        );
    }

    /// A patch that no longer applies is a mutation nobody runs: code moved under it (as
    /// `client/sync.rs` did for `echo-delivered-twice`). Retarget it in the same commit.
    #[test]
    fn every_committed_patch_applies_to_the_tree() {
        let root = crate::project_root();
        let mut stale = Vec::new();
        for e in std::fs::read_dir(root.join("xtask/mutations"))
            .expect("xtask/mutations/")
            .flatten()
        {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "patch") {
                let ok = std::process::Command::new("git")
                    .args(["apply", "--check"])
                    .arg(&p)
                    .current_dir(&root)
                    .output()
                    .expect("git runs")
                    .status
                    .success();
                if !ok {
                    stale.push(p.display().to_string());
                }
            }
        }
        assert!(stale.is_empty(), "patches that no longer apply: {stale:?}");
    }
}
