-- Read-side indexes of the REST API (capability 4). See src/opamp_fast/storage/queries.py.

-- GET /api/agents?label=key:value -> WHERE labels @> '{"key": "value"}'. jsonb_path_ops is
-- smaller and faster than the default opclass and supports exactly @>, the only operator used.
CREATE INDEX agents_labels_idx ON agents USING gin (labels jsonb_path_ops);
