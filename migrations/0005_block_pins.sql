-- Blocks a mount has stored (or found referenced) for a commit it has not made yet. gc counts
-- them as referenced; a mount's pins go with its session.
CREATE TABLE block_pins (
    session   bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    block_key bytea NOT NULL,
    PRIMARY KEY (session, block_key)
);
