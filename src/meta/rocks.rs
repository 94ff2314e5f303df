//! RocksDB metadata engine: one column family per kind of record, each filesystem operation one
//! optimistic transaction (conflicts surface as [`MetaError::Conflict`] at read or commit).
//!
//! Layout (big-endian integers, so keys sort numerically):
//! - `inodes`:   ino → postcard(Inode)
//! - `dirents`:  parent ‖ name → child ino ‖ kind ‖ cookie
//! - `cookies`:  parent ‖ cookie → child ino ‖ kind ‖ name      (readdir order)
//! - `extents`:  ino ‖ file offset → block key ‖ offset in block ‖ length
//! - `blockrefs`: block key ‖ ino ‖ file offset → ()           (who references each block)
//! - `xattrs`:   ino ‖ name → value
//! - `symlinks`: ino → target
//! - `orphans`:  ino → ()
//! - `settings`: name → value;  `kv`: key → value
//! - `blocks`:   block key → block bytes (in blob files; `rocks_blocks`)

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, ErrorKind, OptimisticTransactionDB,
    OptimisticTransactionOptions, Options, ReadOptions, Transaction, WriteOptions,
};

use super::{
    DirEntry, FileKind, Ino, Inode, MetaError, MetaRead, MetaRecords, MetaResult, MetaTxn,
    MountSessions, Usage, VolumeIndex,
};
use crate::domain::extent::Splice;
use crate::domain::key::KEY_BYTES;
use crate::domain::{BlockKey, Extent};

const CFS: [&str; 10] = [
    "inodes",
    "dirents",
    "cookies",
    "extents",
    "blockrefs",
    "xattrs",
    "symlinks",
    "orphans",
    "settings",
    "kv",
];
/// What RocksDB's memtables may hold, all column families together, before the largest is
/// flushed to disk.
const MEMTABLES_BYTES: usize = 32 << 20;
/// One memtable of one column family, at most.
const MEMTABLE_BYTES: usize = 8 << 20;
/// One memtable of the extents column family: small, because a lookup in a memtable steps
/// over every older version and deletion of the keys in its range (a file under random
/// updates leaves many), and flushing drops the versions and, once compacted, the deletions.
/// `bench/random-updates.py` measures the effect.
const EXTENTS_MEMTABLE_BYTES: usize = 1 << 20;
/// RocksDB's block cache (decoded table blocks, and the tables' index blocks), shared by every
/// column family.
const BLOCK_CACHE_BYTES: usize = 16 << 20;
/// Striped locks for the optimistic transactions' conflict checks.
const OCC_LOCK_BUCKETS: u32 = 4096;
const NEXT_INO: &str = "next_ino";
/// The setting that holds the length of the longest extent the database has held: how far
/// before a range a lookup looks for an extent reaching into it. (Bounded by the largest block,
/// 16 MiB, it would step back over 16 MiB of a file's deleted extents in every lookup in a
/// hole: with 1 MiB blocks, 16 times more than needed.)
const LONGEST_EXTENT: &str = "longest_extent";
const INO_BATCH: u64 = 1024;
/// Properties exported as `graviton_rocksdb_property`: the database's own...
const DB_PROPERTIES: [&str; 5] = [
    "rocksdb.num-running-compactions",
    "rocksdb.num-running-flushes",
    "rocksdb.background-errors",
    // the one cache every column family shares
    "rocksdb.block-cache-usage",
    "rocksdb.block-cache-pinned-usage",
];
/// ...and column families' ones, summed over the column families.
const CF_PROPERTIES: [&str; 9] = [
    "rocksdb.compaction-pending",
    "rocksdb.estimate-pending-compaction-bytes",
    "rocksdb.mem-table-flush-pending",
    "rocksdb.cur-size-all-mem-tables",
    // memtables with the flushed ones kept as history for conflict checks
    "rocksdb.size-all-mem-tables",
    "rocksdb.estimate-table-readers-mem",
    "rocksdb.total-sst-files-size",
    "rocksdb.estimate-num-keys",
    "rocksdb.num-files-at-level0",
];
/// How often the exported properties are read again.
const PROPERTIES_EVERY: Duration = Duration::from_secs(10);

pub(super) type Db = OptimisticTransactionDB;

pub struct RocksMetaStore {
    /// Shared (weakly) only with the thread exporting its properties.
    db: Arc<Db>,
    /// (next inode to hand out, first inode not yet reserved in the database)
    ino_range: Mutex<(Ino, Ino)>,
    /// At least the length of every extent committed or being committed: raised before a
    /// commit that stores a longer one, so a lookup that sees the extent sees the reach.
    reach: AtomicU64,
    /// The `LONGEST_EXTENT` setting as last read or committed.
    recorded: AtomicU64,
}

