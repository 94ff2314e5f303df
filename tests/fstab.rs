//! Mounts from /etc/fstab lines through mount(8) and umount(8), with the helpers in
//! `mount-helpers/` (scripts/test.sh installs them with `mount-helpers/install.sh`).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::mounted::{BIN, Mounted, exited, ok, run};
use common::random_bytes;
use common::relay::Relay;

/// mount(8) or umount(8) with a time limit, finding this build's graviton and keeping the
/// daemon's state where the test's `Mounted` looks for it.
fn util(m: &Mounted, tool: &str, args: &[&str]) -> Output {
    for helper in ["/sbin/mount.graviton", "/sbin/umount.fuse.graviton"] {
        assert!(
            Path::new(helper).exists(),
            "{helper} is missing: run the tests through scripts/test.sh (mount-helpers/install.sh)"
        );
    }
    Command::new("timeout")
        .args(["-k5", "300", tool])
        .args(args)
        .env("GRAVITON_BIN", BIN)
        .env("XDG_STATE_HOME", m.dir.path().join("state"))
        .output()
        .expect("running mount(8)")
}

/// An fstab file with one line for `m`'s volume and mountpoint.
fn fstab(m: &Mounted, options: &str) -> String {
    let path = m.dir.path().join("fstab");
    let line = format!("{} {} graviton {options} 0 0\n", m.source, m.mnt.display());
    std::fs::write(&path, line).unwrap();
    path.to_str().unwrap().to_string()
}

fn mounted_type(mnt: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(1) == Some(&mnt.to_str().unwrap())).then(|| f[2].to_string())
    })
}

/// Writes 200 MiB through an fstab mount, unmounts with umount(8), and checks that umount
/// returned only once the daemon had committed everything and exited.
fn fstab_round_trip(m: Mounted, options: &str) {
    m.unmount();
    let table = fstab(&m, options);
    let mnt = m.mnt.to_str().unwrap();
    let out = util(&m, "mount", &["-T", &table, mnt]);
    assert!(out.status.success(), "mount -T: {out:?}");
    assert_eq!(mounted_type(&m.mnt).as_deref(), Some("fuse.graviton"));
    let pid = m.daemon_pid().expect("the daemon wrote its pid");
    let data = random_bytes(9, 200 << 20);
    std::fs::write(m.path("big"), &data).unwrap();
    let out = util(&m, "umount", &[mnt]);
    assert!(out.status.success(), "umount: {out:?}");
    assert!(
        exited(pid),
        "the daemon had exited when umount returned (it had everything committed)"
    );
    assert_eq!(mounted_type(&m.mnt), None);
    m.mount();
    assert!(
        std::fs::read(m.path("big")).unwrap() == data,
        "a fresh mount reads back all 200 MiB"
    );
}

#[test]
fn an_embedded_volume_mounts_from_fstab_and_umount_waits_for_the_daemon() {
    fstab_round_trip(
        Mounted::new(&[], ""),
        "allow_other,_netdev,nofail,noatime,x-systemd.automount,attr-timeout=2",
    );
}

#[test]
fn a_postgresql_volume_mounts_from_fstab_and_umount_waits_for_the_daemon() {
    graviton_testkit::needs_servers!();
    let m = Mounted::new_pg("");
    let cache = m.dir.path().join("cache");
    fstab_round_trip(
        m,
        &format!("_netdev,allow_other,cache-dir={},defaults", cache.display()),
    );
}

#[test]
fn a_bad_fstab_option_fails_naming_it() {
    let m = Mounted::new(&[], "");
    m.unmount();
    let mnt = m.mnt.to_str().unwrap().to_string();
    for (options, name) in [("allow_other,bogus", "bogus"), ("cache_mb", "cache_mb")] {
        let table = fstab(&m, options);
        let out = util(&m, "mount", &["-T", &table, &mnt]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{options} was accepted");
        assert!(err.contains(name), "the error names {name}: {err}");
        assert_eq!(mounted_type(&m.mnt), None, "nothing was mounted");
    }
}

/// As a user installs it (scripts/install.sh, which scripts/test.sh runs): `graviton` in
/// /usr/local/bin, where the helpers find it without `GRAVITON_BIN`, and an fstab line of type
/// `fuse.graviton`, as users of other FUSE filesystems write it.
#[test]
fn an_installed_graviton_mounts_from_an_fstab_line_of_type_fuse_graviton() {
    let installed = Path::new("/usr/local/bin/graviton");
    assert!(
        installed.exists(),
        "{} is missing: run the tests through scripts/test.sh (scripts/install.sh)",
        installed.display()
    );
    let m = Mounted::new(&[], "");
    m.unmount();
    let table = m.dir.path().join("fstab");
    let line = format!(
        "{} {} fuse.graviton allow_other 0 0\n",
        m.source,
        m.mnt.display()
    );
    std::fs::write(&table, line).unwrap();
    let mnt = m.mnt.to_str().unwrap();
    let bare = |tool: &str, args: &[&str]| {
        Command::new("timeout")
            .args(["-k5", "120", tool])
            .args(args)
            .env_remove("GRAVITON_BIN")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("XDG_STATE_HOME", m.dir.path().join("state"))
            .output()
            .expect("running mount(8)")
    };
    let out = bare("mount", &["-T", table.to_str().unwrap(), mnt]);
    assert!(out.status.success(), "mount -T: {out:?}");
    assert_eq!(mounted_type(&m.mnt).as_deref(), Some("fuse.graviton"));
    let pid = m.daemon_pid().expect("the daemon wrote its pid");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, installed, "the daemon runs the installed program");
    std::fs::write(m.path("f"), b"installed").unwrap();
    let out = bare("umount", &[mnt]);
    assert!(out.status.success(), "umount: {out:?}");
    assert_eq!(mounted_type(&m.mnt), None);
    m.mount();
    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"installed");
}

