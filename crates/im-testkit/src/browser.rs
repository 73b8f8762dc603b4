//! A small headless-Chromium driver for browser tests, over the DevTools protocol (CDP) on a
//! pipe: no WebDriver, no Node.js, no new heavy dependency.
//!
//! How it talks to Chromium: `--remote-debugging-pipe` makes Chromium read CDP commands from
//! file descriptor 3 and write answers and events to descriptor 4, each message one JSON
//! document followed by a NUL byte. tokio's process API gives a child only stdin and stdout,
//! so the child is bash running
//! `exec "$0" --remote-debugging-pipe ... 3<&0 4>&1 </dev/null >/dev/null` with `$0` the
//! Chromium binary: bash moves our stdin pipe to fd 3 and our stdout pipe to fd 4, then
//! becomes Chromium (no `unsafe` `pre_exec` needed). One task reads fd 4, splits it at NUL
//! bytes ([`FrameDecoder`]), hands answers to their waiting command (by `id`) and records the
//! events tests care about: every request URL the page makes (`Network.requestWillBeSent`),
//! failed loads, console messages and uncaught exceptions.
//!
//! Every call has a deadline ([`COMMAND_TIMEOUT`]) and every wait an overall one
//! ([`Page::wait_for`]), so a hung browser fails a test with a named error instead of hanging
//! it. The child is killed when the [`Browser`] is dropped (`kill_on_drop`), and its profile
//! is a fresh temporary directory.
//!
//! Chromium is found at `$IM_CHROMIUM`, else `/usr/bin/chromium` (Debian's `chromium`
//! package). When it is missing, [`Browser::launch`] returns `Ok(None)` and prints why, so the
//! test can skip; with `IM_REQUIRE_CHROMIUM=1` (set by CI) it is an error instead.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long one DevTools command may take before it fails with
/// [`BrowserError::CommandTimeout`].
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags every launch uses. The network ones keep Chromium from calling home, which on a
/// machine with a closed network means many refused connections and slow starts.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
];

/// The viewport pages get: wide enough for a desktop layout, tall enough for most of a page.
pub const VIEWPORT: (u32, u32) = (1400, 2400);

/// What can go wrong driving the browser. Each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// No Chromium binary, and `IM_REQUIRE_CHROMIUM=1` says that is a failure.
    #[error(
        "chromium not found at {0} (install Debian's `chromium` or point IM_CHROMIUM at one); \
         IM_REQUIRE_CHROMIUM=1 makes this a failure instead of a skip"
    )]
    Missing(PathBuf),
    /// The profile directory could not be made.
    #[error("could not create a temporary profile directory for chromium: {0}")]
    Profile(#[source] std::io::Error),
    /// The child process could not be started.
    #[error("could not start chromium {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Chromium went away (or closed its DevTools pipe); the tail of its stderr says why.
    #[error("chromium closed its DevTools pipe while {doing}; its stderr ends with:\n{stderr}")]
    Closed {
        /// The command in flight, or "idle".
        doing: String,
        /// The last lines Chromium wrote to stderr.
        stderr: String,
    },
    /// Writing to the pipe failed.
    #[error("could not send {method} to chromium: {source}")]
    Send {
        /// The CDP method.
        method: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command answered with a protocol error.
    #[error("DevTools command {method} failed: {message} (code {code})")]
    Command {
        /// The CDP method.
        method: String,
        /// The protocol error code.
        code: i64,
        /// The protocol error message.
        message: String,
    },
    /// A command got no answer in time.
    #[error("DevTools command {method} got no answer within {within:?}")]
    CommandTimeout {
        /// The CDP method.
        method: String,
        /// How long it waited.
        within: Duration,
    },
    /// An answer lacked a field it must have.
    #[error("unexpected DevTools answer to {method}: {detail}")]
    Protocol {
        /// The CDP method.
        method: String,
        /// What was wrong.
        detail: String,
    },
    /// The evaluated JavaScript threw.
    #[error("JavaScript `{expr}` threw: {message}")]
    Js {
        /// The expression.
        expr: String,
        /// The exception's description.
        message: String,
    },
    /// [`Page::wait_for`] ran out of time.
    #[error(
        "timed out waiting for {what} (overall deadline {within:.1?}); `{expr}` last gave {last}"
    )]
    WaitTimeout {
        /// What was awaited, in words.
        what: String,
        /// The JavaScript condition.
        expr: String,
        /// The overall deadline.
        within: Duration,
        /// The last value (or error) the condition gave.
        last: String,
    },
    /// Writing the screenshot failed.
    #[error("could not write the screenshot to {path}: {source}")]
    Screenshot {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Splits the DevTools pipe's byte stream into messages: each is a JSON document followed by
/// a NUL byte. Bytes after the last NUL are kept until the rest arrives.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    pending: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Adds `bytes` and returns every message they complete, in order (without the NUL).
    /// Empty messages (two NULs in a row) are skipped.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(at) = rest.iter().position(|&b| b == 0) {
            let (head, tail) = rest.split_at(at);
            self.pending.extend_from_slice(head);
            let frame = std::mem::take(&mut self.pending);
            if !frame.is_empty() {
                out.push(frame);
            }
            rest = &tail[1..];
        }
        self.pending.extend_from_slice(rest);
        out
    }

    /// Bytes of an unfinished message still buffered.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }
}

