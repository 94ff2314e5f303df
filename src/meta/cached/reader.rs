//! Read-only views answered from the cache where they can be, else from the engine.

use std::ops::Range;
use std::sync::atomic::Ordering;

use rocksdb::WriteBatch;

use super::CachedMeta;
use super::local::*;
use crate::domain::Extent;
use crate::meta::types::FIRST_COOKIE;
use crate::meta::{DirEntry, Ino, Inode, MetaRead, MetaRecords, MetaResult};

/// A directory's generation from its stored record (0 when it has none).
pub(super) fn generation_of(
    found: Result<Option<rocksdb::DBPinnableSlice<'_>>, rocksdb::Error>,
) -> u64 {
    found
        .ok()
        .flatten()
        .and_then(|v| u64_at(&v, 0))
        .unwrap_or(0)
}

/// A read-only view answered from the cache where it can be, else from the engine.
pub(super) struct CachedReader<'a> {
    pub(super) meta: &'a CachedMeta,
    pub(super) fallback: Option<Box<dyn MetaRead + 'a>>,
}

impl<'a> CachedReader<'a> {
    pub(super) fn engine(&mut self) -> MetaResult<&mut (dyn MetaRead + 'a)> {
        if self.fallback.is_none() {
            self.fallback = Some(self.meta.inner.read()?);
        }
        Ok(self.fallback.as_deref_mut().expect("just set"))
    }

