//! Minimal protocol clients for the load generators of issue 22 (`vendor_flood`,
//! `vendor_compare`): the reference vendor's wire protocol spoken directly over TCP
//! ([`mod@reference`]), MQTT 3.1.1 with QoS 1 ([`mqtt`]) and the NATS core text protocol
//! ([`nats`]), so one generator drives all three servers the same way. Each client does only
//! what a closed-loop load needs (connect, subscribe, publish, acknowledge) and fails with a
//! typed [`LoadError`] on anything else; none of them reconnects.
//!
//! Every message of the load generators is a [`Payload`]: 100 bytes carrying its sequence
//! number and the instant it was sent, so the receiving side computes the send → receive
//! latency on the process's one clock.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};

pub mod mqtt;
pub mod nats;
pub mod reference;

/// Why a load client failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The socket failed (connect, read or write).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The reference protocol's codec or the server refused (its typed error).
    #[error("reference vendor: {0}")]
    Reference(#[from] im_service::ServiceError),
    /// The server sent something the protocol does not allow at this point.
    #[error("{protocol}: unexpected {what}")]
    Unexpected {
        /// Which protocol client saw it.
        protocol: &'static str,
        /// What arrived, for the report.
        what: String,
    },
    /// The reference server closed the connection with this `Fatal` frame.
    #[error("reference vendor closed the connection: {0}")]
    Fatal(im_service::ServiceError),
    /// The server closed the connection.
    #[error("{0}: connection closed by the server")]
    Closed(&'static str),
    /// An MQTT server refused the connection (CONNACK return code) or the subscription.
    #[error("MQTT: refused with return code {0:#04x}")]
    MqttRefused(u8),
    /// A NATS server answered `-ERR`.
    #[error("NATS: server error {0}")]
    NatsErr(String),
    /// A payload that the load generator did not send.
    #[error("malformed payload: {0}")]
    Payload(String),
}

/// Bytes of every load message.
pub const PAYLOAD_LEN: usize = 100;

/// Digits of each number at the start of a payload.
const DIGITS: usize = 20;

/// A load message: its sequence number within its pair and when it was sent (nanoseconds
/// after the generator's epoch), as ASCII digits, then filler up to [`PAYLOAD_LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Position in the pair's stream (0, 1, 2 …).
    pub seq: u64,
    /// Nanoseconds from the epoch to the send.
    pub sent_nanos: u64,
}

impl Payload {
    /// Message `seq`, sent now (relative to `epoch`).
    pub fn now(seq: u64, epoch: Instant) -> Self {
        Self {
            seq,
            sent_nanos: epoch.elapsed().as_nanos() as u64,
        }
    }

    /// The 100 ASCII bytes (ASCII so that the reference vendor carries it as text).
    pub fn encode(&self) -> String {
        let mut text = format!("{:0DIGITS$}{:0DIGITS$}", self.seq, self.sent_nanos);
        text.extend(std::iter::repeat_n('x', PAYLOAD_LEN - 2 * DIGITS));
        text
    }

    /// Reads back what [`Payload::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, LoadError> {
        if bytes.len() != PAYLOAD_LEN {
            return Err(LoadError::Payload(format!("{} bytes", bytes.len())));
        }
        let number = |range: std::ops::Range<usize>| {
            std::str::from_utf8(&bytes[range])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| LoadError::Payload("no sequence number or send time".into()))
        };
        Ok(Self {
            seq: number(0..DIGITS)?,
            sent_nanos: number(DIGITS..2 * DIGITS)?,
        })
    }

    /// Send → now, on the epoch's clock.
    pub fn latency(&self, epoch: Instant) -> Duration {
        epoch
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.sent_nanos))
    }
}

/// Opens a TCP connection to `addr` with Nagle off, from `source` if given (any address of
/// 127.0.0.0/8 works on loopback: a flood from many peers without many machines).
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, LoadError> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_is_100_bytes_and_reads_back() {
        let p = Payload {
            seq: 42,
            sent_nanos: 1_234_567,
        };
        let text = p.encode();
        assert_eq!(text.len(), PAYLOAD_LEN);
        assert_eq!(Payload::decode(text.as_bytes()).unwrap(), p);
        assert!(Payload::decode(b"short").is_err());
    }
}
