-- embq schema v2 for PostgreSQL: fleet-wide rate-limit budgets (RATE_LIMIT_SCOPE=fleet).
--
-- One row per budget key (provider, model and a hash of the API key: quotas belong to the
-- key, not to a pod). Each row holds two continuously refilled buckets, requests and tokens.
-- Levels start at zero (no burst of a whole minute at start) and may go below zero when one
-- request costs more than a bucket holds (it waits for a full bucket, then runs into debt).
-- The functions do the arithmetic under the row lock with the database clock, so every
-- worker sees one clock, and each call is a single statement (fine behind a transaction pooler).
-- Idempotent, so it may also be applied by hand before the core migration runner knows it.

CREATE SCHEMA IF NOT EXISTS embq;

CREATE TABLE IF NOT EXISTS embq.rate_budgets (
    key          text             PRIMARY KEY,
    requests     double precision NOT NULL DEFAULT 0,
    tokens       double precision NOT NULL DEFAULT 0,
    paused_until timestamptz,
    updated_at   timestamptz      NOT NULL DEFAULT clock_timestamp()
);

-- Locks the row (creating it empty), refills both buckets up to now and returns the row.
CREATE OR REPLACE FUNCTION embq.rate_budget_refill(
    p_key text, p_req_rate double precision, p_req_cap double precision,
    p_tok_rate double precision, p_tok_cap double precision,
    OUT o_requests double precision, OUT o_tokens double precision,
    OUT o_paused_until timestamptz, OUT o_now timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    b embq.rate_budgets%ROWTYPE;
    dt double precision;
BEGIN
    SELECT * INTO b FROM embq.rate_budgets WHERE key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO embq.rate_budgets (key) VALUES (p_key) ON CONFLICT (key) DO NOTHING;
        SELECT * INTO b FROM embq.rate_budgets WHERE key = p_key FOR UPDATE;
    END IF;
    o_now := clock_timestamp();
    dt := greatest(0, extract(epoch FROM o_now - b.updated_at));
    o_requests := least(p_req_cap, b.requests + p_req_rate * dt);
    o_tokens := least(p_tok_cap, b.tokens + p_tok_rate * dt);
    o_paused_until := b.paused_until;
    -- Never move the refill clock backwards (a caller that waited on the lock may hold an older now).
    o_now := greatest(o_now, b.updated_at);
END $$;

-- Takes one request and p_tokens when both buckets admit them; returns 0 when granted,
-- otherwise the seconds to wait before asking again.
CREATE OR REPLACE FUNCTION embq.rate_budget_take(
    p_key text, p_tokens double precision,
    p_req_rate double precision, p_req_cap double precision,
    p_tok_rate double precision, p_tok_cap double precision)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    wait double precision;
BEGIN
    SELECT * INTO r FROM embq.rate_budget_refill(p_key, p_req_rate, p_req_cap, p_tok_rate, p_tok_cap);
    IF r.o_paused_until IS NOT NULL AND r.o_paused_until > r.o_now THEN
        wait := extract(epoch FROM r.o_paused_until - r.o_now);
    ELSE
        wait := greatest(0,
            (least(1, p_req_cap) - r.o_requests) / p_req_rate,
            (least(p_tokens, p_tok_cap) - r.o_tokens) / p_tok_rate);
    END IF;
    IF wait <= 0 THEN
        UPDATE embq.rate_budgets
           SET requests = r.o_requests - 1, tokens = r.o_tokens - p_tokens, updated_at = r.o_now
         WHERE key = p_key;
        RETURN 0;
    END IF;
    UPDATE embq.rate_budgets
       SET requests = r.o_requests, tokens = r.o_tokens, updated_at = r.o_now
     WHERE key = p_key;
    RETURN wait;
END $$;

-- Applies what was learnt after a call: a token correction (reserved minus used), a pause
-- (the provider said 429 / Retry-After: levels drop to at most zero), and the provider's
-- remaining budgets (levels never exceed what the provider says is left).
CREATE OR REPLACE FUNCTION embq.rate_budget_adjust(
    p_key text, p_token_delta double precision, p_pause_seconds double precision,
    p_remaining_requests double precision, p_remaining_tokens double precision,
    p_req_rate double precision, p_req_cap double precision,
    p_tok_rate double precision, p_tok_cap double precision)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    req double precision;
    tok double precision;
    until timestamptz;
BEGIN
    SELECT * INTO r FROM embq.rate_budget_refill(p_key, p_req_rate, p_req_cap, p_tok_rate, p_tok_cap);
    req := r.o_requests;
    tok := least(p_tok_cap, r.o_tokens + coalesce(p_token_delta, 0));
    until := r.o_paused_until;
    IF p_pause_seconds IS NOT NULL AND p_pause_seconds > 0 THEN
        req := least(req, 0);
        tok := least(tok, 0);
        until := greatest(coalesce(until, r.o_now), r.o_now + make_interval(secs => p_pause_seconds));
    END IF;
    IF p_remaining_requests IS NOT NULL THEN
        req := least(req, p_remaining_requests);
    END IF;
    IF p_remaining_tokens IS NOT NULL THEN
        tok := least(tok, p_remaining_tokens);
    END IF;
    UPDATE embq.rate_budgets
       SET requests = req, tokens = tok, paused_until = until, updated_at = r.o_now
     WHERE key = p_key;
END $$;
