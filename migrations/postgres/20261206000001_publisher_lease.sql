-- The publisher lease as a row that expires unless its holder renews it.
-- `epoch` grows each time the lease changes hands. Every claim and publish
-- reads this row FOR SHARE in its own transaction and checks the epoch it
-- carries, so a holder that lost the lease (frozen, cut off, its session
-- killed) cannot write late, and a takeover waits for the writes in flight.
-- Times are the database's clock, the one clock every node shares.
-- The holder's lease session (pid and start) lets a node take over at once
-- when that session is gone, as when the holder's process died, instead of
-- waiting for the lease to expire.
CREATE TABLE publisher_lease (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    epoch           BIGINT NOT NULL,
    holder          TEXT,
    holder_pid      INTEGER,
    holder_started  TIMESTAMPTZ,
    expires_at      TIMESTAMPTZ NOT NULL
);
INSERT INTO publisher_lease (id, epoch, expires_at) VALUES (1, 0, '-infinity');
