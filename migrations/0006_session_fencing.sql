-- Session expiry that an outage cannot cause, and no writes from a mount whose session expired.

-- Since when the mount has beaten with no gap longer than half the shortest session timeout
-- (database time). A mount expires another only once it has itself been alive for the other's
-- whole timeout: after an outage of the database, or after being cut off itself, it judges
-- nobody until then.
ALTER TABLE sessions ADD COLUMN alive_since timestamptz NOT NULL DEFAULT clock_timestamp();

-- graviton_apply for a transaction that relies on its mount's session (the mount holds locks,
-- or the transaction keeps a file unlinked while open): refused with SQLSTATE GR001 when that
-- session is gone (expired: other mounts have taken its locks and reclaimed its unlinked open
-- files). The session's row stays locked (FOR KEY SHARE) until the commit, so it cannot
-- be reaped meanwhile; a reap committed after the transaction began makes this a
-- serialization failure, and the transaction runs again.
CREATE FUNCTION graviton_apply_live(ops jsonb, change_session bigint, inos bigint[], payload text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF change_session IS NOT NULL THEN
        PERFORM 1 FROM sessions WHERE id = change_session FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'mount session % has expired', change_session
                USING ERRCODE = 'GR001';
        END IF;
    END IF;
    PERFORM graviton_apply(ops, change_session, inos, payload);
END;
$$;