/// One message as it goes out: the JSON followed by the NUL terminator.
pub fn encode_frame(message: &Value) -> Vec<u8> {
    let mut bytes = message.to_string().into_bytes();
    bytes.push(0);
    bytes
}

/// Whether a value counts as true for [`Page::wait_for`] (JavaScript truthiness of a JSON value).
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Where Chromium is, or `Ok(None)` (after printing why) when it is missing and not required.
pub fn chromium_binary() -> Result<Option<PathBuf>, BrowserError> {
    let path = std::env::var_os("IM_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        return Ok(Some(path));
    }
    if std::env::var("IM_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
        return Err(BrowserError::Missing(path));
    }
    // Straight to stderr, past the test harness's capture: a skip must show in the log.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP: chromium not found at {} (install Debian's `chromium` or set IM_CHROMIUM; \
         IM_REQUIRE_CHROMIUM=1 turns this skip into a failure)",
        path.display()
    );
    Ok(None)
}

/// A network request the page made, as `Network.requestWillBeSent` reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The URL requested.
    pub url: String,
    /// What kind of resource (`Document`, `Script`, `Fetch`, `Image`, ...), if said.
    pub kind: Option<String>,
    /// The CDP request id (to match failures).
    pub request_id: String,
}

/// What the page did besides requests: console output, exceptions, failed loads.
#[derive(Debug, Clone, PartialEq)]
pub enum PageEvent {
    /// `console.*` output.
    Console {
        /// log, warn, error...
        level: String,
        /// The arguments, joined.
        text: String,
    },
    /// An uncaught exception.
    Exception(String),
    /// A browser log entry (CSP violations land here).
    Log {
        /// Its level.
        level: String,
        /// Its text.
        text: String,
        /// The URL it is about, if any.
        url: Option<String>,
    },
    /// A request that failed (`blocked` is e.g. `csp` when the policy stopped it).
    LoadingFailed {
        /// The URL, when the request was seen.
        url: Option<String>,
        /// The error text.
        error: String,
        /// Why it was blocked, if it was.
        blocked: Option<String>,
    },
}

type Answer = Result<Value, BrowserError>;

/// Shared between the handles and the reader task.
struct Conn {
    stdin: tokio::sync::Mutex<ChildStdin>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, (String, oneshot::Sender<Answer>)>>,
    requests: Mutex<Vec<Request>>,
    events: Mutex<Vec<PageEvent>>,
    stderr_tail: Mutex<String>,
    closed: AtomicBool,
}

