//! TEMPORARY stand-in for `im_vendor_sim::FaultProxy` (being written on another branch),
//! with the subset of its API the demo uses; removed once it lands.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy that can cut every connection and refuse new ones for a while.
pub struct FaultProxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    conns: Vec<JoinHandle<()>>,
    refuse_until: Option<tokio::time::Instant>,
}

impl FaultProxy {
    /// A proxy on 127.0.0.1:0 in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let refuse = st
                    .lock()
                    .refuse_until
                    .is_some_and(|u| tokio::time::Instant::now() < u);
                if refuse {
                    drop(down);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                let mut s = st.lock();
                s.conns.retain(|t| !t.is_finished());
                s.conns.push(task);
            }
        });
        Ok(FaultProxy {
            addr,
            accept,
            state,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection and refuses new ones for `d`.
    pub fn outage(&self, d: Duration) {
        let mut s = self.state.lock();
        s.refuse_until = Some(tokio::time::Instant::now() + d);
        for t in s.conns.drain(..) {
            t.abort();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.state.lock().conns.drain(..) {
            t.abort();
        }
    }
}
