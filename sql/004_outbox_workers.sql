-- 004_outbox_workers.sql - the leases by which outbox workers split the partitions
-- (docs/OUTBOX.md "Several workers").
--
-- Every live worker renews its row each lease/3 ms. The live set is the rows whose lease
-- has not expired, ordered by node_id; the worker at rank r of n owns the partitions p
-- with p % n = r. A worker that dies stops renewing: at most lease + lease/3 later every
-- other worker has dropped it from the live set and its partitions have new owners.
--
-- The lease only says who should publish a partition. What makes it impossible for two
-- workers to publish one partition at once (while their views of the live set differ
-- for up to one beat) is the transaction-scoped advisory lock each batch takes on every
-- partition it reads: pg_try_advisory_xact_lock(1130914386, partition).

CREATE TABLE outbox_workers (
    node_id     text        PRIMARY KEY
                CONSTRAINT outbox_workers_node_id_check CHECK (octet_length(node_id) BETWEEN 1 AND 128),
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz NOT NULL,
    -- The partitions the worker owned at its last beat, for operators and tests; the
    -- worker itself never reads it back.
    partitions  integer[]   NOT NULL DEFAULT '{}'
);
