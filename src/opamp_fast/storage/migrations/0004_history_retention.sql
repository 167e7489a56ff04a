-- migrate: no-transaction
-- History retention (storage/retention.py): closed rows are deleted in small batches, oldest
-- first, by disconnected_at. Built CONCURRENTLY: a big history table keeps taking writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS agent_connection_history_closed_idx
    ON agent_connection_history (disconnected_at)
    WHERE disconnected_at IS NOT NULL;
