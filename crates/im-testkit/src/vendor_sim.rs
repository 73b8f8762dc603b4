//! The `im-vendor-sim` binary (package `im-vendor-sim`) seen from the test tier: where to
//! find it ([`vendor_sim_bin`], built on demand), and [`VendorSimControl`], an
//! `im-vendor-sim --control` child process and its stdin control channel (`drop-all`,
//! `record-logins`, `logins`, `stats`), for the reconnect storm test and the `im-storm`
//! figures. One home for locating and starting the process, reading its address and
//! parsing the answers.
//!
//! It stays in the test tier rather than in `im-vendor-sim`: it drives the server from a
//! test's point of view (a child process killed with the handle), and the demo, which
//! depends on `im-vendor-sim`, has no use for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// What went wrong with the controlled server.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Starting it, or talking to it over its pipes, failed.
    #[error("im-vendor-sim: {0}")]
    Io(#[from] std::io::Error),
    /// It did not print its address, or answer a command, in time.
    #[error("im-vendor-sim: no answer to {0} in time")]
    Timeout(String),
    /// It exited (its stdout closed) while we waited for {0}.
    #[error("im-vendor-sim exited while waiting for {0}")]
    Exited(String),
    /// The binary is not where it should be and building it failed.
    #[error("im-vendor-sim binary: {0}")]
    Binary(String),
    /// An answer that does not parse.
    #[error("im-vendor-sim: unexpected answer to {command}: {answer:?}")]
    Answer {
        /// The command sent.
        command: String,
        /// What came back.
        answer: String,
    },
}

/// Counters the server reports on `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections open now.
    pub open: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Login requests since start.
    pub logins: u64,
}

/// An `im-vendor-sim --control` process on 127.0.0.1:0, killed with the handle
/// (`kill_on_drop`) or by [`VendorSimControl::kill`].
pub struct VendorSimControl {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for VendorSimControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorSimControl")
            .field("addr", &self.addr)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

/// How long the server may take to print its address (a debug build on a loaded machine).
const START_WITHIN: Duration = Duration::from_secs(120);
/// How long one control command may take (`drop-all` of 10,000 connections included).
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

impl VendorSimControl {
    /// Starts `bin` with the accounts of `users_file`, room for `max_connections` and
    /// `idle_timeout` before an idle connection is closed; waits for its address. The
    /// server's stderr goes to `stderr`.
    pub async fn start(
        bin: &Path,
        users_file: &Path,
        max_connections: usize,
        idle_timeout: Duration,
        stderr: Stdio,
    ) -> Result<Self, ControlError> {
        let mut child = Command::new(bin)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--control",
                "--retention-days",
                "0",
            ])
            .args(["--idle-timeout-secs", &idle_timeout.as_secs().to_string()])
            .args(["--max-connections", &max_connections.to_string()])
            .arg("--users-file")
            .arg(users_file)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(ControlError::Exited("its pipes".into()));
        };
        let mut lines = BufReader::new(stdout).lines();
        let first = next_line(&mut lines, "its address", START_WITHIN).await?;
        let addr = first
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .ok_or_else(|| ControlError::Answer {
                command: "start".into(),
                answer: first.clone(),
            })?;
        Ok(Self {
            child,
            stdin,
            lines,
            addr,
        })
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id (`None` once it has exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends one control command and returns its one-line answer.
    pub async fn command(&mut self, command: &str) -> Result<String, ControlError> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        next_line(&mut self.lines, command, ANSWER_WITHIN).await
    }

    /// Starts recording login requests (`logins` returns them).
    pub async fn record_logins(&mut self) -> Result<(), ControlError> {
        self.command("record-logins").await.map(drop)
    }

    /// Breaks every connection at once; the server's wall-clock time of the drop.
    pub async fn drop_all(&mut self) -> Result<SystemTime, ControlError> {
        let answer = self.command("drop-all").await?;
        let ms: u64 = answer
            .strip_prefix("dropped ")
            .and_then(|ms| ms.parse().ok())
            .ok_or_else(|| ControlError::Answer {
                command: "drop-all".into(),
                answer: answer.clone(),
            })?;
        Ok(UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// The login requests recorded since the last call: (user, server wall-clock time).
    pub async fn logins(&mut self) -> Result<Vec<(String, SystemTime)>, ControlError> {
        let answer = self.command("logins").await?;
        parse_logins(&answer).ok_or(ControlError::Answer {
            command: "logins".into(),
            answer,
        })
    }

    /// The server's connection and login counters.
    pub async fn stats(&mut self) -> Result<ServerStats, ControlError> {
        let answer = self.command("stats").await?;
        let field = |name: &str| -> Option<u64> {
            answer
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        match (field("open"), field("accepted"), field("logins")) {
            (Some(open), Some(accepted), Some(logins)) => Ok(ServerStats {
                open,
                accepted,
                logins,
            }),
            _ => Err(ControlError::Answer {
                command: "stats".into(),
                answer,
            }),
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub async fn kill(mut self) -> Result<(), ControlError> {
        self.child.kill().await?;
        Ok(())
    }
}

/// The binary's name, as `cargo build -p im-vendor-sim --bin im-vendor-sim` writes it.
const BIN: &str = "im-vendor-sim";

/// The `im-vendor-sim` binary of this workspace. `IM_VENDOR_SIM_BIN` names it explicitly;
/// under cargo (`cargo test`, `cargo run`: `CARGO` is set) it is built, or found up to date,
/// with `cargo build -p im-vendor-sim --bin im-vendor-sim` and cargo's own answer says
/// where; otherwise it is looked up beside the running executable (and one directory up,
/// for a test binary in `target/<profile>/deps`). Cargo builds a binary for the tests of
/// its own package only (`CARGO_BIN_EXE_*`), and the test tier is another package.
pub fn vendor_sim_bin() -> Result<PathBuf, ControlError> {
    if let Some(path) = std::env::var_os("IM_VENDOR_SIM_BIN") {
        return Ok(PathBuf::from(path));
    }
    match std::env::var_os("CARGO") {
        Some(cargo) => build_with(&cargo),
        None => beside_current_exe(),
    }
}

/// Builds the binary with `cargo` (same target directory and profile as the caller's
/// environment) and returns the executable cargo reports.
fn build_with(cargo: &std::ffi::OsStr) -> Result<PathBuf, ControlError> {
    let release = std::env::current_exe()
        .ok()
        .is_some_and(|exe| exe.components().any(|c| c.as_os_str() == "release"));
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        BIN,
        "--bin",
        BIN,
        "--message-format=json",
    ]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| ControlError::Binary(format!("running cargo build: {e}")))?;
    if !out.status.success() {
        return Err(ControlError::Binary(format!(
            "cargo build -p {BIN} --bin {BIN} failed ({})",
            out.status
        )));
    }
    executable_in(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        ControlError::Binary("cargo build reported no im-vendor-sim executable".into())
    })
}

/// The `"executable"` of the `im-vendor-sim` artifact in cargo's JSON messages.
fn executable_in(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == BIN)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// `im-vendor-sim` in the running executable's directory or its parent.
fn beside_current_exe() -> Result<PathBuf, ControlError> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(&exe);
    [dir, dir.parent().unwrap_or(dir)]
        .iter()
        .map(|d| d.join(BIN))
        .find(|p| p.exists())
        .ok_or_else(|| {
            ControlError::Binary(format!(
                "not found beside {}: build it with `cargo build -p {BIN}` or set IM_VENDOR_SIM_BIN",
                exe.display()
            ))
        })
}

