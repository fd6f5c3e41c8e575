//! Signed modules: the node policy that decides, before anything is compiled, whether an
//! image's exact manifest digest carries a cosign signature from a key the policy trusts.
//!
//! `policy.rs` reads the policy file, `keys.rs` checks signatures with trusted keys,
//! `keyless.rs` checks Fulcio-certificate signatures offline against a trusted root and their
//! Rekor bundle, `cosign.rs` reads cosign's two signature layouts from the registry, and
//! `sign.rs` signs as cosign does (for `krustlet push --sign`). [`Signatures`] holds
//! the current policy (reloaded when its file changes), caches verified digests per
//! (rule, digest, policy generation), and re-checks the images of running containers after a
//! reload, reporting (never killing) those that no longer pass. See `docs/signing.md`.

pub mod cosign;
pub mod keyless;
pub mod keys;
pub mod policy;
pub mod sign;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::Credentials;
use cosign::SigLayout;
use policy::{DefaultAction, Policy, PolicyError, RuleAction};

/// The container waiting reason (and event reason) of an image the policy refuses.
pub const REASON: &str = "SignatureVerificationFailed";
/// The Warning event reason for a running container whose image no longer passes.
pub const REVOKED_REASON: &str = "SignaturePolicyViolation";
/// How often the policy file is checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Who signed a verified digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// A trusted key, by its policy name.
    Key(String),
    /// A keyless identity.
    Identity {
        /// Its policy name.
        name: String,
        /// The certificate's subject.
        subject: String,
        /// The certificate's OIDC issuer.
        issuer: String,
        /// The Rekor log index of the signature's entry.
        log_index: i64,
    },
    /// Verified earlier under this policy generation (a cache hit).
    Cached,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(name) => write!(f, "key {name:?}"),
            Self::Identity {
                name,
                subject,
                issuer,
                log_index,
            } => write!(
                f,
                "keyless identity {name:?} (subject {subject:?}, issuer {issuer:?}, Rekor log index {log_index})"
            ),
            Self::Cached => f.write_str("a trusted signer (verified earlier under this policy)"),
        }
    }
}

/// Why an image may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// A trusted key or identity signed this digest.
    Verified {
        /// The rule that required it.
        rule: String,
        /// Who signed.
        signer: Signer,
        /// Where the signature was.
        layout: SigLayout,
    },
    /// A rule allows it unsigned.
    ByRule {
        /// The rule.
        rule: String,
    },
    /// No rule matches and the default allows it (`warning` set when the default is `warn`).
    ByDefault {
        /// What to warn about, if the default is `warn`.
        warning: Option<String>,
    },
    /// No policy is configured.
    NoPolicy,
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Verified {
                rule,
                signer,
                layout,
            } => write!(
                f,
                "allowed: rule {rule:?} requires a signature and {signer} signed this digest ({layout})"
            ),
            Self::ByRule { rule } => write!(f, "allowed unsigned by rule {rule:?}"),
            Self::ByDefault { warning: None } => {
                write!(
                    f,
                    "allowed: no rule matches and the policy default is allow"
                )
            }
            Self::ByDefault { warning: Some(w) } => write!(f, "allowed with a warning: {w}"),
            Self::NoPolicy => write!(f, "allowed: no --image-policy-file is configured"),
        }
    }
}

/// Why an image may not run (or could not be checked).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignatureError {
    /// The policy requires a signature that is not there.
    #[error(
        "image {image} ({digest}) refused by image policy rule {rule:?}: {missing}; sign this exact digest with one of the keys or identities {keys:?} (cosign sign), or change the policy"
    )]
    Unsigned {
        /// The reference.
        image: String,
        /// The manifest digest checked.
        digest: String,
        /// The rule.
        rule: String,
        /// The rule's key and identity names.
        keys: Vec<String>,
        /// What was found instead.
        missing: String,
    },
    /// No rule matches and the default denies.
    #[error(
        "image {image} refused by the image policy: no rule matches {repository} in namespace {namespace:?} and the default is deny; add a rule for it"
    )]
    NoRule {
        /// The reference.
        image: String,
        /// `registry/repository`.
        repository: String,
        /// The pod's namespace.
        namespace: String,
    },
    /// The signatures could not be read (the registry failed); retried with back-off.
    #[error("image {image}: image policy rule {rule:?} requires a signature, but {source}")]
    Fetch {
        /// The reference.
        image: String,
        /// The rule.
        rule: String,
        /// The registry error.
        #[source]
        source: Arc<cosign::FetchError>,
    },
    /// The reference does not parse.
    #[error("image {image}: {message}")]
    InvalidName {
        /// The reference.
        image: String,
        /// Why.
        message: String,
    },
}

