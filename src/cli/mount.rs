//! `graviton mount`: mount a volume. By default the command returns once the mount is ready and
//! a daemon (this program again, with `--foreground`) serves it; SIGTERM, SIGINT or `umount`
//! make the daemon commit pending writes and exit.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use fuser::{Config, MountOption, Session, SessionACL};
use nix::sys::signal::{SigSet, Signal};

use super::options::MountOptions;
use crate::core::{DEFAULT_CHUNKER, HashAlgo};
use crate::fuse::GravitonFuse;
use crate::meta::SessionInfo;
use crate::vfs::Atime;
use crate::volume::stack::{self, MountLayers};
use crate::volume::{Source, Volume};

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Mount options, comma-separated (allow_other, ro, noatime, attr_timeout=SECS, cache_mb=N,
    /// dirty_mb=N, readahead_mb=N, threads=N, session_timeout=SECS, meta_cache=on|off,
    /// page_fill=on|off, writeback, write_cache, gc_every=DURATION|off, gc_grace=DURATION, and
    /// the usual fstab options).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Serve Prometheus metrics on this address (same as `-o metrics=ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Keep an on-disk block cache here (same as `-o cache_dir=PATH`).
    #[arg(long, value_name = "PATH")]
    pub cache_dir: Option<String>,
    /// Stay attached to the terminal instead of running in the background.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Print "ready" on standard output once mounted (used by the background launcher).
    #[arg(long, hide = true)]
    pub notify_ready: bool,
    /// [SOURCE] MOUNTPOINT: SOURCE is a volume directory or a postgres:// URL (default: the
    /// default volume).
    #[arg(num_args = 1..=2, required = true, value_name = "PATHS")]
    pub paths: Vec<String>,
}

/// Environment variable that hands a PostgreSQL source to the daemon.
const SOURCE_ENV: &str = "GRAVITON_SOURCE";

pub fn run(args: MountArgs) -> anyhow::Result<()> {
    let mut opts = MountOptions::default();
    let mut options = args.options.clone();
    if let Some(addr) = &args.metrics {
        options.push(format!("metrics={addr}"));
    }
    if let Some(dir) = &args.cache_dir {
        options.push(format!("cache_dir={dir}"));
    }
    for o in &options {
        opts.apply(o)?;
    }
    if opts.write_cache && !opts.writeback {
        bail!(
            "mount option write_cache needs writeback: the kernel may keep writes only on a mount that has its volume to itself"
        );
    }
    let (source, mountpoint) = match args.paths.as_slice() {
        [mp] => (None, PathBuf::from(mp)),
        // `env:NAME` (how the daemon gets a URL) is read by Source::parse
        [src, mp] => (Some(Source::parse(src)), PathBuf::from(mp)),
        _ => bail!("expected [SOURCE] MOUNTPOINT"),
    };
    let source = match source {
        Some(Source::Dir(d)) => {
            if !Volume::is_formatted(&d) {
                bail!(
                    "{} is not a Graviton volume (run `graviton format {}` first)",
                    d.display(),
                    d.display()
                );
            }
            Source::Dir(
                d.canonicalize()
                    .with_context(|| format!("volume {}", d.display()))?,
            )
        }
        Some(pg) => pg,
        None => {
            let d = super::default_volume()?;
            if !Volume::is_formatted(&d) {
                Volume::format(
                    &Source::Dir(d.clone()),
                    HashAlgo::Blake3,
                    DEFAULT_CHUNKER,
                    None,
                )
                .with_context(|| format!("creating the default volume in {}", d.display()))?;
                eprintln!("created the default volume in {}", d.display());
            }
            Source::Dir(
                d.canonicalize()
                    .with_context(|| format!("volume {}", d.display()))?,
            )
        }
    };
    if opts.writeback && matches!(source, Source::Postgres(_)) && opts.gc_every.flatten().is_some()
    {
        bail!(
            "mount option gc_every does not go with writeback on a PostgreSQL volume: blocks its journal names are not in PostgreSQL yet"
        );
    }
    let mountpoint = prepare_mountpoint(&mountpoint)?;
    if args.foreground {
        serve(&source, &mountpoint, &opts, args.notify_ready)
    } else {
        launch_daemon(&options, &source, &mountpoint)
    }
}

