-- im-archive on PostgreSQL, schema version 1: the archive's history, idempotent across
-- replicas by (vendor, vendor message id), paged newest first per conversation.

-- Each message once per (vendor, vendor id): the primary key is what makes a callback
-- delivered to two replicas stored once. `original` is the message as first archived,
-- `current` the same with its change log applied (what history serves). `json`, not
-- `jsonb`: never queried inside, and `jsonb` refuses a NUL character a message may carry. Ids and
-- conversation keys are `bytea`: they sort bytewise, as the other stores order them, and
-- hold any character a vendor puts in an id (PostgreSQL's `text` cannot hold NUL).
CREATE TABLE messages (
    vendor        text   NOT NULL,
    server_id     bytea  NOT NULL,
    conversation  bytea  NOT NULL,
    server_time   bigint NOT NULL,
    original      json   NOT NULL,
    current       json   NOT NULL,
    PRIMARY KEY (vendor, server_id)
);

-- Newest-first pages of one conversation: (conversation, time, id) descending.
CREATE INDEX messages_by_conversation
    ON messages (conversation, server_time DESC, server_id DESC);

-- Each change once per (vendor, target, revision), whether its message is archived yet.
CREATE TABLE changes (
    vendor    text   NOT NULL,
    target    bytea  NOT NULL,
    revision  bigint NOT NULL,
    change    json   NOT NULL,
    PRIMARY KEY (vendor, target, revision)
);

-- Memberships learnt from messages (both sides of a direct conversation, group senders).
CREATE TABLE members (
    user_id           bytea NOT NULL,
    conversation      bytea NOT NULL,
    conversation_json json NOT NULL,
    PRIMARY KEY (user_id, conversation)
);
