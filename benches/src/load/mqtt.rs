//! A minimal MQTT 3.1.1 client (OASIS standard, 2014): `CONNECT` with a clean session,
//! `SUBSCRIBE` at QoS 1, `PUBLISH` at QoS 1 and the `PUBACK`s both ways; nothing else (no
//! QoS 2, no retained messages, no will, no keep-alive pings: a run is far shorter than the
//! keep-alive it announces). Enough to load a broker the way the table did
//! ("Mosquitto QoS1").

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::LoadError;

const PROTOCOL: &str = "MQTT";

/// Control packet types (the high nibble of the first byte).
const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;

/// Keep-alive announced in `CONNECT`, in seconds (no pings are sent within a run).
const KEEP_ALIVE_SECS: u16 = 600;

/// Largest packet accepted from the broker (a load message is ~120 bytes).
const MAX_PACKET: usize = 64 * 1024;

/// One packet from the broker: its first byte and its body (after the remaining length).
#[derive(Debug)]
pub struct Packet {
    /// Type (high nibble) and flags (low nibble).
    pub header: u8,
    /// The variable header and payload.
    pub body: Vec<u8>,
}

impl Packet {
    fn kind(&self) -> u8 {
        self.header >> 4
    }
}

/// The reading half of a connection.
pub struct MqttReader {
    read: BufReader<OwnedReadHalf>,
}

/// The writing half of a connection; packet ids count up from 1 (skipping 0).
pub struct MqttWriter {
    write: BufWriter<OwnedWriteHalf>,
    next_id: u16,
}

/// A message the broker delivered.
#[derive(Debug)]
pub struct Delivery {
    /// Its packet id (to acknowledge with [`MqttWriter::puback`]); `None` at QoS 0.
    pub packet_id: Option<u16>,
    /// The application payload.
    pub payload: Vec<u8>,
}

/// Connects and waits for an accepting `CONNACK`.
pub async fn connect(
    addr: SocketAddr,
    client_id: &str,
) -> Result<(MqttReader, MqttWriter), LoadError> {
    let (read, write) = super::connect(addr, None).await?.into_split();
    let mut reader = MqttReader {
        read: BufReader::new(read),
    };
    let mut writer = MqttWriter {
        write: BufWriter::new(write),
        next_id: 0,
    };
    let mut body = Vec::new();
    put_str(&mut body, "MQTT");
    body.push(4); // protocol level 4: 3.1.1
    body.push(0x02); // connect flags: clean session
    body.extend_from_slice(&KEEP_ALIVE_SECS.to_be_bytes());
    put_str(&mut body, client_id);
    writer.packet(CONNECT << 4, &body).await?;
    writer.flush().await?;
    let ack = reader.packet().await?;
    match (ack.kind(), ack.body.as_slice()) {
        (CONNACK, [_, 0]) => Ok((reader, writer)),
        (CONNACK, [_, code]) => Err(LoadError::MqttRefused(*code)),
        _ => Err(unexpected(&ack)),
    }
}

impl MqttReader {
    /// The next packet.
    pub async fn packet(&mut self) -> Result<Packet, LoadError> {
        let header = match self.read.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(LoadError::Closed(PROTOCOL));
            }
            Err(e) => return Err(e.into()),
        };
        // Remaining length: 7 bits a byte, low first, at most 4 bytes.
        let mut len = 0usize;
        for i in 0..4 {
            let b = self.read.read_u8().await?;
            len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
            if i == 3 {
                return Err(unexpected(&"a remaining length over 4 bytes"));
            }
        }
        if len > MAX_PACKET {
            return Err(unexpected(&format_args!("a packet of {len} bytes")));
        }
        let mut body = vec![0; len];
        self.read.read_exact(&mut body).await?;
        Ok(Packet { header, body })
    }

    /// Whether bytes the broker sent are already read and waiting here: a receiver writes
    /// its acknowledgements out only when none are (one write for a burst of deliveries,
    /// as the reference server coalesces its flushes).
    pub fn has_buffered(&self) -> bool {
        !self.read.buffer().is_empty()
    }

    /// The next `PUBACK`'s packet id.
    pub async fn puback(&mut self) -> Result<u16, LoadError> {
        let p = self.packet().await?;
        match (p.kind(), p.body.as_slice()) {
            (PUBACK, [hi, lo]) => Ok(u16::from_be_bytes([*hi, *lo])),
            _ => Err(unexpected(&p)),
        }
    }

    /// The next `SUBACK`: `Ok` if QoS 1 (or 0) was granted.
    pub async fn suback(&mut self) -> Result<(), LoadError> {
        let p = self.packet().await?;
        match (p.kind(), p.body.as_slice()) {
            (SUBACK, [_, _, code]) if *code <= 1 => Ok(()),
            (SUBACK, [_, _, code]) => Err(LoadError::MqttRefused(*code)),
            _ => Err(unexpected(&p)),
        }
    }

    /// The next `PUBLISH` the broker delivers.
    pub async fn delivery(&mut self) -> Result<Delivery, LoadError> {
        let p = self.packet().await?;
        if p.kind() != PUBLISH {
            return Err(unexpected(&p));
        }
        let qos = (p.header >> 1) & 0x03;
        let bad = || unexpected(&"a truncated PUBLISH");
        let topic_len = usize::from(u16::from_be_bytes([
            *p.body.first().ok_or_else(bad)?,
            *p.body.get(1).ok_or_else(bad)?,
        ]));
        let mut at = 2 + topic_len;
        let packet_id = if qos > 0 {
            let id = p.body.get(at..at + 2).ok_or_else(bad)?;
            at += 2;
            Some(u16::from_be_bytes([id[0], id[1]]))
        } else {
            None
        };
        let payload = p.body.get(at..).ok_or_else(bad)?.to_vec();
        Ok(Delivery { packet_id, payload })
    }
}