/// Checks the mountpoint, cleaning up a mount whose daemon died.
fn prepare_mountpoint(mp: &Path) -> anyhow::Result<PathBuf> {
    let dead = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOTCONN);
    match std::fs::metadata(mp) {
        Err(e) if dead(&e) => detach_dead_mount(mp)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mountpoint {} does not exist", mp.display())
        }
        Err(e) => bail!("mountpoint {}: {e}", mp.display()),
        Ok(m) if !m.is_dir() => bail!("mountpoint {} is not a directory", mp.display()),
        Ok(_) => {}
    }
    let mp = mp
        .canonicalize()
        .with_context(|| format!("mountpoint {}", mp.display()))?;
    if let Some((fstype, source)) = fuse_mount_at(&mp) {
        // The kernel may answer stat from its cache; statfs always asks the daemon.
        match nix::sys::statfs::statfs(&mp) {
            Err(nix::Error::ENOTCONN) => detach_dead_mount(&mp)?,
            _ => bail!(
                "{} is already mounted ({fstype} from {source})",
                mp.display()
            ),
        }
    }
    Ok(mp)
}

/// How long a mount waits for the daemon of an earlier mount of the same embedded volume to
/// let it go, once that mount is gone.
const EXITING_DAEMON_WAIT: Duration = Duration::from_secs(30);

/// Opens the volume. An embedded volume whose earlier mount is gone while its daemon still
/// runs (it commits and exits after the unmount; umount(8) may return before) is waited for.
fn open_volume(source: &Source, pg_wait: Duration) -> anyhow::Result<Volume> {
    let deadline = std::time::Instant::now() + EXITING_DAEMON_WAIT;
    loop {
        match Volume::open_waiting(source, pg_wait) {
            Err(crate::volume::VolumeError::InUse(_))
                if std::time::Instant::now() < deadline && daemon_exiting(source) =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}

/// Whether the daemon of an embedded volume runs (its pid file names a live process) with
/// no mount of the volume left.
fn daemon_exiting(source: &Source) -> bool {
    let Source::Dir(dir) = source else {
        return false;
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        f.len() > 2 && f[2] == "fuse.graviton" && Path::new(&f[0].replace("\\040", " ")) == dir
    });
    let pid = std::fs::read_to_string(dir.join("graviton.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    !mounted && pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
}

/// The FUSE mount on `mp`, if any: (type, source).
fn fuse_mount_at(mp: &Path) -> Option<(String, String)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let escaped = mp.to_string_lossy().replace(' ', "\\040");
    mounts.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        (f.len() > 2 && f[1] == escaped && f[2].starts_with("fuse"))
            .then(|| (f[2].to_string(), f[0].to_string()))
    })
}

fn detach_dead_mount(mp: &Path) -> anyhow::Result<()> {
    eprintln!("{}: cleaning up a mount whose daemon is gone", mp.display());
    if nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH).is_ok() {
        return Ok(());
    }
    let status = Command::new("fusermount3").arg("-uz").arg(mp).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => bail!(
            "could not unmount the dead mount on {} (try `fusermount3 -uz {}`)",
            mp.display(),
            mp.display()
        ),
    }
}

/// glibc reads its tunables when a process starts, so the daemon gets them from its launcher.
const MALLOC_TUNABLES: &str = "GLIBC_TUNABLES";

/// The daemon's glibc tunables: the caller's, plus transparent huge pages for malloc's heap
/// (`glibc.malloc.hugetlb=1`) unless the caller chose otherwise. Blocks and dirty spans are
/// megabytes each, and faulting their memory in 4 KiB pages cost a tenth of a sequential
/// read's CPU: with huge pages, 0.40-0.42 -> 0.34-0.36 s for 256 MiB.
fn malloc_tunables(inherited: Option<String>) -> String {
    match inherited {
        Some(t) if t.contains("glibc.malloc.hugetlb") => t,
        Some(t) if !t.is_empty() => format!("{t}:glibc.malloc.hugetlb=1"),
        _ => "glibc.malloc.hugetlb=1".into(),
    }
}

