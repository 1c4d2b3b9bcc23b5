-- 001_schema.sql - the core entities of Chorus: users, workspaces, channels, messages,
-- reactions and the two membership tables.
--
-- Applied by `chorus migrate` inside one transaction (the runner adds BEGIN/COMMIT and
-- records the version in schema_migrations), so this file holds no transaction control.
-- PostgreSQL 15.
--
-- Conventions
--  * Ids are `bigint GENERATED ALWAYS AS IDENTITY`: an id can never be supplied by
--    accident and drift from its sequence (a test or a seed that really needs a fixed id
--    writes OVERRIDING SYSTEM VALUE and says so).
--  * Times are timestamptz, default now() (the transaction time: every row written by
--    one request carries the same instant).
--  * Length CHECKs are generous ceilings that guard storage and the C buffers; the
--    gateway validates the real (usually tighter) policy first and answers 400/422, so a
--    CHECK violation reaching a client is a bug in the gateway, never a user error.
--  * "Soft delete" (deleted_at) for workspaces, channels and messages: events that refer
--    to them (message.deleted, channel.deleted with their seq) must stay resolvable, and a
--    hard delete of a big channel would be one huge transaction. Physical purges, if ever,
--    go through the ON DELETE CASCADE chains below.
--  * Users are never deleted (accounts are deactivated, not removed): the author columns
--    of messages and reactions reference users without a cascade, and carry no index of
--    their own for that reason.
--  * Denormalised workspace_id columns (channel_members, messages) exist so that every
--    query can be scoped by workspace in one index; composite foreign keys to
--    channels (id, workspace_id) make a mismatch between the copy and the truth
--    impossible rather than merely unlikely.

