//! Pod network namespaces, made as `ip netns add` makes them (iproute2 `ip/ipnetns.c`,
//! `netns_add`): an empty file is created, a short-lived thread `unshare(CLONE_NEWNET)`s into
//! a new namespace and bind-mounts its own `/proc/self/task/<tid>/ns/net` onto the file, then
//! ends. The mount keeps the namespace alive without any process in it, and the file is what
//! CNI plugins get as `CNI_NETNS` (CNI spec, section 2 "Parameters").
//!
//! Krustlet keeps these files under `<data-dir>/netns/<pod-uid>`, not `/run/netns`, so several
//! nodes on one machine (the e2e harness runs many) never see each other's namespaces, and
//! reconciliation only ever touches its own. Look inside one with
//! `nsenter --net=<data-dir>/netns/<pod-uid> ip addr`.
//!
//! Code runs inside a namespace on a thread of its own ([`NetNs::run`]): `setns` changes only
//! the calling thread, and that thread ends with the work, so no other task ever runs in the
//! pod's namespace by accident. Sockets created there keep the namespace. A guest's own
//! sockets are created by wasmtime-wasi on whichever thread polls the guest, so a guest with
//! `wasi:sockets` is polled through [`InNamespace`], which enters the pod's namespace for
//! each poll and returns to the kubelet's before the poll ends.
//!
//! # Caveats
//! - Creating and entering namespaces needs `CAP_SYS_ADMIN` (Krustlet running as root).
//! - A bind mount does not survive a reboot: the file is then a plain empty file, which
//!   [`NetNs::open`] refuses ([`NetnsError::NotNamespace`]) and [`remove`] deletes.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// Errors of network namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file (or its directory) cannot be created.
    #[error("cannot create the network namespace file {path}: {source}")]
    CreateFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a new network namespace.
    #[error(
        "cannot create a network namespace (unshare CLONE_NEWNET): {source}; CNI pod networking \
         needs CAP_SYS_ADMIN: run Krustlet as root, or remove the CNI configuration from \
         --cni-conf-dir to keep pods on the node's network"
    )]
    Unshare {
        /// Why.
        #[source]
        source: Errno,
    },
    /// The namespace cannot be bind-mounted onto its file.
    #[error("cannot bind-mount the new network namespace onto {path}: {source}")]
    Mount {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The namespace file cannot be opened.
    #[error("cannot open the network namespace {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a network namespace (its bind mount is gone, e.g. after a reboot).
    #[error("{path} is not a network namespace (its bind mount is gone); it will be removed")]
    NotNamespace {
        /// The file.
        path: PathBuf,
    },
    /// `setns` into the namespace failed.
    #[error("cannot enter the network namespace {path}: {source}")]
    Enter {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The namespace cannot be unmounted or its file removed.
    #[error("cannot remove the network namespace {path}: {source}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The thread working in the namespace could not start or panicked.
    #[error(
        "the thread working in the network namespace {path} failed (it could not start or \
         panicked; the log says why)"
    )]
    Thread {
        /// The file.
        path: PathBuf,
    },
}

/// An open network namespace, bind-mounted at [`NetNs::path`].
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
}

