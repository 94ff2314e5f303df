//! Both ports' conformance suites over every production stack, as a mount builds it: the
//! metadata suite over the layers a mount puts on its engine (metadata cache, write-behind
//! journal), the block suite over the layers on its store (meter, retries, tiers, replicas,
//! disk cache, write-back staging). The reference-model test (`model.rs`) and the namespace
//! tests (`namespace.rs`) run over the same stacks.

mod common;

use common::small_cfg;
use common::stacks::{Stack, StackVolume};
use graviton_testkit::{block_conformance, meta_conformance};

fn conformance(stack: Stack) {
    if stack.needs_servers() {
        graviton_testkit::needs_servers!();
    }
    let vol = StackVolume::new(stack, small_cfg());
    let opened = vol.open();
    block_conformance::run_all(opened.store.as_ref());
    block_conformance::concurrent_puts_are_safe(opened.store.clone());
    meta_conformance::run_all(opened.meta.clone());
    opened
        .store
        .drain(std::time::Duration::from_secs(60))
        .expect("drain");
    opened.meta.end_session();
}

/// The stack's layers, outermost first, as `graviton status` shows them.
fn described(stack: Stack) -> (String, String) {
    let vol = StackVolume::new(stack, small_cfg());
    let opened = vol.open();
    let d = (opened.stack.metadata.clone(), opened.stack.blocks.clone());
    opened.meta.end_session();
    d
}

#[test]
fn embedded() {
    conformance(Stack::Embedded);
}

#[test]
fn embedded_replicated() {
    conformance(Stack::EmbeddedReplicated);
}

#[test]
fn postgres() {
    conformance(Stack::Postgres);
}

#[test]
fn postgres_s3() {
    conformance(Stack::PostgresS3);
}

#[test]
fn postgres_s3_writeback() {
    conformance(Stack::PostgresS3Writeback);
}

#[test]
fn sealed() {
    conformance(Stack::Sealed);
}

/// The suites above ran over the layers they name.
#[test]
fn each_stack_has_the_layers_of_its_kind() {
    graviton_testkit::needs_servers!();
    let expect: [(Stack, &[&str], &[&str]); 6] = [
        (
            Stack::Embedded,
            &["RocksDB"],
            &["tiered", "metered → RocksDB", "metered → files"],
        ),
        (
            Stack::EmbeddedReplicated,
            &["RocksDB"],
            &["replicated", "retrying", "metered → S3", "metered → files"],
        ),
        (
            Stack::Postgres,
            &["metadata cache", "PostgreSQL"],
            &["retrying", "metered → PostgreSQL"],
        ),
        (
            Stack::PostgresS3,
            &["metadata cache", "PostgreSQL"],
            &["disk cache", "retrying", "metered → S3"],
        ),
        (
            Stack::PostgresS3Writeback,
            &["write-behind journal", "metadata cache", "PostgreSQL"],
            &[
                "write-back staging",
                "disk cache",
                "retrying",
                "metered → S3",
            ],
        ),
        (
            Stack::Sealed,
            &["metadata cache", "PostgreSQL"],
            &[
                "disk cache",
                "replicated",
                "frames (zstd:3, sealed) → retrying",
                "metered → S3",
                "frames (zstd:3, sealed) → metered → files",
            ],
        ),
    ];
    for (stack, meta, blocks) in expect {
        let (m, b) = described(stack);
        for layer in meta {
            assert!(m.contains(layer), "{stack:?} metadata: {m}");
        }
        for layer in blocks {
            assert!(b.contains(layer), "{stack:?} blocks: {b}");
        }
    }
}
