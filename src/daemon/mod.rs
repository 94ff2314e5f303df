//! The mount daemon: serves one mount of a volume until it is unmounted or told to stop,
//! answers the control socket, and collects garbage on a schedule.
//!
//! `graviton mount` starts it (the same program with `--foreground`); it opens the volume's
//! stacks (`volume::stack`), starts the filesystem core (`vfs`) behind the FUSE adapter
//! (`fuse`), and on SIGTERM, SIGINT or an unmount commits what is pending before it exits.

pub mod control;
pub mod mount_socket;
pub mod mount_table;
pub mod mountpoint;
pub mod options;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fuser::{Config, MountOption, Session, SessionACL};
use nix::sys::signal::{SigSet, Signal};

pub use options::MountOptions;

use crate::fuse::GravitonFuse;
use crate::meta::SessionInfo;
use crate::vfs::{Atime, Fs, FsConfig};
use crate::volume::stack::{self, MountLayers};
use crate::volume::{Source, Volume};

/// Serves the mount until it is unmounted or the process is told to stop.
pub fn serve(
    source: &Source,
    mountpoint: &Path,
    opts: &MountOptions,
    notify_ready: bool,
) -> anyhow::Result<()> {
    // Block stop signals in every thread (threads inherit the mask); one thread waits for them.
    let signals: SigSet = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]
        .into_iter()
        .collect();
    signals.thread_block().context("blocking signals")?;
    tune_the_heap();
    return_freed_memory();
    if let Some(addr) = opts.metrics {
        crate::metrics::serve_prometheus(addr)?;
    }
    let vol = Arc::new(open_stacks(source, mountpoint, opts)?);
    let fs = Arc::new(vol.filesystem(fs_config(&vol, opts))?);
    // The kernel sees every change this mount makes, and on a shared volume the change feed
    // drops other mounts' changes from its caches: the TTL only bounds staleness while the
    // feed is down. (pjdfstest passes with it on both engines.)
    let ttl = opts.ttl.unwrap_or(Duration::from_secs(10));
    let kernel = vol
        .meta
        .shared()
        .is_some()
        .then(|| crate::fuse::KernelCache::new(ttl));
    let door = mount_socket::MountDoor::new(mountpoint, opts.allow_other, opts.read_only);
    let adapter = GravitonFuse::new(
        fs.clone(),
        ttl,
        Some(vol.capacity_path.clone()),
        kernel.clone(),
    )
    .with_write_cache(opts.write_cache)
    .with_control_socket(door.name.clone());
    let notifier = adapter.notifier_slot();
    let fsname = fsname(source);
    let mut session = Session::new(adapter, mountpoint, &fuse_config(&fsname, opts))
        .with_context(|| format!("mounting on {}", mountpoint.display()))?;
    let _ = notifier.set(session.notifier());
    if let Some(kernel) = kernel {
        crate::fuse::follow_changes(session.notifier(), &fs, kernel)?;
    }
    fs.set_kernel_pages(Arc::new(crate::fuse::NotifierPages(session.notifier())));
    if opts.page_fill {
        fs.enable_page_fill(Box::new(crate::fuse::NotifierPages(session.notifier())))?;
    }
    let state = vol.state_dir.clone();
    crate::private::dir(&state).with_context(|| format!("creating {}", state.display()))?;
    stop_on_signals(
        signals,
        fs.clone(),
        session.unmount_callable(),
        mountpoint,
        &state,
        opts.upload_wait,
    )?;
    let weak = Arc::downgrade(&fs);
    let _ = vol.in_use.set(Box::new(move |ino| {
        weak.upgrade().is_some_and(|fs| fs.in_use(ino))
    }));
    // (a mount's own requests are answered once its device is known)
    if let Err(e) = door.set_device() {
        tracing::warn!("trash and quota queries through the mount will be refused: {e:#}");
    }
    control::serve(vol.clone(), Some(door))?;
    // the daemon is the one process of an embedded volume: it collects its garbage itself
    let gc_every = opts.gc_every.unwrap_or(match source {
        Source::Dir(_) => Some(crate::maint::gc::DEFAULT_EVERY),
        Source::Postgres(_) => None,
    });
    if let Some(every) = gc_every.filter(|_| !opts.read_only) {
        crate::maint::gc::run_every(vol.clone(), every, opts.gc_grace)?;
    }
    if !opts.read_only {
        trash_every(fs.clone(), vol.clone(), opts.trash_every)?;
    }
    let pid_file = state.join("graviton.pid");
    crate::private::write(&pid_file, format!("{}\n", std::process::id()).as_bytes())
        .with_context(|| format!("writing {}", pid_file.display()))?;

    // before "ready": an unmount right after `graviton mount` returns finds it
    let recorded = mount_table::record(&fsname, mountpoint, &opts.mount_table);
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
    finish(&fs, opts.upload_wait)?;
    drop(fs);
    let _ = std::fs::remove_file(control::socket(&state));
    let _ = std::fs::remove_file(pid_file);
    tracing::info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// Keeps freed buffers in the heap for reuse: dirty spans and blocks are large and
