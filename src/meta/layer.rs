//! A metadata store on top of another (`crate::layer`): `cached::CachedMeta`,
//! `write_behind::WriteBehind`.

use super::{
    Ino, Inode, MetaRead, MetaRecords, MetaResult, MetaStore, MetaTxn, MountSessions, SessionInfo,
    SharedVolume, Usage, VolumeIndex,
};
use crate::domain::BlockKey;

crate::layer::layer_trait! {
    /// A layer of the metadata stack. Every type that implements it is a [`MetaStore`].
    pub trait MetaLayer: MetaStore {
        impl MetaRecords {
        fn engine(&self) -> &'static str;
        fn begin(&self) -> MetaResult<Box<dyn MetaTxn + '_>>;
        fn read(&self) -> MetaResult<Box<dyn MetaRead + '_>>;
        fn snapshot(&self) -> MetaResult<Box<dyn MetaRead + '_>>;
        fn read_inode(&self, ino: Ino) -> MetaResult<Option<Inode>>;
        fn allocate_ino(&self) -> MetaResult<Ino>;
        fn reserve_inos_through(&self, last: Ino) -> MetaResult<()>;
        fn orphans(&self) -> MetaResult<Vec<Ino>>;
        fn usage(&self) -> MetaResult<Usage>;
        fn sync(&self) -> MetaResult<()>;
        }
        impl VolumeIndex {
        fn setting(&self, name: &str) -> MetaResult<Option<String>>;
        fn put_setting(&self, name: &str, value: &str) -> MetaResult<()>;
        fn kv_get(&self, key: &str) -> MetaResult<Option<Vec<u8>>>;
        fn kv_put(&self, key: &str, value: &[u8]) -> MetaResult<()>;
        fn kv_delete(&self, key: &str) -> MetaResult<()>;
        fn kv_scan(&self, prefix: &str) -> MetaResult<Vec<(String, Vec<u8>)>>;
        fn is_referenced(&self, key: &BlockKey) -> MetaResult<bool>;
        fn referenced_among(&self, keys: &[BlockKey]) -> MetaResult<Vec<BlockKey>>;
        fn referenced_blocks(&self) -> MetaResult<Vec<BlockKey>>;
        }
        impl MountSessions {
        fn begin_session(&self, info: &SessionInfo) -> MetaResult<()>;
        fn end_session(&self) -> ();
        fn end_session_unfinished(&self) -> ();
        fn shared(&self) -> Option<&dyn SharedVolume>;
        fn revalidate(&self, ino: Ino) -> MetaResult<bool>;
        }
    }
}

/// `impl MetaRead for $ty`, every read going to the transaction the type wraps: `$s => $inner`
/// names `self` and the expression of it that gives that transaction. Exported for layers
/// outside the crate (the testkit's fault layer). A layer that changes the two inode reads
/// writes its own `impl MetaRead` with them and `forward_reads!(@others $s => $inner)` inside.
#[macro_export]
macro_rules! forward_reads {
    ($ty:ty, $s:ident => $inner:expr) => {
        impl $crate::meta::MetaRead for $ty {
            fn inode(&mut $s, ino: $crate::meta::Ino) -> $crate::meta::MetaResult<Option<$crate::meta::Inode>> {
                $inner.inode(ino)
            }
            fn inode_and_dirent(
                &mut $s,
                dir: $crate::meta::Ino,
                name: &[u8],
            ) -> $crate::meta::MetaResult<(Option<$crate::meta::Inode>, Option<$crate::meta::DirEntry>)> {
                $inner.inode_and_dirent(dir, name)
            }
            $crate::forward_reads!(@others $s => $inner);
        }
    };
    (@others $s:ident => $inner:expr) => {
            fn dirent(
                &mut $s,
                parent: $crate::meta::Ino,
                name: &[u8],
            ) -> $crate::meta::MetaResult<Option<$crate::meta::DirEntry>> {
                $inner.dirent(parent, name)
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
    };
}
