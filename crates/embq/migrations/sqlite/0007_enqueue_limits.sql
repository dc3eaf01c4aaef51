-- embq schema v7 for SQLite: nothing to change (the limits of PostgreSQL's embq.enqueue()
-- function, migrations/postgres/0007_enqueue_limits.sql, are the library's own). The version
-- moves in step with PostgreSQL's.
SELECT 1;
