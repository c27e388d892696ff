-- SmartScheduler schema for PostgreSQL: the same tables as the SQLite schema.
-- Times are milliseconds since the Unix epoch (UTC); ids are UUIDs; JSON is JSONB.

CREATE TABLE contractors (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    region      TEXT NOT NULL,
    skills      JSONB NOT NULL,             -- JSON array of strings
    created_at  BIGINT NOT NULL
);
CREATE INDEX contractors_region ON contractors (region, created_at);

CREATE TABLE jobs (
    id                UUID PRIMARY KEY,
    job_type          TEXT NOT NULL,
    title             TEXT,
    region            TEXT NOT NULL,
    duration_minutes  BIGINT NOT NULL CHECK (duration_minutes > 0),
    desired_start     BIGINT,
    address           TEXT,
    status            TEXT NOT NULL CHECK (status IN ('Unassigned', 'Assigned')),
    created_at        BIGINT NOT NULL
);
CREATE INDEX jobs_region_status ON jobs (region, status, created_at);

CREATE TABLE assignments (
    id             UUID PRIMARY KEY,
    -- UNIQUE: the database, not only the code, allows one assignment per job.
    job_id         UUID NOT NULL UNIQUE REFERENCES jobs (id),
    contractor_id  UUID NOT NULL REFERENCES contractors (id),
    start_at       BIGINT NOT NULL,
    end_at         BIGINT NOT NULL,
    source         TEXT NOT NULL CHECK (source IN ('manual', 'auto')),
    audit_id       UUID,
    region         TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    event_id       UUID NOT NULL UNIQUE,
    CHECK (end_at > start_at)
);
CREATE INDEX assignments_contractor_time ON assignments (contractor_id, start_at, end_at);

-- The EventLog. `position` is commit order; `sequence` is publish order, given
-- at each delivery attempt from event_sequence and never reused.
CREATE TABLE event_log (
    position          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id          UUID NOT NULL UNIQUE,
    event_type        TEXT NOT NULL,
    aggregate_id      UUID NOT NULL,
    payload           JSONB NOT NULL,         -- the DomainEvent, without `sequence`
    occurred_at       BIGINT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'Pending' CHECK (status IN ('Pending', 'Published', 'Failed')),
    attempts          BIGINT NOT NULL DEFAULT 0,
    last_error        TEXT,
    next_attempt_at   BIGINT NOT NULL,
    sequence          BIGINT UNIQUE,
    published_at      BIGINT,
    published_groups  JSONB NOT NULL DEFAULT '[]'  -- JSON array
);
CREATE INDEX event_log_due ON event_log (status, next_attempt_at, position);

-- The audience of each event, indexed for replay by group and sequence.
CREATE TABLE event_groups (
    group_name  TEXT NOT NULL,
    event_id    UUID NOT NULL REFERENCES event_log (event_id),
    sequence    BIGINT,
    PRIMARY KEY (group_name, event_id)
);
CREATE INDEX event_groups_replay ON event_groups (group_name, sequence);
CREATE INDEX event_groups_event ON event_groups (event_id);

-- One row: the last sequence handed out. Claimers lock it (UPDATE ... RETURNING)
-- to take a block of sequences, so blocks never overlap and follow claim order.
CREATE TABLE event_sequence (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    last  BIGINT NOT NULL
);
INSERT INTO event_sequence (id, last) VALUES (1, 0);
