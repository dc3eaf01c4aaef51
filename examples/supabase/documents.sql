-- embq on Supabase: vectors written into the app's own table, searchable with an HNSW index.
-- Run after `embq migrate` (EMBEDDING_DIMENSIONS=1536), as the role that owns the app's tables
-- and runs the workers (`postgres` on Supabase).

-- 1. The app's table: the text, and the column embq writes the vector into.
CREATE TABLE public.documents (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id   text   NOT NULL DEFAULT (current_setting('request.jwt.claims', true)::json ->> 'sub'),
    title     text   NOT NULL,
    body      text   NOT NULL,
    pinned    boolean NOT NULL DEFAULT false,
    embedding extensions.vector(1536)
);
ALTER TABLE public.documents ENABLE ROW LEVEL SECURITY;
CREATE POLICY documents_own ON public.documents FOR ALL TO authenticated
    USING (user_id = (current_setting('request.jwt.claims', true)::json ->> 'sub'))
    WITH CHECK (user_id = (current_setting('request.jwt.claims', true)::json ->> 'sub'));
GRANT SELECT, INSERT, UPDATE, DELETE ON public.documents TO authenticated;

-- 2. Tell embq where the vectors of source type 'documents' go: public.documents.embedding, by id.
SELECT embq.add_destination('documents', 'public.documents', 'embedding', 'id');

-- 3. Queue a row's text when it is inserted, and when its text changes (and only then).
--    SECURITY DEFINER: the app's users need no access to schema embq.
CREATE FUNCTION public.documents_embed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    PERFORM embq.enqueue('documents', NEW.id::text, NEW.title || E'\n\n' || NEW.body);
    RETURN NULL;
END $$;
CREATE TRIGGER documents_embed_insert AFTER INSERT ON public.documents
    FOR EACH ROW EXECUTE FUNCTION public.documents_embed();
CREATE TRIGGER documents_embed_update AFTER UPDATE OF title, body ON public.documents
    FOR EACH ROW WHEN (OLD.title IS DISTINCT FROM NEW.title OR OLD.body IS DISTINCT FROM NEW.body)
    EXECUTE FUNCTION public.documents_embed();

-- 4. A deleted row's pending jobs are cancelled and embq forgets its vector.
CREATE FUNCTION public.documents_forget() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    PERFORM embq.forget('documents', OLD.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER documents_forget AFTER DELETE ON public.documents
    FOR EACH ROW EXECUTE FUNCTION public.documents_forget();

-- 5. Nearest-neighbour search through an HNSW index, callable over PostgREST:
--    supabase.rpc('match_documents', { query_embedding, match_count }). RLS still applies.
CREATE INDEX documents_embedding_idx ON public.documents
    USING hnsw (embedding extensions.vector_cosine_ops);
CREATE FUNCTION public.match_documents(query_embedding extensions.vector(1536), match_count integer DEFAULT 10)
RETURNS TABLE (id bigint, title text, similarity double precision)
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT d.id, d.title, 1 - (d.embedding OPERATOR(extensions.<=>) query_embedding)
      FROM public.documents d
     WHERE d.embedding IS NOT NULL
     ORDER BY d.embedding OPERATOR(extensions.<=>) query_embedding
     LIMIT match_count
$$;
GRANT EXECUTE ON FUNCTION public.match_documents(extensions.vector, integer) TO authenticated;
