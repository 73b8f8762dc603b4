//! Round trips of the shared HTTP contract (`im_service::archive_api`) through the libraries
//! each side uses: the client writes the query with reqwest and reads JSON with serde_json,
//! the server reads the query with axum's `Query` and writes JSON with axum's `Json`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::extract::Query;
use axum::http::Uri;
use im_service::archive_api::{
    CallbackOutcome, ErrorBody, HISTORY_PATH, HistoryParams, callback_path,
};
use im_service::{ConversationId, HistoryPage, PageCursor, Timestamp, UserId};
use proptest::prelude::*;

/// The query string reqwest writes for `params`.
fn client_query(params: &HistoryParams) -> String {
    let request = reqwest::Client::new()
        .get(format!("http://127.0.0.1:1{HISTORY_PATH}"))
        .query(params)
        .build()
        .expect("a valid request");
    request.url().query().unwrap_or_default().to_owned()
}

/// What the server's `Query` extractor reads from `query`.
fn server_reads(query: &str) -> HistoryParams {
    let uri: Uri = format!("{HISTORY_PATH}?{query}")
        .parse()
        .expect("a valid uri");
    Query::<HistoryParams>::try_from_uri(&uri)
        .expect("the server accepts what the client writes")
        .0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn history_params_round_trip_through_the_query_string(
        conversation in any::<String>(),
        from in any::<Option<i64>>(),
        to in any::<Option<i64>>(),
        limit in any::<Option<u32>>(),
        cursor in any::<Option<String>>(),
    ) {
        let params = HistoryParams { conversation, from, to, limit, cursor };
        prop_assert_eq!(server_reads(&client_query(&params)), params);
    }

    #[test]
    fn error_bodies_round_trip(error in any::<String>()) {
        let body = ErrorBody { error };
        let json = serde_json::to_vec(&body).unwrap();
        prop_assert_eq!(serde_json::from_slice::<ErrorBody>(&json).unwrap(), body);
    }
}

#[test]
fn the_query_string_is_the_one_the_client_always_wrote() {
    // Before the contract was shared, the client wrote these pairs in this order.
    let c = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let params = HistoryParams::new(
        &c,
        Timestamp::from_millis(-5),
        Timestamp::from_millis(i64::MAX),
        Some(PageCursor("17:m|1&x".into())),
        50,
    );
    let by_hand = reqwest::Client::new()
        .get(format!("http://127.0.0.1:1{HISTORY_PATH}"))
        .query(&[
            ("conversation", c.to_string()),
            ("from", "-5".to_string()),
            ("to", i64::MAX.to_string()),
            ("limit", "50".to_string()),
            ("cursor", "17:m|1&x".to_string()),
        ])
        .build()
        .unwrap();
    assert_eq!(client_query(&params), by_hand.url().query().unwrap());
}

#[test]
fn json_bodies_round_trip_and_keep_their_shape() {
    for outcome in [
        CallbackOutcome::Stored,
        CallbackOutcome::Duplicate,
        CallbackOutcome::Ignored,
        CallbackOutcome::Pending,
    ] {
        let json = serde_json::to_string(&outcome).unwrap();
        assert_eq!(
            serde_json::from_str::<CallbackOutcome>(&json).unwrap(),
            outcome
        );
    }
    assert_eq!(
        serde_json::to_string(&CallbackOutcome::Duplicate).unwrap(),
        "\"duplicate\""
    );
    assert_eq!(
        serde_json::to_string(&CallbackOutcome::Pending).unwrap(),
        "\"pending\""
    );
    assert_eq!(
        serde_json::to_string(&ErrorBody {
            error: "bad".into()
        })
        .unwrap(),
        r#"{"error":"bad"}"#
    );
    let page = HistoryPage {
        messages: Vec::new(),
        next: Some(PageCursor("3:x".into())),
        horizon: Some(Timestamp::from_millis(-1)),
    };
    let json = serde_json::to_vec(&page).unwrap();
    assert_eq!(serde_json::from_slice::<HistoryPage>(&json).unwrap(), page);
}

#[test]
fn the_callback_path_is_the_route_the_server_serves() {
    assert_eq!(callback_path("reference"), "/v1/callbacks/reference");
}
