-- Acknowledgements (contract v1.1): the deadline an assignment was made
-- with, its first acknowledgement, and the EventLog rows that recorded the
-- acknowledgement and the escalation (each set once, by a conditional
-- UPDATE, so a repeat or a second node writes nothing).
ALTER TABLE assignments
    ADD COLUMN ack_deadline             BIGINT,
    ADD COLUMN acknowledged_at          BIGINT,
    ADD COLUMN acknowledgement_event_id UUID,
    ADD COLUMN escalation_event_id      UUID;

-- What the escalation scan reads: assignments still waiting, by deadline.
CREATE INDEX assignments_awaiting_acknowledgement ON assignments (ack_deadline)
    WHERE ack_deadline IS NOT NULL AND acknowledged_at IS NULL AND escalation_event_id IS NULL;
