-- Full transcripts, written in batches by gateway/writer.py (same transaction as usage_events).
--
-- transcript_blobs   content-addressed parts of request bodies (system, tools, each message, ...), once per hash.
-- transcripts        one row per request, partitioned by month of started_at. The request body is stored as a
--                    skeleton (the raw body with the parts cut out) + the parts' offsets and hashes; joining
--                    them gives back the exact bytes the client sent (gateway/contentstore.py). The response is
--                    kept raw (for streams: the SSE bytes) and as the reassembled message.
-- transcript_ids     request_id -> started_at. Partitioning forces the primary key of transcripts to include
--                    started_at, so request-id idempotency lives here: the writer inserts the ids ON CONFLICT DO
--                    NOTHING and inserts into transcripts only the rows whose id it just claimed, in one
--                    transaction. It is also the index that finds a request's partition.
-- Big columns are compressed by Postgres (lz4 where the server has it, pglz otherwise). JSON values (headers,
-- usage, the reassembled message) are stored as text written by orjson, so that the writer can COPY rows in
-- binary straight into the table whatever JSON codecs the connection pool has; query them with
-- request_headers::json->>'user-agent' or ::jsonb. Writes are the hot path here; reads are audits.

CREATE TABLE IF NOT EXISTS transcript_blobs (
    hash        bytea PRIMARY KEY,             -- sha256(content)
    kind        text NOT NULL,                 -- 'system' | 'tools' | 'message' | 'field' | 'body'
    size        integer NOT NULL,
    content     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS transcript_ids (
    request_id  text PRIMARY KEY,
    started_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS transcripts (
    request_id           text NOT NULL,
    started_at           timestamptz NOT NULL,
    first_byte_at        timestamptz,
    ended_at             timestamptz NOT NULL,
    upstream_request_id  text NOT NULL DEFAULT '',
    course_id            text NOT NULL DEFAULT '',
    student_id           text NOT NULL DEFAULT '',
    jti                  text NOT NULL DEFAULT '',
    session_id           text NOT NULL DEFAULT '',       -- X-Claude-Code-Session-Id
    user_agent           text NOT NULL DEFAULT '',
    method               text NOT NULL DEFAULT 'POST',
    path                 text NOT NULL DEFAULT '',       -- with the query string
    model                text NOT NULL DEFAULT '',
    stream               boolean NOT NULL DEFAULT false,
    status               integer NOT NULL DEFAULT 0,
    error                text,
    request_headers      text NOT NULL DEFAULT '{}',     -- JSON; without x-api-key / authorization / cookie
    request_size         integer NOT NULL,
    request_skeleton     bytea NOT NULL,
    request_offsets      bytea NOT NULL,                 -- where each part goes back into the skeleton (uint32 BE each)
    request_parts        bytea NOT NULL,                 -- transcript_blobs.hash of each part (32 bytes each)
    response_headers     text NOT NULL DEFAULT '{}',     -- JSON
    response_body        bytea,                          -- raw reply (streams: the SSE bytes)
    response_message     text,                           -- JSON: the reassembled message
    usage                text NOT NULL DEFAULT '{}',     -- JSON
    weighted             bigint NOT NULL DEFAULT 0,
    cost_usd             numeric(14, 6),                 -- NULL: model without a price
    estimated            boolean NOT NULL DEFAULT false,
    refused              text NOT NULL DEFAULT '',       -- '' | 'quota' | 'leak' | 'inflight' | 'suspended' ...
    refused_reason       text NOT NULL DEFAULT '',
    period_start         timestamptz,
    carried              bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, started_at)
) PARTITION BY RANGE (started_at);

CREATE INDEX IF NOT EXISTS transcripts_student_at ON transcripts (course_id, student_id, started_at);
CREATE INDEX IF NOT EXISTS transcripts_session ON transcripts (session_id, started_at);

-- Safety net for rows whose month has no partition yet (the writer creates partitions ahead of time).
CREATE TABLE IF NOT EXISTS transcripts_default PARTITION OF transcripts DEFAULT;

DO $$
BEGIN
    IF 'lz4' = ANY (SELECT unnest(enumvals) FROM pg_settings WHERE name = 'default_toast_compression') THEN
        ALTER TABLE transcript_blobs ALTER COLUMN content SET COMPRESSION lz4;
        ALTER TABLE transcripts ALTER COLUMN request_skeleton SET COMPRESSION lz4;
        ALTER TABLE transcripts ALTER COLUMN response_body SET COMPRESSION lz4;
        ALTER TABLE transcripts ALTER COLUMN response_message SET COMPRESSION lz4;
        ALTER TABLE transcripts ALTER COLUMN request_headers SET COMPRESSION lz4;
        ALTER TABLE transcripts ALTER COLUMN response_headers SET COMPRESSION lz4;
    END IF;
END
$$;

-- Make sure the partition holding `at` exists; returns its name. Safe to call concurrently and repeatedly.
-- Rows that already landed in the DEFAULT partition for that month are moved into the new partition.
CREATE OR REPLACE FUNCTION ensure_transcript_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    lo   timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    hi   timestamptz := (date_trunc('month', at AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    name text := 'transcripts_' || to_char(at AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN name;
    END IF;
    BEGIN
        IF EXISTS (SELECT 1 FROM transcripts_default WHERE started_at >= lo AND started_at < hi) THEN
            EXECUTE format('CREATE TABLE %I (LIKE transcripts INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                           'INCLUDING STORAGE INCLUDING COMPRESSION)', name);
            EXECUTE format('WITH moved AS (DELETE FROM transcripts_default WHERE started_at >= $1 '
                           'AND started_at < $2 RETURNING *) INSERT INTO %I SELECT * FROM moved', name) USING lo, hi;
            EXECUTE format('ALTER TABLE transcripts ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
        ELSE
            EXECUTE format('CREATE TABLE %I PARTITION OF transcripts FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
        END IF;
    EXCEPTION WHEN duplicate_table THEN
        NULL;  -- another session created it at the same moment
    END;
    RETURN name;
END
$$;
