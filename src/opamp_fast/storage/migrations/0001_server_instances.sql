-- One row per server instance (several may share this database).
CREATE TABLE server_instances (
    instance_id text PRIMARY KEY,
    version text NOT NULL,
    started_at timestamptz NOT NULL,
    last_heartbeat_at timestamptz NOT NULL,
    stopped_at timestamptz
);
