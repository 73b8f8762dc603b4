//! Distribution of [`ClientEvent`]s to subscribers. Every subscriber gets every event in
//! publication order through its own bounded queue; the publisher waits for room, so no
//! subscriber loses anything (the reliable policy). A dropped subscription is removed at the
//! next publication.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::events::ClientEvent;

/// The publishing side.
#[derive(Debug, Default)]
pub struct Distributor {
    subscribers: Mutex<Vec<mpsc::Sender<ClientEvent>>>,
}

impl Distributor {
    /// A new subscription with a queue of `capacity` events.
    pub fn subscribe(&self, capacity: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        Subscription { rx }
    }

    /// Delivers `event` to every live subscriber, waiting for room in each queue.
    pub async fn publish(&self, event: ClientEvent) {
        // Clone the senders so no lock is held across the awaits below.
        let subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut closed = false;
        for tx in &subscribers {
            if tx.send(event.clone()).await.is_err() {
                closed = true;
            }
        }
        if closed {
            self.subscribers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|tx| !tx.is_closed());
        }
    }

    /// Live subscriptions.
    pub fn subscriber_count(&self) -> usize {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|tx| !tx.is_closed());
        subs.len()
    }
}

/// A stream of client events; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<ClientEvent>,
}

impl Subscription {
    /// The next event, or `None` once the client is gone.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }
}

impl Stream for Subscription {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        self.rx.poll_recv(cx)
    }
}
