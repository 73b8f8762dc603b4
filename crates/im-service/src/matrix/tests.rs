//! Unit tests of the Matrix adapter's mapping pieces (JSON to model, errors, cursors),
//! without a server.

use super::*;

#[test]
fn group_aliases_round_trip_and_escape() {
    let g = GroupId::new("Team A/1");
    let alias = group_alias("im-", &g, "localhost");
    assert_eq!(alias, "#im-=54eam=20=41=2f1:localhost");
    assert_eq!(group_of_alias("im-", &alias, "localhost"), Some(g));
    assert_eq!(group_of_alias("im-", "#other:localhost", "localhost"), None);
    assert_eq!(group_of_alias("im-", "#im-x:elsewhere", "localhost"), None);
}

fn ev(v: Value) -> Ev {
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_message_event_maps_to_the_model_with_its_client_id() {
    let c = ConversationId::direct(&UserId::new("alice"), &UserId::new("bob"));
    let e = ev(
        json!({"type": "m.room.message", "event_id": "$1", "sender": "@alice:localhost",
        "origin_server_ts": 1000, "content": {"msgtype": "m.text", "body": "hi",
        "im.layers.client_id": "c1", "im.layers.client_time": 990},
        "unsigned": {"transaction_id": "c1"}}),
    );
    let Some(Item::Msg(m, mine)) = to_item(&e, &c, "localhost") else {
        panic!("not a message")
    };
    assert!(mine, "transaction_id marks this device's own event");
    assert_eq!((m.server_id.as_str(), m.client_id.as_str()), ("$1", "c1"));
    assert_eq!(
        (m.sender.as_str(), m.server_time.as_millis()),
        ("alice", 1000)
    );
    assert_eq!(m.client_time.as_millis(), 990);
    assert_eq!(m.content, Content::text("hi"));
    // A foreign message: its event id is its client id.
    let foreign = ev(
        json!({"type": "m.room.message", "event_id": "$2", "sender": "@bob:localhost",
        "origin_server_ts": 5, "content": {"msgtype": "m.text", "body": "yo"}}),
    );
    let Some(Item::Msg(m, false)) = to_item(&foreign, &c, "localhost") else {
        panic!()
    };
    assert_eq!(m.client_id.as_str(), "$2");
}

#[test]
fn redactions_and_replacements_are_changes_and_state_is_current() {
    let c = ConversationId::group("g");
    let redaction = ev(
        json!({"type": "m.room.redaction", "event_id": "$r", "sender": "@a:s",
        "origin_server_ts": 1_800_000_000_000_i64, "redacts": "$1", "content": {}}),
    );
    let Some(Item::Change(ch)) = to_item(&redaction, &c, "s") else {
        panic!()
    };
    assert_eq!(
        (ch.target.as_str(), &ch.kind, ch.by.as_str()),
        ("$1", &ChangeKind::Recalled, "a")
    );
    let edit = ev(
        json!({"type": "m.room.message", "event_id": "$e", "sender": "@a:s",
        "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "* new",
        "m.new_content": {"msgtype": "m.text", "body": "new"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$1"}}}),
    );
    let Some(Item::Change(ch)) = to_item(&edit, &c, "s") else {
        panic!()
    };
    assert_eq!(ch.kind, ChangeKind::Edited(Content::text("new")));
    let redacted = ev(
        json!({"type": "m.room.message", "event_id": "$1", "sender": "@a:s",
        "origin_server_ts": 1, "content": {},
        "unsigned": {"redacted_because": {"sender": "@a:s", "origin_server_ts": 7}}}),
    );
    let Some(Item::Msg(m, _)) = to_item(&redacted, &c, "s") else {
        panic!()
    };
    assert_eq!(
        m.content,
        Content::Recalled {
            by: UserId::new("a"),
            at: Timestamp::from_millis(7)
        }
    );
    // The bundled edit applies only when its sender is the message's.
    let bundled = |by: &str| {
        ev(
            json!({"type": "m.room.message", "event_id": "$1", "sender": "@a:s",
        "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "old"},
        "unsigned": {"m.relations": {"m.replace": {"sender": by,
            "content": {"m.new_content": {"msgtype": "m.text", "body": "new"}}}}}}),
        )
    };
    let Some(Item::Msg(m, _)) = to_item(&bundled("@a:s"), &c, "s") else {
        panic!()
    };
    assert_eq!(m.content, Content::text("new"));
    let Some(Item::Msg(m, _)) = to_item(&bundled("@b:s"), &c, "s") else {
        panic!()
    };
    assert_eq!(
        m.content,
        Content::text("old"),
        "an edit by someone else is ignored"
    );
}

#[test]
fn custom_content_round_trips() {
    let content = Content::Custom {
        type_tag: "card".into(),
        payload: vec![0, 1, 254],
    };
    let v = content_json(&content, &ClientMsgId::new("c"), Timestamp::from_millis(1)).unwrap();
    assert_eq!(parse_content(&v), Some(content));
    assert!(
        content_json(
            &Content::Recalled {
                by: UserId::new("a"),
                at: Timestamp::default()
            },
            &ClientMsgId::new("c"),
            Timestamp::default()
        )
        .is_err()
    );
}

#[test]
fn receipts_parse_per_reader() {
    let v = json!({"$1": {"m.read": {"@bob:s": {"ts": 9}}}, "$2": {"m.fully_read": {}}});
    assert_eq!(
        receipts(&v, "s"),
        vec![(
            "$1".to_string(),
            UserId::new("bob"),
            Timestamp::from_millis(9)
        )]
    );
}

fn mx_error(status: u16, body: Value) -> E {
    let body = body.to_string();
    let resp = http::Response::builder()
        .status(status)
        .body(body.as_bytes())
        .unwrap();
    decode::<whoami::v3::Response>(resp).unwrap_err()
}

#[test]
fn matrix_errors_map_to_typed_errors() {
    assert_eq!(
        mx_error(
            429,
            json!({"errcode": "M_LIMIT_EXCEEDED", "error": "slow", "retry_after_ms": 1500})
        ),
        E::RateLimited {
            retry_after: Duration::from_millis(1500)
        }
    );
    assert_eq!(
        mx_error(
            401,
            json!({"errcode": "M_UNKNOWN_TOKEN", "error": "x", "soft_logout": true})
        ),
        E::TokenExpired
    );
    assert!(matches!(
        mx_error(401, json!({"errcode": "M_UNKNOWN_TOKEN", "error": "x"})),
        E::Kicked(_)
    ));
    assert!(matches!(
        mx_error(403, json!({"errcode": "M_FORBIDDEN", "error": "no"})),
        E::AuthFailed(_)
    ));
    assert!(matches!(
        mx_error(400, json!({"errcode": "M_INVALID_PARAM", "error": "bad"})),
        E::InvalidRequest(_)
    ));
    assert!(matches!(
        mx_error(502, json!({"errcode": "M_UNKNOWN", "error": "?"})),
        E::Server { code: 502, .. }
    ));
    assert!(
        E::Server {
            code: 502,
            message: String::new()
        }
        .is_retryable()
    );
}

#[test]
fn malformed_json_is_a_typed_error() {
    let resp = http::Response::builder()
        .status(200)
        .body(&b"{not json"[..])
        .unwrap();
    assert!(matches!(
        decode::<whoami::v3::Response>(resp),
        Err(E::Protocol(_))
    ));
    assert!(matches!(
        parse_cursor(&PageCursor("garbage".into())),
        Err(E::InvalidRequest(_))
    ));
    assert_eq!(
        parse_cursor(&PageCursor("mx1:2:t_1".into())).unwrap(),
        (2, "t_1".to_string())
    );
}
