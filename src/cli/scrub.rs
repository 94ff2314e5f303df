//! `graviton scrub`: check every copy of every block, repair bad ones (`maint::scrub`).

use clap::Args;

use crate::daemon::control::Request;

#[derive(Args, Debug)]
pub struct ScrubArgs {
    /// Only report; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Volume directory or postgres:// URL (default: the default volume). A mounted embedded
    /// volume is handled by its mount daemon.
    pub source: Option<String>,
}

pub fn run(args: ScrubArgs) -> anyhow::Result<()> {
    let req = Request::Scrub {
        dry_run: args.dry_run,
    };
    super::run_named(args.source, &req)
}
