//! Maintenance of a volume, the same whether the CLI runs it on a volume it opened or a mount
//! daemon runs it on its own (`daemon::control`): `status`, `fsck`, `gc`, `scrub`, `dump`,
//! `load`, `snapshot`, `trash` and `settings`.

pub mod dump;
pub mod dump_check;
pub mod fsck;
pub mod gc;
pub mod load;
mod progress;
pub mod quota;
pub mod scrub;
pub mod settings;
pub mod snapshot;
pub mod status;
pub mod trash;

use crate::meta::{DirEntry, Ino, MetaRead};

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
