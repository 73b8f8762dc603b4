//! The `im-archive` command line README.md shows does what README.md says: "signed vendor
//! callbacks in, history API out", with the vendor secret and the bearer token it names.

// Test helpers outside #[test] fns: a panic is how they fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use im_service::webhook::{self, CallbackPayload, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use im_service::{
    ClientMsgId, Clock, Content, ConversationId, Message, ServerMsgId, SystemClock, UserId,
};

/// Kills the archive however the test ends.
struct Archive(Child);

impl Drop for Archive {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The arguments after `cargo run -p im-archive --` on README.md's line.
fn readme_args() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let line = readme
        .lines()
        .find_map(|l| l.split_once("cargo run -p im-archive --").map(|(_, a)| a))
        .expect("README.md shows how to run im-archive");
    line.split('#')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The value after `flag` in `args`.
fn value<'a>(args: &'a [String], flag: &str) -> &'a str {
    args.windows(2)
        .find(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .unwrap_or_else(|| panic!("README's im-archive line has no {flag}"))
}

#[tokio::test]
async fn the_readme_command_line_takes_signed_callbacks_and_serves_history() {
    let mut args = readme_args();
    let (vendor, secret) = value(&args, "--vendor")
        .split_once('=')
        .expect("vendor=secret");
    let (vendor, secret) = (vendor.to_string(), secret.to_string());
    let (token, user) = value(&args, "--token").split_once('=').expect("token=user");
    let (token, user) = (token.to_string(), user.to_string());
    // Same flags, but a private data directory and a free port.
    let data = tempfile::tempdir().unwrap();
    let at = args
        .iter()
        .position(|a| a == "--data-dir")
        .expect("--data-dir");
    args[at + 1] = data.path().to_string_lossy().into_owned();
    args.extend(["--listen".to_string(), "127.0.0.1:0".to_string()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-archive"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn im-archive");
    let stdout = child.stdout.take().unwrap();
    let _archive = Archive(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), line)
        .await
        .expect("im-archive printed its address in time")
        .unwrap()
        .unwrap();
    let url = format!(
        "http://{}",
        line.trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
    );

    // A signed callback of a message in one of the token user's conversations is stored.
    let conv = ConversationId::direct(&UserId::new(&user), &UserId::new("readme-peer"));
    let now = SystemClock.now();
    let message = Message {
        server_id: ServerMsgId::new("readme-1"),
        client_id: ClientMsgId::new("readme-c1"),
        conversation: conv.clone(),
        sender: UserId::new("readme-peer"),
        seq: None,
        server_time: now,
        client_time: now,
        content: Content::text("hello from the README"),
    };
    let body = serde_json::to_vec(&CallbackPayload::message_stored(&vendor, message)).unwrap();
    let ts = webhook::unix_seconds(now);
    let http = reqwest::Client::new();
    let stored = http
        .post(format!("{url}/v1/callbacks/{vendor}"))
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(
            SIGNATURE_HEADER,
            webhook::sign(secret.as_bytes(), ts, &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        stored.status(),
        200,
        "a callback signed with README's secret"
    );

    // The history API answers the README's token with that message.
    let query = format!(
        "conversation={}&limit=10",
        conv.to_string().replace(':', "%3A")
    );
    let page = http
        .get(format!("{url}/v1/history?{query}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let status = page.status();
    let text = page.text().await.unwrap();
    assert_eq!(status, 200, "history with README's token: {text}");
    assert!(
        text.contains("hello from the README"),
        "the stored message is served: {text}"
    );
}
