//! The kubelet's atomic writer layout (`pkg/volume/util/atomic_writer.go`):
//! `<dir>/..<timestamp>/` holds the files, `<dir>/..data` links to it, and each top-level entry
//! `<dir>/<name>` links to `..data/<name>`. An update writes a new timestamped directory and
//! swaps `..data` with one rename.
//!
//! The volume directory is opened once and everything happens relative to that descriptor
//! ([`super::fs_at`]). Nothing a guest may have put there is followed: `..data` is trusted only
//! when it names one of our timestamped directories, files are read without following links,
//! and removal unlinks a planted link instead of descending into its target.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, fchmod};

use super::fs_at;

/// The link to the current data directory.
const DATA: &str = "..data";
/// The link that is renamed over [`DATA`].
const DATA_TMP: &str = "..data_tmp";

/// Files of a volume: relative path -> content and mode.
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// Writes `files` into `dir` atomically (nothing if `dir` already holds exactly them).
pub fn write(dir: &Path, files: &Files) -> io::Result<()> {
    for path in files.keys() {
        check_path(path)?;
    }
    // The path up to `dir` is the kubelet's own (no guest can write there); `dir` itself must
    // not be a link.
    std::fs::create_dir_all(dir)?;
    let dir = fs_at::open_dir(dir, true)?;
    write_at(dir.as_fd(), files)
}

/// The content and modification time of `path` in the current data of volume `dir`, read
/// without following any link.
pub fn read_current(dir: &Path, path: &str) -> io::Result<(Vec<u8>, SystemTime)> {
    check_path(path)?;
    let dir = fs_at::open_dir(dir, true)?;
    let data = current_data(dir.as_fd())?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no current data"))?;
    let mut file = open_file(data.as_fd(), path)?;
    let metadata = file.metadata()?;
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;
    Ok((content, metadata.modified()?))
}

/// Refuses paths that would leave the data directory or collide with the layout's names.
fn check_path(path: &str) -> io::Result<()> {
    let bad = path.is_empty()
        || path.starts_with("..")
        || path.split('/').any(|part| matches!(part, "" | "." | ".."));
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid path {path:?} in volume"),
        ));
    }
    Ok(())
}

/// Whether `name` is a data directory this writer creates: `..` and a timestamp.
fn is_stamp(name: &str) -> bool {
    name.strip_prefix("..")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_digit())
        && !name.contains('/')
}

/// The current data directory, opened: only when `..data` is a link to one of our
/// timestamped directories, which is a directory (not a planted link).
fn current_data(dir: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let Some(target) = fs_at::read_link_at(dir, DATA)? else {
        return Ok(None);
    };
    let Some(target) = target.to_str().filter(|t| is_stamp(t)) else {
        return Ok(None);
    };
    Ok(fs_at::open_dir_at(dir, target).ok())
}

fn write_at(dir: BorrowedFd<'_>, files: &Files) -> io::Result<()> {
    let tops: BTreeSet<&str> = files.keys().filter_map(|p| p.split('/').next()).collect();
    if let Some(data) = current_data(dir)?
        && unchanged(data.as_fd(), files)
    {
        // Still repair the visible names, in case one was replaced.
        return link_top_level(dir, &tops);
    }
    let stamp = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let data = fs_at::ensure_dir_at(dir, OsStr::new(&stamp), 0o755)?;
    if let Err(error) = write_files(data.as_fd(), files) {
        let _ = fs_at::remove_tree_at(dir, OsStr::new(&stamp));
        return Err(error);
    }
    // Swap `..data` in one rename; rename replaces a planted link itself, never its target.
    fs_at::remove_tree_at(dir, OsStr::new(DATA_TMP))?;
    fs_at::symlink_at(&stamp, dir, DATA_TMP)?;
    if fs_at::rename_at(dir, DATA_TMP, DATA).is_err() {
        // Only a directory in the way makes the rename fail; we never create one there.
        fs_at::remove_tree_at(dir, OsStr::new(DATA))?;
        fs_at::rename_at(dir, DATA_TMP, DATA)?;
    }
    link_top_level(dir, &tops)?;
    // Old data directories (the previous one, and any a crash left) go; removal never follows
    // a link, so a planted `..<digits>` link is only unlinked.
    for name in fs_at::entries(dir)? {
        if let Some(name) = name.to_str()
            && is_stamp(name)
            && name != stamp
        {
            fs_at::remove_tree_at(dir, OsStr::new(name))?;
        }
    }
    Ok(())
}

