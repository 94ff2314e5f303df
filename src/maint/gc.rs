//! `graviton gc`: deletes blocks that no file references.
//!
//! Why a grace period. A writer uploads a block before it commits the extent naming it, and it
//! skips the upload of a block the volume already references (see `vfs::flush`). So a block
//! seen unreferenced may be one a mount is committing right now, and a block that just lost its
//! last reference may be one a writer counted on a moment ago. gc therefore works in two steps:
//!
//! 1. a stored block no extent references is recorded as a candidate, with the time it was
//!    first seen so (`gc/candidate/<key>` in the volume's key-value store);
//! 2. a later run deletes a candidate once it has been unreferenced for the whole grace period,
//!    after a re-check, right before the deletion, that still finds no extent naming it. A
//!    candidate that is referenced again meanwhile loses its mark.
//!
//! A writer pins every block it stores, or skips storing because some file references it,
//! until its commit is done (`meta::pins`), and gc spares pinned blocks: neither a block in
//! flight nor one a writer counted on can go, whatever the grace period. A writer that stores a block and
//! finds a copy already there removes the block's mark (`vfs::flush`), and gc checks the mark
//! again right before deleting each block: a candidate some writer is about to reference again
//! is spared, and its grace period starts over. A writer whose store lands between that check
//! and the deletion checks the copy is still there after taking the mark away, and gc checks the
//! mark once more after the deletion and puts the block back (it read it first) if the mark went
//! (`delete_unless_taken_back`): whichever of the two looks last sees the other. So
//! `--grace 0s` is safe on a volume in use; the grace period only keeps recently unreferenced
//! blocks around a while (a file deleted by mistake and restored from a dump).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::domain::BlockKey;
use crate::volume::Volume;

/// What a gc run did (or, with `dry_run`, would do).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub stored_blocks: u64,
    pub referenced_blocks: u64,
    /// Unreferenced blocks seen for the first time: marked now, deleted by a later run.
    pub marked: u64,
    /// Candidates still inside their grace period.
    pub waiting: u64,
    pub deleted_blocks: u64,
    pub deleted_bytes: u64,
    /// Candidates referenced again (or gone from the store): mark dropped, block kept.
    pub unmarked: u64,
    /// When the next waiting candidate becomes due, in seconds from now.
    pub next_due_secs: Option<u64>,
}

/// Candidates re-checked and deleted together: keeps the re-check close to the deletions.
const BATCH: usize = 64;
/// The grace period unless told otherwise (`--grace`, mount option `gc_grace`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// How often a mount of an embedded volume collects garbage (mount option `gc_every`).
pub const DEFAULT_EVERY: Duration = Duration::from_secs(3600);

/// One gc run at a time in this process (the mount's own and those asked through its socket).
static RUNNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Key-value key of the time (Unix seconds) the last gc run ended, by any process.
const LAST_RUN_KEY: &str = "gc/last-run";
/// A mount's first run waits at least this long (unless its interval is shorter): the mount
/// has just started, and the volume's users with it.
const FIRST_RUN_AFTER: Duration = Duration::from_secs(60);

/// How long until the next run is due, the last one having ended at `last` (Unix seconds).
fn due_in(last: Option<u64>, now: u64, every: Duration) -> Duration {
    last.map_or(Duration::ZERO, |last| {
        Duration::from_secs((last + every.as_secs()).saturating_sub(now))
    })
}

fn last_run(vol: &Volume) -> Option<u64> {
    let v = vol.meta.kv_get(LAST_RUN_KEY).ok()??;
    std::str::from_utf8(&v).ok()?.parse().ok()
}

/// Runs gc every `every` on a low-priority thread of the mount daemon, for as long as the
/// daemon runs; each run logs its summary, a failed run a warning. Runs are counted from the
/// last one of any process (this mount's, another mount's of a PostgreSQL volume, `graviton
/// gc` from cron), so a mount restarted more often than `every` still collects, and mounts
/// that share a volume do not all run one after the other.
pub fn run_every(
    vol: std::sync::Arc<Volume>,
    every: Duration,
    grace: Duration,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("graviton-gc".into())
        .spawn(move || {
            crate::background::lower_this_threads_priority();
            let mut wait =
                due_in(last_run(&vol), now_secs(), every).max(FIRST_RUN_AFTER.min(every));
            loop {
                std::thread::sleep(wait);
                wait = every;
                let due = due_in(last_run(&vol), now_secs(), every);
                if !due.is_zero() {
                    wait = due; // another process ran it meanwhile
                    continue;
                }
                // as `graviton gc` does: a write-back mount elsewhere may hold commits that
                // reference blocks PostgreSQL does not know to be referenced
                if vol.meta.shared().is_some()
                    && let Err(e) =
                        crate::meta::write_behind::check_unclaimed(vol.meta.as_ref(), None)
                {
                    tracing::warn!("gc: skipped: {e}");
                    continue;
                }
                let mut summary = Vec::new();
                match collect(&vol, grace, false, &mut summary) {
                    Ok(()) => {
                        tracing::info!("gc: {}", String::from_utf8_lossy(&summary).trim_end())
                    }
                    Err(e) => tracing::warn!("gc: {e:#}"),
                }
            }
        })
        .context("starting the gc thread")?;
    Ok(())
}

