//! Registry credentials from a pod's `imagePullSecrets` (`kubernetes.io/dockerconfigjson` and
//! `kubernetes.io/dockercfg`), matched to a registry as the kubelet's credential keyring does.
//!
//! The service account's pull secrets need no separate lookup: the ServiceAccount admission
//! plugin copies them into `pod.spec.imagePullSecrets` when the pod names none, and the Node
//! authorizer lets the node read exactly the secrets its pods reference.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use serde::Deserialize;

use super::Credentials;

/// One registry's entry in a docker config.
#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// base64 of `user:password`.
    #[serde(default)]
    auth: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

/// Credentials by registry key (as written in the secret), in the order found.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    entries: Vec<(String, Credentials)>,
}

/// The host[:port] a docker config key names (`https://host/v1/` -> `host`).
fn key_host(key: &str) -> String {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

fn credentials(entry: &AuthEntry) -> Option<Credentials> {
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Some(Credentials {
            username: username.clone(),
            password: password.clone(),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.auth.as_deref()?.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credentials {
        username: username.into(),
        password: password.into(),
    })
}

/// Why a docker config does not parse, by position only: serde's own message quotes the
/// offending value, and in a pull secret that may be a password.
fn parse_problem(key: &str, error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => "is not valid JSON",
        Category::Data => "is JSON but not a docker config (a value of the wrong type)",
    };
    format!(
        "{key} {what} at line {}, column {}",
        error.line(),
        error.column()
    )
}

impl Keyring {
    /// Adds the entries of one secret; returns why it was unusable, if it was.
    pub fn add_secret(&mut self, secret: &Secret) -> Result<(), String> {
        let data = secret.data.clone().unwrap_or_default();
        let entries: BTreeMap<String, AuthEntry> = match secret.type_.as_deref() {
            Some("kubernetes.io/dockerconfigjson") => {
                let bytes = data
                    .get(".dockerconfigjson")
                    .ok_or("has no .dockerconfigjson key")?;
                serde_json::from_slice::<DockerConfigJson>(&bytes.0)
                    .map_err(|e| parse_problem(".dockerconfigjson", &e))?
                    .auths
            }
            Some("kubernetes.io/dockercfg") => {
                let bytes = data.get(".dockercfg").ok_or("has no .dockercfg key")?;
                serde_json::from_slice(&bytes.0).map_err(|e| parse_problem(".dockercfg", &e))?
            }
            other => {
                return Err(format!(
                    "is of type {:?}, not kubernetes.io/dockerconfigjson or kubernetes.io/dockercfg",
                    other.unwrap_or("")
                ));
            }
        };
        for (key, entry) in entries {
            if let Some(c) = credentials(&entry) {
                self.entries.push((key_host(&key), c));
            }
        }
        Ok(())
    }

    /// The credentials for `registry` (host[:port]), if a secret has some.
    pub fn lookup(&self, registry: &str) -> Option<&Credentials> {
        let registry = key_host(registry);
        self.entries
            .iter()
            .find(|(host, _)| *host == registry)
            .map(|(_, c)| c)
    }
}

/// Reads the pod's `imagePullSecrets` into a keyring. A missing or unusable secret is skipped,
/// as the kubelet does: the pull goes on anonymously and its error tells the user. Returns the
/// keyring and, per skipped secret, `"<name>": <problem>` for the pod's event; a problem names
/// what is wrong and where, never the secret's content.
pub async fn pod_keyring(client: &kube::Client, pod: &Pod) -> (Keyring, Vec<String>) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut keyring = Keyring::default();
    let mut problems = Vec::new();
    let names = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|r| (!r.name.is_empty()).then_some(r.name.clone()));
    for name in names {
        let problem = match secrets.get_opt(&name).await {
            Ok(Some(secret)) => keyring.add_secret(&secret).err(),
            Ok(None) => Some("not found".into()),
            Err(error) => Some(format!("cannot be read: {error}")),
        };
        if let Some(problem) = problem {
            tracing::warn!(%namespace, secret = %name, "image pull secret {problem}");
            problems.push(format!("{name:?}: {problem}"));
        }
    }
    (keyring, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(type_: &str, key: &str, json: &str) -> Secret {
        Secret {
            type_: Some(type_.into()),
            data: Some(BTreeMap::from([(
                key.to_string(),
                ByteString(json.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn both_secret_types_match_their_registry() {
        let mut keyring = Keyring::default();
        keyring
            .add_secret(&secret(
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                r#"{"auths":{"127.0.0.1:5001":{"auth":"dXNlcjpwYXNz"}}}"#,
            ))
            .expect("dockerconfigjson");
        keyring
            .add_secret(&secret(
                "kubernetes.io/dockercfg",
                ".dockercfg",
                r#"{"https://index.docker.io/v1/":{"username":"u","password":"p"}}"#,
            ))
            .expect("dockercfg");
        let c = keyring.lookup("127.0.0.1:5001").expect("found");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pass"));
        assert_eq!(keyring.lookup("docker.io").expect("hub").username, "u");
        assert!(keyring.lookup("127.0.0.1:5002").is_none());
        let opaque = secret("Opaque", "x", "{}");
        assert!(keyring.add_secret(&opaque).is_err());
    }

    #[test]
    fn a_malformed_secret_is_described_without_its_content() {
        let mut keyring = Keyring::default();
        for (json, expected) in [
            (
                r#"{"auths":{"r":{"password":"hunter2-SECRET"#,
                ".dockerconfigjson is not valid JSON at line 1",
            ),
            (
                r#"{"auths":"hunter2-SECRET"}"#,
                ".dockerconfigjson is JSON but not a docker config (a value of the wrong type) at line 1, column ",
            ),
            (
                r#"hunter2-SECRET"#,
                ".dockerconfigjson is not valid JSON at line 1, column 1",
            ),
        ] {
            let problem = keyring
                .add_secret(&secret(
                    "kubernetes.io/dockerconfigjson",
                    ".dockerconfigjson",
                    json,
                ))
                .expect_err("malformed");
            assert!(problem.starts_with(expected), "{problem}");
            assert!(!problem.contains("hunter2"), "{problem}");
        }
        let problem = keyring
            .add_secret(&secret(
                "kubernetes.io/dockercfg",
                ".dockercfg",
                r#"{"r": "hunter2-SECRET"}"#,
            ))
            .expect_err("malformed");
        assert!(
            problem.starts_with(".dockercfg is JSON but not"),
            "{problem}"
        );
        assert!(!problem.contains("hunter2"), "{problem}");
    }
}
