//! The terminal view of the demo: the message flow as it happens, and after each step a
//! panel with the conversation list (unread counts and replies seen per housekeeper) and
//! QC's figures (vendor verdict, send latency, response rate, firing alerts). Plain lines,
//! so it reads the same in a terminal and in a CI log. Message bodies are shown: this is the demo's UI.

use im_qc::Verdict;
use im_service::{Timestamp, UserId};

use crate::wiring::Environment;

/// What a panel shows.
#[derive(Debug, Clone)]
pub struct View {
    /// The worst verdict any housekeeper's monitor holds.
    pub verdict: Verdict,
    /// Largest send p99 over the last minute, ms.
    pub send_p99_ms: Option<f64>,
    /// Response rate so far.
    pub response_rate: Option<f64>,
    /// Alerts firing now.
    pub firing: Vec<String>,
    /// Per housekeeper: (tenant, unread) rows.
    pub conversations: Vec<(String, Vec<(String, u64)>)>,
    /// Per housekeeper: replies tenants have read so far ("seen").
    pub seen: std::collections::BTreeMap<String, u64>,
    /// Clients (devices) online.
    pub online: usize,
    /// Clients (devices).
    pub people: usize,
    /// Messages sent so far.
    pub sent: usize,
    /// Messages received so far.
    pub received: usize,
}

/// Prints the live view (or nothing, with `--json`).
#[derive(Debug)]
pub struct Panel {
    live: bool,
    vendor: String,
}

/// `HH:MM` of a server time (UTC).
fn clock_time(t: Timestamp) -> String {
    let minutes = t.as_millis().div_euclid(60_000);
    format!(
        "{:02}:{:02}",
        minutes.div_euclid(60).rem_euclid(24),
        minutes.rem_euclid(60)
    )
}

impl Panel {
    /// A panel; `live == false` prints nothing.
    pub fn new(live: bool, vendor: &str) -> Self {
        Self {
            live,
            vendor: vendor.to_owned(),
        }
    }

    /// The banner.
    pub fn start(&self, env: &Environment, tenants: usize, housekeepers: usize) {
        if !self.live {
            return;
        }
        println!("im-layers customer-service demo");
        println!(
            "  vendor: {}{}",
            self.vendor,
            env.vendor_addr()
                .map_or(String::new(), |a| format!(" on {a}"))
        );
        if let Some(route) = env.route() {
            println!("  server: {route}");
        }
        if let Some(url) = env.archive_url() {
            println!("  company archive: {url} (fed by the vendor's signed callbacks)");
        }
        println!(
            "  {tenants} tenants, {housekeepers} housekeepers, a working day with an outage at noon\n"
        );
    }

    /// A new hour of the scripted day.
    pub fn hour(&self, h: u32) {
        if self.live {
            println!("\n=== {h:02}:00 ===");
        }
    }

    /// A message on its way (`from`: the sender, and their device when not the first).
    pub fn message(&self, at: Timestamp, from: &str, to: &UserId, text: &str) {
        if self.live {
            println!("  {} {from:>10} -> {to:<10} {text}", clock_time(at));
        }
    }

    /// Something worth telling.
    pub fn note(&self, text: &str) {
        if self.live {
            println!("  ** {text}");
        }
    }

    /// The panel after a step.
    pub fn render(&self, v: &View) {
        if !self.live {
            return;
        }
        let rate = v
            .response_rate
            .map_or("-".to_owned(), |r| format!("{:.0}%", r * 100.0));
        let p99 = v
            .send_p99_ms
            .map_or("-".to_owned(), |p| format!("{p:.1} ms"));
        let alerts = if v.firing.is_empty() {
            "none".to_owned()
        } else {
            v.firing.join(", ")
        };
        println!(
            "  +- QC: vendor {:?} | send p99 {p99} | response rate {rate} | alerts: {alerts} | online {}/{} | sent {} received {}",
            v.verdict, v.online, v.people, v.sent, v.received
        );
        for (keeper, rows) in &v.conversations {
            let list: Vec<String> = rows
                .iter()
                .map(|(t, unread)| {
                    if *unread > 0 {
                        format!("{t} ({unread} unread)")
                    } else {
                        t.clone()
                    }
                })
                .collect();
            let seen = v.seen.get(keeper).copied().unwrap_or(0);
            println!("  |  {keeper} (seen {seen}): {}", list.join(", "));
        }
    }
}