/// Runs gc and writes its summary.
pub fn collect(
    vol: &Volume,
    grace: Duration,
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let r = gc(vol, grace, dry_run)?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    writeln!(
        out,
        "{} stored blocks, {} referenced: {verb} {} blocks ({} bytes); {} newly unreferenced{}; {} waiting out the grace period{}",
        r.stored_blocks,
        r.referenced_blocks,
        r.deleted_blocks,
        r.deleted_bytes,
        r.marked,
        if dry_run {
            " (not marked: dry run)"
        } else {
            " (marked)"
        },
        r.waiting,
        match r.next_due_secs {
            Some(s) => format!(" (next due in {s} s)"),
            None => String::new(),
        }
    )?;
    Ok(())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Long because marking, the re-check under the grace period and deletion must run in this
/// order in one function, where a reader can check that no block in flight is deleted.
pub fn gc(vol: &Volume, grace: Duration, dry_run: bool) -> anyhow::Result<GcReport> {
    let _one_at_a_time = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    if !dry_run {
        crate::vfs::tree::detached::sweep(
            vol.meta.as_ref(),
            crate::vfs::tree::detached::ABANDONED_AFTER,
        )?;
    }
    let mut report = GcReport::default();
    let now = now_secs();
    // listed before the pins and then the references are read: a block stored after the
    // listing is not seen; one in the listing was pinned before it was stored, so it is either
    // still pinned or committed (`meta::pins`)
    let stored = vol.store.list()?;
    let pinned = crate::meta::pins::pinned_blocks(vol.meta.as_ref())?;
    let referenced: HashSet<BlockKey> = vol.meta.referenced_blocks()?.into_iter().collect();
    report.stored_blocks = stored.len() as u64;
    report.referenced_blocks = referenced.len() as u64;
    let mut marks: HashMap<BlockKey, u64> = HashMap::new();
    for (k, v) in vol.meta.kv_scan(crate::meta::GC_CANDIDATE_PREFIX)? {
        let key = k[crate::meta::GC_CANDIDATE_PREFIX.len()..].parse::<BlockKey>();
        let since = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok());
        match (key, since) {
            (Ok(key), Some(since)) => {
                marks.insert(key, since);
            }
            // unreadable marks are dropped: the block is marked afresh if still unreferenced
            _ if !dry_run => vol.meta.kv_delete(&k)?,
            _ => {}
        }
    }

    let bar = super::progress::bar(stored.len() as u64, "blocks");
    bar.set_prefix("gc");
    let mut due = Vec::new();
    let stored_set: HashSet<BlockKey> = stored.iter().copied().collect();
    for key in stored {
        bar.inc(1);
        if referenced.contains(&key) || pinned.contains(&key) {
            continue;
        }
        match marks.get(&key) {
            None => {
                if !dry_run {
                    vol.meta.kv_put(
                        &crate::meta::gc_candidate_key(&key),
                        now.to_string().as_bytes(),
                    )?;
                }
                // first seen now: due now only with no grace period at all
                match grace.is_zero() {
                    true => due.push(key),
                    false => report.marked += 1,
                }
            }
            Some(&since) if now.saturating_sub(since) >= grace.as_secs() => due.push(key),
            Some(&since) => {
                report.waiting += 1;
                let left = since + grace.as_secs() - now;
                report.next_due_secs = Some(report.next_due_secs.map_or(left, |s| s.min(left)));
            }
        }
    }
    // marks of blocks referenced again or no longer stored
    for key in marks.keys() {
        if referenced.contains(key) || !stored_set.contains(key) {
            report.unmarked += 1;
            if !dry_run {
                vol.meta.kv_delete(&crate::meta::gc_candidate_key(key))?;
            }
        }
    }

    for (n, batch) in due.chunks(BATCH).enumerate() {
        let mut again = crate::meta::pins::pinned_blocks(vol.meta.as_ref())?;
        again.extend(vol.meta.referenced_among(batch)?);
        // A copy (`tree::copy`) commits references to the blocks its source had at one moment,
        // which may be before the re-check above: while one is in progress, nothing goes. One
        // that starts after this check reads a moment after the re-check.
        if crate::vfs::tree::detached::in_progress(vol.meta.as_ref())? {
            report.waiting += (due.len() - n * BATCH) as u64;
            break;
        }
        for key in batch {
            if again.contains(key) {
                report.unmarked += 1;
                if !dry_run {
                    vol.meta.kv_delete(&crate::meta::gc_candidate_key(key))?;
                }
                continue;
            }
            // a writer that stored a copy since the listing took the mark away: it is about
            // to reference the block
            if !dry_run
                && vol
                    .meta
                    .kv_get(&crate::meta::gc_candidate_key(key))?
                    .is_none()
            {
                report.unmarked += 1;
                continue;
            }
            if !dry_run && !delete_unless_taken_back(vol, key)? {
                report.unmarked += 1;
                continue;
            }
            report.deleted_blocks += 1;
            report.deleted_bytes += key.size as u64;
        }
    }
    bar.finish_and_clear();
    if !dry_run {
        vol.meta
            .kv_put(LAST_RUN_KEY, now_secs().to_string().as_bytes())?;
    }
    Ok(report)
}

