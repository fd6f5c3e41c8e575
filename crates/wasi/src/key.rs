//! The node-local secret key that authenticates compile cache entries (HMAC-SHA256).
//!
//! A cached artifact is native code that wasmtime maps and runs without checking it
//! (`Module::deserialize` is `unsafe` for that reason), so a checksum is not enough: whoever
//! can place a file in the cache could make every pod of that program run their code. Entries
//! carry an HMAC under this key, which is created at first start (32 random bytes, mode 0600)
//! and never leaves the node. It does not help against someone who can read the key, that is,
//! whoever can read the data dir: the data dir must be readable and writable by Krustlet's user
//! alone (see docs/architecture.md).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of key material.
const KEY_LEN: usize = 32;

/// Errors loading or creating the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("compile cache key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The system's random number generator failed.
    #[error("cannot generate a compile cache key: the system random number generator failed")]
    Random,
}

/// The compile cache's secret key.
pub struct CacheKey {
    key: hmac::Key,
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(..)")
    }
}

impl CacheKey {
    /// Reads the key at `path`, or creates it (mode 0600) if there is none or it is unusable.
    /// A key readable by others is made private again, with a warning.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == KEY_LEN => {
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{:o}", mode & 0o777),
                        "the compile cache key was readable by others; making it 0600"
                    );
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(io)?;
                }
                return Ok(Self::from_bytes(&bytes));
            }
            Ok(_) => tracing::warn!(
                path = %path.display(),
                "the compile cache key is malformed; creating a new one (cached programs compile again)"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        // Written whole to a private temp file, then renamed: never a short or public key.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        tracing::debug!(path = %path.display(), "created the compile cache key");
        Ok(Self::from_bytes(&bytes))
    }

    /// A key from raw bytes (tests).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// The tag of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        hmac::sign(&self.key, message).as_ref().to_vec()
    }

    /// Whether `tag` is `message`'s tag (compared in constant time).
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.key, message, tag).is_ok()
    }
}

/// The length of a tag.
pub const TAG_LEN: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/compile-cache.key");
        let first = CacheKey::load_or_create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let tag = first.sign(b"m");
        assert_eq!(tag.len(), TAG_LEN);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let again = CacheKey::load_or_create(&path).expect("load");
        assert!(again.verify(b"m", &tag), "same key after a restart");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "made private again");
        assert!(!CacheKey::from_bytes(&[7; 32]).verify(b"m", &tag));
    }
}
