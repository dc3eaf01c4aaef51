-- The ceiling for scripts/bench-drain.sh: embq's claim and finish statements (queue/postgres/claim.rs and layout.rs,
-- with the test clock's COALESCE($1, now()) as plain now()) driven by pgbench with no worker.
-- One run claims :batch ready jobs in one transaction, then marks them done and upserts one
-- vector each in a second, as a worker does.
--
-- The vectors come from bench_vectors (one dense random vector per position in the batch, kept
-- inline so reading it costs a buffer hit), not from the client: the ceiling pays nothing to
-- receive or parse them. (pgbench can bind parameters only as text: binding the flat array as
-- embq does, but as text, made PostgreSQL parse every float with float4in and ran at a fifth of
-- embq's binary path, a floor rather than a ceiling.)
BEGIN;
WITH picked AS (
    SELECT id FROM embq.jobs
    WHERE state = 'ready' AND run_at <= now()
    ORDER BY priority DESC, id
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
), checked AS MATERIALIZED (
    -- MATERIALIZED: inlined, the flag's two probes ran again for each of its seven uses below.
    SELECT p.id, EXISTS (SELECT 1 FROM embq.embeddings e
            WHERE e.source_type = j.source_type AND e.source_id = j.source_id
              AND e.content_type = j.content_type AND e.model = 'hash'
              AND e.text_sha256 = j.text_sha256)
        -- An older job for the key still running stores its text's vector later: this one
        -- is then embedded, so the newest text's vector wins (its job id is higher).
        AND NOT EXISTS (SELECT 1 FROM embq.jobs r
            WHERE r.source_type = j.source_type AND r.source_id = j.source_id
              AND r.content_type = j.content_type AND r.state = 'running' AND r.id < j.id) AS unchanged
    FROM picked p JOIN embq.jobs j ON j.id = p.id
), claimed AS (
    UPDATE embq.jobs j
    SET state = CASE WHEN c.unchanged THEN 'done' ELSE 'running' END,
        attempts = j.attempts + 1,
        lease_owner = CASE WHEN c.unchanged THEN NULL ELSE 'pgbench' END,
        lease_token = CASE WHEN c.unchanged THEN NULL ELSE 'tok' END,
        lease_expires_at = CASE WHEN c.unchanged THEN NULL
            ELSE now() + make_interval(secs => 30) END,
        finished_at = CASE WHEN c.unchanged THEN now() ELSE j.finished_at END,
        last_error = CASE WHEN c.unchanged THEN NULL ELSE j.last_error END,
        updated_at = now()
    FROM checked c
    WHERE j.id = c.id
    RETURNING j.id, j.source_type, j.source_id, j.content_type, j.text, j.attempts, j.priority,
        c.unchanged
)
SELECT coalesce(array_agg(id ORDER BY id) FILTER (WHERE NOT unchanged), '{}') AS ids FROM claimed
\gset
COMMIT;
BEGIN;
WITH input AS (
    SELECT * FROM unnest(:ids::bigint[]) WITH ORDINALITY AS t(id, ord)
), done AS (
    UPDATE embq.jobs j
    SET state = 'done', finished_at = now(), updated_at = now(), last_error = NULL,
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
    FROM input i
    WHERE j.id = i.id AND j.state = 'running' AND j.lease_token = 'tok'
    RETURNING j.id, j.source_type, j.source_id, j.content_type, j.text_sha256, i.ord
), stored AS (
    INSERT INTO embq.embeddings AS e
        (source_type, source_id, content_type, model, dimensions, embedding, text_sha256, job_id, updated_at)
    SELECT d.source_type, d.source_id, d.content_type, 'hash', :dims,
           v.v, d.text_sha256, d.id, now()
    FROM done d JOIN bench_vectors v ON v.ord = d.ord
    ON CONFLICT (source_type, source_id, content_type) DO UPDATE
    SET model = EXCLUDED.model, dimensions = EXCLUDED.dimensions, embedding = EXCLUDED.embedding,
        text_sha256 = EXCLUDED.text_sha256, job_id = EXCLUDED.job_id, updated_at = EXCLUDED.updated_at
    WHERE e.job_id <= EXCLUDED.job_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM done) AS done, (SELECT count(*) FROM stored) AS stored;
COMMIT;
