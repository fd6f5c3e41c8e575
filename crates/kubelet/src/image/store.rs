//! The on-disk image store: content-addressed blobs and one record per reference.
//!
//! Layout under the root: `blobs/sha256/<hex>` holds verified blobs (written to a temp file,
//! checked against their digest, then renamed, so a crash never leaves a bad blob that looks
//! good); `refs/<escaped reference>.json` records what a reference resolved to. A record's mtime
//! is when the image was last used (image GC evicts the least recently used).

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::{ImageError, PulledImage};

/// The suffix of files being written; what a crash leaves behind is removed on start.
const TMP_MARKER: &str = ".tmp.";

/// Paths and file operations of the store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

pub(crate) fn store_error(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |e| ImageError::Store {
        path: path.into(),
        message: e.to_string(),
    }
}

impl Store {
    /// Opens (creating) the store at `root` and removes temp files a crash left behind.
    pub fn open(root: PathBuf) -> Result<Self, ImageError> {
        for dir in ["blobs/sha256", "refs"] {
            let dir = root.join(dir);
            std::fs::create_dir_all(&dir).map_err(store_error(&dir))?;
            for entry in std::fs::read_dir(&dir)
                .map_err(store_error(&dir))?
                .flatten()
            {
                if entry.file_name().to_string_lossy().contains(TMP_MARKER) {
                    tracing::info!(path = %entry.path().display(), "removing a partial download");
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Self { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ref_path(&self, image: &str) -> PathBuf {
        let escaped: String = image
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join("refs").join(format!("{escaped}.json"))
    }

    /// Where the blob with `digest` (`sha256:<hex>`) lives.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The record for `image`, if it and every blob it needs are present.
    pub fn lookup(&self, image: &str) -> Option<PulledImage> {
        let text = std::fs::read(self.ref_path(image)).ok()?;
        let pulled: PulledImage = serde_json::from_slice(&text).ok()?;
        let complete = pulled.program.exists()
            && pulled
                .files
                .values()
                .all(|digest| self.blob_path(digest).exists());
        complete.then_some(pulled)
    }

    /// Records what `pulled.reference` resolved to.
    pub fn record(&self, pulled: &PulledImage) -> Result<(), ImageError> {
        let path = self.ref_path(&pulled.reference);
        let json = serde_json::to_vec_pretty(pulled).map_err(|e| ImageError::Store {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &json)
    }

    /// Marks `image` as used now (for least-recently-used eviction).
    pub fn touch(&self, image: &str) {
        if let Ok(file) = std::fs::File::options()
            .append(true)
            .open(self.ref_path(image))
        {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// Every recorded image with its last use.
    pub fn list(&self) -> Vec<(PulledImage, SystemTime)> {
        let Ok(entries) = std::fs::read_dir(self.root.join("refs")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| {
                let used = e.metadata().and_then(|m| m.modified()).ok()?;
                let text = std::fs::read(e.path()).ok()?;
                Some((serde_json::from_slice(&text).ok()?, used))
            })
            .collect()
    }

    /// Removes the record of `image` and the blobs no other record needs; returns the bytes
    /// freed.
    pub fn remove(&self, image: &str) -> u64 {
        let Some((removed, _)) = self.list().into_iter().find(|(p, _)| p.reference == image) else {
            return 0;
        };
        let _ = std::fs::remove_file(self.ref_path(image));
        let kept: HashSet<String> = self
            .list()
            .iter()
            .flat_map(|(p, _)| p.all_blobs())
            .collect();
        let mut freed = 0;
        for digest in removed.all_blobs() {
            if kept.contains(&digest) {
                continue;
            }
            let path = self.blob_path(&digest);
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if std::fs::remove_file(&path).is_ok() {
                freed += size;
            }
        }
        freed
    }

    /// Checks that the file at `tmp` hashes to `digest`, then renames it to the blob's place.
    pub fn commit_blob(&self, image: &str, digest: &str, tmp: &Path) -> Result<(), ImageError> {
        let actual = sha256_file(tmp).map_err(store_error(tmp))?;
        if actual != digest {
            let _ = std::fs::remove_file(tmp);
            return Err(ImageError::Corrupt {
                image: image.into(),
                digest: digest.into(),
                message: format!("content hashes to {actual}"),
            });
        }
        let path = self.blob_path(digest);
        std::fs::rename(tmp, &path).map_err(store_error(&path))
    }

    /// Stores `bytes` as a blob (atomically), returning its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, ImageError> {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        let path = self.blob_path(&digest);
        if !path.exists() {
            write_atomic(&path, bytes)?;
        }
        Ok(digest)
    }

    /// A temp path next to where the blob `digest` will live.
    pub fn temp_path(&self, digest: &str) -> PathBuf {
        tmp_path(&self.blob_path(digest))
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    // Unique per write, so two writers of one file never share a temp file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!("{TMP_MARKER}{}.{n}", std::process::id()));
    path.with_file_name(name)
}

/// `sha256:<hex>` of a file's content.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

/// Writes through a temp file and a rename, so readers never see a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(store_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(store_error(path))
}
