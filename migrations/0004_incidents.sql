-- Leaked-secret incidents: one row per distinct secret found in a request (blocked, or let through with an
-- alert). The secret itself is never stored: `excerpt` is the redacted context. No foreign keys, like audit_log:
-- an incident outlives the student's enrolment.

CREATE TABLE IF NOT EXISTS incidents (
    incident_id        bigserial PRIMARY KEY,
    at                 timestamptz NOT NULL DEFAULT now(),
    course_id          text NOT NULL,
    student_id         text NOT NULL,
    jti                text NOT NULL DEFAULT '',      -- the sender's key (the one suspended)
    rule_id            text NOT NULL,
    kind               text NOT NULL,
    severity           text NOT NULL CHECK (severity IN ('block', 'alert')),
    excerpt            text NOT NULL DEFAULT '',      -- redacted
    location           text NOT NULL DEFAULT '',      -- where in the request, e.g. messages[3].content[1]
    request_id         text NOT NULL,
    leaked_course_id   text,                          -- when the secret is a gateway key: whose it is
    leaked_student_id  text,
    leaked_jti         text,
    status             text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    resolved_at        timestamptz,
    resolved_by        text,
    resolution         text NOT NULL DEFAULT '',
    CHECK ((status = 'resolved') = (resolved_at IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (course_id, at) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS incidents_student ON incidents (course_id, student_id, at);
CREATE INDEX IF NOT EXISTS incidents_request ON incidents (request_id);
