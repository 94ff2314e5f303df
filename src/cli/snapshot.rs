//! `graviton snapshot create|list|delete` (`maint::snapshot`).

use clap::{Args, Subcommand};

use crate::daemon::control::{Request, SnapshotRequest};

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Take a snapshot of the volume (or of one directory): a read-only copy of this moment,
    /// made of metadata only, under /.snapshots/NAME.
    Create {
        name: String,
        /// The directory to copy, from the volume's root (default: the whole volume).
        #[arg(long)]
        path: Option<String>,
        /// Volume directory or postgres:// URL (default: the default volume).
        source: Option<String>,
    },
    /// List the snapshots: name, when taken, and of what.
    List {
        #[arg(long)]
        json: bool,
        source: Option<String>,
    },
    /// Delete a snapshot; `graviton gc` then frees the blocks nothing else references.
    Delete {
        name: String,
        source: Option<String>,
    },
}

pub fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    let (req, source) = match args.action {
        Action::Create { name, path, source } => (SnapshotRequest::Create { name, path }, source),
        Action::List { json, source } => (SnapshotRequest::List { json }, source),
        Action::Delete { name, source } => (SnapshotRequest::Delete { name }, source),
    };
    super::run_named(source, &Request::Snapshot(req))
}
