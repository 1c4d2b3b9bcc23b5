-- bench/rest/setup.sql - :users users, one workspace, :channels channels with every user
-- in every channel. Ids start at 1 in the fresh database bench/rest/run creates.
INSERT INTO users (email, name, password_hash)
SELECT 'bench' || i || '@bench.chorus.dev', 'Bench ' || i, '$scrypt$not-a-login$'
  FROM generate_series(1, :users) i;
INSERT INTO workspaces (name, slug, created_by) VALUES ('Bench', 'bench', 1);
INSERT INTO workspace_members (workspace_id, user_id, role)
SELECT 1, i, CASE WHEN i = 1 THEN 'owner' ELSE 'member' END FROM generate_series(1, :users) i;
INSERT INTO channels (workspace_id, name, created_by)
SELECT 1, 'bench-' || i, 1 FROM generate_series(1, :channels) i;
INSERT INTO channel_members (channel_id, user_id, workspace_id)
SELECT c, u, 1 FROM generate_series(1, :channels) c, generate_series(1, :users) u;
ANALYZE;
