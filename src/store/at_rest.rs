//! How a mount keeps its own copies of blocks on the local disk (the disk cache, the write-back
//! staging folder): as they are, or, on an encrypted volume, sealed in frames under the
//! volume's key like every other stored copy. Only the in-memory cache holds plaintext.

use std::borrow::Cow;
use std::sync::Arc;

use crate::domain::BlockKey;
use crate::domain::frames::FrameCodec;

#[derive(Clone, Default)]
pub enum AtRest {
    #[default]
    Plain,
    /// Sealed (not compressed: these copies are short-lived and written on the write path).
    Sealed(Arc<FrameCodec>),
}

impl AtRest {
    /// The bytes to write for the block `key` names.
    pub fn seal<'a>(&self, key: &BlockKey, data: &'a [u8]) -> Cow<'a, [u8]> {
        match self {
            AtRest::Plain => Cow::Borrowed(data),
            AtRest::Sealed(codec) => Cow::Owned(codec.encode(&key.digest, data)),
        }
    }

    /// The block's bytes from a copy `seal` wrote. A sealed copy that does not open comes back
    /// as it is, which does not match the key: callers check the key as for a plain copy.
    pub fn open(&self, key: &BlockKey, stored: Vec<u8>) -> Vec<u8> {
        match self {
            AtRest::Plain => stored,
            AtRest::Sealed(codec) => codec
                .decode(&key.digest, key.size as u64, &stored)
                .unwrap_or(stored),
        }
    }

    /// Whether `stored` is a good copy of the block `key` names.
    pub fn holds(&self, key: &BlockKey, stored: &[u8]) -> bool {
        match self {
            AtRest::Plain => key.matches(stored),
            AtRest::Sealed(codec) => super::framed::Framed::holds(codec, key, stored),
        }
    }
}
