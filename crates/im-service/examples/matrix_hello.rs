//! The Matrix adapter on its own, through the vendor-neutral `Vendor` trait: alice sends bob a
//! message on a real Synapse; bob logs in later, gets it in his offline batch, acks it, and
//! only then goes online (ACK-online). Start Synapse and register the accounts first:
//!
//! ```sh
//! tests/synapse/synapse.sh start                      # 127.0.0.1:8008, server name localhost
//! tests/synapse/synapse.sh register alice alice-secret
//! tests/synapse/synapse.sh register bob bob-secret
//! cargo run -p im-service --features matrix --example matrix_hello   # IM_SYNAPSE_URL for another
//! ```
use std::time::Duration;

use anyhow::{Context, bail};
use im_service::matrix::{MatrixClient, MatrixConfig, MatrixVendor};
use im_service::{
    Content, ConversationId, Credentials, OutgoingMessage, Timestamp, UserId, Vendor,
};

/// A client of `user` on `vendor`, logged in (bounded: an unreachable server fails in 10 s).
async fn logged_in(
    vendor: &MatrixVendor,
    user: &str,
    secret: &str,
) -> anyhow::Result<MatrixClient> {
    let client = vendor.client();
    let credentials = Credentials::new(user, secret);
    tokio::time::timeout(Duration::from_secs(10), client.login(&credentials))
        .await
        .map_err(|_| anyhow::anyhow!("{user}'s login: no answer within 10 s"))?
        .with_context(|| format!("{user} cannot log in: is Synapse running with this account?"))?;
    Ok(client)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("IM_SYNAPSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8008".into());
    let vendor = MatrixVendor::new(MatrixConfig::new(url, "localhost"));
    let alice = logged_in(&vendor, "alice", "alice-secret").await?;
    let conversation = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let text = format!(
        "hello bob over Matrix (from process {})",
        std::process::id()
    );
    let message = OutgoingMessage::new(
        conversation,
        Content::text(&text),
        Timestamp::from_millis(0),
    );
    let receipt = alice.send(&message).await.context("alice's send")?;
    println!(
        "alice sent {} (the server acknowledged it)",
        receipt.server_id.as_str()
    );
    alice.logout().await.context("alice's logout")?;

    let bob = logged_in(&vendor, "bob", "bob-secret").await?;
    // Offline first, in pages; each ack only after its batch is handled.
    let mut found = false;
    loop {
        let batch = bob.pull_offline(50).await.context("bob's offline pull")?;
        found |= batch
            .messages
            .iter()
            .any(|m| m.content == Content::text(&text));
        if let Some(ack) = &batch.ack {
            bob.ack_offline(ack).await.context("bob's ack")?;
        }
        if batch.left == 0 {
            break;
        }
    }
    if !found {
        bail!("bob's offline batch did not hold alice's message");
    }
    bob.go_online().await.context("bob goes online")?;
    println!("bob received {text:?} offline, acknowledged it, and is online");
    bob.logout().await.context("bob's logout")?;
    println!("matrix_hello: ok");
    Ok(())
}
