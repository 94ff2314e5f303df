-- Graviton metadata on PostgreSQL: one row per record, mirroring the RocksDB column families.
-- Integers are bigint (inode numbers, sizes and offsets stay below 2^63).

CREATE TABLE settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);

-- The KeyValueStore port.
CREATE TABLE kv (
    key   text PRIMARY KEY,
    value bytea NOT NULL
);

-- The MutableObjectStore port: objects addressed by locator (staging, backups).
CREATE TABLE objects (
    locator text PRIMARY KEY,
    bytes   bytea NOT NULL
);

-- Handed out in batches: each nextval reserves the 1,024 numbers that follow it.
CREATE SEQUENCE inode_numbers START WITH 2 INCREMENT BY 1024;

CREATE TABLE inodes (
    ino          bigint PRIMARY KEY,
    kind         smallint NOT NULL,
    perm         integer NOT NULL,
    uid          bigint NOT NULL,
    gid          bigint NOT NULL,
    nlink        bigint NOT NULL,
    size         bigint NOT NULL,
    rdev         bigint NOT NULL,
    atime_s      bigint NOT NULL,
    atime_ns     integer NOT NULL,
    mtime_s      bigint NOT NULL,
    mtime_ns     integer NOT NULL,
    ctime_s      bigint NOT NULL,
    ctime_ns     integer NOT NULL,
    crtime_s     bigint NOT NULL,
    crtime_ns    integer NOT NULL,
    extent_count bigint NOT NULL,
    data_version bigint NOT NULL,
    next_cookie  bigint NOT NULL,
    parent       bigint NOT NULL
);

CREATE TABLE dirents (
    parent bigint NOT NULL,
    name   bytea NOT NULL,
    ino    bigint NOT NULL,
    kind   smallint NOT NULL,
    cookie bigint NOT NULL,
    PRIMARY KEY (parent, name),
    UNIQUE (parent, cookie)
);

-- Extent maps: one row per extent, so a small overwrite changes a few rows.
CREATE TABLE extents (
    ino          bigint NOT NULL,
    file_offset  bigint NOT NULL,
    block_key    bytea NOT NULL,
    block_offset integer NOT NULL,
    len          integer NOT NULL,
    PRIMARY KEY (ino, file_offset)
);
-- Who references a block (garbage collection, status).
CREATE INDEX extents_by_block ON extents (block_key);

CREATE TABLE xattrs (
    ino   bigint NOT NULL,
    name  bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (ino, name)
);

CREATE TABLE symlinks (
    ino    bigint PRIMARY KEY,
    target bytea NOT NULL
);

-- Inodes unlinked while still open somewhere.
CREATE TABLE orphans (
    ino bigint PRIMARY KEY
);
