-- The followers' read, published events after a sequence in sequence order
-- (`EventLog::list` with `afterSequence`), walks this index from its position
-- on. Without it the planner combined the status index (every published row)
-- with the sequence index: 0.85 ms per read at 6,300 events, growing with the
-- log, against 0.07 ms (docs/bench-history.md, "Where PostgreSQL's CPU went").
CREATE INDEX event_log_published_sequence ON event_log (sequence) WHERE status = 'Published';
