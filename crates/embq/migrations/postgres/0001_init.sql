-- embq schema v1 for PostgreSQL. Applied by `embq migrate` inside one transaction.
-- __VECTOR_TYPE__ is replaced by `vector` when pgvector is installed, else `real[]`.

CREATE SCHEMA IF NOT EXISTS embq;

CREATE TABLE embq.jobs (
    id               bigserial PRIMARY KEY,
    source_type      text        NOT NULL,
    source_id        text        NOT NULL,
    content_type     text        NOT NULL DEFAULT 'default',
    text             text        NOT NULL,
    text_sha256      bytea       NOT NULL,
    priority         integer     NOT NULL DEFAULT 0,
    metadata         jsonb,
    state            text        NOT NULL DEFAULT 'ready'
                     CHECK (state IN ('ready', 'running', 'done', 'dead', 'superseded')),
    attempts         integer     NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    lease_owner      text,
    lease_token      text,
    lease_expires_at timestamptz,
    last_error       text
);

-- The claim scans this: ready jobs, highest priority first, then oldest.
CREATE INDEX jobs_ready_idx ON embq.jobs (priority DESC, id) WHERE state = 'ready';
-- At most one pending job per key: enqueue replaces its text.
CREATE UNIQUE INDEX jobs_pending_key_idx ON embq.jobs (source_type, source_id, content_type)
    WHERE state = 'ready';
-- The lease sweep and heartbeats look only at running jobs.
CREATE INDEX jobs_running_idx ON embq.jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_dead_idx ON embq.jobs (finished_at) WHERE state = 'dead';

CREATE TABLE embq.embeddings (
    source_type  text        NOT NULL,
    source_id    text        NOT NULL,
    content_type text        NOT NULL,
    model        text        NOT NULL,
    dimensions   integer     NOT NULL,
    embedding    __VECTOR_TYPE__ NOT NULL,
    text_sha256  bytea       NOT NULL,
    job_id       bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_type, source_id, content_type)
);

CREATE TABLE embq.workers (
    id                text PRIMARY KEY,
    host              text        NOT NULL,
    pid               bigint      NOT NULL,
    version           text        NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    in_flight         bigint      NOT NULL DEFAULT 0,
    processed         bigint      NOT NULL DEFAULT 0,
    failed            bigint      NOT NULL DEFAULT 0,
    state             text        NOT NULL DEFAULT 'running'
);

-- Enqueue from SQL (Supabase edge functions, triggers) with the CLI's rules:
-- a key with a pending job gets its text replaced; workers are woken by NOTIFY.
CREATE FUNCTION embq.enqueue(
    p_source_type  text,
    p_source_id    text,
    p_text         text,
    p_content_type text    DEFAULT 'default',
    p_priority     integer DEFAULT 0,
    p_metadata     jsonb   DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    IF coalesce(btrim(p_source_type), '') = '' OR coalesce(btrim(p_source_id), '') = ''
       OR coalesce(btrim(p_content_type), '') = '' THEN
        RAISE EXCEPTION 'embq.enqueue: source_type, source_id and content_type must not be empty'
            USING ERRCODE = '22023';
    END IF;
    IF coalesce(btrim(p_text), '') = '' THEN
        RAISE EXCEPTION 'embq.enqueue: text must not be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(p_text) > 1048576 THEN
        RAISE EXCEPTION 'embq.enqueue: text is longer than 1048576 bytes' USING ERRCODE = '22023';
    END IF;
    INSERT INTO embq.jobs AS j (source_type, source_id, content_type, text, text_sha256, priority, metadata)
    VALUES (p_source_type, p_source_id, p_content_type, p_text,
            sha256(convert_to(p_text, 'UTF8')), p_priority, p_metadata)
    ON CONFLICT (source_type, source_id, content_type) WHERE state = 'ready'
    DO UPDATE SET text = EXCLUDED.text, text_sha256 = EXCLUDED.text_sha256,
                  priority = EXCLUDED.priority, metadata = EXCLUDED.metadata,
                  attempts = 0, run_at = now(), updated_at = now(), last_error = NULL
    RETURNING j.id INTO v_id;
    PERFORM pg_notify('embq_jobs', '');
    RETURN v_id;
END
$$;

CREATE TABLE embq.schema_version (
    version    integer     NOT NULL PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
