//! An encrypted volume's data key: 256 random bits made at format, stored only wrapped by a
//! key-encryption key that Argon2id derives from a passphrase (or a key file's bytes). Changing
//! the passphrase wraps the same data key again; nothing stored with it changes, and the data
//! key itself is never rotated. The keys that name and seal blocks are derived from it.
//!
//! A wrapped key is one line of text:
//! `argon2id:m=KIB,t=PASSES,p=LANES:SALT:NONCE:SEALED` (base64 fields), where SEALED is the
//! data key sealed with XChaCha20-Poly1305 under the derived key: a wrong passphrase fails the
//! tag, and nothing else is tried.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;
/// Bound into the wrapping's tag, so a wrapped key is not taken for anything else.
const WRAP_CONTEXT: &[u8] = b"graviton data key v1";

/// How hard deriving the key-encryption key is: Argon2id with 64 MiB and 3 passes takes
/// 0.12–0.14 s on one core of the development machine, once per mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfCost {
    pub memory_kib: u32,
    pub passes: u32,
    pub lanes: u32,
}

impl KdfCost {
    pub const DEFAULT: KdfCost = KdfCost {
        memory_kib: 64 * 1024,
        passes: 3,
        lanes: 1,
    };
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("wrong passphrase or key file: it does not unlock this volume's key")]
    WrongPassphrase,
    #[error("the volume's wrapped key is damaged or in an unknown format")]
    Malformed,
    #[error("an empty passphrase is not accepted")]
    EmptyPassphrase,
}

/// The volume's data key. Its bytes are wiped when it is dropped and never printed.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A new random key (at format).
    pub fn generate() -> DataKey {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *key);
        DataKey(key)
    }

    /// The key of the keyed hash that names blocks (BLAKE3's keyed mode).
    pub fn identity_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key("graviton 2026 block identity", &*self.0))
    }

    /// The key that seals frames (`domain::frames`).
    pub fn sealing_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key("graviton 2026 frame sealing", &*self.0))
    }

    /// The key wrapped under `passphrase`, as one line of text.
    pub fn wrap(&self, passphrase: &[u8], cost: KdfCost) -> Result<String, KeyError> {
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let kek = derive(passphrase, &salt, cost)?;
        let sealed = XChaCha20Poly1305::new((&*kek).into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &*self.0,
                    aad: WRAP_CONTEXT,
                },
            )
            .expect("sealing 32 bytes cannot fail");
        Ok(format!(
            "argon2id:m={},t={},p={}:{}:{}:{}",
            cost.memory_kib,
            cost.passes,
            cost.lanes,
            B64.encode(salt),
            B64.encode(nonce),
            B64.encode(sealed)
        ))
    }

    /// The key a `wrap` line holds, with the passphrase it was wrapped under.
    pub fn unwrap(wrapped: &str, passphrase: &[u8]) -> Result<DataKey, KeyError> {
        let fields: Vec<&str> = wrapped.trim().split(':').collect();
        let [kind, params, salt, nonce, sealed] = fields.as_slice() else {
            return Err(KeyError::Malformed);
        };
        if *kind != "argon2id" {
            return Err(KeyError::Malformed);
        }
        let cost = parse_cost(params).ok_or(KeyError::Malformed)?;
        let decode = |s: &str| B64.decode(s).map_err(|_| KeyError::Malformed);
        let (salt, nonce, sealed) = (decode(salt)?, decode(nonce)?, decode(sealed)?);
        if salt.len() != 16 || nonce.len() != 24 || sealed.len() != 32 + 16 {
            return Err(KeyError::Malformed);
        }
        let kek = derive(passphrase, &salt, cost)?;
        let opened = Zeroizing::new(
            XChaCha20Poly1305::new((&*kek).into())
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &sealed,
                        aad: WRAP_CONTEXT,
                    },
                )
                .map_err(|_| KeyError::WrongPassphrase)?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&opened);
        Ok(DataKey(key))
    }
}

