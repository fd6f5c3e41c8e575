//! A container's view of one volume mount (the kubelet's `makeMounts` with its subpath checks):
//! the volume's directory, or a `subPath`/`subPathExpr` inside it that may not leave the
//! volume through `..` or symlinks.
//!
//! WASI mounts directories only (preopens). A file — a file `subPath` such as one ConfigMap
//! key, or a file `hostPath` — is mounted as a directory of its own at the mount path's parent
//! that holds the file under the mount path's name: a hard link, so writes reach the volume, or
//! a copy when the file is on another filesystem.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::VolumeMount;

use crate::container::argv::expand;
use crate::runtime::Mount;

/// Where a container mounts `mount` of the volume at `volume_dir`. `staging` is a directory
/// this mount may use for a file mount; `env` expands `subPathExpr`.
pub fn container_mount(
    volume_dir: &Path,
    mount: &VolumeMount,
    env: &HashMap<String, String>,
    staging: &Path,
) -> Result<Mount, String> {
    let read_only = mount.read_only.unwrap_or(false);
    let sub_path = match (&mount.sub_path, &mount.sub_path_expr) {
        (Some(sub), _) if !sub.is_empty() => sub.clone(),
        (_, Some(expr)) if !expr.is_empty() => expand(expr, env),
        _ => String::new(),
    };
    let root = volume_dir.canonicalize().map_err(|e| {
        format!(
            "volume {:?} is not accessible at {}: {e}",
            mount.name,
            volume_dir.display()
        )
    })?;
    let path = if sub_path.is_empty() {
        root.clone()
    } else {
        inside(&root, &sub_path, &mount.name)?
    };
    let metadata = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if metadata.is_dir() {
        return Ok(Mount {
            host_path: path,
            container_path: mount.mount_path.clone(),
            read_only,
        });
    }
    if !metadata.is_file() {
        return Err(format!(
            "volumeMount {:?}: {} is neither a directory nor a regular file; WebAssembly containers can mount only those",
            mount.name,
            path.display()
        ));
    }
    let guest = Path::new(&mount.mount_path);
    let (Some(parent), Some(file_name)) = (guest.parent(), guest.file_name()) else {
        return Err(format!(
            "volumeMount {:?}: mountPath {:?} cannot hold a file",
            mount.name, mount.mount_path
        ));
    };
    let _ = std::fs::remove_dir_all(staging);
    std::fs::create_dir_all(staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let staged = staging.join(file_name);
    if std::fs::hard_link(&path, &staged).is_err() {
        std::fs::copy(&path, &staged)
            .map_err(|e| format!("cannot stage {}: {e}", path.display()))?;
    }
    Ok(Mount {
        host_path: staging.to_path_buf(),
        container_path: parent.to_string_lossy().into_owned(),
        read_only,
    })
}

/// `sub_path` resolved inside `root` (canonical), created as a directory if missing, as
/// upstream does; refused if it is absolute, has `..`, or a symlink leads out of the volume.
fn inside(root: &Path, sub_path: &str, volume: &str) -> Result<PathBuf, String> {
    let relative = Path::new(sub_path);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(format!(
            "subPath {sub_path:?} of volume {volume:?} must be a relative path that does not contain '..'"
        ));
    }
    let escape = |resolved: &Path| {
        format!(
            "subPath {sub_path:?} of volume {volume:?} resolves to {}, outside the volume",
            resolved.display()
        )
    };
    let mut current = root.to_path_buf();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        let next = current.join(name);
        if std::fs::symlink_metadata(&next).is_err() {
            std::fs::create_dir(&next)
                .map_err(|e| format!("cannot create subPath {}: {e}", next.display()))?;
        }
        // Resolve each step: a symlink anywhere on the way may point out of the volume.
        current = next
            .canonicalize()
            .map_err(|e| format!("{}: {e}", next.display()))?;
        if !current.starts_with(root) {
            return Err(escape(&current));
        }
    }
    Ok(current)
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

    #[test]
    fn subpaths_stay_inside_the_volume() {
        let tmp = tempfile::tempdir().expect("tmp");
        let volume = tmp.path().join("vol");
        std::fs::create_dir_all(volume.join("data")).expect("dir");
        std::fs::write(volume.join("data/config.json"), "{}").expect("file");
        std::os::unix::fs::symlink("/etc", volume.join("escape")).expect("symlink");
        let env = HashMap::from([("POD".to_string(), "p1".to_string())]);
        let staging = tmp.path().join("staging");

        let whole = container_mount(&volume, &mount(None, "/v"), &env, &staging).expect("whole");
        assert_eq!(whole.host_path, volume.canonicalize().expect("canon"));

        let dir =
            container_mount(&volume, &mount(Some("data"), "/d"), &env, &staging).expect("dir");
        assert!(dir.host_path.ends_with("vol/data"));

        let created = container_mount(&volume, &mount(Some("new/deeper"), "/n"), &env, &staging)
            .expect("created");
        assert!(created.host_path.is_dir());

        let expr = VolumeMount {
            sub_path_expr: Some("logs/$(POD)".into()),
            ..mount(None, "/l")
        };
        let expanded = container_mount(&volume, &expr, &env, &staging).expect("expr");
        assert!(expanded.host_path.ends_with("vol/logs/p1"));

        let file = container_mount(
            &volume,
            &mount(Some("data/config.json"), "/etc/app/config.json"),
            &env,
            &staging,
        )
        .expect("file");
        assert_eq!(file.container_path, "/etc/app");
        assert_eq!(
            std::fs::read_to_string(file.host_path.join("config.json")).expect("staged"),
            "{}"
        );

        let dots = container_mount(&volume, &mount(Some("../../etc"), "/x"), &env, &staging)
            .expect_err("dots");
        assert!(
            dots.contains("must be a relative path that does not contain '..'"),
            "{dots}"
        );
        let link = container_mount(&volume, &mount(Some("escape"), "/x"), &env, &staging)
            .expect_err("symlink");
        assert!(
            link.contains("resolves to /etc, outside the volume"),
            "{link}"
        );
        let via_expr = VolumeMount {
            sub_path_expr: Some("$(UP)/etc".into()),
            ..mount(None, "/x")
        };
        let env_up = HashMap::from([("UP".to_string(), "..".to_string())]);
        assert!(container_mount(&volume, &via_expr, &env_up, &staging).is_err());
    }
}
