-- 003_api.sql - the REST API's write path and reads, as functions.
--
-- Every route of the gateway is one call of one api_* function: one round trip, one
-- transaction. A mutation writes its rows and its one outbox event in that transaction,
-- so a failed request leaves nothing behind (DESIGN.md "Write path").
--
-- Conventions (the gateway relies on them):
--   * api_* functions take the caller's user id first; those under /workspaces/{ws}
--     take the workspace id second and resolve it with api_ws_role() or
--     api_channel_access() before anything else. That is the workspace filter, in one
--     place: a workspace the caller is not in, or a private channel they are not in,
--     answers 404 whatever the route (tests/integration/test_api_isolation.c, and
--     test_api_structure checks every api_* function with p_ws calls one of them).
--   * They return (status int, body jsonb): the HTTP status and the JSON body (NULL
--     body = no content). Errors are raised by api_fail() with SQLSTATE 'CH' + HTTP
--     status, MESSAGE = the error code, DETAIL = the human message, HINT = the field.
--   * Writers take p_parts (the partition count of the installation) last, for the
--     outbox partition_key; every process is configured with the same count.
--   * Bodies arrive as jsonb objects (the gateway has checked that they parse), query
--     arguments as text (NULL when absent); validation is here, next to the rules.

-- The reaction summary of a message ([{emoji,count,users}], api_reactions_json), kept by
-- the reaction writers: history pages read it with the row instead of aggregating the
-- reactions table for each of their 50 messages.
ALTER TABLE messages ADD COLUMN reactions jsonb NOT NULL DEFAULT '[]';

-- ---------------------------------------------------------------------------------------
-- errors and argument checks
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION api_fail(p_status int, p_code text, p_message text, p_field text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'CH' || lpad(p_status::text, 3, '0'), MESSAGE = p_code,
        DETAIL = p_message, HINT = coalesce(p_field, '');
END $$;

CREATE FUNCTION api_invalid(p_field text, p_message text) RETURNS void
LANGUAGE sql AS $$ SELECT api_fail(422, 'validation_failed', p_field || ': ' || p_message, p_field) $$;

-- A required or optional string field of a body, checked for type and length (in
-- characters). Returns NULL when absent and optional.
CREATE FUNCTION api_str(p_body jsonb, p_field text, p_min int, p_max int, p_required bool DEFAULT true)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v jsonb := p_body -> p_field;
    s text;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        IF p_required THEN
            PERFORM api_invalid(p_field, 'is required');
        END IF;
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) <> 'string' THEN
        PERFORM api_invalid(p_field, 'must be a string');
    END IF;
    s := v #>> '{}';
    IF char_length(s) < p_min THEN
        PERFORM api_invalid(p_field, format('must have at least %s characters', p_min));
    END IF;
    IF char_length(s) > p_max THEN
        PERFORM api_invalid(p_field, format('must have at most %s characters (got %s)', p_max, char_length(s)));
    END IF;
    IF s ~ '[[:cntrl:]]' AND p_field NOT IN ('text', 'topic') THEN
        PERFORM api_invalid(p_field, 'must not contain control characters');
    END IF;
    RETURN s;
END $$;

