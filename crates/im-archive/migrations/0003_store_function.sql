-- im-archive on PostgreSQL, schema version 3: storing a new message in one round trip.
--
-- A callback stores one message. As separate statements that is a transaction of eight
-- round trips (begin, lock, id, message, pending changes, two memberships, commit); as
-- one call of this function it is one, in one implicit transaction. The function takes
-- the same advisory lock as the other writes, so a change arriving on another replica
-- still meets its message. When changes came before the message, their log must be
-- applied (by im-archive's code): the function then raises SQLSTATE IMA01, which rolls
-- the whole call back, and the caller stores the message through the full transaction.
CREATE FUNCTION im_archive_store_new(
    p_vendor text,
    p_id bytea,
    p_conversation bytea,
    p_time bigint,
    p_message json,
    p_members bytea[],
    p_conversation_json json,
    p_lock_high integer,
    p_lock_low integer
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock_high, p_lock_low);
    INSERT INTO message_ids (vendor, server_id, server_time)
        VALUES (p_vendor, p_id, p_time) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM changes WHERE vendor = p_vendor AND target = p_id) THEN
        RAISE EXCEPTION 'changes came before this message' USING ERRCODE = 'IMA01';
    END IF;
    INSERT INTO messages (vendor, server_id, conversation, server_time, original, current)
        VALUES (p_vendor, p_id, p_conversation, p_time, p_message, p_message);
    INSERT INTO members (user_id, conversation, conversation_json)
        SELECT u, p_conversation, p_conversation_json FROM unnest(p_members) AS u
        ON CONFLICT DO NOTHING;
    RETURN true;
END $$;
