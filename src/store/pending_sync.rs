//! What a store has written and not yet made durable, and the rules that make its `sync`
//! honest when several callers sync at once:
//!
//! - a sync returns only once everything written before it began is durable: it waits for a
//!   sync already running (which took part of its writes), then syncs whatever remains;
//! - an item whose sync failed stays failed. Every sync that began after the item was written
//!   reports the failure, until a later sync repairs the item (the store decides how: the local
//!   store writes a verified copy afresh) or the store forgets it (the item is gone, or its
//!   content is safe elsewhere). A retried fsync alone proves nothing: after a failed
//!   writeback, Linux marks the pages clean, and the next fsync succeeds for lost data.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Why an item could not be made durable: kept as its errno and message, so every sync that
/// reports it can rebuild an `io::Error` of the same kind (ENOSPC stays ENOSPC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    errno: Option<i32>,
    message: String,
}

impl From<&std::io::Error> for Failure {
    fn from(e: &std::io::Error) -> Self {
        Failure {
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
    }
}

impl Failure {
    pub fn to_io_error(&self) -> std::io::Error {
        match self.errno {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::other(self.message.clone()),
        }
    }
}

/// One item to make durable, as handed to the store's sync function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToSync<T> {
    pub item: T,
    /// An earlier sync of it failed: the store must repair it, not just sync it again.
    pub failed_before: bool,
}

pub struct PendingSync<T> {
    state: Mutex<State<T>>,
    finished: Condvar,
}

struct State<T> {
    /// Sequence number of the next write.
    next: u64,
    /// Written and not yet taken by a sync, with the sequence number of the latest write.
    pending: BTreeMap<T, u64>,
    /// Items whose sync failed: the sequence number of the write it held, and the error.
    failed: BTreeMap<T, (u64, Failure)>,
    /// A sync is running.
    running: bool,
    /// Items forgotten while a sync ran: its outcome for them is not recorded.
    forgotten: std::collections::BTreeSet<T>,
    /// Every write numbered below this was taken by a sync that has finished.
    covered: u64,
}

impl<T: Ord + Clone> Default for PendingSync<T> {
    fn default() -> Self {
        PendingSync {
            state: Mutex::new(State {
                next: 0,
                pending: BTreeMap::new(),
                failed: BTreeMap::new(),
                running: false,
                forgotten: std::collections::BTreeSet::new(),
                covered: 0,
            }),
            finished: Condvar::new(),
        }
    }
}

