-- A transaction's writes, sent in one round trip when it commits (or before its next read):
-- `ops` is a JSON array applied in order. bytea values travel as '\x…' hex strings. Then the
-- inodes written are logged in `changes` and announced on graviton_changes (when `inos` is
-- not NULL).
CREATE FUNCTION graviton_apply(ops jsonb, change_session bigint, inos bigint[], payload text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    op jsonb;
    v jsonb;
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
        WHEN 'delete_inode' THEN
            DELETE FROM extents WHERE ino = (v->>'ino')::bigint;
            DELETE FROM xattrs WHERE ino = (v->>'ino')::bigint;
            DELETE FROM symlinks WHERE ino = (v->>'ino')::bigint;
            DELETE FROM orphans WHERE ino = (v->>'ino')::bigint;
            DELETE FROM inodes WHERE ino = (v->>'ino')::bigint;
        WHEN 'put_dirent' THEN
            INSERT INTO dirents SELECT * FROM jsonb_populate_record(NULL::dirents, v)
            ON CONFLICT (parent, name) DO UPDATE SET ino = EXCLUDED.ino, kind = EXCLUDED.kind,
                cookie = EXCLUDED.cookie;
        WHEN 'delete_dirent' THEN
            DELETE FROM dirents
            WHERE parent = (v->>'parent')::bigint AND name = (v->>'name')::bytea;
        WHEN 'splice' THEN
            -- ANY(ARRAY(...)) so the deletes are index lookups by (ino, offset): an IN
            -- (subquery) scanned every extent of the file per splice
            DELETE FROM extents WHERE ino = (v->>'ino')::bigint AND file_offset = ANY
                (ARRAY(SELECT jsonb_array_elements_text(v->'remove')::bigint));
            INSERT INTO extents SELECT * FROM jsonb_populate_recordset(NULL::extents, v->'insert')
            ON CONFLICT (ino, file_offset) DO UPDATE SET block_key = EXCLUDED.block_key,
                block_offset = EXCLUDED.block_offset, len = EXCLUDED.len;
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
    IF inos IS NOT NULL THEN
        INSERT INTO changes (session, inos) VALUES (change_session, inos);
        PERFORM pg_notify('graviton_changes', payload);
    END IF;
END;
$$;
