//! Image garbage collection (the kubelet's `image_gc_manager.go`): when disk use of the data
//! dir's filesystem reaches `--image-gc-high-threshold` percent, remove the least recently used
//! images that no container on the node uses, until use is below `--image-gc-low-threshold`.
//! The runtime's compiled code for the programs removed goes with them
//! ([`Runtime::forget_programs`]). Also publishes the node's image list for the node status.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ContainerImage;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ImageStore;
use crate::node::host::Filesystem;
use crate::runtime::Runtime;

/// How often disk use is checked (one `statvfs`, cheap).
pub const GC_PERIOD: Duration = Duration::from_secs(10);
/// The most images the node status lists, as the kubelet's `nodeStatusMaxImages`.
pub const MAX_STATUS_IMAGES: usize = 50;

/// When to collect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcPolicy {
    /// Disk use (percent) at which collection starts.
    pub high_percent: u8,
    /// Disk use (percent) collection brings it below.
    pub low_percent: u8,
    /// An image unused for less than this is kept.
    pub minimum_age: Duration,
}

/// What one collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Bytes freed.
    pub bytes: u64,
    /// Digests of the blobs removed (programs among them).
    pub digests: Vec<String>,
}

/// Collects once if disk use calls for it.
pub fn collect(images: &ImageStore, fs: Filesystem, policy: &GcPolicy) -> Collected {
    let mut collected = Collected::default();
    if fs.total_bytes == 0 || policy.high_percent >= 100 {
        return collected;
    }
    let used = fs.total_bytes.saturating_sub(fs.available_bytes);
    let usage = used * 100 / fs.total_bytes;
    if usage < u64::from(policy.high_percent) {
        return collected;
    }
    let target = fs.total_bytes * u64::from(policy.low_percent) / 100;
    let to_free = used.saturating_sub(target);
    tracing::info!(
        usage_percent = usage,
        high = policy.high_percent,
        to_free,
        "disk use is over the image GC high threshold"
    );
    let in_use = images.in_use();
    let now = SystemTime::now();
    let mut candidates: Vec<_> = images
        .store()
        .list()
        .into_iter()
        .filter(|(image, _)| !in_use.contains(&image.reference))
        .filter(|(_, used)| now.duration_since(*used).unwrap_or_default() >= policy.minimum_age)
        .collect();
    candidates.sort_by_key(|(_, used)| *used);
    for (image, _) in candidates {
        if collected.bytes >= to_free {
            break;
        }
        let (bytes, digests) = images.store().remove(&image.reference);
        tracing::info!(image = %image.reference, bytes, "image GC removed an unused image");
        collected.bytes += bytes;
        collected.digests.extend(digests);
    }
    collected
}

/// The node status `images` list: one entry per image (by digest), names `repo@digest` and
/// the references that resolved to it, largest first, at most [`MAX_STATUS_IMAGES`].
pub fn status_images(images: &ImageStore) -> Vec<ContainerImage> {
    let mut by_id: std::collections::BTreeMap<String, ContainerImage> = Default::default();
    for (image, _) in images.store().list() {
        let entry = by_id
            .entry(image.image_id.clone())
            .or_insert_with(|| ContainerImage {
                names: Some(vec![image.image_id.clone()]),
                size_bytes: Some(image.size_bytes as i64),
            });
        let names = entry.names.get_or_insert_with(Vec::new);
        if !names.contains(&image.reference) {
            names.push(image.reference.clone());
        }
    }
    let mut list: Vec<_> = by_id.into_values().collect();
    list.sort_by_key(|i| std::cmp::Reverse(i.size_bytes));
    list.truncate(MAX_STATUS_IMAGES);
    list
}

/// Runs collection every [`GC_PERIOD`] until `stop`, publishing the image list on `published`
/// and telling `runtime` which programs went.
pub async fn run(
    images: Arc<ImageStore>,
    runtime: Arc<dyn Runtime>,
    data_dir: PathBuf,
    policy: GcPolicy,
    published: watch::Sender<Vec<ContainerImage>>,
    stop: CancellationToken,
) {
    loop {
        let store = images.clone();
        let dir = data_dir.clone();
        let runtime = runtime.clone();
        let list = tokio::task::spawn_blocking(move || {
            match Filesystem::of(&dir) {
                Ok(fs) => {
                    let collected = collect(&store, fs, &policy);
                    if !collected.digests.is_empty() {
                        runtime.forget_programs(&collected.digests);
                    }
                }
                Err(error) => tracing::warn!(%error, "image GC cannot measure the data dir"),
            }
            status_images(&store)
        })
        .await
        .unwrap_or_default();
        published.send_if_modified(|current| {
            let changed = *current != list;
            *current = list;
            changed
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(GC_PERIOD) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::PulledImage;

    fn image(images: &ImageStore, reference: &str, content: &[u8]) -> PulledImage {
        images
            .store()
            .record_test_image(reference, content, Default::default())
    }

    #[test]
    fn collects_unused_images_least_recently_used_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let images =
            ImageStore::new(dir.path().into(), Vec::new(), Default::default()).expect("store");
        let used = image(&images, "r/used:v1", b"\0asm used");
        let old = image(&images, "r/old:v1", b"\0asm old");
        std::thread::sleep(Duration::from_millis(20));
        let recent = image(&images, "r/recent:v1", b"\0asm recent");
        let _guard = images.acquire(&used.reference);
        let policy = GcPolicy {
            high_percent: 85,
            low_percent: 80,
            minimum_age: Duration::ZERO,
        };
        let below = Filesystem {
            total_bytes: 1000,
            available_bytes: 500,
        };
        assert_eq!(
            collect(&images, below, &policy).bytes,
            0,
            "under the high mark"
        );
        // 90 % used; reaching 80 % frees 100 bytes: more than the oldest image holds, so both
        // unused images go, oldest first, and the used one stays.
        let over = Filesystem {
            total_bytes: 1000,
            available_bytes: 100,
        };
        let collected = collect(&images, over, &policy);
        assert!(collected.bytes > 0);
        assert_eq!(
            collected
                .digests
                .iter()
                .collect::<std::collections::BTreeSet<_>>(),
            [&old.program_digest, &recent.program_digest]
                .into_iter()
                .collect(),
            "the removed programs are reported, for their compiled code to go too"
        );
        assert!(images.lookup(&used.reference).is_some());
        assert!(images.lookup(&old.reference).is_none());
        assert!(!recent.program.exists());
        let listed = status_images(&images);
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].names.as_deref(),
            Some(&[used.image_id.clone(), used.reference.clone()][..])
        );
    }
}
