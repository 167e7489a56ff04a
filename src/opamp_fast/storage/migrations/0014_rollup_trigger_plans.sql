-- The availability rollup's close trigger (0013) joined its two transition tables in a static
-- query, and PL/pgSQL caches a static query's plan for the connection's lifetime: a plan made
-- for a flush that closed a handful of sessions (a nested loop over the two tables) was reused
-- for a shutdown that closed 10,000, which then took seconds per statement and grew with the
-- square of the rows (the batch writer's connections live for hours). EXECUTE plans the join
-- on every call, with the transition tables' real sizes.
CREATE OR REPLACE FUNCTION agent_uptime_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM agent_uptime_add(array_agg(instance_uid), array_agg(connected_at),
            array_agg(disconnected_at), array_agg(disconnect_reason))
        FROM new_rows WHERE disconnected_at IS NOT NULL HAVING count(*) > 0;
    ELSE
        EXECUTE $q$
            SELECT agent_uptime_add(array_agg(n.instance_uid), array_agg(n.connected_at),
                array_agg(n.disconnected_at), array_agg(n.disconnect_reason))
            FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
            WHERE o.disconnected_at IS NULL AND n.disconnected_at IS NOT NULL
            HAVING count(*) > 0
        $q$;
    END IF;
    RETURN NULL;
END
$$;
