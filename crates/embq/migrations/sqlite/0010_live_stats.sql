-- embq schema v10 for SQLite: the stats and retention indexes, and schema compatibility on
-- record (see migrations/postgres/0010_live_stats.sql). A SQLite queue has one process, which
-- exports the queue gauges itself: it needs no leases table.

ALTER TABLE schema_version ADD COLUMN compatible_from INTEGER;

CREATE INDEX jobs_live_idx ON jobs (state, priority, run_at) WHERE state IN ('ready', 'running', 'dead');
CREATE INDEX jobs_finished_idx ON jobs (updated_at) WHERE state IN ('done', 'superseded', 'cancelled');
