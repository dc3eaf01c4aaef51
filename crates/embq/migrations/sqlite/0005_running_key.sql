-- embq schema v5 for SQLite: find a key's running jobs (see migrations/postgres/0005_running_key.sql).

CREATE INDEX IF NOT EXISTS jobs_running_key_idx ON jobs (source_type, source_id, content_type)
    WHERE state = 'running';
