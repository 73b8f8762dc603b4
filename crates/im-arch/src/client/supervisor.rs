//! The connection supervisor: the one task that owns the vendor connection. It logs in,
//! runs the sync engine's ACK-online pass, stays online (live pushes, heartbeats, the app's
//! commands), reconnects with capped, jittered backoff (not while the network is known
//! down), refreshes an expired token once per expiry, and stops for good on a kick, a
//! refused login or token, logout, or after `max_reconnect_attempts`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::collections::HashSet;

use futures::{FutureExt, StreamExt};
use im_service::{EventStream, Message, Origin, ServerMsgId, ServiceError, VendorEvent};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::sync::SyncEngine;
use crate::error::ArchError;
use crate::events::{ClientEvent, ConnectionState, SyncProgress};
use crate::shared::Shared;

/// What the facade asks of a running supervisor.
pub(crate) enum Command {
    /// Log out, then answer.
    Logout(oneshot::Sender<()>),
    /// Drop the connection and reconnect now.
    Reconnect,
}

/// What a stopped supervisor hands back, so that the same client can log in again (after
/// logout, a kick, token expiry or a refused login).
pub(crate) struct Leftovers {
    /// The vendor's event stream.
    pub(crate) events: EventStream,
    /// The receiving end of the own-sent channel.
    pub(crate) own: Option<mpsc::UnboundedReceiver<Message>>,
}

/// Why the online loop ended.
enum Exit {
    Reconnect(String),
    /// The token expired and was refreshed: reconnect with the fresh one, which is this
    /// expiry's one refresh (a refusal of it ends the client).
    Refreshed,
    Stop(ConnectionState),
    Logout(Option<oneshot::Sender<()>>),
}

/// The supervisor: connect, sync, stay online, reconnect, until told to stop.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    mut events: EventStream,
    commands: mpsc::Receiver<Command>,
    mut own: Option<mpsc::UnboundedReceiver<Message>>,
) -> Leftovers {
    supervise_until_stopped(shared, &mut events, commands, &mut own).await;
    Leftovers { events, own }
}

/// The body of [`supervise`]; returns when the client stopped for good.
async fn supervise_until_stopped(
    shared: Arc<Shared>,
    events: &mut EventStream,
    mut commands: mpsc::Receiver<Command>,
    own: &mut Option<mpsc::UnboundedReceiver<Message>>,
) {
    let mut engine = SyncEngine::load(&shared).await;
    if let Err(error) = crate::conversations::load(&shared).await {
        tracing::warn!(error = %error, "cannot rebuild the conversation list");
        shared
            .distributor
            .publish(ClientEvent::StoreFailed {
                op: "load_conversations",
                error,
            })
            .await;
    }
    let mut attempt: u32 = 0;
    let mut refreshed = false;
    // The last retryable error, for the typed reason of giving up.
    let mut last_error: Option<ServiceError> = None;
    loop {
        // While the network is known down nobody gives up: the attempts that failed were
        // probably the network's fault, and the count starts over when it is back.
        if attempt > 0
            && *shared.network.borrow()
            && shared
                .config
                .max_reconnect_attempts
                .is_some_and(|max| attempt > max)
        {
            let cause = ArchError::GaveUp {
                op: "login",
                attempts: attempt - 1,
                last: last_error
                    .unwrap_or(ServiceError::Unavailable("no attempt succeeded".into())),
            };
            shared
                .stop(
                    ConnectionState::Failed(format!(
                        "gave up after {} reconnect attempts",
                        attempt - 1
                    )),
                    cause,
                )
                .await;
            return;
        }
        if !wait_to_attempt(&shared, &mut attempt, &mut commands, events).await {
            return;
        }
        shared.set_state(ConnectionState::Connecting).await;
        let creds = shared.credentials();
        let login = async {
            tracing::info!(user = %creds.user, attempt, "login");
            shared.vendor.login(&creds).await
        }
        .instrument(tracing::info_span!("login", user = %creds.user, attempt))
        .await;
        let login_time = match login {
            Ok(session) => {
                tracing::debug!(session = %session.session_id, "logged in");
                if let Some(server) = session.server_time {
                    let skew = server.as_millis().abs_diff(shared.clock.now().as_millis());
                    shared.clock_skew_ms.store(skew, Ordering::Relaxed);
                }
                session.server_time
            }
            Err(ServiceError::TokenExpired) if shared.provider.is_some() && !refreshed => {
                refreshed = true;
                if refresh_token(&shared).await {
                    continue;
                }
                shared
                    .stop(ConnectionState::TokenExpired, ArchError::TokenExpired)
                    .await;
                return;
            }
            Err(e) => match terminal_state(&e) {
                Some(state) => {
                    shared.stop(state, refusal("login", e)).await;
                    return;
                }
                None => {
                    last_error = Some(e);
                    attempt += 1;
                    continue;
                }
            },
        };
        refreshed = false;
        shared.set_state(ConnectionState::Syncing).await;
        if let Err(e) = engine.sync_pass(&shared, login_time).await {
            let cause = e.service_error().cloned();
            let terminal = cause.as_ref().and_then(terminal_state);
            shared
                .distributor
                .publish(ClientEvent::Sync(SyncProgress::Failed(e)))
                .await;
            end_broken_session(&shared).await;
            match (terminal, cause) {
                (Some(state), Some(cause)) => {
                    shared.stop(state, refusal("sync", cause)).await;
                    return;
                }
                (_, cause) => last_error = cause.or(last_error),
            }
            attempt += 1;
            continue;
        }
        shared.set_state(ConnectionState::Online).await;
        crate::conversations::send_pending_receipts(&shared).await;
        match online(&shared, &mut engine, events, &mut commands, own).await {
            Exit::Reconnect(why) => {
                tracing::warn!(reason = %why, "reconnecting");
                end_broken_session(&shared).await;
                attempt = 1;
            }
            Exit::Refreshed => {
                tracing::warn!("token expired; refreshed; reconnecting");
                let _ = shared.vendor.logout().await;
                attempt = 1;
                // This expiry's refresh is spent: a refused fresh token stops the client.
                refreshed = true;
            }
            Exit::Stop(state) => {
                let _ = shared.vendor.logout().await;
                let cause = shared.stop_reason(&state);
                shared.stop(state, cause).await;
                return;
            }
            Exit::Logout(done) => {
                finish_logout(&shared, done).await;
                return;
            }
        }
    }
}