fn backend(e: rocksdb::Error) -> MetaError {
    match e.kind() {
        ErrorKind::Busy | ErrorKind::TryAgain => MetaError::Conflict,
        _ => MetaError::backend("rocksdb", e.into_string()),
    }
}

fn corrupt(what: &str) -> MetaError {
    MetaError::Corrupt(format!("rocksdb {what}"))
}

fn be(ino: u64) -> [u8; 8] {
    ino.to_be_bytes()
}

fn key2(a: u64, b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + b.len());
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(b);
    k
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn kind_of(tag: u8) -> MetaResult<FileKind> {
    FileKind::from_tag(tag).ok_or_else(|| corrupt("file kind"))
}

fn decode_inode(v: &[u8]) -> MetaResult<Inode> {
    postcard::from_bytes(v).map_err(|_| corrupt("inode"))
}

fn encode_extent(e: &Extent) -> Vec<u8> {
    let mut v = Vec::with_capacity(KEY_BYTES + 8);
    v.extend_from_slice(&e.key.to_bytes());
    v.extend_from_slice(&e.block_offset.to_be_bytes());
    v.extend_from_slice(&e.len.to_be_bytes());
    v
}

fn decode_extent(key: &[u8], value: &[u8]) -> MetaResult<Extent> {
    let offset = u64_at(key, 8).ok_or_else(|| corrupt("extent key"))?;
    if value.len() != KEY_BYTES + 8 {
        return Err(corrupt("extent record"));
    }
    let block =
        BlockKey::from_bytes(&value[..KEY_BYTES]).ok_or_else(|| corrupt("extent block key"))?;
    let block_offset =
        u32::from_be_bytes(value[KEY_BYTES..KEY_BYTES + 4].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(value[KEY_BYTES + 4..].try_into().expect("4 bytes"));
    Ok(Extent {
        offset,
        key: block,
        block_offset,
        len,
    })
}

fn ref_key(e: &Extent, ino: Ino) -> Vec<u8> {
    let mut k = Vec::with_capacity(KEY_BYTES + 16);
    k.extend_from_slice(&e.key.to_bytes());
    k.extend_from_slice(&ino.to_be_bytes());
    k.extend_from_slice(&e.offset.to_be_bytes());
    k
}

/// Tables whose blocks are cached in `cache`, index and filter blocks included (outside it,
/// those grow with the database). Each table has a Bloom filter of its keys: a lookup of a key
/// that is not there (a new name, a new block, an absent xattr) skips every table but one in a
/// hundred instead of reading an index and a data block of each.
pub(super) fn tables_in(cache: &rocksdb::Cache) -> rocksdb::BlockBasedOptions {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_bloom_filter(10.0, false);
    table
}

impl RocksMetaStore {
    /// Opens or creates the database in `path`.
    pub fn open(path: impl AsRef<Path>) -> MetaResult<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.increase_parallelism(2);
        // a power cut keeps a prefix of the log: blocks logged before a commit survive with it
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        // The daemon's memory budget: memtables of every column family together, and one
        // block cache they share (by default each column family has 64 MiB memtables, two
        // of them, and a 32 MiB cache of its own).
        opts.set_db_write_buffer_size(MEMTABLES_BYTES);
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let with_cache = |mut o: Options| {
            o.set_write_buffer_size(MEMTABLE_BYTES);
            // Flushed memtables stay in memory as history for the optimistic transactions'
            // conflict checks; by default two memtables' worth per column family, which
            // doubled RocksDB's memory under a writer of scattered bytes. A transaction whose
            // history is gone fails with a conflict and runs again.
            o.set_max_write_buffer_size_to_maintain(MEMTABLE_BYTES as i64);
            o.set_block_based_table_factory(&tables_in(&cache));
            o
        };
        let cfs = CFS
            .iter()
            .map(|name| {
                let mut o = with_cache(Options::default());
                if *name == "extents" {
                    o.set_write_buffer_size(EXTENTS_MEMTABLE_BYTES);
                    o.set_max_write_buffer_size_to_maintain(EXTENTS_MEMTABLE_BYTES as i64);
                }
                ColumnFamilyDescriptor::new(*name, o)
            })
            .chain([ColumnFamilyDescriptor::new(super::rocks_blocks::CF, {
                let mut o = with_cache(super::rocks_blocks::options());
                // no transaction touches blocks: their flushed memtables are freed at once
                o.set_max_write_buffer_size_to_maintain(1);
                o
            })]);
        // Commits are checked for conflicts under striped locks: RocksDB's default of 2^20
        // of them is 40 MiB, resident from the start; a few thousand serve a few threads.
        let mut otxn = rocksdb::OptimisticTransactionDBOptions::new();
        otxn.set_occ_lock_buckets(OCC_LOCK_BUCKETS);
        let db = Db::open_cf_descriptors_with_otxn_db_options(&opts, &otxn, path, cfs);
        let db = Arc::new(db.map_err(backend)?);
        if crate::metrics::enabled() {
            export_properties(Arc::downgrade(&db));
        }
        let store = RocksMetaStore {
            db,
            ino_range: Mutex::new((0, 0)),
            reach: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
        };
        let next = store
            .setting(NEXT_INO)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(super::ROOT_INO + 1);
        *store.ino_range.lock().expect("lock") = (next, next);
        let longest = match store.setting(LONGEST_EXTENT)? {
            Some(v) => v.parse().map_err(|_| corrupt("longest extent setting"))?,
            // a database from before the setting: measured once
            None => {
                let longest = store.longest_stored_extent()?;
                store.put_setting(LONGEST_EXTENT, &longest.to_string())?;
                longest
            }
        };
        // and whatever the volume's chunker cuts, in case a program that keeps no record
        // (an older Graviton) wrote to the volume since
        let chunker = store.setting("chunker")?;
        let cut = chunker.and_then(|c| c.parse::<crate::domain::Chunker>().ok());
        store.recorded.store(longest, Ordering::SeqCst);
        store.reach.store(
            longest.max(cut.map_or(0, |c| c.max_block() as u64)),
            Ordering::SeqCst,
        );
        Ok(store)
    }

    /// The length of the longest extent in the database, by reading them all.
    fn longest_stored_extent(&self) -> MetaResult<u64> {
        let mut longest = 0u64;
        self.scan_cf("extents", &[], |k, v| {
            longest = longest.max(decode_extent(k, v)?.len as u64);
            Ok(true)
        })?;
        Ok(longest)
    }

    /// A block store in this database (`rocks_blocks`), for the volume's small blocks.
    pub fn blocks(&self) -> super::rocks_blocks::RocksBlockStore {
        super::rocks_blocks::RocksBlockStore::new(self.db.clone())
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn scan_cf(
        &self,
        cf: &str,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> MetaResult<bool>,
    ) -> MetaResult<()> {
        let mut it = self.db.raw_iterator_cf(self.cf(cf));
        it.seek(prefix);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix) || !f(k, v)? {
                break;
            }
            it.next();
        }
        it.status().map_err(backend)
    }
}

