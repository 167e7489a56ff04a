-- When an instance began its shutdown drain (storage/batch_writer.py, BatchWriter._drain).
-- The drain closes the instance's open history rows with "server shutdown"; when it runs past its
-- bound, the rows it did not write are closed later, by the instance's next start or by a
-- survivor (fleet/cluster.py), and this time says how: "server shutdown" at this time, as the
-- drain would have written them. Without it they read "server restart" or "server lost", which
-- is what a killed instance leaves. Cleared when the instance starts again.
ALTER TABLE server_instances ADD COLUMN stopping_at timestamptz;
