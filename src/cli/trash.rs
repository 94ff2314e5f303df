//! `graviton trash list|restore|purge` (`maint::trash`).

use clap::{Args, Subcommand};

use crate::daemon::control::{Request, TrashRequest};

#[derive(Args, Debug)]
pub struct TrashArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Subcommand, Debug)]
pub enum Action {
    /// What the trash holds: entry (hour folder/name), kind, size, and the path it had.
    List {
        #[arg(long)]
        json: bool,
        /// Volume directory, postgres:// URL, or a directory on a mounted volume, which any
        /// user may name (default: the default volume).
        source: Option<String>,
    },
    /// Put entries back where they were (every entry, or those of the hour folders and
    /// entries named with --entry); a directory comes back before what it held.
    Restore {
        /// An hour folder (2026-12-07-21) or one entry (2026-12-07-21/123-name); repeatable.
        #[arg(long = "entry")]
        entries: Vec<String>,
        source: Option<String>,
    },
    /// Delete entries for good (every entry, or those named with --entry).
    Purge {
        #[arg(long = "entry")]
        entries: Vec<String>,
        source: Option<String>,
    },
}

pub fn run(args: TrashArgs) -> anyhow::Result<()> {
    let (req, source) = match args.action {
        Action::List { json, source } => (TrashRequest::List { json }, source),
        Action::Restore { entries, source } => (TrashRequest::Restore { names: entries }, source),
        Action::Purge { entries, source } => (TrashRequest::Purge { names: entries }, source),
    };
    super::run_named(source, &Request::Trash(req))
}
