-- Connection settings offered to agents (docs/api.md "Connection settings"): where they send
-- their own telemetry, and their OpAMP connection (endpoint, headers, heartbeat interval).
-- Header values are secrets: stored as given, never shown by the API.
CREATE TABLE group_connection_settings (
    group_name text PRIMARY KEY REFERENCES agent_groups (name) ON DELETE CASCADE,
    settings jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL
);

-- One agent's own settings, part by part over its group's.
CREATE TABLE agent_connection_settings (
    instance_uid bytea PRIMARY KEY REFERENCES agents (instance_uid) ON DELETE CASCADE,
    settings jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL
);

-- The client certificate last issued to each agent (from its CSR, or made for a rotation):
-- a restarted server re-delivers it to an agent asking again with the same key instead of
-- issuing another. The certificate is public; no private key is ever stored. An agent's first
-- CSR may be signed before the batch writer inserted its row: no foreign key (the trigger below
-- removes these rows with the agent).
CREATE TABLE agent_certificates (
    instance_uid bytea PRIMARY KEY,
    serial text NOT NULL,
    not_before timestamptz NOT NULL,
    not_after timestamptz NOT NULL,
    key_sha256 bytea NOT NULL,
    certificate text NOT NULL,
    origin text NOT NULL CHECK (origin IN ('csr', 'rotation')),
    issued_at timestamptz NOT NULL DEFAULT now(),
    issued_by text NOT NULL
);
CREATE INDEX agent_certificates_not_after_idx ON agent_certificates (not_after);

-- The ConnectionSettingsStatus each agent last reported (written in batches, never per message).
CREATE TABLE agent_connection_status (
    instance_uid bytea PRIMARY KEY,
    settings_hash bytea NOT NULL,
    status text NOT NULL,
    error_message text NOT NULL DEFAULT '',
    reported_at timestamptz NOT NULL
);

CREATE FUNCTION agents_forget_connection_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM agent_certificates WHERE instance_uid = OLD.instance_uid;
    DELETE FROM agent_connection_status WHERE instance_uid = OLD.instance_uid;
    RETURN OLD;
END $$;
CREATE TRIGGER agents_forget_connection_rows AFTER DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION agents_forget_connection_rows();
