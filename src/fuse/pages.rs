//! The kernel's page cache of this mount, for the core's page fill (`vfs::fill`).

use fuser::{INodeNo, Notifier};

use crate::vfs::Ino;
use crate::vfs::KernelPages;

pub struct NotifierPages(pub Notifier);

impl KernelPages for NotifierPages {
    fn store(&self, ino: Ino, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.store(INodeNo(ino), offset, data)
    }

    fn forget(&self, ino: Ino, offset: u64, len: u64) -> std::io::Result<()> {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.0
            .inval_inode(INodeNo(ino), as_i64(offset), as_i64(len))
    }
}
