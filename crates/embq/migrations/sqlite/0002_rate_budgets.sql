-- embq schema v2 for SQLite: nothing to change. Fleet-wide rate budgets
-- (RATE_LIMIT_SCOPE=fleet, migrations/postgres/0002_rate_budgets.sql) need PostgreSQL;
-- a SQLite store always budgets per worker process. This file keeps both stores at the
-- same version number.
SELECT 1;
