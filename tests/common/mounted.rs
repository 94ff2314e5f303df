//! A real mount of a fresh volume for tests: formatted in a temporary folder, mounted with the
//! `graviton` binary, unmounted (and its daemon stopped) when dropped, even after a failure.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_graviton");

pub struct Mounted {
    pub dir: tempfile::TempDir,
    /// The volume folder (embedded volumes) or the block folder's parent (PostgreSQL volumes).
    pub vol: PathBuf,
    pub mnt: PathBuf,
    pub options: String,
    /// What `graviton mount` and `status` are given: the folder or the postgres:// URL.
    pub source: String,
    /// Where the daemon keeps its pid file.
    pub state: PathBuf,
}

/// Runs a command with a time limit; a hung tool fails the test instead of hanging CI.
pub fn run(cmd: &str, args: &[&str], cwd: &Path) -> Output {
    Command::new("timeout")
        .arg("-k5")
        .arg("120")
        .arg(cmd)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

/// Runs a command as the user `nobody` (setpriv), with a time limit.
pub fn as_nobody(cmd: &str, args: &[&str]) -> Output {
    let mut all = vec![
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        cmd,
    ];
    all.extend_from_slice(args);
    run("setpriv", &all, Path::new("/"))
}

pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A world-searchable temporary folder (pjdfstest and other users must reach the mount) with
/// the volume and mountpoint paths inside it.
fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("graviton-test")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (vol, mnt) = (dir.path().join("vol"), dir.path().join("mnt"));
    std::fs::create_dir(&mnt).expect("mkdir");
    (dir, vol, mnt)
}

impl Mounted {
    /// Formats and mounts a volume (`allow_other` always, plus `options`).
    pub fn new(format_args: &[&str], options: &str) -> Mounted {
        let (dir, vol, mnt) = scratch();
        let mut args = vec!["format"];
        args.extend_from_slice(format_args);
        let v = vol.to_str().unwrap();
        args.push(v);
        ok(run(BIN, &args, dir.path()), "graviton format");
        let source = v.to_string();
        let m = Mounted {
            dir,
            state: vol.clone(),
            vol,
            mnt,
            options: options.to_string(),
            source,
        };
        m.mount();
        m
    }

    /// Formats and mounts a PostgreSQL volume (a scratch database on the server that
    /// `scripts/test.sh` starts) with its blocks in the temporary folder.
    pub fn new_pg(options: &str) -> Mounted {
        Self::new_pg_with_store(options, None)
    }

    /// A PostgreSQL volume with blocks in `store` (`None`: a folder in the temporary folder).
    pub fn new_pg_with_store(options: &str, store: Option<&str>) -> Mounted {
        Self::new_pg_formatted(&[], options, store)
    }

    /// A PostgreSQL volume formatted with `format_args` as well, blocks in `store` (`None`: a
    /// folder in the temporary folder).
    pub fn new_pg_formatted(format_args: &[&str], options: &str, store: Option<&str>) -> Mounted {
        let url = graviton_testkit::scratch_database();
        let (dir, vol, mnt) = scratch();
        let store = store
            .map(str::to_string)
            .unwrap_or_else(|| format!("file://{}", vol.join("blocks").display()));
        let mut args = vec!["format", "--store", &store];
        args.extend_from_slice(format_args);
        args.push(&url);
        ok(run(BIN, &args, dir.path()), "graviton format postgres");
        Self::mount_pg(dir, vol, mnt, url, options)
    }

    /// Mounts a volume formatted elsewhere (a folder or a postgres:// URL) on a mountpoint of
    /// its own.
    pub fn existing(source: &str, options: &str) -> Mounted {
        let (dir, vol, mnt) = scratch();
        if source.starts_with("postgres") {
            return Self::mount_pg(dir, vol, mnt, source.to_string(), options);
        }
        let m = Mounted {
            dir,
            vol: PathBuf::from(source),
            state: PathBuf::from(source),
            mnt,
            options: options.to_string(),
            source: source.to_string(),
        };
        m.mount();
        m
    }

    /// Mounts the PostgreSQL volume `url` on `mnt`, keeping the daemon's state in `dir`.
    fn mount_pg(
        dir: tempfile::TempDir,
        vol: PathBuf,
        mnt: PathBuf,
        url: String,
        options: &str,
    ) -> Mounted {
        let state = graviton::volume::Source::parse(&url).mount_state_dir_in(
            &dir.path().join("state"),
            &mnt.canonicalize().expect("mountpoint"),
        );
        let m = Mounted {
            dir,
            vol,
            mnt,
            options: options.to_string(),
            source: url,
            state,
        };
        m.mount();
        m
    }

    pub fn mount(&self) {
        let opts = if self.options.is_empty() {
            "allow_other".to_string()
        } else {
            format!("allow_other,{}", self.options)
        };
        let args = [
            "mount",
            &self.source,
            self.mnt.to_str().unwrap(),
            "-o",
            &opts,
        ];
        ok(self.graviton(&args), "graviton mount");
    }

