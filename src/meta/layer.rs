//! A metadata store on top of another, overriding only what it changes: every operation it
//! does not implement goes to the store below (`cached::CachedMeta`, `write_behind::WriteBehind`).

use super::{
    Ino, Inode, MetaRead, MetaResult, MetaStore, MetaTxn, SessionInfo, SharedVolume, Usage,
};
use crate::domain::BlockKey;

/// A layer of the metadata stack. Every type that implements it is a [`MetaStore`].
pub trait MetaLayer: Send + Sync {
    /// The store below.
    fn inner(&self) -> &dyn MetaStore;

    fn engine(&self) -> &'static str {
        self.inner().engine()
    }
    fn begin(&self) -> MetaResult<Box<dyn MetaTxn + '_>> {
        self.inner().begin()
    }
    fn read(&self) -> MetaResult<Box<dyn MetaRead + '_>> {
        self.inner().read()
    }
    fn snapshot(&self) -> MetaResult<Box<dyn MetaRead + '_>> {
        self.inner().snapshot()
    }
    fn read_inode(&self, ino: Ino) -> MetaResult<Option<Inode>> {
        self.inner().read_inode(ino)
    }
    fn allocate_ino(&self) -> MetaResult<Ino> {
        self.inner().allocate_ino()
    }
    fn reserve_inos_through(&self, last: Ino) -> MetaResult<()> {
        self.inner().reserve_inos_through(last)
    }
    fn orphans(&self) -> MetaResult<Vec<Ino>> {
        self.inner().orphans()
    }
    fn setting(&self, name: &str) -> MetaResult<Option<String>> {
        self.inner().setting(name)
    }
    fn put_setting(&self, name: &str, value: &str) -> MetaResult<()> {
        self.inner().put_setting(name, value)
    }
    fn kv_get(&self, key: &str) -> MetaResult<Option<Vec<u8>>> {
        self.inner().kv_get(key)
    }
    fn kv_put(&self, key: &str, value: &[u8]) -> MetaResult<()> {
        self.inner().kv_put(key, value)
    }
    fn kv_delete(&self, key: &str) -> MetaResult<()> {
        self.inner().kv_delete(key)
    }
    fn kv_scan(&self, prefix: &str) -> MetaResult<Vec<(String, Vec<u8>)>> {
        self.inner().kv_scan(prefix)
    }
    fn is_referenced(&self, key: &BlockKey) -> MetaResult<bool> {
        self.inner().is_referenced(key)
    }
    fn referenced_among(&self, keys: &[BlockKey]) -> MetaResult<Vec<BlockKey>> {
        self.inner().referenced_among(keys)
    }
    fn referenced_blocks(&self) -> MetaResult<Vec<BlockKey>> {
        self.inner().referenced_blocks()
    }
    fn usage(&self) -> MetaResult<Usage> {
        self.inner().usage()
    }
    fn sync(&self) -> MetaResult<()> {
        self.inner().sync()
    }
    fn begin_session(&self, info: &SessionInfo) -> MetaResult<()> {
        self.inner().begin_session(info)
    }
    fn end_session(&self) {
        self.inner().end_session()
    }
    fn shared(&self) -> Option<&dyn SharedVolume> {
        self.inner().shared()
    }
    fn revalidate(&self, ino: Ino) -> MetaResult<bool> {
        self.inner().revalidate(ino)
    }
}

