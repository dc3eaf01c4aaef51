-- embq schema v6 for PostgreSQL: vectors reach the app (issue 13).
--
-- * A job may end `cancelled`: its record was deleted (embq.forget), or the row its vector was
--   to be written into no longer exists. Nothing was stored for it.
-- * embq.destinations: a (source_type, content_type) whose vectors are written into a column of
--   the app's own table, keyed by one of its unique columns. For those keys embq.embeddings keeps
--   the bookkeeping (model, text hash, job id) with a NULL vector: the vector is stored once.
-- * The vector column's type (vector(N), halfvec(N) or real[]) and the embq.search function are
--   set by `embq migrate` after these scripts, from EMBEDDING_DIMENSIONS and VECTOR_TYPE.

ALTER TABLE embq.jobs DROP CONSTRAINT IF EXISTS jobs_state_check;
ALTER TABLE embq.jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('ready', 'running', 'done', 'dead', 'superseded', 'cancelled'));

ALTER TABLE embq.embeddings ALTER COLUMN embedding DROP NOT NULL;

CREATE TABLE IF NOT EXISTS embq.destinations (
    source_type   text        NOT NULL,
    content_type  text        NOT NULL DEFAULT 'default',
    table_schema  text        NOT NULL,
    table_name    text        NOT NULL,
    key_column    text        NOT NULL,
    vector_column text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_type, content_type)
);

-- Registers (or replaces) a destination after checking every name against the catalog: the
-- table exists, the vector column is vector, halfvec or real[], and the key column is unique
-- on its own. Workers quote these names; nothing here is ever spliced into SQL unchecked.
CREATE OR REPLACE FUNCTION embq.add_destination(
    p_source_type   text,
    p_table         regclass,
    p_vector_column text,
    p_key_column    text DEFAULT 'id',
    p_content_type  text DEFAULT 'default'
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schema text;
    v_table  text;
    v_vtype  text;
    v_vfull  text;
    v_knum   smallint;
BEGIN
    IF coalesce(btrim(p_source_type), '') = '' OR coalesce(btrim(p_content_type), '') = '' THEN
        RAISE EXCEPTION 'embq.add_destination: source_type and content_type must not be empty'
            USING ERRCODE = '22023';
    END IF;
    SELECT n.nspname, c.relname INTO v_schema, v_table
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = p_table AND c.relkind IN ('r', 'p');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'embq.add_destination: % is not a table', p_table USING ERRCODE = '42809';
    END IF;
    SELECT t.typname, format_type(a.atttypid, a.atttypmod) INTO v_vtype, v_vfull
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = p_table AND a.attname = p_vector_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'embq.add_destination: table % has no column %', p_table, quote_ident(p_vector_column)
            USING ERRCODE = '42703';
    END IF;
    IF v_vtype NOT IN ('vector', 'halfvec', '_float4') THEN
        RAISE EXCEPTION 'embq.add_destination: column %.% is of type %, not vector, halfvec or real[]',
            p_table, quote_ident(p_vector_column), v_vtype USING ERRCODE = '42804';
    END IF;
    SELECT a.attnum INTO v_knum
      FROM pg_attribute a
     WHERE a.attrelid = p_table AND a.attname = p_key_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'embq.add_destination: table % has no column %', p_table, quote_ident(p_key_column)
            USING ERRCODE = '42703';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index i
                    WHERE i.indrelid = p_table AND i.indisunique AND i.indnkeyatts = 1
                      AND i.indkey[0] = v_knum AND i.indpred IS NULL AND i.indexprs IS NULL) THEN
        RAISE EXCEPTION 'embq.add_destination: key column %.% is not unique on its own (a primary key or unique constraint)',
            p_table, quote_ident(p_key_column) USING ERRCODE = '42P10';
    END IF;
    INSERT INTO embq.destinations (source_type, content_type, table_schema, table_name, key_column, vector_column)
    VALUES (p_source_type, p_content_type, v_schema, v_table, p_key_column, p_vector_column)
    ON CONFLICT (source_type, content_type) DO UPDATE
       SET table_schema = EXCLUDED.table_schema, table_name = EXCLUDED.table_name,
           key_column = EXCLUDED.key_column, vector_column = EXCLUDED.vector_column, created_at = now();
    -- Vectors stored before the destination existed move into the app's rows (matched on the
    -- key's text form, once), so the claim's "unchanged" check never skips a row that lacks one.
    EXECUTE format(
        'UPDATE %I.%I t SET %I = e.embedding::%s FROM embq.embeddings e
          WHERE e.source_type = $1 AND e.content_type = $2 AND e.embedding IS NOT NULL AND t.%I::text = e.source_id',
        v_schema, v_table, p_vector_column, v_vfull, p_key_column)
    USING p_source_type, p_content_type;
    UPDATE embq.embeddings SET embedding = NULL
     WHERE source_type = p_source_type AND content_type = p_content_type AND embedding IS NOT NULL;
END
$$;

CREATE OR REPLACE FUNCTION embq.remove_destination(p_source_type text, p_content_type text DEFAULT 'default')
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM embq.destinations WHERE source_type = p_source_type AND content_type = p_content_type
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM gone);
$$;

-- A record was deleted: its pending and running jobs are cancelled (a running job's result is
-- then discarded by the lease guard) and its stored vector is dropped. Returns the jobs cancelled.
-- p_content_type NULL means every content type of the record.
CREATE OR REPLACE FUNCTION embq.forget(p_source_type text, p_source_id text, p_content_type text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    UPDATE embq.jobs
       SET state = 'cancelled', finished_at = now(), updated_at = now(),
           last_error = 'cancelled: the record was deleted',
           lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
     WHERE source_type = p_source_type AND source_id = p_source_id
       AND (p_content_type IS NULL OR content_type = p_content_type)
       AND state IN ('ready', 'running');
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM embq.embeddings
     WHERE source_type = p_source_type AND source_id = p_source_id
       AND (p_content_type IS NULL OR content_type = p_content_type);
    RETURN n;
END
$$;
