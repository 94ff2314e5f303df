//! Seeded random operations against the filesystem core and an in-memory reference model;
//! every read and every size is compared. proptest shrinks a failure to a minimal sequence and
//! records its seed in `proptest-regressions/`, which is committed and replayed first.

mod common;

use std::collections::HashMap;

use common::stacks::{Remountable, Stack, StackVolume};
use common::{CTX, small_cfg};
use graviton::meta::ROOT_INO;
use graviton::vfs::{FallocateMode, Fs, FsError, OpenFlags, RenameFlags};
use proptest::prelude::*;

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Write {
        obj: u8,
        off: u32,
        len: u16,
        seed: u8,
    },
    Append {
        obj: u8,
        len: u16,
        seed: u8,
    },
    Truncate {
        obj: u8,
        size: u32,
    },
    Punch {
        obj: u8,
        off: u32,
        len: u32,
    },
    Copy {
        src: u8,
        dst: u8,
        off_in: u32,
        off_out: u32,
        len: u32,
    },
    Rename {
        from: u8,
        to: u8,
    },
    Link {
        from: u8,
        to: u8,
    },
    Unlink(u8),
    Fsync(u8),
    Read {
        obj: u8,
        off: u32,
        len: u32,
    },
    Remount,
}

const SPAN: u32 = 200_000;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..4u8).prop_map(Op::Create),
        6 => (any::<u8>(), 0..SPAN, 1..20_000u16, any::<u8>()).prop_map(|(obj, off, len, seed)| Op::Write { obj, off, len, seed }),
        2 => (any::<u8>(), 1..20_000u16, any::<u8>()).prop_map(|(obj, len, seed)| Op::Append { obj, len, seed }),
        2 => (any::<u8>(), 0..SPAN).prop_map(|(obj, size)| Op::Truncate { obj, size }),
        2 => (any::<u8>(), 0..SPAN, 1..50_000u32).prop_map(|(obj, off, len)| Op::Punch { obj, off, len }),
        2 => (any::<u8>(), any::<u8>(), 0..SPAN, 0..SPAN, 1..60_000u32)
            .prop_map(|(src, dst, off_in, off_out, len)| Op::Copy { src, dst, off_in, off_out, len }),
        1 => (0..4u8, 0..4u8).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => (0..4u8, 0..4u8).prop_map(|(from, to)| Op::Link { from, to }),
        1 => (0..4u8).prop_map(Op::Unlink),
        1 => any::<u8>().prop_map(Op::Fsync),
        4 => (any::<u8>(), 0..SPAN, 1..70_000u32).prop_map(|(obj, off, len)| Op::Read { obj, off, len }),
        1 => Just(Op::Remount),
    ]
}

fn content(seed: u8, off: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            seed.wrapping_mul(31)
                .wrapping_add(((off as usize + i) / 7) as u8)
        })
        .collect()
}

/// One file of the model: its bytes, the handle held on it, whether it still has names.
struct Obj {
    data: Vec<u8>,
    fh: u64,
    ino: u64,
}

struct World {
    fs: Option<Fs>,
    objs: Vec<Obj>,
    names: HashMap<&'static str, usize>, // name → index in objs
}

impl World {
    fn fs(&self) -> &Fs {
        self.fs.as_ref().unwrap()
    }

    fn pick(&self, i: u8) -> Option<usize> {
        (!self.objs.is_empty()).then(|| i as usize % self.objs.len())
    }

    fn check_sizes(&self) {
        for (name, &o) in &self.names {
            let attr = self.fs().lookup(ROOT_INO, name.as_bytes()).expect("lookup");
            assert_eq!(attr.ino, self.objs[o].ino, "{name} names the wrong inode");
            assert_eq!(attr.size, self.objs[o].data.len() as u64, "size of {name}");
            let links = self.names.values().filter(|&&x| x == o).count() as u32;
            assert_eq!(attr.nlink, links, "nlink of {name}");
        }
    }
}

fn model_cfg() -> graviton::vfs::FsConfig {
    let mut cfg = small_cfg();
    // small limits so pressure flushes and background coalescing happen in short runs
    cfg.file_flush_threshold = 48 << 10;
    cfg.dirty_limit = 96 << 10;
    cfg.coalesce_max_extents = 24;
    cfg.coalesce_min_avg_extent = 2048;
    cfg.coalesce_interval = std::time::Duration::ZERO;
    cfg
}

fn run(ops: Vec<Op>) {
    run_on(&StackVolume::new(Stack::Embedded, model_cfg()), ops)
}

