-- Idempotency-Key on assignments (kept 24 h) and EventLog retention.

CREATE TABLE idempotency_keys (
    scope          TEXT NOT NULL,             -- the caller (token subject)
    key            TEXT NOT NULL,
    fingerprint    TEXT NOT NULL,             -- the request (job and body), canonical
    assignment_id  UUID NOT NULL REFERENCES assignments (id),
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The highest sequence deleted by retention: replays from below it have a gap.
ALTER TABLE event_sequence ADD COLUMN purged_through BIGINT NOT NULL DEFAULT 0;

CREATE INDEX event_log_published_at ON event_log (status, published_at);
