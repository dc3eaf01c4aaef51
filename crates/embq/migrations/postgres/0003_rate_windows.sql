-- embq schema v3 for PostgreSQL: fleet budgets learn the provider's capacity and keep a
-- rolling ledger of what they granted (issue 7).
--
-- v2's buckets start empty and hold one second's worth. A response carrying both an
-- x-ratelimit-remaining-* and an x-ratelimit-reset-* says what the provider holds when whole
-- (remaining + rate x reset, computed by the worker, at most the per-minute budget): the
-- bucket grows to that capacity (request_cap / token_cap; it never shrinks) and its level by
-- as much. Independently, whatever the buckets allow, the requests and tokens granted in the
-- last window (p_window seconds: a minute plus a margin) never exceed the per-minute budgets:
-- every grant is a row of embq.rate_grants, and the row's window_* columns keep their sums
-- (whole numbers, so the double precision sums stay exact).
-- The functions work under the budget row's lock with the database clock, one statement each
-- (fine behind a transaction pooler). Idempotent, so it may also be applied by hand.

ALTER TABLE embq.rate_budgets
    ADD COLUMN IF NOT EXISTS request_cap     double precision,
    ADD COLUMN IF NOT EXISTS token_cap       double precision,
    ADD COLUMN IF NOT EXISTS window_requests double precision NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS window_tokens   double precision NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS embq.rate_grants (
    key      text             NOT NULL,
    at       timestamptz      NOT NULL,
    requests double precision NOT NULL,
    tokens   double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_grants_key_at_idx ON embq.rate_grants (key, at);

-- v2's functions are replaced by the ones below (other arguments).
DROP FUNCTION IF EXISTS embq.rate_budget_take(text, double precision, double precision, double precision,
    double precision, double precision);
DROP FUNCTION IF EXISTS embq.rate_budget_adjust(text, double precision, double precision, double precision,
    double precision, double precision, double precision, double precision, double precision);
DROP FUNCTION IF EXISTS embq.rate_budget_refill(text, double precision, double precision, double precision,
    double precision);

-- Locks the row (creating it empty), refills both buckets up to now (up to the learned caps,
-- or the caller's when none was learned), forgets the grants that left the window, and
-- returns the state.
CREATE OR REPLACE FUNCTION embq.rate_budget_state(
    p_key text, p_req_rate double precision, p_req_cap double precision,
    p_tok_rate double precision, p_tok_cap double precision, p_window double precision,
    OUT o_requests double precision, OUT o_tokens double precision,
    OUT o_req_cap double precision, OUT o_tok_cap double precision,
    OUT o_window_requests double precision, OUT o_window_tokens double precision,
    OUT o_paused_until timestamptz, OUT o_now timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    b embq.rate_budgets%ROWTYPE;
    dt double precision;
    gone_requests double precision;
    gone_tokens double precision;
BEGIN
    SELECT * INTO b FROM embq.rate_budgets WHERE key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO embq.rate_budgets (key) VALUES (p_key) ON CONFLICT (key) DO NOTHING;
        SELECT * INTO b FROM embq.rate_budgets WHERE key = p_key FOR UPDATE;
    END IF;
    -- Never move the clock backwards (a caller that waited on the lock may hold an older now).
    o_now := greatest(clock_timestamp(), b.updated_at);
    dt := greatest(0, extract(epoch FROM o_now - b.updated_at));
    o_req_cap := greatest(p_req_cap, coalesce(b.request_cap, 0));
    o_tok_cap := greatest(p_tok_cap, coalesce(b.token_cap, 0));
    o_requests := least(o_req_cap, b.requests + p_req_rate * dt);
    o_tokens := least(o_tok_cap, b.tokens + p_tok_rate * dt);
    o_paused_until := b.paused_until;
    WITH gone AS (
        DELETE FROM embq.rate_grants
         WHERE key = p_key AND at <= o_now - make_interval(secs => p_window)
        RETURNING requests, tokens)
    SELECT coalesce(sum(requests), 0), coalesce(sum(tokens), 0) INTO gone_requests, gone_tokens FROM gone;
    o_window_requests := b.window_requests - gone_requests;
    o_window_tokens := b.window_tokens - gone_tokens;
END $$;

-- Seconds from p_now until p_over requests (p_tokens false) or tokens (true) of the grants
-- have left the window; 0 when nothing needs to leave.
CREATE OR REPLACE FUNCTION embq.rate_budget_window_wait(
    p_key text, p_over double precision, p_tokens boolean, p_window double precision, p_now timestamptz)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    freed_at timestamptz;
BEGIN
    IF p_over <= 0 THEN
        RETURN 0;
    END IF;
    SELECT g.at INTO freed_at FROM (
        SELECT at, sum(CASE WHEN p_tokens THEN tokens ELSE requests END)
                   OVER (ORDER BY at ROWS UNBOUNDED PRECEDING) AS freed
          FROM embq.rate_grants WHERE key = p_key ORDER BY at) g
     WHERE g.freed >= p_over
     LIMIT 1;
    IF freed_at IS NULL THEN
        RETURN p_window;
    END IF;
    RETURN greatest(0, extract(epoch FROM freed_at + make_interval(secs => p_window) - p_now));
END $$;

-- Takes one request and p_tokens when both buckets and the window admit them; returns 0 when
-- granted, otherwise the seconds to wait before asking again.
CREATE OR REPLACE FUNCTION embq.rate_budget_take(
    p_key text, p_tokens double precision,
    p_req_rate double precision, p_req_cap double precision,
    p_tok_rate double precision, p_tok_cap double precision,
    p_req_limit double precision, p_tok_limit double precision, p_window double precision)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    s record;
    wait double precision;
BEGIN
    SELECT * INTO s FROM embq.rate_budget_state(p_key, p_req_rate, p_req_cap, p_tok_rate, p_tok_cap, p_window);
    IF s.o_paused_until IS NOT NULL AND s.o_paused_until > s.o_now THEN
        wait := extract(epoch FROM s.o_paused_until - s.o_now);
    ELSE
        wait := greatest(0,
            (least(1, s.o_req_cap) - s.o_requests) / p_req_rate,
            (least(p_tokens, s.o_tok_cap) - s.o_tokens) / p_tok_rate,
            embq.rate_budget_window_wait(p_key, s.o_window_requests + 1 - p_req_limit, false, p_window, s.o_now),
            embq.rate_budget_window_wait(p_key, s.o_window_tokens + least(p_tokens, p_tok_limit) - p_tok_limit,
                                         true, p_window, s.o_now));
    END IF;
    IF wait <= 0 THEN
        UPDATE embq.rate_budgets
           SET requests = s.o_requests - 1, tokens = s.o_tokens - p_tokens,
               window_requests = s.o_window_requests + 1, window_tokens = s.o_window_tokens + p_tokens,
               updated_at = s.o_now
         WHERE key = p_key;
        INSERT INTO embq.rate_grants (key, at, requests, tokens) VALUES (p_key, s.o_now, 1, p_tokens);
        RETURN 0;
    END IF;
    UPDATE embq.rate_budgets
       SET requests = s.o_requests, tokens = s.o_tokens,
           window_requests = s.o_window_requests, window_tokens = s.o_window_tokens, updated_at = s.o_now
     WHERE key = p_key;
    RETURN wait;
END $$;

-- Applies what was learnt after a call, in this order: the provider's capacities (the buckets
-- and their levels grow to them), a token correction (reserved minus used; tokens billed
-- beyond the reservation count in the window from now), a pause (the provider said 429 /
-- Retry-After: levels drop to at most zero), and the provider's remaining budgets (levels
-- never exceed what the provider says is left, where the window allows more). Returns true
-- if a capacity grew the budget.
CREATE OR REPLACE FUNCTION embq.rate_budget_adjust(
    p_key text, p_token_delta double precision, p_pause_seconds double precision,
    p_remaining_requests double precision, p_remaining_tokens double precision,
    p_request_capacity double precision, p_token_capacity double precision,
    p_req_rate double precision, p_req_cap double precision,
    p_tok_rate double precision, p_tok_cap double precision,
    p_req_limit double precision, p_tok_limit double precision, p_window double precision)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    s record;
    req double precision;
    tok double precision;
    req_cap double precision;
    tok_cap double precision;
    w_tokens double precision;
    until timestamptz;
    grew boolean := false;
BEGIN
    SELECT * INTO s FROM embq.rate_budget_state(p_key, p_req_rate, p_req_cap, p_tok_rate, p_tok_cap, p_window);
    req := s.o_requests;
    tok := s.o_tokens;
    req_cap := s.o_req_cap;
    tok_cap := s.o_tok_cap;
    IF p_request_capacity IS NOT NULL AND p_request_capacity > req_cap THEN
        req := req + (p_request_capacity - req_cap);
        req_cap := p_request_capacity;
        grew := true;
    END IF;
    IF p_token_capacity IS NOT NULL AND p_token_capacity > tok_cap THEN
        tok := tok + (p_token_capacity - tok_cap);
        tok_cap := p_token_capacity;
        grew := true;
    END IF;
    tok := least(tok_cap, tok + coalesce(p_token_delta, 0));
    w_tokens := s.o_window_tokens;
    IF p_token_delta < 0 THEN
        INSERT INTO embq.rate_grants (key, at, requests, tokens) VALUES (p_key, s.o_now, 0, -p_token_delta);
        w_tokens := w_tokens - p_token_delta;
    END IF;
    until := s.o_paused_until;
    IF p_pause_seconds IS NOT NULL AND p_pause_seconds > 0 THEN
        req := least(req, 0);
        tok := least(tok, 0);
        until := greatest(coalesce(until, s.o_now), s.o_now + make_interval(secs => p_pause_seconds));
    END IF;
    -- Unless the window already allows no more than the provider has left: then what this
    -- budget granted in the last minute explains the shortfall, and it comes back as those
    -- grants leave the window, not at the refill rate.
    IF p_remaining_requests IS NOT NULL AND p_req_limit - s.o_window_requests > p_remaining_requests THEN
        req := least(req, p_remaining_requests);
    END IF;
    IF p_remaining_tokens IS NOT NULL AND p_tok_limit - w_tokens > p_remaining_tokens THEN
        tok := least(tok, p_remaining_tokens);
    END IF;
    UPDATE embq.rate_budgets
       SET requests = req, tokens = tok, request_cap = req_cap, token_cap = tok_cap,
           window_requests = s.o_window_requests, window_tokens = w_tokens,
           paused_until = until, updated_at = s.o_now
     WHERE key = p_key;
    RETURN grew;
END $$;
