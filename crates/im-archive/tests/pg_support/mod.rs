//! Shared by the PostgreSQL suites (`tests/postgres.rs`, the conformance suite's
//! `postgres` module): the server's URL from `IM_POSTGRES_URL`, skipped or required, and a
//! fresh database per test.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};

/// The server's URL, or `None` (the test is skipped) when there is none and none is required.
pub fn server_url() -> Option<String> {
    match std::env::var("IM_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("IM_REQUIRE_POSTGRES").is_err(),
                "IM_REQUIRE_POSTGRES is set but IM_POSTGRES_URL names no server"
            );
            eprintln!("skipped: no IM_POSTGRES_URL (start one with tests/postgres/postgres.sh)");
            None
        }
    }
}

/// A new, empty database on the server (one per test: tests run in parallel), as a URL.
pub async fn fresh_database(url: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "im_test_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to IM_POSTGRES_URL");
    let conn = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    drop(client);
    let _ = conn.await;
    let (base, _) = url.rsplit_once('/').expect("a URL with a database path");
    format!("{base}/{name}")
}

/// With `IM_ARCHIVE_TEST_STORE=postgres`, a `PgArchive` on a fresh database of the server
/// `IM_POSTGRES_URL` names (the HTTP and end-to-end suites run on it in CI); `None` otherwise.
pub async fn store_if_asked() -> Option<std::sync::Arc<dyn im_archive::ArchiveStore>> {
    if std::env::var("IM_ARCHIVE_TEST_STORE").as_deref() != Ok("postgres") {
        return None;
    }
    let url = server_url().expect("IM_ARCHIVE_TEST_STORE=postgres needs IM_POSTGRES_URL");
    let url = fresh_database(&url).await;
    let config = im_archive::PgConfig::new(&url);
    Some(std::sync::Arc::new(
        im_archive::PgArchive::connect(&config).await.unwrap(),
    ))
}
