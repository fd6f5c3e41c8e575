//! A container's view of one volume mount (the kubelet's `makeMounts` with its subpath checks):
//! the volume's directory, or a `subPath`/`subPathExpr` inside it that may not leave the
//! volume through `..` or symlinks.
//!
//! The result is a directory the kubelet holds open ([`Mount::dir`]), never a path: a sibling
//! container sharing the volume can swap any component for a symlink between a check and a
//! later open by name (CVE-2017-1002101). Each component is resolved with `openat2` beneath the
//! volume (`RESOLVE_BENEATH`: a link that stays inside is followed, one that leads out is an
//! error), and the runtime opens the held descriptor through `/proc/self/fd/N`, as upstream
//! bind-mounts `/proc/self/fd/N` (`pkg/volume/util/subpath/subpath_linux.go`).
//!
//! WASI mounts directories only (preopens). A file — a file `subPath` such as one ConfigMap
//! key, or a file `hostPath` — is mounted as a directory of its own at the mount path's parent
//! that holds the file under the mount path's name: a hard link of the opened file, so writes
//! reach the volume, or a copy of it when the file is on another filesystem.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::VolumeMount;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};

use super::HostVolume;
use super::fs_at;
use crate::container::argv::expand;
use crate::runtime::Mount;

/// Why a volume mount cannot be made; the container waits with `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
pub enum SubPathError {
    /// The volume's directory cannot be opened.
    #[error("volume {volume:?} is not accessible at {}: {source}", path.display())]
    Inaccessible {
        /// The volume.
        volume: String,
        /// Its directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The subPath is absolute or has `..`.
    #[error(
        "subPath {sub_path:?} of volume {volume:?} must be a relative path that does not contain '..'"
    )]
    Backsteps {
        /// The volume.
        volume: String,
        /// The (expanded) subPath.
        sub_path: String,
    },
    /// A symlink on the way leads out of the volume.
    #[error("subPath {sub_path:?} of volume {volume:?} resolves to {resolved}, outside the volume")]
    Escape {
        /// The volume.
        volume: String,
        /// The (expanded) subPath.
        sub_path: String,
        /// Where it led when looked at (for the message only).
        resolved: String,
    },
    /// The subPath could not be created or opened.
    #[error("cannot open subPath {sub_path:?} of volume {volume:?}: {source}")]
    Open {
        /// The volume.
        volume: String,
        /// The (expanded) subPath.
        sub_path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Neither a directory nor a regular file (a FIFO, a device, a socket).
    #[error(
        "volumeMount {volume:?}: {} is neither a directory nor a regular file; WebAssembly containers can mount only those",
        path.display()
    )]
    NotDirOrFile {
        /// The volume.
        volume: String,
        /// What was found.
        path: PathBuf,
    },
    /// A file mount's mountPath has no parent directory to hold it.
    #[error("volumeMount {volume:?}: mountPath {mount_path:?} cannot hold a file")]
    FileMountPath {
        /// The volume.
        volume: String,
        /// The mountPath.
        mount_path: String,
    },
    /// The staging directory for a file mount could not be prepared.
    #[error("cannot stage {} for volumeMount {volume:?}: {source}", path.display())]
    Stage {
        /// The volume.
        volume: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Where a container mounts `mount` of `volume`. `staging` is a directory this mount may use
/// for a file mount; `env` expands `subPathExpr`.
pub fn container_mount(
    volume: &HostVolume,
    mount: &VolumeMount,
    env: &HashMap<String, String>,
    staging: &Path,
) -> Result<Mount, SubPathError> {
    // Volumes that must be read-only (ConfigMap, Secret, ...) are, whatever the mount says:
    // upstream's `mustMountRO` in makeMounts (`pkg/kubelet/kubelet_pods.go`).
    let read_only = mount.read_only.unwrap_or(false) || volume.read_only;
    let sub_path = match (&mount.sub_path, &mount.sub_path_expr) {
        (Some(sub), _) if !sub.is_empty() => sub.clone(),
        (_, Some(expr)) if !expr.is_empty() => expand(expr, env),
        _ => String::new(),
    };
    // The volume's own path is the kubelet's, or an administrator's hostPath (a directory or
    // a file): links in it are followed, as upstream mounts it.
    let root = fs_at::open_path(&volume.path).map_err(|source| SubPathError::Inaccessible {
        volume: mount.name.clone(),
        path: volume.path.clone(),
        source,
    })?;
    let host_path = if sub_path.is_empty() {
        volume.path.clone()
    } else {
        volume.path.join(&sub_path)
    };
    let opened = if sub_path.is_empty() {
        root
    } else {
        open_sub_path(&root, &volume.path, &sub_path, &mount.name)?
    };
    let kind = fstat(&opened)
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)
        .map_err(|e| SubPathError::Open {
            volume: mount.name.clone(),
            sub_path: sub_path.clone(),
            source: e.into(),
        })?;
    if kind == SFlag::S_IFDIR {
        return Ok(Mount {
            dir: Arc::new(opened),
            host_path,
            container_path: mount.mount_path.clone(),
            read_only,
        });
    }
    if kind != SFlag::S_IFREG {
        return Err(SubPathError::NotDirOrFile {
            volume: mount.name.clone(),
            path: host_path,
        });
    }
    let guest = Path::new(&mount.mount_path);
    let (Some(parent), Some(file_name)) = (guest.parent(), guest.file_name()) else {
        return Err(SubPathError::FileMountPath {
            volume: mount.name.clone(),
            mount_path: mount.mount_path.clone(),
        });
    };
    let dir = stage_file(&opened, staging, file_name).map_err(|source| SubPathError::Stage {
        volume: mount.name.clone(),
        path: host_path,
        source,
    })?;
    Ok(Mount {
        dir: Arc::new(dir),
        host_path: staging.to_path_buf(),
        container_path: parent.to_string_lossy().into_owned(),
        read_only,
    })
}