/// Starts the daemon and returns once it reports the mount ready (or its error).
fn launch_daemon(options: &[String], source: &Source, mountpoint: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the graviton executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount").arg("--foreground").arg("--notify-ready");
    cmd.env(
        MALLOC_TUNABLES,
        malloc_tunables(std::env::var(MALLOC_TUNABLES).ok()),
    );
    for o in options {
        cmd.arg("-o").arg(o);
    }
    // A PostgreSQL URL may carry a password: it travels in the environment (readable by the
    // same user only), never on the daemon's command line (readable by everyone in ps).
    match source {
        Source::Dir(d) => cmd.arg(d),
        Source::Postgres(url) => cmd
            .env(SOURCE_ENV, url)
            .arg(format!("{}{SOURCE_ENV}", crate::volume::FROM_ENV)),
    };
    cmd.arg(mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; the daemon leaves the caller's session and terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    // read as it comes: a start-up that logs more than a pipe holds must not block the daemon
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("waiting for the mount daemon")?;
    if line.trim() == "ready" {
        // the daemon's output now goes to its log; what it said before is not needed
        return Ok(());
    }
    let status = child.wait()?;
    let err = errors.join().unwrap_or_default();
    let err = err.trim().trim_start_matches("graviton: ");
    if err.is_empty() {
        bail!("the mount daemon exited ({status}) before the mount was ready");
    }
    bail!("{err}")
}

/// Serves the mount until it is unmounted or the process is told to stop.
fn serve(
    source: &Source,
    mountpoint: &Path,
    opts: &MountOptions,
    notify_ready: bool,
) -> anyhow::Result<()> {
    // Block stop signals in every thread (threads inherit the mask); one thread waits for them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;

    // Keep freed buffers in the heap for reuse: dirty spans and blocks are large and short-lived,
    // and returning them to the kernel at once made every write fault in and zero fresh pages.
    // Buffers larger than 16 MiB are mapped apart: among them fuser's request buffers (16 MiB
    // and 4 KiB for each FUSE thread), of which a request touches at most `max_write`, so
    // only that much becomes resident. Two arenas: more multiply what freed memory stays.
    // SAFETY: mallopt only tunes glibc's allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, (16 << 20) + 4096);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    return_freed_memory();
    if let Some(addr) = opts.metrics {
        crate::metrics::serve_prometheus(addr)?;
    }
    let mut vol = open_volume(source, opts.pg_wait)?;
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let layers = MountLayers {
        meta_cache: opts.meta_cache,
        disk_cache: opts.cache_dir.clone().map(|d| (d, opts.cache_dir_mb << 20)),
        writeback: opts.writeback,
        session: SessionInfo {
            host,
            pid: std::process::id(),
            mountpoint: mountpoint.display().to_string(),
            timeout: opts.session_timeout,
        },
    };
    stack::mount_layers(&mut vol, mountpoint, &layers)?;
    let vol = Arc::new(vol);
    let mut cfg = vol.fs_config();
    cfg.atime = match opts.read_only {
        true => Atime::Never,
        false => opts.atime,
    };
    if let Some(mb) = opts.cache_mb {
        cfg.block_cache_bytes = mb << 20;
    }
    if !vol.store_url.is_local() {
        cfg.whole_file_prefetch_max = cfg.block_cache_bytes / 4;
    }
    cfg.ranged_reads = vol.store_url.ranged_reads();
    if let Some(mb) = opts.readahead_mb {
        cfg.readahead_max = mb << 20;
    }
    if let Some(mb) = opts.dirty_mb {
        cfg.dirty_limit = mb << 20;
        cfg.file_flush_threshold = cfg
            .file_flush_threshold
            .min(cfg.dirty_limit / 2)
            .max(1 << 20);
    }
    let fs = Arc::new(vol.filesystem(cfg)?);
    let shared = vol.meta.shared().is_some();
    // The kernel sees every change this mount makes, and on a shared volume the change feed
    // drops other mounts' changes from its caches: the TTL only bounds staleness while the
    // feed is down. (pjdfstest passes with it on both engines.)
    let ttl = opts.ttl.unwrap_or(Duration::from_secs(10));
    // other mounts' changes reach the kernel's caches through the change feed
    let kernel = shared.then(|| crate::fuse::KernelCache::new(ttl));
    let adapter = GravitonFuse::new(
        fs.clone(),
        ttl,
        Some(vol.capacity_path.clone()),
        kernel.clone(),
    )
    .with_write_cache(opts.write_cache);
    let notifier = adapter.notifier_slot();

    let fsname = source.display();
    let fsname = if fsname.contains([',', ' ']) {
        "graviton".to_string()
    } else {
        fsname
    };
    let mut mount_options = vec![
        MountOption::FSName(fsname.clone()),
        // as a kernel option, so /proc/mounts says fuse.graviton (fuser hands its Subtype only
        // to fusermount), the type umount(8) finds in the mount table (`super::mount_table`)
        MountOption::CUSTOM("subtype=graviton".into()),
        MountOption::DefaultPermissions,
    ];
    for (on, opt) in [
        (opts.read_only, MountOption::RO),
        (opts.atime == Atime::Never, MountOption::NoAtime),
        (opts.nodev, MountOption::NoDev),
        (!opts.nodev, MountOption::Dev),
        (opts.nosuid, MountOption::NoSuid),
        (!opts.nosuid, MountOption::Suid),
        (opts.noexec, MountOption::NoExec),
    ] {
        if on {
            mount_options.push(opt);
        }
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    let mut session = Session::new(adapter, mountpoint, &config)
        .with_context(|| format!("mounting on {}", mountpoint.display()))?;
    let _ = notifier.set(session.notifier());

    if let (Some(shared), Some(kernel)) = (vol.meta.shared(), kernel) {
        crate::fuse::follow_changes(session.notifier(), shared, kernel)?;
    }
    fs.set_kernel_pages(std::sync::Arc::new(crate::fuse::NotifierPages(
        session.notifier(),
    )));
    if opts.page_fill {
        fs.enable_page_fill(Box::new(crate::fuse::NotifierPages(session.notifier())))?;
    }
    let mut unmounter = session.unmount_callable();
    let mp = mountpoint.to_path_buf();
    let state = vol.state_dir.clone();
    crate::private::dir(&state).with_context(|| format!("creating {}", state.display()))?;
    let (fs2, src) = (fs.clone(), state.clone());
    std::thread::Builder::new()
        .name("graviton-signals".into())
        .spawn(move || {
            let Ok(sig) = signals.wait() else { return };
            tracing::info!(
                "{sig}: committing pending writes and unmounting {}",
                mp.display()
            );
            // Refuse new writes, commit everything buffered, then leave.
            fs2.freeze();
            if let Err(e) = fs2.shutdown() {
                tracing::error!("committing pending writes: {e}");
            }
            if let Err(e) = fs2.store().drain(WRITEBACK_DRAIN) {
                tracing::error!("uploading staged blocks: {e}");
            }
            fs2.meta().end_session();
            if unmounter.unmount().is_err() {
                // Files are still open (EBUSY): detach the mount and exit; everything written
                // before the signal is committed, later calls on open files fail.
                let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(super::control::socket(&src));
                let _ = std::fs::remove_file(src.join("graviton.pid"));
                tracing::info!("detached {} with files still open", mp.display());
                std::process::exit(0);
            }
        })?;
    super::control::serve(vol.clone())?;
    // the daemon is the one process of an embedded volume: it collects its garbage itself
    let gc_every = opts.gc_every.unwrap_or(match source {
        Source::Dir(_) => Some(super::gc::DEFAULT_EVERY),
        Source::Postgres(_) => None,
    });
    if let Some(every) = gc_every.filter(|_| !opts.read_only) {
        super::gc::run_every(vol.clone(), every, opts.gc_grace)?;
    }
    let pid_file = state.join("graviton.pid");
    crate::private::write(&pid_file, format!("{}\n", std::process::id()).as_bytes())
        .with_context(|| format!("writing {}", pid_file.display()))?;

    // before "ready": an unmount right after `graviton mount` returns finds it
    let recorded = super::mount_table::record(&fsname, mountpoint, &opts.mount_table);
    if notify_ready {
        println!("ready");
        std::io::stdout().flush()?;
        redirect_output(&state.join("graviton.log"));
    }
    if let Err(why) = recorded {
        tracing::warn!(
            "umount(8) will not wait for this mount's daemon (recording the mount failed: {why})"
        );
    }
    tracing::info!("mounted {} on {}", source.display(), mountpoint.display());
    tracing::info!("metadata: {}", vol.stack.metadata);
    tracing::info!("blocks: {}", vol.stack.blocks);
    crate::fuse::readahead::widen(mountpoint);
    session.run().context("serving the mount")?;
    // The session dropped the adapter; commit whatever is still pending before exiting.
    fs.shutdown()?;
    fs.store().drain(WRITEBACK_DRAIN)?;
    fs.meta().end_session();
    drop(fs);
    let _ = std::fs::remove_file(super::control::socket(&state));
    let _ = std::fs::remove_file(pid_file);
    tracing::info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// How long an unmount waits for a write-back mount's uploads; the rest waits for the next
/// mount in the staging folder.
const WRITEBACK_DRAIN: Duration = Duration::from_secs(120);

/// After the launcher has its answer, the daemon's output goes to a log file in the volume.
fn redirect_output(log: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = crate::private::append(log) {
        // SAFETY: dup2 onto the standard descriptors; the file stays open through them.
        unsafe {
            libc::dup2(f.as_raw_fd(), 1);
            libc::dup2(f.as_raw_fd(), 2);
        }
    }
}

/// Hands the heap's free pages back to the kernel every second, so that memory freed after
/// a burst (a large commit, RocksDB's flushed memtables) stops counting against the daemon's
/// budget; within the second it is there for reuse.
fn return_freed_memory() {
    let spawned = std::thread::Builder::new()
        .name("graviton-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                // SAFETY: malloc_trim only releases free pages of glibc's heaps.
                unsafe { libc::malloc_trim(0) };
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("not returning freed memory to the system: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_asks_for_huge_pages_unless_told_otherwise() {
        assert_eq!(malloc_tunables(None), "glibc.malloc.hugetlb=1");
        assert_eq!(
            malloc_tunables(Some(String::new())),
            "glibc.malloc.hugetlb=1"
        );
        assert_eq!(
            malloc_tunables(Some("glibc.malloc.arena_max=4".into())),
            "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
        );
        assert_eq!(
            malloc_tunables(Some("glibc.malloc.hugetlb=0".into())),
            "glibc.malloc.hugetlb=0"
        );
    }
}
