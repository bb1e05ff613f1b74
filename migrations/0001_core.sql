-- Courses, students, virtual keys, admin tokens and the audit log.

CREATE TABLE IF NOT EXISTS courses (
    course_id        text PRIMARY KEY,
    name             text NOT NULL DEFAULT '',
    limit_tokens     bigint NOT NULL CHECK (limit_tokens >= 0),
    period_seconds   integer NOT NULL CHECK (period_seconds > 0),
    reset_at         text NOT NULL DEFAULT 'mon 00:00',
    tz               text NOT NULL DEFAULT 'UTC',
    carry_over       boolean NOT NULL DEFAULT false,
    carry_cap        bigint CHECK (carry_cap IS NULL OR carry_cap >= 0),
    weights          jsonb NOT NULL DEFAULT '{}'::jsonb,
    max_inflight     integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS students (
    course_id   text NOT NULL REFERENCES courses (course_id) ON DELETE CASCADE,
    student_id  text NOT NULL,
    email       text NOT NULL DEFAULT '',
    name        text NOT NULL DEFAULT '',
    grp         text NOT NULL DEFAULT '',
    enrolled    boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (course_id, student_id)
);
CREATE INDEX IF NOT EXISTS students_group ON students (course_id, grp);

CREATE TABLE IF NOT EXISTS api_keys (
    jti               text PRIMARY KEY,
    course_id         text NOT NULL,
    student_id        text NOT NULL,
    token_sha256      bytea NOT NULL UNIQUE,
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'revoked')),
    status_reason     text NOT NULL DEFAULT '',
    issued_at         timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz,
    status_changed_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (course_id, student_id) REFERENCES students (course_id, student_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS api_keys_student ON api_keys (course_id, student_id);

CREATE TABLE IF NOT EXISTS admin_tokens (
    token_id      text PRIMARY KEY,
    course_id     text REFERENCES courses (course_id) ON DELETE CASCADE,  -- NULL: every course
    token_sha256  bytea NOT NULL UNIQUE,
    label         text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE TABLE IF NOT EXISTS audit_log (
    audit_id    bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    course_id   text,
    student_id  text,
    reason      text NOT NULL DEFAULT '',
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS audit_log_course ON audit_log (course_id, at);
