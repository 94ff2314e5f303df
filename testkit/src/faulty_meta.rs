//! A metadata layer that fails commits as a test tells it to: refused before they reach the
//! engine (an unreachable server), or applied by the engine with the answer lost on the way
//! back (a connection cut after COMMIT). Everything else goes to the store below.

use std::sync::Arc;
use std::sync::Mutex;

use graviton::domain::extent::Splice;
use graviton::meta::{DirEntry, Ino, Inode, MetaError, MetaLayer, MetaResult, MetaStore, MetaTxn};

/// What happens to one commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitFault {
    /// Refused: the engine never sees it.
    Refused,
    /// Applied by the engine, but the caller is told it failed.
    AnswerLost,
}

pub struct FaultyMeta {
    inner: Arc<dyn MetaStore>,
    /// Faults for the next commits, the first last.
    plan: Mutex<Vec<CommitFault>>,
}

impl FaultyMeta {
    pub fn new(inner: Arc<dyn MetaStore>) -> FaultyMeta {
        FaultyMeta {
            inner,
            plan: Mutex::default(),
        }
    }

    /// The next `n` commits meet `fault`.
    pub fn fail_next_commits(&self, n: usize, fault: CommitFault) {
        self.fail_commits(&vec![fault; n]);
    }

    /// The next commits meet `faults`, in order.
    pub fn fail_commits(&self, faults: &[CommitFault]) {
        *self.plan.lock().unwrap() = faults.iter().rev().copied().collect();
    }

    /// Commit faults planned and not yet met.
    pub fn pending_faults(&self) -> usize {
        self.plan.lock().unwrap().len()
    }
}

fn injected(fault: CommitFault) -> MetaError {
    MetaError::backend("faulty", format!("injected commit failure ({fault:?})"))
}

impl MetaLayer for FaultyMeta {
    fn inner(&self) -> &dyn MetaStore {
        self.inner.as_ref()
    }

    fn begin(&self) -> MetaResult<Box<dyn MetaTxn + '_>> {
        Ok(Box::new(FaultyTxn {
            inner: self.inner.begin()?,
            layer: self,
        }))
    }
}

struct FaultyTxn<'a> {
    inner: Box<dyn MetaTxn + 'a>,
    layer: &'a FaultyMeta,
}

graviton::forward_reads!(FaultyTxn<'_>, self => self.inner);

impl MetaTxn for FaultyTxn<'_> {
    fn put_inode(&mut self, inode: &Inode) -> MetaResult<()> {
        self.inner.put_inode(inode)
    }
    fn delete_inode(&mut self, ino: Ino) -> MetaResult<()> {
        self.inner.delete_inode(ino)
    }
    fn put_dirent(&mut self, parent: Ino, name: &[u8], entry: &DirEntry) -> MetaResult<()> {
        self.inner.put_dirent(parent, name, entry)
    }
    fn delete_dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<()> {
        self.inner.delete_dirent(parent, name)
    }
    fn apply_splice(&mut self, ino: Ino, splice: &Splice) -> MetaResult<()> {
        self.inner.apply_splice(ino, splice)
    }
    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> MetaResult<()> {
        self.inner.put_xattr(ino, name, value)
    }
    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        self.inner.delete_xattr(ino, name)
    }
    fn put_symlink_target(&mut self, ino: Ino, target: &[u8]) -> MetaResult<()> {
        self.inner.put_symlink_target(ino, target)
    }
    fn add_orphan(&mut self, ino: Ino) -> MetaResult<()> {
        self.inner.add_orphan(ino)
    }
    fn hold_open(&mut self, ino: Ino) -> MetaResult<()> {
        self.inner.hold_open(ino)
    }
    fn commit(self: Box<Self>) -> MetaResult<()> {
        let fault = self.layer.plan.lock().unwrap().pop();
        match fault {
            None => self.inner.commit(),
            Some(CommitFault::Refused) => Err(injected(CommitFault::Refused)),
            Some(CommitFault::AnswerLost) => {
                self.inner.commit()?;
                Err(injected(CommitFault::AnswerLost))
            }
        }
    }
}
