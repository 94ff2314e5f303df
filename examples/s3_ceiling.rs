//! A plain S3 client's throughput against a server: PUTs `MB` MiB as objects of 8 MiB (the
//! block size of a volume with blocks in S3), `CONCURRENCY` requests at a time, or GETs
//! them back the same way; no hashing, no checks. The ceiling of Graviton's sequential rows in
//! `bench/bench-s3.sh`. Credentials and region come from the environment.
//!
//! usage: s3_ceiling ENDPOINT BUCKET MB CONCURRENCY put|get   → MiB/s

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use tokio::sync::Semaphore;

const OBJECT: usize = 8 << 20;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, bucket, mb, concurrency, mode] = args.as_slice() else {
        panic!("usage: s3_ceiling ENDPOINT BUCKET MB CONCURRENCY put|get");
    };
    let objects = mb.parse::<usize>().expect("MB is a number") / (OBJECT >> 20);
    let slots = Arc::new(Semaphore::new(concurrency.parse().expect("a number")));
    let conf = aws_config::load_from_env().await;
    let conf = aws_sdk_s3::config::Builder::from(&conf)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);
    let body = bytes::Bytes::from((0..OBJECT).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>());

    let run = async |get: bool| {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..objects {
            let permit = slots.clone().acquire_owned().await.expect("open");
            let (client, bucket, body) = (client.clone(), bucket.clone(), body.clone());
            let key = format!("ceiling/{i}");
            tasks.push(tokio::spawn(async move {
                if get {
                    let got = client.get_object().bucket(bucket).key(key).send().await;
                    let data = got.expect("GET").body.collect().await.expect("body");
                    assert_eq!(data.into_bytes().len(), OBJECT);
                } else {
                    let put = client.put_object().bucket(bucket).key(key);
                    put.body(ByteStream::from(body)).send().await.expect("PUT");
                }
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.expect("request");
        }
        (objects * (OBJECT >> 20)) as f64 / start.elapsed().as_secs_f64()
    };
    println!("{:.1}", run(mode == "get").await);
}