-- A positive (or, with p_min 0, non-negative) integer field of a body.
CREATE FUNCTION api_int(p_body jsonb, p_field text, p_min bigint, p_required bool DEFAULT true)
RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v jsonb := p_body -> p_field;
    n numeric;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        IF p_required THEN
            PERFORM api_invalid(p_field, 'is required');
        END IF;
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) <> 'number' THEN
        PERFORM api_invalid(p_field, 'must be an integer');
    END IF;
    n := (v #>> '{}')::numeric;
    IF n <> trunc(n) OR n < p_min OR n > 9223372036854775807 THEN
        PERFORM api_invalid(p_field, format('must be an integer >= %s', p_min));
    END IF;
    RETURN n::bigint;
END $$;

CREATE FUNCTION api_bool(p_body jsonb, p_field text, p_default bool)
RETURNS bool LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v jsonb := p_body -> p_field;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN p_default;
    END IF;
    IF jsonb_typeof(v) <> 'boolean' THEN
        PERFORM api_invalid(p_field, 'must be true or false');
    END IF;
    RETURN v::text::bool;
END $$;

-- An integer query argument (text as it came in the URL), NULL when absent.
CREATE FUNCTION api_qint(p_value text, p_field text, p_min bigint, p_max bigint)
RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_value IS NULL THEN
        RETURN NULL;
    END IF;
    -- Two steps: SQL does not promise to evaluate OR left to right, and the cast of a
    -- non-number would fail before the pattern refused it.
    IF p_value !~ '^[0-9]{1,18}$' THEN
        PERFORM api_invalid(p_field, format('must be an integer from %s to %s', p_min, p_max));
    END IF;
    IF p_value::bigint < p_min OR p_value::bigint > p_max THEN
        PERFORM api_invalid(p_field, format('must be an integer from %s to %s', p_min, p_max));
    END IF;
    RETURN p_value::bigint;
END $$;

CREATE FUNCTION api_limit(p_value text) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT coalesce(api_qint(p_value, 'limit', 1, 200), 50)::int $$;

-- Cursors are opaque to clients: base64url of "<kind>:<number>".
CREATE FUNCTION api_cursor_make(p_kind text, p_value bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT rtrim(translate(encode(convert_to(p_kind || ':' || p_value, 'UTF8'), 'base64'), '+/', '-_'), '=')
$$;

-- The number inside a cursor of kind p_kind; NULL when p_cursor is NULL; 422 when it is
-- not a cursor of that kind.
CREATE FUNCTION api_cursor_read(p_cursor text, p_kind text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    raw text;
    pad text;
BEGIN
    IF p_cursor IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_cursor !~ '^[A-Za-z0-9_-]{1,64}$' THEN
        PERFORM api_invalid('cursor', 'is not a cursor of this list');
    END IF;
    pad := repeat('=', (4 - length(p_cursor) % 4) % 4);
    BEGIN
        raw := convert_from(decode(translate(p_cursor, '-_', '+/') || pad, 'base64'), 'UTF8');
    EXCEPTION WHEN OTHERS THEN
        raw := NULL;
    END;
    IF raw IS NULL OR raw !~ ('^' || p_kind || ':[0-9]{1,18}$') THEN
        PERFORM api_invalid('cursor', 'is not a cursor of this list');
    END IF;
    RETURN substr(raw, length(p_kind) + 2)::bigint;
END $$;

-- The kind of a cursor ("a" or "b" for history), NULL for anything that is not one
-- (api_cursor_read then answers 422).
CREATE FUNCTION api_cursor_kind(p_cursor text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN substr(convert_from(decode(translate(p_cursor, '-_', '+/')
                                      || repeat('=', (4 - length(p_cursor) % 4) % 4), 'base64'),
                               'UTF8'), 1, 1);
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END $$;

-- ---------------------------------------------------------------------------------------
-- JSON shapes (docs/REST.md "Objects"); events carry the same shapes
-- ---------------------------------------------------------------------------------------

-- STABLE, as to_char is: a function declared no stricter than its body can be inlined
-- into the calling query, which matters at 50 messages a page.
CREATE FUNCTION api_ts(p_t timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT to_char(p_t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

CREATE FUNCTION api_user_json(u users) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', u.id, 'email', u.email, 'name', u.name,
                              'created_at', api_ts(u.created_at))
$$;

CREATE FUNCTION api_ws_json(w workspaces, p_role text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', w.id, 'name', w.name, 'slug', w.slug, 'role', p_role,
                              'created_at', api_ts(w.created_at))
$$;

-- The channel as anyone sees it (events), without the caller's read state.
CREATE FUNCTION api_channel_base_json(c channels) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', c.id, 'workspace_id', c.workspace_id, 'name', c.name,
                              'topic', c.topic, 'private', c.private,
                              'created_by', c.created_by, 'created_at', api_ts(c.created_at),
                              'last_seq', c.last_seq)
$$;

-- p_read: the caller's last_read_seq, NULL when they are not a member.
CREATE FUNCTION api_channel_json(c channels, p_read bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT api_channel_base_json(c) || jsonb_build_object(
        'is_member', p_read IS NOT NULL,
        'last_read_seq', coalesce(p_read, 0),
        'unread', CASE WHEN p_read IS NULL THEN 0 ELSE greatest(c.last_seq - p_read, 0) END)
$$;

CREATE FUNCTION api_reactions_json(p_message bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('emoji', emoji, 'count', n, 'users', users)
                              ORDER BY first_at, emoji), '[]'::jsonb)
      FROM (SELECT emoji, count(*) AS n, jsonb_agg(user_id ORDER BY created_at, user_id) AS users,
                   min(created_at) AS first_at
              FROM reactions WHERE message_id = p_message GROUP BY emoji) r
$$;

-- json, not jsonb: built in key order with no re-parsing, several times cheaper, and the
-- gateway sends it as text anyway.
CREATE FUNCTION api_message_json(m messages) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object('id', m.id, 'workspace_id', m.workspace_id,
                             'channel_id', m.channel_id, 'seq', m.seq, 'user_id', m.user_id,
                             'text', m.text, 'client_msg_id', m.client_msg_id,
                             'parent_id', m.parent_id, 'reply_count', m.reply_count,
                             'last_reply_at', api_ts(m.last_reply_at),
                             'created_at', api_ts(m.created_at),
                             'edited_at', api_ts(m.edited_at),
                             'deleted', m.deleted_at IS NOT NULL,
                             'reactions', m.reactions)
$$;

-- ---------------------------------------------------------------------------------------
-- access: the workspace filter
-- ---------------------------------------------------------------------------------------

-- The caller must exist (a valid token of a user that is gone is a 401).
CREATE FUNCTION api_caller(p_user bigint) RETURNS users
LANGUAGE plpgsql STABLE AS $$
DECLARE
    u users;
BEGIN
    SELECT * INTO u FROM users WHERE id = p_user;
    IF NOT FOUND THEN
        PERFORM api_fail(401, 'unauthorized', 'the token''s user does not exist');
    END IF;
    RETURN u;
END $$;

-- The caller's role in a live workspace; 404 when they are not a member (or it is gone).
CREATE FUNCTION api_ws_role(p_user bigint, p_ws bigint) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r text;
BEGIN
    SELECT m.role INTO r
      FROM workspace_members m JOIN workspaces w ON w.id = m.workspace_id
     WHERE m.workspace_id = p_ws AND m.user_id = p_user AND w.deleted_at IS NULL;
    IF NOT FOUND THEN
        PERFORM api_caller(p_user);
        PERFORM api_fail(404, 'not_found', 'workspace not found');
    END IF;
    RETURN r;
END $$;

CREATE FUNCTION api_is_admin(p_role text) RETURNS bool
LANGUAGE sql IMMUTABLE AS $$ SELECT p_role IN ('owner', 'admin') $$;

-- A live channel of the workspace that the caller may see: 404 otherwise (private
-- channels exist only for their members). read_seq is the caller's last_read_seq, NULL
-- when not a member.
CREATE FUNCTION api_channel_access(p_user bigint, p_ws bigint, p_ch bigint,
                                   OUT role text, OUT ch channels, OUT read_seq bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    role := api_ws_role(p_user, p_ws);
    SELECT * INTO ch FROM channels c
     WHERE c.id = p_ch AND c.workspace_id = p_ws AND c.deleted_at IS NULL;
    IF NOT FOUND THEN
        PERFORM api_fail(404, 'not_found', 'channel not found');
    END IF;
    SELECT cm.last_read_seq INTO read_seq FROM channel_members cm
     WHERE cm.channel_id = p_ch AND cm.user_id = p_user;
    IF ch.private AND read_seq IS NULL THEN
        PERFORM api_fail(404, 'not_found', 'channel not found');
    END IF;
END $$;

-- Like api_channel_access, for writes that need the caller in the channel.
CREATE FUNCTION api_channel_member(p_user bigint, p_ws bigint, p_ch bigint,
                                   OUT role text, OUT ch channels, OUT read_seq bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    a record := api_channel_access(p_user, p_ws, p_ch);
BEGIN
    role := a.role;
    ch := a.ch;
    read_seq := a.read_seq;
    IF read_seq IS NULL THEN
        PERFORM api_fail(403, 'forbidden', 'join the channel first');
    END IF;
END $$;

-- ---------------------------------------------------------------------------------------
-- the outbox
-- ---------------------------------------------------------------------------------------

-- Takes the channel's next seq under its row lock: writers of one channel serialise
-- here, so commit order is seq order and the sequence has no gap. 404 if the channel
-- was deleted meanwhile.
CREATE FUNCTION api_next_seq(p_ch bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    s bigint;
BEGIN
    UPDATE channels SET last_seq = last_seq + 1
     WHERE id = p_ch AND deleted_at IS NULL RETURNING last_seq INTO s;
    IF NOT FOUND THEN
        PERFORM api_fail(404, 'not_found', 'channel not found');
    END IF;
    RETURN s;
END $$;

CREATE FUNCTION api_emit_channel(p_ws bigint, p_ch bigint, p_seq bigint, p_type text,
                                 p_data jsonb, p_users bigint[], p_parts int)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO outbox (partition_key, stream, event_type, workspace_id, channel_id, seq,
                        payload, user_ids)
    VALUES (p_ch % p_parts, 'ch', p_type, p_ws, p_ch, p_seq, p_data, p_users)
$$;

-- A user event: its partition_key is the first target's partition; the outbox worker
-- appends it to the partition of every target.
CREATE FUNCTION api_emit_user(p_ws bigint, p_type text, p_data jsonb, p_users bigint[],
                              p_parts int, p_ch bigint DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO outbox (partition_key, stream, event_type, workspace_id, channel_id, payload,
                        user_ids)
    VALUES (p_users[1] % p_parts, 'u', p_type, p_ws, p_ch, p_data, p_users)
$$;

-- Members of a workspace as an event target list (bounded like the outbox check).
CREATE FUNCTION api_ws_members(p_ws bigint) RETURNS bigint[]
LANGUAGE sql STABLE AS $$
    SELECT array_agg(user_id ORDER BY user_id)
      FROM (SELECT user_id FROM workspace_members WHERE workspace_id = p_ws
             ORDER BY user_id LIMIT 10000) m
$$;

-- ---------------------------------------------------------------------------------------
-- users
-- ---------------------------------------------------------------------------------------

-- Signup: the gateway has checked the password and hashed it (scrypt, off the loop).
CREATE FUNCTION api_signup(p_body jsonb, p_hash text, OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_email text := api_str(p_body, 'email', 3, 320);
    v_name text := btrim(api_str(p_body, 'name', 1, 200));
    u users;
BEGIN
    IF v_email !~ '^[^@[:space:]]+@[^@[:space:]]+$' THEN
        PERFORM api_invalid('email', 'is not an email address');
    END IF;
    IF v_name = '' THEN
        PERFORM api_invalid('name', 'must not be blank');
    END IF;
    INSERT INTO users (email, name, password_hash) VALUES (v_email, v_name, p_hash)
    ON CONFLICT DO NOTHING RETURNING * INTO u;
    IF NOT FOUND THEN
        PERFORM api_fail(409, 'email_taken', 'an account with this email exists');
    END IF;
    status := 201;
    body := jsonb_build_object('user', api_user_json(u));
END $$;

-- Login, first half: the stored hash of an email (the gateway verifies it off the loop).
-- No row when there is no such user.
CREATE FUNCTION api_login_lookup(p_body jsonb, OUT user_id bigint, OUT password_hash text,
                                 OUT body jsonb)
RETURNS SETOF record LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_email text := api_str(p_body, 'email', 1, 320);
BEGIN
    PERFORM api_str(p_body, 'password', 1, 1024);
    RETURN QUERY SELECT u.id, u.password_hash, jsonb_build_object('user', api_user_json(u))
                   FROM users u WHERE lower(u.email) = lower(v_email);
END $$;

CREATE FUNCTION api_me(p_user bigint, OUT status int, OUT body jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    status := 200;
    body := api_user_json(api_caller(p_user));
END $$;

-- ---------------------------------------------------------------------------------------
-- workspaces
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION api_workspace_create(p_user bigint, p_body jsonb, p_parts int,
                                     OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_name text := btrim(api_str(p_body, 'name', 1, 200));
    v_slug text := api_str(p_body, 'slug', 1, 63);
    w workspaces;
BEGIN
    PERFORM api_caller(p_user);
    IF v_name = '' THEN
        PERFORM api_invalid('name', 'must not be blank');
    END IF;
    IF v_slug !~ '^[a-z0-9][a-z0-9_-]{0,62}$' THEN
        PERFORM api_invalid('slug', 'must be lower-case letters, digits, - and _, starting with a letter or digit');
    END IF;
    INSERT INTO workspaces (name, slug, created_by) VALUES (v_name, v_slug, p_user)
    ON CONFLICT (slug) DO NOTHING RETURNING * INTO w;
    IF NOT FOUND THEN
        PERFORM api_fail(409, 'slug_taken', 'a workspace with this slug exists');
    END IF;
    INSERT INTO workspace_members (workspace_id, user_id, role) VALUES (w.id, p_user, 'owner');
    body := api_ws_json(w, 'owner');
    PERFORM api_emit_user(w.id, 'workspace.created', body - 'role', ARRAY[p_user], p_parts);
    status := 201;
END $$;

CREATE FUNCTION api_workspace_list(p_user bigint, p_limit text, p_cursor text,
                                   OUT status int, OUT body jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_limit int := api_limit(p_limit);
    v_after bigint := coalesce(api_cursor_read(p_cursor, 'w'), 0);
    items jsonb;
    last_id bigint;
    n int;
BEGIN
    PERFORM api_caller(p_user);
    SELECT coalesce(jsonb_agg(api_ws_json(w, m.role) ORDER BY w.id), '[]'), max(w.id), count(*)
      INTO items, last_id, n
      FROM (SELECT w.* FROM workspace_members m JOIN workspaces w ON w.id = m.workspace_id
             WHERE m.user_id = p_user AND w.id > v_after AND w.deleted_at IS NULL
             ORDER BY w.id LIMIT v_limit + 1) w
      JOIN workspace_members m ON m.workspace_id = w.id AND m.user_id = p_user;
    -- One row more than asked says whether there is a next page.
    IF n > v_limit THEN
        items := items - v_limit;
        last_id := (items -> (v_limit - 1) ->> 'id')::bigint;
    END IF;
    status := 200;
    body := jsonb_build_object('items', items, 'next_cursor',
                               CASE WHEN n > v_limit THEN api_cursor_make('w', last_id) END);
END $$;

CREATE FUNCTION api_workspace_get(p_user bigint, p_ws bigint, OUT status int, OUT body jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_role text := api_ws_role(p_user, p_ws);
BEGIN
    status := 200;
    SELECT api_ws_json(w, v_role) INTO body FROM workspaces w WHERE w.id = p_ws;
END $$;

CREATE FUNCTION api_workspace_update(p_user bigint, p_ws bigint, p_body jsonb, p_parts int,
                                     OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_role text := api_ws_role(p_user, p_ws);
    v_name text := btrim(api_str(p_body, 'name', 1, 200));
    w workspaces;
BEGIN
    IF NOT api_is_admin(v_role) THEN
        PERFORM api_fail(403, 'forbidden', 'only admins can change the workspace');
    END IF;
    IF v_name = '' THEN
        PERFORM api_invalid('name', 'must not be blank');
    END IF;
    UPDATE workspaces SET name = v_name, updated_at = now() WHERE id = p_ws RETURNING * INTO w;
    body := api_ws_json(w, v_role);
    PERFORM api_emit_user(p_ws, 'workspace.updated', body - 'role', api_ws_members(p_ws), p_parts);
    status := 200;
END $$;

CREATE FUNCTION api_workspace_delete(p_user bigint, p_ws bigint, p_parts int,
                                     OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_role text := api_ws_role(p_user, p_ws);
BEGIN
    IF v_role <> 'owner' THEN
        PERFORM api_fail(403, 'forbidden', 'only owners can delete the workspace');
    END IF;
    PERFORM api_emit_user(p_ws, 'workspace.deleted', jsonb_build_object('id', p_ws),
                          api_ws_members(p_ws), p_parts);
    UPDATE workspaces SET deleted_at = now(), updated_at = now() WHERE id = p_ws;
    status := 204;
END $$;

-- ---------------------------------------------------------------------------------------
-- workspace members
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION api_member_json(p_user bigint, p_role text, p_joined timestamptz) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('user_id', u.id, 'name', u.name, 'email', u.email,
                              'role', p_role, 'joined_at', api_ts(p_joined))
      FROM users u WHERE u.id = p_user
$$;

CREATE FUNCTION api_ws_member_add(p_user bigint, p_ws bigint, p_body jsonb, p_parts int,
                                  OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_role text := api_ws_role(p_user, p_ws);
    v_target bigint := api_int(p_body, 'user_id', 1);
    v_new_role text := coalesce(api_str(p_body, 'role', 1, 16, false), 'member');
    m workspace_members;
BEGIN
    IF v_new_role NOT IN ('owner', 'admin', 'member') THEN
        PERFORM api_invalid('role', 'must be owner, admin or member');
    END IF;
    IF NOT api_is_admin(v_role) OR (v_new_role = 'owner' AND v_role <> 'owner') THEN
        PERFORM api_fail(403, 'forbidden', 'only admins add members, only owners add owners');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM users WHERE id = v_target) THEN
        PERFORM api_fail(404, 'not_found', 'user not found');
    END IF;
    INSERT INTO workspace_members (workspace_id, user_id, role) VALUES (p_ws, v_target, v_new_role)
    ON CONFLICT DO NOTHING RETURNING * INTO m;
    IF NOT FOUND THEN
        PERFORM api_fail(409, 'already_member', 'the user is a member already');
    END IF;
    body := api_member_json(v_target, m.role, m.joined_at);
    PERFORM api_emit_user(p_ws, 'workspace.joined',
                          jsonb_build_object('workspace_id', p_ws, 'user_id', v_target,
                                             'role', m.role),
                          ARRAY[v_target], p_parts);
    status := 201;
END $$;

CREATE FUNCTION api_ws_member_list(p_user bigint, p_ws bigint, p_limit text, p_cursor text,
                                   OUT status int, OUT body jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_role text := api_ws_role(p_user, p_ws);
    v_limit int := api_limit(p_limit);
    v_after bigint := coalesce(api_cursor_read(p_cursor, 'm'), 0);
    items jsonb;
    last_id bigint;
    n int;
BEGIN
    SELECT coalesce(jsonb_agg(api_member_json(m.user_id, m.role, m.joined_at) ORDER BY m.user_id), '[]'),
           max(m.user_id), count(*)
      INTO items, last_id, n
      FROM (SELECT * FROM workspace_members
             WHERE workspace_id = p_ws AND user_id > v_after
             ORDER BY user_id LIMIT v_limit + 1) m;
    -- One row more than asked says whether there is a next page.
    IF n > v_limit THEN
        items := items - v_limit;
        last_id := (items -> (v_limit - 1) ->> 'user_id')::bigint;
    END IF;
    status := 200;
    body := jsonb_build_object('items', items, 'next_cursor',
                               CASE WHEN n > v_limit THEN api_cursor_make('m', last_id) END);
END $$;

CREATE FUNCTION api_ws_member_remove(p_user bigint, p_ws bigint, p_target bigint, p_parts int,
                                     OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_role text := api_ws_role(p_user, p_ws);
    v_target_role text;
    v_channels jsonb;
BEGIN
    SELECT role INTO v_target_role FROM workspace_members
     WHERE workspace_id = p_ws AND user_id = p_target FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM api_fail(404, 'not_found', 'member not found');
    END IF;
    IF p_target <> p_user AND (NOT api_is_admin(v_role) OR (v_target_role = 'owner' AND v_role <> 'owner')) THEN
        PERFORM api_fail(403, 'forbidden', 'only admins remove members, only owners remove owners');
    END IF;
    IF v_target_role = 'owner' AND NOT EXISTS (
        SELECT 1 FROM workspace_members
         WHERE workspace_id = p_ws AND role = 'owner' AND user_id <> p_target) THEN
        PERFORM api_fail(409, 'last_owner', 'the last owner cannot leave the workspace');
    END IF;
    -- The channel memberships go with the workspace membership (foreign key cascade);
    -- the one event lists them so nodes can unsubscribe the user.
    SELECT coalesce(jsonb_agg(channel_id ORDER BY channel_id), '[]') INTO v_channels
      FROM channel_members WHERE workspace_id = p_ws AND user_id = p_target;
    DELETE FROM workspace_members WHERE workspace_id = p_ws AND user_id = p_target;
    PERFORM api_emit_user(p_ws, 'workspace.left',
                          jsonb_build_object('workspace_id', p_ws, 'user_id', p_target,
                                             'channels', v_channels),
                          ARRAY[p_target], p_parts);
    status := 204;
END $$;

-- ---------------------------------------------------------------------------------------
-- channels
-- ---------------------------------------------------------------------------------------

-- Channel names: lower-case, like Slack's; 1..80 characters.
CREATE FUNCTION api_channel_name(p_body jsonb, p_required bool) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v text := api_str(p_body, 'name', 1, 80, p_required);
BEGIN
    IF v IS NOT NULL AND v !~ '^[a-z0-9][a-z0-9_-]*$' THEN
        PERFORM api_invalid('name', 'must be lower-case letters, digits, - and _');
    END IF;
    RETURN v;
END $$;

CREATE FUNCTION api_channel_create(p_user bigint, p_ws bigint, p_body jsonb, p_parts int,
                                   OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_role text := api_ws_role(p_user, p_ws);
    v_name text := api_channel_name(p_body, true);
    v_private bool := api_bool(p_body, 'private', false);
    v_topic text := api_str(p_body, 'topic', 0, 1000, false);
    c channels;
BEGIN
    INSERT INTO channels (workspace_id, name, private, topic, created_by, last_seq)
    VALUES (p_ws, v_name, v_private, v_topic, p_user, 1)
    ON CONFLICT DO NOTHING RETURNING * INTO c;
    IF NOT FOUND THEN
        PERFORM api_fail(409, 'channel_name_taken', 'a channel with this name exists');
    END IF;
    INSERT INTO channel_members (channel_id, user_id, workspace_id, last_read_seq)
    VALUES (c.id, p_user, p_ws, 1);
    PERFORM api_emit_channel(p_ws, c.id, 1, 'channel.created', api_channel_base_json(c),
                             ARRAY[p_user], p_parts);
    status := 201;
    body := api_channel_json(c, 1);
END $$;

CREATE FUNCTION api_channel_list(p_user bigint, p_ws bigint, p_limit text, p_cursor text,
                                 OUT status int, OUT body jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_role text := api_ws_role(p_user, p_ws);
    v_limit int := api_limit(p_limit);
    v_after bigint := coalesce(api_cursor_read(p_cursor, 'c'), 0);
    items jsonb;
    last_id bigint;
    n int;
BEGIN
    SELECT coalesce(jsonb_agg(api_channel_json(c, cm.last_read_seq) ORDER BY c.id), '[]'),
           max(c.id), count(*)
      INTO items, last_id, n
      FROM (SELECT c.* FROM channels c
             WHERE c.workspace_id = p_ws AND c.id > v_after AND c.deleted_at IS NULL
               AND (NOT c.private OR EXISTS (SELECT 1 FROM channel_members x
                                              WHERE x.channel_id = c.id AND x.user_id = p_user))
             ORDER BY c.id LIMIT v_limit + 1) c
      LEFT JOIN channel_members cm ON cm.channel_id = c.id AND cm.user_id = p_user;
    -- One row more than asked says whether there is a next page.
    IF n > v_limit THEN
        items := items - v_limit;
        last_id := (items -> (v_limit - 1) ->> 'id')::bigint;
    END IF;
    status := 200;
    body := jsonb_build_object('items', items, 'next_cursor',
                               CASE WHEN n > v_limit THEN api_cursor_make('c', last_id) END);
END $$;

CREATE FUNCTION api_channel_get(p_user bigint, p_ws bigint, p_ch bigint,
                                OUT status int, OUT body jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    a record := api_channel_access(p_user, p_ws, p_ch);
BEGIN
    status := 200;
    body := api_channel_json(a.ch, a.read_seq);
END $$;

CREATE FUNCTION api_channel_may_manage(p_role text, p_creator bigint, p_user bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT api_is_admin(p_role) AND p_creator IS DISTINCT FROM p_user THEN
        PERFORM api_fail(403, 'forbidden', 'only admins and the channel''s creator can change it');
    END IF;
END $$;

CREATE FUNCTION api_channel_update(p_user bigint, p_ws bigint, p_ch bigint, p_body jsonb,
                                   p_parts int, OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    a record := api_channel_access(p_user, p_ws, p_ch);
    v_name text := api_channel_name(p_body, false);
    v_topic text := api_str(p_body, 'topic', 0, 1000, false);
    v_seq bigint;
    c channels;
BEGIN
    PERFORM api_channel_may_manage(a.role, (a.ch).created_by, p_user);
    IF v_name IS NULL AND NOT p_body ? 'topic' THEN
        PERFORM api_invalid('name', 'give name or topic');
    END IF;
    v_seq := api_next_seq(p_ch);
    BEGIN
        UPDATE channels SET name = coalesce(v_name, name),
                            topic = CASE WHEN p_body ? 'topic' THEN v_topic ELSE topic END,
                            updated_at = now()
         WHERE id = p_ch RETURNING * INTO c;
    EXCEPTION WHEN unique_violation THEN
        PERFORM api_fail(409, 'channel_name_taken', 'a channel with this name exists');
    END;
    PERFORM api_emit_channel(p_ws, p_ch, v_seq, 'channel.updated', api_channel_base_json(c),
                             NULL, p_parts);
    status := 200;
    body := api_channel_json(c, a.read_seq);
END $$;

CREATE FUNCTION api_channel_delete(p_user bigint, p_ws bigint, p_ch bigint, p_parts int,
                                   OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    a record := api_channel_access(p_user, p_ws, p_ch);
    v_seq bigint;
BEGIN
    PERFORM api_channel_may_manage(a.role, (a.ch).created_by, p_user);
    v_seq := api_next_seq(p_ch);
    UPDATE channels SET deleted_at = now(), updated_at = now() WHERE id = p_ch;
    PERFORM api_emit_channel(p_ws, p_ch, v_seq, 'channel.deleted',
                             jsonb_build_object('id', p_ch), NULL, p_parts);
    status := 204;
END $$;

-- ---------------------------------------------------------------------------------------
-- channel members
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION api_channel_member_json(p_user bigint, p_joined timestamptz) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('user_id', u.id, 'name', u.name, 'email', u.email,
                              'joined_at', api_ts(p_joined))
      FROM users u WHERE u.id = p_user
$$;

-- Adds p_target to the channel with its member.joined event. False when already in.
CREATE FUNCTION api_channel_join_one(p_ws bigint, p_ch bigint, p_target bigint, p_parts int)
RETURNS bool LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM channel_members WHERE channel_id = p_ch AND user_id = p_target) THEN
        RETURN false;
    END IF;
    v_seq := api_next_seq(p_ch);  -- locks the channel: concurrent joins serialise here
    INSERT INTO channel_members (channel_id, user_id, workspace_id, last_read_seq)
    VALUES (p_ch, p_target, p_ws, v_seq)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        -- joined by a concurrent request after our check: undo our seq
        RAISE EXCEPTION USING ERRCODE = 'CH409', MESSAGE = 'retry_idempotent',
            DETAIL = 'a concurrent request added this member', HINT = '';
    END IF;
    PERFORM api_emit_channel(p_ws, p_ch, v_seq, 'member.joined',
                             jsonb_build_object('channel_id', p_ch, 'user_id', p_target),
                             ARRAY[p_target], p_parts);
    RETURN true;
END $$;

CREATE FUNCTION api_channel_member_add(p_user bigint, p_ws bigint, p_ch bigint, p_body jsonb,
                                       p_parts int, OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    a record := api_channel_access(p_user, p_ws, p_ch);
    v_target bigint := api_int(p_body, 'user_id', 1);
BEGIN
    IF a.read_seq IS NULL AND NOT api_is_admin(a.role) THEN
        PERFORM api_fail(403, 'forbidden', 'only channel members and admins add members');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM workspace_members WHERE workspace_id = p_ws AND user_id = v_target) THEN
        PERFORM api_fail(404, 'not_found', 'user not found in this workspace');
    END IF;
    IF NOT api_channel_join_one(p_ws, p_ch, v_target, p_parts) THEN
        PERFORM api_fail(409, 'already_member', 'the user is in the channel already');
    END IF;
    status := 201;
    SELECT api_channel_member_json(cm.user_id, cm.joined_at) INTO body
      FROM channel_members cm WHERE cm.channel_id = p_ch AND cm.user_id = v_target;
END $$;

CREATE FUNCTION api_channel_member_list(p_user bigint, p_ws bigint, p_ch bigint, p_limit text,
                                        p_cursor text, OUT status int, OUT body jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    a record := api_channel_access(p_user, p_ws, p_ch);
    v_limit int := api_limit(p_limit);
    v_after bigint := coalesce(api_cursor_read(p_cursor, 'm'), 0);
    items jsonb;
    last_id bigint;
    n int;
BEGIN
    SELECT coalesce(jsonb_agg(api_channel_member_json(m.user_id, m.joined_at) ORDER BY m.user_id), '[]'),
           max(m.user_id), count(*)
      INTO items, last_id, n
      FROM (SELECT * FROM channel_members WHERE channel_id = p_ch AND user_id > v_after
             ORDER BY user_id LIMIT v_limit + 1) m;
    -- One row more than asked says whether there is a next page.
    IF n > v_limit THEN
        items := items - v_limit;
        last_id := (items -> (v_limit - 1) ->> 'user_id')::bigint;
    END IF;
    status := 200;
    body := jsonb_build_object('items', items, 'next_cursor',
                               CASE WHEN n > v_limit THEN api_cursor_make('m', last_id) END);
END $$;

CREATE FUNCTION api_channel_member_remove(p_user bigint, p_ws bigint, p_ch bigint,
                                          p_target bigint, p_parts int,
                                          OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    a record := api_channel_access(p_user, p_ws, p_ch);
    v_seq bigint;
BEGIN
    IF p_target <> p_user AND NOT api_is_admin(a.role) THEN
        PERFORM api_fail(403, 'forbidden', 'only admins remove others from a channel');
    END IF;
    v_seq := api_next_seq(p_ch);
    DELETE FROM channel_members WHERE channel_id = p_ch AND user_id = p_target;
    IF NOT FOUND THEN
        PERFORM api_fail(404, 'not_found', 'the user is not in the channel');
    END IF;
    PERFORM api_emit_channel(p_ws, p_ch, v_seq, 'member.left',
                             jsonb_build_object('channel_id', p_ch, 'user_id', p_target),
                             ARRAY[p_target], p_parts);
    status := 204;
END $$;

CREATE FUNCTION api_channel_join(p_user bigint, p_ws bigint, p_ch bigint, p_parts int,
                                 OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    a record := api_channel_access(p_user, p_ws, p_ch);
    c channels;
    v_read bigint;
BEGIN
    -- A private channel the caller is not in was already a 404; one they are in is fine.
    PERFORM api_channel_join_one(p_ws, p_ch, p_user, p_parts);
    SELECT * INTO c FROM channels WHERE id = p_ch;
    SELECT last_read_seq INTO v_read FROM channel_members WHERE channel_id = p_ch AND user_id = p_user;
    status := 200;
    body := api_channel_json(c, v_read);
END $$;

-- ---------------------------------------------------------------------------------------
-- messages
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION api_message_post(p_user bigint, p_ws bigint, p_ch bigint, p_body jsonb,
                                 p_parts int, OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    a record := api_channel_member(p_user, p_ws, p_ch);
    v_text text := api_str(p_body, 'text', 1, 40000);
    v_cmid text := api_str(p_body, 'client_msg_id', 1, 255, false);
    v_parent bigint := api_int(p_body, 'parent_id', 1, false);
    v_seq bigint;
    m messages;
BEGIN
    IF v_cmid IS NOT NULL THEN
        SELECT * INTO m FROM messages
         WHERE channel_id = p_ch AND user_id = p_user AND client_msg_id = v_cmid;
        IF FOUND THEN
            status := 200;
            body := api_message_json(m);
            RETURN;
        END IF;
    END IF;
    IF v_parent IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM messages WHERE id = v_parent AND channel_id = p_ch
           AND parent_id IS NULL AND deleted_at IS NULL) THEN
        PERFORM api_invalid('parent_id', 'is not a message of this channel that can have replies');
    END IF;
    v_seq := api_next_seq(p_ch);
    INSERT INTO messages (channel_id, workspace_id, seq, user_id, text, client_msg_id, parent_id)
    VALUES (p_ch, p_ws, v_seq, p_user, v_text, v_cmid, v_parent)
    ON CONFLICT (channel_id, user_id, client_msg_id) WHERE client_msg_id IS NOT NULL DO NOTHING
    RETURNING * INTO m;
    IF NOT FOUND THEN
        -- A concurrent retry with the same client_msg_id committed after our first look
        -- (we waited for it on the channel lock): raise, so our seq is rolled back, and
        -- let the gateway run the call again, which then finds the first message.
        RAISE EXCEPTION USING ERRCODE = 'CH409', MESSAGE = 'retry_idempotent',
            DETAIL = 'a concurrent request created this message', HINT = '';
    END IF;
    IF v_parent IS NOT NULL THEN
        UPDATE messages SET reply_count = reply_count + 1, last_reply_at = m.created_at
         WHERE id = v_parent;
    END IF;
    body := api_message_json(m);
    PERFORM api_emit_channel(p_ws, p_ch, v_seq, 'message.created', body, NULL, p_parts);
    status := 201;
END $$;

-- Each shape of page has its own static query: one query with "(p IS NULL OR ...)" and
-- coalesce() gets a generic plan from PL/pgSQL that sorts the whole channel (5 ms at 500
-- messages) instead of walking the (channel_id, seq) index (0.1 ms).
CREATE FUNCTION api_message_list(p_user bigint, p_ws bigint, p_ch bigint, p_after text,
                                 p_before text, p_parent text, p_limit text, p_cursor text,
                                 OUT status int, OUT body json, OUT last_seq bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    a record := api_channel_access(p_user, p_ws, p_ch);
    v_limit int := api_limit(p_limit);
    v_after bigint := api_qint(p_after, 'after_seq', 0, 999999999999999999);
    v_before bigint := api_qint(p_before, 'before_seq', 1, 999999999999999999);
    v_parent bigint := api_qint(p_parent, 'parent_id', 1, 999999999999999999);
    v_rows messages[];
    items json;
    lo bigint;
    hi bigint;
BEGIN
    IF v_after IS NOT NULL AND v_before IS NOT NULL THEN
        PERFORM api_invalid('before_seq', 'give after_seq or before_seq, not both');
    END IF;
    IF p_cursor IS NOT NULL THEN
        IF v_after IS NOT NULL OR v_before IS NOT NULL THEN
            PERFORM api_invalid('cursor', 'a cursor replaces after_seq and before_seq');
        END IF;
        IF api_cursor_kind(p_cursor) = 'a' THEN
            v_after := api_cursor_read(p_cursor, 'a');
        ELSE
            v_before := api_cursor_read(p_cursor, 'b');
        END IF;
    END IF;
    v_before := coalesce(v_before, 9223372036854775807);
    -- One row more than asked says whether there is a next page.
    IF v_after IS NOT NULL AND v_parent IS NULL THEN
        v_rows := ARRAY(SELECT m FROM messages m WHERE channel_id = p_ch AND seq > v_after
                         ORDER BY seq LIMIT v_limit + 1);
    ELSIF v_after IS NOT NULL THEN
        v_rows := ARRAY(SELECT m FROM messages m WHERE channel_id = p_ch AND seq > v_after
                           AND parent_id = v_parent ORDER BY seq LIMIT v_limit + 1);
    ELSIF v_parent IS NULL THEN
        v_rows := ARRAY(SELECT m FROM messages m WHERE channel_id = p_ch AND seq < v_before
                         ORDER BY seq DESC LIMIT v_limit + 1);
    ELSE
        v_rows := ARRAY(SELECT m FROM messages m WHERE channel_id = p_ch AND seq < v_before
                           AND parent_id = v_parent ORDER BY seq DESC LIMIT v_limit + 1);
    END IF;
    SELECT coalesce(json_agg(api_message_json(r) ORDER BY r.seq), '[]'), min(r.seq), max(r.seq)
      INTO items, lo, hi
      FROM unnest(v_rows[1:v_limit]) r;
    status := 200;
    -- Read in the same snapshot as the page: the gateway's page cache keys on it.
    last_seq := (a.ch).last_seq;
    body := json_build_object('items', items, 'next_cursor',
        CASE WHEN cardinality(v_rows) <= v_limit THEN NULL
             WHEN v_after IS NOT NULL THEN api_cursor_make('a', hi)
             ELSE api_cursor_make('b', lo) END);
END $$;

-- The message of a channel the caller may see, locked for a change; 404 otherwise.
CREATE FUNCTION api_message_for_update(p_ch bigint, p_id bigint) RETURNS messages
LANGUAGE plpgsql AS $$
DECLARE
    m messages;
BEGIN
    SELECT * INTO m FROM messages WHERE id = p_id AND channel_id = p_ch FOR UPDATE;
    IF NOT FOUND OR m.deleted_at IS NOT NULL THEN
        PERFORM api_fail(404, 'not_found', 'message not found');
    END IF;
    RETURN m;
END $$;

CREATE FUNCTION api_message_update(p_user bigint, p_ws bigint, p_ch bigint, p_id bigint,
                                   p_body jsonb, p_parts int, OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    a record := api_channel_access(p_user, p_ws, p_ch);
    v_text text := api_str(p_body, 'text', 1, 40000);
    m messages := api_message_for_update(p_ch, p_id);
    v_seq bigint;
BEGIN
    IF m.user_id <> p_user AND NOT api_is_admin(a.role) THEN
        PERFORM api_fail(403, 'forbidden', 'only the author or an admin can edit a message');
    END IF;
    v_seq := api_next_seq(p_ch);
    UPDATE messages SET text = v_text, edited_at = now() WHERE id = p_id RETURNING * INTO m;
    body := api_message_json(m);
    PERFORM api_emit_channel(p_ws, p_ch, v_seq, 'message.updated', body, NULL, p_parts);
    status := 200;
END $$;

CREATE FUNCTION api_message_delete(p_user bigint, p_ws bigint, p_ch bigint, p_id bigint,
                                   p_parts int, OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    a record := api_channel_access(p_user, p_ws, p_ch);
    m messages := api_message_for_update(p_ch, p_id);
    v_seq bigint;
BEGIN
    IF m.user_id <> p_user AND NOT api_is_admin(a.role) THEN
        PERFORM api_fail(403, 'forbidden', 'only the author or an admin can delete a message');
    END IF;
    v_seq := api_next_seq(p_ch);
    -- The text is blanked so the content is really gone; the row keeps its place.
    UPDATE messages SET text = '', deleted_at = now(), reactions = '[]' WHERE id = p_id;
    DELETE FROM reactions WHERE message_id = p_id;
    PERFORM api_emit_channel(p_ws, p_ch, v_seq, 'message.deleted',
                             jsonb_build_object('id', p_id, 'channel_id', p_ch,
                                                'message_seq', m.seq),
                             NULL, p_parts);
    status := 204;
END $$;

-- ---------------------------------------------------------------------------------------
-- reactions and read markers
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION api_emoji(p_emoji text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_emoji IS NULL OR p_emoji = '' OR char_length(p_emoji) > 100
       OR p_emoji ~ '[[:space:][:cntrl:]/]' THEN
        PERFORM api_invalid('emoji', 'must be 1 to 100 characters without spaces or /');
    END IF;
    RETURN p_emoji;
END $$;

CREATE FUNCTION api_reaction_put(p_user bigint, p_ws bigint, p_ch bigint, p_id bigint,
                                 p_emoji text, p_parts int, OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    a record := api_channel_member(p_user, p_ws, p_ch);
    v_emoji text := api_emoji(p_emoji);
    m messages := api_message_for_update(p_ch, p_id);
    v_seq bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM reactions
                    WHERE message_id = p_id AND emoji = v_emoji AND user_id = p_user) THEN
        v_seq := api_next_seq(p_ch);
        INSERT INTO reactions (message_id, user_id, emoji) VALUES (p_id, p_user, v_emoji);
        UPDATE messages SET reactions = api_reactions_json(p_id) WHERE id = p_id RETURNING * INTO m;
        PERFORM api_emit_channel(p_ws, p_ch, v_seq, 'reaction.added',
                                 jsonb_build_object('message_id', p_id, 'emoji', v_emoji,
                                                    'user_id', p_user),
                                 NULL, p_parts);
    END IF;
    status := 200;
    body := api_message_json(m);
END $$;

CREATE FUNCTION api_reaction_delete(p_user bigint, p_ws bigint, p_ch bigint, p_id bigint,
                                    p_emoji text, p_parts int, OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    a record := api_channel_member(p_user, p_ws, p_ch);
    v_emoji text := api_emoji(p_emoji);
    m messages := api_message_for_update(p_ch, p_id);
    v_seq bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM reactions
                WHERE message_id = p_id AND emoji = v_emoji AND user_id = p_user) THEN
        v_seq := api_next_seq(p_ch);
        DELETE FROM reactions WHERE message_id = p_id AND emoji = v_emoji AND user_id = p_user;
        UPDATE messages SET reactions = api_reactions_json(p_id) WHERE id = p_id RETURNING * INTO m;
        PERFORM api_emit_channel(p_ws, p_ch, v_seq, 'reaction.removed',
                                 jsonb_build_object('message_id', p_id, 'emoji', v_emoji,
                                                    'user_id', p_user),
                                 NULL, p_parts);
    END IF;
    status := 200;
    body := api_message_json(m);
END $$;

CREATE FUNCTION api_read(p_user bigint, p_ws bigint, p_ch bigint, p_body jsonb, p_parts int,
                         OUT status int, OUT body jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    a record := api_channel_member(p_user, p_ws, p_ch);
    v_seq bigint := least(api_int(p_body, 'seq', 0), (a.ch).last_seq);
    v_read bigint;
BEGIN
    -- Markers only move forward: a stale client cannot un-read a channel.
    UPDATE channel_members SET last_read_seq = v_seq
     WHERE channel_id = p_ch AND user_id = p_user AND last_read_seq < v_seq
     RETURNING last_read_seq INTO v_read;
    IF FOUND THEN
        PERFORM api_emit_user(p_ws, 'read.updated',
                              jsonb_build_object('channel_id', p_ch, 'last_read_seq', v_read),
                              ARRAY[p_user], p_parts, p_ch);
    ELSE
        v_read := a.read_seq;
    END IF;
    status := 200;
    body := jsonb_build_object('channel_id', p_ch, 'last_read_seq', v_read,
                               'unread', greatest((a.ch).last_seq - v_read, 0));
END $$;

-- The access check and current last_seq of a channel: all the gateway needs to know that
-- a history page it rendered at this last_seq is still exact (every change to a
-- channel's messages takes a new seq).
CREATE FUNCTION api_channel_seq(p_user bigint, p_ws bigint, p_ch bigint,
                                OUT status int, OUT last_seq bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    a record := api_channel_access(p_user, p_ws, p_ch);
BEGIN
    status := 200;
    last_seq := (a.ch).last_seq;
END $$;
