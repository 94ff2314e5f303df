//! What another local user can reach: nothing of a volume's content on the local disk (block
//! files, metadata, caches, staged blocks, state, dumps), and nothing through a mount daemon's
//! control socket. The other user is `nobody`, switched to with setpriv.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use common::mounted::{Mounted, as_nobody, ok};

const NOBODY: &str = "65534";
/// Debian's python3 (`scripts/setup.sh` installs it), which any user may run.
const PYTHON: &str = "/usr/bin/python3";

/// The files under `paths` in which nobody finds `marker`. A world-readable canary holding it
/// is searched too, and must be found: a search that cannot find anything proves nothing.
fn found_by_nobody(marker: &str, paths: &[&Path]) -> String {
    let canary = tempfile::Builder::new()
        .prefix("graviton-canary")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(canary.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let canary_file = canary.path().join("canary");
    std::fs::write(&canary_file, marker).unwrap();
    std::fs::set_permissions(&canary_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut paths = paths.to_vec();
    paths.push(&canary_file);
    let mut args = vec!["-rl", marker];
    let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    let found = String::from_utf8_lossy(&as_nobody("grep", &args).stdout).into_owned();
    let canary_name = canary_file.display().to_string();
    assert!(
        found.contains(&canary_name),
        "nobody's grep found not even the canary: {found}"
    );
    found
        .lines()
        .filter(|l| *l != canary_name)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Files under `dir` (at any depth) whose mode lets others in.
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut open = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return open;
    };
    for e in entries.flatten() {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            if meta.mode() & 0o077 != 0 {
                open.push(format!("{} {:o}", e.path().display(), meta.mode() & 0o777));
            }
            open.extend(open_to_others(&e.path()));
        } else if meta.is_file() && meta.mode() & 0o077 != 0 {
            open.push(format!("{} {:o}", e.path().display(), meta.mode() & 0o777));
        }
    }
    open
}

