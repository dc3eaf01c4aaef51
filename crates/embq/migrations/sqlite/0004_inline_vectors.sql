-- embq schema v4 for SQLite: nothing to change. Version 4 moves PostgreSQL's vectors inline
-- (see migrations/postgres/0004_inline_vectors.sql); SQLite already stores a row's blobs in
-- its own pages, and both stores share one version number.
SELECT 1;