/// Sets the property gauges now and every `PROPERTIES_EVERY` while the database is open.
fn export_properties(db: Weak<Db>) {
    let refresh = move || {
        let Some(db) = db.upgrade() else {
            return false;
        };
        let set = |p: &'static str, v: u64| {
            metrics::gauge!(crate::metrics::ROCKSDB_PROPERTY, "property" => p).set(v as f64)
        };
        // read through a column family that has the shared block cache (the default one
        // has a cache of its own, unused)
        let inodes = db.cf_handle(CFS[0]).expect("column family created at open");
        for p in DB_PROPERTIES {
            set(
                p,
                db.property_int_value_cf(inodes, p)
                    .ok()
                    .flatten()
                    .unwrap_or(0),
            );
        }
        for p in CF_PROPERTIES {
            let all = CFS.iter().chain([&super::rocks_blocks::CF]);
            let cfs = all.filter_map(|cf| db.cf_handle(cf));
            set(
                p,
                cfs.filter_map(|cf| db.property_int_value_cf(cf, p).ok()?)
                    .sum(),
            );
        }
        true
    };
    refresh();
    let spawned = std::thread::Builder::new()
        .name("graviton-rocksdb-stats".into())
        .spawn(move || {
            loop {
                std::thread::sleep(PROPERTIES_EVERY);
                if !refresh() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("not exporting RocksDB properties: {e}");
    }
}

impl MetaRecords for RocksMetaStore {
    fn engine(&self) -> &'static str {
        "rocksdb"
    }

    fn begin(&self) -> MetaResult<Box<dyn MetaTxn + '_>> {
        Ok(Box::new(RocksTxn {
            store: self,
            txn: self.db.transaction(),
            consistent: false,
            raised: 0,
        }))
    }

    fn snapshot(&self) -> MetaResult<Box<dyn MetaRead + '_>> {
        let mut opts = OptimisticTransactionOptions::default();
        opts.set_snapshot(true);
        Ok(Box::new(RocksTxn {
            store: self,
            txn: self.db.transaction_opt(&WriteOptions::default(), &opts),
            consistent: true,
            raised: 0,
        }))
    }

    fn read_inode(&self, ino: Ino) -> MetaResult<Option<Inode>> {
        let v = self.db.get_pinned_cf(self.cf("inodes"), be(ino));
        v.map_err(backend)?.map(|v| decode_inode(&v)).transpose()
    }

    fn allocate_ino(&self) -> MetaResult<Ino> {
        let mut range = self.ino_range.lock().expect("lock");
        if range.0 >= range.1 {
            // Reserve a batch durably before handing any of it out, so numbers are never reused.
            let limit = range.0 + INO_BATCH;
            self.put_setting(NEXT_INO, &limit.to_string())?;
            range.1 = limit;
        }
        let ino = range.0;
        range.0 += 1;
        Ok(ino)
    }

    fn reserve_inos_through(&self, last: Ino) -> MetaResult<()> {
        let mut range = self.ino_range.lock().expect("lock");
        let start = range.0.max(last + 1);
        if start > range.1 {
            // beyond the reserved batch: the next batch starts there
            self.put_setting(NEXT_INO, &start.to_string())?;
            range.1 = start;
        }
        range.0 = start;
        Ok(())
    }

    fn orphans(&self) -> MetaResult<Vec<Ino>> {
        let mut out = Vec::new();
        self.scan_cf("orphans", &[], |k, _| {
            out.extend(u64_at(k, 0));
            Ok(true)
        })?;
        Ok(out)
    }

    fn usage(&self) -> MetaResult<Usage> {
        let mut u = Usage::default();
        self.scan_cf("inodes", &[], |_, v| {
            let i = decode_inode(v)?;
            u.inodes += 1;
            match i.kind {
                FileKind::File => {
                    u.files += 1;
                    u.logical_bytes += i.size;
                }
                FileKind::Dir => u.directories += 1,
                _ => {}
            }
            Ok(true)
        })?;
        Ok(u)
    }

    fn sync(&self) -> MetaResult<()> {
        self.db.flush_wal(true).map_err(backend)
    }
}

