//! Quickstart: two clients (alice and bob) on the reference vendor over TCP, each with its own
//! on-disk `LogStore` (the default durable store); alice sends bob a message and bob receives it.
//!
//! Start the reference vendor (README.md), then run the example in another terminal:
//!
//! ```sh
//! cargo run -p im-vendor-sim -- --user alice:alice-secret --user bob:bob-secret
//! cargo run -p im-arch --example quickstart    # IM_VENDOR_ADDR=host:port for another server
//! ```
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use im_arch::{ClientEvent, ImClient, LogStore};
use im_service::reference::{ReferenceConfig, ReferenceVendor};
use im_service::{Content, ConversationId, Credentials, UserId};

/// A client of `user` on `vendor` with its own `LogStore` under `dir`, logged in.
async fn online(
    vendor: &ReferenceVendor,
    dir: &Path,
    user: &str,
    secret: &str,
) -> anyhow::Result<ImClient> {
    let store = LogStore::open(dir.join(user))?;
    let credentials = Credentials::new(user, secret);
    let client = ImClient::builder(Arc::new(vendor.client()), credentials)
        .store(Arc::new(store))
        .build();
    let what = || format!("{user} cannot log in: is im-vendor-sim running with these accounts?");
    // `login` retries an unreachable server with backoff: bound the wait.
    let login = tokio::time::timeout(Duration::from_secs(10), client.login()).await;
    login.with_context(what)?.with_context(what)?;
    Ok(client)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("IM_VENDOR_ADDR").unwrap_or_else(|_| "127.0.0.1:7700".into());
    let addr: SocketAddr = addr.parse().context("bad IM_VENDOR_ADDR")?;
    // Capabilities come from the server itself.
    let vendor = ReferenceVendor::discover(addr, ReferenceConfig::default())
        .await
        .with_context(|| format!("no reference vendor at {addr} (see README.md)"))?;
    let dir = tempfile::tempdir()?;
    let alice = online(&vendor, dir.path(), "alice", "alice-secret").await?;
    let bob = online(&vendor, dir.path(), "bob", "bob-secret").await?;
    let mut bob_events = bob.subscribe();

    let conversation = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let text = format!("hello bob (from process {})", std::process::id());
    alice.send(conversation, Content::text(&text)).await?;

    // Bob's events: wait (at most 10 s) for alice's message.
    let received = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = bob_events.next().await {
            match &*event {
                ClientEvent::Message(m) if m.message.content == Content::text(&text) => {
                    return Some(m.clone());
                }
                _ => {}
            }
        }
        None
    });
    let Ok(Some(m)) = received.await else {
        bail!("bob did not receive alice's message within 10 s");
    };
    let (content, from) = (&m.message.content, &m.message.sender);
    println!("bob received {content:?} from {from} ({:?})", m.origin);
    alice.logout().await;
    bob.logout().await;
    println!("quickstart: ok");
    Ok(())
}
