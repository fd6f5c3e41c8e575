//! A node's writes to the API server by verb and resource, from the control plane's audit log:
//! `devcluster` logs every write by a member of `system:nodes` (`test/cluster`), which is how
//! both Krustlet and the hollow node authenticate. The floor counts its own writes in-process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

/// A node's writes over a span of a run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Writes {
    /// All of them.
    pub total: u64,
    /// By `<verb> <resource>[/<subresource>]`, e.g. `patch pods/status`.
    pub by_request: BTreeMap<String, u64>,
}

impl Writes {
    /// Adds one write of `request` (`<verb> <resource>[/<subresource>]`).
    pub fn add(&mut self, request: &str, count: u64) {
        self.total += count;
        *self.by_request.entry(request.to_string()).or_default() += count;
    }

    /// What was added since `before` (a snapshot of the same counts).
    pub fn since(&self, before: &Writes) -> Writes {
        let mut writes = Writes::default();
        for (request, count) in &self.by_request {
            let earlier = before.by_request.get(request).copied().unwrap_or(0);
            if *count > earlier {
                writes.add(request, count - earlier);
            }
        }
        writes
    }

    /// Writes per pod, for the table.
    pub fn per_pod(&self, pods: usize) -> f64 {
        self.total as f64 / pods.max(1) as f64
    }
}

/// A place in the audit log; [`Self::writes_since`] counts what came after it.
pub struct AuditMark {
    path: PathBuf,
    offset: u64,
}

impl AuditMark {
    /// The end of the test cluster's audit log now.
    ///
    /// # Errors
    /// When the log is missing: a control plane built before `devcluster` kept one.
    pub fn now() -> anyhow::Result<Self> {
        let path = krustlet_e2e::audit::log_path();
        let offset = std::fs::metadata(&path)
            .with_context(|| {
                format!(
                    "no audit log at {} (rebuild the control plane: test/cluster/build.sh)",
                    path.display()
                )
            })?
            .len();
        Ok(Self { path, offset })
    }

    /// The writes that node `node` made since this mark (the API server writes each event
    /// before it answers, so all of them are in the log when the node's requests returned).
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn writes_since(&self, node: &str) -> anyhow::Result<Writes> {
        let user = format!("system:node:{node}");
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.offset))?;
        Ok(count(BufReader::new(file), &user))
    }
}

/// The writes of `user` among the audit events (JSON lines) of `log`.
fn count(log: impl BufRead, user: &str) -> Writes {
    let mut writes = Writes::default();
    for write in krustlet_e2e::audit::writes(log).filter(|w| w.user == user) {
        writes.add(&write.request, 1);
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_one_users_writes_by_verb_and_resource() {
        let log = [
            r#"{"verb":"patch","user":{"username":"system:node:a"},"objectRef":{"resource":"pods","subresource":"status"}}"#,
            r#"{"verb":"patch","user":{"username":"system:node:a"},"objectRef":{"resource":"pods","subresource":"status"}}"#,
            r#"{"verb":"create","user":{"username":"system:node:a"},"objectRef":{"resource":"events"}}"#,
            r#"{"verb":"create","user":{"username":"system:node:b"},"objectRef":{"resource":"events"}}"#,
            r#"{"verb":"upd"#,
        ]
        .join("\n");
        let writes = count(log.as_bytes(), "system:node:a");
        assert_eq!(writes.total, 3);
        assert_eq!(writes.by_request["patch pods/status"], 2);
        assert_eq!(writes.by_request["create events"], 1);
        assert_eq!(writes.per_pod(2), 1.5);
    }

    #[test]
    fn since_is_what_was_added_after_a_snapshot() {
        let mut before = Writes::default();
        before.add("patch pods/status", 2);
        let mut now = before.clone();
        now.add("patch pods/status", 3);
        now.add("create events", 1);
        let added = now.since(&before);
        assert_eq!(added.total, 4);
        assert_eq!(added.by_request["patch pods/status"], 3);
        assert_eq!(added.by_request["create events"], 1);
    }
}
