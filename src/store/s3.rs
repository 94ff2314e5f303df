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

const BACKEND: &str = "s3";
/// The object's user metadata holding its block's group hashes (`x-amz-meta-graviton-groups`).
const GROUPS_META: &str = "graviton-groups";

/// Environment variable holding the SSE-C customer key (base64 of 32 bytes).
pub const SSE_C_KEY_ENV: &str = "GRAVITON_S3_SSE_C_KEY";

/// Server-side encryption requested on every upload (and, for SSE-C, on every read).
#[derive(Clone, PartialEq, Eq)]
pub enum Sse {
    None,
    /// SSE-S3 (AES256, keys managed by the server).
    S3,
    /// SSE-KMS, with the bucket's default key or this key id.
    Kms(Option<String>),
    /// SSE-C: the customer's key (base64) and its MD5 (base64).
    Customer {
        key: String,
        key_md5: String,
    },
}

impl std::fmt::Debug for Sse {
    // the customer key never shows
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sse::None => write!(f, "none"),
            Sse::S3 => write!(f, "sse-s3"),
            Sse::Kms(id) => write!(f, "sse-kms({})", id.as_deref().unwrap_or("default key")),
            Sse::Customer { .. } => write!(f, "sse-c"),
        }
    }
}

/// A parsed `s3://` store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Empty, or ending in '/'.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub sse: Sse,
}

