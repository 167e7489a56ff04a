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

-- Availability rollup: per agent and UTC day, what its *closed* sessions contribute to that day
-- (storage/availability.py; docs/persistence.md, "Availability rollup"). A fleet query over
-- days reads one row per agent and day for the days the window covers whole, and raw history
-- only for its two partial days and the open sessions. Rows with reason '' carry the online
-- seconds, the earliest connect of the sessions touching the day (first_conn) and, for a
-- session that runs past the day's end, where its online stretch in that day began
-- (tail_start); rows with a reason count the disconnects of that day.
CREATE TABLE agent_uptime_daily (
    day timestamptz NOT NULL,  -- a UTC midnight
    instance_uid bytea NOT NULL,
    reason text NOT NULL DEFAULT '',
    online_s double precision NOT NULL DEFAULT 0,
    disconnects integer NOT NULL DEFAULT 0,
    first_conn timestamptz,
    tail_start timestamptz,
    PRIMARY KEY (day, instance_uid, reason)
);
CREATE INDEX agent_uptime_daily_agent_idx ON agent_uptime_daily (instance_uid);

-- Adds closed sessions to the rollup (a session ending exactly at midnight adds nothing to the
-- next day). Called once per statement by the triggers below, with the sessions that statement
-- closed or inserted closed: the writer's flush, crash repair, a lost instance's reaping.
CREATE FUNCTION agent_uptime_add(
    uids bytea[], cons timestamptz[], diss timestamptz[], reasons text[]
) RETURNS void LANGUAGE sql AS $$
    WITH s AS (SELECT * FROM unnest(uids, cons, diss, reasons) AS s(uid, con, dis, reason))
    INSERT INTO agent_uptime_daily AS u
        (day, instance_uid, reason, online_s, disconnects, first_conn, tail_start)
    SELECT day, uid, reason, sum(online_s), sum(n)::integer, min(first_conn), min(tail_start)
    FROM (
        SELECT d AS day, s.uid, '' AS reason,
            date_part('epoch', LEAST(s.dis, d + interval '1 day') - GREATEST(s.con, d))
                AS online_s,
            0 AS n, s.con AS first_conn,
            CASE WHEN s.dis > d + interval '1 day' THEN GREATEST(s.con, d) END AS tail_start
        FROM s, generate_series(date_trunc('day', s.con, 'UTC'),
                                date_trunc('day', s.dis, 'UTC'), interval '1 day') AS d
        WHERE s.dis > d OR s.con = s.dis
        UNION ALL
        SELECT date_trunc('day', s.dis, 'UTC'), s.uid, COALESCE(s.reason, 'unknown'), 0, 1,
            NULL, NULL
        FROM s
    ) AS parts
    GROUP BY day, uid, reason
    ON CONFLICT (day, instance_uid, reason) DO UPDATE SET
        online_s = u.online_s + EXCLUDED.online_s,
        disconnects = u.disconnects + EXCLUDED.disconnects,
        first_conn = LEAST(u.first_conn, EXCLUDED.first_conn),
        tail_start = LEAST(u.tail_start, EXCLUDED.tail_start)
$$;

CREATE FUNCTION agent_uptime_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM agent_uptime_add(array_agg(instance_uid), array_agg(connected_at),
            array_agg(disconnected_at), array_agg(disconnect_reason))
        FROM new_rows WHERE disconnected_at IS NOT NULL HAVING count(*) > 0;
    ELSE
        PERFORM agent_uptime_add(array_agg(n.instance_uid), array_agg(n.connected_at),
            array_agg(n.disconnected_at), array_agg(n.disconnect_reason))
        FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
        WHERE o.disconnected_at IS NULL AND n.disconnected_at IS NOT NULL HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER agent_uptime_on_insert AFTER INSERT ON agent_connection_history
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION agent_uptime_rollup();
CREATE TRIGGER agent_uptime_on_close AFTER UPDATE ON agent_connection_history
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION agent_uptime_rollup();

-- The sessions an earlier release closed.
SELECT agent_uptime_add(array_agg(instance_uid), array_agg(connected_at),
    array_agg(disconnected_at), array_agg(disconnect_reason))
FROM agent_connection_history WHERE disconnected_at IS NOT NULL HAVING count(*) > 0;

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
