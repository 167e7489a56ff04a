-- Day-2 operations (docs/api.md "Commands"): restarts (one agent, or a group in batches),
-- custom messages both ways, and the components each agent reports it is built with.

-- What the batch writer now keeps of an agent's reports: its custom capabilities (a JSON list of
-- strings) and the set of components it reported, by the digest of that set (component_sets).
-- last_restart_requested_at is written by the API (and the group restart driver) when a
-- Restart command is sent. Nullable columns without defaults: no table rewrite.
ALTER TABLE agents
    ADD COLUMN custom_capabilities jsonb,
    ADD COLUMN available_components_digest bytea,
    ADD COLUMN last_restart_requested_at timestamptz;
-- Pre-flight checks and group pages count the agents of each component set.
CREATE INDEX agents_components_idx ON agents (available_components_digest)
    WHERE available_components_digest IS NOT NULL;

-- One row per distinct set of components agents reported (a fleet runs a few builds: thousands
-- of agents share one row). The key is our own digest of the reported message, never the hash
-- the agent claims, so an agent cannot make others look as if they had its components.
CREATE TABLE component_sets (
    digest bytea PRIMARY KEY CHECK (octet_length(digest) = 32),
    agent_hash bytea NOT NULL,
    components jsonb NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now()
);

-- Custom messages: from agents (written by the batch writer, the newest 100 per agent kept) and
-- to agents (written by the API when an operator sends one; the instance holding the agent reads
-- it back by id when the request came through another instance).
CREATE TABLE agent_custom_messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_uid bytea NOT NULL CHECK (octet_length(instance_uid) = 16),
    direction text NOT NULL CHECK (direction IN ('from_agent', 'to_agent')),
    at timestamptz NOT NULL,
    capability text NOT NULL,
    type text NOT NULL,
    data bytea NOT NULL,
    serving_instance text,
    sent_by text
);
CREATE INDEX agent_custom_messages_agent_idx
    ON agent_custom_messages (instance_uid, direction, id DESC);

-- A restart of a group's members in batches, driven by whichever instance locks its row
-- (FOR UPDATE SKIP LOCKED), like rollouts; cancelling it is an UPDATE every instance sees.
CREATE TABLE group_restarts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_name text NOT NULL REFERENCES agent_groups (name) ON DELETE CASCADE,
    state text NOT NULL CHECK (state IN ('running', 'completed', 'cancelled')),
    batch_percent integer NOT NULL CHECK (batch_percent BETWEEN 1 AND 100),
    pause_s integer NOT NULL CHECK (pause_s BETWEEN 0 AND 86400),
    targets integer NOT NULL,
    batches integer NOT NULL DEFAULT 0,
    requested integer NOT NULL DEFAULT 0,
    skipped integer NOT NULL DEFAULT 0,
    next_batch_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    ended_by text
);
CREATE UNIQUE INDEX group_restarts_one_running_idx ON group_restarts (group_name)
    WHERE state = 'running';
CREATE INDEX group_restarts_group_idx ON group_restarts (group_name, id DESC);

-- The agents a group restart targets (the members online and accepting restarts when it
-- started), the batch that reached each, and what happened: requested, or skipped (offline or
-- no longer accepting restarts when its batch came).
CREATE TABLE group_restart_agents (
    restart_id bigint NOT NULL REFERENCES group_restarts (id) ON DELETE CASCADE,
    instance_uid bytea NOT NULL,
    batch integer,
    outcome text CHECK (outcome IN ('requested', 'skipped')),
    at timestamptz,
    PRIMARY KEY (restart_id, instance_uid)
);
