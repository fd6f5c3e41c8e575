//! Filesystem operations relative to a directory the kubelet holds open, that never follow a
//! symlink the kubelet did not create.
//!
//! Guests write into volumes, and a sibling container can swap any name in a shared volume for
//! a symlink at any moment. Resolving a path by name twice (check, then use) or following a
//! link that a guest planted lets a guest reach host files as root (CVE-2017-1002101 and
//! CVE-2017-1002102). So the volume code opens a directory once and works with `*at` calls
//! relative to that descriptor, with `O_NOFOLLOW`, or `openat2` with `RESOLVE_BENEATH` where a
//! link that stays inside is allowed, as upstream's `doSafeOpen`
//! (`pkg/volume/util/subpath/subpath_linux.go`) does.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};

/// How deep [`remove_tree_at`] descends: a guest-built tree deeper than this is refused rather
/// than exhausting the kubelet's stack or descriptors.
const MAX_DEPTH: usize = 64;

/// The name under which a process re-opens a descriptor it holds: opening `/proc/self/fd/N`
/// yields the very file `N` refers to, whatever happened to its path since (upstream
/// bind-mounts this name for subPaths for the same reason). [`crate::runtime::Mount::open_path`]
/// is the same for mounts.
pub fn proc_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens the directory at `path`, following symlinks on the way (the kubelet's own paths and an
/// administrator's hostPath), but not in the last component when `nofollow_last`.
pub fn open_dir(path: &Path, nofollow_last: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    if nofollow_last {
        flags |= OFlag::O_NOFOLLOW;
    }
    Ok(openat(AT_FDCWD, path, flags, Mode::empty())?)
}

/// Opens `path` as an `O_PATH` descriptor (a directory or a file, never read through it),
/// following symlinks on the way: for a volume's own path, which is the kubelet's or an
/// administrator's hostPath.
pub fn open_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(openat(
        AT_FDCWD,
        path,
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the directory `name` (one component) in `dir`; a symlink there is an error (`ELOOP`
/// or `ENOTDIR`), never followed.
pub fn open_dir_at<P: ?Sized + nix::NixPath>(dir: BorrowedFd<'_>, name: &P) -> io::Result<OwnedFd> {
    Ok(openat(
        dir,
        name,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `path` (relative) beneath `root` with `flags` (`O_CLOEXEC` is added). With
/// `symlinks`, links that stay beneath `root` are followed; without, any link is an error.
/// Nothing outside `root` is ever reached: an escape is `EXDEV` (or `ELOOP`).
pub fn open_beneath(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
    symlinks: bool,
) -> io::Result<OwnedFd> {
    let mut resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    if !symlinks {
        resolve |= ResolveFlag::RESOLVE_NO_SYMLINKS;
    }
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve);
    loop {
        match openat2(root, path, how) {
            // openat2 asks for a retry when a rename raced the lookup.
            Err(Errno::EAGAIN) => continue,
            other => return Ok(other?),
        }
    }
}

/// Creates the directory `name` in `dir` (an existing one is fine) and opens it without
/// following a symlink.
pub fn ensure_dir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<OwnedFd> {
    match mkdirat(dir, name, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    open_dir_at(dir, name)
}

/// The target of the symlink `name` in `dir`; `None` if `name` does not exist or is not a
/// symlink.
pub fn read_link_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<OsString>> {
    match readlinkat(dir, name) {
        Ok(target) => Ok(Some(target)),
        Err(Errno::ENOENT | Errno::EINVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Creates the symlink `name` -> `target` in `dir`.
pub fn symlink_at(target: &str, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    Ok(symlinkat(target, dir, name)?)
}

/// Renames `from` to `to`, both in `dir` (neither is followed if a symlink).
pub fn rename_at(dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
    Ok(renameat(dir, from, dir, to)?)
}

/// The names in directory `dir` (without `.` and `..`).
pub fn entries(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let own = open_dir_at(dir, ".")?;
    let mut listing = Dir::from_fd(own)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Removes `name` from `dir` and, when it is a directory, everything beneath it, without ever
/// following a symlink (a link is removed, never its target). A missing `name` is fine.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    remove_tree(dir, name, 0)
}

fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr, depth: usize) -> io::Result<()> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        // Linux says EISDIR for a directory; POSIX allows EPERM.
        Err(Errno::EISDIR | Errno::EPERM) => {}
        Err(e) => return Err(e.into()),
    }
    if depth >= MAX_DEPTH {
        return Err(io::Error::other(format!(
            "directory tree deeper than {MAX_DEPTH} levels; not removed"
        )));
    }
    // O_NOFOLLOW: if `name` was swapped for a link since, this fails instead of descending.
    let sub = open_dir_at(dir, name)?;
    for entry in entries(sub.as_fd())? {
        remove_tree(sub.as_fd(), &entry, depth + 1)?;
    }
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_tree_removes_links_not_their_targets() {
        let tmp = tempfile::tempdir().expect("tmp");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("keep")).expect("outside");
        std::fs::write(outside.join("keep/file"), "precious").expect("file");
        let tree = tmp.path().join("vol/tree");
        std::fs::create_dir_all(tree.join("a/b")).expect("tree");
        std::fs::write(tree.join("a/b/f"), "x").expect("f");
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).expect("link");
        std::os::unix::fs::symlink("../../outside", tree.join("rel")).expect("rel");
        let vol = open_dir(&tmp.path().join("vol"), true).expect("open");
        remove_tree_at(vol.as_fd(), OsStr::new("tree")).expect("remove");
        assert!(!tree.exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("keep/file")).expect("kept"),
            "precious"
        );
        // A link at the top is removed itself.
        std::os::unix::fs::symlink(&outside, tmp.path().join("vol/top")).expect("top");
        remove_tree_at(vol.as_fd(), OsStr::new("top")).expect("remove link");
        assert!(outside.join("keep/file").exists());
        remove_tree_at(vol.as_fd(), OsStr::new("missing")).expect("missing is fine");
    }

    #[test]
    fn open_beneath_refuses_escapes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(vol.join("d")).expect("d");
        std::os::unix::fs::symlink("d", vol.join("inside")).expect("inside");
        std::os::unix::fs::symlink("../", vol.join("up")).expect("up");
        std::os::unix::fs::symlink("/etc", vol.join("abs")).expect("abs");
        let root = open_dir(&vol, true).expect("open");
        let flags = OFlag::O_PATH;
        assert!(open_beneath(root.as_fd(), Path::new("inside"), flags, true).is_ok());
        assert!(open_beneath(root.as_fd(), Path::new("inside"), flags, false).is_err());
        assert!(open_beneath(root.as_fd(), Path::new("up/vol"), flags, true).is_err());
        assert!(open_beneath(root.as_fd(), Path::new("abs"), flags, true).is_err());
        assert!(open_dir(&vol.join("inside"), true).is_err());
    }
}
