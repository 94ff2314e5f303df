//! Where an S3 store is and how it encrypts: the `s3://` URL and server-side encryption.

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

pub(super) fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

pub(super) fn md5_digest(b: &[u8]) -> [u8; 16] {
    md5::compute(b).0
}
