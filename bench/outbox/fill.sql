-- bench/outbox/fill.sql - :events unpublished message.created events over :channels
-- channels (seq 1.. per channel), with the data the REST API puts in such an event.
-- Channel ids need no channel rows: the outbox has no foreign keys.
INSERT INTO outbox (partition_key, stream, event_type, workspace_id, channel_id, seq, payload)
SELECT c % :partitions, 'ch', 'message.created', 1, c, s,
       jsonb_build_object(
         'id', (s - 1) * :channels + c, 'seq', s, 'channel_id', c, 'workspace_id', 1,
         'user_id', 1 + (s + c) % 64, 'parent_id', NULL, 'client_msg_id', NULL,
         'text', 'a benchmark message of a typical length, about eighty characters long.',
         'reactions', '{}'::jsonb, 'reply_count', 0, 'last_reply_at', NULL,
         'deleted', false, 'edited_at', NULL,
         'created_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
  FROM generate_series(1, :events / :channels) s, generate_series(1, :channels) c;
VACUUM ANALYZE outbox;