impl VolumeIndex for RocksMetaStore {
    fn setting(&self, name: &str) -> MetaResult<Option<String>> {
        let v = self.db.get_cf(self.cf("settings"), name).map_err(backend)?;
        v.map(|v| String::from_utf8(v).map_err(|_| corrupt("setting")))
            .transpose()
    }

    fn put_setting(&self, name: &str, value: &str) -> MetaResult<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(self.cf("settings"), name, value, &wo)
            .map_err(backend)
    }

    fn kv_get(&self, key: &str) -> MetaResult<Option<Vec<u8>>> {
        self.db.get_cf(self.cf("kv"), key).map_err(backend)
    }

    fn kv_put(&self, key: &str, value: &[u8]) -> MetaResult<()> {
        self.db.put_cf(self.cf("kv"), key, value).map_err(backend)
    }

    fn kv_delete(&self, key: &str) -> MetaResult<()> {
        self.db.delete_cf(self.cf("kv"), key).map_err(backend)
    }

    fn kv_scan(&self, prefix: &str) -> MetaResult<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        self.scan_cf("kv", prefix.as_bytes(), |k, v| {
            let k = std::str::from_utf8(k).map_err(|_| corrupt("kv key"))?;
            out.push((k.to_string(), v.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    fn is_referenced(&self, key: &BlockKey) -> MetaResult<bool> {
        let mut found = false;
        self.scan_cf("blockrefs", &key.to_bytes(), |_, _| {
            found = true;
            Ok(false)
        })?;
        Ok(found)
    }

    fn referenced_blocks(&self) -> MetaResult<Vec<BlockKey>> {
        let mut out: Vec<BlockKey> = Vec::new();
        self.scan_cf("blockrefs", &[], |k, _| {
            let key = k.get(..KEY_BYTES).and_then(BlockKey::from_bytes);
            let key = key.ok_or_else(|| corrupt("block reference"))?;
            if out.last() != Some(&key) {
                out.push(key);
            }
            Ok(true)
        })?;
        Ok(out)
    }
}

impl MountSessions for RocksMetaStore {}

struct RocksTxn<'a> {
    store: &'a RocksMetaStore,
    txn: Transaction<'a, Db>,
    /// Every read sees the transaction's snapshot (a read-only view for dump and fsck; the
    /// file operations' transactions read the latest data and rely on conflict checks).
    consistent: bool,
    /// The longest extent this transaction records (`LONGEST_EXTENT`), 0 if none.
    raised: u64,
}

impl RocksTxn<'_> {
    fn cf(&self, name: &str) -> &ColumnFamily {
        self.store.cf(name)
    }

    /// A read that registers a conflict if the key changes before commit.
    fn get(&self, cf: &str, key: &[u8]) -> MetaResult<Option<Vec<u8>>> {
        if self.consistent {
            let snapshot = self.txn.snapshot();
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snapshot);
            return self.txn.get_cf_opt(self.cf(cf), key, &ro).map_err(backend);
        }
        self.txn
            .get_for_update_cf(self.cf(cf), key, true)
            .map_err(backend)
    }

    fn put(&self, cf: &str, key: &[u8], value: &[u8]) -> MetaResult<()> {
        self.txn.put_cf(self.cf(cf), key, value).map_err(backend)
    }

    fn delete(&self, cf: &str, key: &[u8]) -> MetaResult<()> {
        self.txn.delete_cf(self.cf(cf), key).map_err(backend)
    }

    /// Visits keys with `prefix` from `start` (which must begin with `prefix`) until `f` says stop.
    fn scan(
        &self,
        cf: &str,
        prefix: &[u8],
        start: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> MetaResult<bool>,
    ) -> MetaResult<()> {
        let snapshot = self.txn.snapshot();
        let mut ro = ReadOptions::default();
        if self.consistent {
            ro.set_snapshot(&snapshot);
        }
        let mut it = self.txn.raw_iterator_cf_opt(self.cf(cf), ro);
        it.seek(start);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix) || !f(k, v)? {
                break;
            }
            it.next();
        }
        it.status().map_err(backend)
    }

    /// Raises the reach to `longest` and records it in the database with this transaction.
    fn record_longest(&mut self, longest: u64) -> MetaResult<()> {
        self.store.reach.fetch_max(longest, Ordering::SeqCst);
        if longest <= self.raised {
            return Ok(());
        }
        let stored: u64 = match self.get("settings", LONGEST_EXTENT.as_bytes())? {
            None => 0,
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| corrupt("longest extent setting"))?,
        };
        if self.raised == 0 {
            // committed by another transaction
            self.store.recorded.fetch_max(stored, Ordering::SeqCst);
        }
        if longest > stored {
            self.put(
                "settings",
                LONGEST_EXTENT.as_bytes(),
                longest.to_string().as_bytes(),
            )?;
            self.raised = longest;
        }
        Ok(())
    }

    fn delete_prefix(&self, cf: &str, prefix: &[u8]) -> MetaResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut doomed = Vec::new();
        self.scan(cf, prefix, prefix, |k, v| {
            doomed.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })?;
        for (k, _) in &doomed {
            self.delete(cf, k)?;
        }
        Ok(doomed)
    }
}