/// A folder in the mount only root may enter, holding a file with `marker` in its content.
fn write_secret(m: &Mounted, marker: &str) {
    let private = m.path("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut content = marker.repeat(1000).into_bytes();
    content.extend(common::random_bytes(9, 3 << 20));
    std::fs::write(private.join("secret"), content).unwrap();
    let denied = as_nobody("cat", &[private.join("secret").to_str().unwrap()]);
    assert!(!denied.status.success(), "the mount itself lets nobody in");
}

#[test]
fn nobody_reads_an_embedded_volumes_content_from_the_disk() {
    let marker = "MARKER-7f3a1c-embedded";
    let m = Mounted::new(&[], "");
    write_secret(&m, marker);
    let dump = m.dir.path().join("volume.dump");
    ok(
        m.graviton(&["dump", &m.source, "--output", dump.to_str().unwrap()]),
        "graviton dump",
    );
    m.unmount();
    assert_eq!(
        std::fs::metadata(&m.vol).unwrap().mode() & 0o777,
        0o700,
        "the volume folder"
    );
    assert_eq!(
        std::fs::metadata(&dump).unwrap().mode() & 0o777,
        0o600,
        "the dump"
    );
    assert!(
        open_to_others(&m.vol).is_empty(),
        "{:?}",
        open_to_others(&m.vol)
    );
    let found = found_by_nobody(marker, &[&m.vol, &dump]);
    assert!(found.is_empty(), "nobody read the secret in: {found}");
    let found = found_by_nobody("secret", &[&dump]);
    assert!(found.is_empty(), "nobody read names in the dump: {found}");
}

#[test]
fn an_existing_volume_open_to_others_is_tightened_when_mounted() {
    let m = Mounted::new(&[], "");
    std::fs::write(m.path("f"), b"MARKER-old-volume").unwrap();
    m.unmount();
    // as an earlier version left it, under umask 022
    ok(
        common::mounted::run(
            "chmod",
            &["-R", "go+rX", m.vol.to_str().unwrap()],
            m.dir.path(),
        ),
        "chmod",
    );
    assert!(
        !found_by_nobody("MARKER-old-volume", &[&m.vol]).is_empty(),
        "the setup does not leak: nobody cannot grep at all?"
    );
    m.mount();
    let found = found_by_nobody("MARKER-old-volume", &[&m.vol]);
    assert!(found.is_empty(), "still readable after a mount: {found}");
}

#[test]
fn nobody_reads_a_postgresql_volumes_staged_blocks_caches_or_state() {
    graviton_testkit::needs_servers!();
    let marker = "MARKER-52be09-postgres";
    let mut m = Mounted::new_pg_with_store("", Some("postgres"));
    m.unmount();
    let cache = m.dir.path().join("cache");
    m.options = format!("writeback,cache_dir={}", cache.display());
    m.mount();
    write_secret(&m, marker);
    // before the upload (2 s later) the content is in the staging folder only
    let found = found_by_nobody(marker, &[m.dir.path()]);
    assert!(found.is_empty(), "nobody read the secret in: {found}");
    assert!(
        open_to_others(&m.dir.path().join("state")).is_empty(),
        "{:?}",
        open_to_others(&m.dir.path().join("state"))
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    m.unmount();
    let found = found_by_nobody(marker, &[m.dir.path()]);
    assert!(found.is_empty(), "nobody read the secret in: {found}");
    for dir in ["state", "cache"] {
        let open = open_to_others(&m.dir.path().join(dir));
        assert!(open.is_empty(), "{open:?}");
    }
}

/// Sends `request` on the daemon's socket as the user `uid` (None: root) and returns what came
/// back.
fn ask_daemon(socket: &Path, request: &[u8], uid: Option<&str>) -> String {
    // the daemon may close before it has read everything: keep what came back anyway
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX)\n\
        s.connect(sys.argv[1])\n\
        out=b''\n\
        try:\n\
        \x20   s.sendall(sys.stdin.buffer.read())\n\
        \x20   s.shutdown(socket.SHUT_WR)\n\
        except OSError as e:\n\
        \x20   out+=str(e).encode()\n\
        try:\n\
        \x20   while True:\n\
        \x20       b=s.recv(65536)\n\
        \x20       if not b: break\n\
        \x20       out+=b\n\
        except OSError as e:\n\
        \x20   out+=str(e).encode()\n\
        sys.stdout.buffer.write(out)\n";
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", uid, "--regid", uid, "--clear-groups", PYTHON]);
            c
        }
        None => Command::new(PYTHON),
    };
    let mut child = cmd
        .args(["-c", script, socket.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(request);
    drop(stdin);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    child.wait().unwrap();
    out + &err
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[test]
fn the_control_socket_answers_only_its_user_and_bounds_requests() {
    let m = Mounted::new(&[], "");
    std::fs::write(m.path("named-secretly"), b"x").unwrap();
    let socket = m.vol.join("graviton.sock");
    assert_eq!(std::fs::metadata(&socket).unwrap().mode() & 0o777, 0o600);

    // nobody cannot even reach it
    let out = as_nobody(common::mounted::BIN, &["dump", &m.source, "--output", "-"]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("named-secretly"));

    // an administrator who opened the folder and the socket up: the daemon still refuses
    std::fs::set_permissions(&m.vol, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for req in ["dump", "status"] {
        let line = format!("{{\"command\":\"{req}\"}}\n");
        let answer = ask_daemon(&socket, line.as_bytes(), Some(NOBODY));
        assert!(answer.contains("permission denied"), "{req}: {answer}");
        assert!(!answer.contains("named-secretly"), "{answer}");
    }
    let answer = ask_daemon(&socket, b"{\"command\":\"dump\"}\n", None);
    assert!(
        answer.contains("named-secretly"),
        "root is answered: {answer}"
    );

    // an endless line: refused after a bounded read, and the daemon does not grow
    let pid = m.daemon_pid().unwrap();
    let before = rss_kib(pid);
    let answer = ask_daemon(&socket, &vec![b'a'; 64 << 20], None);
    assert!(
        answer.contains("no complete line")
            || answer.contains("reset")
            || answer.contains("Broken pipe"),
        "{answer}"
    );
    let after = rss_kib(pid);
    assert!(
        after < before + 8192,
        "the daemon grew from {before} to {after} KiB"
    );
    let answer = ask_daemon(&socket, b"{\"command\":\"status\"}\n", None);
    assert!(answer.contains("graviton: ok"), "still answering: {answer}");
    std::fs::set_permissions(&m.vol, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// `graviton` with no environment but PATH, as systemd starts an fstab mount.
fn graviton_without_home(args: &[&str], cwd: &Path, extra_env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "-k5",
        "120",
        "env",
        "-i",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    ]);
    for (k, v) in extra_env {
        cmd.arg(format!("{k}={}", v.display()));
    }
    cmd.arg(common::mounted::BIN)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("graviton")
}

#[test]
fn a_mount_without_home_keeps_its_state_in_var_lib_and_refuses_a_planted_folder() {
    graviton_testkit::needs_servers!();
    let url = graviton_testkit::scratch_database();
    let dir = tempfile::Builder::new()
        .prefix("graviton-test")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let store = format!("file://{}", dir.path().join("blocks").display());
    ok(
        graviton_without_home(&["format", "--store", &store, &url], dir.path(), &[]),
        "format",
    );
    let source = graviton::volume::Source::parse(&url);
    let state = source.mount_state_dir_in(Path::new("/var/lib"), &mnt);
    let volume_state = source.state_dir_in(Path::new("/var/lib"));
    struct Unmount<'a>(&'a Path, std::path::PathBuf);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("fusermount3").arg("-uz").arg(self.0).output();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _cleanup = Unmount(&mnt, volume_state.clone());
    ok(
        graviton_without_home(&["mount", &url, mnt.to_str().unwrap()], dir.path(), &[]),
        "mount without HOME",
    );
    std::fs::write(mnt.join("f"), b"hello").unwrap();
    assert!(
        state.join("graviton.pid").exists(),
        "no pid file in {}",
        state.display()
    );
    assert!(
        !Path::new("/tmp/graviton")
            .join(volume_state.file_name().unwrap())
            .exists()
    );
    assert_eq!(
        std::fs::metadata(&volume_state).unwrap().mode() & 0o777,
        0o700
    );
    ok(
        Command::new("fusermount3")
            .arg("-u")
            .arg(&mnt)
            .output()
            .unwrap(),
        "unmount",
    );
    std::thread::sleep(std::time::Duration::from_millis(500));

    // a state folder another user made first (under a home anyone may write into) is refused
    let home = dir.path().join("state-home");
    std::fs::create_dir(&home).unwrap();
    let planted = source.state_dir_in(&home);
    std::fs::create_dir_all(&planted).unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    let out = graviton_without_home(
        &["mount", &url, mnt.to_str().unwrap()],
        dir.path(),
        &[("XDG_STATE_HOME", &home)],
    );
    assert!(!out.status.success(), "mounted with a planted state folder");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&planted.display().to_string()), "{err}");
    // a symlink planted in its place
    std::fs::remove_dir(&planted).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();
    let out = graviton_without_home(
        &["mount", &url, mnt.to_str().unwrap()],
        dir.path(),
        &[("XDG_STATE_HOME", &home)],
    );
    assert!(!out.status.success(), "mounted through a planted symlink");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// What another user may do through a mount: list, restore and purge the trash entries it
/// owns, and see the quotas that concern it, asked of the mount itself (its control socket,
/// which answers with the caller's own identity). Nothing of root's, nothing else.
#[test]
fn ordinary_users_manage_their_own_trash_and_see_their_quotas_through_the_mount() {
    use common::mounted::BIN;
    let m = Mounted::new(&["--trash-days", "1"], "");
    let mnt = m.mnt.to_str().unwrap();
    let nobody = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push(mnt);
        as_nobody(BIN, &all)
    };
    let shared = m.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::create_dir(m.path("private")).unwrap();
    std::fs::set_permissions(m.path("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(m.path("private/roots-secret"), b"root's").unwrap();
    std::fs::write(shared.join("roots"), b"root's too").unwrap();
    let mine = shared.join("mine").display().to_string();
    let sh = |script: &str| ok(as_nobody("sh", &["-c", script]), script);
    sh(&format!(
        "head -c 300000 /dev/urandom > {mine} && cp {mine} /tmp/graviton-mine-{}",
        std::process::id()
    ));
    let saved = format!("/tmp/graviton-mine-{}", std::process::id());
    std::fs::remove_file(m.path("private/roots-secret")).unwrap();
    std::fs::remove_file(shared.join("roots")).unwrap();
    sh(&format!("rm {mine}"));

    // nobody sees its own entry only
    let list = ok(nobody(&["trash", "list"]), "nobody's trash list");
    assert!(list.contains("/shared/mine"), "{list}");
    assert!(
        !list.contains("roots"),
        "nobody sees root's entries: {list}"
    );
    let all = ok(
        m.graviton(&["trash", "list", &m.source]),
        "root's trash list",
    );
    let roots_entry = all
        .lines()
        .find(|l| l.contains("/private/roots-secret"))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("{all}"))
        .to_string();
    // ...and cannot purge or restore root's, even by name
    ok(
        nobody(&["trash", "purge", "--entry", &roots_entry]),
        "purge",
    );
    ok(
        nobody(&["trash", "restore", "--entry", &roots_entry]),
        "restore",
    );
    assert!(!m.path("private/roots-secret").exists());
    let all = ok(
        m.graviton(&["trash", "list", &m.source]),
        "root's trash list",
    );
    assert_eq!(all.lines().count(), 3, "{all}");

    // its own comes back byte-identical
    let restored = ok(nobody(&["trash", "restore"]), "nobody's restore");
    assert!(restored.contains("restored 1 entries"), "{restored}");
    assert_eq!(
        std::fs::read(&mine).unwrap(),
        std::fs::read(&saved).unwrap()
    );
    assert_eq!(std::fs::metadata(&mine).unwrap().uid(), 65534);
    std::fs::remove_file(&saved).unwrap();

    // not into a directory it may no longer write; purged, though, it is gone
    sh(&format!("rm {mine}"));
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = nobody(&["trash", "restore"]);
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stdout);
    assert!(why.contains("you may not write its directory"), "{why}");
    assert!(!std::path::Path::new(&mine).exists());
    let purged = ok(nobody(&["trash", "purge"]), "nobody's purge");
    assert!(purged.contains("purged: 1 inodes"), "{purged}");
    let all = ok(
        m.graviton(&["trash", "list", &m.source]),
        "root's trash list",
    );
    assert_eq!(all.lines().count(), 2, "root's entries stay: {all}");

    // nor into one it may no longer reach
    std::fs::create_dir_all(m.path("walled/inner")).unwrap();
    std::fs::set_permissions(
        m.path("walled/inner"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let inner = m.path("walled/inner/x").display().to_string();
    sh(&format!("echo x > {inner} && rm {inner}"));
    std::fs::set_permissions(m.path("walled"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = nobody(&["trash", "restore"]);
    let why = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && why.contains("you may not reach its directory"),
        "{why}"
    );
    ok(nobody(&["trash", "purge"]), "nobody's purge");

    // quotas: the volume's, its own, and those of directories it may reach
    for target in [
        &["--volume"][..],
        &["--user", "nobody"],
        &["--user", "root"],
        &["--path", "/shared"],
        &["--path", "/private"],
    ] {
        let mut args = vec!["quota", "set", "--bytes", "1g"];
        args.extend_from_slice(target);
        args.push(&m.source);
        ok(m.graviton(&args), "quota set");
    }
    let list = ok(nobody(&["quota", "list"]), "nobody's quota list");
    let shown: Vec<&str> = list.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(shown.len(), 4, "{list}");
    for of in ["volume", "user:65534", "/shared", "trash"] {
        assert!(shown.contains(&of), "{of} missing: {list}");
    }
    ok(
        nobody(&["quota", "get", "--user", "nobody"]),
        "its own quota",
    );
    for refused in [
        &["quota", "get", "--user", "root"][..],
        &["quota", "get", "--path", "/private"],
        &["quota", "set", "--user", "nobody", "--bytes", "1t"],
        &["quota", "remove", "--volume"],
        &["snapshot", "create", "mine"],
        &["settings"],
    ] {
        let out = nobody(refused);
        assert!(!out.status.success(), "{refused:?} succeeded for nobody");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("permission denied") || err.contains("Permission denied"),
            "{refused:?}: {err}"
        );
    }
    // root, through the mount, is root for trash and quota queries, and for nothing else
    let list = ok(
        as_root_on_mount(mnt, &["quota", "list"]),
        "root's quota list",
    );
    assert_eq!(list.lines().count(), 6, "{list}");
    let out = as_root_on_mount(mnt, &["settings"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("only trash and quota queries"),
        "{err}"
    );
}

/// `graviton ARGS MOUNTPATH` as root.
fn as_root_on_mount(mnt: &str, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.push(mnt);
    common::mounted::run(common::mounted::BIN, &all, Path::new("/"))
}
