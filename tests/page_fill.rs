//! Page fill through a real mount: a read that fetches a block hands the rest of the block to
//! the kernel's page cache, and what the kernel then serves is never older than a write or a
//! truncate of this mount.

mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::mounted::Mounted;
use common::random_bytes;

const PAGE: usize = 4096;
const BLOCK: usize = 1 << 20; // the embedded default

/// Drops the file's clean pages from the kernel's page cache.
fn drop_pages(path: &Path) {
    let f = File::open(path).unwrap();
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "fadvise");
}

/// How many pages of `range` the kernel's page cache holds.
fn resident_pages(path: &Path, range: std::ops::Range<usize>) -> usize {
    let f = File::open(path).unwrap();
    let len = range.end - range.start;
    // SAFETY: a read-only shared mapping of an open file, unmapped below; mincore only reads
    // the page tables' view of the page cache.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            range.start as libc::off_t,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap");
        let mut vec = vec![0u8; len.div_ceil(PAGE)];
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        libc::munmap(addr, len);
        assert_eq!(rc, 0, "mincore");
        vec.iter().filter(|&&v| v & 1 == 1).count()
    }
}

#[test]
fn a_4k_read_puts_its_whole_block_in_the_page_cache() {
    let m = Mounted::new(&[], "");
    let path = m.path("f");
    let data = random_bytes(5, 4 * BLOCK);
    std::fs::write(&path, &data).unwrap();
    drop_pages(&path);
    assert_eq!(resident_pages(&path, BLOCK..2 * BLOCK), 0);

    let f = File::open(&path).unwrap();
    let mut page = vec![0u8; PAGE];
    f.read_exact_at(&mut page, (BLOCK + 2 * PAGE) as u64)
        .unwrap();
    assert!(page == data[BLOCK + 2 * PAGE..BLOCK + 3 * PAGE]);
    let t = Instant::now();
    let mut resident = 0;
    while t.elapsed() < Duration::from_secs(10) {
        resident = resident_pages(&path, BLOCK..2 * BLOCK);
        if resident == BLOCK / PAGE {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("after one 4 KiB read: {resident} of the block's 256 pages cached");
    assert_eq!(
        resident,
        BLOCK / PAGE,
        "the whole block reached the page cache"
    );
    // and they hold the file's bytes
    let mut block = vec![0u8; BLOCK];
    f.read_exact_at(&mut block, BLOCK as u64).unwrap();
    assert!(block == data[BLOCK..2 * BLOCK]);
}

/// Each round: a read-only reader's random read starts a fill while another handle overwrites
/// the block, or while the file is truncated by path. The reader must then see exactly the
/// new bytes and size, also a little later (after any fill queued before the change).
#[test]
fn fills_never_bring_back_bytes_older_than_a_write_or_truncate() {
    let m = Mounted::new(&[], "");
    for round in 0..30u64 {
        let path = m.path(&format!("f{round}"));
        let old = random_bytes(round * 2, 2 * BLOCK);
        let new = random_bytes(round * 2 + 1, 2 * BLOCK);
        std::fs::write(&path, &old).unwrap();
        drop_pages(&path);
        let reader = File::open(&path).unwrap();
        let at = (round as usize * 7919 % (2 * BLOCK / PAGE)) * PAGE;
        let mut page = vec![0u8; PAGE];
        let truncate = round % 3 == 2;
        std::thread::scope(|s| {
            // short when the truncate came first
            s.spawn(|| reader.read_at(&mut page, at as u64).unwrap());
            if truncate {
                // by path: no writable handle
                let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
                // SAFETY: a NUL-terminated path.
                assert_eq!(unsafe { libc::truncate(c.as_ptr(), 1000) }, 0, "truncate");
            } else {
                let w = OpenOptions::new().write(true).open(&path).unwrap();
                w.write_all_at(&new, 0).unwrap();
            }
        });
        // a read racing a write may see the page torn between the two, old bytes then new or
        // the other way round: Linux reads a cached page without its lock while a write copies
        // into it, on ext4 as here. Any other byte is foreign.
        let (o, n) = (&old[at..at + PAGE], &new[at..at + PAGE]);
        let torn = |a: &[u8], b: &[u8]| {
            let k = (0..PAGE).find(|&i| page[i] != a[i]).unwrap_or(PAGE);
            page[k..] == b[k..]
        };
        if !(torn(o, n) || torn(n, o) || truncate) {
            let o: Vec<usize> = (0..PAGE).filter(|&i| page[i] == old[at + i]).collect();
            let n: Vec<usize> = (0..PAGE).filter(|&i| page[i] == new[at + i]).collect();
            let z = page.iter().filter(|&&b| b == 0).count();
            let first_new = (0..PAGE).find(|&i| page[i] == new[at + i] && page[i] != old[at + i]);
            let last_old = (0..PAGE)
                .rev()
                .find(|&i| page[i] == old[at + i] && page[i] != new[at + i]);
            panic!(
                "round {round} at {at}: foreign bytes: {} match old, {} match new, {z} zero, first new-only {first_new:?}, last old-only {last_old:?}",
                o.len(),
                n.len()
            );
        }
        let (want, size) = match truncate {
            true => (&old[..1000], 1000),
            false => (&new[..], new.len()),
        };
        for pause in [0, 50] {
            std::thread::sleep(Duration::from_millis(pause));
            let got_size = std::fs::metadata(&path).unwrap().len() as usize;
            assert_eq!(got_size, size, "round {round}: size after {pause} ms");
            let mut got = vec![0u8; size];
            reader.read_exact_at(&mut got, 0).unwrap();
            assert!(
                got == want,
                "round {round}: the reader saw old bytes {pause} ms after the {}",
                if truncate { "truncate" } else { "write" }
            );
        }
    }
}