impl MetaRead for RocksTxn<'_> {
    fn inode(&mut self, ino: Ino) -> MetaResult<Option<Inode>> {
        self.get("inodes", &be(ino))?
            .map(|v| decode_inode(&v))
            .transpose()
    }

    fn dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<Option<DirEntry>> {
        let Some(v) = self.get("dirents", &key2(parent, name))? else {
            return Ok(None);
        };
        if v.len() != 17 {
            return Err(corrupt("directory entry"));
        }
        Ok(Some(DirEntry::new(
            u64_at(&v, 0).expect("length checked"),
            kind_of(v[8])?,
            u64_at(&v, 9).expect("length checked"),
        )))
    }

    fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> MetaResult<Vec<(Vec<u8>, DirEntry)>> {
        let mut out = Vec::new();
        let prefix = be(parent);
        let start = key2(parent, &be(after.saturating_add(1)));
        self.scan("cookies", &prefix, &start, |k, v| {
            if out.len() >= limit {
                return Ok(false);
            }
            let cookie = u64_at(k, 8).ok_or_else(|| corrupt("cookie key"))?;
            if v.len() < 9 {
                return Err(corrupt("cookie record"));
            }
            let entry = DirEntry::new(
                u64_at(v, 0).expect("length checked"),
                kind_of(v[8])?,
                cookie,
            );
            out.push((v[9..].to_vec(), entry));
            Ok(true)
        })?;
        Ok(out)
    }

    fn dir_is_empty(&mut self, dir: Ino) -> MetaResult<bool> {
        let mut empty = true;
        self.scan("dirents", &be(dir), &be(dir), |_, _| {
            empty = false;
            Ok(false)
        })?;
        Ok(empty)
    }

    /// Both scans are bounded to this file's keys near the range, so they never step over
    /// deletions of other files, nor of this file's extents far from the range (a hole's
    /// lookup once walked back over every tombstone before it).
    fn extents(&mut self, ino: Ino, range: Range<u64>) -> MetaResult<Vec<Extent>> {
        let mut out = Vec::new();
        if range.start >= range.end {
            return Ok(out);
        }
        let cf = self.cf("extents");
        let snapshot = self.txn.snapshot();
        let bounded = |from: u64, to: u64| {
            let mut ro = ReadOptions::default();
            ro.set_iterate_lower_bound(key2(ino, &be(from)));
            ro.set_iterate_upper_bound(key2(ino, &be(to)));
            if self.consistent {
                ro.set_snapshot(&snapshot);
            }
            ro
        };
        // the extent that starts before the range and reaches into it: none is longer than
        // the reach, read again after the lookup (a commit the lookup saw raised it first)
        let mut reach = self.store.reach.load(Ordering::SeqCst);
        let before = loop {
            let from = range.start.saturating_sub(reach);
            let mut found = None;
            if from < range.start {
                let mut it = self.txn.raw_iterator_cf_opt(cf, bounded(from, range.start));
                it.seek_to_last();
                if let (Some(k), Some(v)) = (it.key(), it.value()) {
                    found = Some(decode_extent(k, v)?);
                }
                it.status().map_err(backend)?;
            }
            let now = self.store.reach.load(Ordering::SeqCst);
            if now == reach {
                break found;
            }
            reach = now;
        };
        out.extend(before.filter(|e| e.end() > range.start));
        let mut it = self
            .txn
            .raw_iterator_cf_opt(cf, bounded(range.start, range.end));
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            out.push(decode_extent(k, v)?);
            it.next();
        }
        it.status().map_err(backend)?;
        Ok(out)
    }

    fn xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<Option<Vec<u8>>> {
        self.get("xattrs", &key2(ino, name))
    }

    fn xattr_names(&mut self, ino: Ino) -> MetaResult<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.scan("xattrs", &be(ino), &be(ino), |k, _| {
            out.push(k[8..].to_vec());
            Ok(true)
        })?;
        Ok(out)
    }

    fn symlink_target(&mut self, ino: Ino) -> MetaResult<Option<Vec<u8>>> {
        self.get("symlinks", &be(ino))
    }

    fn inode_numbers(&mut self) -> MetaResult<Vec<(Ino, bool)>> {
        let mut orphans = std::collections::HashSet::new();
        self.scan("orphans", &[], &[], |k, _| {
            orphans.extend(u64_at(k, 0));
            Ok(true)
        })?;
        let mut out = Vec::new();
        self.scan("inodes", &[], &[], |k, _| {
            let ino = u64_at(k, 0).ok_or_else(|| corrupt("inode key"))?;
            out.push((ino, orphans.contains(&ino)));
            Ok(true)
        })?;
        Ok(out)
    }
}

