//! The fault-injecting proxy against a small echo server on 127.0.0.1:0: each fault is
//! observable from both ends, heal restores forwarding, and dropping the proxy closes every
//! connection it held (none leaks on the upstream side).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use im_vendor_sim::{FaultProxy, ProxyConfig, ProxyStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Overall deadline of any single wait in these tests.
const DEADLINE: Duration = Duration::from_secs(10);

/// An echo server that counts its open connections (to see that the proxy closes its side).
struct Echo {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Echo { addr, open, task }
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(proxy.addr())
        .await
        .expect("connect to proxy")
}

/// Sends `msg` and reads the same number of bytes back.
async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.expect("write through proxy");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut back))
        .await
        .expect("echo within the deadline")
        .expect("echo read");
    back
}

/// Reads until the connection closes (EOF or reset); returns what arrived before.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {DEADLINE:?} (got {got:?})"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Polls `cond` every 10 ms until it holds, panicking with `what` after the deadline.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "never saw: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn forwards_both_ways_and_counts_bytes() {
    let echo = echo().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start proxy");
    let mut s = connect(&proxy).await;
    assert_eq!(round_trip(&mut s, b"hello").await, b"hello");
    let st = proxy.stats();
    assert_eq!((st.accepted, st.open), (1, 1), "{st:?}");
    assert_eq!((st.bytes_to_upstream, st.bytes_to_client), (5, 5), "{st:?}");
}

#[tokio::test]
async fn drop_all_closes_both_sides_and_new_connections_work() {
    let echo = echo().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start proxy");
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    round_trip(&mut a, b"a").await;
    round_trip(&mut b, b"b").await;
    proxy.drop_all();
    assert!(read_to_close(&mut a).await.is_empty(), "client a closed");
    assert!(read_to_close(&mut b).await.is_empty(), "client b closed");
    eventually("upstream side of both connections closed", || {
        echo.open.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(proxy.stats().dropped, 2, "drop_all: dropped counted");
    let mut c = connect(&proxy).await;
    assert_eq!(round_trip(&mut c, b"again").await, b"again");
}

#[tokio::test]
async fn blackhole_holds_everything_then_releases_in_order() {
    let echo = echo().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start proxy");
    let mut s = connect(&proxy).await;
    round_trip(&mut s, b"x").await;
    proxy.blackhole(true);
    s.write_all(b"one ").await.expect("write");
    s.write_all(b"two").await.expect("write");
    let mut buf = [0u8; 16];
    let held = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
    assert!(held.is_err(), "blackhole: nothing forwarded, got {held:?}");
    assert_eq!(
        proxy.stats().bytes_to_upstream,
        1,
        "blackhole: nothing reached upstream"
    );
    assert_eq!(
        proxy.stats().open,
        1,
        "blackhole: the connection stays open"
    );
    proxy.heal();
    let mut back = [0u8; 7];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut back))
        .await
        .expect("released after heal")
        .expect("read");
    assert_eq!(&back, b"one two", "blackhole: held bytes released in order");
}

/// Real time, short delays: under paused time the runtime would auto-advance to the
/// proxy's due time whenever it waits on loopback I/O, so the measured round trip would
/// prove nothing. The outage test below needs no such wait and runs paused.
#[tokio::test]
async fn delay_holds_each_chunk_and_keeps_order() {
    let echo = echo().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start proxy");
    let mut s = connect(&proxy).await;
    round_trip(&mut s, b"warm").await;
    let by = Duration::from_millis(150);
    proxy.delay(by);
    let started = std::time::Instant::now();
    assert_eq!(round_trip(&mut s, b"ping").await, b"ping");
    let rtt = started.elapsed();
    assert!(rtt >= 2 * by, "delay: round trip {rtt:?} < twice {by:?}");
    // Several chunks in flight at once come back in the order sent.
    let started = std::time::Instant::now();
    let mut sent = Vec::new();
    for i in 0..5u8 {
        let chunk = [b'a' + i; 3];
        s.write_all(&chunk).await.expect("write");
        sent.extend_from_slice(&chunk);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut back = vec![0u8; sent.len()];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut back))
        .await
        .expect("delayed echo within the deadline")
        .expect("read");
    assert_eq!(back, sent, "delay: order kept");
    // Pipelined: five chunks 20 ms apart take about one round trip, not five.
    assert!(
        started.elapsed() < 5 * 2 * by,
        "delay is latency, not serialisation: {:?}",
        started.elapsed()
    );
    proxy.delay(Duration::ZERO);
    let started = std::time::Instant::now();
    round_trip(&mut s, b"fast").await;
    assert!(started.elapsed() < by, "delay off again");
}

#[tokio::test]
async fn cut_after_closes_mid_stream_at_the_byte_count() {
    let echo = echo().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start proxy");
    proxy.cut_after(Some(7));
    let mut s = connect(&proxy).await;
    s.write_all(b"hello").await.expect("write");
    // 5 bytes up, then 2 of the 5 echoed back: 7 in all, then the cut.
    assert_eq!(
        read_to_close(&mut s).await,
        b"he",
        "cut_after: cut mid-chunk"
    );
    let st = proxy.stats();
    assert_eq!(st.cut, 1, "cut counted: {st:?}");
    assert_eq!(st.bytes_to_upstream + st.bytes_to_client, 7, "{st:?}");
    eventually("upstream side closed after the cut", || {
        echo.open.load(Ordering::SeqCst) == 0
    })
    .await;
    proxy.cut_after(None);
    let mut s = connect(&proxy).await;
    assert_eq!(round_trip(&mut s, b"whole message").await, b"whole message");
}