impl NetNs {
    /// Creates a new network namespace bind-mounted at `path` (which must not exist).
    ///
    /// # Errors
    /// [`NetnsError::CreateFile`] (also when `path` exists), [`NetnsError::Unshare`] (not
    /// root), [`NetnsError::Mount`]. Nothing is left behind on error.
    pub fn create(path: &Path) -> Result<Self, NetnsError> {
        let create_error = |source| NetnsError::CreateFile {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(create_error)?;
        }
        // O_CREAT|O_EXCL as `ip netns add`: a namespace of the same name is never reused.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(path)
            .map_err(create_error)?;
        let target = path.to_path_buf();
        let made = std::thread::Builder::new()
            .name("netns-create".into())
            .spawn(move || -> Result<(), NetnsError> {
                // This thread alone moves to the new namespace, and ends right after.
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NetnsError::Unshare { source })?;
                let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
                nix::mount::mount(
                    Some(own.as_str()),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|source| NetnsError::Mount {
                    path: target,
                    source,
                })
            })
            .map_err(|_| NetnsError::Thread {
                path: path.to_path_buf(),
            })?
            .join()
            .unwrap_or_else(|_| {
                Err(NetnsError::Thread {
                    path: path.to_path_buf(),
                })
            });
        made.and_then(|()| Self::open(path)).inspect_err(|_| {
            let _ = remove(path);
        })
    }

    /// Opens the namespace bind-mounted at `path`.
    ///
    /// # Errors
    /// [`NetnsError::Open`], or [`NetnsError::NotNamespace`] for a file that is no namespace.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let fs = nix::sys::statfs::fstatfs(&file).map_err(|errno| NetnsError::Open {
            path: path.to_path_buf(),
            source: errno.into(),
        })?;
        if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(NetnsError::NotNamespace {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Where the namespace is bind-mounted (`CNI_NETNS`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread that entered this namespace, and returns its result. The
    /// thread ends with `f`, so the namespace never leaks to other work.
    ///
    /// # Errors
    /// [`NetnsError::Enter`] when `setns` fails (`f` did not run), [`NetnsError::Thread`]
    /// when the thread cannot start or `f` panicked.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let thread_error = || NetnsError::Thread {
            path: self.path.clone(),
        };
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("netns-enter".into())
                .spawn_scoped(scope, || {
                    nix::sched::setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NetnsError::Enter {
                            path: self.path.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .map_err(|_| thread_error())?;
            handle.join().unwrap_or_else(|_| Err(thread_error()))
        })
    }
}

/// The network namespace the kubelet itself runs in (its main thread's), which polling
/// threads return to after [`InNamespace`] entered a pod's.
fn home() -> Result<&'static File, NetnsError> {
    static HOME: OnceLock<Result<File, String>> = OnceLock::new();
    HOME.get_or_init(|| File::open("/proc/self/ns/net").map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| NetnsError::Open {
            path: PathBuf::from("/proc/self/ns/net"),
            source: std::io::Error::other(e.clone()),
        })
}

/// Moves the calling thread to the kubelet's network namespace. The async runtime runs it at
/// the start of each of its threads: a thread inherits the namespace of the thread that
/// spawns it, and tokio may spawn a blocking-pool thread from a worker that is polling an
/// [`InNamespace`] future, which would otherwise stay in that pod's namespace for every later
/// blocking task (the kubelet's own name lookups among them). Without `CAP_SYS_ADMIN` nothing
/// ever enters a pod's namespace, and this does nothing.
pub fn return_home() {
    if let Ok(home) = home() {
        let _ = nix::sched::setns(home, CloneFlags::CLONE_NEWNET);
    }
}

/// A future that runs inside a network namespace: each poll enters the namespace on the
/// polling thread and returns to the kubelet's before it yields, so every socket the future
/// creates while polled (a guest's `wasi:sockets`, which wasmtime-wasi creates on the calling
/// thread) belongs to the namespace, and no other task on the thread ever runs inside it.
/// A socket keeps its namespace for life, so later polls elsewhere use it safely.
pub struct InNamespace<F> {
    namespace: Arc<NetNs>,
    inner: Pin<Box<F>>,
}

