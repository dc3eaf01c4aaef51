-- embq schema v9 for SQLite: the batch lane (see migrations/postgres/0009_batch_lane.sql).
-- Times are integer milliseconds since the Unix epoch.

ALTER TABLE jobs ADD COLUMN lane TEXT NOT NULL DEFAULT 'online' CHECK (lane IN ('online', 'batch'));
ALTER TABLE jobs ADD COLUMN provider_batch INTEGER;

CREATE INDEX jobs_ready_online_idx ON jobs (priority DESC, id) WHERE state = 'ready' AND lane = 'online';
CREATE INDEX jobs_ready_batch_idx ON jobs (priority DESC, id) WHERE state = 'ready' AND lane = 'batch';
CREATE INDEX jobs_provider_batch_idx ON jobs (provider_batch)
    WHERE state = 'running' AND provider_batch IS NOT NULL;

CREATE TABLE provider_batches (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    submission_id    TEXT    NOT NULL UNIQUE,
    state            TEXT    NOT NULL DEFAULT 'uploading'
                     CHECK (state IN ('uploading', 'submitted', 'collecting', 'collected',
                                      'failed', 'expired', 'cancelled')),
    model            TEXT    NOT NULL,
    requests         INTEGER NOT NULL,
    estimated_tokens INTEGER NOT NULL,
    input_file_id    TEXT,
    batch_id         TEXT    UNIQUE,
    provider_status  TEXT,
    output_file_id   TEXT,
    error_file_id    TEXT,
    completed        INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0,
    billed_tokens    INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    next_check_at    INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    submitted_at     INTEGER,
    finished_at      INTEGER,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX provider_batches_open_idx ON provider_batches (next_check_at)
    WHERE state IN ('uploading', 'submitted', 'collecting');