/// Deletes a candidate whose mark was there a moment ago; false if a writer took the mark
/// away meanwhile, and the block is kept. A writer that finds a copy stored takes the mark
/// away, then checks that the copy is still there (and stores it again if not); so a mark
/// gone after the deletion means a writer may have counted on the copy before the deletion
/// and checked before it too: the bytes, read before the deletion, are put back.
fn delete_unless_taken_back(vol: &Volume, key: &BlockKey) -> anyhow::Result<bool> {
    let mark = crate::meta::gc_candidate_key(key);
    let kept = match vol.store.get(key) {
        Ok(data) => Some(data),
        // gone already, or damaged (nothing worth putting back)
        Err(e) => {
            tracing::warn!(block = %key, "gc deletes a block it cannot read: {e}");
            None
        }
    };
    vol.store.delete(key)?;
    if vol.meta.kv_get(&mark)?.is_none() {
        if let Some(data) = kept {
            vol.store.put(key, &data)?;
        }
        tracing::info!(block = %key, "gc kept a block a writer took back during its deletion");
        return Ok(false);
    }
    vol.meta.kv_delete(&mark)?;
    tracing::info!(block = %key, "gc deleted an unreferenced block");
    Ok(true)
}

/// How many blocks are marked as candidates.
pub fn candidates(vol: &Volume) -> anyhow::Result<u64> {
    Ok(vol.meta.kv_scan(crate::meta::GC_CANDIDATE_PREFIX)?.len() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_run_is_due_an_interval_after_the_last_one_of_any_process() {
        use super::due_in;
        use std::time::Duration;
        let hour = Duration::from_secs(3600);
        assert_eq!(
            due_in(None, 1000, hour),
            Duration::ZERO,
            "never ran: due now"
        );
        assert_eq!(due_in(Some(1000), 1600, hour), Duration::from_secs(3000));
        assert_eq!(due_in(Some(1000), 4600, hour), Duration::ZERO);
        assert_eq!(due_in(Some(1000), 9000, hour), Duration::ZERO, "overdue");
    }

    use std::sync::Arc;

    use super::*;
    use crate::meta::MetaStore;
    use crate::store::{BlockStore, PutOutcome, StoreError};

    /// A store where, when `writer` is set, a writer stores a copy of a block and takes its gc
    /// mark away just before gc's deletion of it goes through.
    struct WriterDuringTheDeletion {
        inner: Arc<dyn BlockStore>,
        meta: Arc<dyn MetaStore>,
        writer: Option<Vec<u8>>,
    }

    impl crate::store::StoreLayer for WriterDuringTheDeletion {
        fn inner(&self) -> &dyn BlockStore {
            self.inner.as_ref()
        }
        fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
            if let Some(data) = &self.writer {
                assert_eq!(self.inner.put(key, data)?, PutOutcome::Duplicate);
                self.meta
                    .kv_delete(&crate::meta::gc_candidate_key(key))
                    .unwrap();
            }
            self.inner.delete(key)
        }
    }

    /// An embedded volume holding one unreferenced block, its store wrapped as above.
    fn volume_with_garbage(writer: bool) -> (tempfile::TempDir, Volume, BlockKey) {
        let dir = tempfile::tempdir().unwrap();
        let source = crate::volume::Source::Dir(dir.path().join("vol"));
        let mut vol = Volume::format(
            &source,
            crate::domain::HashAlgo::Blake3,
            "fixed-1m".parse().unwrap(),
            None,
        )
        .unwrap();
        let data = vec![7u8; 4096];
        let key = BlockKey::for_data(vol.hash, &data);
        vol.store.put(&key, &data).unwrap();
        vol.store = Arc::new(WriterDuringTheDeletion {
            inner: vol.store.clone(),
            meta: vol.meta.clone(),
            writer: writer.then_some(data),
        });
        (dir, vol, key)
    }

    #[test]
    fn a_block_a_writer_takes_back_during_its_deletion_is_put_back() {
        let (_dir, vol, key) = volume_with_garbage(true);
        let report = gc(&vol, Duration::ZERO, false).unwrap();
        assert_eq!(report.deleted_blocks, 0, "{report:?}");
        assert!(vol.store.exists(&key).unwrap(), "the block is back");
        assert!(vol.store.get(&key).is_ok());
        // nobody's garbage: deleted
        let (_dir, vol, key) = volume_with_garbage(false);
        let report = gc(&vol, Duration::ZERO, false).unwrap();
        assert_eq!(report.deleted_blocks, 1, "{report:?}");
        assert!(!vol.store.exists(&key).unwrap());
        assert_eq!(candidates(&vol).unwrap(), 0, "its mark went with it");
    }
}
