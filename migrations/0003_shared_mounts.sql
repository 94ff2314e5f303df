-- Shared volumes: several mounts (processes, machines) use one database at once.

-- One row per live mount. A mount refreshes heartbeat_at; once heartbeat_at is older than
-- timeout_ms, any other mount deletes the row and cleans up after it (locks, orphans).
CREATE TABLE sessions (
    id           bigserial PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    mountpoint   text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    timeout_ms   integer NOT NULL
);

-- flock and fcntl (POSIX) locks, global across mounts. `owner` is the kernel's lock owner
-- within the session; ranges are inclusive, end = 2^63-1 means "to end of file".
CREATE TABLE locks (
    ino       bigint NOT NULL,
    session   bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    owner     bigint NOT NULL,
    exclusive boolean NOT NULL,
    start_off bigint NOT NULL,
    end_off   bigint NOT NULL,
    pid       integer NOT NULL
);
CREATE INDEX locks_by_ino ON locks (ino);
CREATE INDEX locks_by_session ON locks (session);

-- An unlinked-while-open file belongs to the session that has it open; it is reclaimed at
-- that session's last close, or by another mount once the session has expired.
ALTER TABLE orphans ADD COLUMN session bigint;

-- Change log: the inodes each committed transaction wrote. Mounts learn of changes live by
-- NOTIFY on channel graviton_changes; a mount's local metadata cache replays this log after a
-- remount or a lost connection. Rows older than a day are trimmed.
CREATE TABLE changes (
    seq     bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    session bigint,
    inos    bigint[] NOT NULL
);
CREATE INDEX changes_by_time ON changes (at);
