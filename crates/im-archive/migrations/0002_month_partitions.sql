-- im-archive on PostgreSQL, schema version 2: messages partitioned by month of server time,
-- so that retention drops whole months (a partition's DROP TABLE) instead of deleting rows
-- one by one (`PgArchive::drop_months_before`).
--
-- A partitioned table's unique key must contain its partition key, so the uniqueness of
-- (vendor, vendor id) across replicas moves to `message_ids`, one row per archived message
-- with its time (which also finds its partition).
CREATE TABLE message_ids (
    vendor       text   NOT NULL,
    server_id    bytea  NOT NULL,
    server_time  bigint NOT NULL,
    PRIMARY KEY (vendor, server_id)
);
INSERT INTO message_ids (vendor, server_id, server_time)
    SELECT vendor, server_id, server_time FROM messages;

DROP INDEX messages_by_conversation;
ALTER TABLE messages RENAME TO messages_v1;
ALTER TABLE messages_v1 RENAME CONSTRAINT messages_pkey TO messages_v1_pkey;

CREATE TABLE messages (
    vendor        text   NOT NULL,
    server_id     bytea  NOT NULL,
    conversation  bytea  NOT NULL,
    server_time   bigint NOT NULL,
    original      json   NOT NULL,
    current       json   NOT NULL,
    PRIMARY KEY (vendor, server_id, server_time)
) PARTITION BY RANGE (server_time);

-- Times no month partition is made for (before 1970 or past year 9999) land here.
CREATE TABLE messages_default PARTITION OF messages DEFAULT;

CREATE INDEX messages_by_conversation
    ON messages (conversation, server_time DESC, server_id DESC);

-- A partition for every month the archive already holds, then the rows.
DO $$
DECLARE
    month timestamp;
    lo bigint;
    hi bigint;
BEGIN
    FOR month IN
        SELECT DISTINCT date_trunc('month', to_timestamp(server_time / 1000.0) AT TIME ZONE 'UTC')
        FROM messages_v1
        WHERE server_time >= 0 AND server_time < 253402300800000
    LOOP
        lo := (extract(epoch FROM month) * 1000)::bigint;
        hi := (extract(epoch FROM month + interval '1 month') * 1000)::bigint;
        EXECUTE format('CREATE TABLE %I PARTITION OF messages FOR VALUES FROM (%s) TO (%s)',
                       'messages_' || to_char(month, 'YYYY"m"MM'), lo, hi);
    END LOOP;
END $$;

INSERT INTO messages SELECT * FROM messages_v1;
DROP TABLE messages_v1;
