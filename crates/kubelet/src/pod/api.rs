//! Whether this node's pods have an API server behind them: connected (the node's client) or
//! standalone (static pods from a manifest directory only, as a kubelet without a cluster).

use tokio::sync::watch;

/// The API server as pods see it.
#[derive(Clone)]
pub enum ApiLink {
    /// Connected: the newest client (rotated certificates arrive on the channel).
    Connected(watch::Receiver<kube::Client>),
    /// Standalone mode: no API server; what needs one fails with [`NoApiServer`].
    Standalone,
}

/// Something a pod asked for needs the API server, and this node runs without one.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{what} needs the API server, and krustlet standalone has none: static pods can use \
     emptyDir, hostPath and downwardAPI volumes and literal or fieldRef env values"
)]
pub struct NoApiServer {
    /// What needed it, e.g. `configMap "settings"`.
    pub what: String,
}

impl ApiLink {
    /// The newest client, or why there is none; `what` names the need for the error.
    pub fn client(&self, what: impl FnOnce() -> String) -> Result<kube::Client, NoApiServer> {
        match self {
            Self::Connected(clients) => Ok(clients.borrow().clone()),
            Self::Standalone => Err(NoApiServer { what: what() }),
        }
    }

    /// Whether there is an API server.
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected(_))
    }
}