impl<L: MetaLayer> MetaStore for L {
    fn engine(&self) -> &'static str {
        MetaLayer::engine(self)
    }
    fn begin(&self) -> MetaResult<Box<dyn MetaTxn + '_>> {
        MetaLayer::begin(self)
    }
    fn read(&self) -> MetaResult<Box<dyn MetaRead + '_>> {
        MetaLayer::read(self)
    }
    fn snapshot(&self) -> MetaResult<Box<dyn MetaRead + '_>> {
        MetaLayer::snapshot(self)
    }
    fn read_inode(&self, ino: Ino) -> MetaResult<Option<Inode>> {
        MetaLayer::read_inode(self, ino)
    }
    fn allocate_ino(&self) -> MetaResult<Ino> {
        MetaLayer::allocate_ino(self)
    }
    fn reserve_inos_through(&self, last: Ino) -> MetaResult<()> {
        MetaLayer::reserve_inos_through(self, last)
    }
    fn orphans(&self) -> MetaResult<Vec<Ino>> {
        MetaLayer::orphans(self)
    }
    fn setting(&self, name: &str) -> MetaResult<Option<String>> {
        MetaLayer::setting(self, name)
    }
    fn put_setting(&self, name: &str, value: &str) -> MetaResult<()> {
        MetaLayer::put_setting(self, name, value)
    }
    fn kv_get(&self, key: &str) -> MetaResult<Option<Vec<u8>>> {
        MetaLayer::kv_get(self, key)
    }
    fn kv_put(&self, key: &str, value: &[u8]) -> MetaResult<()> {
        MetaLayer::kv_put(self, key, value)
    }
    fn kv_delete(&self, key: &str) -> MetaResult<()> {
        MetaLayer::kv_delete(self, key)
    }
    fn kv_scan(&self, prefix: &str) -> MetaResult<Vec<(String, Vec<u8>)>> {
        MetaLayer::kv_scan(self, prefix)
    }
    fn is_referenced(&self, key: &BlockKey) -> MetaResult<bool> {
        MetaLayer::is_referenced(self, key)
    }
    fn referenced_among(&self, keys: &[BlockKey]) -> MetaResult<Vec<BlockKey>> {
        MetaLayer::referenced_among(self, keys)
    }
    fn referenced_blocks(&self) -> MetaResult<Vec<BlockKey>> {
        MetaLayer::referenced_blocks(self)
    }
    fn usage(&self) -> MetaResult<Usage> {
        MetaLayer::usage(self)
    }
    fn sync(&self) -> MetaResult<()> {
        MetaLayer::sync(self)
    }
    fn begin_session(&self, info: &SessionInfo) -> MetaResult<()> {
        MetaLayer::begin_session(self, info)
    }
    fn end_session(&self) {
        MetaLayer::end_session(self)
    }
    fn shared(&self) -> Option<&dyn SharedVolume> {
        MetaLayer::shared(self)
    }
    fn revalidate(&self, ino: Ino) -> MetaResult<bool> {
        MetaLayer::revalidate(self, ino)
    }
}

/// `impl MetaRead for $ty`, every read going to the transaction the type wraps: `$s => $inner`
/// names `self` and the expression of it that gives that transaction.
macro_rules! forward_reads {
    ($ty:ty, $s:ident => $inner:expr) => {
        impl $crate::meta::MetaRead for $ty {
            fn inode(&mut $s, ino: $crate::meta::Ino) -> $crate::meta::MetaResult<Option<$crate::meta::Inode>> {
                $inner.inode(ino)
            }
            fn dirent(
                &mut $s,
                parent: $crate::meta::Ino,
                name: &[u8],
            ) -> $crate::meta::MetaResult<Option<$crate::meta::DirEntry>> {
                $inner.dirent(parent, name)
            }
            fn inode_and_dirent(
                &mut $s,
                dir: $crate::meta::Ino,
                name: &[u8],
            ) -> $crate::meta::MetaResult<(Option<$crate::meta::Inode>, Option<$crate::meta::DirEntry>)> {
                $inner.inode_and_dirent(dir, name)
            }
            fn list_dir(
                &mut $s,
                parent: $crate::meta::Ino,
                after: u64,
                limit: usize,
            ) -> $crate::meta::MetaResult<Vec<(Vec<u8>, $crate::meta::DirEntry)>> {
                $inner.list_dir(parent, after, limit)
            }
            fn dir_is_empty(&mut $s, dir: $crate::meta::Ino) -> $crate::meta::MetaResult<bool> {
                $inner.dir_is_empty(dir)
            }
            fn extents(
                &mut $s,
                ino: $crate::meta::Ino,
                range: std::ops::Range<u64>,
            ) -> $crate::meta::MetaResult<Vec<$crate::domain::Extent>> {
                $inner.extents(ino, range)
            }
            fn xattr(&mut $s, ino: $crate::meta::Ino, name: &[u8]) -> $crate::meta::MetaResult<Option<Vec<u8>>> {
                $inner.xattr(ino, name)
            }
            fn xattr_names(&mut $s, ino: $crate::meta::Ino) -> $crate::meta::MetaResult<Vec<Vec<u8>>> {
                $inner.xattr_names(ino)
            }
            fn symlink_target(&mut $s, ino: $crate::meta::Ino) -> $crate::meta::MetaResult<Option<Vec<u8>>> {
                $inner.symlink_target(ino)
            }
            fn inode_numbers(&mut $s) -> $crate::meta::MetaResult<Vec<($crate::meta::Ino, bool)>> {
                $inner.inode_numbers()
            }
        }
    };
}
pub(crate) use forward_reads;
