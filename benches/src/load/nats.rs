//! A minimal NATS core client (the text protocol of nats-server 2.x): `INFO` read,
//! `CONNECT` without verbose acks, `SUB`, `PUB`, `MSG` and `PING`/`PONG`; nothing else (no
//! JetStream, no headers, no reconnection). "NATS core": at-most-once, no acknowledgement
//! of a delivery, which is the latency floor the issue compares the reference vendor with.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::LoadError;

const PROTOCOL: &str = "NATS";

/// Longest control line accepted (an `INFO` line is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

/// Largest message payload accepted.
const MAX_PAYLOAD: usize = 1024 * 1024;

/// The reading half of a connection.
pub struct NatsReader {
    read: BufReader<OwnedReadHalf>,
    line: String,
}

/// The writing half of a connection.
pub struct NatsWriter {
    write: BufWriter<OwnedWriteHalf>,
}

/// What the server sent, as far as this client needs to tell.
#[derive(Debug)]
pub enum Incoming {
    /// A delivered message's payload.
    Msg(Vec<u8>),
    /// The server's `PING` (answer with [`NatsWriter::pong`]).
    Ping,
    /// The server's `PONG` to our `PING`.
    Pong,
}

/// Connects, reads `INFO`, sends `CONNECT` and a `PING`, and waits for the `PONG` (the
/// server has processed `CONNECT` then).
pub async fn connect(addr: SocketAddr) -> Result<(NatsReader, NatsWriter), LoadError> {
    let (read, write) = super::connect(addr, None).await?.into_split();
    let mut reader = NatsReader {
        read: BufReader::new(read),
        line: String::new(),
    };
    let mut writer = NatsWriter {
        write: BufWriter::new(write),
    };
    let info = reader.line().await?;
    if !info.starts_with("INFO ") {
        return Err(unexpected(&info));
    }
    writer
        .raw(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false}\r\n")
        .await?;
    writer.ping().await?;
    reader.pong().await?;
    Ok((reader, writer))
}

impl NatsReader {
    /// The next control line, without its CRLF.
    async fn line(&mut self) -> Result<String, LoadError> {
        self.line.clear();
        let n = (&mut self.read)
            .take(MAX_LINE as u64)
            .read_line(&mut self.line)
            .await?;
        if n == 0 {
            return Err(LoadError::Closed(PROTOCOL));
        }
        if !self.line.ends_with("\r\n") {
            return Err(unexpected(&"a control line without CRLF (or too long)"));
        }
        Ok(self.line.trim_end_matches("\r\n").to_string())
    }

    /// The next thing the server sent; `-ERR` is [`LoadError::NatsErr`], `+OK` is skipped.
    pub async fn next(&mut self) -> Result<Incoming, LoadError> {
        loop {
            let line = self.line().await?;
            let mut words = line.split(' ');
            match words.next() {
                Some("MSG") => {
                    // MSG <subject> <sid> [reply-to] <#bytes>
                    let len: usize = words
                        .next_back()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n <= MAX_PAYLOAD)
                        .ok_or_else(|| unexpected(&line))?;
                    let mut payload = vec![0; len + 2];
                    self.read.read_exact(&mut payload).await?;
                    if !payload.ends_with(b"\r\n") {
                        return Err(unexpected(&"a payload without its CRLF"));
                    }
                    payload.truncate(len);
                    return Ok(Incoming::Msg(payload));
                }
                Some("PING") => return Ok(Incoming::Ping),
                Some("PONG") => return Ok(Incoming::Pong),
                Some("+OK") | Some("INFO") => {}
                Some("-ERR") => return Err(LoadError::NatsErr(line)),
                _ => return Err(unexpected(&line)),
            }
        }
    }

    /// Waits for a `PONG` (answering nothing else: used right after connecting).
    pub async fn pong(&mut self) -> Result<(), LoadError> {
        match self.next().await? {
            Incoming::Pong => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

impl NatsWriter {
    async fn raw(&mut self, bytes: &[u8]) -> Result<(), LoadError> {
        self.write.write_all(bytes).await?;
        Ok(())
    }

    /// Subscribes to `subject` as subscription `sid` (buffered).
    pub async fn sub(&mut self, subject: &str, sid: u32) -> Result<(), LoadError> {
        self.raw(format!("SUB {subject} {sid}\r\n").as_bytes())
            .await
    }

    /// Publishes `payload` to `subject` and flushes.
    pub async fn publish(&mut self, subject: &str, payload: &[u8]) -> Result<(), LoadError> {
        self.raw(format!("PUB {subject} {}\r\n", payload.len()).as_bytes())
            .await?;
        self.raw(payload).await?;
        self.raw(b"\r\n").await?;
        self.flush().await
    }

    /// Sends `PING` and flushes (the server answers `PONG` once it processed what came
    /// before).
    pub async fn ping(&mut self) -> Result<(), LoadError> {
        self.raw(b"PING\r\n").await?;
        self.flush().await
    }

    /// Answers the server's `PING` and flushes.
    pub async fn pong(&mut self) -> Result<(), LoadError> {
        self.raw(b"PONG\r\n").await?;
        self.flush().await
    }

    /// Writes out what is buffered.
    pub async fn flush(&mut self) -> Result<(), LoadError> {
        Ok(self.write.flush().await?)
    }
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

    #[tokio::test]
    async fn a_message_a_ping_and_an_error_are_read_as_such() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"INFO {\"server_id\":\"x\"}\r\n")
                .await
                .unwrap();
            let mut lines = Vec::new();
            for _ in 0..2 {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                lines.push(line);
            }
            w.write_all(b"+OK\r\nPONG\r\nMSG a.b 1 5\r\nhello\r\nMSG a.b 1 r.x 2\r\nhi\r\nPING\r\n-ERR 'Authorization Violation'\r\n")
                .await
                .unwrap();
            lines
        });
        let (mut r, _w) = connect(addr).await.unwrap();
        assert!(matches!(r.next().await.unwrap(), Incoming::Msg(p) if p == b"hello"));
        assert!(matches!(r.next().await.unwrap(), Incoming::Msg(p) if p == b"hi"));
        assert!(matches!(r.next().await.unwrap(), Incoming::Ping));
        assert!(
            matches!(r.next().await, Err(LoadError::NatsErr(e)) if e.contains("Authorization"))
        );
        let lines = server.await.unwrap();
        assert!(lines[0].starts_with("CONNECT {") && lines[0].contains("\"verbose\":false"));
        assert_eq!(lines[1], "PING\r\n");
    }
}