#[tokio::test]
async fn cut_after_counts_from_when_it_is_set() {
    let echo = echo().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start proxy");
    let mut s = connect(&proxy).await;
    round_trip(&mut s, b"0123456789").await;
    proxy.cut_after(Some(6));
    s.write_all(b"abc").await.expect("write");
    assert_eq!(
        read_to_close(&mut s).await,
        b"abc",
        "6 bytes after the setting"
    );
    assert_eq!(proxy.stats().cut, 1);
}

#[tokio::test]
async fn refuse_new_keeps_open_connections_and_closes_new_ones() {
    let echo = echo().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start proxy");
    let mut a = connect(&proxy).await;
    // Accepted by the proxy (not only by the kernel) before the refusal starts.
    round_trip(&mut a, b"open").await;
    proxy.refuse_new(true);
    assert!(proxy.is_refusing());
    let mut b = connect(&proxy).await;
    assert!(
        read_to_close(&mut b).await.is_empty(),
        "refused: closed at once"
    );
    assert_eq!(
        round_trip(&mut a, b"still").await,
        b"still",
        "open one kept"
    );
    let st = proxy.stats();
    assert_eq!((st.accepted, st.refused, st.open), (2, 1, 1), "{st:?}");
    proxy.refuse_new(false);
    let mut c = connect(&proxy).await;
    assert_eq!(round_trip(&mut c, b"back").await, b"back");
}

#[tokio::test(start_paused = true)]
async fn outage_drops_refuses_and_heals_by_itself() {
    let echo = echo().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start proxy");
    let mut a = connect(&proxy).await;
    round_trip(&mut a, b"before").await;
    proxy.outage(Duration::from_secs(60));
    assert!(
        read_to_close(&mut a).await.is_empty(),
        "outage: open connection dropped"
    );
    let mut b = connect(&proxy).await;
    assert!(
        read_to_close(&mut b).await.is_empty(),
        "outage: new connection refused"
    );
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(proxy.is_refusing(), "outage: still refusing before its end");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(!proxy.is_refusing(), "outage: healed by itself");
    let mut c = connect(&proxy).await;
    assert_eq!(round_trip(&mut c, b"after").await, b"after");
    let st = proxy.stats();
    assert_eq!((st.dropped, st.refused), (1, 1), "{st:?}");
}

#[tokio::test]
async fn heal_turns_every_fault_off() {
    let echo = echo().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start proxy");
    let mut a = connect(&proxy).await;
    round_trip(&mut a, b"open").await;
    proxy.blackhole(true);
    proxy.delay(Duration::from_secs(30));
    proxy.cut_after(Some(1));
    proxy.refuse_new(true);
    proxy.outage(Duration::from_secs(3600));
    assert!(read_to_close(&mut a).await.is_empty());
    proxy.heal();
    assert!(!proxy.is_refusing());
    let mut s = connect(&proxy).await;
    assert_eq!(round_trip(&mut s, b"healed").await, b"healed");
}

#[tokio::test]
async fn connection_cap_refuses_beyond_the_limit() {
    let echo = echo().await;
    let config = ProxyConfig {
        max_connections: 2,
        ..ProxyConfig::default()
    };
    let proxy = FaultProxy::start_with(echo.addr, config)
        .await
        .expect("start proxy");
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    round_trip(&mut a, b"a").await;
    round_trip(&mut b, b"b").await;
    let mut c = connect(&proxy).await;
    assert!(read_to_close(&mut c).await.is_empty(), "third refused");
    assert_eq!(proxy.stats().refused, 1);
    drop(a);
    eventually("a's slot freed", || proxy.stats().open == 1).await;
    let mut d = connect(&proxy).await;
    assert_eq!(round_trip(&mut d, b"d").await, b"d");
}

#[tokio::test]
async fn unreachable_upstream_closes_the_client() {
    let gone = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = gone.local_addr().expect("addr");
    drop(gone);
    let proxy = FaultProxy::start(addr).await.expect("start proxy");
    let mut s = connect(&proxy).await;
    assert!(read_to_close(&mut s).await.is_empty());
    eventually("upstream failure counted", || {
        proxy.stats().upstream_failed == 1
    })
    .await;
}

#[tokio::test]
async fn dropping_the_proxy_stops_every_task_and_connection() {
    let echo = echo().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start proxy");
    let addr = proxy.addr();
    let mut clients = Vec::new();
    for i in 0..3u8 {
        let mut s = connect(&proxy).await;
        round_trip(&mut s, &[i]).await;
        clients.push(s);
    }
    // One of them held in a blackhole, one delayed: tasks asleep must stop too.
    proxy.blackhole(true);
    clients[0].write_all(b"held").await.expect("write");
    assert_eq!(echo.open.load(Ordering::SeqCst), 3);
    drop(proxy);
    for s in &mut clients {
        assert!(read_to_close(s).await.is_empty(), "client closed by drop");
    }
    eventually("every upstream connection closed", || {
        echo.open.load(Ordering::SeqCst) == 0
    })
    .await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after drop"
    );
}

#[tokio::test]
async fn shutdown_waits_for_every_task() {
    let echo = echo().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start proxy");
    let mut s = connect(&proxy).await;
    round_trip(&mut s, b"x").await;
    tokio::time::timeout(DEADLINE, proxy.shutdown())
        .await
        .expect("shutdown within the deadline");
    assert!(read_to_close(&mut s).await.is_empty());
    assert_eq!(ProxyStats::default().open, 0);
}

#[test]
fn starting_outside_a_runtime_is_a_typed_error() {
    let upstream = SocketAddr::from(([127, 0, 0, 1], 9));
    let err = FaultProxy::start_now(upstream, ProxyConfig::default()).expect_err("no runtime");
    assert!(
        matches!(err, im_vendor_sim::ProxyError::NoRuntime),
        "{err:?}"
    );
}
