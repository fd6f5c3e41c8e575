//! The kubelet's atomic writer layout: `<dir>/..<timestamp>/` holds the files, `<dir>/..data`
//! links to it, and each top-level entry `<dir>/<name>` links to `..data/<name>`. An update
//! writes a new timestamped directory and swaps `..data` with one rename.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `files` (relative path -> content and mode) into `dir` atomically.
pub fn write(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if unchanged(dir, files) {
        return Ok(());
    }
    let stamp = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let data_dir = dir.join(&stamp);
    std::fs::create_dir_all(&data_dir)?;
    for (path, (content, mode)) in files {
        if path.split('/').any(|part| part == ".." || part.is_empty()) || path.starts_with("..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid path {path:?} in volume"),
            ));
        }
        let target = data_dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, content)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode & 0o777))?;
    }
    // Swap `..data` in one rename, then make sure every top-level name links through it.
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp_link, dir.join("..data"))?;
    for top in files
        .keys()
        .filter_map(|p| p.split('/').next())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)?;
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// Whether `dir/..data` already holds exactly `files` (nothing to rewrite).
fn unchanged(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> bool {
    let data = dir.join("..data");
    let count = |p: &Path| -> usize {
        fn walk(p: &Path) -> usize {
            std::fs::read_dir(p)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| {
                            if e.path().is_dir() {
                                walk(&e.path())
                            } else {
                                1
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(p)
    };
    data.exists()
        && count(&data) == files.len()
        && files.iter().all(|(path, (content, mode))| {
            let file = data.join(path);
            std::fs::read(&file).is_ok_and(|c| &c == content)
                && std::fs::metadata(&file)
                    .is_ok_and(|m| m.permissions().mode() & 0o777 == mode & 0o777)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_reachable_through_data_and_updates_swap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = BTreeMap::from([
            ("a".to_string(), (b"1".to_vec(), 0o644)),
            ("sub/b".to_string(), (b"2".to_vec(), 0o600)),
        ]);
        write(dir.path(), &files).expect("write");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a")).expect("a"),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/b")).expect("b"),
            "2"
        );
        let updated = BTreeMap::from([("a".to_string(), (b"3".to_vec(), 0o644))]);
        write(dir.path(), &updated).expect("update");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a")).expect("a"),
            "3"
        );
        let bad = BTreeMap::from([("../escape".to_string(), (b"x".to_vec(), 0o644))]);
        assert!(write(dir.path(), &bad).is_err());
    }
}
