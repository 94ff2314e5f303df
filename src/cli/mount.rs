//! `graviton mount`: mount a volume. By default the command returns once the mount is ready and
//! a daemon (this program again, with `--foreground`) serves it; SIGTERM, SIGINT or `umount`
//! make the daemon commit pending writes and exit.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::Args;

use crate::daemon::MountOptions;
use crate::daemon::mountpoint::prepare_mountpoint;
use crate::domain::{DEFAULT_CHUNKER, HashAlgo};
use crate::volume::{Source, Volume};

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Mount options, comma-separated (allow_other, ro, noatime, attr_timeout=SECS, cache_mb=N,
    /// dirty_mb=N, readahead_mb=N, threads=N, session_timeout=SECS, meta_cache=on|off,
    /// page_fill=on|off, writeback, write_cache, upload_wait=SECS, gc_every=DURATION|off,
    /// gc_grace=DURATION, and the usual fstab options).
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
    if let Some(path) = &opts.key_file {
        crate::volume::unlock::use_key_file(path);
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
    let mut source = match source {
        Some(Source::Dir(d)) if !Volume::is_formatted(&d) => bail!(
            "{} is not a Graviton volume (run `graviton format {}` first)",
            d.display(),
            d.display()
        ),
        Some(source) => source,
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
            Source::Dir(d)
        }
    };
    if let Source::Dir(d) = &mut source {
        *d = d
            .canonicalize()
            .with_context(|| format!("volume {}", d.display()))?;
    }
    if opts.writeback && matches!(source, Source::Postgres(_)) && opts.gc_every.flatten().is_some()
    {
        bail!(
            "mount option gc_every does not go with writeback on a PostgreSQL volume: blocks its journal names are not in PostgreSQL yet"
        );
    }
    let mountpoint = prepare_mountpoint(&mountpoint)?;
    if args.foreground {
        if args.notify_ready {
            crate::volume::unlock::ask_with(ask_the_launcher);
        }
        crate::daemon::serve(&source, &mountpoint, &opts, args.notify_ready)
    } else {
        launch_daemon(&options, &source, &mountpoint)
    }
}

/// What a daemon started by `graviton mount` prints when it needs the volume's passphrase; the
/// launcher asks on its terminal and writes the answer as one line to the daemon's stdin.
const ASK_PASSPHRASE: &str = "passphrase?";

/// A daemon's way to ask for a passphrase (`volume::unlock::ask_with`): through its launcher.
fn ask_the_launcher(
    _prompt: &str,
    _confirm: bool,
) -> Result<crate::volume::unlock::Passphrase, crate::volume::unlock::UnlockError> {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{ASK_PASSPHRASE}\n").as_bytes())?;
    out.flush()?;
    drop(out);
    // from the descriptor itself: standard input's buffer would keep a copy
    use std::os::fd::AsFd;
    let stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    crate::volume::unlock::read_line(&stdin)
}

/// glibc reads its tunables when a process starts, so the daemon gets them from its launcher.
const MALLOC_TUNABLES: &str = "GLIBC_TUNABLES";

/// The daemon's glibc tunables: the caller's, plus transparent huge pages for malloc's heap
/// (`glibc.malloc.hugetlb=1`) unless the caller chose otherwise. Blocks and dirty spans are
/// megabytes each, and faulting their memory in 4 KiB pages costs a sequential read a
/// noticeable share of its CPU.
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
    // a passphrase in the environment reaches the daemon over the pipe, when it asks: not in
    // its environment, which would keep it readable for as long as the mount lives
    let env_passphrase = std::env::var_os(crate::volume::unlock::PASSPHRASE_ENV)
        .map(|p| zeroize::Zeroizing::new(p.into_encoded_bytes()));
    cmd.env_remove(crate::volume::unlock::PASSPHRASE_ENV);
    cmd.arg(mountpoint)
        .stdin(Stdio::piped())
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
    let mut stdin = child.stdin.take();
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    loop {
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .context("waiting for the mount daemon")?;
        match line.trim() {
            // the daemon's output now goes to its log; what it said before is not needed
            "ready" => return Ok(()),
            ASK_PASSPHRASE => {
                let prompt = format!("passphrase of {}: ", source.display());
                let answer = match &env_passphrase {
                    Some(p) => p.clone(),
                    None => crate::volume::unlock::ask_terminal(&prompt, false)?,
                };
                if let Some(mut to) = stdin.take() {
                    // an empty line when there is no terminal: the daemon says what to do
                    let _ = to.write_all(&answer).and_then(|()| to.write_all(b"\n"));
                }
            }
            _ => break,
        }
    }
    let status = child.wait()?;
    let err = errors.join().unwrap_or_default();
    let err = err.trim().trim_start_matches("graviton: ");
    if err.is_empty() {
        bail!("the mount daemon exited ({status}) before the mount was ready");
    }
    bail!("{err}")
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