/// Opens `sub_path` beneath the volume `root` (an `O_PATH` descriptor), creating missing
/// directories as upstream does; refused if it is absolute, has `..`, or a symlink leads out.
fn open_sub_path(
    root: &OwnedFd,
    root_path: &Path,
    sub_path: &str,
    volume: &str,
) -> Result<OwnedFd, SubPathError> {
    let relative = Path::new(sub_path);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(SubPathError::Backsteps {
            volume: volume.into(),
            sub_path: sub_path.into(),
        });
    }
    let open_error = |source: io::Error| {
        if matches!(
            Errno::from_raw(source.raw_os_error().unwrap_or(0)),
            Errno::EXDEV | Errno::ELOOP
        ) {
            // Only for the message: where the link leads now (it may differ by the time we
            // look; nothing is opened through it).
            let resolved = std::fs::canonicalize(root_path.join(sub_path))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "a path through a symlink".into());
            SubPathError::Escape {
                volume: volume.into(),
                sub_path: sub_path.into(),
                resolved,
            }
        } else {
            SubPathError::Open {
                volume: volume.into(),
                sub_path: sub_path.into(),
                source,
            }
        }
    };
    let names: Vec<&OsStr> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let mut current: Option<OwnedFd> = None;
    let mut prefix = PathBuf::new();
    for name in names {
        prefix.push(name);
        let open = || fs_at::open_beneath(root.as_fd(), &prefix, OFlag::O_PATH, true);
        let next = match open() {
            Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => {
                // Created relative to the parent we hold, so it lands inside the volume even
                // if the parent's name was swapped meanwhile.
                let parent = current.as_ref().unwrap_or(root).as_fd();
                match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(open_error(e.into())),
                }
                open()
            }
            other => other,
        }
        .map_err(open_error)?;
        current = Some(next);
    }
    current.ok_or_else(|| SubPathError::Backsteps {
        volume: volume.into(),
        sub_path: sub_path.into(),
    })
}