fn run_on(vol: &dyn Remountable, ops: Vec<Op>) {
    let mut w = World {
        fs: Some(vol.mount()),
        objs: Vec::new(),
        names: HashMap::new(),
    };
    for op in ops {
        match op {
            Op::Create(n) => {
                let name = NAMES[n as usize];
                let r = w
                    .fs()
                    .create(CTX, ROOT_INO, name.as_bytes(), 0o644, OpenFlags::RW);
                if w.names.contains_key(name) {
                    assert!(
                        matches!(r, Err(FsError::Exists)),
                        "create over {name}: {r:?}"
                    );
                } else {
                    let (inode, fh) = r.expect("create");
                    w.objs.push(Obj {
                        data: Vec::new(),
                        fh,
                        ino: inode.ino,
                    });
                    w.names.insert(name, w.objs.len() - 1);
                }
            }
            Op::Write {
                obj,
                off,
                len,
                seed,
            } => {
                let Some(o) = w.pick(obj) else { continue };
                let data = content(seed, off as u64, len as usize);
                w.fs()
                    .write(w.objs[o].fh, off as u64, &data)
                    .expect("write");
                let m = &mut w.objs[o].data;
                let end = off as usize + data.len();
                if m.len() < end {
                    m.resize(end, 0);
                }
                m[off as usize..end].copy_from_slice(&data);
            }
            Op::Append { obj, len, seed } => {
                let Some(o) = w.pick(obj) else { continue };
                let off = w.objs[o].data.len() as u64;
                let data = content(seed, off, len as usize);
                w.fs().write(w.objs[o].fh, off, &data).expect("append");
                w.objs[o].data.extend_from_slice(&data);
            }
            Op::Truncate { obj, size } => {
                let Some(o) = w.pick(obj) else { continue };
                w.fs()
                    .truncate(w.objs[o].ino, size as u64)
                    .expect("truncate");
                w.objs[o].data.resize(size as usize, 0);
            }
            Op::Punch { obj, off, len } => {
                let Some(o) = w.pick(obj) else { continue };
                let mode = FallocateMode {
                    keep_size: true,
                    punch_hole: true,
                    zero_range: false,
                };
                w.fs()
                    .fallocate(w.objs[o].ino, off as u64, len as u64, mode)
                    .expect("punch");
                let m = &mut w.objs[o].data;
                let (a, b) = (
                    (off as usize).min(m.len()),
                    (off as usize + len as usize).min(m.len()),
                );
                m[a..b].fill(0);
            }
            Op::Copy {
                src,
                dst,
                off_in,
                off_out,
                len,
            } => {
                let (Some(s), Some(d)) = (w.pick(src), w.pick(dst)) else {
                    continue;
                };
                let (off_in, off_out, len) = (off_in as u64, off_out as u64, len as u64);
                let r = w
                    .fs()
                    .copy_file_range(w.objs[s].fh, off_in, w.objs[d].fh, off_out, len);
                if s == d && off_in < off_out + len && off_out < off_in + len {
                    assert!(
                        matches!(r, Err(FsError::Invalid)),
                        "overlapping copy: {r:?}"
                    );
                    continue;
                }
                let n = r.expect("copy_file_range");
                let src_len = w.objs[s].data.len() as u64;
                let want = if off_in >= src_len {
                    0
                } else {
                    len.min(src_len - off_in)
                };
                assert_eq!(n, want, "bytes copied");
                if n == 0 {
                    continue;
                }
                let bytes = w.objs[s].data[off_in as usize..(off_in + n) as usize].to_vec();
                let m = &mut w.objs[d].data;
                if m.len() < (off_out + n) as usize {
                    m.resize((off_out + n) as usize, 0);
                }
                m[off_out as usize..(off_out + n) as usize].copy_from_slice(&bytes);
            }
            Op::Rename { from, to } => {
                let (f, t) = (NAMES[from as usize], NAMES[to as usize]);
                let r = w.fs().rename(
                    ROOT_INO,
                    f.as_bytes(),
                    ROOT_INO,
                    t.as_bytes(),
                    RenameFlags::default(),
                );
                match w.names.get(f).copied() {
                    None => assert!(
                        matches!(r, Err(FsError::NotFound)),
                        "rename of missing {f}: {r:?}"
                    ),
                    Some(o) => {
                        r.expect("rename");
                        if w.names.get(t) != Some(&o) {
                            w.names.remove(f);
                            w.names.insert(t, o);
                        }
                    }
                }
            }
            Op::Link { from, to } => {
                let (f, t) = (NAMES[from as usize], NAMES[to as usize]);
                let Some(o) = w.names.get(f).copied() else {
                    continue;
                };
                let r = w.fs().link(w.objs[o].ino, ROOT_INO, t.as_bytes());
                if w.names.contains_key(t) {
                    assert!(matches!(r, Err(FsError::Exists)), "link over {t}: {r:?}");
                } else {
                    r.expect("link");
                    w.names.insert(t, o);
                }
            }
            Op::Unlink(n) => {
                let name = NAMES[n as usize];
                let r = w.fs().unlink(ROOT_INO, name.as_bytes());
                match w.names.remove(name) {
                    None => assert!(
                        matches!(r, Err(FsError::NotFound)),
                        "unlink of missing {name}: {r:?}"
                    ),
                    Some(_) => r.expect("unlink"),
                }
            }
            Op::Fsync(obj) => {
                let Some(o) = w.pick(obj) else { continue };
                w.fs().fsync(w.objs[o].fh).expect("fsync");
            }
            Op::Read { obj, off, len } => {
                let Some(o) = w.pick(obj) else { continue };
                let got = w.fs().read(w.objs[o].fh, off as u64, len).expect("read");
                let m = &w.objs[o].data;
                let (a, b) = (
                    (off as usize).min(m.len()),
                    (off as usize + len as usize).min(m.len()),
                );
                assert_eq!(
                    got.len(),
                    b - a,
                    "read length at {off}+{len} of a {}-byte file",
                    m.len()
                );
                assert!(got == m[a..b], "bytes differ at {off}+{len}");
            }
            Op::Remount => {
                for o in &w.objs {
                    w.fs().release(o.fh).expect("release");
                }
                w.fs.take();
                w.fs = Some(vol.mount());
                // files without names were reclaimed; the others are opened again
                let live: Vec<usize> = {
                    let mut v: Vec<usize> = w.names.values().copied().collect();
                    v.sort();
                    v.dedup();
                    v
                };
                let mut objs = Vec::new();
                let mut renumber = HashMap::new();
                for o in live {
                    let old = &w.objs[o];
                    let fh = w.fs().open(old.ino, OpenFlags::RW).expect("reopen");
                    renumber.insert(o, objs.len());
                    objs.push(Obj {
                        data: old.data.clone(),
                        fh,
                        ino: old.ino,
                    });
                }
                for idx in w.names.values_mut() {
                    *idx = renumber[idx];
                }
                w.objs = objs;
            }
        }
        w.check_sizes();
    }
    // everything reads back in full at the end, after background work settles
    w.fs().wait_background();
    for o in &w.objs {
        let got = common::read_all(w.fs(), o.fh, 0, o.data.len() as u64 + 10);
        assert!(got == o.data, "final content of inode {}", o.ino);
    }
}

