-- Agents and their connection history (capability 3). Written only by the batch writer
-- (storage/batch_writer.py); read by the REST API. See docs/persistence.md.

-- One row per agent ever seen. fillfactor < 100 leaves room on each page so the frequent
-- last_seen_at / status updates (no indexed column changes) stay HOT updates.
CREATE TABLE agents (
    instance_uid bytea PRIMARY KEY CHECK (octet_length(instance_uid) = 16),
    uid_text text NOT NULL UNIQUE,
    status text NOT NULL CHECK (status IN ('online', 'offline')),
    serving_instance text,
    transport text CHECK (transport IN ('ws', 'http')),
    agent_name text,
    last_seen_at timestamptz,
    last_connected_at timestamptz,
    last_disconnected_at timestamptz,
    disconnect_reason text,
    capabilities bigint NOT NULL DEFAULT 0,
    description jsonb,
    health jsonb,
    effective_config jsonb,
    remote_config_status jsonb,
    labels jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

-- Keyset pagination of /api/agents/online and /api/agents/offline: WHERE status = $1 AND
-- uid_text > $2 ORDER BY uid_text LIMIT n.
CREATE INDEX agents_status_uid_idx ON agents (status, uid_text);
-- Case-insensitive prefix search on the agent name (pg_trgm is not guaranteed to exist):
-- WHERE lower(agent_name) LIKE lower($1) || '%'.
CREATE INDEX agents_name_idx ON agents (lower(agent_name) text_pattern_ops);
-- Agents held by one server instance (shutdown drain, crash repair, instance failover).
CREATE INDEX agents_serving_online_idx ON agents (serving_instance) WHERE status = 'online';

-- One row per connection. session_id is chosen by the writer when the connection opens, so the
-- open and its later close match exactly and a retried flush cannot duplicate a row.
-- No foreign key to agents: rows are bulk-loaded and the writer orders agent rows first anyway.
CREATE TABLE agent_connection_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id uuid NOT NULL UNIQUE,
    instance_uid bytea NOT NULL CHECK (octet_length(instance_uid) = 16),
    connected_at timestamptz NOT NULL,
    disconnected_at timestamptz,
    duration_s double precision,
    disconnect_reason text,
    remote_addr text,
    transport text NOT NULL CHECK (transport IN ('ws', 'http')),
    serving_instance text NOT NULL
);

-- GET /api/agents/{id}/connection-history: newest first, keyset on (connected_at, id).
CREATE INDEX agent_connection_history_agent_idx
    ON agent_connection_history (instance_uid, connected_at DESC, id DESC);
-- Open sessions (active-connection lookups, shutdown drain, crash repair), per serving instance.
CREATE INDEX agent_connection_history_open_idx
    ON agent_connection_history (serving_instance, instance_uid)
    WHERE disconnected_at IS NULL;