/// Waits before connection attempt `attempt` (0: the first login, no backoff): the backoff
/// delay, and while the network is known down, until it is back and then a jittered delay
/// of the first retry's ceiling (a fleet that regains the network together must not
/// reconnect in one instant). Attempts counted before the network went down are forgotten
/// (`attempt` drops to 1; 0 stays 0). Returns `false` when the supervisor must stop (logged
/// out, or its command or event channel closed).
async fn wait_to_attempt(
    shared: &Shared,
    attempt: &mut u32,
    commands: &mut mpsc::Receiver<Command>,
    events: &mut EventStream,
) -> bool {
    let mut network = shared.network.subscribe();
    let mut next_in = (*attempt > 0).then(|| shared.config.reconnect.delay(*attempt));
    loop {
        if !*network.borrow_and_update() {
            shared.set_state(ConnectionState::Disconnected).await;
            tracing::info!("network down: no connection attempt until it is back");
            loop {
                tokio::select! {
                    changed = network.changed() => {
                        // The sender lives in `shared`, which outlives this task.
                        if changed.is_err() || *network.borrow_and_update() {
                            break;
                        }
                    }
                    cmd = commands.recv() => match cmd {
                        // Nothing is attempted while the network is known down.
                        Some(Command::Reconnect) => {}
                        Some(Command::Logout(done)) => {
                            finish_logout(shared, Some(done)).await;
                            return false;
                        }
                        None => return false,
                    },
                    // Stale events of the dead connection are dropped while we wait.
                    ev = events.next() => if ev.is_none() { return false },
                }
            }
            *attempt = (*attempt).min(1);
            next_in = Some(shared.config.reconnect.delay(1));
        }
        let Some(wait) = next_in else {
            return true;
        };
        shared
            .set_state(ConnectionState::Reconnecting {
                attempt: (*attempt).max(1),
                next_in: wait,
            })
            .await;
        let wake = tokio::time::sleep(wait);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => return true,
                _ = network.changed() => {
                    if !*network.borrow_and_update() {
                        // Down again: wait for it, then draw a fresh delay.
                        break;
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Reconnect) => return true,
                    Some(Command::Logout(done)) => {
                        finish_logout(shared, Some(done)).await;
                        return false;
                    }
                    None => return false,
                },
                // Stale events of the dead connection are dropped while we wait.
                ev = events.next() => if ev.is_none() { return false },
            }
        }
    }
}

