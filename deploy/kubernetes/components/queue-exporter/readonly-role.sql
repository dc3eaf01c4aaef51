-- The queue exporter (postgres_exporter): a login that can read the backlog and nothing else.
-- Run once as the postgres user (Supabase: the SQL editor) after `embq migrate`;
-- choose your own password. Only the two columns queries.yaml reads: not the
-- jobs' text, and no write of any kind.
CREATE ROLE embq_monitor LOGIN PASSWORD 'CHANGE-ME';
GRANT USAGE ON SCHEMA embq TO embq_monitor;
GRANT SELECT (state, run_at) ON embq.jobs TO embq_monitor;
