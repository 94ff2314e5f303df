//! Tests of the S3 store: URL parsing, and against the S3-compatible server `scripts/test.sh`
//! starts.

use super::url::{base64_encode, md5_digest};
use super::*;

#[cfg(test)]
mod s3_tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_say_why() {
        let u = S3Url::parse(
            "s3://bkt/some/prefix/?endpoint=http://127.0.0.1:9000&region=eu-west-1",
            None,
        )
        .unwrap();
        assert_eq!(u.bucket, "bkt");
        assert_eq!(u.prefix, "some/prefix/");
        assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(u.region, "eu-west-1");
        assert!(u.path_style, "an explicit endpoint defaults to path-style");
        assert_eq!(S3Url::parse("s3://b", None).unwrap().prefix, "");
        assert!(!S3Url::parse("s3://b", None).unwrap().path_style);
        assert_eq!(
            S3Url::parse("s3://b?sse=kms&kms_key_id=k1", None)
                .unwrap()
                .sse,
            Sse::Kms(Some("k1".into()))
        );
        assert_eq!(S3Url::parse("s3://b?sse=s3", None).unwrap().sse, Sse::S3);
        for (bad, says) in [
            ("s3://", "bucket"),
            ("s3://b?colour=red", "colour"),
            ("s3://b?region=", "needs a value"),
            ("s3://b?sse=rot13", "sse"),
            ("s3://b?sse=c", SSE_C_KEY_ENV),
            ("s3://b?path_style=maybe", "path_style"),
            ("http://b", "s3://"),
        ] {
            let err = S3Url::parse(bad, None).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn failures_are_classified() {
        use aws_sdk_s3::config::http::HttpResponse;
        use aws_sdk_s3::error::ErrorMetadata;
        use aws_sdk_s3::operation::put_object::PutObjectError;
        use aws_sdk_s3::primitives::SdkBody;
        let err = |status: u16, code: &str| {
            let e = PutObjectError::generic(ErrorMetadata::builder().code(code).build());
            let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
            SdkError::service_error(e, raw)
        };
        assert_eq!(classify(&err(503, "SlowDown")), Transience::Throttled);
        assert_eq!(
            classify(&err(429, "TooManyRequests")),
            Transience::Throttled
        );
        assert_eq!(classify(&err(500, "InternalError")), Transience::Transient);
        assert_eq!(classify(&err(403, "AccessDenied")), Transience::Permanent);
        assert_eq!(classify(&err(404, "NoSuchBucket")), Transience::Permanent);
        assert_eq!(describe(&err(403, "AccessDenied")), "HTTP 403 AccessDenied");
    }

    #[test]
    fn the_customer_key_never_shows() {
        let key = base64_encode(&[7u8; 32]);
        let u = S3Url::parse("s3://b?sse=c", Some(&key)).unwrap();
        let Sse::Customer { key_md5, .. } = &u.sse else {
            panic!("sse-c expected")
        };
        assert_eq!(key_md5, &base64_encode(&md5_digest(&[7u8; 32])));
        assert!(
            !format!("{u:?}").contains(&key),
            "the key leaked into Debug"
        );
        assert!(
            S3Url::parse("s3://b?sse=c", Some("c2hvcnQ=")).is_err(),
            "a short key is refused"
        );
    }
}

#[cfg(test)]
mod server_tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// A part of a large BLAKE3 block is one ranged GET of the groups that hold it, checked
    /// against the group hashes the object carries: damage elsewhere in the block does not stop
    /// it, damage in it is an error, and an object without group hashes is read whole.
    #[test]
    fn parts_of_large_blocks_are_ranged_gets_checked_against_group_hashes() {
        graviton_testkit::needs_servers!();
        let log = Arc::new(SseHeaders::default());
        let shared = aws_sdk_s3::config::SharedInterceptor::new(LogRef(log.clone()));
        let store = S3BlockStore::build(&graviton_testkit::s3_scratch_url(), Some(shared)).unwrap();
        let mut x = 7u64;
        let data: Vec<u8> = (0..2 << 20)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let key = BlockKey::for_data(HashAlgo::Blake3, &data);
        store.put(&key, &data).unwrap();
        log.0.lock().unwrap().clear();
        assert_eq!(
            store.get_range(&key, 70_000..74_096).unwrap(),
            &data[70_000..74_096]
        );
        let sent = log.0.lock().unwrap().clone();
        let gets: Vec<_> = sent.iter().filter(|(m, _)| m == "GET").collect();
        assert_eq!(gets.len(), 1, "{sent:?}");
        // 64 KiB groups for a 2 MiB block: the second one
        assert_eq!(header(&gets[0].1, "range"), Some("bytes=65536-131071"));

        let root = std::path::PathBuf::from(
            std::env::var("GRAVITON_TEST_S3_ROOT").expect("GRAVITON_TEST_S3_ROOT"),
        );
        let path = root.join(&store.url().bucket).join(store.object(&key));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1_500_000] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            store.get_range(&key, 70_000..74_096).unwrap(),
            &data[70_000..74_096],
            "a group the damage is not in"
        );
        assert!(matches!(
            store.get_range(&key, 1_499_000..1_501_000),
            Err(StoreError::Corrupt(k, _)) if k == key
        ));
        assert!(matches!(store.get(&key), Err(StoreError::Corrupt(..))));

        // stored without group hashes (before they were written): the whole block, verified
        let old = BlockKey::for_data(HashAlgo::Blake3, &data[..1 << 20]);
        store
            .put_object(
                &store.object(&old),
                Some(&old),
                bytes::Bytes::copy_from_slice(&data[..1 << 20]),
                false,
                None,
            )
            .unwrap();
        log.0.lock().unwrap().clear();
        assert_eq!(store.get_range(&old, 10..20).unwrap(), &data[10..20]);
        let sent = log.0.lock().unwrap().clone();
        let whole = sent
            .iter()
            .filter(|(m, h)| m == "GET" && header(h, "range").is_none());
        assert_eq!(whole.count(), 1, "then a whole GET: {sent:?}");
    }

    #[test]
    fn an_unreachable_server_fails_after_its_retry_time_without_secrets() {
        graviton_testkit::needs_servers!();
        let store = crate::store::retrying::Retrying::new(
            Arc::new(S3BlockStore::open("s3://b?endpoint=http://127.0.0.1:1").unwrap()),
            crate::retry::Backoff::S3,
            Duration::from_millis(800),
        );
        let key = BlockKey::for_data(HashAlgo::Blake3, b"x");
        let t = Instant::now();
        let err = store.put(&key, b"x").unwrap_err().to_string();
        assert!(
            t.elapsed() >= Duration::from_millis(800),
            "retried until the deadline"
        );
        assert!(err.contains("connection failed"), "{err}");
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
        assert!(
            secret.is_empty() || !err.contains(&secret),
            "the secret key leaked: {err}"
        );
    }

    /// A request's method and its headers (all but the signature).
    type SentHeaders = (String, Vec<(String, String)>);

    /// Records the headers of every request the store sends.
    #[derive(Debug, Default)]
    struct SseHeaders(std::sync::Mutex<Vec<SentHeaders>>);

    impl aws_sdk_s3::config::Intercept for SseHeaders {
        fn name(&self) -> &'static str {
            "sse-headers"
        }

        fn read_before_transmit(
            &self,
            context: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
            _: &aws_sdk_s3::config::RuntimeComponents,
            _: &mut aws_sdk_s3::config::ConfigBag,
        ) -> Result<(), aws_sdk_s3::error::BoxError> {
            let req = context.request();
            let headers = req
                .headers()
                .iter()
                .filter(|(k, _)| *k != "authorization")
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            self.0
                .lock()
                .unwrap()
                .push((req.method().to_string(), headers));
            Ok(())
        }
    }

    /// What a put and a get send, for one SSE setting (the loopback server may not implement
    /// SSE, so only the requests are checked).
    fn sse_requests(query: &str) -> Vec<SentHeaders> {
        let url = format!("{}&{query}", graviton_testkit::s3_scratch_url());
        let log = std::sync::Arc::new(SseHeaders::default());
        let shared = aws_sdk_s3::config::SharedInterceptor::new(LogRef(log.clone()));
        let store = S3BlockStore::build(&url, Some(shared)).unwrap();
        let key = BlockKey::for_data(HashAlgo::Blake3, query.as_bytes());
        let _ = store.put(&key, query.as_bytes());
        let _ = store.get(&key);
        log.0.lock().unwrap().clone()
    }

    #[derive(Debug)]
    struct LogRef(std::sync::Arc<SseHeaders>);

    impl aws_sdk_s3::config::Intercept for LogRef {
        fn name(&self) -> &'static str {
            "sse-headers"
        }

        fn read_before_transmit(
            &self,
            context: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
            rc: &aws_sdk_s3::config::RuntimeComponents,
            cfg: &mut aws_sdk_s3::config::ConfigBag,
        ) -> Result<(), aws_sdk_s3::error::BoxError> {
            self.0.read_before_transmit(context, rc, cfg)
        }
    }

    fn header<'a>(sent: &'a [(String, String)], name: &str) -> Option<&'a str> {
        sent.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn uploads_carry_the_requested_encryption_headers() {
        graviton_testkit::needs_servers!();
        let put = |q: &str| {
            sse_requests(q)
                .into_iter()
                .find(|(m, _)| m == "PUT")
                .map(|(_, h)| h)
                .expect("a PUT was sent")
        };
        let s3 = put("sse=s3");
        assert_eq!(header(&s3, "x-amz-server-side-encryption"), Some("AES256"));
        let kms = put("sse=kms&kms_key_id=key-1");
        assert_eq!(
            header(&kms, "x-amz-server-side-encryption"),
            Some("aws:kms")
        );
        assert_eq!(
            header(&kms, "x-amz-server-side-encryption-aws-kms-key-id"),
            Some("key-1")
        );
        assert!(
            !put("region=us-east-1")
                .iter()
                .any(|(k, _)| k.starts_with("x-amz-server-side-encryption")),
            "no SSE unless asked"
        );
    }

    #[test]
    fn uploads_carry_a_checksum_instead_of_a_signed_payload_hash() {
        graviton_testkit::needs_servers!();
        let sent = sse_requests("region=us-east-1");
        // (the first PUT may be the conditional-PUT probe)
        let put = &sent.iter().rfind(|(m, _)| m == "PUT").expect("a PUT").1;
        let signed_as = header(put, "x-amz-content-sha256").unwrap_or_default();
        assert!(
            signed_as.contains("UNSIGNED-PAYLOAD"),
            "the block is not hashed again for the signature: {put:?}"
        );
        let crc = header(put, "x-amz-checksum-crc32").is_some()
            || header(put, "x-amz-trailer") == Some("x-amz-checksum-crc32");
        assert!(crc, "the server can still check the body: {put:?}");
    }

    #[test]
    fn sse_c_sends_the_customer_key_on_every_request() {
        graviton_testkit::needs_servers!();
        let key = base64_encode(&[3u8; 32]);
        // this test runs in a process of its own (nextest)
        // SAFETY: no other thread of this process reads the environment meanwhile.
        unsafe { std::env::set_var(SSE_C_KEY_ENV, &key) };
        let sent = sse_requests("sse=c");
        assert!(
            sent.len() >= 3,
            "HEAD or a conditional PUT probe, PUT and GET: {sent:?}"
        );
        // (a DELETE, of the conditional-PUT probe, takes no key in S3's API)
        for (method, h) in sent.iter().filter(|(m, _)| m != "DELETE") {
            assert_eq!(
                header(h, "x-amz-server-side-encryption-customer-algorithm"),
                Some("AES256"),
                "{method}"
            );
            assert_eq!(
                header(h, "x-amz-server-side-encryption-customer-key"),
                Some(key.as_str())
            );
            assert_eq!(
                header(h, "x-amz-server-side-encryption-customer-key-md5"),
                Some(base64_encode(&md5_digest(&[3u8; 32])).as_str())
            );
        }
    }

    #[test]
    fn wrong_credentials_are_a_permanent_refusal_not_retried() {
        graviton_testkit::needs_servers!();
        // this test runs in a process of its own (nextest): its credentials are its own
        // SAFETY: no other thread of this process reads the environment meanwhile.
        unsafe { std::env::set_var("AWS_SECRET_ACCESS_KEY", "not-the-secret") };
        let store = crate::store::retrying::Retrying::new(
            Arc::new(S3BlockStore::open(&graviton_testkit::s3_scratch_url()).unwrap()),
            crate::retry::Backoff::S3,
            Duration::from_secs(30),
        );
        let key = BlockKey::for_data(HashAlgo::Blake3, b"y");
        let t = Instant::now();
        let err = store.put(&key, b"y").unwrap_err();
        assert_eq!(err.transience(), Transience::Permanent, "{err}");
        let err = err.to_string();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "failed at once: {err}"
        );
        assert!(err.contains("HTTP 403"), "{err}");
        assert!(!err.contains("not-the-secret"), "the secret leaked: {err}");
    }
}
