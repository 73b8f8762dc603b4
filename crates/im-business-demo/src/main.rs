//! `cargo run -p im-business-demo`: a customer-service chat between a tenant and a
//! housekeeper, run end to end on the in-process reference vendor and printed as it happens.

mod wiring;

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use im_service::{
    Content, ConversationId, Origin, OutgoingMessage, ReceivedMessage, Vendor, VendorEvent,
};

/// Command-line flags of the demo.
#[derive(Debug, Parser)]
#[command(about = "im-layers demo: a tenant and a housekeeper chat through a rented IM vendor")]
struct Args {
    /// How many messages the tenant leaves while the housekeeper is away.
    #[arg(long, default_value_t = 3)]
    offline: usize,
    /// How many live question/answer rounds follow.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn show(m: &ReceivedMessage) {
    let body = match &m.message.content {
        Content::Text(t) => t.clone(),
        Content::Custom { type_tag, payload } => format!("<{type_tag}: {} bytes>", payload.len()),
    };
    let origin = match m.origin {
        Origin::Online => "live   ",
        Origin::Offline => "offline",
        Origin::History => "history",
    };
    let seq = m
        .message
        .seq
        .map_or_else(|| "-".to_string(), |s| s.to_string());
    println!("  [{origin}] {seq:>4} {:>10}: {body}", m.message.sender);
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let env = wiring::Environment::embedded();
    let tenant = env.user("tenant-ana");
    let keeper = env.user("keeper-li");
    let conv = ConversationId::direct(&tenant.user, &keeper.user);
    println!("im-layers demo on the `{}` vendor", env.vendor_name());

    let ana = env.client();
    ana.login(&tenant).await.context("tenant login")?;
    println!("\n{} writes while {} is away:", tenant.user, keeper.user);
    for i in 1..=args.offline {
        let text = format!("Hello, the kitchen tap is leaking ({i}/{})", args.offline);
        ana.send(&OutgoingMessage::new(
            conv.clone(),
            Content::text(&text),
            env.now(),
        ))
        .await?;
        println!("  sent: {text}");
    }

    // The housekeeper logs in and runs ACK-online: offline first, acknowledge, then online.
    let li = env.client();
    let mut li_events = li.take_events().context("event stream")?;
    li.login(&keeper).await.context("housekeeper login")?;
    println!(
        "\n{} logs in; offline messages first (newest first from the vendor):",
        keeper.user
    );
    let mut offline = Vec::new();
    loop {
        let batch = li.pull_offline(100).await?;
        offline.extend(batch.messages);
        if let Some(ack) = batch.ack {
            li.ack_offline(&ack).await?;
        }
        if batch.left == 0 {
            break;
        }
    }
    offline.sort_by_key(|m| m.seq);
    for m in offline {
        show(&ReceivedMessage {
            message: m,
            origin: Origin::Offline,
        });
    }
    li.go_online().await?;
    println!("\n{} is online; live conversation:", keeper.user);

    let mut received = 0;
    for round in 1..=args.rounds {
        let q = format!("Any update? ({round}/{})", args.rounds);
        ana.send(&OutgoingMessage::new(
            conv.clone(),
            Content::text(q),
            env.now(),
        ))
        .await?;
        match li_events.next().await {
            Some(VendorEvent::MessagePushed(m)) => {
                show(&ReceivedMessage {
                    message: m,
                    origin: Origin::Online,
                });
                received += 1;
            }
            other => bail!("expected a live push, got {other:?}"),
        }
        let a = format!("A plumber is booked for slot {round}.");
        let receipt = li
            .send(&OutgoingMessage::new(
                conv.clone(),
                Content::text(&a),
                env.now(),
            ))
            .await?;
        println!(
            "  [sent   ] {:>4} {:>10}: {a}",
            receipt.seq.map_or_else(String::new, |s| s.to_string()),
            keeper.user
        );
    }
    ana.logout().await?;
    li.logout().await?;
    println!(
        "\nsummary: {} offline + {received} live messages delivered, {} replies sent",
        args.offline, args.rounds
    );
    Ok(())
}
