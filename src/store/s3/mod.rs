//! Blocks in S3 or any S3-compatible server (`aws-sdk-s3`).
//!
//! URL: `s3://BUCKET[/PREFIX]?endpoint=URL&region=NAME&path_style=true|false&sse=s3|kms|c&kms_key_id=ID`.
//! Credentials come from the standard AWS chain (environment, `~/.aws/credentials`, instance
//! roles) and never appear in logs or messages. SSE-C's key comes from the environment
//! (`GRAVITON_S3_SSE_C_KEY`, base64 of 32 bytes), never from the URL.
//!
//! Objects are named `PREFIX/ALGO/XX/HEX-SIZE`, like the local store's files. Blocks are
//! immutable and named by their content, so `put` is put-if-absent: a conditional PUT
//! (`If-None-Match: *`) where the server honours it (probed at the first upload), else a HEAD
//! first and the upload only when the block is missing (an existing block is never uploaded
//! again). Reads fetch
//! whole blocks, because only a whole block can be checked against its key before any byte is
//! served; a 4 KiB read of a cold 1 MiB block therefore costs a 1 MiB GET (the block cache keeps
//! it for the next reads).
//!
//! Failures are classified: throttling (503 SlowDown, 429), other 5xx, timeouts and network
//! errors are transient, and the retry layer above (`store::retrying`, with `Backoff::S3`)
//! tries them again, so a server that is away for a while only delays writers. Refusals (403,
//! 404 on the bucket, 400…) are permanent and fail at once. Each call here is one attempt.

use std::ops::Range;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;

use super::{BlockStore, PutOutcome, StoreError, Transience, Unchecked};
use crate::domain::groups::{self, GroupHashes};
use crate::domain::key::BlockHasher;
use crate::domain::{BlockKey, HashAlgo};

#[cfg(test)]
mod tests;
mod url;

pub use url::{S3Url, SSE_C_KEY_ENV, Sse};

const BACKEND: &str = "s3";
/// The object's user metadata holding its block's group hashes (`x-amz-meta-graviton-groups`).
const GROUPS_META: &str = "graviton-groups";
/// The most a GET's buffer reserves before the body arrives: a block and its frames' overhead
/// (a body that is longer grows the buffer as it comes).
const FETCH_CAPACITY_MAX: usize = crate::domain::key::MAX_BLOCK_SIZE as usize + (1 << 20);
/// What kind of failure an S3 call had: decides retrying, and names it in logs.
fn classify<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Transience {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Transience::Transient,
        SdkError::ResponseError(_) => Transience::Transient,
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or_default();
            if status == 429
                || code == "SlowDown"
                || code == "Throttling"
                || code == "RequestLimitExceeded"
            {
                Transience::Throttled
            } else if status >= 500 || (status == 409 && code == "ConditionalRequestConflict") {
                // (409: a concurrent conditional PUT of the same object; the next try settles it)
                Transience::Transient
            } else {
                Transience::Permanent
            }
        }
        _ => Transience::Permanent,
    }
}