/// Writes every file into the fresh data directory `data`.
fn write_files(data: BorrowedFd<'_>, files: &Files) -> io::Result<()> {
    for (path, (content, mode)) in files {
        let mut parts: Vec<&str> = path.split('/').collect();
        let leaf = parts.pop().unwrap_or_default();
        let mut parent: Option<OwnedFd> = None;
        for part in parts {
            let at = parent.as_ref().map_or(data, |p| p.as_fd());
            parent = Some(fs_at::ensure_dir_at(at, OsStr::new(part), 0o755)?);
        }
        let at = parent.as_ref().map_or(data, |p| p.as_fd());
        let fd = nix::fcntl::openat(
            at,
            leaf,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        // The mode is set after creation so that the umask does not narrow it.
        fchmod(&fd, Mode::from_bits_truncate(*mode & 0o777))?;
        File::from(fd).write_all(content)?;
    }
    Ok(())
}

/// Makes every top-level name a link through `..data`, and removes links of names that are
/// gone (upstream's `removeUserVisiblePaths`). Anything else in the way is removed, not
/// followed.
fn link_top_level(dir: BorrowedFd<'_>, tops: &BTreeSet<&str>) -> io::Result<()> {
    for top in tops {
        let want = format!("{DATA}/{top}");
        match fs_at::read_link_at(dir, top)? {
            Some(target) if target.as_os_str() == OsStr::new(&want) => continue,
            _ => fs_at::remove_tree_at(dir, OsStr::new(top))?,
        }
        fs_at::symlink_at(&want, dir, top)?;
    }
    for name in fs_at::entries(dir)? {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("..") || tops.contains(name) {
            continue;
        }
        let want = format!("{DATA}/{name}");
        let ours =
            fs_at::read_link_at(dir, name)?.is_some_and(|t| t.as_os_str() == OsStr::new(&want));
        if ours {
            fs_at::remove_tree_at(dir, OsStr::new(name))?;
        }
    }
    Ok(())
}

/// Opens the regular file `path` beneath `data` without following any link.
fn open_file(data: BorrowedFd<'_>, path: &str) -> io::Result<File> {
    // O_NONBLOCK: a planted FIFO must not block the kubelet.
    let fd = fs_at::open_beneath(
        data,
        Path::new(path),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        false,
    )?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path} is not a regular file"),
        ));
    }
    Ok(file)
}

/// Whether the data directory `data` holds exactly `files`, contents and modes.
fn unchanged(data: BorrowedFd<'_>, files: &Files) -> bool {
    let mut found = BTreeSet::new();
    if list_files(data, "", 0, &mut found).is_err() || found.len() != files.len() {
        return false;
    }
    files.iter().all(|(path, (content, mode))| {
        found.contains(path)
            && open_file(data, path).is_ok_and(|mut file| {
                let same_mode = file
                    .metadata()
                    .is_ok_and(|m| m.permissions().mode() & 0o777 == mode & 0o777);
                let mut have = Vec::new();
                same_mode && file.read_to_end(&mut have).is_ok() && &have == content
            })
    })
}

