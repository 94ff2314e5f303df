//! Whole-tree operations over the metadata port: copies of a tree made of metadata only
//! (`graviton clone`, snapshots), and the removal of trees no entry names.
//!
//! A tree is copied into new inodes that no entry names yet: a *detached* tree, recorded in the
//! key-value store (`detached.rs`) before its first inode is written. The copy reads one
//! consistent view of the source and writes in transactions of bounded size, so writers are
//! never held up for longer than one of them; a last transaction links the copy's root in
//! place, so no mount ever sees part of a tree. A copy cut short (a crash, an error) leaves a
//! recorded detached tree, which is removed in the same bounded steps (`detached::sweep`).
//! Removing a snapshot detaches its root in one transaction and removes the tree the same way.

pub mod copy;
pub mod detached;
pub mod snapshot;

/// Entries read from a directory at once.
const PAGE: usize = 1000;
