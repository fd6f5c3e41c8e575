//! Who may use a stored image without asking the registry: the kubelet's "ensure secret pulled
//! images" (KEP-2535, `pkg/kubelet/images/pullmanager/pull_manager.go`).
//!
//! A record remembers how its content was obtained: anonymously (then any pod may use it, the
//! registry gave it to anyone) or with which credentials (as hashes; never the secrets
//! themselves). A pod whose policy would skip the pull (`IfNotPresent`, `Never`) uses the stored
//! image only if it was pulled anonymously or with the very credentials the pod presents now;
//! otherwise the pod's credentials are checked against the registry once (a pull that finds
//! every blob already stored), and remembered on success. So a pod without a pull secret cannot
//! run a private image just because another tenant pulled it onto the same node.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Credentials;

/// How a stored image's content was verified against its registry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Access {
    /// The registry served it without credentials: every pod may use it.
    #[serde(default)]
    pub anonymous: bool,
    /// Hashes of the credentials the registry accepted for it.
    #[serde(default)]
    pub credentials: BTreeSet<String>,
}

/// The hash a record keeps for `credentials` sent to `registry` (as upstream's
/// `CredentialHash`: identical credentials are one entry, whichever secret holds them).
pub fn fingerprint(registry: &str, credentials: &Credentials) -> String {
    let mut hasher = Sha256::new();
    for part in [registry, &credentials.username, &credentials.password] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    format!("sha256:{:x}", hasher.finalize())
}

impl Access {
    /// What a successful registry pull with `credentials` (`None`: anonymous) proves.
    pub fn pulled_with(registry: &str, credentials: Option<&Credentials>) -> Self {
        match credentials {
            None => Self {
                anonymous: true,
                credentials: BTreeSet::new(),
            },
            Some(c) => Self {
                anonymous: false,
                credentials: BTreeSet::from([fingerprint(registry, c)]),
            },
        }
    }

    /// Whether a pod presenting `credentials` may use the stored content without a pull.
    pub fn allows(&self, registry: &str, credentials: Option<&Credentials>) -> bool {
        self.anonymous
            || credentials.is_some_and(|c| self.credentials.contains(&fingerprint(registry, c)))
    }

    /// Adds what `other` proved (for the same content).
    pub fn merge(&mut self, other: &Self) {
        self.anonymous |= other.anonymous;
        self.credentials.extend(other.credentials.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            username: user.into(),
            password: password.into(),
        }
    }

    #[test]
    fn only_the_credentials_that_pulled_an_image_reuse_it() {
        let owner = creds("owner", "secret");
        let access = Access::pulled_with("reg:5000", Some(&owner));
        assert!(access.allows("reg:5000", Some(&owner)));
        assert!(!access.allows("reg:5000", None), "no credentials");
        assert!(!access.allows("reg:5000", Some(&creds("owner", "guess"))));
        assert!(!access.allows("other:5000", Some(&owner)), "other registry");
        let public = Access::pulled_with("reg:5000", None);
        assert!(public.allows("reg:5000", None));
        let mut merged = access.clone();
        merged.merge(&Access::pulled_with("reg:5000", Some(&creds("b", "c"))));
        assert!(merged.allows("reg:5000", Some(&owner)) && !merged.anonymous);
        assert_eq!(merged.credentials.len(), 2);
        // Length-prefixed parts: moving a separator does not collide.
        assert_ne!(
            fingerprint("r", &creds("ab", "c")),
            fingerprint("r", &creds("a", "bc"))
        );
    }
}
