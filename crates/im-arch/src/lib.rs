//! Client architecture layer of im-layers: everything between the vendor contract and a UI.
//!
//! It will own, as the issues land: the login flow, connection supervision (heartbeat,
//! reconnect with backoff), ACK-online offline/online/history sync with gap fill, the retry
//! policy, unified distribution (the subscriber bus), local persistence behind a store trait
//! (sled and in-memory), the persistent send queue, the conversation list and message details.
//!
//! Invariants:
//! * depends on `im-service`'s contract only, never on a vendor adapter: it never names a
//!   concrete vendor (checked by `xtask`'s tidy test), and it compiles with no adapter feature;
//! * never depends on `im-qc`, `im-business-demo` or (except as a dev-dependency) `im-testkit`.
