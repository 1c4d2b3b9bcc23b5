-- pgbench: post_notify.sql without the NOTIFY (the same explicit transaction).
\set ch random(1, :channels)
\set u random(1, :users)
BEGIN;
SELECT status, body::text FROM api_message_post(:u, 1, :ch, '{"text":"a benchmark message of a typical length, about eighty characters long."}', 256);
COMMIT;
