-- The fleet's availability figures for /metrics (storage/availability.py, AvailabilityMonitor),
-- computed by one instance per interval and read by the others. Every instance, every worker of
-- --workers included, ran the fleet-wide statement itself, and all at about the same moment: at
-- 150,000 agents over 10 workers, nine copies of it each minute held both cores for 7-18 s.
CREATE TABLE fleet_figures (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    computed_at timestamptz NOT NULL,
    window_s float8 NOT NULL,
    min_disconnects integer NOT NULL,
    uptime_ratio float8,
    flapping integer NOT NULL,
    drifted integer NOT NULL
);
