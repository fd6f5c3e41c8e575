//! The on-disk image store: content-addressed blobs and one record per reference.
//!
//! Layout under the root: `blobs/sha256/<hex>` holds verified blobs (written to a temp file,
//! checked against their digest, then renamed, so a crash never leaves a bad blob that looks
//! good); `refs/<sha256 of the normalised reference>.json` records what a reference resolved to.
//! A record's mtime is when the image was last used (image GC evicts the least recently used).
//!
//! Records are keyed by the *exact* normalised reference (`docker.io/library/busybox:latest`),
//! hashed for the file name, and every lookup compares the reference stored inside the record:
//! two references never share a record, however similar they look (`reg.io/team/app:v1` and
//! `reg.io/team_app:v1` once did, through a file name escape, so one tenant's pod ran another's
//! image). Records of that older layout are removed at start; their images are pulled again.

use std::collections::HashSet;
use std::io::{Read, Write};
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

/// The key a reference is stored under: its normalised form (registry, repository, tag and/or
/// digest spelled out, as `oci-spec` parses it), or the text itself if it does not parse (such
/// a reference is never pulled, so never recorded).
pub fn normalise(image: &str) -> String {
    super::parse_reference(image).map_or_else(|_| image.to_string(), |r| r.whole())
}

/// Whether `name` is a record file name of the current layout: `<64 hex>.json`.
fn is_record_name(name: &str) -> bool {
    name.strip_suffix(".json").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl Store {
    /// Opens (creating) the store at `root`, removes temp files a crash left behind and records
    /// of the old aliasing layout (with the blobs only they needed).
    pub fn open(root: PathBuf) -> Result<Self, ImageError> {
        let mut migrated = 0;
        for dir in ["blobs/sha256", "refs"] {
            let dir = root.join(dir);
            std::fs::create_dir_all(&dir).map_err(store_error(&dir))?;
            for entry in std::fs::read_dir(&dir)
                .map_err(store_error(&dir))?
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.contains(TMP_MARKER) {
                    tracing::info!(path = %entry.path().display(), "removing a partial download");
                    let _ = std::fs::remove_file(entry.path());
                } else if dir.ends_with("refs") && !is_record_name(&name) {
                    let _ = std::fs::remove_file(entry.path());
                    migrated += 1;
                }
            }
        }
        let store = Self { root };
        if migrated > 0 {
            let freed = store.remove_unreferenced_blobs();
            tracing::info!(
                records = migrated,
                blobs = freed.len(),
                "removed image records of an older layout; their images will be pulled again"
            );
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The record file of `image` (any spelling of it).
    pub fn ref_path(&self, image: &str) -> PathBuf {
        let hex = format!("{:x}", Sha256::digest(normalise(image).as_bytes()));
        self.root.join("refs").join(format!("{hex}.json"))
    }

    /// Where the blob with `digest` (`sha256:<hex>`) lives.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The record of `image`, if there is one *for this very reference*.
    fn read_record(&self, image: &str) -> Option<PulledImage> {
        let text = std::fs::read(self.ref_path(image)).ok()?;
        let pulled: PulledImage = serde_json::from_slice(&text).ok()?;
        // The file name is a hash; the record itself says which reference it is for.
        (pulled.reference == normalise(image)).then_some(pulled)
    }

    /// The record for `image`, if it and every blob it needs are present.
    pub fn lookup(&self, image: &str) -> Option<PulledImage> {
        let pulled = self.read_record(image)?;
        let complete = pulled.program.exists()
            && pulled
                .files
                .values()
                .all(|digest| self.blob_path(digest).exists());
        complete.then_some(pulled)
    }

    /// Records what `pulled.reference` resolved to. If the stored record is of the same
    /// content, the credentials verified for it are kept (see `access.rs`).
    pub fn record(&self, pulled: &PulledImage) -> Result<PulledImage, ImageError> {
        let path = self.ref_path(&pulled.reference);
        let mut merged = pulled.clone();
        merged.reference = normalise(&pulled.reference);
        if let Some(old) = self.read_record(&pulled.reference)
            && old.image_id == pulled.image_id
        {
            merged.access.merge(&old.access);
        }
        let json = serde_json::to_vec_pretty(&merged).map_err(|e| ImageError::Store {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &json)?;
        Ok(merged)
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
            .filter(|e| is_record_name(&e.file_name().to_string_lossy()))
            .filter_map(|e| {
                let used = e.metadata().and_then(|m| m.modified()).ok()?;
                let text = std::fs::read(e.path()).ok()?;
                let pulled: PulledImage = serde_json::from_slice(&text).ok()?;
                // A record under another reference's name is not that reference's.
                (e.path() == self.ref_path(&pulled.reference)).then_some((pulled, used))
            })
            .collect()
    }

    /// Every blob some record needs.
    pub fn referenced_blobs(&self) -> HashSet<String> {
        self.list()
            .iter()
            .flat_map(|(p, _)| p.all_blobs())
            .collect()
    }

    /// Removes the record of `image` and the blobs no other record needs; returns the bytes
    /// freed and the digests of the blobs removed.
    pub fn remove(&self, image: &str) -> (u64, Vec<String>) {
        let Some(removed) = self.read_record(image) else {
            return (0, Vec::new());
        };
        let _ = std::fs::remove_file(self.ref_path(image));
        let kept = self.referenced_blobs();
        let mut freed = 0;
        let mut digests = Vec::new();
        for digest in removed.all_blobs() {
            if kept.contains(&digest) {
                continue;
            }
            let path = self.blob_path(&digest);
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if std::fs::remove_file(&path).is_ok() {
                freed += size;
                digests.push(digest);
            }
        }
        (freed, digests)
    }

    /// Removes every blob no record needs; returns their digests. Only safe when nothing is
    /// being pulled (at start).
    fn remove_unreferenced_blobs(&self) -> Vec<String> {
        let kept = self.referenced_blobs();
        let dir = self.root.join("blobs/sha256");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let digest = format!("sha256:{}", e.file_name().to_string_lossy());
                (!kept.contains(&digest) && std::fs::remove_file(e.path()).is_ok())
                    .then_some(digest)
            })
            .collect()
    }

    /// Removes one blob (a layer found to be too large, say) unless a record needs it.
    pub fn discard_blob(&self, digest: &str) {
        if !self.referenced_blobs().contains(digest) {
            let _ = std::fs::remove_file(self.blob_path(digest));
        }
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
        self.put_blob_from(&mut &bytes[..])
    }

    /// Streams `reader` into a blob (hashing as it goes, never holding it in memory) and
    /// returns its digest. A read error (a size limit, say) removes the partial file.
    pub fn put_blob_from(&self, reader: &mut dyn Read) -> Result<String, ImageError> {
        let dir = self.root.join("blobs/sha256");
        let tmp = tmp_path(&dir.join("incoming"));
        let written = (|| -> Result<String, ImageError> {
            let mut file = std::fs::File::create(&tmp).map_err(store_error(&tmp))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(store_error(&tmp)(e)),
                };
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).map_err(store_error(&tmp))?;
            }
            Ok(format!("sha256:{:x}", hasher.finalize()))
        })();
        let digest = match written {
            Ok(digest) => digest,
            Err(error) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(error);
            }
        };
        let path = self.blob_path(&digest);
        if path.exists() {
            let _ = std::fs::remove_file(&tmp);
        } else {
            std::fs::rename(&tmp, &path).map_err(store_error(&path))?;
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

#[cfg(test)]
impl Store {
    /// Test helper: stores `content` as the one program of image `reference` and records it.
    pub(crate) fn record_test_image(
        &self,
        reference: &str,
        content: &[u8],
        access: super::access::Access,
    ) -> PulledImage {
        let digest = self.put_blob(content).expect("blob");
        self.record(&PulledImage {
            reference: reference.into(),
            image_id: format!("r/x@{digest}"),
            program: self.blob_path(&digest),
            program_digest: digest,
            size_bytes: content.len() as u64,
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            files: Default::default(),
            blobs: Vec::new(),
            access,
        })
        .expect("record")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(store: &Store, reference: &str, content: &[u8]) -> PulledImage {
        store.record_test_image(reference, content, Default::default())
    }

    #[test]
    fn aliasing_references_have_their_own_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().into()).expect("store");
        let (slash, underscore) = ("reg.io/team/app:v1", "reg.io/team_app:v1");
        let a = record(&store, slash, b"\0asm tenant a");
        assert!(
            store.lookup(underscore).is_none(),
            "another reference is not present just because a similar one is"
        );
        let b = record(&store, underscore, b"\0asm tenant b");
        assert_ne!(store.ref_path(slash), store.ref_path(underscore));
        let found = |r: &str| store.lookup(r).expect("stored").program_digest;
        assert_eq!(found(slash), a.program_digest);
        assert_eq!(found(underscore), b.program_digest);
        // Every escape-based alias of the old layout is its own record too.
        for other in [
            "reg.io/team/app_v1",
            "reg.io/team_app_v1:latest",
            "reg.io/team:app",
        ] {
            assert!(store.lookup(other).is_none(), "{other}");
        }
        // Spellings of one reference share its record.
        let hub = record(&store, "busybox", b"\0asm hub");
        assert_eq!(hub.reference, "docker.io/library/busybox:latest");
        assert_eq!(
            found("docker.io/library/busybox:latest"),
            hub.program_digest
        );
    }

    #[test]
    fn lookup_compares_the_reference_inside_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().into()).expect("store");
        record(&store, "reg.io/team/app:v1", b"\0asm a");
        // A record under another reference's file name (a hash collision, or a planted file).
        std::fs::copy(
            store.ref_path("reg.io/team/app:v1"),
            store.ref_path("reg.io/victim:v1"),
        )
        .expect("plant");
        assert!(store.lookup("reg.io/victim:v1").is_none());
        let listed: Vec<String> = store.list().into_iter().map(|(p, _)| p.reference).collect();
        assert_eq!(
            listed,
            ["reg.io/team/app:v1"],
            "the planted file is not listed"
        );
        let (freed, _) = store.remove("reg.io/victim:v1");
        assert_eq!(freed, 0, "removing an absent image frees nothing");
        assert!(store.lookup("reg.io/team/app:v1").is_some());
    }

    #[test]
    fn records_of_the_old_layout_are_removed_with_their_blobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().into()).expect("store");
        let kept = record(&store, "reg.io/kept:v1", b"\0asm kept");
        let old = record(&store, "reg.io/team/app:v1", b"\0asm old");
        std::fs::rename(
            store.ref_path("reg.io/team/app:v1"),
            dir.path().join("refs/reg.io_team_app_v1.json"),
        )
        .expect("old name");
        let store = Store::open(dir.path().into()).expect("reopen");
        assert!(!dir.path().join("refs/reg.io_team_app_v1.json").exists());
        assert!(!old.program.exists(), "its blob went with it");
        assert!(store.lookup("reg.io/kept:v1").is_some());
        assert!(kept.program.exists());
    }
}
