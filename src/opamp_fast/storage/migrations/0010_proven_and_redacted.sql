-- Whether the session holding an agent proved its uid (a per-agent token or a client
-- certificate naming it). The batch writers refuse, in the same UPDATE that records a connect,
-- to let an instance whose session did not prove the uid displace a live session elsewhere that
-- did (batch_writer._FOREIGN); that instance is told and ends its session. A constant default:
-- no table rewrite.
ALTER TABLE agents ADD COLUMN proven boolean NOT NULL DEFAULT false;

-- Effective configs stored by an earlier release hold what agents reported, secrets included
-- (exporter API keys, passwords, tokens). The server now redacts them before storing them
-- (redaction.py); SQL cannot parse YAML, so the bodies stored before are withheld instead:
-- each file keeps its content type and the sha256 and size of what the agent reported, and the
-- config keeps its hash (computed as OpAMP's remote config hash). The agent's next report of its
-- config (at the latest at its next connect to a fresh server, which asks for its full state)
-- is stored redacted. Rows already in the new shape ("sha256" at the top) are left alone.
WITH files AS (
    SELECT a.instance_uid, f.key AS name, f.value->>'content_type' AS content_type,
        CASE WHEN f.value->>'encoding' = 'base64' THEN decode(f.value->>'body', 'base64')
            ELSE convert_to(f.value->>'body', 'UTF8') END AS body
    FROM agents AS a, jsonb_each(a.effective_config->'config_map') AS f
    WHERE a.effective_config IS NOT NULL AND NOT a.effective_config ? 'sha256'
), shown AS (
    SELECT instance_uid,
        jsonb_object_agg(name, jsonb_build_object(
            'content_type', content_type,
            'sha256', encode(sha256(body), 'hex'),
            'size', octet_length(body),
            'withheld', 'stored by an earlier release, before secrets were redacted; shown '
                || 'again when the agent reports its config'
        )) AS config_map,
        encode(sha256(string_agg(
            int8send(octet_length(convert_to(name, 'UTF8'))) || convert_to(name, 'UTF8')
            || int8send(octet_length(body)) || body
            || int8send(octet_length(convert_to(content_type, 'UTF8')))
            || convert_to(content_type, 'UTF8'),
            ''::bytea ORDER BY convert_to(name, 'UTF8'))), 'hex') AS config_hash
    FROM files GROUP BY instance_uid
)
UPDATE agents AS a
SET effective_config = jsonb_build_object('config_map', s.config_map, 'sha256', s.config_hash)
FROM shown AS s
WHERE a.instance_uid = s.instance_uid;

-- An empty config_map has no files to aggregate: it only gets its hash (that of no files).
UPDATE agents
SET effective_config = jsonb_build_object(
    'config_map', '{}'::jsonb, 'sha256', encode(sha256(''::bytea), 'hex'))
WHERE effective_config IS NOT NULL AND NOT effective_config ? 'sha256';
