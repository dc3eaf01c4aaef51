-- embq schema v9 for PostgreSQL: the batch lane (OpenAI Batch API at half price, issue 16).
--
-- A job carries its lane: `online` (claimed by workers as before) or `batch` (gathered into
-- provider batches by a worker whose BATCH_LANE is on). A job inside a submitted batch stays
-- `running` under the batch's lease token with no lease expiry: the online claim takes only
-- `ready` jobs and the lease sweep only expired leases, so neither touches it, and the finish
-- path's guards (lease token, newest text wins) apply to its results unchanged.
-- Adding a column with a constant default rewrites nothing.

ALTER TABLE embq.jobs ADD COLUMN lane text NOT NULL DEFAULT 'online'
    CONSTRAINT jobs_lane_check CHECK (lane IN ('online', 'batch'));
ALTER TABLE embq.jobs ADD COLUMN provider_batch bigint;

-- The online claim with the lane on, and the batch lane's gathering, each scan their own lane.
CREATE INDEX IF NOT EXISTS jobs_ready_online_idx ON embq.jobs (priority DESC, id)
    WHERE state = 'ready' AND lane = 'online';
CREATE INDEX IF NOT EXISTS jobs_ready_batch_idx ON embq.jobs (priority DESC, id)
    WHERE state = 'ready' AND lane = 'batch';
CREATE INDEX IF NOT EXISTS jobs_provider_batch_idx ON embq.jobs (provider_batch)
    WHERE state = 'running' AND provider_batch IS NOT NULL;

-- One provider batch: recorded (with its submission id and jobs) before anything is uploaded,
-- so a crash at any step can be reconciled against the provider instead of submitting twice.
CREATE TABLE embq.provider_batches (
    id               bigserial   PRIMARY KEY,
    submission_id    text        NOT NULL UNIQUE,
    state            text        NOT NULL DEFAULT 'uploading'
                     CHECK (state IN ('uploading', 'submitted', 'collecting', 'collected',
                                      'failed', 'expired', 'cancelled')),
    model            text        NOT NULL,
    requests         integer     NOT NULL,
    estimated_tokens bigint      NOT NULL,
    input_file_id    text,
    batch_id         text        UNIQUE,
    provider_status  text,
    output_file_id   text,
    error_file_id    text,
    completed        integer     NOT NULL DEFAULT 0,
    failed           integer     NOT NULL DEFAULT 0,
    billed_tokens    bigint      NOT NULL DEFAULT 0,
    last_error       text,
    lease_owner      text,
    lease_expires_at timestamptz,
    next_check_at    timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    submitted_at     timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX provider_batches_open_idx ON embq.provider_batches (next_check_at)
    WHERE state IN ('uploading', 'submitted', 'collecting');

-- embq.enqueue() gains the lane; calls without it keep working (it defaults to online).
DROP FUNCTION embq.enqueue(text, text, text, text, integer, jsonb);
CREATE FUNCTION embq.enqueue(
    p_source_type  text,
    p_source_id    text,
    p_text         text,
    p_content_type text    DEFAULT 'default',
    p_priority     integer DEFAULT 0,
    p_metadata     jsonb   DEFAULT NULL,
    p_lane         text    DEFAULT 'online'
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
    v_key record;
BEGIN
    FOR v_key IN SELECT * FROM (VALUES ('source_type', p_source_type), ('source_id', p_source_id),
                                       ('content_type', p_content_type)) AS k(name, value) LOOP
        IF v_key.value IS NULL OR v_key.value ~ '^\s*$' THEN
            RAISE EXCEPTION 'embq.enqueue: % must not be empty', v_key.name USING ERRCODE = '22023';
        END IF;
        IF octet_length(v_key.value) > 512 THEN
            RAISE EXCEPTION 'embq.enqueue: % must be at most 512 bytes', v_key.name USING ERRCODE = '22023';
        END IF;
    END LOOP;
    IF p_text IS NULL OR p_text ~ '^\s*$' THEN
        RAISE EXCEPTION 'embq.enqueue: text must not be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(p_text) > 1048576 THEN
        RAISE EXCEPTION 'embq.enqueue: text is % bytes; at most 1048576 are accepted', octet_length(p_text)
            USING ERRCODE = '22023';
    END IF;
    IF p_priority IS NULL THEN
        RAISE EXCEPTION 'embq.enqueue: priority must not be NULL (the default is 0)' USING ERRCODE = '22004';
    END IF;
    IF p_metadata IS NOT NULL AND octet_length(p_metadata::text) > 65536 THEN
        RAISE EXCEPTION 'embq.enqueue: metadata is % bytes of JSON; at most 65536 are accepted',
            octet_length(p_metadata::text) USING ERRCODE = '22023';
    END IF;
    IF p_lane IS NULL OR p_lane NOT IN ('online', 'batch') THEN
        RAISE EXCEPTION 'embq.enqueue: lane must be online or batch' USING ERRCODE = '22023';
    END IF;
    INSERT INTO embq.jobs AS j (source_type, source_id, content_type, text, text_sha256, priority, metadata, lane)
    VALUES (p_source_type, p_source_id, p_content_type, p_text,
            sha256(convert_to(p_text, 'UTF8')), p_priority, p_metadata, p_lane)
    ON CONFLICT (source_type, source_id, content_type) WHERE state = 'ready'
    DO UPDATE SET text = EXCLUDED.text, text_sha256 = EXCLUDED.text_sha256,
                  priority = EXCLUDED.priority, metadata = EXCLUDED.metadata, lane = EXCLUDED.lane,
                  attempts = 0, run_at = now(), updated_at = now(), last_error = NULL
    RETURNING j.id INTO v_id;
    PERFORM pg_notify('embq_jobs', '');
    RETURN v_id;
END
$$;
