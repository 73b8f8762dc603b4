//! The company archive as a client's history source: messages older than the vendor keeps
//! (the `Old` window, more than 30 days) are read from `im-archive` through
//! `im_arch::ArchiveHistory`. The example first plays the vendor: it posts one signed
//! `message.stored` callback for a message bob sent alice 40 days ago. Then alice's
//! `ImClient` reads that conversation's `Old` window, which comes from the archive.
//!
//! Start the archive as README.md says, then run the example in another terminal:
//!
//! ```sh
//! cargo run -p im-archive -- --data-dir /tmp/archive --vendor reference=SECRET --token TOKEN=alice
//! cargo run -p im-archive --example archive_history   # IM_ARCHIVE_URL=http://host:port otherwise
//! ```
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use im_arch::{ArchiveHistory, HistoryWindow, ImClient};
use im_service::webhook::{CallbackPayload, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use im_service::{ClientMsgId, Clock, Content, ConversationId, Credentials, Message};
use im_service::{ServerMsgId, SystemClock, Token, UserId, memory::MemoryVendor};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("IM_ARCHIVE_URL").unwrap_or_else(|_| "http://127.0.0.1:8090".into());
    let conversation = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let id = format!("example-{}", std::process::id());
    let then = SystemClock.now().minus(Duration::from_secs(40 * 24 * 3600));
    let message = Message {
        server_id: ServerMsgId::new(&id),
        client_id: ClientMsgId::new(&id),
        conversation: conversation.clone(),
        sender: UserId::new("bob"),
        seq: None,
        server_time: then,
        client_time: then,
        content: Content::text("do you remember, 40 days ago?"),
    };

    // The vendor's callback, signed with the vendor's secret (`--vendor reference=SECRET`).
    let body = serde_json::to_vec(&CallbackPayload::message_stored("reference", message))?;
    let now = SystemClock.now().as_millis() / 1000;
    let post = reqwest::Client::new()
        .post(format!("{url}/v1/callbacks/reference"))
        .header(TIMESTAMP_HEADER, now.to_string())
        .header(SIGNATURE_HEADER, sign(b"SECRET", now, &body))
        .body(body)
        .timeout(Duration::from_secs(5))
        .send();
    let answer = post
        .await
        .with_context(|| format!("no archive at {url} (see README.md)"))?;
    answer
        .error_for_status()
        .context("the archive refused the callback")?;

    // Alice's client: the vendor is not asked for the Old window (any vendor goes here), the
    // archive is, with alice's archive token (`--token TOKEN=alice`).
    let archive = ArchiveHistory::new(url.clone(), Token::new("TOKEN"))?;
    let vendor = MemoryVendor::default();
    let client = ImClient::builder(Arc::new(vendor.client()), Credentials::new("alice", "-"))
        .history_source(HistoryWindow::Old, Some(Arc::new(archive)))
        .build();
    let read = client.history(&conversation, HistoryWindow::Old, 50, None);
    let page = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .context("timed out")??;
    let ours = page.messages.iter().find(|m| m.server_id.as_str() == id);
    let m = ours.with_context(|| format!("not in alice's Old history: {page:?}"))?;
    let n = page.messages.len();
    println!(
        "alice's Old history ({n} messages) has {:?} from {}",
        m.content, m.sender
    );
    println!("archive_history: ok");
    Ok(())
}
