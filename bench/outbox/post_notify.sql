-- pgbench: the transaction of POST .../messages plus the NOTIFY a LISTEN-based outbox
-- worker would need in it (docs/OUTBOX.md "Wake-up": what that costs the write path).
\set ch random(1, :channels)
\set u random(1, :users)
BEGIN;
SELECT status, body::text FROM api_message_post(:u, 1, :ch, '{"text":"a benchmark message of a typical length, about eighty characters long."}', 256);
NOTIFY chorus_outbox;
COMMIT;
