//! `graviton key change`: wrap an encrypted volume's data key under a new passphrase. Blocks
//! are not touched and the data key stays the same: whoever read it before (with the old
//! passphrase) can still read the blocks. The old passphrase stops unlocking the volume, but a
//! copy of the old wrapped key (a dump, a backup of the metadata) still opens with it.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::volume::Volume;
use crate::volume::unlock::{self, NEW_PASSPHRASE_ENV};

#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub action: KeyAction,
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// Wrap the data key under a new passphrase: from --new-key-file, else
    /// GRAVITON_NEW_PASSPHRASE, else asked twice on the terminal. The current one comes as
    /// for any command (--key-file, GRAVITON_PASSPHRASE, the terminal). An embedded volume
    /// must not be mounted. The data key itself is not rotated.
    Change {
        /// The new passphrase is this file's content (readable by its owner only).
        #[arg(long, value_name = "PATH")]
        new_key_file: Option<PathBuf>,
        /// The volume (default: the default volume).
        source: Option<String>,
    },
}

pub fn run(args: KeyArgs) -> anyhow::Result<()> {
    match args.action {
        KeyAction::Change {
            new_key_file,
            source,
        } => {
            let source = super::source_or_default(source)?;
            Volume::change_passphrase(&source, || {
                unlock::new_passphrase(
                    NEW_PASSPHRASE_ENV,
                    new_key_file.as_deref(),
                    &source.display(),
                )
            })?;
            println!(
                "{}: the data key is now wrapped under the new passphrase (the data key itself and the blocks are unchanged)",
                source.display()
            );
            Ok(())
        }
    }
}
