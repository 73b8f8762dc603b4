//! Helpers the simulator's TCP tests share: a started server and its discovered adapter, two
//! registered users, raw frame reading, and an online device.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use im_service::codec;
use im_service::reference::{ReferenceClient, ReferenceConfig, ReferenceVendor, ServerFrame};
use im_service::{ConversationId, Credentials, EventStream, ServiceError, Token, UserId, Vendor};
use im_vendor_sim::{ReferenceServer, ServerConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a raw read waits for the server.
pub const WAIT: Duration = Duration::from_secs(5);

/// A server started from `config` on 127.0.0.1:0, and the adapter that discovered it.
pub async fn server(config: ServerConfig) -> (ReferenceServer, ReferenceVendor) {
    let server = ReferenceServer::start(config).await.unwrap();
    let vendor = ReferenceVendor::discover(server.addr(), ReferenceConfig::default())
        .await
        .unwrap();
    (server, vendor)
}

/// alice and bob registered on `server`, and their direct conversation.
pub fn users(server: &ReferenceServer) -> (Credentials, Credentials, ConversationId) {
    let a = server.vendor().register_user(&UserId::new("alice"));
    let b = server.vendor().register_user(&UserId::new("bob"));
    let conv = ConversationId::direct(&a.user, &b.user);
    (a, b, conv)
}

/// One frame body from a raw socket (within [`WAIT`]); `None` on end of input.
pub async fn read_body(sock: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    let read = tokio::time::timeout(WAIT, sock.read_exact(&mut len))
        .await
        .expect("the peer answers in time");
    if read.is_err() {
        return None;
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    sock.read_exact(&mut body).await.unwrap();
    Some(body)
}

/// One server frame from a raw socket; `None` on end of input.
pub async fn read_frame(sock: &mut TcpStream) -> Option<ServerFrame> {
    Some(codec::decode(&read_body(sock).await?).unwrap())
}

/// A logged-in, online device of `creds`, and its events.
pub async fn online(
    vendor: &ReferenceVendor,
    creds: &Credentials,
) -> (ReferenceClient, EventStream) {
    let c = vendor.client();
    let events = c.take_events().unwrap();
    c.login(creds).await.unwrap();
    c.go_online().await.unwrap();
    (c, events)
}

/// Logs in within [`WAIT`].
pub async fn login(vendor: &ReferenceVendor, creds: &Credentials) -> Result<(), ServiceError> {
    let c = vendor.client();
    tokio::time::timeout(WAIT, c.login(creds))
        .await
        .expect("the login answers in time")
        .map(|_| ())
}

/// `user` with a token the server never issued.
pub fn wrong(user: &UserId) -> Credentials {
    Credentials {
        user: user.clone(),
        token: Token::new("hunter2-not-the-token"),
    }
}
