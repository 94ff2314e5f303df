//! The `graviton` command line: one file per subcommand.

mod control;
mod daemon_pid;
mod dump;
mod dump_check;
mod format;
mod fsck;
mod gc;
mod load;
mod mount;
mod mount_table;
pub mod options;
mod progress;
mod scrub;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::meta::{DirEntry, Ino, MetaRead};
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

/// Entries read per directory page by the tree walks (fsck, dump).
const PAGE: usize = 1024;

/// Visits a directory's entries in cookie order, a page at a time; `f` gets the reader back
/// for lookups of its own.
fn each_entry_page(
    tx: &mut dyn MetaRead,
    dir: Ino,
    mut f: impl FnMut(&mut dyn MetaRead, &[(Vec<u8>, DirEntry)]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut after = 2;
    loop {
        let page = tx.list_dir(dir, after, PAGE)?;
        if let Some((_, last)) = page.last() {
            after = last.cookie;
        }
        f(tx, &page)?;
        if page.len() < PAGE {
            return Ok(());
        }
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
    match cli.command {
        Command::Format(args) => format::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Status(args) => status::run(args),
        Command::Scrub(args) => scrub::run(args),
        Command::Fsck(args) => fsck::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Dump(args) => dump::run(args),
        Command::Load(args) => load::run(args),
        Command::DaemonPid(args) => daemon_pid::run(args),
    }
}
