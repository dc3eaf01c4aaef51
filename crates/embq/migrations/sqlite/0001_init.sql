-- embq schema v1 for SQLite. Times are integer milliseconds since the Unix epoch.

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    source_type      TEXT    NOT NULL,
    source_id        TEXT    NOT NULL,
    content_type     TEXT    NOT NULL DEFAULT 'default',
    text             TEXT    NOT NULL,
    text_sha256      BLOB    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    metadata         TEXT,
    state            TEXT    NOT NULL DEFAULT 'ready'
                     CHECK (state IN ('ready', 'running', 'done', 'dead', 'superseded')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT
);

CREATE INDEX jobs_ready_idx ON jobs (priority DESC, id) WHERE state = 'ready';
CREATE UNIQUE INDEX jobs_pending_key_idx ON jobs (source_type, source_id, content_type) WHERE state = 'ready';
CREATE INDEX jobs_running_idx ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_dead_idx ON jobs (finished_at) WHERE state = 'dead';

CREATE TABLE embeddings (
    source_type  TEXT    NOT NULL,
    source_id    TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    model        TEXT    NOT NULL,
    dimensions   INTEGER NOT NULL,
    embedding    BLOB    NOT NULL,  -- little-endian f32
    text_sha256  BLOB    NOT NULL,
    job_id       INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (source_type, source_id, content_type)
);

CREATE TABLE workers (
    id                TEXT PRIMARY KEY,
    host              TEXT    NOT NULL,
    pid               INTEGER NOT NULL,
    version           TEXT    NOT NULL,
    started_at        INTEGER NOT NULL,
    last_heartbeat_at INTEGER NOT NULL,
    in_flight         INTEGER NOT NULL DEFAULT 0,
    processed         INTEGER NOT NULL DEFAULT 0,
    failed            INTEGER NOT NULL DEFAULT 0,
    state             TEXT    NOT NULL DEFAULT 'running'
);

CREATE TABLE schema_version (
    version    INTEGER NOT NULL PRIMARY KEY,
    applied_at INTEGER NOT NULL
);