struct Loaded {
    policy: Option<Policy>,
    generation: u64,
    fingerprint: Option<[u8; 32]>,
}

/// A running container's image, re-checked when the policy changes.
pub struct RunningImage {
    /// The reference.
    pub image: String,
    /// Its manifest digest.
    pub digest: String,
    /// The pod's namespace.
    pub namespace: String,
    /// Called with the refusal when the image no longer passes.
    pub report: Box<dyn Fn(String) + Send + Sync>,
}

/// Unregisters a running image when dropped.
pub struct RunningGuard {
    id: u64,
    signatures: Arc<Signatures>,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        lock(&self.signatures.running).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The node's signature policy, its verified-digest cache and the running images it watches.
pub struct Signatures {
    path: Option<PathBuf>,
    insecure: Vec<String>,
    loaded: RwLock<Arc<Loaded>>,
    verified: Mutex<HashSet<(u64, String, String)>>,
    running: Mutex<HashMap<u64, Arc<RunningImage>>>,
    next_id: AtomicU64,
    /// Clients for fetching signatures, kept as the image store keeps its own.
    clients: super::clients::RegistryClients,
}

/// A digest of the policy text and of every file it read (keys, trusted roots), so that an
/// edit to any of them is a new policy generation.
fn fingerprint(text: &str, sources: &[PathBuf]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(text.as_bytes());
    for source in sources {
        hash.update(source.as_os_str().as_encoded_bytes());
        match std::fs::read(source) {
            Ok(bytes) if bytes.len() as u64 <= policy::MAX_POLICY_BYTES => {
                hash.update(Sha256::digest(&bytes))
            }
            _ => hash.update(b"unreadable"),
        }
    }
    hash.finalize().into()
}

impl Signatures {
    /// No policy: every image is allowed.
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self::with(None, Vec::new(), None, None))
    }

    /// The policy at `path` (which must load now); `insecure` registries use plain HTTP.
    pub fn load(path: &Path, insecure: Vec<String>) -> Result<Arc<Self>, PolicyError> {
        let text = policy::read_bounded(path)?;
        let policy = Policy::parse(&text, path)?;
        let print = fingerprint(&text, &policy.sources);
        Ok(Arc::new(Self::with(
            Some(path.into()),
            insecure,
            Some(policy),
            Some(print),
        )))
    }

    /// A fixed `policy` (tests, `krustlet verify`).
    pub fn fixed(policy: Policy, insecure: Vec<String>) -> Arc<Self> {
        Arc::new(Self::with(None, insecure, Some(policy), None))
    }

    fn with(
        path: Option<PathBuf>,
        insecure: Vec<String>,
        policy: Option<Policy>,
        fingerprint: Option<[u8; 32]>,
    ) -> Self {
        Self {
            path,
            insecure,
            loaded: RwLock::new(Arc::new(Loaded {
                policy,
                generation: 1,
                fingerprint,
            })),
            verified: Mutex::default(),
            running: Mutex::default(),
            next_id: AtomicU64::new(0),
            clients: Default::default(),
        }
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The policy generation (1 at start, +1 per reload that changed it).
    pub fn generation(&self) -> u64 {
        self.current().generation
    }

    /// Decides whether `image`, whose manifest digest is `digest`, may run in `namespace`;
    /// signatures are read with `credentials` when the decision is not cached.
    pub async fn check(
        &self,
        image: &str,
        digest: &str,
        namespace: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Allowed, SignatureError> {
        let loaded = self.current();
        let Some(policy) = &loaded.policy else {
            return Ok(Allowed::NoPolicy);
        };
        let reference = super::parse_reference(image).map_err(|e| SignatureError::InvalidName {
            image: image.into(),
            message: e.to_string(),
        })?;
        let registry = reference.resolve_registry().to_string();
        let repository = format!("{registry}/{}", reference.repository());
        let Some(rule) = policy.rule_for(&repository, namespace) else {
            return match policy.default {
                DefaultAction::Allow => Ok(Allowed::ByDefault { warning: None }),
                DefaultAction::Warn => Ok(Allowed::ByDefault {
                    warning: Some(format!(
                        "image {image} is not covered by any image policy rule (namespace {namespace:?}); it runs unverified because the policy default is warn"
                    )),
                }),
                DefaultAction::Deny => Err(SignatureError::NoRule {
                    image: image.into(),
                    repository,
                    namespace: namespace.into(),
                }),
            };
        };
        if rule.action == RuleAction::Allow {
            return Ok(Allowed::ByRule {
                rule: rule.name.clone(),
            });
        }
        let cache_key = (loaded.generation, rule.name.clone(), digest.to_string());
        let (client, auth) = self.clients.get(&registry, credentials, &self.insecure);
        let candidates = cosign::fetch(&client, &auth, &registry, reference.repository(), digest)
            .await
            .map_err(|e| SignatureError::Fetch {
                image: image.into(),
                rule: rule.name.clone(),
                source: Arc::new(e),
            })?;
        let mut other_digests = Vec::new();
        let mut untrusted = 0;
        let mut keyless_failures: Vec<String> = Vec::new();
        for candidate in &candidates {
            match cosign::signed_digest(&candidate.payload) {
                Some(d) if d == digest => {}
                Some(d) => {
                    other_digests.push(d);
                    continue;
                }
                None => continue,
            }
            if let Some(key) = rule
                .keys
                .iter()
                .find(|k| k.key.verifies(&candidate.payload, &candidate.signature))
            {
                lock(&self.verified).insert(cache_key);
                return Ok(Allowed::Verified {
                    rule: rule.name.clone(),
                    signer: Signer::Key(key.name.clone()),
                    layout: candidate.layout,
                });
            }
            untrusted += 1;
            // Checked against each keyless identity too (a signature without a certificate
            // fails there as "no signing certificate", which says it was made with a key).
            let evidence = keyless::Evidence {
                payload: &candidate.payload,
                signature: &candidate.signature,
                certificate: candidate.certificate.as_deref(),
                chain: candidate.chain.as_deref(),
                bundle: candidate.bundle.as_deref(),
            };
            for identity in &rule.keyless {
                match keyless::verify(&evidence, identity) {
                    Ok(signer) => {
                        lock(&self.verified).insert(cache_key);
                        return Ok(Allowed::Verified {
                            rule: rule.name.clone(),
                            signer: Signer::Identity {
                                name: identity.name.clone(),
                                subject: signer.subject,
                                issuer: signer.issuer,
                                log_index: signer.log_index,
                            },
                            layout: candidate.layout,
                        });
                    }
                    Err(error) => {
                        let text = format!("for keyless identity {:?}, {error}", identity.name);
                        if !keyless_failures.contains(&text) {
                            keyless_failures.push(text);
                        }
                    }
                }
            }
        }
        let missing = if candidates.is_empty() {
            "it has no cosign signature (neither a sha256-<digest>.sig tag nor an OCI 1.1 referrer)"
                .to_string()
        } else if untrusted > 0 && !keyless_failures.is_empty() {
            keyless_failures.truncate(4);
            format!(
                "its {untrusted} signature(s) for this digest are not from a trusted key or identity: {}",
                keyless_failures.join("; ")
            )
        } else if untrusted > 0 {
            format!("its {untrusted} signature(s) for this digest are not from a trusted key")
        } else {
            other_digests.sort();
            other_digests.dedup();
            format!(
                "its signatures are for other digests ({}), not this one (was the tag moved after signing?)",
                other_digests.join(", ")
            )
        };
        Err(SignatureError::Unsigned {
            image: image.into(),
            digest: digest.into(),
            rule: rule.name.clone(),
            keys: rule.signer_names(),
            missing,
        })
    }

    /// [`Signatures::check`], answered from the cache when this (rule, digest) was verified
    /// under the current policy generation.
    pub async fn check_cached(
        &self,
        image: &str,
        digest: &str,
        namespace: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Allowed, SignatureError> {
        let loaded = self.current();
        if let Some(policy) = &loaded.policy
            && let Ok(reference) = super::parse_reference(image)
        {
            let repository = format!(
                "{}/{}",
                reference.resolve_registry(),
                reference.repository()
            );
            if let Some(rule) = policy.rule_for(&repository, namespace)
                && rule.action == RuleAction::Require
                && lock(&self.verified).contains(&(
                    loaded.generation,
                    rule.name.clone(),
                    digest.to_string(),
                ))
            {
                return Ok(Allowed::Verified {
                    rule: rule.name.clone(),
                    signer: Signer::Cached,
                    layout: SigLayout::Tag,
                });
            }
        }
        self.check(image, digest, namespace, credentials).await
    }

    /// Watches a running container's image until the guard is dropped.
    pub fn register(self: &Arc<Self>, running: RunningImage) -> RunningGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.running).insert(id, Arc::new(running));
        RunningGuard {
            id,
            signatures: self.clone(),
        }
    }

    /// Re-reads the policy file if it changed; returns whether a new policy took effect. A
    /// file that no longer loads keeps the old policy (the error is returned to log).
    pub fn reload(&self) -> Result<bool, PolicyError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let text = policy::read_bounded(path)?;
        let current = self.current();
        let sources = current
            .policy
            .as_ref()
            .map(|p| p.sources.as_slice())
            .unwrap_or_default();
        if current.fingerprint == Some(fingerprint(&text, sources)) {
            return Ok(false);
        }
        let policy = Policy::parse(&text, path)?;
        let print = fingerprint(&text, &policy.sources);
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Loaded {
            policy: Some(policy),
            generation: current.generation + 1,
            fingerprint: Some(print),
        });
        let generation = current.generation + 1;
        lock(&self.verified).retain(|(g, _, _)| *g == generation);
        Ok(true)
    }

    /// Checks every running container's image under the current policy and reports those
    /// refused now. Returns how many were reported.
    pub async fn recheck_running(&self) -> usize {
        let running: Vec<Arc<RunningImage>> = lock(&self.running).values().cloned().collect();
        let mut reported = 0;
        for r in running {
            if let Err(error) = self
                .check_cached(&r.image, &r.digest, &r.namespace, None)
                .await
                && !matches!(error, SignatureError::Fetch { .. })
            {
                (r.report)(format!(
                    "the image policy changed and this running container's image no longer passes (it keeps running): {error}"
                ));
                reported += 1;
            }
        }
        reported
    }

    /// Reloads the policy every `interval` and re-checks running images after each change.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        if self.path.is_none() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match this.reload() {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::info!(generation = this.generation(), "image policy reloaded");
                        let reported = this.recheck_running().await;
                        if reported > 0 {
                            tracing::warn!(
                                reported,
                                "running containers no longer pass the image policy"
                            );
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "image policy not reloaded; the previous one stays in force");
                    }
                }
            }
        });
    }
}

