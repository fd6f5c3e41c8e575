//! Registry clients, kept for reuse per registry, protocol and credentials.
//!
//! Building an `oci_client::Client` costs 14-20 ms (release): reqwest reads and parses the
//! system's root certificates, twice (a cold start's `strace`). Keeping the client also keeps
//! its connections and its bearer tokens, so a second pull from a registry skips the TLS
//! handshake and the token request too.
//!
//! A client keeps the first credentials and tokens it was given per registry, so clients are
//! never shared between credentials: the key holds a SHA-256 of the user name and password
//! (not the password itself), and a pod can only ever reuse a client built with its own
//! credentials. At most [`MAX_CLIENTS`] are kept, the least recently used dropped first, and
//! none for longer than [`MAX_AGE`], so a changed root store or password is seen within it.
//!
//! A cache belongs to its owner (the image store, the signature policy), never to the process:
//! a client's pooled connections belong to the tokio runtime that made them, and a process with
//! several runtimes (the tests) must not carry them from one to another.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};

use super::Credentials;

/// Most clients kept.
pub const MAX_CLIENTS: usize = 64;

/// Longest a client is reused.
pub const MAX_AGE: Duration = Duration::from_secs(3600);

/// What makes two clients interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    registry: String,
    https: bool,
    /// SHA-256 of the user name and password; `None` for anonymous pulls.
    credentials: Option<[u8; 32]>,
}

struct Kept {
    client: Client,
    made: Instant,
    last_use: u64,
}

#[derive(Default)]
struct Clients {
    kept: HashMap<Key, Kept>,
    clock: u64,
}

/// Registry clients kept for reuse.
#[derive(Default)]
pub struct RegistryClients(Mutex<Clients>);

fn key(registry: &str, https: bool, credentials: Option<&Credentials>) -> Key {
    Key {
        registry: registry.to_string(),
        https,
        credentials: credentials.map(|c| {
            let mut hash = Sha256::new();
            // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
            for part in [&c.username, &c.password] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part.as_bytes());
            }
            hash.finalize().into()
        }),
    }
}

/// A new client for `registry`, over HTTPS or plain HTTP.
pub(crate) fn build(https: bool) -> Client {
    // reqwest (under oci-client) has no TLS provider of its own here; use ring, as kube does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: if https {
            ClientProtocol::Https
        } else {
            ClientProtocol::Http
        },
        ..Default::default()
    })
}

impl RegistryClients {
    /// A client for `registry` (plain HTTP on loopback and for `insecure` registries, TLS
    /// elsewhere) and the auth to send, for a pod presenting `credentials`: a kept client, or
    /// a new one (then kept).
    pub(crate) fn get(
        &self,
        registry: &str,
        credentials: Option<&Credentials>,
        insecure: &[String],
    ) -> (Client, RegistryAuth) {
        let https = super::is_https(registry, insecure);
        let auth = super::auth_of(credentials);
        let key = key(registry, https, credentials);
        {
            let mut clients = self.0.lock().unwrap_or_else(|e| e.into_inner());
            clients.clock += 1;
            let now = clients.clock;
            if let Some(kept) = clients.kept.get_mut(&key)
                && kept.made.elapsed() < MAX_AGE
            {
                kept.last_use = now;
                return (kept.client.clone(), auth);
            }
        }
        // Built outside the lock: it reads the root certificates.
        let client = build(https);
        let mut clients = self.0.lock().unwrap_or_else(|e| e.into_inner());
        clients.clock += 1;
        let last_use = clients.clock;
        clients.kept.retain(|_, kept| kept.made.elapsed() < MAX_AGE);
        while clients.kept.len() >= MAX_CLIENTS {
            let Some(oldest) = clients
                .kept
                .iter()
                .min_by_key(|(_, kept)| kept.last_use)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            clients.kept.remove(&oldest);
        }
        clients.kept.insert(
            key,
            Kept {
                client: client.clone(),
                made: Instant::now(),
                last_use,
            },
        );
        (client, auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(username: &str, password: &str) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    #[test]
    fn clients_are_kept_apart_by_registry_protocol_and_credentials() {
        let alice = creds("alice", "secret");
        let base = key("r.example:5000", true, Some(&alice));
        assert_eq!(base, key("r.example:5000", true, Some(&alice)));
        for other in [
            key("r.example:5001", true, Some(&alice)),
            key("r.example:5000", false, Some(&alice)),
            key("r.example:5000", true, None),
            key("r.example:5000", true, Some(&creds("alice", "other"))),
            key("r.example:5000", true, Some(&creds("alic", "esecret"))),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn at_most_max_clients_are_kept_and_a_kept_one_is_reused() {
        let clients = RegistryClients::default();
        let registry = |i: usize| format!("kept-{i}.invalid");
        let insecure: Vec<String> = (0..MAX_CLIENTS + 5).map(registry).collect();
        for i in 0..MAX_CLIENTS + 5 {
            clients.get(&registry(i), None, &insecure);
        }
        let made = |i| {
            let kept = clients.0.lock().unwrap_or_else(|e| e.into_inner());
            kept.kept
                .get(&key(&registry(i), false, None))
                .map(|k| k.made)
        };
        let newest = made(MAX_CLIENTS + 4);
        assert!(newest.is_some(), "the newest stays");
        assert!(made(0).is_none(), "the least recently used went");
        clients.get(&registry(MAX_CLIENTS + 4), None, &insecure);
        assert_eq!(made(MAX_CLIENTS + 4), newest, "reused, not built again");
        let kept = clients.0.lock().unwrap_or_else(|e| e.into_inner());
        assert!(kept.kept.len() <= MAX_CLIENTS);
    }
}