/// Makes `staging` a fresh directory holding `file` (an opened regular file) as `name`: a
/// hard link of that very inode, or a copy across filesystems. Returns the directory, opened.
fn stage_file(file: &OwnedFd, staging: &Path, name: &OsStr) -> io::Result<OwnedFd> {
    let (Some(parent), Some(leaf)) = (staging.parent(), staging.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "staging directory has no parent",
        ));
    };
    // The staging directory was a previous run's preopen: whatever the guest left there is
    // removed without following links.
    std::fs::create_dir_all(parent)?;
    let parent = fs_at::open_dir(parent, true)?;
    fs_at::remove_tree_at(parent.as_fd(), leaf)?;
    let dir = fs_at::ensure_dir_at(parent.as_fd(), leaf, 0o755)?;
    let source = fs_at::proc_path(file);
    // AT_SYMLINK_FOLLOW on /proc/self/fd/N links the inode we opened, not a name.
    match nix::unistd::linkat(
        AT_FDCWD,
        source.as_path(),
        &dir,
        name,
        AtFlags::AT_SYMLINK_FOLLOW,
    ) {
        Ok(()) => return Ok(dir),
        Err(Errno::EXDEV) => {}
        Err(e) => return Err(e.into()),
    }
    let mut from = File::open(&source)?;
    let mode = from.metadata()?.permissions();
    let to = nix::fcntl::openat(
        &dir,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let mut to = File::from(to);
    io::copy(&mut from, &mut to)?;
    to.set_permissions(mode)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(sub_path: Option<&str>, mount_path: &str) -> VolumeMount {
        VolumeMount {
            name: "v".into(),
            mount_path: mount_path.into(),
            sub_path: sub_path.map(str::to_string),
            ..Default::default()
        }
    }

    /// What the mount's held descriptor points at now.
    fn target(m: &Mount) -> PathBuf {
        std::fs::read_link(m.open_path()).expect("proc link")
    }

    #[test]
    fn subpaths_stay_inside_the_volume() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("vol");
        std::fs::create_dir_all(path.join("data/real")).expect("dir");
        std::fs::write(path.join("data/config.json"), "{}").expect("file");
        std::os::unix::fs::symlink("/etc", path.join("escape")).expect("symlink");
        std::os::unix::fs::symlink("../../", path.join("data/up")).expect("symlink");
        std::os::unix::fs::symlink("real", path.join("data/inside")).expect("symlink");
        let volume = HostVolume {
            path: path.clone(),
            read_only: false,
        };
        let env = HashMap::from([("POD".to_string(), "p1".to_string())]);
        let staging = tmp.path().join("staging/0");
        let canonical = path.canonicalize().expect("canon");

        let whole = container_mount(&volume, &mount(None, "/v"), &env, &staging).expect("whole");
        assert_eq!(target(&whole), canonical);
        assert!(!whole.read_only);

        let dir =
            container_mount(&volume, &mount(Some("data"), "/d"), &env, &staging).expect("dir");
        assert_eq!(target(&dir), canonical.join("data"));

        // A link that stays inside the volume is followed, as upstream's EvalSymlinks.
        let inside = container_mount(&volume, &mount(Some("data/inside"), "/i"), &env, &staging)
            .expect("inside");
        assert_eq!(target(&inside), canonical.join("data/real"));

        let created = container_mount(&volume, &mount(Some("new/deeper"), "/n"), &env, &staging)
            .expect("created");
        assert!(target(&created).is_dir());

        let expr = VolumeMount {
            sub_path_expr: Some("logs/$(POD)".into()),
            ..mount(None, "/l")
        };
        let expanded = container_mount(&volume, &expr, &env, &staging).expect("expr");
        assert_eq!(target(&expanded), canonical.join("logs/p1"));

        let file = container_mount(
            &volume,
            &mount(Some("data/config.json"), "/etc/app/config.json"),
            &env,
            &staging,
        )
        .expect("file");
        assert_eq!(file.container_path, "/etc/app");
        assert_eq!(
            std::fs::read_to_string(file.open_path().join("config.json")).expect("staged"),
            "{}"
        );

        let dots = container_mount(&volume, &mount(Some("../../etc"), "/x"), &env, &staging)
            .expect_err("dots")
            .to_string();
        assert!(
            dots.contains("must be a relative path that does not contain '..'"),
            "{dots}"
        );
        let link = container_mount(&volume, &mount(Some("escape"), "/x"), &env, &staging)
            .expect_err("symlink")
            .to_string();
        assert!(
            link.contains("resolves to /etc, outside the volume"),
            "{link}"
        );
        let up = container_mount(&volume, &mount(Some("data/up/x"), "/x"), &env, &staging)
            .expect_err("up")
            .to_string();
        assert!(up.contains("outside the volume"), "{up}");
        assert!(!tmp.path().join("x").exists(), "nothing created outside");
        let via_expr = VolumeMount {
            sub_path_expr: Some("$(UP)/etc".into()),
            ..mount(None, "/x")
        };
        let env_up = HashMap::from([("UP".to_string(), "..".to_string())]);
        assert!(container_mount(&volume, &via_expr, &env_up, &staging).is_err());
    }

    #[test]
    fn the_held_directory_survives_a_swap_of_its_name() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("vol");
        std::fs::create_dir_all(path.join("sub")).expect("sub");
        std::fs::write(path.join("sub/ok.txt"), "inside").expect("ok");
        std::fs::create_dir_all(tmp.path().join("canary")).expect("canary");
        std::fs::write(tmp.path().join("canary/ok.txt"), "CANARY").expect("canary file");
        let volume = HostVolume {
            path: path.clone(),
            read_only: false,
        };
        let m = container_mount(
            &volume,
            &mount(Some("sub"), "/m"),
            &HashMap::new(),
            &tmp.path().join("staging"),
        )
        .expect("mount");
        // A sibling swaps the name for a link out of the volume after the check.
        std::fs::rename(path.join("sub"), path.join("sub.dir")).expect("move");
        std::os::unix::fs::symlink("../canary", path.join("sub")).expect("link");
        assert_eq!(
            std::fs::read_to_string(m.open_path().join("ok.txt")).expect("read"),
            "inside"
        );
    }

    #[test]
    fn read_only_volumes_and_files_through_links() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("vol");
        std::fs::create_dir_all(&path).expect("vol");
        std::fs::write(tmp.path().join("secret"), "host secret").expect("secret");
        std::os::unix::fs::symlink("../secret", path.join("key")).expect("link");
        std::fs::write(path.join("fifo-free"), "x").expect("file");
        let volume = HostVolume {
            path: path.clone(),
            read_only: true,
        };
        let env = HashMap::new();
        let staging = tmp.path().join("staging/0");
        let whole = container_mount(&volume, &mount(None, "/v"), &env, &staging).expect("whole");
        assert!(
            whole.read_only,
            "a read-only volume ignores the mount's readOnly"
        );
        // A file subPath that is a link out of the volume is refused, not copied.
        let error = container_mount(&volume, &mount(Some("key"), "/etc/key"), &env, &staging)
            .expect_err("link out")
            .to_string();
        assert!(error.contains("outside the volume"), "{error}");
        // Whatever a guest left in the staging directory is removed, links unfollowed.
        std::fs::create_dir_all(&staging).expect("staging");
        std::os::unix::fs::symlink(tmp.path(), staging.join("planted")).expect("plant");
        let file = container_mount(&volume, &mount(Some("fifo-free"), "/etc/f"), &env, &staging)
            .expect("file");
        assert!(file.read_only);
        assert!(std::fs::symlink_metadata(staging.join("planted")).is_err());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("secret")).expect("kept"),
            "host secret"
        );
    }
}
