-- One narrow row per metered request (the ledger's record in Postgres, and what usage reports aggregate),
-- and convenor grants. Written by the batched transcript writer in the same transaction as the transcript.

CREATE TABLE IF NOT EXISTS usage_events (
    request_id        text PRIMARY KEY,
    at                timestamptz NOT NULL,
    course_id         text NOT NULL,
    student_id        text NOT NULL,
    jti               text NOT NULL DEFAULT '',
    session_id        text NOT NULL DEFAULT '',
    model             text NOT NULL DEFAULT '',
    status            integer NOT NULL DEFAULT 0,
    input_tokens      bigint NOT NULL DEFAULT 0,
    cache_write_5m    bigint NOT NULL DEFAULT 0,
    cache_write_1h    bigint NOT NULL DEFAULT 0,
    cache_read        bigint NOT NULL DEFAULT 0,
    output_tokens     bigint NOT NULL DEFAULT 0,
    web_searches      bigint NOT NULL DEFAULT 0,
    weighted          bigint NOT NULL DEFAULT 0,
    cost_usd          numeric(14, 6),                -- NULL: the model has no price (reported, never $0)
    estimated         boolean NOT NULL DEFAULT false,
    refused           text NOT NULL DEFAULT '',      -- '' | 'quota' | 'leak' | 'inflight' | ...
    period_start      timestamptz,                   -- bucket period the debit landed in
    carried           bigint NOT NULL DEFAULT 0      -- the bucket's carry-over in that period
);
CREATE INDEX IF NOT EXISTS usage_events_student_at ON usage_events (course_id, student_id, at);
CREATE INDEX IF NOT EXISTS usage_events_course_at ON usage_events (course_id, at);

CREATE TABLE IF NOT EXISTS grants (
    grant_id      bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    course_id     text NOT NULL,
    student_id    text NOT NULL,
    tokens        bigint NOT NULL,
    reason        text NOT NULL,
    actor         text NOT NULL,
    period_start  timestamptz NOT NULL,
    request_id    text NOT NULL UNIQUE             -- idempotency id of the grant in the Redis ledger
);
CREATE INDEX IF NOT EXISTS grants_student ON grants (course_id, student_id, period_start);
