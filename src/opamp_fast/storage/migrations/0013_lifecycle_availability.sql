-- Agent lifecycle, availability and configuration drift (docs/api.md "Agent lifecycle",
-- "Availability", "Configuration drift"; docs/persistence.md "Forgetting agents").

-- Expiry (storage/lifecycle.py) walks offline agents from the longest offline. A partial index
-- on a column that changes only with status transitions (which change the indexed status
-- already), so heartbeat updates stay HOT.
CREATE INDEX agents_offline_since_idx ON agents (last_disconnected_at) WHERE status = 'offline';

-- A group may forget its short-lived members (agents whose description names a pod or a
-- container) sooner than --forget-offline-after-days.
ALTER TABLE agent_groups ADD COLUMN forget_offline_after_s integer
    CHECK (forget_offline_after_s > 0);

-- Drift: the hash of the effective config the agent reports (written by the batch writer with
-- each snapshot, as the "sha256" of effective_config), the one it reported with (or first
-- after) reporting APPLIED for the remote config applied_for_hash, and since when the two
-- differ while the status stays APPLIED for that config. Kept by a trigger on small columns,
-- so the frequent last_seen_at updates never call it and stay HOT.
ALTER TABLE agents
    ADD COLUMN effective_config_hash text,
    ADD COLUMN applied_config_hash text,
    ADD COLUMN applied_for_hash text,
    ADD COLUMN drifted_at timestamptz;

CREATE FUNCTION agents_config_drift() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    status text := NEW.remote_config_status ->> 'status';
    applied text := NEW.remote_config_status ->> 'last_remote_config_hash';
BEGIN
    IF status IS DISTINCT FROM 'APPLIED' THEN
        -- Nothing applied (or applying, or failed): nothing to drift from.
        NEW.applied_for_hash := NULL;
        NEW.applied_config_hash := NULL;
        NEW.drifted_at := NULL;
    ELSIF TG_OP = 'INSERT' OR NEW.applied_for_hash IS DISTINCT FROM applied
            OR (OLD.remote_config_status ->> 'status') IS DISTINCT FROM 'APPLIED' THEN
        -- A new APPLIED report: what the agent runs now is what it applied.
        NEW.applied_for_hash := applied;
        NEW.applied_config_hash := NEW.effective_config_hash;
        NEW.drifted_at := NULL;
    ELSIF NEW.applied_config_hash IS NULL THEN
        -- Its effective config came after the APPLIED status.
        NEW.applied_config_hash := NEW.effective_config_hash;
    ELSIF NEW.effective_config_hash IS DISTINCT FROM NEW.applied_config_hash THEN
        NEW.drifted_at := COALESCE(OLD.drifted_at, now());
    ELSE
        NEW.drifted_at := NULL;  -- back on what it applied
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER agents_config_drift_upd BEFORE UPDATE ON agents FOR EACH ROW
    WHEN (OLD.remote_config_status IS DISTINCT FROM NEW.remote_config_status
          OR OLD.effective_config_hash IS DISTINCT FROM NEW.effective_config_hash)
    EXECUTE FUNCTION agents_config_drift();
CREATE TRIGGER agents_config_drift_ins BEFORE INSERT ON agents FOR EACH ROW
    WHEN (NEW.remote_config_status IS NOT NULL)
    EXECUTE FUNCTION agents_config_drift();

-- Rows written by an earlier release: their effective config's hash (every stored config has
-- one since migration 0010), which also sets the baseline of the agents that report APPLIED.
UPDATE agents SET effective_config_hash = effective_config ->> 'sha256'
WHERE effective_config ? 'sha256';

-- GET /api/agents?drifted=true, and the drifted count of the metrics.
CREATE INDEX agents_drifted_idx ON agents (uid_text) WHERE drifted_at IS NOT NULL;

-- Audit retention (--audit-retention-days): the append-only rule stays, with one way through.
-- A DELETE passes only when the current role is opamp_fast_audit_retention (a NOLOGIN role the
-- retention job assumes with SET LOCAL ROLE, for its own transaction) and only for rows older
-- than a day. UPDATE and TRUNCATE stay refused for everyone, that role included. docs/api.md
-- ("Audit log") says what this protects against and what it cannot: a table owner or a
-- superuser can still disable the trigger, and a member of the role can assume it.
CREATE OR REPLACE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_user = 'opamp_fast_audit_retention'
            AND OLD.at < now() - interval '1 day' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
-- Roles belong to the whole cluster: another database's migration may have created it (at the
-- same moment, even). Without the right to create roles or grant it, the migration still
-- succeeds; audit retention then logs that it cannot delete (docs/operations.md).
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'opamp_fast_audit_retention') THEN
        BEGIN
            CREATE ROLE opamp_fast_audit_retention NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
    GRANT SELECT, DELETE ON audit_log TO opamp_fast_audit_retention;
    EXECUTE format('GRANT opamp_fast_audit_retention TO %I', current_user);
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'audit retention disabled: cannot create or grant its role (%)', SQLERRM;
END $$;
