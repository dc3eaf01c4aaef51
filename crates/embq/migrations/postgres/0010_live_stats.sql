-- embq schema v10 for PostgreSQL: queue statistics and retention that do not grow with history
-- (issue 19, item 5), and schema compatibility on record (item 2).
--
-- Additive: binaries built for schema 9 keep working against it (COMPATIBLE_FROM in schema.rs).
--
-- Building the two indexes scans the table once under a lock that holds back enqueues and claims
-- (a migration runs in one transaction, where CONCURRENTLY is not allowed): on a table with
-- many millions of finished jobs, run `embq prune` first, or migrate when a pause of that scan's
-- length is acceptable.

-- Each migration's declaration of the oldest binary schema version it keeps working; NULL on
-- the rows of migrations that predate it (they count as breaking).
ALTER TABLE embq.schema_version ADD COLUMN compatible_from integer;

-- The workers' stats query counts only these states; finished rows never enter it. Holding
-- priority and run_at makes it an index-only scan once vacuum has marked the pages visible.
CREATE INDEX IF NOT EXISTS jobs_live_idx ON embq.jobs (state, priority, run_at)
    WHERE state IN ('ready', 'running', 'dead');

-- `embq prune` deletes finished jobs oldest first, a batch at a time, through this index.
CREATE INDEX IF NOT EXISTS jobs_finished_idx ON embq.jobs (updated_at)
    WHERE state IN ('done', 'superseded', 'cancelled');

-- Named leases with an expiry, taken and renewed by one UPDATE, so they work through a
-- transaction pooler (no session advisory locks): `fleet-stats` picks the one worker that runs
-- the stats query and exports the fleet-wide queue gauges.
CREATE TABLE embq.leases (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
