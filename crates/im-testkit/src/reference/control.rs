//! [`VendorSimControl`]: an `im-vendor-sim --control` child process and its stdin control
//! channel (`drop-all`, `record-logins`, `logins`, `stats`), for the reconnect storm test
//! and the `im-storm` figures. One home for starting the process, reading its address and
//! parsing the answers.

use std::net::SocketAddr;
use std::path::Path;
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
}