proptest! {
    // PROPTEST_CASES=2000 for a longer hunt
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
    ))]
    #[test]
    fn core_matches_reference_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

proptest! {
    // The same model over the other production stacks (fewer cases: each formats a fresh
    // volume in a scratch database or S3 prefix).
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(8)
    ))]
    #[test]
    fn core_over_replicated_blocks_matches_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        if !graviton_testkit::servers_present() {
            return Ok(());
        }
        run_on(&StackVolume::new(Stack::EmbeddedReplicated, model_cfg()), ops);
    }
    #[test]
    fn core_over_postgres_matches_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        if !graviton_testkit::servers_present() {
            return Ok(());
        }
        run_on(&StackVolume::new(Stack::Postgres, model_cfg()), ops);
    }
    #[test]
    fn core_over_postgres_and_s3_matches_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        if !graviton_testkit::servers_present() {
            return Ok(());
        }
        run_on(&StackVolume::new(Stack::PostgresS3, model_cfg()), ops);
    }
    #[test]
    fn core_over_writeback_layers_matches_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        if !graviton_testkit::servers_present() {
            return Ok(());
        }
        run_on(&StackVolume::new(Stack::PostgresS3Writeback, model_cfg()), ops);
    }
    #[test]
    fn core_over_sealed_blocks_matches_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        if !graviton_testkit::servers_present() {
            return Ok(());
        }
        run_on(&StackVolume::new(Stack::Sealed, model_cfg()), ops);
    }
}

/// Cases found by the property test, kept as plain regression tests.
#[test]
fn regression_write_then_shrink_then_copy_past_eof() {
    run(vec![
        Op::Create(0),
        Op::Write {
            obj: 0,
            off: 0,
            len: 10_000,
            seed: 1,
        },
        Op::Truncate { obj: 0, size: 100 },
        Op::Copy {
            src: 0,
            dst: 0,
            off_in: 0,
            off_out: 150_000,
            len: 100,
        },
        Op::Read {
            obj: 0,
            off: 0,
            len: 200_000,
        },
        Op::Remount,
        Op::Read {
            obj: 0,
            off: 149_990,
            len: 200,
        },
    ]);
}

#[test]
fn regression_unlink_while_open_then_remount() {
    run(vec![
        Op::Create(1),
        Op::Write {
            obj: 0,
            off: 5,
            len: 3000,
            seed: 9,
        },
        Op::Unlink(1),
        Op::Write {
            obj: 0,
            off: 100_000,
            len: 100,
            seed: 3,
        },
        Op::Read {
            obj: 0,
            off: 0,
            len: 200_000,
        },
        Op::Remount,
        Op::Create(1),
        Op::Read {
            obj: 0,
            off: 0,
            len: 10,
        },
    ]);
}
