//! A TCP listener for the workspace's HTTP servers (the archive, QC's metrics server) that
//! holds at most a fixed number of connections at once: past it a new connection is closed
//! as soon as it is accepted, and the refusal is logged (rate-limited). Each open
//! connection costs a task and its buffers, so a stranger opening idle connections by the
//! thousand would otherwise grow the server without bound; requests-in-flight limits do not
//! see an idle connection at all.
//!
//! Implements axum's [`Listener`](axum::serve::Listener); the peer's address reaches
//! handlers as `ConnectInfo<`[`Peer`]`>`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::throttle::WarnLimit;

/// Refusal warnings printed per second at most.
const WARNINGS_PER_SECOND: u32 = 10;

/// A [`TcpListener`] holding at most `max` connections at once (see the module doc).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use axum::{Router, extract::ConnectInfo, routing::get};
/// use im_service::listener::{BoundedListener, Peer};
///
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let listener = BoundedListener::new(tcp, 256);
/// let app = Router::new().route("/", get(|ConnectInfo(peer): ConnectInfo<Peer>| async move {
///     format!("hello {}", peer.0)
/// }));
/// let server = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>());
/// # drop(server);
/// # Ok::<(), std::io::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct BoundedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    warnings: WarnLimit,
}

impl BoundedListener {
    /// Wraps `inner`, allowing `max` connections at once (at least one).
    pub fn new(inner: TcpListener, max: usize) -> Self {
        let max = max.max(1);
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            max,
            warnings: WarnLimit::new(WARNINGS_PER_SECOND),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoundedStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        return (
                            BoundedStream {
                                stream,
                                _slot: slot,
                            },
                            peer,
                        );
                    }
                    Err(_) => {
                        // Dropping the stream closes it: the peer sees the connection end.
                        drop(stream);
                        if let Some(suppressed) = self.warnings.allow() {
                            tracing::warn!(
                                %peer,
                                max = self.max,
                                suppressed,
                                "connection refused: too many open connections"
                            );
                        }
                    }
                },
                // Out of file descriptors and the like: wait for some to free up instead of
                // spinning (as axum's own TCP listener does).
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection; its slot frees when it is dropped.
#[derive(Debug)]
pub struct BoundedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The peer of a connection accepted by a [`BoundedListener`], for handlers
/// (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, BoundedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, BoundedListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Writes one HTTP/1.1 request on `c` and reads the status line; empty when the server
    /// closed the connection (an end of stream or a reset).
    async fn status(c: &mut TcpStream) -> String {
        if c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .is_err()
        {
            return String::new();
        }
        let mut buf = vec![0; 256];
        let read = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("an answer or a close within the deadline");
        let n = read.unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    }

    /// Two slots: two kept-alive connections are served, a third is closed at once, and
    /// once one of the two goes its slot serves a new connection.
    #[tokio::test]
    async fn a_connection_past_the_bound_is_closed_and_a_freed_slot_serves_again() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let app = Router::new().route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<Peer>| async move { peer.0.ip().to_string() }),
        );
        let server = tokio::spawn(async move {
            axum::serve(
                BoundedListener::new(tcp, 2),
                app.into_make_service_with_connect_info::<Peer>(),
            )
            .await
        });
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            status(&mut a).await,
            "HTTP/1.1 200 OK",
            "the first connection is served"
        );
        assert_eq!(
            status(&mut b).await,
            "HTTP/1.1 200 OK",
            "the second is served"
        );
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            status(&mut c).await,
            "",
            "a third connection is closed without an answer"
        );
        drop(a);
        // The slot frees once the server notices the close: retry within a deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut d = TcpStream::connect(addr).await.unwrap();
            if status(&mut d).await == "HTTP/1.1 200 OK" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a freed slot never served a new connection"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            status(&mut b).await,
            "HTTP/1.1 200 OK",
            "the kept connection still works"
        );
        server.abort();
    }
}