/// `mount -o remount,ro` of an fstab mount is done by the kernel: the mount turns read-only
/// (EROFS) and back, with the same daemon, which starts no second one.
#[test]
fn a_remount_read_only_and_back_keeps_the_daemon() {
    let m = Mounted::new(&[], "");
    m.unmount();
    let table = fstab(&m, "allow_other");
    let mnt = m.mnt.to_str().unwrap();
    let out = util(&m, "mount", &["-T", &table, mnt]);
    assert!(out.status.success(), "mount -T: {out:?}");
    let pid = m.daemon_pid().expect("the daemon wrote its pid");
    std::fs::write(m.path("before"), b"rw").unwrap();
    let out = util(&m, "mount", &["-T", &table, "-o", "remount,ro", mnt]);
    assert!(out.status.success(), "remount,ro: {out:?}");
    let err = std::fs::write(m.path("during"), b"ro").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_eq!(std::fs::read(m.path("before")).unwrap(), b"rw");
    let out = util(&m, "mount", &["-T", &table, "-o", "remount,rw", mnt]);
    assert!(out.status.success(), "remount,rw: {out:?}");
    std::fs::write(m.path("after"), b"rw again").unwrap();
    assert_eq!(
        m.daemon_pid(),
        Some(pid),
        "the same daemon serves the mount"
    );
    let out = util(&m, "umount", &[mnt]);
    assert!(out.status.success(), "umount: {out:?}");
}

/// umount(8) clears a mount whose daemon died (its mountpoint can no longer be looked at).
#[test]
fn umount_clears_a_mount_whose_daemon_died() {
    let m = Mounted::new(&[], "");
    m.unmount();
    // no attribute caching: the kernel could otherwise answer a stat of the dead mount
    let table = fstab(&m, "allow_other,attr_timeout=0");
    let mnt = m.mnt.to_str().unwrap();
    let out = util(&m, "mount", &["-T", &table, mnt]);
    assert!(out.status.success(), "mount -T: {out:?}");
    let pid = m.daemon_pid().expect("the daemon wrote its pid");
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    while !exited(pid) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        std::fs::metadata(&m.mnt).is_err(),
        "a dead mount cannot be looked at"
    );
    let out = util(&m, "umount", &[mnt]);
    assert!(out.status.success(), "umount of a dead mount: {out:?}");
    assert_eq!(mounted_type(&m.mnt), None, "the dead mount is gone");
}

/// An fstab line with no option for mount(8) itself: umount(8) still returns only once the
/// daemon has exited (libmount then takes the mount's type from statfs, plain `fuse`, and runs
/// no helper unless the mount is in its own table). The daemon is kept from exiting at once:
/// its database is cut off, so ending its mount session waits for the server a few seconds.
#[test]
fn umount_of_a_plain_fstab_mount_waits_for_a_daemon_slow_to_exit() {
    graviton_testkit::needs_servers!();
    let url = graviton_testkit::scratch_database();
    let blocks = tempfile::tempdir().unwrap();
    let store = format!("file://{}", blocks.path().display());
    ok(
        run(BIN, &["format", "--store", &store, &url], blocks.path()),
        "graviton format",
    );
    let (relay, through_relay) = Relay::in_front_of(&url);
    let m = Mounted::existing(&through_relay, "");
    m.unmount();
    let table = fstab(&m, "allow_other,pg_wait=3");
    let mnt = m.mnt.to_str().unwrap();
    let out = util(&m, "mount", &["-T", &table, mnt]);
    assert!(out.status.success(), "mount -T: {out:?}");
    let pid = m.daemon_pid().expect("the daemon wrote its pid");
    std::fs::write(m.path("f"), b"committed before the cut").unwrap();
    // the mountpoint's attributes in the kernel's cache: umount(8) looks at it
    std::fs::metadata(&m.mnt).unwrap();
    relay.cut();
    let out = util(&m, "umount", &[mnt]);
    assert!(out.status.success(), "umount: {out:?}");
    assert!(
        exited(pid),
        "umount returned while the daemon was still running"
    );
    relay.restore();
    assert_eq!(mounted_type(&m.mnt), None);
    m.mount();
    assert_eq!(
        std::fs::read(m.path("f")).unwrap(),
        b"committed before the cut"
    );
}

