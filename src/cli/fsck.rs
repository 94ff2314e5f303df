//! `graviton fsck`: check a volume's tree, link counts and blocks (`maint::fsck`).

use clap::Args;

use crate::daemon::control::Request;

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// Also read every block and check it against its key (slow: reads all data).
    #[arg(long)]
    pub verify_data: bool,
    /// Remove entries naming no inode and correct link counts (then report what remains).
    #[arg(long)]
    pub repair: bool,
    /// Volume directory or postgres:// URL (default: the default volume). A mounted embedded
    /// volume is handled by its mount daemon.
    pub source: Option<String>,
}

pub fn run(args: FsckArgs) -> anyhow::Result<()> {
    let req = Request::Fsck {
        verify_data: args.verify_data,
        repair: args.repair,
    };
    super::run_named(args.source, &req)
}