/// Ends a session the client is about to replace because its link failed. The goodbye is
/// bounded by `heartbeat_timeout`: on a dead link (a blackhole) it would otherwise wait for
/// the adapter's own request timeout (2 s on the reference protocol, a whole HTTP request
/// timeout on Matrix) before the reconnect even starts. Cutting it short is safe: every
/// adapter drops its session before saying goodbye (see `Vendor::logout`).
async fn end_broken_session(shared: &Shared) {
    let goodbye = shared.vendor.logout();
    if tokio::time::timeout(shared.config.heartbeat_timeout, goodbye)
        .await
        .is_err()
    {
        tracing::debug!("the goodbye to a broken session was cut short");
    }
}

async fn finish_logout(shared: &Shared, done: Option<oneshot::Sender<()>>) {
    let _ = shared.vendor.logout().await;
    shared
        .stop(ConnectionState::LoggedOut, ArchError::LoggedOut)
        .await;
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// The typed reason of a refusal `e` during `op` that ends the client.
fn refusal(op: &'static str, e: ServiceError) -> ArchError {
    match e {
        ServiceError::Kicked(r) => ArchError::Kicked(r),
        ServiceError::TokenExpired => ArchError::TokenExpired,
        ServiceError::AuthFailed(why) => ArchError::AuthFailed(why),
        ServiceError::UnknownUser(user) => ArchError::UnknownUser(user),
        error => ArchError::Permanent { op, error },
    }
}

/// The state a non-retryable login/sync error ends in, or `None` if it is retryable.
fn terminal_state(e: &ServiceError) -> Option<ConnectionState> {
    match e {
        ServiceError::Kicked(r) => Some(ConnectionState::Kicked(r.clone())),
        ServiceError::TokenExpired => Some(ConnectionState::TokenExpired),
        e if !e.is_retryable() => Some(ConnectionState::Failed(e.to_string())),
        _ => None,
    }
}

async fn refresh_token(shared: &Shared) -> bool {
    let Some(provider) = &shared.provider else {
        return false;
    };
    let user = shared.credentials().user;
    match provider.token(&user).await {
        Ok(token) => {
            shared.credentials.lock().token = token;
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "token refresh failed");
            false
        }
    }
}