    pub(super) fn cache(&self) -> &'a LocalCache {
        &self.meta.cache
    }

    pub(super) fn epoch(&self) -> u64 {
        self.meta.cache.epoch.load(Ordering::SeqCst)
    }

    /// The whole directory, read from the engine and cached, when it is not too large.
    pub(super) fn fill_listing(&mut self, dir: Ino) -> MetaResult<Option<Listing>> {
        let epoch = self.epoch();
        let token = self.cache().mirror.token();
        let generation = self.cache().generation(dir);
        let mut all: Vec<(Vec<u8>, DirEntry)> = Vec::new();
        loop {
            let after = all.last().map(|(_, e)| e.cookie).unwrap_or(0);
            let page = self.engine()?.list_dir(dir, after, PAGE)?;
            let done = page.len() < PAGE;
            all.extend(page);
            if done {
                break;
            }
            if all.len() > MAX_LISTING {
                return Ok(None);
            }
        }
        self.cache().at("listing read");
        let mut batch = WriteBatch::default();
        for (name, e) in &all {
            batch.put(entry_key(DIRENT, dir, generation, name), encode_dirent(e));
            batch.put(
                entry_key(BY_COOKIE, dir, generation, &e.cookie.to_be_bytes()),
                encode_listed(name, e),
            );
        }
        batch.put(key(LISTED, dir), []);
        self.cache().fill(epoch, dir, batch);
        self.cache().mirror.put_listing(token, dir, &all);
        Ok(Some(all))
    }

    pub(super) fn cached_listing(
        &self,
        dir: Ino,
        after: u64,
        limit: usize,
    ) -> MetaResult<Option<Listing>> {
        let cache = self.cache();
        if !cache.live.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if let Some(out) = cache.mirror.listing(dir, after, limit) {
            cache.count(true);
            return Ok(Some(out));
        }
        let token = cache.mirror.token();
        // One snapshot for the flag, the generation and the entries: read one by one, an
        // invalidation from another mount could land between the flag and the generation, and
        // the listing came back empty (the new generation has no entries yet).
        let snap = cache.db.snapshot();
        if !matches!(snap.get_pinned(key(LISTED, dir)), Ok(Some(_))) {
            return Ok(None);
        }
        let generation = generation_of(snap.get_pinned(key(GENERATION, dir)));
        let from = entry_key(
            BY_COOKIE,
            dir,
            generation,
            &after.saturating_add(1).to_be_bytes(),
        );
        let end = entry_key(BY_COOKIE, dir, generation + 1, &[]);
        // the bound lets RocksDB stop at the listing's end instead of merging past it
        let mut bounded = rocksdb::ReadOptions::default();
        bounded.set_iterate_upper_bound(end);
        let mut it = snap.raw_iterator_opt(bounded);
        it.seek(&from);
        let mut out = Vec::new();
        while let Some(v) = it.value() {
            if out.len() >= limit {
                break;
            }
            out.push(decode_listed(v)?);
            it.next();
        }
        it.status().map_err(cache_err)?;
        cache.count(true);
        if after < FIRST_COOKIE && out.len() < limit {
            // the whole listing
            cache.mirror.put_listing(token, dir, &out);
        }
        Ok(Some(out))
    }

    /// The extents overlapping `range`, from the cached map (one seek) or the engine's whole
    /// map, which is then cached.
    pub(super) fn cached_extents(
        &mut self,
        ino: Ino,
        range: &Range<u64>,
    ) -> MetaResult<Vec<Extent>> {
        let cache = self.cache();
        // one snapshot for the flag, the generation and the extents: an invalidation landing
        // between them would leave the new generation's (empty) map read as a hole
        let snap = cache.db.snapshot();
        if cache.live.load(Ordering::SeqCst)
            && matches!(snap.get_pinned(key(MAPPED, ino)), Ok(Some(_)))
        {
            cache.at("mapped");
            let generation = generation_of(snap.get_pinned(key(GENERATION, ino)));
            let prefix = entry_key(EXTENT, ino, generation, &[]);
            let mut it = snap.raw_iterator();
            // the extent starting at or before the range, else the first after its start
            it.seek_for_prev(entry_key(
                EXTENT,
                ino,
                generation,
                &range.start.to_be_bytes(),
            ));
            if !it.key().is_some_and(|k| k.starts_with(&prefix)) {
                it.seek(&prefix);
            }
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if !k.starts_with(&prefix) {
                    break;
                }
                let mut one = decode_extents(v)?;
                let e = one.pop().ok_or_else(|| corrupt("extent"))?;
                if e.offset >= range.end {
                    break;
                }
                if e.end() > range.start {
                    out.push(e);
                }
                it.next();
            }
            it.status().map_err(cache_err)?;
            cache.count(true);
            return Ok(out);
        }
        let epoch = self.epoch();
        let generation = cache.generation(ino);
        let fragmented = self
            .meta
            .read_inode(ino)?
            .is_some_and(|n| n.extent_count > MAX_MAP as u64);
        if fragmented {
            return self.engine()?.extents(ino, range.clone());
        }
        let all = self.engine()?.extents(ino, 0..u64::MAX)?;
        let mut batch = WriteBatch::default();
        for e in &all {
            batch.put(
                entry_key(EXTENT, ino, generation, &e.offset.to_be_bytes()),
                encode_extents(std::slice::from_ref(e)),
            );
        }
        batch.put(key(MAPPED, ino), []);
        self.cache().fill(epoch, ino, batch);
        Ok(overlapping(all, range))
    }

    pub(super) fn all_xattrs(&mut self, ino: Ino) -> MetaResult<Vec<(Vec<u8>, Vec<u8>)>> {
        if let Some(v) = self.cache().get(&key(XATTRS, ino)) {
            return decode_xattrs(&v);
        }
        let epoch = self.epoch();
        let names = self.engine()?.xattr_names(ino)?;
        let mut all = Vec::with_capacity(names.len());
        for n in names {
            if let Some(v) = self.engine()?.xattr(ino, &n)? {
                all.push((n, v));
            }
        }
        let mut batch = WriteBatch::default();
        batch.put(key(XATTRS, ino), encode_xattrs(&all));
        self.cache().fill(epoch, ino, batch);
        Ok(all)
    }
}