    /// Runs the graviton binary (with a time limit) keeping its state (PostgreSQL volumes:
    /// pid file, log, metadata cache) in this mount's temporary folder.
    pub fn graviton(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("-k5")
            .arg("120")
            .arg(BIN)
            .args(args)
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .current_dir(self.dir.path())
            .output()
            .expect("running graviton")
    }

    /// A second mount of the same PostgreSQL volume, on its own mountpoint.
    pub fn another_mount(&self, options: &str) -> Mounted {
        let (dir, vol, mnt) = scratch();
        Self::mount_pg(dir, vol, mnt, self.source.clone(), options)
    }

    /// What was mounted: a folder, or a postgres:// URL.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state.join("graviton.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    /// Unmounts and waits until the daemon has committed everything and exited.
    pub fn unmount(&self) {
        let pid = self.daemon_pid();
        // A process that just exited may still pin the mount for a moment (EBUSY): retry briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = run(
                "fusermount3",
                &["-u", self.mnt.to_str().unwrap()],
                self.dir.path(),
            );
            let busy = String::from_utf8_lossy(&out.stderr).contains("busy");
            if !busy || Instant::now() > deadline {
                ok(out, "fusermount3 -u");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Self::alive(pid) && !exited(pid) {
                assert!(
                    Instant::now() < deadline,
                    "daemon {pid} did not exit after unmount"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the daemon without letting it flush anything.
    pub fn kill_daemon(&self) {
        let pid = self.daemon_pid().expect("daemon pid");
        // SAFETY: plain kill(2) of the daemon this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Self::alive(pid) && !exited(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Dumps this volume, loads the dump into a new PostgreSQL volume with the same blocks,
    /// and returns its URL.
    pub fn load_into_postgres(&self) -> String {
        let dump = self.dir.path().join("dump.jsonl");
        ok(
            self.graviton(&["dump", "-o", dump.to_str().unwrap(), &self.source]),
            "dump",
        );
        let pg = graviton_testkit::scratch_database();
        let blocks = format!("file://{}", self.vol.join("blocks").display());
        ok(
            self.graviton(&["format", "--store", &blocks, &pg]),
            "format pg",
        );
        ok(
            self.graviton(&["load", dump.to_str().unwrap(), &pg]),
            "load",
        );
        pg
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = ok(
            self.graviton(&["status", "--json", &self.source]),
            "graviton status",
        );
        serde_json::from_str(&out).expect("status json")
    }
}

/// The test S3 server's URL (`scripts/s3.sh`) with a prefix of the caller's own.
pub fn s3_scratch_url() -> String {
    graviton_testkit::s3_scratch_url()
}

/// `graviton mount` from another machine (another state folder); returns its stderr, or None
/// when it mounted (and is unmounted again).
pub fn mount_elsewhere(source: &str) -> Option<String> {
    let other = tempfile::tempdir().unwrap();
    let mnt = other.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new("timeout")
        .args(["-k5", "60", BIN, "mount", source, mnt.to_str().unwrap()])
        .args(["-o", "allow_other"])
        .env("XDG_STATE_HOME", other.path().join("state"))
        .output()
        .unwrap();
    if out.status.success() {
        let _ = Command::new("fusermount3").arg("-uz").arg(&mnt).status();
        return None;
    }
    Some(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Whether a process has finished exiting: gone, or a zombie whose threads have all exited.
/// (The leader shows "Z" as soon as it exits, while other threads may still hold its files.)
pub fn exited(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    if stat.is_empty() {
        return true;
    }
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    stat.contains(") Z ") && threads <= 1
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let pid = self.daemon_pid();
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.mnt)
            .output();
        if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Self::alive(pid) && !exited(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if Self::alive(pid) && !exited(pid) {
                // SAFETY: last resort for a daemon that would not stop.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A process of its own holding `path` open with `committed` written and fsync'd, then
/// `pending` written and not committed (no close, no fsync), until the returned handle is
/// dropped. A descriptor of the test process itself would not do: each child the test starts
/// closes it at exec (close-on-exec), and every close commits.
pub struct PendingWriter(std::process::Child);

impl PendingWriter {
    pub fn start(path: &Path, committed: &str, pending: &str) -> PendingWriter {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import os,sys\n\
                 f=open(sys.argv[1],'ab')\n\
                 f.write(sys.argv[2].encode()); f.flush(); os.fsync(f.fileno())\n\
                 f.write(sys.argv[3].encode()); f.flush()\n\
                 print('written', flush=True); sys.stdin.readline()",
                path.to_str().unwrap(),
                committed,
                pending,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "written\n", "the writer did not write");
        PendingWriter(child)
    }
}

impl Drop for PendingWriter {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}