impl<F: Future> InNamespace<F> {
    /// Polls `inner` inside `namespace`.
    pub fn new(namespace: Arc<NetNs>, inner: F) -> Self {
        Self {
            namespace,
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for InNamespace<F> {
    type Output = Result<F::Output, NetnsError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let home = match home() {
            Ok(home) => home,
            Err(error) => return Poll::Ready(Err(error)),
        };
        if let Err(source) = nix::sched::setns(&self.namespace.file, CloneFlags::CLONE_NEWNET) {
            return Poll::Ready(Err(NetnsError::Enter {
                path: self.namespace.path.clone(),
                source,
            }));
        }
        /// Returns the thread to the kubelet's namespace however the poll ends (a panic too).
        struct Return(&'static File);
        impl Drop for Return {
            fn drop(&mut self) {
                if let Err(error) = nix::sched::setns(self.0, CloneFlags::CLONE_NEWNET) {
                    // A worker thread stuck in a pod's namespace would give the next task's
                    // sockets to that pod: stop rather than go on (the supervisor restarts us).
                    tracing::error!(%error, "cannot return a thread to the kubelet's network namespace; aborting");
                    std::process::abort();
                }
            }
        }
        let _return = Return(home);
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

/// Unmounts and removes the namespace file at `path` (`ip netns delete`); a file that is gone
/// or no longer mounted is fine. The namespace itself ends once nothing else holds it (a
/// socket or a thread inside keeps it alive until they end).
///
/// # Errors
/// [`NetnsError::Remove`].
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    let remove_error = |source: std::io::Error| NetnsError::Remove {
        path: path.to_path_buf(),
        source,
    };
    // Only a mounted namespace is unmounted (a failed create, or a file after a reboot, is not).
    let mounted = nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC);
    if mounted {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(remove_error(errno.into())),
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(remove_error(e)),
    }
}

/// The namespace files in `dir`: `(file name, path)`, names starting with `.` skipped.
pub fn list(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            (!name.starts_with('.')).then(|| (name, e.path()))
        })
        .collect()
}

/// Fails a test that creates network namespaces when it does not run as root, naming the
/// prerequisite (tests never skip).
#[cfg(test)]
pub(crate) fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "prerequisite missing: this test creates network namespaces, which needs root \
         (CAP_SYS_ADMIN); run the suite as root, as .ci/run does"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_namespace_is_its_own_network_and_goes_away() {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("netns").join("pod-uid-1");
        let ns = NetNs::create(&path).expect("create");
        assert_eq!(ns.path(), path);
        // Another namespace than ours, and the same one when opened again.
        let ours = std::fs::metadata("/proc/self/ns/net")
            .expect("own ns")
            .ino();
        let theirs = std::fs::metadata(&path).expect("pod ns").ino();
        assert_ne!(ours, theirs);
        let inside = ns
            .run(|| std::fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino()))
            .expect("enter")
            .expect("metadata inside");
        assert_eq!(inside, theirs);
        assert_eq!(
            std::fs::metadata("/proc/thread-self/ns/net")
                .expect("caller's ns")
                .ino(),
            ours,
            "the caller's thread stays where it was"
        );
        // A port held on the host (bound, never listening) is free inside, and a listener made
        // inside is not on the host's loopback.
        let held = tokio::net::TcpSocket::new_v4().expect("socket");
        held.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind on the host");
        let port = held.local_addr().expect("addr").port();
        let _listener = ns
            .run(|| std::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("enter")
            .expect("bind inside");
        let from_host = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            std::time::Duration::from_secs(2),
        );
        assert!(
            from_host.is_err(),
            "the pod's port is reachable from the host"
        );
        assert!(matches!(
            NetNs::create(&path),
            Err(NetnsError::CreateFile { .. })
        ));
        assert_eq!(list(&dir.path().join("netns")).len(), 1);
        drop(ns);
        remove(&path).expect("remove");
        assert!(!path.exists());
        remove(&path).expect("removing twice is fine");
        assert!(list(&dir.path().join("netns")).is_empty());
    }

    #[test]
    fn a_plain_file_is_no_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stale");
        std::fs::write(&path, "").expect("write");
        assert!(matches!(
            NetNs::open(&path),
            Err(NetnsError::NotNamespace { .. })
        ));
        remove(&path).expect("a stale file goes");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_future_in_a_namespace_makes_its_sockets_there_and_the_thread_returns() {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let ns = Arc::new(NetNs::create(&dir.path().join("pod")).expect("create"));
        let inode = |path: &str| std::fs::metadata(path).expect("ns").ino();
        let pod = std::fs::metadata(ns.path()).expect("ns file").ino();
        let kubelet = inode("/proc/self/ns/net");
        assert_ne!(pod, kubelet);
        // A new namespace's loopback is down; a child started from inside is inside too.
        let up = ns
            .run(|| {
                std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
            })
            .expect("run")
            .expect("prerequisite missing: the `ip` command (iproute2)");
        assert!(up.success());
        let (inside, listener) = InNamespace::new(ns.clone(), async {
            tokio::task::yield_now().await;
            let inside = inode("/proc/thread-self/ns/net");
            (
                inside,
                std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
            )
        })
        .await
        .expect("entered");
        assert_eq!(inside, pod);
        // Back home, and the listener is the pod's: the kubelet's loopback does not reach it.
        assert_eq!(inode("/proc/thread-self/ns/net"), kubelet);
        let port = listener.local_addr().expect("addr").port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        let reached = ns
            .run(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
            .expect("run");
        assert!(reached);
        remove(ns.path()).expect("remove");
    }

    #[test]
    fn a_thread_born_inside_a_namespace_returns_home() {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let ns = NetNs::create(&dir.path().join("pod")).expect("create");
        let inode = |path: &str| std::fs::metadata(path).expect("ns").ino();
        let kubelet = inode("/proc/self/ns/net");
        let (born, after) = ns
            .run(|| {
                std::thread::spawn(move || {
                    let born = inode("/proc/thread-self/ns/net");
                    return_home();
                    (born, inode("/proc/thread-self/ns/net"))
                })
                .join()
                .expect("thread")
            })
            .expect("run");
        assert_ne!(born, kubelet, "a child thread inherits the namespace");
        assert_eq!(after, kubelet);
        remove(ns.path()).expect("remove");
    }
}
