-- One fleet across many instances (cluster.py, docs/operations.md "Several instances").

-- Each instance publishes its online agents by transport with every flush that changed them, in
-- the same transaction as the rows, and renews its lease (last_heartbeat_at) every few seconds.
-- An instance whose lease ran out is declared lost by a survivor (lost_at), which closes its
-- open history rows with "server lost" and marks its agents offline.
ALTER TABLE server_instances
    ADD COLUMN online_ws integer NOT NULL DEFAULT 0,
    ADD COLUMN online_http integer NOT NULL DEFAULT 0,
    ADD COLUMN lease_s double precision NOT NULL DEFAULT 30,
    ADD COLUMN lost_at timestamptz,
    ADD COLUMN lost_by text;

-- The number of rows in agents, kept by the writers (each adds the agents it inserts), so the
-- fleet summary never counts a million rows.
CREATE TABLE fleet_stats (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    agents_total bigint NOT NULL
);
INSERT INTO fleet_stats (agents_total) SELECT count(*) FROM agents;
