//! The control plane's audit log: `devcluster` logs every write of a member of `system:nodes`
//! (`test/cluster`), one JSON event per line, to `<cluster dir>/audit.log`.

use std::io::BufRead;
use std::path::PathBuf;

use serde::Deserialize;

/// Where the test cluster's audit log is.
pub fn log_path() -> PathBuf {
    crate::cluster().dir.join("audit.log")
}

/// One write, as the audit log names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Who wrote, e.g. `system:node:<name>`.
    pub user: String,
    /// `<verb> <resource>[/<subresource>]`, e.g. `patch pods/status`.
    pub request: String,
    /// The object's namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

#[derive(Deserialize)]
struct Event {
    verb: String,
    user: User,
    #[serde(rename = "objectRef", default)]
    object: ObjectRef,
}

#[derive(Deserialize)]
struct User {
    username: String,
}

#[derive(Deserialize, Default)]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: Option<String>,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

/// The writes in `log` (audit events, one per line); lines that are not events (a line cut
/// short at the end of a log being written) are skipped.
pub fn writes(log: impl BufRead) -> impl Iterator<Item = Write> {
    log.lines().map_while(Result::ok).filter_map(|line| {
        let event: Event = serde_json::from_str(&line).ok()?;
        let object = event.object;
        let request = match object.subresource {
            Some(sub) => format!("{} {}/{sub}", event.verb, object.resource),
            None => format!("{} {}", event.verb, object.resource),
        };
        Some(Write {
            user: event.user.username,
            request,
            namespace: object.namespace,
            name: object.name,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_a_write_and_a_cut_line_is_skipped() {
        let log = [
            r#"{"verb":"patch","user":{"username":"system:node:a"},"objectRef":{"resource":"pods","subresource":"status","namespace":"ns","name":"p"}}"#,
            r#"{"verb":"create","user":{"username":"system:node:b"},"objectRef":{"resource":"events","namespace":"ns","name":"p.1"}}"#,
            r#"{"verb":"upd"#,
        ]
        .join("\n");
        let writes: Vec<Write> = writes(log.as_bytes()).collect();
        assert_eq!(writes.len(), 2);
        assert_eq!(
            writes[0],
            Write {
                user: "system:node:a".into(),
                request: "patch pods/status".into(),
                namespace: "ns".into(),
                name: "p".into(),
            }
        );
        assert_eq!(writes[1].request, "create events");
    }
}
