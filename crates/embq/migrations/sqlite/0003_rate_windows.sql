-- embq schema v3 for SQLite: nothing to change. The fleet budget's learned capacities and
-- rolling ledger (migrations/postgres/0003_rate_windows.sql) need PostgreSQL; a SQLite store
-- always budgets per worker process. This file keeps both stores at the same version number.
SELECT 1;