impl Conn {
    fn closed_error(&self, doing: &str) -> BrowserError {
        BrowserError::Closed {
            doing: doing.to_string(),
            stderr: self.stderr_tail.lock().clone(),
        }
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Answer {
        if self.closed.load(Ordering::SeqCst) {
            return Err(self.closed_error(method));
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let (Some(s), Some(obj)) = (session, message.as_object_mut()) {
            obj.insert("sessionId".to_string(), Value::String(s.to_string()));
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, (method.to_string(), tx));
        // The reader may have closed between the check above and the insert: then nobody
        // would answer this command.
        if self.closed.load(Ordering::SeqCst) {
            self.pending.lock().remove(&id);
            return Err(self.closed_error(method));
        }
        let sent = {
            let mut stdin = self.stdin.lock().await;
            match stdin.write_all(&encode_frame(&message)).await {
                Ok(()) => stdin.flush().await,
                Err(e) => Err(e),
            }
        };
        if let Err(source) = sent {
            self.pending.lock().remove(&id);
            return Err(BrowserError::Send {
                method: method.to_string(),
                source,
            });
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(self.closed_error(method)),
            Err(_) => {
                self.pending.lock().remove(&id);
                Err(BrowserError::CommandTimeout {
                    method: method.to_string(),
                    within: COMMAND_TIMEOUT,
                })
            }
        }
    }

    /// One message from Chromium: an answer (has `id`) or an event (has `method`).
    fn dispatch(&self, message: &Value) {
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            let Some((method, tx)) = self.pending.lock().remove(&id) else {
                return;
            };
            let answer = match message.get("error") {
                Some(err) => Err(BrowserError::Command {
                    method,
                    code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: err
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                }),
                None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = tx.send(answer);
            return;
        }
        let method = message.get("method").and_then(Value::as_str).unwrap_or("");
        let params = message.get("params").unwrap_or(&Value::Null);
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        match method {
            "Network.requestWillBeSent" => {
                if let Some(url) = text(params.pointer("/request/url")) {
                    self.requests.lock().push(Request {
                        url,
                        kind: text(params.get("type")),
                        request_id: text(params.get("requestId")).unwrap_or_default(),
                    });
                }
            }
            "Network.loadingFailed" => {
                let id = text(params.get("requestId")).unwrap_or_default();
                let url = self
                    .requests
                    .lock()
                    .iter()
                    .rev()
                    .find(|r| r.request_id == id)
                    .map(|r| r.url.clone());
                self.events.lock().push(PageEvent::LoadingFailed {
                    url,
                    error: text(params.get("errorText")).unwrap_or_default(),
                    blocked: text(params.get("blockedReason")),
                });
            }
            "Runtime.consoleAPICalled" => {
                let args = params
                    .get("args")
                    .and_then(Value::as_array)
                    .map(|args| {
                        args.iter()
                            .map(|a| match a.get("value") {
                                Some(Value::String(s)) => s.clone(),
                                Some(v) => v.to_string(),
                                None => text(a.get("description")).unwrap_or_default(),
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                self.events.lock().push(PageEvent::Console {
                    level: text(params.get("type")).unwrap_or_default(),
                    text: args,
                });
            }
            "Runtime.exceptionThrown" => {
                let details = params.get("exceptionDetails").unwrap_or(&Value::Null);
                let description = text(details.pointer("/exception/description"))
                    .or_else(|| text(details.get("text")))
                    .unwrap_or_default();
                self.events.lock().push(PageEvent::Exception(description));
            }
            "Log.entryAdded" => {
                let entry = params.get("entry").unwrap_or(&Value::Null);
                self.events.lock().push(PageEvent::Log {
                    level: text(entry.get("level")).unwrap_or_default(),
                    text: text(entry.get("text")).unwrap_or_default(),
                    url: text(entry.get("url")),
                });
            }
            _ => {}
        }
    }

    /// The pipe ended: every waiting command fails, later ones fail at once.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let waiting: Vec<_> = self.pending.lock().drain().collect();
        for (_, (method, tx)) in waiting {
            let _ = tx.send(Err(self.closed_error(&method)));
        }
    }
}

/// A running headless Chromium; killed when dropped.
pub struct Browser {
    conn: Arc<Conn>,
    child: Child,
    reader: JoinHandle<()>,
    stderr_reader: JoinHandle<()>,
    // Dropped after the child is killed (field order): the profile of this run only.
    profile: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("pid", &self.child.id())
            .field("profile", &self.profile.path())
            .finish()
    }
}

impl Browser {
    /// Starts Chromium with a fresh profile, or `Ok(None)` when it is not installed (and
    /// `IM_REQUIRE_CHROMIUM` is not `1`): the caller skips its test.
    pub async fn launch() -> Result<Option<Browser>, BrowserError> {
        match chromium_binary()? {
            Some(path) => Browser::launch_at(&path).await.map(Some),
            None => Ok(None),
        }
    }

    /// Starts the Chromium at `path` with a fresh profile.
    pub async fn launch_at(path: &Path) -> Result<Browser, BrowserError> {
        let profile = tempfile::Builder::new()
            .prefix("im-chromium-")
            .tempdir()
            .map_err(BrowserError::Profile)?;
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(r#"exec "$0" --remote-debugging-pipe "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(path)
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let spawn_error = |source| BrowserError::Spawn {
            path: path.to_path_buf(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let missing = |what: &str| {
            spawn_error(std::io::Error::other(format!(
                "the child has no {what} pipe"
            )))
        };
        let stdin = child.stdin.take().ok_or_else(|| missing("stdin"))?;
        let mut stdout = child.stdout.take().ok_or_else(|| missing("stdout"))?;
        let mut stderr = child.stderr.take().ok_or_else(|| missing("stderr"))?;
        let conn = Arc::new(Conn {
            stdin: tokio::sync::Mutex::new(stdin),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            stderr_tail: Mutex::new(String::new()),
            closed: AtomicBool::new(false),
        });
        let reader = {
            let conn = Arc::clone(&conn);
            tokio::spawn(async move {
                let mut decoder = FrameDecoder::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match stdout.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    for frame in decoder.push(&buf[..n]) {
                        if let Ok(message) = serde_json::from_slice::<Value>(&frame) {
                            conn.dispatch(&message);
                        }
                    }
                }
                conn.close();
            })
        };
        let stderr_reader = {
            let conn = Arc::clone(&conn);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8 * 1024];
                while let Ok(n) = stderr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut tail = conn.stderr_tail.lock();
                    tail.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if tail.len() > 8192 {
                        let mut cut = tail.len() - 8192;
                        while !tail.is_char_boundary(cut) {
                            cut += 1;
                        }
                        tail.drain(..cut);
                    }
                }
            })
        };
        let browser = Browser {
            conn,
            child,
            reader,
            stderr_reader,
            profile,
        };
        // The pipe answers once Chromium is up: a first command proves it.
        browser
            .conn
            .call(None, "Browser.getVersion", json!({}))
            .await?;
        Ok(browser)
    }

    /// The browser's product and version (`Browser.getVersion`).
    pub async fn version(&self) -> Result<String, BrowserError> {
        let v = self
            .conn
            .call(None, "Browser.getVersion", json!({}))
            .await?;
        Ok(v.get("product")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string())
    }

    /// A new tab (`Target.createTarget`), attached with a flat session
    /// (`Target.attachToTarget {flatten: true}`), with the Page, Network, Runtime and Log
    /// domains enabled and the viewport set to [`VIEWPORT`]. Its requests are recorded from
    /// now on.
    pub async fn new_page(&self) -> Result<Page, BrowserError> {
        let created = self
            .conn
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = field_str(&created, "targetId", "Target.createTarget")?;
        let attached = self
            .conn
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        let session = field_str(&attached, "sessionId", "Target.attachToTarget")?;
        let page = Page {
            conn: Arc::clone(&self.conn),
            session,
            target_id,
        };
        for domain in [
            "Page.enable",
            "Network.enable",
            "Runtime.enable",
            "Log.enable",
        ] {
            page.call(domain, json!({})).await?;
        }
        page.set_viewport(VIEWPORT.0, VIEWPORT.1).await?;
        Ok(page)
    }

    /// Every request any page of this browser made so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.conn.requests.lock().clone()
    }

    /// Console messages, exceptions, log entries and failed loads seen so far.
    pub fn events(&self) -> Vec<PageEvent> {
        self.conn.events.lock().clone()
    }

    /// The last lines Chromium wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.conn.stderr_tail.lock().clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.reader.abort();
        self.stderr_reader.abort();
    }
}