/// The online loop: live pushes, heartbeats, commands.
async fn online(
    shared: &Arc<Shared>,
    engine: &mut SyncEngine,
    events: &mut EventStream,
    commands: &mut mpsc::Receiver<Command>,
    own: &mut Option<mpsc::UnboundedReceiver<Message>>,
) -> Exit {
    let mut heartbeat = tokio::time::interval_at(
        Instant::now() + shared.config.heartbeat_interval,
        shared.config.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut missed = 0u32;
    // An event taken from the stream that ended a burst of pushes, handled next.
    let mut stashed: Option<Option<VendorEvent>> = None;
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Logout(done)) => return Exit::Logout(Some(done)),
                Some(Command::Reconnect) => return Exit::Reconnect("requested".into()),
                None => return Exit::Logout(None),
            },
            Some(sent) = recv_own(own) => {
                // Our own messages, acknowledged: they take their place in the sequence
                // quietly (the UI already shows them as local echoes) and release what
                // waited on them. Those already acknowledged go in one ingest.
                let mut sent = vec![sent];
                if let Some(rx) = own.as_mut() {
                    while sent.len() < MAX_BURST {
                        match rx.try_recv() {
                            Ok(m) => sent.push(m),
                            Err(_) => break,
                        }
                    }
                }
                let quiet: HashSet<ServerMsgId> = sent.iter().map(|m| m.server_id.clone()).collect();
                if let Err(e) = engine.ingest_except(shared, sent, Origin::Online, &quiet).await {
                    return Exit::Reconnect(format!("ingest failed: {e}"));
                }
            }
            ev = next_event(events, &mut stashed) => match ev {
                None => return Exit::Reconnect("vendor event stream ended".into()),
                Some(VendorEvent::MessagePushed(m)) => {
                    // A burst of pushes (those already received) is one ingest: one store
                    // write of its messages and one delivery commit, not one per message.
                    // The first other event ends the burst and is handled next, in order.
                    let mut burst = vec![m];
                    while burst.len() < MAX_BURST {
                        match events.next().now_or_never() {
                            Some(Some(VendorEvent::MessagePushed(m))) => burst.push(m),
                            Some(other) => {
                                stashed = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    if let Err(e) = engine.ingest(shared, burst, Origin::Online).await {
                        return Exit::Reconnect(format!("ingest failed: {e}"));
                    }
                    if let Err(e) = engine.fill_gaps(shared).await {
                        return Exit::Reconnect(format!("gap fill failed: {e}"));
                    }
                }
                Some(VendorEvent::ConnectionLost { reason }) => {
                    // A late notice from an earlier connection must not kill this one.
                    if shared.vendor.ping().await.is_err() {
                        return Exit::Reconnect(reason);
                    }
                }
                Some(VendorEvent::Kicked(r)) => return Exit::Stop(ConnectionState::Kicked(r)),
                Some(VendorEvent::TokenWillExpire { expires_at }) => {
                    shared.distributor.publish(ClientEvent::TokenWillExpire { expires_at }).await;
                }
                Some(VendorEvent::TokenExpired) => {
                    if refresh_token(shared).await {
                        return Exit::Refreshed;
                    }
                    return Exit::Stop(ConnectionState::TokenExpired);
                }
                Some(VendorEvent::MessageChanged(change)) => {
                    // Durable before announced. A store that fails is reported, not a reason
                    // to drop the connection: the feed's cursor does not move for live
                    // changes, so the next sync pass pulls this one again (idempotent).
                    let applied = crate::lifecycle::apply(shared, std::slice::from_ref(&change), &[]).await;
                    report_apply_failure(shared, "apply_change", applied).await;
                }
                Some(VendorEvent::ReadReceipt(receipt)) => {
                    let applied = crate::lifecycle::apply(shared, &[], std::slice::from_ref(&receipt)).await;
                    report_apply_failure(shared, "apply_read_receipt", applied).await;
                }
            },
            _ = heartbeat.tick() => {
                match tokio::time::timeout(shared.config.heartbeat_timeout, shared.vendor.ping()).await {
                    Ok(Ok(rtt)) => {
                        missed = 0;
                        shared.distributor.publish(ClientEvent::Heartbeat { rtt }).await;
                    }
                    Ok(Err(e)) if terminal_state(&e).is_some() && !matches!(e, ServiceError::NotLoggedIn) => {
                        return terminal_state(&e).map_or(Exit::Reconnect(e.to_string()), Exit::Stop);
                    }
                    _ => {
                        missed += 1;
                        shared.distributor.publish(ClientEvent::HeartbeatMissed { missed }).await;
                        if missed >= shared.config.max_missed_heartbeats {
                            return Exit::Reconnect(format!("{missed} heartbeats missed"));
                        }
                    }
                }
            }
        }
    }
}

/// Announces a failed application of a live change or receipt as
/// [`ClientEvent::StoreFailed`].
async fn report_apply_failure(
    shared: &Shared,
    op: &'static str,
    applied: Result<usize, ArchError>,
) {
    if let Err(error) = applied {
        tracing::warn!(op, error = %error, "cannot apply a live change; the next sync pass pulls it again");
        shared
            .distributor
            .publish(ClientEvent::StoreFailed { op, error })
            .await;
    }
}

/// Most pushes (or own acknowledged sends) handled as one ingest.
const MAX_BURST: usize = 256;

/// The event that ended the last burst, if any, else the stream's next one. Cancel-safe:
/// a stashed event is taken only by a poll that returns it.
async fn next_event(
    events: &mut EventStream,
    stashed: &mut Option<Option<VendorEvent>>,
) -> Option<VendorEvent> {
    match stashed.take() {
        Some(event) => event,
        None => events.next().await,
    }
}

/// The next own sent message, or never if there is no channel.
async fn recv_own(own: &mut Option<mpsc::UnboundedReceiver<Message>>) -> Option<Message> {
    match own {
        Some(rx) => rx.recv().await,
        None => futures::future::pending().await,
    }
}