/// mount(8) keeps `suid` and `dev` (its own defaults) from a helper: an fstab line that wants
/// setuid programs and device nodes on the volume to work says `allow_suid,allow_dev`, and
/// those reach the kernel.
#[test]
fn allow_suid_and_allow_dev_from_fstab_reach_the_kernel() {
    let m = Mounted::new(&[], "");
    m.unmount();
    let mnt = m.mnt.to_str().unwrap().to_string();
    let flags = || {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let line = mounts
            .lines()
            .rev()
            .find(|l| l.split(' ').nth(1) == Some(&mnt));
        line.expect("mounted")
            .split(' ')
            .nth(3)
            .unwrap()
            .to_string()
    };
    for (options, nosuid) in [("suid,dev", true), ("allow_suid,allow_dev", false)] {
        let table = fstab(&m, options);
        let out = util(&m, "mount", &["-T", &table, &mnt]);
        assert!(out.status.success(), "mount -o {options}: {out:?}");
        let f = flags();
        let on = |flag: &str| f.split(',').any(|x| x == flag);
        assert_eq!(on("nosuid"), nosuid, "-o {options}: {f}");
        assert_eq!(on("nodev"), nosuid, "-o {options}: {f}");
        let out = util(&m, "umount", &[&mnt]);
        assert!(out.status.success(), "umount: {out:?}");
    }
}

/// Another user starts a process whose command line looks like this mount's daemon before the
/// mount: the unmount helper waits for the real daemon (found through its pid file), not for
/// that one.
#[test]
fn the_umount_helper_waits_for_the_daemon_not_a_process_that_looks_like_one() {
    let m = Mounted::new(&[], "");
    m.unmount();
    let mnt = m.mnt.to_str().unwrap();
    let mut fake = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", "import time; time.sleep(120)"])
        .args(["mount", "--foreground", mnt])
        .spawn()
        .unwrap();
    let table = fstab(&m, "allow_other");
    let out = util(&m, "mount", &["-T", &table, mnt]);
    assert!(out.status.success(), "mount -T: {out:?}");
    let pid = m.daemon_pid().expect("the daemon wrote its pid");
    std::fs::write(m.path("f"), b"committed").unwrap();
    let started = std::time::Instant::now();
    // the helper itself, as umount(8) runs it
    let out = Command::new("timeout")
        .args(["-k5", "30", "/sbin/umount.fuse.graviton", mnt])
        .env("GRAVITON_BIN", BIN)
        .env("XDG_STATE_HOME", m.dir.path().join("state"))
        .output()
        .unwrap();
    let _ = fake.kill();
    let _ = fake.wait();
    assert!(
        out.status.success(),
        "the helper waited for the fake: {out:?}"
    );
    assert!(
        exited(pid),
        "the helper returned before the real daemon exited"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// An embedded volume mounted a second time elsewhere (`mount -t graviton VOL DIR2`) shows the
/// same filesystem there, served by the same daemon: a rename on one place is seen at once at
/// the other, and unmounting one leaves the other working.
#[test]
fn an_embedded_volume_mounted_twice_is_one_filesystem_at_both_places() {
    let m = Mounted::new(&[], "");
    m.unmount();
    let mnt = m.mnt.to_str().unwrap();
    let out = util(&m, "mount", &["-t", "graviton", &m.source, mnt]);
    assert!(out.status.success(), "first mount: {out:?}");
    let pid = m.daemon_pid().expect("the daemon wrote its pid");
    let second = m.dir.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let out = util(
        &m,
        "mount",
        &["-t", "graviton", &m.source, second.to_str().unwrap()],
    );
    assert!(out.status.success(), "second mount: {out:?}");
    std::fs::create_dir_all(m.path("A")).unwrap();
    std::fs::create_dir_all(m.path("B")).unwrap();
    std::fs::write(m.path("A/f"), b"one file").unwrap();
    std::fs::rename(m.path("A/f"), m.path("B/f")).unwrap();
    assert_eq!(std::fs::read(second.join("B/f")).unwrap(), b"one file");
    std::fs::rename(second.join("B/f"), second.join("A/f")).unwrap();
    assert_eq!(std::fs::read(m.path("A/f")).unwrap(), b"one file");
    assert_eq!(m.daemon_pid(), Some(pid), "one daemon serves both");
    let out = util(&m, "umount", &[mnt]);
    assert!(out.status.success(), "umount of the first: {out:?}");
    assert_eq!(std::fs::read(second.join("A/f")).unwrap(), b"one file");
    let out = util(&m, "umount", &[second.to_str().unwrap()]);
    assert!(out.status.success(), "umount of the second: {out:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !exited(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon ends with the last mount"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