------------------------------------------------------------------------------------------
-- users
------------------------------------------------------------------------------------------
CREATE TABLE users (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Stored as given (case preserved for display); uniqueness and login use lower(email).
    -- The check is a sanity net, not RFC 5322: one '@' with something on both sides, no
    -- whitespace. 320 = 64 (local part) + 1 + 255 (domain).
    email         text        NOT NULL
                  CONSTRAINT users_email_check
                  CHECK (email ~ '^[^@[:space:]]+@[^@[:space:]]+$' AND char_length(email) <= 320),
    name          text        NOT NULL
                  CONSTRAINT users_name_check
                  CHECK (name ~ '\S' AND name !~ '[[:cntrl:]]' AND char_length(name) <= 200),
    -- A self-describing hash string (e.g. "$argon2id$..." or "$pbkdf2-sha256$..."), so the
    -- algorithm can change without a migration. Never empty: there is no password-less login.
    password_hash text        NOT NULL
                  CONSTRAINT users_password_hash_check
                  CHECK (password_hash <> '' AND char_length(password_hash) <= 1024),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Case-insensitive uniqueness without the citext extension (extensions need superuser
-- on managed Postgres). Login must query `WHERE lower(email) = lower($1)` to use it.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

------------------------------------------------------------------------------------------
-- workspaces
------------------------------------------------------------------------------------------
CREATE TABLE workspaces (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL
                CONSTRAINT workspaces_name_check
                CHECK (name ~ '\S' AND name !~ '[[:cntrl:]]' AND char_length(name) <= 200),
    -- URL-safe, lower case (the gateway lower-cases before insert), 1..63 characters so it
    -- fits a DNS label should workspaces ever get sub-domains.
    -- Unique over ALL rows, deleted ones included: a deleted workspace's slug is not
    -- silently handed to someone else (links and bookmarks keep pointing at "gone", not
    -- at a stranger's workspace). A plain UNIQUE also lets `ON CONFLICT (slug)` work.
    slug        text        NOT NULL
                CONSTRAINT workspaces_slug_key UNIQUE
                CONSTRAINT workspaces_slug_check
                CHECK (slug ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    -- Nullable: the creator's account may be anonymised later; the workspace stays.
    created_by  bigint      REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

------------------------------------------------------------------------------------------
-- workspace_members
------------------------------------------------------------------------------------------
CREATE TABLE workspace_members (
    workspace_id bigint      NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         text        NOT NULL DEFAULT 'member'
                 CONSTRAINT workspace_members_role_check
                 CHECK (role IN ('owner', 'admin', 'member')),
    joined_at    timestamptz NOT NULL DEFAULT now(),
    -- PK order (workspace_id, user_id): the member list of a workspace, and the
    -- authorisation check "is U a member of W, with which role" are both prefix lookups.
    PRIMARY KEY (workspace_id, user_id)
);

-- "The caller's workspaces" (GET /workspaces) and the user side of the cascade from
-- users. workspace_id second so the list pages by workspace id from the index alone;
-- role included so the list with roles is an index-only scan.
CREATE INDEX workspace_members_user_idx ON workspace_members (user_id, workspace_id) INCLUDE (role);

------------------------------------------------------------------------------------------
-- channels
------------------------------------------------------------------------------------------
CREATE TABLE channels (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id bigint      NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         text        NOT NULL
                 CONSTRAINT channels_name_check
                 CHECK (name ~ '\S' AND name !~ '[[:cntrl:]]' AND char_length(name) <= 200),
    private      boolean     NOT NULL DEFAULT false,
    topic        text
                 CONSTRAINT channels_topic_check
                 CHECK (topic !~ '[[:cntrl:]]' AND char_length(topic) <= 1000),
    -- The per-channel event sequence (DESIGN.md "Per-channel sequence"). Every channel
    -- event is written as
    --     UPDATE channels SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq
    -- in the writing transaction: the row lock serialises writers of one channel, so
    -- commit order equals seq order and the sequence has no gaps (a rolled-back
    -- transaction rolls its increment back too, unlike a SEQUENCE).
    last_seq     bigint      NOT NULL DEFAULT 0
                 CONSTRAINT channels_last_seq_check CHECK (last_seq >= 0),
    created_by   bigint      REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    -- Target of the composite foreign keys of channel_members and messages, which thereby
    -- cannot carry a workspace_id that differs from their channel's.
    CONSTRAINT channels_id_workspace_key UNIQUE (id, workspace_id)
)
-- The row is updated once per channel event (last_seq). No index covers last_seq or
-- updated_at, so those updates can be HOT (no index writes) as long as the page has
-- room: leave 30 % of each page free for the new row versions.
WITH (fillfactor = 70);

-- Channel names are unique per workspace, case-insensitively, among live channels only:
-- deleting #general frees the name for a new #general.
CREATE UNIQUE INDEX channels_workspace_name_key ON channels (workspace_id, lower(name))
    WHERE deleted_at IS NULL;

-- The channel list of a workspace, paged by id; also the index behind the cascade from
-- workspaces (which is why it is not partial on deleted_at).
CREATE INDEX channels_workspace_idx ON channels (workspace_id, id);

------------------------------------------------------------------------------------------
-- channel_members
------------------------------------------------------------------------------------------
CREATE TABLE channel_members (
    channel_id    bigint      NOT NULL,
    user_id       bigint      NOT NULL,
    workspace_id  bigint      NOT NULL,
    -- Read marker: the highest seq the user has read. Not checked against
    -- channels.last_seq (another row); the gateway clamps it to last_seq.
    last_read_seq bigint      NOT NULL DEFAULT 0
                  CONSTRAINT channel_members_last_read_seq_check CHECK (last_read_seq >= 0),
    joined_at     timestamptz NOT NULL DEFAULT now(),
    -- Members of a channel (fan-out, member list, "is U in C") by prefix.
    PRIMARY KEY (channel_id, user_id),
    CONSTRAINT channel_members_channel_fkey FOREIGN KEY (channel_id, workspace_id)
        REFERENCES channels (id, workspace_id) ON DELETE CASCADE,
    -- Isolation in the schema itself: a channel member is always a member of the
    -- channel's workspace. Removing someone from a workspace removes their channel
    -- memberships in the same statement. The cascade writes no outbox rows: the gateway
    -- must first DELETE ... RETURNING the user's channel_members rows of that workspace
    -- to emit member.left / channel.left, then delete the workspace membership.
    CONSTRAINT channel_members_workspace_member_fkey FOREIGN KEY (workspace_id, user_id)
        REFERENCES workspace_members (workspace_id, user_id) ON DELETE CASCADE
)
-- last_read_seq is updated on every read marker and is not indexed: keep room for HOT.
WITH (fillfactor = 80);

-- All channels of a user across workspaces: what a WSS node loads on connect to build
-- the user's subscriptions. workspace_id included so that is an index-only scan.
CREATE INDEX channel_members_user_idx ON channel_members (user_id, channel_id) INCLUDE (workspace_id);

-- The user's channels inside one workspace (channel list with last_read_seq/unread), and
-- the index the cascade from workspace_members needs.
CREATE INDEX channel_members_workspace_user_idx ON channel_members (workspace_id, user_id, channel_id);

-- Every query is scoped by workspace as well as channel (DESIGN.md "Isolation"), but
-- workspace_id is a function of channel_id. Without this the planner multiplies the two
-- selectivities, estimates ~0 rows, and for "history after seq N, LIMIT 50" prefers a
-- bitmap scan of the whole channel plus a sort over reading 50 rows in index order.
CREATE STATISTICS channel_members_channel_workspace_stat (dependencies)
    ON channel_id, workspace_id FROM channel_members;

------------------------------------------------------------------------------------------
-- messages
------------------------------------------------------------------------------------------
CREATE TABLE messages (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id    bigint      NOT NULL,
    workspace_id  bigint      NOT NULL,
    -- The seq of this message's message.created event. Edits, reactions and membership
    -- events take seqs of their own, so the seqs of one channel's messages increase but
    -- are not contiguous; (channel_id, seq) is still the total order of the channel.
    seq           bigint      NOT NULL CONSTRAINT messages_seq_check CHECK (seq > 0),
    user_id       bigint      NOT NULL REFERENCES users (id),
    -- 40,000 characters (not bytes) as in Slack's limit; empty only once deleted (a
    -- delete may blank the text so the content is really gone).
    text          text        NOT NULL
                  CONSTRAINT messages_text_check
                  CHECK (char_length(text) <= 40000 AND (text <> '' OR deleted_at IS NOT NULL)),
    -- Client-chosen idempotency key. See messages_client_msg_id_key.
    client_msg_id text
                  CONSTRAINT messages_client_msg_id_check
                  CHECK (client_msg_id <> '' AND char_length(client_msg_id) <= 255),
    -- Thread parent. Same channel as the reply (enforced by messages_parent_fkey).
    -- Threads are one level deep; that rule is the gateway's (it needs the parent row).
    parent_id     bigint,
    -- Maintained by the gateway in the reply's transaction (it already locks the channel).
    reply_count   integer     NOT NULL DEFAULT 0
                  CONSTRAINT messages_reply_count_check CHECK (reply_count >= 0),
    last_reply_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    edited_at     timestamptz,
    deleted_at    timestamptz,
    CONSTRAINT messages_channel_fkey FOREIGN KEY (channel_id, workspace_id)
        REFERENCES channels (id, workspace_id) ON DELETE CASCADE,
    -- History by seq (after_seq / before_seq, both directions), resume from Postgres,
    -- and the proof that no two messages share a seq.
    CONSTRAINT messages_channel_seq_key UNIQUE (channel_id, seq),
    -- Target of messages_parent_fkey. The id is ever-increasing, so this index only
    -- ever appends at its right edge, like the primary key.
    CONSTRAINT messages_id_channel_key UNIQUE (id, channel_id),
    -- A reply in channel A can never point at a message of channel B (which could leak a
    -- private channel's message into a public thread).
    CONSTRAINT messages_parent_fkey FOREIGN KEY (parent_id, channel_id)
        REFERENCES messages (id, channel_id) ON DELETE CASCADE,
    CONSTRAINT messages_parent_not_self_check CHECK (parent_id <> id)
);

-- Idempotent send: "the same client_msg_id from the same user returns the first
-- message". Scoped per channel on purpose: the gateway looks the key up after taking
-- the channel row lock and before incrementing last_seq, so two concurrent retries of
-- one send are serialised by that lock and the second finds the first; no seq is ever
-- spent on a duplicate. A retry always targets the same channel, and a key reused in
-- another channel is a new message there rather than an answer from elsewhere.
CREATE UNIQUE INDEX messages_client_msg_id_key ON messages (channel_id, user_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

-- The replies of a thread in order (ids increase with seq inside a channel), and the
-- index behind the cascade of messages_parent_fkey. Partial: most messages are not
-- replies.
CREATE INDEX messages_parent_idx ON messages (parent_id, id) WHERE parent_id IS NOT NULL;

-- workspace_id depends on channel_id: see channel_members_channel_workspace_stat.
CREATE STATISTICS messages_channel_workspace_stat (dependencies)
    ON channel_id, workspace_id FROM messages;

------------------------------------------------------------------------------------------
-- reactions
------------------------------------------------------------------------------------------
CREATE TABLE reactions (
    message_id bigint      NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    bigint      NOT NULL REFERENCES users (id),
    -- A short name ("+1", "tada") or the emoji itself; it travels in a URL path segment.
    emoji      text        NOT NULL
               CONSTRAINT reactions_emoji_check
               CHECK (emoji <> '' AND emoji !~ '[[:space:][:cntrl:]/]' AND char_length(emoji) <= 100),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- One reaction per (message, user, emoji); PUT is idempotent through
    -- ON CONFLICT DO NOTHING. emoji before user_id so the reactions of a message come out
    -- grouped by emoji (counts and "who reacted with X") straight from the index.
    PRIMARY KEY (message_id, emoji, user_id)
);
