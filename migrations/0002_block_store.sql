-- Block content stored in PostgreSQL (the `postgres` block store, for small deployments).
-- A block is kept in pieces of at most 1 MiB, so no single value is large.

CREATE TABLE blocks (
    block_key bytea PRIMARY KEY,
    size      integer NOT NULL,
    pieces    integer NOT NULL
);

CREATE TABLE block_pieces (
    block_key bytea NOT NULL,
    piece     integer NOT NULL,
    data      bytea NOT NULL,
    PRIMARY KEY (block_key, piece)
);
