//! `graviton gc`: delete blocks no file references (`maint::gc`).

use std::time::Duration;

use clap::Args;

use crate::daemon::control::Request;

#[derive(Args, Debug)]
pub struct GcArgs {
    /// How long a block must have been seen unreferenced before it is deleted (e.g. 1h, 30m,
    /// 0s). Longer than any flush of a mount of this volume.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Report what would be deleted, and how many bytes, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Volume directory or postgres:// URL (default: the default volume). A mounted embedded
    /// volume is handled by its mount daemon.
    pub source: Option<String>,
}

pub fn run(args: GcArgs) -> anyhow::Result<()> {
    let req = Request::Gc {
        grace_secs: args.grace.as_secs(),
        dry_run: args.dry_run,
    };
    super::run_named(args.source, &req)
}
