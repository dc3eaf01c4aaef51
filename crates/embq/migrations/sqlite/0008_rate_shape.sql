-- embq schema v8 for SQLite: nothing to change. The fleet budget's shape and in-flight grants
-- (migrations/postgres/0008_rate_shape.sql) need PostgreSQL; a SQLite store always budgets
-- per worker process. This file keeps both stores at the same version number.
SELECT 1;
