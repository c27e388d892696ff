-- Presence shared by a cluster's nodes (contract v1.1): each node's hub
-- connections per contractor, the node's heartbeat, and what dispatchers
-- were last told per contractor. Times are unix milliseconds by the
-- database's clock, the one clock every node shares.

-- A node that has not beaten for a while is dead; its connections stop counting.
CREATE TABLE presence_nodes (
    node_id     UUID PRIMARY KEY,
    seen_at     BIGINT NOT NULL
);

-- The connections a node holds of a contractor (0: its last one there closed at closed_at).
CREATE TABLE presence_connections (
    contractor_id  UUID NOT NULL,
    node_id        UUID NOT NULL REFERENCES presence_nodes (node_id) ON DELETE CASCADE,
    connections    INTEGER NOT NULL,
    closed_at      BIGINT NOT NULL,
    PRIMARY KEY (contractor_id, node_id)
);
CREATE INDEX presence_connections_node ON presence_connections (node_id);

-- What the region's dispatchers were last told; changed only by a
-- conditional UPDATE, so each change is told once.
CREATE TABLE contractor_presence (
    contractor_id  UUID PRIMARY KEY REFERENCES contractors (id),
    online         BOOLEAN NOT NULL,
    last_seen      BIGINT
);