/// A short description of the failure (status and code, never credentials or signatures).
fn describe<E: ProvideErrorMetadata + std::fmt::Debug>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String {
    match e {
        SdkError::ServiceError(s) => format!(
            "HTTP {} {}{}",
            s.raw().status().as_u16(),
            s.err().code().unwrap_or("error"),
            s.err()
                .message()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(d) => {
            if d.is_io() {
                "connection failed".into()
            } else if d.is_timeout() {
                "timed out connecting".into()
            } else {
                "request could not be sent".into()
            }
        }
        SdkError::ResponseError(_) => "unreadable response".into(),
        _ => "request could not be built".into(),
    }
}

/// Adds SSE-C's key headers to a request builder (HEAD, GET and PUT builders are distinct
/// types) when the store uses SSE-C.
macro_rules! with_customer_key {
    ($req:expr, $sse:expr) => {
        match $sse {
            Sse::Customer { key, key_md5 } => $req
                .sse_customer_algorithm("AES256")
                .sse_customer_key(key)
                .sse_customer_key_md5(key_md5),
            _ => $req,
        }
    };
}

pub struct S3BlockStore {
    client: aws_sdk_s3::Client,
    url: S3Url,
    rt: tokio::runtime::Runtime,
    /// Whether the server honours `If-None-Match: *` on PUT; learnt at the first upload.
    conditional_put: std::sync::OnceLock<bool>,
}

impl S3BlockStore {
    /// Connects to the store `url` names (no request is made yet).
    pub fn open(url: &str) -> Result<S3BlockStore, StoreError> {
        Self::build(url, None)
    }

    fn build(
        url: &str,
        interceptor: Option<aws_sdk_s3::config::SharedInterceptor>,
    ) -> Result<S3BlockStore, StoreError> {
        let sse_c = std::env::var(SSE_C_KEY_ENV).ok();
        let url = S3Url::parse(url, sse_c.as_deref())
            .map_err(|m| StoreError::io(BACKEND, "store URL", std::io::Error::other(m)))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("graviton-s3")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io(BACKEND, "starting its runtime", e))?;
        let shared = rt.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(url.region.clone()))
                .load(),
        );
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(url.path_style)
            // every block is checked against its BLAKE3/SHA-256 key after the GET; a response
            // checksum failing first would look like a network error and be retried
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            // the retry layer retries, with its own deadline and classification
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(ep) = &url.endpoint {
            conf = conf.endpoint_url(ep);
        }
        if let Some(i) = interceptor {
            conf = conf.interceptor(i);
        }
        Ok(S3BlockStore {
            client: aws_sdk_s3::Client::from_conf(conf.build()),
            url,
            rt,
            conditional_put: std::sync::OnceLock::new(),
        })
    }

    /// The name of the object that holds a block: the URL's prefix, the hash's name, two hex
    /// digits to spread the names, the hash and the size.
    pub fn object(&self, key: &BlockKey) -> String {
        let hex = key.hex();
        format!(
            "{}{}/{}/{hex}-{}",
            self.url.prefix,
            key.algo.name(),
            &hex[..2],
            key.name_len()
        )
    }

    /// Each block object under the prefix, with its size.
    fn each_object(&self, mut each: impl FnMut(BlockKey, u64)) -> Result<(), StoreError> {
        let mut token: Option<String> = None;
        loop {
            let page = self.call("listing", None, || {
                let mut req = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.url.bucket)
                    .prefix(&self.url.prefix);
                if let Some(t) = &token {
                    req = req.continuation_token(t);
                }
                async move { req.send().await }
            })?;
            for o in page.contents() {
                if let Some(k) = o.key().and_then(|k| self.key_of(k)) {
                    each(k, o.size().unwrap_or(0).max(0) as u64);
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(())
    }

    fn key_of(&self, object: &str) -> Option<BlockKey> {
        let rest = object.strip_prefix(&self.url.prefix)?;
        let mut parts = rest.split('/');
        let (algo, _, file) = (parts.next()?, parts.next()?, parts.next()?);
        let algo: HashAlgo = algo.parse().ok()?;
        let (hex, len) = file.split_once('-')?;
        BlockKey::from_name(algo, hex, len)
    }

    /// Runs one S3 call: a failure is classified (`Transience`) and described without
    /// credentials or signatures.
    fn call<T, E, F, Fut>(&self, what: &str, key: Option<&BlockKey>, f: F) -> Result<T, StoreError>
    where
        E: ProvideErrorMetadata + std::fmt::Debug,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<
                Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
            >,
    {
        self.rt.block_on(f()).map_err(|e| {
            let target = key
                .map(|k| k.to_string())
                .unwrap_or_else(|| self.url.bucket.clone());
            StoreError::failed(
                BACKEND,
                format!("{what} {target}"),
                std::io::Error::other(describe(&e)),
                classify(&e),
            )
        })
    }

    fn sse_put(
        &self,
        mut req: aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        match &self.url.sse {
            Sse::None => {}
            Sse::S3 => req = req.server_side_encryption(ServerSideEncryption::Aes256),
            Sse::Kms(id) => {
                req = req.server_side_encryption(ServerSideEncryption::AwsKms);
                if let Some(id) = id {
                    req = req.ssekms_key_id(id);
                }
            }
            Sse::Customer { .. } => req = with_customer_key!(req, &self.url.sse),
        }
        req
    }

    /// Stores `object`; with `if_absent`, only if it does not exist (`Ok(false)` when it did).
    fn put_object(
        &self,
        object: &str,
        key: Option<&BlockKey>,
        body: bytes::Bytes,
        if_absent: bool,
        groups: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.call("uploading", key, || {
            let mut req = self
                .client
                .put_object()
                .bucket(&self.url.bucket)
                .key(object)
                .content_length(body.len() as i64)
                .body(ByteStream::from(body.clone()));
            if let Some(groups) = groups {
                req = req.metadata(GROUPS_META, groups);
            }
            if if_absent {
                req = req.if_none_match("*");
            }
            // The payload is not signed: SigV4's SHA-256 of every block is a large share of the
            // daemon's CPU in sequential writes. The body's CRC32 (the SDK's default request
            // checksum) still lets the server refuse a damaged upload, and every read checks
            // the block against its key.
            let req = self.sse_put(req).customize().disable_payload_signing();
            async move {
                match req.send().await {
                    Ok(_) => Ok(true),
                    Err(SdkError::ServiceError(s))
                        if if_absent && s.raw().status().as_u16() == 412 =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
        })
    }

    /// Stores the block, with its group hashes in the object's metadata (BLAKE3 blocks of more
    /// than one group): `groups` when the caller has them, else computed here; a framed copy
    /// (`store::framed`) carries none.
    fn upload(
        &self,
        key: &BlockKey,
        data: &[u8],
        if_absent: bool,
        groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        let body = bytes::Bytes::copy_from_slice(data);
        // bytes of another length than the block's are its stored form (`store::framed`):
        // their group hashes would not merge into the key
        let groups = match (key.algo, groups) {
            (HashAlgo::Blake3, Some(g)) => Some(g.encode()),
            (HashAlgo::Blake3, None) if data.len() as u64 == key.size as u64 => {
                GroupHashes::of(data).map(|g| g.encode())
            }
            _ => None,
        };
        let object = self.object(key);
        match self.put_object(&object, Some(key), body, if_absent, groups.as_deref())? {
            true => Ok(PutOutcome::Fresh),
            false => Ok(PutOutcome::Duplicate),
        }
    }

    /// Whether conditional PUTs work here: a probe object is written twice with
    /// `If-None-Match: *`, and the second must be refused with 412. Servers that ignore the
    /// header or reject it get HEAD-then-PUT. Until the server has answered, HEAD-then-PUT.
    fn conditional_put(&self) -> bool {
        if let Some(&known) = self.conditional_put.get() {
            return known;
        }
        let probe = format!("{}graviton-conditional-put-probe", self.url.prefix);
        // one attempt each: Some(true) created, Some(false) refused with 412, None otherwise
        let attempt = || -> Result<Option<bool>, ()> {
            let req = self
                .client
                .put_object()
                .bucket(&self.url.bucket)
                .key(&probe)
                .if_none_match("*")
                .body(ByteStream::from_static(b"graviton"));
            match self.rt.block_on(self.sse_put(req).send()) {
                Ok(_) => Ok(Some(true)),
                Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 412 => {
                    Ok(Some(false))
                }
                Err(SdkError::ServiceError(_)) => Ok(None),
                Err(_) => Err(()), // not reached the server: ask again next time
            }
        };
        let supported = match attempt() {
            Ok(Some(false)) => true,
            Ok(Some(true)) => matches!(attempt(), Ok(Some(false))),
            Ok(None) => false,
            Err(()) => return false,
        };
        let delete = self
            .client
            .delete_object()
            .bucket(&self.url.bucket)
            .key(&probe);
        let _ = self.rt.block_on(delete.send());
        tracing::info!(
            bucket = self.url.bucket,
            "conditional PUTs {}",
            if supported {
                "work: one request per new block"
            } else {
                "are not supported here: HEAD before each PUT"
            }
        );
        let _ = self.conditional_put.set(supported);
        supported
    }

    /// Whether the object exists (HEAD); a 404 is `false`.
    fn head(&self, key: &BlockKey) -> Result<bool, StoreError> {
        let object = self.object(key);
        self.call("checking", Some(key), || {
            let req = self
                .client
                .head_object()
                .bucket(&self.url.bucket)
                .key(&object);
            let req = with_customer_key!(req, &self.url.sse);
            async move {
                match req.send().await {
                    Ok(_) => Ok(true),
                    Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 404 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        })
    }

    /// The URL this store was opened with, parsed (no secrets in it).
    pub fn url(&self) -> &S3Url {
        &self.url
    }

    /// One block's bytes; with `verify`, checked against the key. Each chunk of the body is
    /// hashed right after it is copied, while it is still in the core's cache: hashing the
    /// 4 MiB block afterwards read it back from memory, on threads competing with the copy.
    fn download(&self, key: &BlockKey, verify: bool) -> Result<Vec<u8>, StoreError> {
        let got = self.fetch(key, None, verify)?;
        if let Some(digest) = got.digest
            && !key.matches_hashed(got.data.len(), digest)
        {
            tracing::error!(block = %key, backend = BACKEND, "block content does not match its key");
            return Err(StoreError::Corrupt(*key, BACKEND));
        }
        Ok(got.data)
    }

    /// The object's bytes, or with `range` those bytes of it (a server may send them all);
    /// with `verify`, hashed as they arrive.
    fn fetch(
        &self,
        key: &BlockKey,
        range: Option<Range<u64>>,
        verify: bool,
    ) -> Result<Fetched, StoreError> {
        let object = self.object(key);
        let algo = key.algo;
        let got = self.call("reading", Some(key), || {
            let mut req = self
                .client
                .get_object()
                .bucket(&self.url.bucket)
                .key(&object);
            if let Some(r) = &range {
                req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
            }
            let req = with_customer_key!(req, &self.url.sse);
            // The GET runs as a task on the store's runtime, next to the connection's I/O:
            // polled from the calling thread instead, every chunk of the body woke that thread
            // (a few hundred wake-ups per 4 MiB block).
            let get = async move {
                match req.send().await {
                    // one copy, into a buffer of the announced size
                    Ok(mut out) => {
                        // the server's word sizes the buffer only up to a block's bound
                        let len = (out.content_length.unwrap_or(0).max(0) as usize)
                            .min(FETCH_CAPACITY_MAX);
                        let groups = out.metadata.as_mut().and_then(|m| m.remove(GROUPS_META));
                        let mut data = Vec::with_capacity(len);
                        let mut hasher = verify.then(|| BlockHasher::new(algo));
                        loop {
                            match out.body.try_next().await {
                                Ok(Some(chunk)) => {
                                    data.extend_from_slice(&chunk);
                                    if let Some(h) = &mut hasher {
                                        h.update(&chunk);
                                    }
                                }
                                Ok(None) => {
                                    let digest = hasher.map(BlockHasher::finalize);
                                    break Ok(Some(Fetched {
                                        data,
                                        digest,
                                        groups,
                                    }));
                                }
                                // a body cut off mid-way: read it again
                                Err(e) => {
                                    break Err(SdkError::response_error(
                                        e,
                                        aws_sdk_s3::config::http::HttpResponse::new(
                                            500.try_into().expect("status"),
                                            aws_sdk_s3::primitives::SdkBody::empty(),
                                        ),
                                    ));
                                }
                            }
                        }
                    }
                    Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 404 => Ok(None),
                    Err(e) => Err(e),
                }
            };
            async move {
                match tokio::spawn(get).await {
                    Ok(got) => got,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
        })?;
        got.ok_or(StoreError::NotFound(*key, BACKEND))
    }

    /// `range` of a BLAKE3 block, fetched with the groups that hold it and checked against the
    /// group hashes in the object's metadata (see `domain::groups`). `None` when the object has
    /// none that merge into the key (stored before they were written, or damaged): the caller
    /// fetches the whole block instead.
    fn get_groups(&self, key: &BlockKey, range: Range<u64>) -> Result<Option<Vec<u8>>, StoreError> {
        let span = groups::covering(key.size as u64, range.clone());
        let got = self.fetch(key, Some(span.clone()), false)?;
        metrics::counter!(crate::metrics::BYTES_FETCHED, "backend" => BACKEND)
            .increment(got.data.len() as u64);
        let Some(gh) = got
            .groups
            .as_deref()
            .and_then(|t| GroupHashes::for_key(key, t))
        else {
            if got.groups.is_some() {
                tracing::warn!(block = %key, "group hashes in the object's metadata do not match its key");
            }
            return Ok(None);
        };
        let at = match got.data.len() as u64 {
            n if n == span.end - span.start => span.start,
            // a server that ignores ranges sends the whole object
            n if n == key.size as u64 => 0,
            _ => return Err(StoreError::Corrupt(*key, BACKEND)),
        };
        if !gh.verify(at, &got.data) {
            tracing::error!(block = %key, backend = BACKEND, "block content does not match its key");
            return Err(StoreError::Corrupt(*key, BACKEND));
        }
        let from = (range.start - at) as usize;
        Ok(Some(
            got.data[from..from + (range.end - range.start) as usize].to_vec(),
        ))
    }
}

/// A GET's body, its digest when hashed, and the group hashes the object carries.
struct Fetched {
    data: Vec<u8>,
    digest: Option<[u8; 32]>,
    groups: Option<String>,
}

impl BlockStore for S3BlockStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// Put-if-absent: one conditional PUT where the server supports it (a 412 means the block
    /// is there already), else HEAD, then PUT if it is missing.
    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let conditional = self.conditional_put();
        if !conditional && self.head(key)? {
            return Ok(PutOutcome::Duplicate);
        }
        self.upload(key, data, conditional, None)
    }

    /// `put_new` (no HEAD: the volume references no copy, so the block is almost surely new),
    /// with the group hashes the write path computed with the key when it has them.
    fn put_new_grouped(
        &self,
        key: &BlockKey,
        data: &[u8],
        groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        self.upload(key, data, self.conditional_put(), groups)
    }

    fn get_unverified(&self, key: &BlockKey, _: Unchecked) -> Result<Vec<u8>, StoreError> {
        self.download(key, false)
    }

    /// Hashes the body as it arrives ([`S3Store::download`]) instead of reading the whole
    /// block again afterwards.
    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        self.download(key, true)
    }

    /// Only the groups that hold `range`, for a block of at least `RANGED_FROM` bytes whose
    /// object carries group hashes; otherwise the whole block, verified.
    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        let size = key.size as usize;
        let range = range.start.min(size)..range.end.min(size);
        if key.algo == HashAlgo::Blake3 && size as u64 >= groups::RANGED_FROM && !range.is_empty() {
            let wanted = range.start as u64..range.end as u64;
            if let Some(bytes) = self.get_groups(key, wanted)? {
                return Ok(bytes);
            }
        }
        let data = self.get(key)?;
        metrics::counter!(crate::metrics::BYTES_FETCHED, "backend" => BACKEND)
            .increment(data.len() as u64);
        Ok(data[range].to_vec())
    }

    /// One ranged GET (a server that ignores ranges sends the whole object: it is cut here).
    fn get_unverified_range(
        &self,
        key: &BlockKey,
        range: Range<u64>,
        _: Unchecked,
    ) -> Result<Vec<u8>, StoreError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let mut data = self.fetch(key, Some(range.clone()), false)?.data;
        metrics::counter!(crate::metrics::BYTES_FETCHED, "backend" => BACKEND)
            .increment(data.len() as u64);
        let wanted = (range.end - range.start) as usize;
        if data.len() > wanted && data.len() as u64 >= range.end {
            data = data[range.start as usize..range.end as usize].to_vec();
        }
        Ok(data)
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        self.head(key)
    }

    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        let object = self.object(key);
        self.call("deleting", Some(key), || {
            let req = self
                .client
                .delete_object()
                .bucket(&self.url.bucket)
                .key(&object);
            async move { req.send().await }
        })?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        let mut out = Vec::new();
        self.each_object(|key, _| out.push(key))?;
        Ok(out)
    }

    fn stored_bytes(&self) -> Result<Option<u64>, StoreError> {
        let mut total = 0u64;
        self.each_object(|_, size| total += size)?;
        Ok(Some(total))
    }

    /// A successful PUT is already durable on S3.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
