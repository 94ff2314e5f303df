-- A journal replayed after a crash (write-behind mounts) sends again, in order, transactions
-- the database already has. A rename within a directory keeps the entry's cookie, so the
-- replayed creation of the old name meets the new name's entry: same directory, cookie and
-- inode. That entry yields to it (the replayed rename then puts it back). An inode's entry
-- under another name with the same cookie exists only in such a replay: a rename removes the
-- old name before it writes the new one.
CREATE FUNCTION graviton_dirent_cookie_yields() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM dirents
    WHERE parent = NEW.parent AND cookie = NEW.cookie AND ino = NEW.ino AND name <> NEW.name;
    RETURN NEW;
END;
$$;

CREATE TRIGGER dirent_cookie_yields BEFORE INSERT ON dirents
FOR EACH ROW EXECUTE FUNCTION graviton_dirent_cookie_yields();
