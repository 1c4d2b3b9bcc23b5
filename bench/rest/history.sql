-- pgbench: the query of GET .../messages?limit=50, as the gateway runs it.
\set ch random(1, :channels)
\set u random(1, :users)
SELECT status, body::text FROM api_message_list(:u, 1, :ch, NULL, NULL, NULL, '50', NULL);
