-- Remote configuration management: config versions, groups, per-agent pins, rollouts,
-- the agents' remote-config outcome, and the append-only audit log. See docs/api.md.

-- One row per immutable version of a named configuration. config_hash is the OpAMP config hash
-- (protocol.remote_config_hash over the files); an identical body is the same version.
CREATE TABLE config_versions (
    name text NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    config_hash bytea NOT NULL CHECK (octet_length(config_hash) = 32),
    files jsonb NOT NULL,
    size_bytes integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (name, config_hash)
);
-- Reported hash -> (name, version): status summaries and agent details.
CREATE INDEX config_versions_hash_idx ON config_versions (config_hash);

-- A group is a named selector; config_* is the version its members should run, previous_* the one
-- it ran before (what rollback returns to). No ON DELETE: a used version cannot be deleted.
CREATE TABLE agent_groups (
    name text PRIMARY KEY,
    selector jsonb NOT NULL,
    config_name text,
    config_version integer,
    previous_name text,
    previous_version integer,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (config_name, config_version) REFERENCES config_versions (name, version),
    FOREIGN KEY (previous_name, previous_version) REFERENCES config_versions (name, version)
);

-- One agent pinned to one version: wins over every group.
CREATE TABLE agent_config_pins (
    instance_uid bytea PRIMARY KEY CHECK (octet_length(instance_uid) = 16),
    config_name text NOT NULL,
    config_version integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (config_name, config_version) REFERENCES config_versions (name, version)
);
CREATE INDEX agent_config_pins_config_idx ON agent_config_pins (config_name, config_version);

-- A progressive change of one group from one version to another, advanced batch by batch by
-- whichever instance locks it first (FOR UPDATE SKIP LOCKED). At most one active per group.
CREATE TABLE rollouts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_name text NOT NULL REFERENCES agent_groups (name) ON DELETE CASCADE,
    from_name text,
    from_version integer,
    to_name text NOT NULL,
    to_version integer NOT NULL,
    batch_percent integer NOT NULL CHECK (batch_percent BETWEEN 1 AND 100),
    max_failed_percent integer NOT NULL CHECK (max_failed_percent BETWEEN 0 AND 100),
    state text NOT NULL CHECK (state IN ('running', 'paused', 'completed', 'rolled_back',
                                         'superseded')),
    batches integer NOT NULL DEFAULT 0,
    eligible integer NOT NULL DEFAULT 0,
    admitted integer NOT NULL DEFAULT 0,
    applied integer NOT NULL DEFAULT 0,
    failed integer NOT NULL DEFAULT 0,
    pending integer NOT NULL DEFAULT 0,
    reason text,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (to_name, to_version) REFERENCES config_versions (name, version),
    FOREIGN KEY (from_name, from_version) REFERENCES config_versions (name, version)
);
CREATE UNIQUE INDEX rollouts_one_active_idx ON rollouts (group_name)
    WHERE state IN ('running', 'paused');
CREATE INDEX rollouts_group_idx ON rollouts (group_name, id DESC);

-- The agents a rollout has admitted to its new version, and in which batch.
CREATE TABLE rollout_agents (
    rollout_id bigint NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    instance_uid bytea NOT NULL,
    batch integer NOT NULL,
    PRIMARY KEY (rollout_id, instance_uid)
);

-- The agent's remote-config outcome, kept by a trigger from the remote_config_status the batch
-- writer stores: when it last changed, and the last failure (hash and message), which survives an
-- agent that falls back to its previous config (APPLIED(A), APPLYING(B), FAILED(B), APPLIED(A)).
-- The trigger's WHEN clause is evaluated without calling the function, so the frequent
-- last_seen_at updates cost nothing extra and stay HOT (no indexed column changes).
ALTER TABLE agents
    ADD COLUMN remote_config_updated_at timestamptz,
    ADD COLUMN remote_config_failed_hash text,
    ADD COLUMN remote_config_failed_error text;
CREATE INDEX agents_reported_hash_idx ON agents ((remote_config_status ->> 'last_remote_config_hash'));

CREATE FUNCTION agents_remote_config_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.remote_config_updated_at := now();
    IF NEW.remote_config_status ->> 'status' = 'FAILED' THEN
        NEW.remote_config_failed_hash := NEW.remote_config_status ->> 'last_remote_config_hash';
        NEW.remote_config_failed_error := NEW.remote_config_status ->> 'error_message';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER agents_remote_config_outcome_upd BEFORE UPDATE ON agents FOR EACH ROW
    WHEN (OLD.remote_config_status IS DISTINCT FROM NEW.remote_config_status)
    EXECUTE FUNCTION agents_remote_config_outcome();
CREATE TRIGGER agents_remote_config_outcome_ins BEFORE INSERT ON agents FOR EACH ROW
    WHEN (NEW.remote_config_status IS NOT NULL)
    EXECUTE FUNCTION agents_remote_config_outcome();

-- Who changed what. Append-only, enforced here: UPDATE, DELETE and TRUNCATE raise (for every
-- role, superusers included), and the privileges are revoked as well.
CREATE TABLE audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL,
    role text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('ok', 'denied')),
    before jsonb,
    after jsonb,
    request_id text,
    client_addr text
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, at DESC, id DESC);
CREATE INDEX audit_log_target_idx ON audit_log (target, at DESC, id DESC);
CREATE INDEX audit_log_action_idx ON audit_log (action, at DESC, id DESC);

CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
DO $$ BEGIN
    EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM %I', current_user);
END $$;
