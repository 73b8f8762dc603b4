//! Quality-control layer of im-layers: makes vendor health and business state visible.
//!
//! It will own, as the issues land: a metrics decorator over any `im-service` vendor, vendor
//! availability windows and a Healthy/Degraded/Down verdict, data-processing metrics read
//! from `im-arch`'s subscriber bus, business metrics (response rate, response frequency),
//! alert rules, and export (Prometheus text, JSON snapshot).
//!
//! Invariants: observes `im-arch` and `im-service` only through their public APIs; never
//! depends on the business demo; never changes what it observes (a decorator adds metrics,
//! not behaviour).
