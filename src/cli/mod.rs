//! The `graviton` command line: one file per subcommand. Each parses its arguments and calls the library: `maint` for the maintenance commands
//! (through a mount daemon's control socket when the volume is mounted here), `daemon` for a
//! mount.

mod clone;
mod daemon_pid;
mod dump;
mod format;
mod fsck;
mod gc;
mod key;
mod load;
mod mount;
mod quota;
mod scrub;
mod settings;
mod snapshot;
mod status;
mod trash;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::daemon::control::Request;
use crate::volume::Source;

#[derive(Parser, Debug)]
#[command(
    name = "graviton",
    version,
    about = "A filesystem that keeps file content in content-addressed blocks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// An encrypted volume's passphrase is this file's content, less one trailing newline (it
    /// must be readable by its owner only). Without it: GRAVITON_PASSPHRASE, else a question
    /// on the terminal.
    #[arg(long, global = true, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new volume in SOURCE (a directory).
    Format(format::FormatArgs),
    /// Mount a volume (the default volume when SOURCE is left out).
    Mount(mount::MountArgs),
    /// Show what a volume holds: files, bytes, blocks, dedup ratio.
    Status(status::StatusArgs),
    /// Check every block in every block store against its key; repair bad copies from good
    /// ones.
    Scrub(scrub::ScrubArgs),
    /// Check the directory tree, link counts and that every referenced block is stored
    /// (`--verify-data`: and matches its key); `--repair` fixes what is safe. Non-zero exit on
    /// problems.
    Fsck(fsck::FsckArgs),
    /// Delete blocks no file references, once they have been unreferenced for a grace period
    /// (`--dry-run`: report them and their bytes).
    Gc(gc::GcArgs),
    /// Write a volume's metadata (settings, inodes, entries, extent maps, xattrs) as JSON
    /// lines, for backup or to move the volume to another engine with `load`.
    Dump(dump::DumpArgs),
    /// Restore a dump into a freshly formatted volume of either engine whose block store
    /// holds the dump's blocks.
    Load(load::LoadArgs),
    /// Copy a file or a directory tree inside a mounted volume as metadata only: no block is
    /// read or written, and the copy appears whole at once.
    Clone(clone::CloneArgs),
    /// Read-only, point-in-time copies of a volume or a directory, under /.snapshots.
    Snapshot(snapshot::SnapshotArgs),
    /// What the trash holds (volume setting trash_days): list, restore, purge.
    Trash(trash::TrashArgs),
    /// Limits on bytes and inodes, kept exactly: of the volume, a directory tree, a user, a
    /// group (set, get, list, remove).
    Quota(quota::QuotaArgs),
    /// Show a volume's settings, or change one that may change after format (`set NAME VALUE`).
    Settings(settings::SettingsArgs),
    /// An encrypted volume's passphrase: `key change` wraps its data key under a new one.
    Key(key::KeyArgs),
    /// The pid of the daemon serving a Graviton mount (for the umount helper).
    #[command(hide = true)]
    DaemonPid(daemon_pid::DaemonPidArgs),
}

/// `$XDG_DATA_HOME/graviton/default`, or `~/.local/share/graviton/default`.
pub fn default_volume() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("graviton").join("default"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or_else(|| {
        anyhow::anyhow!("neither XDG_DATA_HOME nor HOME is set: cannot place the default volume; name a SOURCE")
    })?;
    Ok(PathBuf::from(home).join(".local/share/graviton/default"))
}

/// `run` on the volume a command line names (or the default volume), output to stdout.
/// For trash and quota queries SOURCE may also be a directory on a mounted volume (any user
/// may name one): the request then goes to that mount's daemon, which runs it with the
/// caller's identity (`daemon::mount_socket`).
fn run_named(source: Option<String>, req: &Request) -> anyhow::Result<()> {
    let out = &mut std::io::stdout().lock();
    if let Some(path) = &source
        && let Some((dir, name)) = mount_named(path)
    {
        anyhow::ensure!(
            crate::daemon::control::for_users(req),
            "permission denied: {path} is on a mount, through which only trash and quota queries go; `{}` takes the volume (its folder or URL, not on a mount)",
            req.kind()
        );
        return crate::daemon::mount_socket::run(&dir, &name, req, out);
    }
    let source = source_or_default(source)?;
    crate::daemon::control::run(&source, req, out)
}

/// An open directory of the mount `source` names, and its socket, when `source` is a path on
/// a Graviton mount. Such a path is never opened as a volume, whatever it holds: a user may
/// plant what looks like one there.
fn mount_named(source: &str) -> Option<(std::fs::File, String)> {
    let path = std::path::Path::new(source);
    match Source::parse(source) {
        Source::Dir(_) if path.exists() => crate::daemon::mount_socket::find(path),
        _ => None,
    }
}

/// The volume a command names, or the default volume.
pub fn source_or_default(source: Option<String>) -> anyhow::Result<Source> {
    Ok(match source {
        Some(s) => Source::parse(&s),
        None => Source::Dir(default_volume()?),
    })
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let key_file = match &cli.key_file {
        Some(path) => Some(std::path::absolute(path)?),
        None => None,
    };
    if let Some(path) = &key_file {
        crate::volume::unlock::use_key_file(path);
    }
    match cli.command {
        Command::Format(args) => format::run(args, key_file.as_deref()),
        Command::Mount(mut args) => {
            if let Some(path) = &key_file {
                // the daemon reads it too
                args.options.push(format!("key_file={}", path.display()));
            }
            mount::run(args)
        }
        Command::Key(args) => key::run(args),
        Command::Clone(args) => clone::run(args),
        Command::Snapshot(args) => snapshot::run(args),
        Command::Trash(args) => trash::run(args),
        Command::Quota(args) => quota::run(args),
        Command::Settings(args) => settings::run(args),
        Command::Status(args) => status::run(args),
        Command::Scrub(args) => scrub::run(args),
        Command::Fsck(args) => fsck::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Dump(args) => dump::run(args),
        Command::Load(args) => load::run(args),
        Command::DaemonPid(args) => daemon_pid::run(args),
    }
}