impl SignatureError {
    /// The container waiting reason: [`REASON`], or `ErrImagePull` for a registry failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Fetch { .. } => "ErrImagePull",
            Self::InvalidName { .. } => "InvalidImageName",
            _ => REASON,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(default: &str) -> Policy {
        let (_, pem) = keys::tests::p256();
        let pem = pem.replace('\n', "\n          ");
        Policy::parse(
            &format!(
                "default: {default}\nrules:\n  - name: signed\n    images: [\"127.0.0.1:1/signed/*\"]\n    action: require\n    keys:\n      - name: ci\n        pem: |\n          {pem}\n"
            ),
            Path::new("/p.yaml"),
        )
        .expect("policy")
    }

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[tokio::test]
    async fn a_cached_verification_needs_no_registry_and_a_new_generation_forgets_it() {
        let signatures = Signatures::fixed(policy("deny"), Vec::new());
        // Nothing listens on 127.0.0.1:1: an uncached check fails to read signatures.
        let image = "127.0.0.1:1/signed/app:v1";
        let error = signatures
            .check_cached(image, DIGEST, "default", None)
            .await
            .expect_err("no registry");
        assert_eq!(error.reason(), "ErrImagePull", "{error}");
        lock(&signatures.verified).insert((1, "signed".into(), DIGEST.into()));
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            let allowed = signatures
                .check_cached(image, DIGEST, "default", None)
                .await
                .expect("cached");
            assert!(matches!(allowed, Allowed::Verified { .. }));
        }
        let per_check = started.elapsed() / 1000;
        eprintln!("cached verification: {per_check:?} per check");
        assert!(per_check < Duration::from_millis(20), "{per_check:?}");
        // Unmatched images follow the default.
        let error = signatures
            .check_cached("127.0.0.1:1/other/app:v1", DIGEST, "default", None)
            .await
            .expect_err("default deny");
        assert_eq!(error.reason(), REASON);
        assert!(error.to_string().contains("default is deny"), "{error}");
        let warn = Signatures::fixed(policy("warn"), Vec::new());
        assert!(matches!(
            warn.check_cached("127.0.0.1:1/other/app:v1", DIGEST, "default", None)
                .await,
            Ok(Allowed::ByDefault { warning: Some(_) })
        ));
    }

    #[test]
    fn a_changed_policy_file_is_a_new_generation_and_a_broken_one_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "default: allow\n").expect("write");
        let signatures = Signatures::load(&path, Vec::new()).expect("load");
        assert_eq!(signatures.generation(), 1);
        assert!(!signatures.reload().expect("unchanged"));
        std::fs::write(&path, "default: deny\n").expect("write");
        assert!(signatures.reload().expect("changed"));
        assert_eq!(signatures.generation(), 2);
        std::fs::write(&path, "default: sometimes\n").expect("write");
        let error = signatures.reload().expect_err("broken");
        assert!(error.to_string().contains("docs/signing.md"), "{error}");
        assert_eq!(signatures.generation(), 2, "the previous policy stays");
    }
}