fn field_str(v: &Value, field: &str, method: &str) -> Result<String, BrowserError> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| BrowserError::Protocol {
            method: method.to_string(),
            detail: format!("no `{field}` in {v}"),
        })
}

/// One tab, driven through its flat session.
#[derive(Clone)]
pub struct Page {
    conn: Arc<Conn>,
    session: String,
    target_id: String,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("target_id", &self.target_id)
            .field("session", &self.session)
            .finish()
    }
}

impl Page {
    /// Sends a raw CDP command on this page's session.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.conn.call(Some(&self.session), method, params).await
    }

    /// Sets the viewport (`Emulation.setDeviceMetricsOverride`, scale 1, not mobile).
    pub async fn set_viewport(&self, width: u32, height: u32) -> Result<(), BrowserError> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await
        .map(|_| ())
    }

    /// Opens `url` (`Page.navigate`); does not wait for the load (use [`Page::wait_for`]).
    pub async fn navigate(&self, url: &str) -> Result<(), BrowserError> {
        let v = self.call("Page.navigate", json!({"url": url})).await?;
        match v.get("errorText").and_then(Value::as_str) {
            Some(err) if !err.is_empty() => Err(BrowserError::Command {
                method: "Page.navigate".to_string(),
                code: 0,
                message: format!("{url}: {err}"),
            }),
            _ => Ok(()),
        }
    }

    /// Evaluates `expr` in the page (`Runtime.evaluate`, by value, awaiting promises).
    pub async fn evaluate(&self, expr: &str) -> Result<Value, BrowserError> {
        let v = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(details) = v.get("exceptionDetails") {
            let message = details
                .pointer("/exception/description")
                .and_then(Value::as_str)
                .or_else(|| details.get("text").and_then(Value::as_str))
                .unwrap_or("exception")
                .to_string();
            return Err(BrowserError::Js {
                expr: expr.to_string(),
                message,
            });
        }
        Ok(v.pointer("/result/value").cloned().unwrap_or(Value::Null))
    }

    /// Polls `expr` (every 200 ms) until it gives a truthy value and returns that value;
    /// fails with [`BrowserError::WaitTimeout`] naming `what` and the last value seen when
    /// `within` has passed in all. A throwing `expr` counts as "not yet" (the page may still
    /// be loading); a closed browser fails at once.
    pub async fn wait_for(
        &self,
        what: &str,
        expr: &str,
        within: Duration,
    ) -> Result<Value, BrowserError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = String::from("nothing (never evaluated)");
        loop {
            match tokio::time::timeout_at(deadline, self.evaluate(expr)).await {
                Ok(Ok(v)) if truthy(&v) => return Ok(v),
                Ok(Ok(v)) => last = v.to_string(),
                Ok(Err(e @ BrowserError::Closed { .. })) => return Err(e),
                Ok(Err(e)) => last = format!("error: {e}"),
                Err(_) => {}
            }
            if tokio::time::Instant::now() + Duration::from_millis(200) >= deadline {
                return Err(BrowserError::WaitTimeout {
                    what: what.to_string(),
                    expr: expr.to_string(),
                    within,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the whole page (beyond the viewport: `Page.getLayoutMetrics` for its size,
    /// `Page.captureScreenshot` with `captureBeyondViewport`).
    pub async fn screenshot(&self) -> Result<Vec<u8>, BrowserError> {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = |k: &str, default: u32| {
            metrics
                .pointer(&format!("/cssContentSize/{k}"))
                .and_then(Value::as_f64)
                .map(f64::ceil)
                .unwrap_or(f64::from(default))
        };
        let width = size("width", VIEWPORT.0).max(f64::from(VIEWPORT.0));
        let height = size("height", VIEWPORT.1);
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
                }),
            )
            .await?;
        let data = field_str(&shot, "data", "Page.captureScreenshot")?;
        base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|e| BrowserError::Protocol {
                method: "Page.captureScreenshot".to_string(),
                detail: format!("the image is not base64: {e}"),
            })
    }

    /// [`Page::screenshot`] saved as a PNG file at `path` (its folder is created).
    pub async fn save_screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        let png = self.screenshot().await?;
        let write_error = |source| BrowserError::Screenshot {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write_error)?;
        }
        std::fs::write(path, png).map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_nul_bytes() {
        let mut d = FrameDecoder::new();
        let frames = d.push(b"{\"id\":1}\0{\"id\":2}\0");
        assert_eq!(
            frames,
            vec![b"{\"id\":1}".to_vec(), b"{\"id\":2}".to_vec()],
            "two complete messages in one read"
        );
        assert_eq!(d.buffered(), 0, "nothing left over");
    }

    #[test]
    fn a_frame_split_over_reads_is_joined() {
        let mut d = FrameDecoder::new();
        assert!(d.push(b"{\"met").is_empty(), "no NUL yet: no message");
        assert_eq!(d.buffered(), 5, "the partial message is kept");
        assert!(d.push(b"hod\":\"x\"").is_empty(), "still no NUL");
        let frames = d.push(b"}\0{\"id\"");
        assert_eq!(
            frames,
            vec![b"{\"method\":\"x\"}".to_vec()],
            "the three pieces make one message"
        );
        assert_eq!(d.buffered(), 5, "the next message's start is kept");
        assert_eq!(
            d.push(b":3}\0"),
            vec![b"{\"id\":3}".to_vec()],
            "and completed by the next read"
        );
    }

    #[test]
    fn empty_frames_are_skipped_and_a_lone_nul_completes() {
        let mut d = FrameDecoder::new();
        assert_eq!(d.push(b"\0\0"), Vec::<Vec<u8>>::new(), "empty frames");
        assert!(d.push(b"{}").is_empty(), "no terminator yet");
        assert_eq!(d.push(b"\0"), vec![b"{}".to_vec()], "a lone NUL ends it");
    }

    #[test]
    fn multibyte_text_split_inside_a_character_survives() {
        let text = "{\"t\":\"↔ ünïcode\"}".as_bytes();
        let mut d = FrameDecoder::new();
        let (a, b) = text.split_at(8); // inside the three-byte arrow
        assert!(d.push(a).is_empty(), "partial");
        let mut rest = b.to_vec();
        rest.push(0);
        let frames = d.push(&rest);
        assert_eq!(frames.len(), 1, "one message");
        let v: Value = serde_json::from_slice(&frames[0]).unwrap_or(Value::Null);
        assert_eq!(v["t"], "↔ ünïcode", "the bytes are joined before decoding");
    }

    #[test]
    fn encoded_frames_end_with_one_nul_and_decode_back() {
        let msg = json!({"id": 7, "method": "Runtime.evaluate", "params": {"expression": "1+1"}});
        let bytes = encode_frame(&msg);
        assert_eq!(bytes.last(), Some(&0u8), "terminated by NUL");
        assert_eq!(
            bytes.iter().filter(|&&b| b == 0).count(),
            1,
            "JSON text itself has no NUL (serde_json escapes it)"
        );
        let mut d = FrameDecoder::new();
        let frames = d.push(&bytes);
        let back: Value = serde_json::from_slice(&frames[0]).unwrap_or(Value::Null);
        assert_eq!(back, msg, "round trip");
    }

    #[test]
    fn truthiness_follows_javascript() {
        for (v, want) in [
            (json!(null), false),
            (json!(false), false),
            (json!(0), false),
            (json!(""), false),
            (json!(true), true),
            (json!(2), true),
            (json!("x"), true),
            (json!([]), true),
            (json!({}), true),
        ] {
            assert_eq!(truthy(&v), want, "truthy({v})");
        }
    }
}