/// `m=KIB,t=PASSES,p=LANES`, within what Argon2 accepts and a mount can afford (at most 4 GiB).
fn parse_cost(params: &str) -> Option<KdfCost> {
    let mut cost = KdfCost {
        memory_kib: 0,
        passes: 0,
        lanes: 0,
    };
    for field in params.split(',') {
        let (name, value) = field.split_once('=')?;
        let value: u32 = value.parse().ok()?;
        match name {
            "m" => cost.memory_kib = value,
            "t" => cost.passes = value,
            "p" => cost.lanes = value,
            _ => return None,
        }
    }
    // bounded, so that a wrapped key from a changed database or a hostile dump cannot make an
    // unlock take minutes or all the memory: 1 GiB and 16 passes at most
    let sane = (8..=1 << 20).contains(&cost.memory_kib)
        && (1..=16).contains(&cost.passes)
        && (1..=8).contains(&cost.lanes)
        && cost.memory_kib >= 8 * cost.lanes;
    sane.then_some(cost)
}

fn derive(passphrase: &[u8], salt: &[u8], cost: KdfCost) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    if passphrase.is_empty() {
        return Err(KeyError::EmptyPassphrase);
    }
    let params = Params::new(cost.memory_kib, cost.passes, cost.lanes, Some(32))
        .map_err(|_| KeyError::Malformed)?;
    let mut kek = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, &mut *kek)
        .map_err(|_| KeyError::Malformed)?;
    Ok(kek)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap enough for tests; the format is the same.
    const CHEAP: KdfCost = KdfCost {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    #[test]
    fn the_passphrase_it_was_wrapped_under_unwraps_the_same_key() {
        let key = DataKey::generate();
        let wrapped = key.wrap(b"correct horse", CHEAP).unwrap();
        let back = DataKey::unwrap(&wrapped, b"correct horse").unwrap();
        assert_eq!(*back.0, *key.0);
        assert_eq!(*back.sealing_key(), *key.sealing_key());
        assert_ne!(*key.sealing_key(), *key.identity_key());
        assert_ne!(*key.sealing_key(), *key.0);
    }

    #[test]
    fn a_wrong_passphrase_is_refused_plainly() {
        let wrapped = DataKey::generate().wrap(b"right", CHEAP).unwrap();
        assert_eq!(
            DataKey::unwrap(&wrapped, b"wrong").unwrap_err(),
            KeyError::WrongPassphrase
        );
        assert_eq!(
            DataKey::unwrap(&wrapped, b"").unwrap_err(),
            KeyError::EmptyPassphrase
        );
    }

    #[test]
    fn a_new_passphrase_wraps_the_same_key_and_the_old_one_stops_working() {
        let key = DataKey::generate();
        let first = key.wrap(b"old", CHEAP).unwrap();
        let opened = DataKey::unwrap(&first, b"old").unwrap();
        let second = opened.wrap(b"new", CHEAP).unwrap();
        assert_ne!(first, second);
        assert_eq!(*DataKey::unwrap(&second, b"new").unwrap().0, *key.0);
        assert!(DataKey::unwrap(&second, b"old").is_err());
    }

    #[test]
    fn the_wrapped_key_shows_neither_key_nor_passphrase() {
        let key = DataKey::generate();
        let wrapped = key.wrap(b"hunter2hunter2", CHEAP).unwrap();
        assert!(!wrapped.contains("hunter2"));
        assert!(!wrapped.contains(&B64.encode(*key.0)));
        assert!(!wrapped.contains(&hex::encode(*key.0)));
        assert_eq!(format!("{key:?}"), "DataKey(..)");
    }

    #[test]
    fn damaged_or_foreign_lines_are_malformed_not_wrong() {
        let wrapped = DataKey::generate().wrap(b"p", CHEAP).unwrap();
        let mut fields: Vec<String> = wrapped.split(':').map(str::to_string).collect();
        fields[2].pop();
        for bad in [
            String::new(),
            "scrypt:m=64,t=1,p=1:a:b:c".to_string(),
            wrapped.replace("m=64", "m=1"),
            wrapped.replace("m=64", "m=99999999"),
            wrapped.replace("t=1", "q=1"),
            fields.join(":"),
        ] {
            assert_eq!(
                DataKey::unwrap(&bad, b"p").unwrap_err(),
                KeyError::Malformed,
                "{bad}"
            );
        }
        // a changed sealed key fails its tag
        let mut fields: Vec<String> = wrapped.split(':').map(str::to_string).collect();
        let mut sealed = B64.decode(&fields[4]).unwrap();
        sealed[0] ^= 1;
        fields[4] = B64.encode(sealed);
        assert_eq!(
            DataKey::unwrap(&fields.join(":"), b"p").unwrap_err(),
            KeyError::WrongPassphrase
        );
    }
}
