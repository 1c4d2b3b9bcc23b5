-- 006_emit_plpgsql.sql - the event emitters keep their plan for the session.
--
-- api_emit_channel and api_emit_user were SQL-language functions whose body is an
-- INSERT: Postgres 15 cannot inline those, so it parsed, analysed and planned the INSERT
-- again on every call, i.e. on every write of the API. As PL/pgSQL the INSERT is planned
-- once per connection. Measured with pgbench on api_message_post (one client,
-- synchronous_commit off so that only the CPU shows, the two versions alternated three
-- times over emptied tables): 0.43 -> 0.39 ms a post.
CREATE OR REPLACE FUNCTION api_emit_channel(p_ws bigint, p_ch bigint, p_seq bigint, p_type text,
                                            p_data jsonb, p_users bigint[], p_parts int)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (partition_key, stream, event_type, workspace_id, channel_id, seq,
                        payload, user_ids)
    VALUES (p_ch % p_parts, 'ch', p_type, p_ws, p_ch, p_seq, p_data, p_users);
END $$;

-- A user event: its partition_key is the first target's partition; the outbox worker
-- appends it to the partition of every target.
CREATE OR REPLACE FUNCTION api_emit_user(p_ws bigint, p_type text, p_data jsonb,
                                         p_users bigint[], p_parts int,
                                         p_ch bigint DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (partition_key, stream, event_type, workspace_id, channel_id, payload,
                        user_ids)
    VALUES (p_users[1] % p_parts, 'u', p_type, p_ws, p_ch, p_data, p_users);
END $$;
