//! The daemon's memory budget (configuration.md, "Memory"): its peak resident memory stays
//! within `cache_mb` + `dirty_mb` plus a fixed overhead, under the writers that grow per-span
//! and per-extent state.

mod common;

use common::mounted::{Mounted, ok, run};
use std::path::Path;

/// What the daemon may hold beyond its two caps, at its peak (configuration.md).
const OVERHEAD_MIB: u64 = 112;

/// The daemon's peak resident memory so far (VmHWM), in MiB.
fn peak_mib(m: &Mounted) -> u64 {
    let pid = m.daemon_pid().expect("the daemon wrote its pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    kib / 1024
}

/// Runs the python `script` on a mount with `cache_mb=16,dirty_mb=16` (the file is
/// `sys.argv[1]`; `read_back()` reads it whole, returning its length and its count of `x`),
/// then checks the daemon's peak resident memory against the budget.
fn stays_within_the_budget(script: &str) {
    let m = Mounted::new(&[], "cache_mb=16,dirty_mb=16");
    let f = m.path("f");
    let script = format!(
        "import os, random, sys\n\
         def read_back():\n\
         \x20   fd = os.open(sys.argv[1], os.O_RDONLY)\n\
         \x20   n = xs = 0\n\
         \x20   while b := os.read(fd, 1 << 20):\n\
         \x20       n, xs = n + len(b), xs + b.count(b'x')\n\
         \x20   os.close(fd)\n\
         \x20   return n, xs\n\
         {script}"
    );
    ok(
        run(
            "python3",
            &["-c", &script, f.to_str().unwrap()],
            Path::new("/"),
        ),
        "the writer",
    );
    let peak = peak_mib(&m);
    eprintln!("peak resident memory: {peak} MiB");
    assert!(
        peak <= 16 + 16 + OVERHEAD_MIB,
        "peak {peak} MiB over cache_mb + dirty_mb = 32 MiB and the {OVERHEAD_MIB} MiB overhead"
    );
}

/// One-byte writes at random offsets of a 4 GiB file: each is a span while buffered and an
/// extent once committed, the case that grows per-span and per-extent state. The file is
/// then read back whole.
#[test]
fn a_writer_of_scattered_bytes_stays_within_the_budget() {
    stays_within_the_budget(
        "fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)\n\
         rng = random.Random(1)\n\
         for _ in range(300000):\n\
         \x20   os.pwrite(fd, b'x', rng.randrange(4 << 30))\n\
         os.close(fd)\n\
         n, xs = read_back()\n\
         assert xs > 290000, xs\n",
    );
}

/// 4 KiB writes at random offsets of a 256 MiB file, fsync'd every 2048 (8 MiB), then read
/// back: the updates fragment the file's extent map and replace its blocks again and again.
#[test]
fn random_updates_stay_within_the_budget() {
    stays_within_the_budget(
        "size = 256 << 20\n\
         fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o644)\n\
         for off in range(0, size, 1 << 20):\n\
         \x20   os.pwrite(fd, os.urandom(1 << 20), off)\n\
         os.fsync(fd)\n\
         rng = random.Random(2)\n\
         block = os.urandom(4096)\n\
         for i in range(60000):\n\
         \x20   os.pwrite(fd, block, rng.randrange(size // 4096) * 4096)\n\
         \x20   if i % 2048 == 2047: os.fsync(fd)\n\
         os.close(fd)\n\
         n, xs = read_back()\n\
         assert n == size, n\n",
    );
}
