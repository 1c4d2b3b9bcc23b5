-- pgbench: the transaction of POST .../messages, as the gateway runs it.
\set ch random(1, :channels)
\set u random(1, :users)
SELECT status, body::text FROM api_message_post(:u, 1, :ch, '{"text":"a benchmark message of a typical length, about eighty characters long."}', 256);
