//! The kubelet's streaming API (upstream `pkg/kubelet/cri/streaming`): `kubectl exec` and
//! `kubectl attach` and `kubectl port-forward` over SPDY/3.1, the protocol the API server speaks toward kubelets, and
//! exec, attach and port-forward over WebSocket, which clients may speak to the kubelet directly.
//!
//! - [`spdy`]: SPDY/3.1 frames and header compression.
//! - [`session`]: one upgraded SPDY connection's streams.
//! - [`websocket`]: the channel framing of exec and attach over WebSocket.
//! - [`remotecommand`]: the remote command protocol v1-v5 (streams, status), shared by both.
//! - [`exec`]: `/exec/...` and `/attach/...`: one more instance of a container's program, or
//!   the running one's output and stdin.
//! - [`portforward`]: `/portForward/...`: TCP connections to the pod's ports.
//! - [`portforward_websocket`]: port-forward's channels over WebSocket.

pub mod exec;
pub mod portforward;
pub mod portforward_websocket;
pub mod remotecommand;
pub mod session;
pub mod spdy;
pub mod websocket;
