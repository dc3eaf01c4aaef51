-- embq schema v6 for SQLite. Write-back destinations, typed pgvector columns, record deletion
-- (embq.forget) and the search function are PostgreSQL features (issue 13); SQLite keeps its
-- vectors as little-endian f32 blobs. The version moves in step with PostgreSQL's.
SELECT 1;
