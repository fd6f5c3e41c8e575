//! The sandbox record: what a pod's CNI ADDs used and gave, kept on disk so its DEL uses the
//! same configuration and gets the ADD result as `prevResult`, even after a crash (libcni
//! keeps the same per attachment in `/var/lib/cni/results/<network>-<id>-<ifname>`, kind
//! `cniCacheV1`; here one file per pod with all its attachments, kind `krustletSandboxV1`).
//! Written atomically (a temporary file renamed over it).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CniError;
use crate::network::SandboxSpec;

/// The record's `kind`.
const KIND: &str = "krustletSandboxV1";
/// The largest record read.
const MAX_RECORD_BYTES: u64 = 4 << 20;

/// One pod's sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRecord {
    /// Always `krustletSandboxV1`.
    pub kind: String,
    /// The pod UID.
    pub uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the namespace file.
    pub netns: PathBuf,
    /// The attachments, in ADD order.
    pub attachments: Vec<AttachmentRecord>,
}

/// One network attachment of a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    /// `CNI_IFNAME`.
    pub if_name: String,
    /// The network configuration list it was added with.
    pub config: Value,
    /// `CNI_ARGS`.
    pub cni_args: Vec<(String, String)>,
    /// The capability arguments offered (`portMappings`).
    #[serde(default)]
    pub capability_args: BTreeMap<String, Value>,
    /// The ADD result; `None` while the ADD has not finished.
    #[serde(default)]
    pub result: Option<Value>,
}

impl SandboxRecord {
    /// A new sandbox for `sandbox` in the namespace at `netns`, nothing added yet.
    pub fn new(sandbox: &SandboxSpec, netns: &Path, attachments: Vec<AttachmentRecord>) -> Self {
        Self {
            kind: KIND.into(),
            uid: sandbox.uid.clone(),
            namespace: sandbox.namespace.clone(),
            name: sandbox.name.clone(),
            container_id: sandbox.uid.clone(),
            netns: netns.to_path_buf(),
            attachments,
        }
    }
}

/// The records in one directory, `<uid>.json` each.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// The records in `dir` (created on the first write).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The record file of `uid`.
    pub fn path(&self, uid: &str) -> PathBuf {
        self.dir.join(format!("{uid}.json"))
    }

    /// The record of `uid`, if there is one.
    ///
    /// # Errors
    /// [`CniError::Record`] for one that cannot be read or parsed.
    pub fn read(&self, uid: &str) -> Result<Option<SandboxRecord>, CniError> {
        use std::io::Read;
        let path = self.path(uid);
        let error = |message: String| CniError::Record {
            path: path.clone(),
            message,
        };
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(error(format!("cannot read it: {e}"))),
        };
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| error(format!("cannot read it: {e}")))?;
        let record: SandboxRecord =
            serde_json::from_slice(&bytes).map_err(|e| error(format!("not a record: {e}")))?;
        if record.kind != KIND || record.uid != uid {
            return Err(error(format!(
                "kind {:?} for pod {:?} is not a {KIND} record of pod {uid:?}",
                record.kind, record.uid
            )));
        }
        Ok(Some(record))
    }

    /// Writes `record` atomically.
    ///
    /// # Errors
    /// [`CniError::Record`].
    pub fn write(&self, record: &SandboxRecord) -> Result<(), CniError> {
        let path = self.path(&record.uid);
        let error = |e: std::io::Error| CniError::Record {
            path: path.clone(),
            message: format!("cannot write it: {e}"),
        };
        std::fs::create_dir_all(&self.dir).map_err(error)?;
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        let temp = self.dir.join(format!(".{}.tmp", record.uid));
        {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)
                .map_err(error)?;
            file.write_all(&bytes).map_err(error)?;
            file.sync_all().map_err(error)?;
        }
        std::fs::rename(&temp, &path).map_err(error)
    }

    /// Removes the record of `uid` (gone already is fine).
    pub fn remove(&self, uid: &str) {
        match std::fs::remove_file(self.path(uid)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(%uid, %error, "cannot remove the CNI sandbox record"),
        }
    }

    /// The UIDs that have a record.
    pub fn list(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                if name.starts_with('.') {
                    return None;
                }
                name.strip_suffix(".json").map(str::to_string)
            })
            .collect()
    }
}