impl MetaRead for CachedReader<'_> {
    fn inode(&mut self, ino: Ino) -> MetaResult<Option<Inode>> {
        self.meta.read_inode(ino)
    }

    fn dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<Option<DirEntry>> {
        let epoch = self.epoch();
        let cache = self.cache();
        let mut generation = cache.generation(parent);
        if cache.live.load(Ordering::SeqCst) {
            // one snapshot for the generation, the entry and the listing's marker: read one by
            // one, a fill landing in between could pair "not under this generation" with "the
            // listing is complete"
            let snap = cache.db.snapshot();
            generation = generation_of(snap.get_pinned(key(GENERATION, parent)));
            if let Ok(Some(v)) = snap.get_pinned(entry_key(DIRENT, parent, generation, name)) {
                cache.count(true);
                return decode_dirent(&v).map(Some);
            }
            let complete = matches!(snap.get_pinned(key(LISTED, parent)), Ok(Some(_)));
            cache.count(complete);
            if complete {
                return Ok(None); // the cached listing is complete: no such entry
            }
            drop(snap);
            // a small directory is read whole, in one query like the entry's: the next
            // lookups in it (a create's of its new name, most often) are answered here
            if let Some(dir) = self.meta.cached_inode(parent)?
                && dir.next_cookie.saturating_sub(FIRST_COOKIE) <= PAGE as u64
                && let Some(all) = self.fill_listing(parent)?
            {
                return Ok(all.into_iter().find(|(n, _)| n == name).map(|(_, e)| e));
            }
        }
        let e = self.engine()?.dirent(parent, name)?;
        if let Some(e) = &e {
            let mut batch = WriteBatch::default();
            batch.put(
                entry_key(DIRENT, parent, generation, name),
                encode_dirent(e),
            );
            self.cache().fill(epoch, parent, batch);
        }
        Ok(e)
    }

    fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> MetaResult<Vec<(Vec<u8>, DirEntry)>> {
        if let Some(page) = self.cached_listing(parent, after, limit)? {
            return Ok(page);
        }
        if self.meta.is_live()
            && after <= 2
            && let Some(all) = self.fill_listing(parent)?
        {
            return Ok(all
                .into_iter()
                .filter(|(_, e)| e.cookie > after)
                .take(limit)
                .collect());
        }
        self.engine()?.list_dir(parent, after, limit)
    }

    fn dir_is_empty(&mut self, dir: Ino) -> MetaResult<bool> {
        if let Some(page) = self.cached_listing(dir, 0, 1)? {
            return Ok(page.is_empty());
        }
        self.engine()?.dir_is_empty(dir)
    }

    fn extents(&mut self, ino: Ino, range: Range<u64>) -> MetaResult<Vec<Extent>> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        if !self.meta.is_live() {
            return self.engine()?.extents(ino, range);
        }
        self.cached_extents(ino, &range)
    }

    fn xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<Option<Vec<u8>>> {
        if !self.meta.is_live() {
            return self.engine()?.xattr(ino, name);
        }
        Ok(self
            .all_xattrs(ino)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v))
    }

    fn inode_numbers(&mut self) -> MetaResult<Vec<(Ino, bool)>> {
        self.engine()?.inode_numbers()
    }

    fn xattr_names(&mut self, ino: Ino) -> MetaResult<Vec<Vec<u8>>> {
        if !self.meta.is_live() {
            return self.engine()?.xattr_names(ino);
        }
        Ok(self.all_xattrs(ino)?.into_iter().map(|(n, _)| n).collect())
    }

    fn symlink_target(&mut self, ino: Ino) -> MetaResult<Option<Vec<u8>>> {
        if let Some(v) = self.cache().get(&key(SYMLINK, ino)) {
            return Ok(Some(v));
        }
        let epoch = self.epoch();
        let t = self.engine()?.symlink_target(ino)?;
        if let Some(t) = &t {
            let mut batch = WriteBatch::default();
            batch.put(key(SYMLINK, ino), t);
            self.cache().fill(epoch, ino, batch);
        }
        Ok(t)
    }
}
