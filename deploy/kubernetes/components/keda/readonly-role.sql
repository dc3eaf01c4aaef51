-- KEDA's PostgreSQL scaler: a login that can count ready jobs and nothing else.
-- Run once as the postgres user (Supabase: the SQL editor) after `embq migrate`;
-- choose your own password. Only the two columns the ScaledObject's query reads:
-- not the jobs' text, and no write of any kind.
CREATE ROLE embq_keda LOGIN PASSWORD 'CHANGE-ME';
GRANT USAGE ON SCHEMA embq TO embq_keda;
GRANT SELECT (state, run_at) ON embq.jobs TO embq_keda;
