-- im-archive on PostgreSQL, schema version 3: storing new messages in one round trip.
--
-- A callback stores one message. As separate statements that is a transaction of eight
-- round trips (begin, lock, id, message, pending changes, two memberships, commit); as one
-- call of this function it is one, in one implicit transaction, and the archive merges the
-- callbacks that arrive together into one call (one commit for all of them). The function
-- takes the same advisory locks as the other writes, in the order given (the caller sorts
-- them, so two calls cannot deadlock), so a change arriving on another replica still meets
-- its message. When changes came before a message, their log must be applied (by
-- im-archive's code): the function then raises SQLSTATE IMA01, which rolls the whole call
-- back, and the caller stores those messages through the full transaction.
--
-- Returns, per message in order, whether it was new (false: stored before, a duplicate).
CREATE FUNCTION im_archive_store_many(
    p_vendor text[],
    p_id bytea[],
    p_conversation bytea[],
    p_time bigint[],
    p_message json[],
    p_lock_high integer[],
    p_lock_low integer[],
    p_member_user bytea[],
    p_member_conversation bytea[],
    p_member_json json[]
) RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(array_length(p_id, 1), 0);
    result boolean[] := '{}';
BEGIN
    FOR i IN 1 .. n LOOP
        PERFORM pg_advisory_xact_lock(p_lock_high[i], p_lock_low[i]);
    END LOOP;
    FOR i IN 1 .. n LOOP
        INSERT INTO message_ids (vendor, server_id, server_time)
            VALUES (p_vendor[i], p_id[i], p_time[i]) ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            result := result || false;
            CONTINUE;
        END IF;
        IF EXISTS (SELECT 1 FROM changes WHERE vendor = p_vendor[i] AND target = p_id[i]) THEN
            RAISE EXCEPTION 'changes came before a message' USING ERRCODE = 'IMA01';
        END IF;
        INSERT INTO messages (vendor, server_id, conversation, server_time, original, current)
            VALUES (p_vendor[i], p_id[i], p_conversation[i], p_time[i], p_message[i], p_message[i]);
        result := result || true;
    END LOOP;
    INSERT INTO members (user_id, conversation, conversation_json)
        SELECT u, c, j FROM unnest(p_member_user, p_member_conversation, p_member_json) AS t(u, c, j)
        ON CONFLICT DO NOTHING;
    RETURN result;
END $$;