impl S3Url {
    /// Parses a store URL; `sse_c_key` is the SSE-C key from the environment, if any.
    pub fn parse(url: &str, sse_c_key: Option<&str>) -> Result<S3Url, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| "an S3 store URL starts with s3://".to_string())?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err("the URL names no bucket (s3://BUCKET/PREFIX)".into());
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let mut u = S3Url {
            bucket: bucket.to_string(),
            prefix,
            endpoint: None,
            region: "us-east-1".into(),
            path_style: false,
            sse: Sse::None,
        };
        let (mut path_style, mut sse, mut kms_key) = (None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if v.is_empty() {
                return Err(format!("store URL parameter {k:?} needs a value"));
            }
            match k {
                "endpoint" => u.endpoint = Some(v.to_string()),
                "region" => u.region = v.to_string(),
                "path_style" => {
                    path_style = Some(match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(format!("path_style must be true or false, not {v:?}")),
                    })
                }
                "sse" => sse = Some(v.to_string()),
                "kms_key_id" => kms_key = Some(v.to_string()),
                _ => return Err(format!("unknown store URL parameter {k:?}")),
            }
        }
        // S3-compatible servers on an explicit endpoint usually want path-style requests
        u.path_style = path_style.unwrap_or(u.endpoint.is_some());
        u.sse = match (sse.as_deref(), kms_key) {
            (None, None) => Sse::None,
            (Some("s3"), None) => Sse::S3,
            (Some("kms"), id) => Sse::Kms(id),
            (Some("c"), None) => {
                let key = sse_c_key.ok_or_else(|| {
                    format!("sse=c needs the customer key in {SSE_C_KEY_ENV} (base64 of 32 bytes)")
                })?;
                let raw = base64_decode(key)
                    .filter(|k| k.len() == 32)
                    .ok_or_else(|| format!("{SSE_C_KEY_ENV} is not base64 of 32 bytes"))?;
                Sse::Customer {
                    key: key.to_string(),
                    key_md5: base64_encode(&md5_digest(&raw)),
                }
            }
            (None, Some(_)) | (Some("s3" | "c"), Some(_)) => {
                return Err("kms_key_id goes with sse=kms".into());
            }
            (Some(other), _) => {
                return Err(format!("sse must be s3, kms or c, not {other:?}"));
            }
        };
        Ok(u)
    }
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn md5_digest(b: &[u8]) -> [u8; 16] {
    md5::compute(b).0
}

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

    fn object(&self, key: &BlockKey) -> String {
        let hex = key.hex();
        format!(
            "{}{}/{}/{hex}-{}",
            self.url.prefix,
            key.algo.name(),
            &hex[..2],
            key.size
        )
    }

    fn key_of(&self, object: &str) -> Option<BlockKey> {
        let rest = object.strip_prefix(&self.url.prefix)?;
        let mut parts = rest.split('/');
        let (algo, _, file) = (parts.next()?, parts.next()?, parts.next()?);
        let algo: HashAlgo = algo.parse().ok()?;
        let (hex, size) = file.split_once('-')?;
        format!("{algo}:{hex}:{size}").parse().ok()
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
    /// than one group): `groups` when the caller has them, else computed here.
    fn upload(
        &self,
        key: &BlockKey,
        data: &[u8],
        if_absent: bool,
        groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        let body = bytes::Bytes::copy_from_slice(data);
        let groups = match (key.algo, groups) {
            (HashAlgo::Blake3, Some(g)) => Some(g.encode()),
            (HashAlgo::Blake3, None) => GroupHashes::of(data).map(|g| g.encode()),
            (HashAlgo::Sha256, _) => None,
        };
        Ok(
            match self.put_object(
                &self.object(key),
                Some(key),
                body,
                if_absent,
                groups.as_deref(),
            )? {
                true => PutOutcome::Fresh,
                false => PutOutcome::Duplicate,
            },
        )
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
        let r = self.call("checking", Some(key), || {
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
        })?;
        Ok(r)
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
                        let len = out.content_length.unwrap_or(0).max(0) as usize;
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
                    out.push(k);
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// A successful PUT is already durable on S3.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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

/// Against the S3-compatible server `scripts/test.sh` starts on loopback.
/// For tests: the test S3 server's URL (`GRAVITON_TEST_S3`, set by `scripts/s3.sh`) with a
/// prefix of the caller's own, so tests never see each other's blocks.
pub fn scratch_url() -> String {
    let base = std::env::var("GRAVITON_TEST_S3").expect(
        "GRAVITON_TEST_S3 is not set: run the tests through scripts/test.sh, which starts an S3 server",
    );
    let (head, query) = base.split_once('?').unwrap_or((&base, ""));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{head}/t{}-{nanos}?{query}", std::process::id())
}

#[cfg(test)]
mod server_tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// A damaged object is an error, never bytes (the rest of the conformance suite runs
    /// over the S3 stacks in `tests/stacks.rs`).
    #[test]
    fn corruption_is_detected() {
        crate::needs_servers!();
        let store = Arc::new(S3BlockStore::open(&scratch_url()).unwrap());
        let root = std::path::PathBuf::from(
            std::env::var("GRAVITON_TEST_S3_ROOT").expect("GRAVITON_TEST_S3_ROOT"),
        );
        let s = store.clone();
        crate::testkit::block_conformance::corruption_is_detected(store.as_ref(), &move |k| {
            // flip a byte of the object's file on the server, keeping its length
            let path = root.join(&s.url().bucket).join(s.object(k));
            let mut bytes = std::fs::read(&path).expect("the object's file");
            bytes[0] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        });
    }

    /// A part of a large BLAKE3 block is one ranged GET of the groups that hold it, checked
    /// against the group hashes the object carries: damage elsewhere in the block does not stop
    /// it, damage in it is an error, and an object without group hashes is read whole.
    #[test]
    fn parts_of_large_blocks_are_ranged_gets_checked_against_group_hashes() {
        crate::needs_servers!();
        let log = Arc::new(SseHeaders::default());
        let shared = aws_sdk_s3::config::SharedInterceptor::new(LogRef(log.clone()));
        let store = S3BlockStore::build(&scratch_url(), Some(shared)).unwrap();
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
        crate::needs_servers!();
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
        let url = format!("{}&{query}", scratch_url());
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
        crate::needs_servers!();
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
        crate::needs_servers!();
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
        crate::needs_servers!();
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
        crate::needs_servers!();
        // this test runs in a process of its own (nextest): its credentials are its own
        // SAFETY: no other thread of this process reads the environment meanwhile.
        unsafe { std::env::set_var("AWS_SECRET_ACCESS_KEY", "not-the-secret") };
        let store = crate::store::retrying::Retrying::new(
            Arc::new(S3BlockStore::open(&scratch_url()).unwrap()),
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
