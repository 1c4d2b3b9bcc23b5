-- 002_outbox.sql - the transactional outbox (DESIGN.md "Write path", "Outbox worker").
--
-- Every state change writes its entity rows AND one outbox row per event in the same
-- transaction; the outbox worker appends unpublished rows to the Redis stream of their
-- partition and then sets published_at. Published rows are kept for a retention window
-- (deleted in batches through outbox_published_idx): they are the Postgres copy of the
-- recent channel events that a resuming client may need after the Redis buffer has been
-- trimmed (see outbox_channel_seq_key).
--
-- No foreign keys on purpose: the outbox is a log, not a relation. An event must outlive
-- the row it talks about (channel.deleted after a purge), and an FK would make every
-- insert lock a workspace row FOR KEY SHARE and every purge scan the outbox.

CREATE TABLE outbox (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- channel_id % partitions for 'ch', user_id % partitions for 'u'. The partition count
    -- is configuration (every process agrees on it), so the database cannot check the
    -- modulus; it only keeps the key in range of any sane count.
    partition_key integer     NOT NULL
                  CONSTRAINT outbox_partition_key_check CHECK (partition_key >= 0),
    -- Stream family: 'ch' channel streams (events with ch and seq), 'u' user streams
    -- (channel.joined, channel.left, read.updated...: no seq, aimed at user_ids).
    stream        text        NOT NULL
                  CONSTRAINT outbox_stream_check CHECK (stream IN ('ch', 'u')),
    -- "message.created" etc. At most 31 bytes: it is copied into
    -- chorus_event.type[EVENT_TYPE_MAX = 32] with its NUL.
    event_type    text        NOT NULL
                  CONSTRAINT outbox_event_type_check
                  CHECK (event_type ~ '^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$' AND octet_length(event_type) <= 31),
    workspace_id  bigint      NOT NULL,
    channel_id    bigint,
    seq           bigint,
    -- The event's data (the "d" object of the envelope, or the whole envelope as
    -- event_to_json writes it: the consumers of this column decide; it is an object).
    payload       jsonb       NOT NULL
                  CONSTRAINT outbox_payload_check CHECK (jsonb_typeof(payload) = 'object'),
    -- Users the event is aimed at (user events; optional on channel events, e.g. the
    -- removed member of member.left). Bounded like EVENT_MAX_USERS in event.h.
    user_ids      bigint[]
                  CONSTRAINT outbox_user_ids_check
                  CHECK (cardinality(user_ids) BETWEEN 1 AND 10000
                         AND array_ndims(user_ids) = 1
                         AND array_position(user_ids, NULL) IS NULL),
    -- clock_timestamp(), not now(): the moment the event was written, even late in a long
    -- transaction, so published_at - created_at measures the outbox lag (gate: > 5 s)
    -- rather than the age of the transaction.
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz,
    -- A channel event has its channel and its seq; a user event has recipients and no
    -- seq (API.md: user events carry no ch/seq on the wire; a channel the event is about,
    -- e.g. for channel.joined, may still be recorded in channel_id).
    CONSTRAINT outbox_channel_event_check
        CHECK (stream <> 'ch' OR (channel_id IS NOT NULL AND seq IS NOT NULL AND seq > 0)),
    CONSTRAINT outbox_user_event_check
        CHECK (stream <> 'u' OR (seq IS NULL AND user_ids IS NOT NULL))
)
-- A hot queue: each row is inserted, updated once (published_at) and deleted later.
-- Vacuum it after 1 % of changed rows instead of the default 20 % so the dead versions
-- behind the unpublished-rows index are cleaned up while they are still few.
WITH (autovacuum_vacuum_scale_factor = 0.01,
      autovacuum_vacuum_insert_scale_factor = 0.01,
      autovacuum_analyze_scale_factor = 0.02);

-- The worker's queue: the unpublished rows of its partitions, in id order per partition:
--   SELECT ... FROM outbox WHERE published_at IS NULL AND partition_key = ANY($1)
--   ORDER BY partition_key, id LIMIT $2
-- Partial, so it holds only the (small) backlog, not the retained history. The worker
-- selects "unpublished", never "id > last seen" (DESIGN.md: an id is taken before commit,
-- so a lower id can become visible after a higher one).
CREATE INDEX outbox_unpublished_idx ON outbox (partition_key, id) WHERE published_at IS NULL;

-- Retention: DELETE the published rows older than the window, oldest first, in batches.
-- Also serves the lag metric (max(published_at - created_at) over the last minute).
CREATE INDEX outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- One event per (channel, seq): the database proves the per-channel sequence has no
-- duplicates, and a client resuming from seq N reads
--   SELECT ... FROM outbox WHERE stream = 'ch' AND channel_id = $1 AND seq > $2 ORDER BY seq
-- for as long as the retention window keeps the rows.
CREATE UNIQUE INDEX outbox_channel_seq_key ON outbox (channel_id, seq) WHERE stream = 'ch';
