//! A metadata layer that fails commits as a test tells it to: refused before they reach the
//! engine (an unreachable server), or applied by the engine with the answer lost on the way
//! back (a connection cut after COMMIT), or held before the engine until the test lets it
//! go (a slow commit, to open a race's window). Everything else goes to the store below.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

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
    /// The next commit that deletes this xattr waits for the test (`hold_commit_deleting`).
    hold: Mutex<Option<(Vec<u8>, Held)>>,
}

/// The layer's side of a held commit: it says when it is reached, then waits to be let go.
struct Held {
    reached: Sender<()>,
    go: Receiver<()>,
}

/// The test's side of a held commit.
pub struct Hold {
    reached: Receiver<()>,
    go: Sender<()>,
}

impl Hold {
    /// Waits until the held commit is reached (panics after `limit`).
    pub fn wait_reached(&self, limit: Duration) {
        self.reached
            .recv_timeout(limit)
            .expect("the held commit was not reached");
    }

    /// Lets the held commit go on to the engine.
    pub fn release(&self) {
        let _ = self.go.send(());
    }
}

impl FaultyMeta {
    pub fn new(inner: Arc<dyn MetaStore>) -> FaultyMeta {
        FaultyMeta {
            inner,
            plan: Mutex::default(),
            hold: Mutex::default(),
        }
    }

    /// The next commit of a transaction that deletes the xattr `name` (of any inode) waits,
    /// before it reaches the engine, until the returned hold is released (or dropped).
    pub fn hold_commit_deleting(&self, name: &[u8]) -> Hold {
        let (reached_tx, reached) = channel();
        let (go, go_rx) = channel();
        *self.hold.lock().unwrap() = Some((
            name.to_vec(),
            Held {
                reached: reached_tx,
                go: go_rx,
            },
        ));
        Hold { reached, go }
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
            deleted_xattrs: Vec::new(),
        }))
    }
}

struct FaultyTxn<'a> {
    inner: Box<dyn MetaTxn + 'a>,
    layer: &'a FaultyMeta,
    /// Names of the xattrs this transaction deletes.
    deleted_xattrs: Vec<Vec<u8>>,
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
        self.deleted_xattrs.push(name.to_vec());
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
        let held = {
            let mut hold = self.layer.hold.lock().unwrap();
            match hold.as_ref() {
                Some((name, _)) if self.deleted_xattrs.contains(name) => hold.take(),
                _ => None,
            }
        };
        if let Some((_, held)) = held {
            let _ = held.reached.send(());
            let _ = held.go.recv();
        }
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