/// `logins N USER=MS ...` → the pairs, or `None` if it does not parse or miscounts.
fn parse_logins(answer: &str) -> Option<Vec<(String, SystemTime)>> {
    let mut words = answer.split_whitespace();
    if words.next()? != "logins" {
        return None;
    }
    let n: usize = words.next()?.parse().ok()?;
    let out = words
        .map(|w| {
            let (user, ms) = w.split_once('=')?;
            let ms: u64 = ms.parse().ok()?;
            Some((user.to_string(), UNIX_EPOCH + Duration::from_millis(ms)))
        })
        .collect::<Option<Vec<_>>>()?;
    (out.len() == n).then_some(out)
}

async fn next_line(
    lines: &mut Lines<BufReader<ChildStdout>>,
    waiting_for: &str,
    within: Duration,
) -> Result<String, ControlError> {
    match tokio::time::timeout(within, lines.next_line()).await {
        Err(_) => Err(ControlError::Timeout(waiting_for.to_string())),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(None)) => Err(ControlError::Exited(waiting_for.to_string())),
        Ok(Ok(Some(line))) => Ok(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_answers_parse_and_miscounts_are_refused() {
        let got = parse_logins("logins 2 u1=1000 u2=1500").expect("parses");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0, "u2");
        assert_eq!(got[1].1, UNIX_EPOCH + Duration::from_millis(1500));
        assert_eq!(parse_logins("logins 0").map(|v| v.len()), Some(0));
        assert!(parse_logins("logins 3 u1=1").is_none(), "miscounted");
        assert!(parse_logins("stats open=1").is_none());
        assert!(parse_logins("logins 1 u1=x").is_none());
    }

    #[test]
    fn the_executable_comes_from_the_vendor_sim_artifact() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"im_service"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"im-vendor-sim"},"executable":"/t/debug/im-vendor-sim"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            executable_in(messages),
            Some(PathBuf::from("/t/debug/im-vendor-sim"))
        );
        assert_eq!(executable_in(r#"{"reason":"build-finished"}"#), None);
    }
}