impl<T: Ord + Clone> PendingSync<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `item` was written: the next sync makes it durable.
    pub fn written(&self, item: T) {
        let mut st = self.lock();
        let seq = st.next;
        st.next += 1;
        st.pending.insert(item, seq);
    }

    /// `item` needs no sync any more (deleted, or its content is durable elsewhere).
    pub fn forget(&self, item: &T) {
        let mut st = self.lock();
        st.pending.remove(item);
        st.failed.remove(item);
        if st.running {
            st.forgotten.insert(item.clone());
        }
    }

    /// Whether an earlier sync of `item` failed and no sync has repaired it since.
    pub fn is_failed(&self, item: &T) -> bool {
        self.lock().failed.contains_key(item)
    }

    /// Makes everything written before this call durable with `sync_all`, which gets the
    /// items to sync and returns those it could not, with the error. Returns the first failure
    /// of an item written before this call (now or in an earlier sync), unless repaired since,
    /// with the item.
    pub fn sync(
        &self,
        sync_all: impl FnOnce(&[ToSync<T>]) -> Vec<(T, std::io::Error)>,
    ) -> Result<(), (T, Failure)> {
        let mut st = self.lock();
        let mine = st.next;
        let mut sync_all = Some(sync_all);
        loop {
            let needed = st.covered < mine || st.failed.values().any(|(seq, _)| *seq < mine);
            if !needed {
                break;
            }
            if st.running {
                st = self.finished.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let Some(sync_all) = sync_all.take() else {
                break; // ours ran; what failed in it is reported below
            };
            st.running = true;
            let upto = st.next;
            let mut batch: BTreeMap<T, (u64, bool)> = std::mem::take(&mut st.pending)
                .into_iter()
                .map(|(item, seq)| (item, (seq, false)))
                .collect();
            for (item, (seq, _)) in &st.failed {
                batch.insert(item.clone(), (*seq, true));
            }
            drop(st);
            let items: Vec<ToSync<T>> = batch
                .iter()
                .map(|(item, &(_, failed_before))| ToSync {
                    item: item.clone(),
                    failed_before,
                })
                .collect();
            // a panic in `sync_all` must not leave every later sync waiting
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sync_all(&items)));
            st = self.lock();
            let failures: BTreeMap<T, Failure> = match outcome {
                Ok(f) => f.into_iter().map(|(t, e)| (t, Failure::from(&e))).collect(),
                Err(_) => items
                    .iter()
                    .map(|t| {
                        let e = std::io::Error::other("the sync panicked");
                        (t.item.clone(), Failure::from(&e))
                    })
                    .collect(),
            };
            let forgotten = std::mem::take(&mut st.forgotten);
            for (item, (seq, failed_before)) in batch {
                if forgotten.contains(&item) {
                    continue; // gone while it was synced: nothing to report, ever
                }
                match failures.get(&item) {
                    Some(err) => {
                        let first = st.failed.get(&item).map_or(seq, |(s, _)| *s);
                        st.failed.insert(item, (first.min(seq), err.clone()));
                    }
                    None if failed_before => drop(st.failed.remove(&item)),
                    None => {}
                }
            }
            st.covered = st.covered.max(upto);
            st.running = false;
            self.finished.notify_all();
        }
        match st.failed.iter().find(|(_, (seq, _))| *seq < mine) {
            Some((item, (_, err))) => Err((item.clone(), err.clone())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    fn eio() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EIO)
    }

    #[test]
    fn a_sync_waits_for_the_one_running_with_its_writes() {
        let p = Arc::new(PendingSync::<u32>::default());
        p.written(1);
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let first = {
            let p = p.clone();
            std::thread::spawn(move || {
                p.sync(|items| {
                    started_tx.send(items.to_vec()).unwrap();
                    release_rx.recv().unwrap();
                    vec![]
                })
            })
        };
        assert_eq!(started.recv().unwrap()[0].item, 1);
        // item 1 is being synced by the first caller; a second caller depends on it too
        let (done_tx, done) = mpsc::channel();
        let second = {
            let p = p.clone();
            std::thread::spawn(move || {
                let r = p.sync(|items| {
                    assert!(items.is_empty(), "nothing left: {items:?}");
                    vec![]
                });
                done_tx.send(()).unwrap();
                r
            })
        };
        assert!(
            done.recv_timeout(Duration::from_millis(300)).is_err(),
            "the second sync returned while the first still held its write"
        );
        release.send(()).unwrap();
        first.join().unwrap().unwrap();
        second.join().unwrap().unwrap();
    }

    #[test]
    fn a_failure_is_reported_to_every_later_sync_until_repaired() {
        let p = PendingSync::<u32>::default();
        p.written(1);
        p.written(2);
        let err = p.sync(|_| vec![(1, eio())]).unwrap_err();
        assert_eq!(err.0, 1);
        assert_eq!(err.1.to_io_error().raw_os_error(), Some(libc::EIO));
        // nothing new written: a sync that only fsyncs again must not succeed for item 1
        let mut seen = Vec::new();
        let again = p.sync(|items| {
            seen = items.to_vec();
            vec![(1, eio())]
        });
        assert_eq!(again.unwrap_err().0, 1);
        assert_eq!(
            seen,
            vec![ToSync {
                item: 1,
                failed_before: true
            }],
            "the failed item is handed back for repair"
        );
        assert!(p.is_failed(&1));
        p.sync(|_| vec![]).unwrap();
        assert!(!p.is_failed(&1), "repaired");
        p.sync(|items| {
            assert!(items.is_empty());
            vec![]
        })
        .unwrap();
    }

    #[test]
    fn an_item_forgotten_while_its_sync_fails_is_not_reported_afterwards() {
        let p = PendingSync::<u32>::default();
        p.written(3);
        let r = p.sync(|_| {
            p.forget(&3); // its segment went while the sync ran
            vec![(3, eio())]
        });
        assert!(r.is_ok() || r.is_err(), "either is fair for this sync");
        p.sync(|items| {
            assert!(items.is_empty(), "{items:?}");
            vec![]
        })
        .unwrap();
        assert!(!p.is_failed(&3));
    }

    #[test]
    fn a_forgotten_failure_stops_failing_syncs() {
        let p = PendingSync::<u32>::default();
        p.written(7);
        assert!(p.sync(|_| vec![(7, eio())]).is_err());
        p.forget(&7);
        p.sync(|items| {
            assert!(items.is_empty());
            vec![]
        })
        .unwrap();
    }
}