/// Collects the relative paths of everything but directories beneath `dir` (a link counts as
/// an entry, so a planted one makes the contents differ); bounded in depth.
fn list_files(
    dir: BorrowedFd<'_>,
    prefix: &str,
    depth: usize,
    found: &mut BTreeSet<String>,
) -> io::Result<()> {
    if depth > 32 {
        return Err(io::Error::other("data directory too deep"));
    }
    for name in fs_at::entries(dir)? {
        let name = name.to_string_lossy().into_owned();
        let path = format!("{prefix}{name}");
        match fs_at::open_dir_at(dir, name.as_str()) {
            Ok(sub) => list_files(sub.as_fd(), &format!("{path}/"), depth + 1, found)?,
            Err(_) => {
                found.insert(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, &str, u32)]) -> Files {
        entries
            .iter()
            .map(|(p, c, m)| (p.to_string(), (c.as_bytes().to_vec(), *m)))
            .collect()
    }

    /// A volume directory beside a canary directory that must survive every rewrite.
    fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let canary = tmp.path().join("canary");
        std::fs::create_dir_all(canary.join("deep")).expect("canary");
        std::fs::write(canary.join("deep/file"), "precious").expect("canary file");
        let dir = tmp.path().join("volumes/vol");
        (tmp, dir, canary)
    }

    fn canary_intact(canary: &Path) {
        assert_eq!(
            std::fs::read_to_string(canary.join("deep/file")).expect("canary still there"),
            "precious"
        );
    }

    #[test]
    fn files_are_reachable_through_data_and_updates_swap() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            &files(&[("a", "1", 0o644), ("sub/b", "2", 0o600)]),
        )
        .expect("write");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a")).expect("a"),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/b")).expect("b"),
            "2"
        );
        let mode = std::fs::metadata(dir.path().join("sub/b"))
            .expect("b")
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
        let first = std::fs::read_link(dir.path().join(DATA)).expect("..data");
        // Unchanged content: nothing is rewritten.
        write(
            dir.path(),
            &files(&[("a", "1", 0o644), ("sub/b", "2", 0o600)]),
        )
        .expect("same");
        assert_eq!(
            std::fs::read_link(dir.path().join(DATA)).expect("..data"),
            first
        );
        write(dir.path(), &files(&[("a", "3", 0o644)])).expect("update");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a")).expect("a"),
            "3"
        );
        // The old data directory and the link of the removed name are gone.
        assert!(!dir.path().join(&first).exists());
        assert!(std::fs::symlink_metadata(dir.path().join("sub")).is_err());
        assert_eq!(read_current(dir.path(), "a").expect("current").0, b"3");
        for bad in ["../escape", "..data/x", "a/../../b", "/abs", "a//b", ""] {
            assert!(
                write(dir.path(), &files(&[(bad, "x", 0o644)])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_planted_data_link_is_replaced_and_its_target_kept() {
        let (_tmp, dir, canary) = setup();
        write(&dir, &files(&[("key", "v1", 0o644)])).expect("write");
        // The CVE-2017-1002102 pattern: `..data` pointing up the tree, and at the canary.
        for target in ["../..", "../../canary", canary.to_str().expect("utf-8")] {
            std::fs::remove_file(dir.join(DATA)).expect("rm ..data");
            std::os::unix::fs::symlink(target, dir.join(DATA)).expect("plant");
            write(&dir, &files(&[("key", "v1", 0o644)])).expect("rewrite");
            canary_intact(&canary);
            assert_eq!(std::fs::read_to_string(dir.join("key")).expect("key"), "v1");
            let data = std::fs::read_link(dir.join(DATA)).expect("..data");
            assert!(is_stamp(data.to_str().expect("utf-8")), "{data:?}");
        }
        // A directory planted at `..data` is removed, not merged.
        std::fs::remove_file(dir.join(DATA)).expect("rm ..data");
        std::fs::create_dir(dir.join(DATA)).expect("dir");
        std::os::unix::fs::symlink(&canary, dir.join("..data/key")).expect("plant key");
        write(&dir, &files(&[("key", "v2", 0o644)])).expect("rewrite");
        assert_eq!(std::fs::read_to_string(dir.join("key")).expect("key"), "v2");
        canary_intact(&canary);
        // The token reader does not follow a planted link either.
        std::fs::remove_file(dir.join(DATA)).expect("rm ..data");
        std::os::unix::fs::symlink(&canary, dir.join(DATA)).expect("plant");
        assert!(read_current(&dir, "deep/file").is_err());
    }

    #[test]
    fn a_planted_timestamp_directory_link_is_unlinked_not_emptied() {
        let (_tmp, dir, canary) = setup();
        write(&dir, &files(&[("key", "v1", 0o644)])).expect("write");
        // `..data` names a timestamp "directory" that is really a link to the canary.
        let fake = "..2001_01_01_00_00_00.000000000";
        std::os::unix::fs::symlink(&canary, dir.join(fake)).expect("plant stamp");
        std::fs::remove_file(dir.join(DATA)).expect("rm ..data");
        std::os::unix::fs::symlink(fake, dir.join(DATA)).expect("point ..data");
        write(&dir, &files(&[("key", "v1", 0o644)])).expect("rewrite");
        canary_intact(&canary);
        assert!(
            std::fs::symlink_metadata(dir.join(fake)).is_err(),
            "the link is gone"
        );
        // A link inside the current data directory makes it differ, and goes with it.
        let data = std::fs::read_link(dir.join(DATA)).expect("..data");
        std::fs::remove_file(dir.join(&data).join("key")).expect("rm key");
        std::os::unix::fs::symlink(canary.join("deep/file"), dir.join(&data).join("key"))
            .expect("plant key");
        write(&dir, &files(&[("key", "v1", 0o644)])).expect("rewrite");
        assert_eq!(std::fs::read_to_string(dir.join("key")).expect("key"), "v1");
        canary_intact(&canary);
    }

    #[test]
    fn a_planted_key_link_is_replaced_not_followed() {
        let (_tmp, dir, canary) = setup();
        write(&dir, &files(&[("key", "v1", 0o644), ("sub/k", "s", 0o644)])).expect("write");
        // The visible names point elsewhere: at the canary, and a directory at the canary.
        std::fs::remove_file(dir.join("key")).expect("rm key");
        std::os::unix::fs::symlink(canary.join("deep/file"), dir.join("key")).expect("plant");
        std::fs::remove_file(dir.join("sub")).expect("rm sub");
        std::os::unix::fs::symlink(&canary, dir.join("sub")).expect("plant dir");
        write(&dir, &files(&[("key", "v2", 0o644), ("sub/k", "s", 0o644)])).expect("rewrite");
        assert_eq!(std::fs::read_to_string(dir.join("key")).expect("key"), "v2");
        assert_eq!(std::fs::read_to_string(dir.join("sub/k")).expect("k"), "s");
        canary_intact(&canary);
        // Unchanged data still repairs a replaced name.
        std::fs::remove_file(dir.join("key")).expect("rm key");
        std::os::unix::fs::symlink(canary.join("deep/file"), dir.join("key")).expect("plant");
        write(&dir, &files(&[("key", "v2", 0o644), ("sub/k", "s", 0o644)])).expect("same");
        assert_eq!(std::fs::read_to_string(dir.join("key")).expect("key"), "v2");
        canary_intact(&canary);
        // A link planted over a name that is going away is not ours: it stays, untouched.
        std::fs::remove_file(dir.join("key")).expect("rm key");
        std::os::unix::fs::symlink(&canary, dir.join("key")).expect("plant");
        write(&dir, &files(&[("sub/k", "s", 0o644)])).expect("drop key");
        canary_intact(&canary);
        // The volume directory itself may not be a link.
        let elsewhere = dir.with_file_name("link");
        std::os::unix::fs::symlink(&canary, &elsewhere).expect("link vol");
        assert!(write(&elsewhere, &files(&[("key", "v", 0o644)])).is_err());
        canary_intact(&canary);
    }
}
