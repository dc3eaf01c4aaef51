-- embq schema v7 for PostgreSQL: embq.enqueue() applies the same limits as the CLI and the
-- library (NewJob::validate): keys non-blank and at most 512 bytes, text not blank (any
-- whitespace, not only spaces) and at most 1 MiB, metadata at most 64 KiB of JSON, a priority.

CREATE OR REPLACE FUNCTION embq.enqueue(
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
