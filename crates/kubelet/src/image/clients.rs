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

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
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

static CLIENTS: LazyLock<Mutex<Clients>> = LazyLock::new(Mutex::default);

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

/// A client for `registry` over HTTPS or plain HTTP for a pod presenting `credentials`: a
/// kept one, or a new one (then kept).
pub(crate) fn client(registry: &str, https: bool, credentials: Option<&Credentials>) -> Client {
    let key = key(registry, https, credentials);
    {
        let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
        clients.clock += 1;
        let now = clients.clock;
        if let Some(kept) = clients.kept.get_mut(&key)
            && kept.made.elapsed() < MAX_AGE
        {
            kept.last_use = now;
            return kept.client.clone();
        }
    }
    // reqwest (under oci-client) has no TLS provider of its own here; use ring, as kube does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Built outside the lock: it reads the root certificates.
    let client = Client::new(ClientConfig {
        protocol: if https {
            ClientProtocol::Https
        } else {
            ClientProtocol::Http
        },
        ..Default::default()
    });
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
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
    client
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
        let registry = |i: usize| format!("kept-{i}.invalid");
        for i in 0..MAX_CLIENTS + 5 {
            client(&registry(i), false, None);
        }
        let made = |clients: &Clients, i| {
            clients
                .kept
                .get(&key(&registry(i), false, None))
                .map(|k| k.made)
        };
        let before = made(
            &CLIENTS.lock().unwrap_or_else(|e| e.into_inner()),
            MAX_CLIENTS + 4,
        );
        client(&registry(MAX_CLIENTS + 4), false, None);
        let clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
        assert!(before.is_some());
        assert_eq!(
            made(&clients, MAX_CLIENTS + 4),
            before,
            "reused, not built again"
        );
        assert!(clients.kept.len() <= MAX_CLIENTS);
        assert!(
            clients
                .kept
                .contains_key(&key(&registry(MAX_CLIENTS + 4), false, None)),
            "the newest stays"
        );
        assert!(
            !clients.kept.contains_key(&key(&registry(0), false, None)),
            "the least recently used went"
        );
    }
}
