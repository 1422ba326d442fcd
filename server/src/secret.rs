//! The cluster secret: HMAC-SHA256 keys that authenticate heartbeats, the coordinator's
//! replies and replication connections.
//!
//! Every server and the coordinator read the same secret from a file (`--cluster-secret
//! FILE`). Datagrams carry a MAC over their bytes and a sequence number the receiver checks
//! is newer than any it has seen, so a captured datagram cannot be replayed. A replication
//! connection derives its own key from the secret and both sides' handshake nonces, and MACs
//! every batch of frames it sends with it.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a MAC.
pub const MAC_LEN: usize = 32;

/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a secret file is refused.
#[derive(Debug)]
pub enum SecretError {
    /// The file cannot be read.
    Read(std::io::Error),
    /// It holds fewer than [`MIN_SECRET_LEN`] bytes after trimming whitespace.
    TooShort(usize),
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::Read(e) => write!(f, "cannot read it: {e}"),
            SecretError::TooShort(n) => {
                write!(f, "it holds {n} bytes; a cluster secret needs at least {MIN_SECRET_LEN}")
            }
        }
    }
}

impl std::error::Error for SecretError {}

/// An HMAC-SHA256 key.
#[derive(Clone)]
pub struct Key {
    mac: HmacSha256,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from raw bytes.
    pub fn new(secret: &[u8]) -> Key {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mac = <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        Key { mac }
    }

    /// Reads a secret file (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`SecretError`] if it cannot be read or is too short.
    pub fn load(path: &Path) -> Result<Key, SecretError> {
        let raw = std::fs::read(path).map_err(SecretError::Read)?;
        let secret = raw.trim_ascii();
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort(secret.len()));
        }
        Ok(Key::new(secret))
    }

    /// The MAC of the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut m = self.mac.clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `parts`, compared in constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut m = self.mac.clone();
        for p in parts {
            m.update(p);
        }
        m.verify_slice(tag).is_ok()
    }

    /// A key for one replication connection, from both ends' handshake nonces: a MAC captured
    /// on one connection is worthless on any other.
    pub fn derive(&self, label: &[u8], primary_nonce: u64, backup_nonce: u64) -> Key {
        let k =
            self.mac(&[b"tandem-repl-1:", label, &primary_nonce.to_le_bytes(), &backup_nonce.to_le_bytes()]);
        Key::new(&k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_verify_and_depend_on_every_byte_and_key() {
        let k = Key::new(b"0123456789abcdef");
        let tag = k.mac(&[b"hello ", b"world"]);
        assert!(k.verify(&[b"hello world"], &tag), "parts concatenate");
        assert!(!k.verify(&[b"hello worle"], &tag));
        assert!(!Key::new(b"0123456789abcdeX").verify(&[b"hello world"], &tag));
        assert!(!k.verify(&[b"hello world"], &tag[..31]));
        let a = k.derive(b"x", 1, 2);
        let b = k.derive(b"x", 1, 3);
        assert_ne!(a.mac(&[b"m"]), b.mac(&[b"m"]));
    }

    #[test]
    fn short_or_missing_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "  short \n").unwrap();
        assert!(matches!(Key::load(&p), Err(SecretError::TooShort(5))));
        std::fs::write(&p, "a-long-enough-cluster-secret\n").unwrap();
        assert!(Key::load(&p).is_ok());
        assert!(matches!(Key::load(&dir.path().join("none")), Err(SecretError::Read(_))));
    }
}
