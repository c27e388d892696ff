-- Hub connection tokens already used, shared by every node: a token opens one
-- connection cluster-wide. Rows are kept until the token has expired anyway.

CREATE TABLE used_connection_tokens (
    token_id    TEXT PRIMARY KEY,             -- the connection id the token names
    expires_at  BIGINT NOT NULL               -- milliseconds since the epoch
);
CREATE INDEX used_connection_tokens_expires ON used_connection_tokens (expires_at);
