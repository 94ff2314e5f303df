-- Files a mount has open. A file that loses its last name (unlink, or a rename over it) while
-- some mount has it open stays, with no name, until no mount holds it: its last holder's close,
-- or the end (or expiry) of the holders' sessions, reclaims it.
CREATE TABLE holds (
    ino     bigint NOT NULL,
    session bigint NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    PRIMARY KEY (ino, session)
);
CREATE INDEX holds_by_session ON holds (session);

-- graviton_apply as before, except that deleting an inode another mount holds open keeps it
-- as an orphan (no session of its own: the holds keep it) with no links. The deleting mount's
-- own holds do not count: it deletes only what it does not have open. A new operation, 'hold'
-- ({ino, session}), records a hold (a file created to be opened is held by its creation).
ALTER FUNCTION graviton_apply(jsonb, bigint, bigint[], text) RENAME TO graviton_apply_ops;

CREATE FUNCTION graviton_apply(ops jsonb, change_session bigint, inos bigint[], payload text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    held bigint[];
BEGIN
    IF ops @> '[{"op": "hold"}]' THEN
        INSERT INTO holds (ino, session)
        SELECT (op->'v'->>'ino')::bigint, (op->'v'->>'session')::bigint
        FROM jsonb_array_elements(ops) op WHERE op->>'op' = 'hold'
        ON CONFLICT DO NOTHING;
        SELECT coalesce(jsonb_agg(t.op ORDER BY t.n), '[]'::jsonb) INTO ops
        FROM jsonb_array_elements(ops) WITH ORDINALITY AS t (op, n) WHERE t.op->>'op' <> 'hold';
    END IF;
    SELECT array_agg(DISTINCT h.ino) INTO held FROM holds h
    WHERE h.session IS DISTINCT FROM change_session AND h.ino IN (SELECT (op->'v'->>'ino')::bigint FROM jsonb_array_elements(ops) op
                    WHERE op->>'op' = 'delete_inode');
    IF held IS NOT NULL THEN
        SELECT jsonb_agg(CASE
            WHEN t.op->>'op' = 'delete_inode' AND (t.op->'v'->>'ino')::bigint = ANY (held)
            THEN jsonb_build_object('op', 'add_orphan',
                                    'v', jsonb_build_object('ino', t.op->'v'->'ino', 'session', NULL))
            ELSE t.op END ORDER BY t.n)
        INTO ops FROM jsonb_array_elements(ops) WITH ORDINALITY AS t (op, n);
    END IF;
    PERFORM graviton_apply_ops(ops, change_session, inos, payload);
    IF held IS NOT NULL THEN
        UPDATE inodes SET nlink = 0 WHERE ino = ANY (held);
    END IF;
END;
$$;
