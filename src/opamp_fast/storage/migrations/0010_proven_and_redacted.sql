-- Whether the session holding an agent proved its uid (a per-agent token or a client
-- certificate naming it). The batch writers refuse, in the same UPDATE that records a connect,
-- to let an instance whose session did not prove the uid displace a live session elsewhere that
-- did (batch_writer._FOREIGN); that instance is told and ends its session. A constant default:
-- no table rewrite.
ALTER TABLE agents ADD COLUMN proven boolean NOT NULL DEFAULT false;
