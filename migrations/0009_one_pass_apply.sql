-- graviton_apply in one pass over the operations, with the same results as migrations 0004 and
-- 0007: a hold is recorded where it comes, and only a delete_inode looks at the holds (an
-- inode another mount holds open stays as an orphan with no session and no links). Every
-- commit runs this function, so it no longer copies and rescans the array, nor calls a second
-- function.
CREATE OR REPLACE FUNCTION graviton_apply(ops jsonb, change_session bigint, inos bigint[], payload text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    op jsonb;
    v jsonb;
    doomed bigint;
    held bigint[];
BEGIN
    FOR op IN SELECT * FROM jsonb_array_elements(ops) LOOP
        v := op->'v';
        CASE op->>'op'
        WHEN 'put_inode' THEN
            INSERT INTO inodes SELECT * FROM jsonb_populate_record(NULL::inodes, v)
            ON CONFLICT (ino) DO UPDATE SET kind = EXCLUDED.kind, perm = EXCLUDED.perm,
                uid = EXCLUDED.uid, gid = EXCLUDED.gid, nlink = EXCLUDED.nlink,
                size = EXCLUDED.size, rdev = EXCLUDED.rdev, atime_s = EXCLUDED.atime_s,
                atime_ns = EXCLUDED.atime_ns, mtime_s = EXCLUDED.mtime_s,
                mtime_ns = EXCLUDED.mtime_ns, ctime_s = EXCLUDED.ctime_s,
                ctime_ns = EXCLUDED.ctime_ns, crtime_s = EXCLUDED.crtime_s,
                crtime_ns = EXCLUDED.crtime_ns, extent_count = EXCLUDED.extent_count,
                data_version = EXCLUDED.data_version, next_cookie = EXCLUDED.next_cookie,
                parent = EXCLUDED.parent;
        WHEN 'put_dirent' THEN
            INSERT INTO dirents SELECT * FROM jsonb_populate_record(NULL::dirents, v)
            ON CONFLICT (parent, name) DO UPDATE SET ino = EXCLUDED.ino, kind = EXCLUDED.kind,
                cookie = EXCLUDED.cookie;
        WHEN 'hold' THEN
            INSERT INTO holds (ino, session)
            VALUES ((v->>'ino')::bigint, (v->>'session')::bigint) ON CONFLICT DO NOTHING;
        WHEN 'splice' THEN
            -- ANY(ARRAY(...)) so the deletes are index lookups by (ino, offset)
            IF jsonb_array_length(v->'remove') > 0 THEN
                DELETE FROM extents WHERE ino = (v->>'ino')::bigint AND file_offset = ANY
                    (ARRAY(SELECT jsonb_array_elements_text(v->'remove')::bigint));
            END IF;
            INSERT INTO extents SELECT * FROM jsonb_populate_recordset(NULL::extents, v->'insert')
            ON CONFLICT (ino, file_offset) DO UPDATE SET block_key = EXCLUDED.block_key,
                block_offset = EXCLUDED.block_offset, len = EXCLUDED.len;
        WHEN 'delete_inode' THEN
            doomed := (v->>'ino')::bigint;
            -- the deleting mount's own holds do not count: it deletes only what it has not open
            IF EXISTS (SELECT 1 FROM holds h
                       WHERE h.ino = doomed AND h.session IS DISTINCT FROM change_session) THEN
                INSERT INTO orphans (ino, session) VALUES (doomed, NULL)
                ON CONFLICT (ino) DO UPDATE SET session = NULL;
                held := array_append(held, doomed);
            ELSE
                DELETE FROM extents WHERE ino = doomed;
                DELETE FROM xattrs WHERE ino = doomed;
                DELETE FROM symlinks WHERE ino = doomed;
                DELETE FROM orphans WHERE ino = doomed;
                DELETE FROM inodes WHERE ino = doomed;
            END IF;
        WHEN 'delete_dirent' THEN
            DELETE FROM dirents
            WHERE parent = (v->>'parent')::bigint AND name = (v->>'name')::bytea;
        WHEN 'put_xattr' THEN
            INSERT INTO xattrs SELECT * FROM jsonb_populate_record(NULL::xattrs, v)
            ON CONFLICT (ino, name) DO UPDATE SET value = EXCLUDED.value;
        WHEN 'delete_xattr' THEN
            DELETE FROM xattrs
            WHERE ino = (v->>'ino')::bigint AND name = (v->>'name')::bytea;
        WHEN 'put_symlink' THEN
            INSERT INTO symlinks SELECT * FROM jsonb_populate_record(NULL::symlinks, v)
            ON CONFLICT (ino) DO UPDATE SET target = EXCLUDED.target;
        WHEN 'add_orphan' THEN
            INSERT INTO orphans SELECT * FROM jsonb_populate_record(NULL::orphans, v)
            ON CONFLICT (ino) DO UPDATE SET session = EXCLUDED.session;
        ELSE
            RAISE EXCEPTION 'graviton_apply: unknown operation %', op->>'op';
        END CASE;
    END LOOP;
    IF held IS NOT NULL THEN
        UPDATE inodes SET nlink = 0 WHERE ino = ANY (held);
    END IF;
    IF inos IS NOT NULL THEN
        INSERT INTO changes (session, inos) VALUES (change_session, inos);
        PERFORM pg_notify('graviton_changes', payload);
    END IF;
END;
$$;

DROP FUNCTION graviton_apply_ops(jsonb, bigint, bigint[], text);
