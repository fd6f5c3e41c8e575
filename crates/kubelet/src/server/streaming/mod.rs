//! The kubelet's streaming API: `kubectl exec` and `port-forward` over SPDY/3.1, the protocol the API server
//! speaks toward kubelets (upstream `pkg/kubelet/cri/streaming`).
//!
//! - [`spdy`]: SPDY/3.1 frames and header compression.
//! - [`session`]: one upgraded connection's streams.
//! - [`remotecommand`]: the remote command protocol v1-v5 (streams, status).
//! - [`exec`]: `/exec/...`: one more instance of a container's program.
//! - [`portforward`]: `/portForward/...`: TCP connections to the pod's ports.

pub mod exec;
pub mod portforward;
pub mod remotecommand;
pub mod session;
pub mod spdy;