impl MetaTxn for RocksTxn<'_> {
    fn put_inode(&mut self, inode: &Inode) -> MetaResult<()> {
        let v = postcard::to_allocvec(inode).map_err(|_| corrupt("inode encoding"))?;
        self.put("inodes", &be(inode.ino), &v)
    }

    fn delete_inode(&mut self, ino: Ino) -> MetaResult<()> {
        for (k, v) in self.delete_prefix("extents", &be(ino))? {
            let e = decode_extent(&k, &v)?;
            self.delete("blockrefs", &ref_key(&e, ino))?;
        }
        self.delete_prefix("xattrs", &be(ino))?;
        self.delete("symlinks", &be(ino))?;
        self.delete("orphans", &be(ino))?;
        self.delete("inodes", &be(ino))
    }

    fn put_dirent(&mut self, parent: Ino, name: &[u8], entry: &DirEntry) -> MetaResult<()> {
        if let Some(old) = self.dirent(parent, name)?
            && old.cookie != entry.cookie
        {
            self.delete("cookies", &key2(parent, &be(old.cookie)))?;
        }
        // child ino ‖ kind, then the cookie (dirents) or the name (cookies)
        let mut child = be(entry.ino).to_vec();
        child.push(entry.kind.tag());
        let dirent = [&child[..], &be(entry.cookie)].concat();
        self.put("dirents", &key2(parent, name), &dirent)?;
        let cookie = [&child[..], name].concat();
        self.put("cookies", &key2(parent, &be(entry.cookie)), &cookie)
    }

    fn delete_dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<()> {
        if let Some(old) = self.dirent(parent, name)? {
            self.delete("cookies", &key2(parent, &be(old.cookie)))?;
            self.delete("dirents", &key2(parent, name))?;
        }
        Ok(())
    }

    fn apply_splice(&mut self, ino: Ino, splice: &Splice) -> MetaResult<()> {
        let longest = splice
            .insert
            .iter()
            .map(|e| e.len as u64)
            .max()
            .unwrap_or(0);
        if longest > self.store.recorded.load(Ordering::SeqCst) {
            self.record_longest(longest)?;
        }
        // an offset written again below needs no tombstone under its new value
        let rewritten: std::collections::HashSet<u64> =
            splice.insert.iter().map(|n| n.offset).collect();
        for e in &splice.remove {
            if !rewritten.contains(&e.offset) {
                self.delete("extents", &key2(ino, &be(e.offset)))?;
            }
            self.delete("blockrefs", &ref_key(e, ino))?;
        }
        for e in &splice.insert {
            self.put("extents", &key2(ino, &be(e.offset)), &encode_extent(e))?;
            self.put("blockrefs", &ref_key(e, ino), &[])?;
        }
        Ok(())
    }

    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> MetaResult<()> {
        self.put("xattrs", &key2(ino, name), value)
    }

    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        self.delete("xattrs", &key2(ino, name))
    }

    fn put_symlink_target(&mut self, ino: Ino, target: &[u8]) -> MetaResult<()> {
        self.put("symlinks", &be(ino), target)
    }

    fn add_orphan(&mut self, ino: Ino) -> MetaResult<()> {
        self.put("orphans", &be(ino), &[])
    }

    fn commit(self: Box<Self>) -> MetaResult<()> {
        let (store, raised) = (self.store, self.raised);
        self.txn.commit().map_err(backend)?;
        store.recorded.fetch_max(raised, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Internal entries (deletions and older versions) RocksDB steps over to answer `lookups`.
    fn stepped_over(store: &RocksMetaStore, lookups: &[(Ino, Range<u64>)]) -> (u64, usize) {
        use rocksdb::perf::{PerfMetric, PerfStatsLevel, set_perf_stats, with_thread_local};
        set_perf_stats(PerfStatsLevel::EnableCount);
        let (stepped, found) = with_thread_local(|ctx| {
            let mut r = store.read().unwrap();
            let found: usize = lookups
                .iter()
                .map(|(ino, range)| r.extents(*ino, range.clone()).unwrap().len())
                .sum();
            let stepped = ctx.metric(PerfMetric::InternalDeleteSkippedCount)
                + ctx.metric(PerfMetric::InternalKeySkippedCount);
            (stepped, found)
        });
        set_perf_stats(PerfStatsLevel::Disable);
        (stepped, found)
    }

    /// A file's extent lookups step over no more entries after a million writes and deletions
    /// of extents elsewhere (other files on both sides of it, and the file's own overwrites
    /// away from the range) than before them: lookups do not slow down with history.
    #[test]
    fn extent_lookups_do_not_step_over_other_history() {
        use crate::domain::extent::Splice;
        use crate::meta::{FileKind, Timestamp};
        const MIB: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let store = RocksMetaStore::open(dir.path()).unwrap();
        let extent = |offset: u64, len: u32, seed: u64| Extent {
            offset,
            key: BlockKey::for_data(crate::domain::HashAlgo::Blake3, &seed.to_le_bytes()),
            block_offset: 0,
            len,
        };
        let splice = |ino: Ino, remove: Vec<Extent>, insert: Vec<Extent>| {
            let mut tx = store.begin().unwrap();
            tx.apply_splice(ino, &Splice { remove, insert }).unwrap();
            tx.commit().unwrap();
        };
        let below: Vec<Ino> = (0..500).map(|_| store.allocate_ino().unwrap()).collect();
        let file = store.allocate_ino().unwrap();
        let above: Vec<Ino> = (0..500).map(|_| store.allocate_ino().unwrap()).collect();
        let mut tx = store.begin().unwrap();
        tx.put_inode(&Inode::new(
            file,
            FileKind::File,
            0o644,
            0,
            0,
            Timestamp::default(),
        ))
        .unwrap();
        tx.commit().unwrap();
        // 64 MiB of hole, then 16 extents of 64 KiB
        let dense: Vec<Extent> = (0..16)
            .map(|i| extent(64 * MIB + i * 65536, 65536, i))
            .collect();
        splice(file, vec![], dense.clone());
        let lookups = [
            (file, 32 * MIB..33 * MIB),                           // in the hole
            (file, 64 * MIB + 100_000..64 * MIB + 300_000),       // among the extents
            (file, 64 * MIB + 16 * 65536..65 * MIB + 16 * 65536), // past the end
        ];
        let (before, found) = stepped_over(&store, &lookups);
        assert_eq!(found, 4, "the extents overlapping the ranges");

        let mut ops = 0u64;
        // other files, each 1,000 extents written and then deleted with the file
        for (n, &ino) in below.iter().chain(&above).enumerate() {
            let many: Vec<Extent> = (0..1000)
                .map(|i| extent(i * 4096, 4096, n as u64 * 1000 + i))
                .collect();
            splice(ino, vec![], many);
            let mut tx = store.begin().unwrap();
            tx.delete_inode(ino).unwrap();
            tx.commit().unwrap();
            ops += 2000;
        }
        // the file's own overwrites and punched holes, at its start and far past its end
        for round in 0..250u64 {
            for base in [0, 200 * MIB] {
                let written: Vec<Extent> = (0..100)
                    .map(|i| extent(base + i * 4096, 4096, round * 100 + i))
                    .collect();
                splice(file, vec![], written.clone());
                splice(file, written, vec![]);
                ops += 200;
            }
        }
        assert!(ops >= 1_000_000);
        let (after, found) = stepped_over(&store, &lookups);
        assert_eq!(found, 4, "the same extents");
        assert!(
            after <= before,
            "a lookup stepped over {after} entries after {ops} writes and deletions elsewhere, \
             {before} before"
        );
    }

    /// A lookup in a hole steps back over the deletions within the longest extent the volume
    /// has held, not within the largest block there could be (16 MiB); an extent longer than
    /// any before is still found from anywhere in its range, after a reopen too, and in a
    /// database that never recorded its longest extent.
    #[test]
    fn a_lookup_looks_back_as_far_as_the_longest_extent_reaches() {
        use crate::domain::extent::Splice;
        const MIB: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let extent = |offset: u64, len: u32| Extent {
            offset,
            key: BlockKey::for_data(crate::domain::HashAlgo::Blake3, &offset.to_le_bytes()),
            block_offset: 0,
            len,
        };
        let splice = |store: &RocksMetaStore, remove: Vec<Extent>, insert: Vec<Extent>| {
            let mut tx = store.begin().unwrap();
            tx.apply_splice(7, &Splice { remove, insert }).unwrap();
            tx.commit().unwrap();
        };
        let store = RocksMetaStore::open(dir.path()).unwrap();
        // 16 MiB of 4 KiB extents, written and then punched out
        let small: Vec<Extent> = (0..4096).map(|i| extent(i * 4096, 4096)).collect();
        splice(&store, vec![], small.clone());
        splice(&store, small, vec![]);
        let in_the_hole = [(7, 16 * MIB..17 * MIB)];
        let (stepped, found) = stepped_over(&store, &in_the_hole);
        assert_eq!(found, 0);
        assert!(
            stepped < 10,
            "a lookup in the hole stepped over {stepped} deleted extents"
        );

        let long = extent(20 * MIB, 4 << 20);
        splice(&store, vec![], vec![long]);
        let inside = [(7, 23 * MIB..24 * MIB)];
        let find = |store: &RocksMetaStore| {
            let mut r = store.read().unwrap();
            r.extents(7, inside[0].1.clone()).unwrap()
        };
        assert_eq!(find(&store), [long], "found from its last MiB");
        drop(store);
        let store = RocksMetaStore::open(dir.path()).unwrap();
        assert_eq!(find(&store), [long], "found after a reopen");
        store
            .db
            .delete_cf(store.cf("settings"), LONGEST_EXTENT)
            .unwrap();
        drop(store);
        let store = RocksMetaStore::open(dir.path()).unwrap();
        assert_eq!(
            find(&store),
            [long],
            "found in a database that kept no record"
        );
        assert_eq!(
            store.setting(LONGEST_EXTENT).unwrap().as_deref(),
            Some("4194304"),
            "measured at open and kept"
        );
    }

    /// A read-only view (dump, fsck) reads a file's extents as they were when it was taken,
    /// as it reads the file's inode.
    #[test]
    fn a_snapshot_reads_the_extents_of_its_moment() {
        use crate::domain::extent::Splice;
        let dir = tempfile::tempdir().unwrap();
        let store = RocksMetaStore::open(dir.path()).unwrap();
        let extent = |seed: u64| Extent {
            offset: 0,
            key: BlockKey::for_data(crate::domain::HashAlgo::Blake3, &seed.to_le_bytes()),
            block_offset: 0,
            len: 4096,
        };
        let splice = |remove: Vec<Extent>, insert: Vec<Extent>| {
            let mut tx = store.begin().unwrap();
            tx.apply_splice(7, &Splice { remove, insert }).unwrap();
            tx.commit().unwrap();
        };
        splice(vec![], vec![extent(1)]);
        let mut view = store.snapshot().unwrap();
        splice(vec![extent(1)], vec![extent(2)]);
        assert_eq!(view.extents(7, 0..4096).unwrap(), [extent(1)]);
        assert_eq!(
            view.extents(7, 100..200).unwrap(),
            [extent(1)],
            "reaching into the range"
        );
    }
}
