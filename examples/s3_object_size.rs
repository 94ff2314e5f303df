//! How a block's size changes what sequential reads from S3 cost: stores 256 MiB as blocks of
//! `MB` MiB (default 4), or reads them back with N threads through the S3 store (every block
//! verified), printing MiB/s. `bench/probe-object-size.sh` runs it against s3rver and reports
//! the server's CPU time too.
//!
//! usage: MB=16 s3_object_size STORE_URL put|get THREADS

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use graviton::domain::key::{BlockKey, HashAlgo};
use graviton::store::BlockStore;
use graviton::store::s3::S3BlockStore;

const TOTAL: usize = 256 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, mode, threads] = args.as_slice() else {
        panic!("usage: MB=N s3_object_size STORE_URL put|get THREADS");
    };
    let threads: usize = threads.parse().expect("THREADS is a number");
    let size = std::env::var("MB").map_or(4, |v| v.parse().expect("MB is a number")) << 20;
    let keys_file = std::env::temp_dir().join(format!("s3_object_size-{}m.keys", size >> 20));
    let store = S3BlockStore::open(url).expect("store URL");
    if mode == "put" {
        let mut keys = String::new();
        for _ in 0..TOTAL / size {
            let data: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
            let key = BlockKey::for_data(HashAlgo::Blake3, &data);
            store.put(&key, &data).expect("put");
            keys.push_str(&format!("{key}\n"));
        }
        std::fs::write(&keys_file, keys).expect("writing the keys");
        return;
    }
    let keys: Vec<BlockKey> = std::fs::read_to_string(&keys_file)
        .expect("keys of an earlier put")
        .lines()
        .map(|l| l.parse().expect("a block key"))
        .collect();
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some(key) = keys.get(next.fetch_add(1, Ordering::Relaxed)) {
                    assert_eq!(store.get(key).expect("get").len(), size);
                }
            });
        }
    });
    println!("{:.0} MiB/s", 256.0 / start.elapsed().as_secs_f64());
}
