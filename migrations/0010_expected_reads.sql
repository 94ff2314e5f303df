-- A transaction may read inodes and directory entries from a mount's local cache instead of
-- from this database. Its commit then checks that every record it read that way is still as
-- read (the mount's prepared statement graviton_expect, src/meta/pg/expected.rs), and calls
-- graviton_stale for one that is not: the transaction fails as a lost serialization race, and
-- the mount runs it again from the database.
CREATE FUNCTION graviton_stale() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a record read from a mount''s cache has changed since'
        USING ERRCODE = 'serialization_failure';
END;
$$;
