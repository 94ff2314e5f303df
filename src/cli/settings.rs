//! `graviton settings [set NAME VALUE]` (`maint::settings`).

use clap::{Args, Subcommand};

use crate::daemon::control::Request;

#[derive(Args, Debug)]
pub struct SettingsArgs {
    #[command(subcommand)]
    pub action: Option<Action>,
    /// Volume directory or postgres:// URL (default: the default volume).
    pub source: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Change a setting: trash_days (0: off; fractions allowed), trash_dir, snapshot_dir.
    Set {
        name: String,
        value: String,
        source: Option<String>,
    },
}

pub fn run(args: SettingsArgs) -> anyhow::Result<()> {
    let (set, source) = match args.action {
        Some(Action::Set {
            name,
            value,
            source,
        }) => (Some((name, value)), source.or(args.source)),
        None => (None, args.source),
    };
    super::run_named(source, &Request::Settings { set })
}
