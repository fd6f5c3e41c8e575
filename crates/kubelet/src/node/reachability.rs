//! Telling "the API server cannot be reached" apart from other API errors, so the user is told
//! which server was tried and what to check instead of a chain of transport errors.

use std::path::{Path, PathBuf};

use crate::config::KubeletConfig;

/// Where the node talks to the API server: the `server` of its kubeconfig (or of the
/// bootstrap kubeconfig before TLS bootstrap), and that file.
#[derive(Debug, Clone)]
pub struct ApiServer {
    /// The server URL, or a placeholder if the file cannot be read.
    pub url: String,
    /// The kubeconfig it comes from.
    pub kubeconfig: PathBuf,
}

impl ApiServer {
    /// The API server `config` points at.
    pub fn of(config: &KubeletConfig) -> Self {
        let kubeconfig = match &config.bootstrap_kubeconfig {
            Some(bootstrap) if !config.kubeconfig.exists() => bootstrap.clone(),
            _ => config.kubeconfig.clone(),
        };
        Self {
            url: server_url(&kubeconfig).unwrap_or_else(|| "(unknown server)".into()),
            kubeconfig,
        }
    }

    /// What to tell the user when the server cannot be reached because of `cause`.
    pub fn unreachable_message(&self, cause: &str) -> String {
        format!(
            "cannot reach the API server at {} ({cause}); check that the control plane is \
             running and reachable from this machine, and that `server:` in {} is right",
            self.url,
            self.kubeconfig.display()
        )
    }
}

/// The current context's server in a kubeconfig.
fn server_url(path: &Path) -> Option<String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).ok()?;
    let context_name = kubeconfig.current_context.as_deref()?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)?
        .context
        .as_ref()?;
    kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)?
        .cluster
        .as_ref()?
        .server
        .clone()
}

/// If `error` (or one of its causes) is a failure to connect, the innermost cause's text.
pub fn connection_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    let mut connect = false;
    let mut innermost = String::new();
    while let Some(e) = current {
        let text = e.to_string();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            connect |= matches!(
                io.kind(),
                ConnectionRefused
                    | TimedOut
                    | HostUnreachable
                    | NetworkUnreachable
                    | ConnectionReset
            );
        }
        connect |= text.contains("tcp connect error")
            || text.contains("dns error")
            || text.contains("client error (Connect)");
        innermost = text;
        current = e.source();
    }
    connect.then_some(innermost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("registering node: client error (Connect)")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn connection_refused_is_recognised_with_its_innermost_cause() {
        let error = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(
            connection_failure(&error).as_deref(),
            Some("Connection refused (os error 111)")
        );
        let other = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "nope");
        assert_eq!(connection_failure(&other), None);
    }
}
