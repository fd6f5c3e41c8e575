//! Mounts held closed between instances: what a running container's exec target keeps of
//! each mount, so that `kubectl exec` and exec probes can open the directory again.
//!
//! A running instance reaches its mounts through the runtime's own descriptors (wasmtime opens
//! every preopen itself); the kubelet's descriptor for the same directory is needed only while
//! an instance starts. Kept open for the exec target as long as the container ran, it doubled
//! what a sleeping pod holds, and descriptors are what bound a node's pods under a low
//! `RLIMIT_NOFILE`. Opening a directory again by its host path is safe only because the result
//! is checked: it must be the very directory the kubelet resolved when the container started
//! (same device and inode), so a path whose components a guest has swapped for symlinks since
//! is refused, never followed elsewhere. The inode cannot have been reused for another file in
//! the meantime: the running container's own preopen of it keeps it allocated, and exec
//! targets exist only while the container runs.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use nix::libc::{dev_t, ino_t};
use nix::sys::stat::fstat;

use super::fs_at;
use crate::runtime::Mount;

/// A mount whose directory is closed until an instance needs it (see the module docs).
#[derive(Debug, Clone)]
pub struct ClosedMount {
    /// Where the directory was resolved on the host.
    host_path: PathBuf,
    /// Where the container sees it.
    container_path: String,
    /// Whether writes are refused.
    read_only: bool,
    /// The directory's device and inode.
    identity: (dev_t, ino_t),
}

/// Why a mount cannot be opened again for an instance.
#[derive(Debug, thiserror::Error)]
pub enum ReopenError {
    /// Its host path cannot be opened (removed, say).
    #[error("cannot open the directory mounted at {container_path} ({}): {source}", host_path.display())]
    Open {
        /// The host path.
        host_path: PathBuf,
        /// Where the container sees it.
        container_path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Its host path leads to another directory than the container's.
    #[error(
        "the directory mounted at {container_path} ({}) was replaced since the container started",
        host_path.display()
    )]
    Replaced {
        /// The host path.
        host_path: PathBuf,
        /// Where the container sees it.
        container_path: String,
    },
}

impl ClosedMount {
    /// What opens `mount`'s directory again: its host path and identity.
    ///
    /// # Errors
    /// When the held directory cannot be examined (`fstat`).
    pub fn of(mount: &Mount) -> io::Result<Self> {
        let stat = fstat(&*mount.dir)?;
        Ok(Self {
            host_path: mount.host_path.clone(),
            container_path: mount.container_path.clone(),
            read_only: mount.read_only,
            identity: (stat.st_dev, stat.st_ino),
        })
    }

    /// Opens the directory again, as a mount for one more instance.
    ///
    /// # Errors
    /// [`ReopenError`] when its host path cannot be opened or leads to another directory.
    pub fn open(&self) -> Result<Mount, ReopenError> {
        let open_error = |source: io::Error| ReopenError::Open {
            host_path: self.host_path.clone(),
            container_path: self.container_path.clone(),
            source,
        };
        let dir = fs_at::open_path(&self.host_path).map_err(open_error)?;
        let stat = fstat(&dir).map_err(|e| open_error(e.into()))?;
        if (stat.st_dev, stat.st_ino) != self.identity {
            return Err(ReopenError::Replaced {
                host_path: self.host_path.clone(),
                container_path: self.container_path.clone(),
            });
        }
        Ok(Mount {
            dir: Arc::new(dir),
            host_path: self.host_path.clone(),
            container_path: self.container_path.clone(),
            read_only: self.read_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(host: &std::path::Path) -> Mount {
        Mount {
            dir: Arc::new(fs_at::open_dir(host, true).expect("open")),
            host_path: host.to_path_buf(),
            container_path: "/data".into(),
            read_only: true,
        }
    }

    #[test]
    fn a_closed_mount_opens_the_same_directory_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("vol");
        std::fs::create_dir(&host).expect("mkdir");
        std::fs::write(host.join("f"), "in the volume").expect("write");
        let closed = ClosedMount::of(&mount(&host)).expect("identify");
        let again = closed.open().expect("reopen");
        assert_eq!(
            std::fs::read_to_string(again.open_path().join("f")).expect("read"),
            "in the volume"
        );
        assert_eq!(
            (
                again.host_path.as_path(),
                again.container_path.as_str(),
                again.read_only
            ),
            (host.as_path(), "/data", true)
        );
    }

    #[test]
    fn a_directory_swapped_or_removed_since_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("vol");
        std::fs::create_dir(&host).expect("mkdir");
        // The running container's preopen, which keeps the original directory's inode.
        let running = mount(&host);
        let closed = ClosedMount::of(&running).expect("identify");
        // Swapped for a symlink to a directory elsewhere (a guest's move in a shared volume).
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::fs::rename(&host, dir.path().join("moved")).expect("move");
        std::os::unix::fs::symlink(&elsewhere, &host).expect("symlink");
        assert!(
            matches!(closed.open(), Err(ReopenError::Replaced { .. })),
            "a swapped path is followed"
        );
        // Replaced by a new directory of the same name.
        std::fs::remove_file(&host).expect("unlink");
        std::fs::create_dir(&host).expect("mkdir");
        assert!(matches!(closed.open(), Err(ReopenError::Replaced { .. })));
        // Gone.
        std::fs::remove_dir(&host).expect("rmdir");
        let error = closed.open().expect_err("gone");
        assert!(matches!(error, ReopenError::Open { .. }), "{error}");
        assert!(error.to_string().contains("/data"), "{error}");
        drop(running);
    }
}
