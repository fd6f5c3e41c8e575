//! The running containers `kubectl exec` (and exec probes) can start more instances of: what
//! each one's runner resolved for its current run (program, env, mounts, limits), registered
//! while the run lasts. Upstream has no such table: CRI keeps it inside the runtime
//! (`ExecSync`/`Exec` by container ID); here the kubelet resolves and the runtime only runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::runtime::{ExecIo, ExecSpec, Limits, Runtime};
use crate::volume::reopen::{ClosedMount, ReopenError};

/// The stdin of a container run with `stdin: true`, which `kubectl attach -i` writes to.
///
/// Upstream's semantics (the `stdinOnce` field of the container spec): without `stdinOnce`
/// stdin stays open across attach sessions; with it, the first attach session that ends (its
/// client closed stdin or went away) closes the program's stdin for the rest of the run.
pub struct AttachInput {
    sender: Mutex<Option<mpsc::Sender<Bytes>>>,
    once: bool,
    tty: bool,
}

impl AttachInput {
    /// Input through `sender`; `once` is `stdinOnce`, `tty` the container's `tty`.
    pub fn new(sender: mpsc::Sender<Bytes>, once: bool, tty: bool) -> Self {
        Self {
            sender: Mutex::new(Some(sender)),
            once,
            tty,
        }
    }

    /// A sender for one attach session; `None` once stdin was closed (`stdinOnce`).
    pub fn session(&self) -> Option<mpsc::Sender<Bytes>> {
        self.sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// An attach session's input ended: with `stdinOnce`, the program's stdin closes (it
    /// reads end of file once the session's own sender is dropped too).
    pub fn session_ended(&self) {
        if self.once {
            self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }

    /// Whether the container has a terminal (`tty: true`).
    pub fn tty(&self) -> bool {
        self.tty
    }
}

/// What an exec needs of one running container.
pub struct ExecTarget {
    /// The pod's UID.
    pub pod_uid: String,
    /// The container's program file.
    pub program: PathBuf,
    /// The program's digest.
    pub program_digest: String,
    /// The container's resolved environment.
    pub env: Vec<(String, String)>,
    /// The container's mounts, closed until an instance starts: the run reaches them through
    /// the runtime's own descriptors, so holding ours as long as it runs would double them.
    pub mounts: Vec<ClosedMount>,
    /// The container's limits.
    pub limits: Limits,
    /// The runtime that runs it.
    pub runtime: Arc<dyn Runtime>,
    /// Cancelled when the container's run ends: exec'd instances end with it.
    pub stopped: CancellationToken,
    /// The run's stdin, when the container has one (`stdin: true`).
    pub input: Option<AttachInput>,
    /// The container's guest network, which exec'd instances share.
    pub guest_network: Option<crate::network::outbound::GuestNetwork>,
}

impl ExecTarget {
    /// The spec of one more instance with `args` and `io`, its mounts opened again.
    ///
    /// # Errors
    /// [`ReopenError`] when a mount's directory cannot be opened again as the same directory.
    pub fn spec(&self, id: String, args: Vec<String>, io: ExecIo) -> Result<ExecSpec, ReopenError> {
        Ok(ExecSpec {
            id,
            program: self.program.clone(),
            program_digest: self.program_digest.clone(),
            args,
            env: self.env.clone(),
            mounts: self
                .mounts
                .iter()
                .map(ClosedMount::open)
                .collect::<Result<_, _>>()?,
            limits: self.limits,
            io,
            guest_network: self.guest_network.clone(),
        })
    }
}

type Key = (String, String, String);

/// The table of running containers, shared by the runners and the kubelet API.
#[derive(Clone, Default)]
pub struct ExecTargets {
    inner: Arc<Mutex<HashMap<Key, Arc<ExecTarget>>>>,
}

/// Keeps a container in the table until dropped (its run ended); then cancels
/// [`ExecTarget::stopped`].
pub struct Registration {
    targets: ExecTargets,
    key: Key,
    target: Arc<ExecTarget>,
}

impl Registration {
    /// The registered run, for more instances of it (exec probes).
    pub fn target(&self) -> Arc<ExecTarget> {
        self.target.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.target.stopped.cancel();
        let mut map = self.targets.inner.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|t| Arc::ptr_eq(t, &self.target))
        {
            map.remove(&self.key);
        }
    }
}

impl ExecTargets {
    /// Registers `container` of pod `namespace/pod` as running `target`, replacing an older run.
    pub fn register(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        target: ExecTarget,
    ) -> Registration {
        let key = (
            namespace.to_string(),
            pod.to_string(),
            container.to_string(),
        );
        let target = Arc::new(target);
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), target.clone());
        Registration {
            targets: self.clone(),
            key,
            target,
        }
    }

    /// The running `container` of `namespace/pod`, if it runs.
    pub fn get(&self, namespace: &str, pod: &str, container: &str) -> Option<Arc<ExecTarget>> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(
                namespace.to_string(),
                pod.to_string(),
                container.to_string(),
            ))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_lasts_as_long_as_its_run() {
        let targets = ExecTargets::default();
        let target = || ExecTarget {
            pod_uid: "u".into(),
            program: "/p.wasm".into(),
            program_digest: "sha256:0".into(),
            env: vec![],
            mounts: vec![],
            limits: Limits::default(),
            runtime: Arc::new(crate::runtime::fake::FakeRuntime::default()),
            stopped: CancellationToken::new(),
            input: None,
            guest_network: None,
        };
        let first = targets.register("ns", "pod", "c", target());
        let stopped = first.target.stopped.clone();
        let second = targets.register("ns", "pod", "c", target());
        // The old run ending must not remove the new one.
        drop(first);
        assert!(stopped.is_cancelled());
        assert!(targets.get("ns", "pod", "c").is_some());
        drop(second);
        assert!(targets.get("ns", "pod", "c").is_none());
    }

    #[tokio::test]
    async fn stdin_once_closes_the_programs_stdin_after_the_first_session() {
        let (tx, mut rx) = mpsc::channel(4);
        let input = AttachInput::new(tx, true, false);
        let session = input.session().expect("open");
        session.send(Bytes::from_static(b"a")).await.expect("send");
        drop(session);
        input.session_ended();
        assert!(input.session().is_none(), "stdinOnce: closed for good");
        assert_eq!(rx.recv().await.as_deref(), Some(&b"a"[..]));
        assert_eq!(rx.recv().await, None, "the program reads end of file");

        let (tx, mut rx) = mpsc::channel(4);
        let input = AttachInput::new(tx, false, false);
        drop(input.session());
        input.session_ended();
        let again = input.session().expect("stays open across sessions");
        again.send(Bytes::from_static(b"b")).await.expect("send");
        assert_eq!(rx.recv().await.as_deref(), Some(&b"b"[..]));
    }
}
