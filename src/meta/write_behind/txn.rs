//! Transactions: written into their own layer, journaled at commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::applier::*;
use super::layers::*;
use super::*;
use crate::domain::extent::Splice;
use crate::meta::journal::{Op, Record};
use crate::meta::{DirEntry, Ino, Inode, MetaError, MetaResult, MetaTxn};

/// A transaction: reads through the layers, writes into its own layer and a list of
/// operations, which the commit journals.
pub(super) struct WbTxn<'a> {
    pub(super) layers: Layers<'a>,
    pub(super) ops: Vec<Op>,
    pub(super) began: u64,
    /// Inodes written, marked at commit.
    pub(super) wrote: Vec<Ino>,
    pub(super) finished: bool,
}

impl Drop for WbTxn<'_> {
    fn drop(&mut self) {
        if !self.finished {
            release(&mut self.layers.state.lock(), self.began);
        }
    }
}

pub(super) fn release(p: &mut Pending, began: u64) {
    if let Some(n) = p.open.get_mut(&began) {
        *n -= 1;
        if *n == 0 {
            p.open.remove(&began);
        }
    }
}

impl WbTxn<'_> {
    /// Records a write of `ino`'s records: in this transaction's layer and its operations.
    pub(super) fn write(&mut self, ino: Ino, op: Op) -> MetaResult<()> {
        self.layers
            .touched
            .as_mut()
            .expect("a transaction's")
            .push(ino);
        self.wrote.push(ino);
        self.layers.local.record(0, &op)?;
        self.ops.push(op);
        Ok(())
    }
}

crate::forward_reads!(WbTxn<'_>, self => self.layers);

impl MetaTxn for WbTxn<'_> {
    fn put_inode(&mut self, inode: &Inode) -> MetaResult<()> {
        if !self.layers.local.wiped(inode.ino)
            && self.layers.state.lock().fresh.contains(&inode.ino)
        {
            self.layers.local.mark_new(inode.ino);
        }
        self.write(inode.ino, Op::PutInode(inode.clone()))
    }

    fn delete_inode(&mut self, ino: Ino) -> MetaResult<()> {
        self.write(ino, Op::DeleteInode(ino))
    }

    fn put_dirent(&mut self, parent: Ino, name: &[u8], entry: &DirEntry) -> MetaResult<()> {
        self.write(parent, Op::dirent(parent, name, entry))
    }

    fn delete_dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<()> {
        let name = name.to_vec();
        self.write(parent, Op::DeleteDirent { parent, name })
    }

    fn apply_splice(&mut self, ino: Ino, splice: &Splice) -> MetaResult<()> {
        if self.layers.local.map(ino).is_none() {
            let map = self.layers.whole_map(ino)?;
            self.layers.local.set_map(0, ino, map);
        }
        self.write(ino, Op::splice(ino, splice))
    }

    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> MetaResult<()> {
        let (name, value) = (name.to_vec(), value.to_vec());
        self.write(ino, Op::PutXattr { ino, name, value })
    }

    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        let name = name.to_vec();
        self.write(ino, Op::DeleteXattr { ino, name })
    }

    fn put_symlink_target(&mut self, ino: Ino, target: &[u8]) -> MetaResult<()> {
        let target = target.to_vec();
        self.write(ino, Op::PutSymlink { ino, target })
    }

    fn add_orphan(&mut self, ino: Ino) -> MetaResult<()> {
        self.write(ino, Op::AddOrphan(ino))
    }

    fn commit(mut self: Box<Self>) -> MetaResult<()> {
        let state = self.layers.state;
        let mut p = state.lock();
        release(&mut p, self.began);
        self.finished = true;
        if self.ops.is_empty() {
            return Ok(());
        }
        if self
            .layers
            .touched
            .iter()
            .flatten()
            .any(|ino| p.written.get(ino).is_some_and(|&s| s > self.began))
        {
            return Err(MetaError::Conflict);
        }
        while p.queue.len() >= MAX_QUEUED && !state.stop.load(Ordering::SeqCst) {
            // backpressure: the engine is slow or away
            p = state
                .changed
                .wait_timeout(p, Duration::from_secs(1))
                .expect("write-behind lock")
                .0;
        }
        let seq = p.seq + 1;
        let record = Record {
            seq,
            ops: std::mem::take(&mut self.ops),
        };
        p.journal.append(&record)?;
        p.seq = seq;
        for ino in &self.wrote {
            p.fresh.remove(ino);
        }
        let local = std::mem::take(&mut self.layers.local);
        p.overlay.absorb(local, seq);
        for ino in &self.wrote {
            p.written.insert(*ino, seq);
        }
        if p.written.len() > 4096 {
            let oldest = p.open.keys().next().copied().unwrap_or(seq);
            p.written.retain(|_, s| *s > oldest);
        }
        p.queue.push_back(Queued {
            at: Instant::now(),
            record: Arc::new(record),
        });
        metrics::gauge!(crate::metrics::WRITEBACK_META_QUEUED).set(p.queue.len() as f64);
        state.changed.notify_all();
        Ok(())
    }
}
