-- SmartScheduler schema for SQLite. Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE contractors (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    region      TEXT NOT NULL,
    skills      TEXT NOT NULL,              -- JSON array of strings
    created_at  INTEGER NOT NULL
);
CREATE INDEX contractors_region ON contractors (region, created_at);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    job_type          TEXT NOT NULL,
    title             TEXT,
    region            TEXT NOT NULL,
    duration_minutes  INTEGER NOT NULL CHECK (duration_minutes > 0),
    desired_start     INTEGER,
    address           TEXT,
    status            TEXT NOT NULL CHECK (status IN ('Unassigned', 'Assigned')),
    created_at        INTEGER NOT NULL
);
CREATE INDEX jobs_region_status ON jobs (region, status, created_at);

CREATE TABLE assignments (
    id             TEXT PRIMARY KEY,
    -- UNIQUE: the database, not only the code, allows one assignment per job.
    job_id         TEXT NOT NULL UNIQUE REFERENCES jobs (id),
    contractor_id  TEXT NOT NULL REFERENCES contractors (id),
    start_at       INTEGER NOT NULL,
    end_at         INTEGER NOT NULL,
    source         TEXT NOT NULL CHECK (source IN ('manual', 'auto')),
    audit_id       TEXT,
    region         TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    event_id       TEXT NOT NULL UNIQUE,
    CHECK (end_at > start_at)
);
CREATE INDEX assignments_contractor_time ON assignments (contractor_id, start_at, end_at);

-- The EventLog. `position` is commit order; `sequence` is publish order, given
-- at each delivery attempt from event_sequence and never reused.
CREATE TABLE event_log (
    position          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id          TEXT NOT NULL UNIQUE,
    event_type        TEXT NOT NULL,
    aggregate_id      TEXT NOT NULL,
    payload           TEXT NOT NULL,          -- JSON, without `sequence`
    occurred_at       INTEGER NOT NULL,
    status            TEXT NOT NULL DEFAULT 'Pending' CHECK (status IN ('Pending', 'Published', 'Failed')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,
    next_attempt_at   INTEGER NOT NULL,
    sequence          INTEGER UNIQUE,
    published_at      INTEGER,
    published_groups  TEXT NOT NULL DEFAULT '[]'  -- JSON array
);
CREATE INDEX event_log_due ON event_log (status, next_attempt_at, position);

-- The audience of each event, indexed for replay by group and sequence.
CREATE TABLE event_groups (
    group_name  TEXT NOT NULL,
    event_id    TEXT NOT NULL REFERENCES event_log (event_id),
    sequence    INTEGER,
    PRIMARY KEY (group_name, event_id)
);
CREATE INDEX event_groups_replay ON event_groups (group_name, sequence);
CREATE INDEX event_groups_event ON event_groups (event_id);

CREATE TABLE event_sequence (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    last  INTEGER NOT NULL
);
INSERT INTO event_sequence (id, last) VALUES (1, 0);
