//! `hostPath` volumes (the kubelet's hostpath plugin): a path on the node, checked against the
//! volume's `type` first. The path itself is what containers mount; a file is mounted through
//! [`super::subpath`] like a file subPath.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Checks (and for the `...OrCreate` types, creates) `path` as `type_` asks, with upstream's
/// messages ("hostPath type check failed: /x is not a directory").
pub fn check(path: &str, type_: Option<&str>) -> Result<PathBuf, String> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(format!(
            "hostPath {} is not an absolute path",
            path.display()
        ));
    }
    let failed = |what: &str| {
        format!(
            "hostPath type check failed: {} is not {what}",
            path.display()
        )
    };
    let metadata = std::fs::metadata(path);
    match type_.unwrap_or_default() {
        "" => {}
        "DirectoryOrCreate" => match metadata {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(failed("a directory")),
            Err(_) => {
                std::fs::create_dir_all(path)
                    .and_then(|()| {
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    })
                    .map_err(|e| {
                        format!("cannot create hostPath directory {}: {e}", path.display())
                    })?;
            }
        },
        "Directory" => {
            if !metadata.is_ok_and(|m| m.is_dir()) {
                return Err(failed("a directory"));
            }
        }
        "FileOrCreate" => match metadata {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(failed("a file")),
            Err(_) => {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|_| {
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                    })
                    .map_err(|e| format!("cannot create hostPath file {}: {e}", path.display()))?;
            }
        },
        "File" => {
            if !metadata.is_ok_and(|m| m.is_file()) {
                return Err(failed("a file"));
            }
        }
        "Socket" => {
            if !metadata.is_ok_and(|m| m.file_type().is_socket()) {
                return Err(failed("a socket file"));
            }
        }
        "CharDevice" => {
            if !metadata.is_ok_and(|m| m.file_type().is_char_device()) {
                return Err(failed("a character device"));
            }
        }
        "BlockDevice" => {
            if !metadata.is_ok_and(|m| m.file_type().is_block_device()) {
                return Err(failed("a block device"));
            }
        }
        other => return Err(format!("unknown hostPath type {other:?}")),
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_checks_follow_upstream() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("d");
        let file = tmp.path().join("f");
        let p = |p: &Path| p.to_str().expect("utf-8").to_string();
        assert!(check(&p(&dir), Some("Directory")).is_err());
        assert!(check(&p(&dir), Some("DirectoryOrCreate")).is_ok());
        assert!(dir.is_dir());
        assert_eq!(
            check(&p(&dir), Some("File")),
            Err(format!(
                "hostPath type check failed: {} is not a file",
                dir.display()
            ))
        );
        assert!(check(&p(&file), Some("FileOrCreate")).is_ok());
        assert!(file.is_file());
        assert!(check(&p(&file), Some("Directory")).is_err());
        assert!(check(&p(&file), Some("Socket")).is_err());
        assert!(check(&p(&file), Some("CharDevice")).is_err());
        assert!(check("/dev/null", Some("CharDevice")).is_ok());
        assert!(check("relative", None).is_err());
        assert!(check(&p(&file), Some("Weird")).is_err());
    }
}