impl MqttWriter {
    fn next_packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    /// Buffers one packet: `header`, the remaining length, `body`.
    async fn packet(&mut self, header: u8, body: &[u8]) -> Result<(), LoadError> {
        let mut len = body.len();
        let mut fixed = vec![header];
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                b |= 0x80;
            }
            fixed.push(b);
            if len == 0 {
                break;
            }
        }
        self.write.write_all(&fixed).await?;
        self.write.write_all(body).await?;
        Ok(())
    }

    /// Subscribes to `topic` at QoS 1 (flushed; wait with [`MqttReader::suback`]).
    pub async fn subscribe(&mut self, topic: &str) -> Result<(), LoadError> {
        let mut body = self.next_packet_id().to_be_bytes().to_vec();
        put_str(&mut body, topic);
        body.push(1);
        // SUBSCRIBE's fixed-header flags are 0b0010 (required by the standard).
        self.packet(SUBSCRIBE << 4 | 0x02, &body).await?;
        self.flush().await
    }

    /// Publishes `payload` to `topic` at QoS 1 (flushed); returns its packet id, which the
    /// broker's `PUBACK` names.
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<u16, LoadError> {
        let id = self.next_packet_id();
        let mut body = Vec::with_capacity(4 + topic.len() + payload.len());
        put_str(&mut body, topic);
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(payload);
        self.packet(PUBLISH << 4 | 0x02, &body).await?;
        self.flush().await?;
        Ok(id)
    }

    /// Acknowledges a QoS 1 delivery (buffered: flush after a burst).
    pub async fn puback(&mut self, packet_id: u16) -> Result<(), LoadError> {
        self.packet(PUBACK << 4, &packet_id.to_be_bytes()).await
    }

    /// Writes out what is buffered.
    pub async fn flush(&mut self) -> Result<(), LoadError> {
        Ok(self.write.flush().await?)
    }
}

/// A UTF-8 string as MQTT encodes it: a 2-byte length, then the bytes.
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn unexpected(what: &dyn std::fmt::Debug) -> LoadError {
    LoadError::Unexpected {
        protocol: PROTOCOL,
        what: format!("{what:?}").chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A scripted broker: accepts one connection, reads `expect` bytes, answers `reply`.
    async fn broker(
        script: Vec<(usize, Vec<u8>)>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for (expect, reply) in script {
                let mut buf = vec![0; expect];
                s.read_exact(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf);
                s.write_all(&reply).await.unwrap();
            }
            seen
        });
        (addr, task)
    }

    #[tokio::test]
    async fn connect_subscribe_and_a_delivery_follow_the_standard() {
        // CONNECT for client id "r0": 2+4 name, level, flags, keep-alive, 2+2 id = 14 bytes.
        let connect_len = 2 + 14;
        // SUBSCRIBE to "t": id, 2+1 topic, QoS = 6 bytes.
        let subscribe_len = 2 + 6;
        let delivery = [0x32, 2 + 1 + 2 + 3, 0, 1, b't', 0, 7, b'a', b'b', b'c'];
        let (addr, seen) = broker(vec![
            (connect_len, vec![0x20, 2, 0, 0]),
            (
                subscribe_len,
                [vec![0x90, 3, 0, 1, 1], delivery.to_vec()].concat(),
            ),
            (4, vec![]),
        ])
        .await;
        let (mut r, mut w) = connect(addr, "r0").await.unwrap();
        w.subscribe("t").await.unwrap();
        r.suback().await.unwrap();
        let d = r.delivery().await.unwrap();
        assert_eq!((d.packet_id, d.payload.as_slice()), (Some(7), &b"abc"[..]));
        assert!(!r.has_buffered());
        w.puback(7).await.unwrap();
        w.flush().await.unwrap();
        let seen = seen.await.unwrap();
        assert_eq!(
            &seen[..connect_len],
            &[
                0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0x02, 0x58, 0, 2, b'r', b'0'
            ]
        );
        assert_eq!(
            &seen[connect_len..connect_len + subscribe_len],
            &[0x82, 6, 0, 1, 0, 1, b't', 1]
        );
        assert_eq!(&seen[connect_len + subscribe_len..], &[0x40, 2, 0, 7]);
    }

    #[tokio::test]
    async fn a_refused_connection_and_a_refused_subscription_are_typed() {
        let (addr, _seen) = broker(vec![(16, vec![0x20, 2, 0, 5])]).await;
        assert!(matches!(
            connect(addr, "r0").await,
            Err(LoadError::MqttRefused(5))
        ));
        let (addr, _seen) = broker(vec![
            (16, vec![0x20, 2, 0, 0]),
            (8, vec![0x90, 3, 0, 1, 0x80]),
        ])
        .await;
        let (mut r, mut w) = connect(addr, "r0").await.unwrap();
        w.subscribe("t").await.unwrap();
        assert!(matches!(
            r.suback().await,
            Err(LoadError::MqttRefused(0x80))
        ));
        assert!(matches!(r.packet().await, Err(LoadError::Closed(_))));
    }
}