/// short-lived, and returning them to the kernel at once made every write fault in and zero
/// fresh pages. Buffers larger than 16 MiB are mapped apart: among them fuser's request
/// buffers (16 MiB and 4 KiB for each FUSE thread), of which a request touches at most
/// `max_write`, so only that much becomes resident. Two arenas: more multiply what freed
/// memory stays.
fn tune_the_heap() {
    // SAFETY: mallopt only tunes glibc's allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, (16 << 20) + 4096);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The volume with the mount's layers on its stacks and its session begun.
fn open_stacks(source: &Source, mountpoint: &Path, opts: &MountOptions) -> anyhow::Result<Volume> {
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
    Ok(vol)
}

/// The core's tunables for this mount.
fn fs_config(vol: &Volume, opts: &MountOptions) -> FsConfig {
    let mut cfg = vol.fs_config();
    cfg.read_only = opts.read_only;
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
    cfg.ranged_reads = vol.ranged_reads();
    if vol.store_url.is_local() && vol.meta.shared().is_none() {
        cfg.quick_commit_max = QUICK_COMMIT_MAX;
    }
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
    cfg
}

/// The mount's source as the mount table shows it (a URL's password never).
fn fsname(source: &Source) -> String {
    let fsname = source.display();
    if fsname.contains([',', ' ']) {
        "graviton".to_string()
    } else {
        fsname
    }
}

/// What the kernel mount is asked for (also by the ceiling benchmark's null filesystem).
pub fn fuse_config(fsname: &str, opts: &MountOptions) -> Config {
    let mut mount_options = vec![
        MountOption::FSName(fsname.to_string()),
        // as a kernel option, so /proc/mounts says fuse.graviton (fuser hands its Subtype only
        // to fusermount), the type umount(8) finds in the mount table (`mount_table`)
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
    config
}

/// A thread that waits for SIGTERM, SIGINT or SIGHUP, then refuses new writes, commits
/// everything buffered and unmounts.
fn stop_on_signals(
    signals: SigSet,
    fs: Arc<Fs>,
    mut unmounter: fuser::SessionUnmounter,
    mountpoint: &Path,
    state: &Path,
    upload_wait: Duration,
) -> anyhow::Result<()> {
    let (mp, state) = (mountpoint.to_path_buf(), state.to_path_buf());
    std::thread::Builder::new()
        .name("graviton-signals".into())
        .spawn(move || {
            let Ok(sig) = signals.wait() else { return };
            tracing::info!(
                "{sig}: committing pending writes and unmounting {}",
                mp.display()
            );
            fs.freeze();
            if let Err(e) = finish(&fs, upload_wait) {
                tracing::error!("{e:#}");
            }
            if unmounter.unmount().is_err() {
                // Files are still open (EBUSY): detach the mount and exit; everything written
                // before the signal is committed, later calls on open files fail.
                let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(control::socket(&state));
                let _ = std::fs::remove_file(state.join("graviton.pid"));
                tracing::info!("detached {} with files still open", mp.display());
                std::process::exit(0);
            }
        })?;
    Ok(())
}

/// The end of a mount, at an unmount or a signal: commits what is buffered, waits up to
/// `upload_wait` for a write-back mount's uploads, and ends the session. A mount that could not
/// do all of it keeps what a killed one would leave: a write-back mount's claim on the volume,
/// so no other machine mounts it before the next mount on this one has uploaded the staged
/// blocks and sent the journal.
/// Runs once per process: the signal thread's run and the unmount it causes share one outcome.
fn finish(fs: &Fs, upload_wait: Duration) -> anyhow::Result<()> {
    static FINISHED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let outcome = FINISHED.get_or_init(|| {
        let done = fs
            .shutdown()
            .context("committing pending writes")
            .and_then(|()| {
                fs.store()
                    .drain(upload_wait)
                    .context("uploading staged blocks")
            });
        match &done {
            Ok(()) => fs.meta().end_session(),
            Err(_) => fs.meta().end_session_unfinished(),
        }
        done.map_err(|e| format!("{e:#}"))
    });
    outcome.clone().map_err(anyhow::Error::msg)
}

/// On an embedded volume with local blocks, a close with at most this much to commit commits
/// in the FUSE thread that got it (`FsConfig::quick_commit_max`).
const QUICK_COMMIT_MAX: u64 = 256 << 10;

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

/// Every `every`, on a low-priority thread: reads the trash settings again (`graviton settings`
/// may have changed them) and deletes what the trash has held longer than `trash_days`.
fn trash_every(fs: Arc<Fs>, vol: Arc<Volume>, every: Duration) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("graviton-trash".into())
        .spawn(move || {
            crate::background::lower_this_threads_priority();
            loop {
                std::thread::sleep(every);
                if let Err(e) = fs.refresh_trash() {
                    tracing::warn!("trash: reading its settings: {e}");
                }
                let in_use = |ino| fs.in_use(ino);
                match crate::vfs::tree::trash::expire(vol.meta.as_ref(), &in_use) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("trash: {n} inodes held past trash_days deleted"),
                    Err(e) => tracing::warn!("trash: expiry failed: {e:#}"),
                }
            }
        })
        .context("starting the trash thread")?;
    Ok(())
}
