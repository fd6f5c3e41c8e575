//! The node's image policy file (`--image-policy-file`): which images must carry cosign
//! signatures from which keys, per image pattern and namespace. See `docs/signing.md`.
//!
//! ```yaml
//! default: deny            # allow | warn | deny, for images no rule matches
//! rules:
//!   - name: team-apps
//!     images: ["registry.example.com/team/*"]
//!     namespaces: ["prod-*"]         # optional: every namespace when absent
//!     action: require                # require | allow
//!     keys:
//!       - name: ci
//!         path: /etc/krustlet/ci.pub # or `pem: |` inline
//!     keyless:                       # Fulcio certificate identities, checked offline
//!       - name: release
//!         issuer: https://token.actions.githubusercontent.com
//!         subject: "https://github.com/org/repo/.*"   # regexp over the whole subject
//!         trustedRoot: trusted_root.json             # or the policy's `trustedRoot`
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::keyless::{Identity, TrustedRoot};
use super::keys::PublicKey;

/// The most bytes a policy file (or a key file it names) may have.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// What happens to an image no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Runs, unverified.
    #[default]
    Allow,
    /// Runs, with a Warning event on the pod.
    Warn,
    /// Refused.
    Deny,
}

/// What a rule asks of the images it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// A valid signature from one of the rule's keys.
    Require,
    /// Nothing: unsigned images run.
    Allow,
}

/// One trusted key of a rule, as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySource {
    name: Option<String>,
    path: Option<PathBuf>,
    pem: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Option<String>,
    images: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    action: RuleAction,
    #[serde(default)]
    keys: Vec<KeySource>,
    #[serde(default)]
    keyless: Vec<KeylessSource>,
}

/// One keyless identity of a rule, as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeylessSource {
    name: Option<String>,
    issuer: String,
    subject: String,
    trusted_root: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    default: DefaultAction,
    #[serde(rename = "trustedRoot")]
    trusted_root: Option<PathBuf>,
    #[serde(default)]
    rules: Vec<RuleFile>,
}

/// A trusted key with the name the policy gives it.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// The key's name (its `name`, else its file, else `keys[i]`).
    pub name: String,
    /// The key.
    pub key: PublicKey,
}

/// One rule, its keys loaded.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's name (its `name`, else `rules[i]`).
    pub name: String,
    /// Globs over `registry/repository`.
    pub images: Vec<String>,
    /// Globs over namespaces; empty: every namespace.
    pub namespaces: Vec<String>,
    /// What the rule asks.
    pub action: RuleAction,
    /// The keys a signature may come from.
    pub keys: Vec<TrustedKey>,
    /// The keyless identities a signature may come from.
    pub keyless: Vec<Identity>,
}

impl Rule {
    /// The names of what may sign for this rule: its keys, then its keyless identities.
    pub fn signer_names(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.name.clone())
            .chain(self.keyless.iter().map(|i| format!("{} (keyless)", i.name)))
            .collect()
    }
}

/// A loaded policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// For images no rule matches.
    pub default: DefaultAction,
    /// First match wins.
    pub rules: Vec<Rule>,
    /// The files read besides the policy itself (keys, trusted roots): a change to any of
    /// them is a policy change too.
    pub sources: Vec<PathBuf>,
}

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file (or a key file) could not be read.
    #[error("image policy {path}: cannot read it: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The file is not a valid policy.
    #[error("image policy {path}: {message}; see docs/signing.md for the format")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Reads a policy (or key, or trusted root) file of at most [`MAX_POLICY_BYTES`].
pub(crate) fn read_bounded(path: &Path) -> Result<String, PolicyError> {
    let read_error = |e: std::io::Error| PolicyError::Read {
        path: path.into(),
        message: e.to_string(),
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_POLICY_BYTES {
        return Err(PolicyError::Invalid {
            path: path.into(),
            message: format!("it has {size} bytes, more than the {MAX_POLICY_BYTES} allowed"),
        });
    }
    std::fs::read_to_string(path).map_err(read_error)
}

impl Policy {
    /// Reads and checks the policy at `path`; key paths are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = read_bounded(path)?;
        Self::parse(&text, path)
    }

    /// Parses policy `text` (read from `path`, which names it in errors and anchors key paths).
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            path: path.into(),
            message,
        };
        let file: PolicyFile = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut sources = Vec::new();
        let mut roots: HashMap<PathBuf, Arc<TrustedRoot>> = HashMap::new();
        let mut rules = Vec::new();
        for (i, rule) in file.rules.into_iter().enumerate() {
            let name = rule.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
            if rule.images.is_empty() {
                return Err(invalid(format!("rule {name:?} has no `images` patterns")));
            }
            let mut keys = Vec::new();
            for (k, source) in rule.keys.iter().enumerate() {
                let (pem, default_name) = match (&source.path, &source.pem) {
                    (Some(p), None) => {
                        let full = base.join(p);
                        let pem = read_bounded(&full)?;
                        sources.push(full);
                        (pem, p.display().to_string())
                    }
                    (None, Some(pem)) => (pem.clone(), format!("keys[{k}]")),
                    _ => {
                        return Err(invalid(format!(
                            "rule {name:?} keys[{k}] needs exactly one of `path` and `pem`"
                        )));
                    }
                };
                let key = PublicKey::from_pem(&pem)
                    .map_err(|e| invalid(format!("rule {name:?} keys[{k}]: {e}")))?;
                keys.push(TrustedKey {
                    name: source.name.clone().unwrap_or(default_name),
                    key,
                });
            }
            let mut keyless = Vec::new();
            for (k, source) in rule.keyless.into_iter().enumerate() {
                let Some(root_path) = source.trusted_root.as_ref().or(file.trusted_root.as_ref())
                else {
                    return Err(invalid(format!(
                        "rule {name:?} keyless[{k}] needs a `trustedRoot` (here or at the top of the policy)"
                    )));
                };
                let full = base.join(root_path);
                let root = match roots.get(&full) {
                    Some(root) => root.clone(),
                    None => {
                        let text = read_bounded(&full)?;
                        let root = TrustedRoot::parse(text.as_bytes(), &full)
                            .map_err(|e| invalid(format!("rule {name:?} keyless[{k}]: {e}")))?;
                        sources.push(full.clone());
                        roots.entry(full).or_insert(Arc::new(root)).clone()
                    }
                };
                let identity_name = source.name.unwrap_or_else(|| format!("keyless[{k}]"));
                let identity = Identity::new(identity_name, source.issuer, source.subject, root)
                    .map_err(|e| invalid(format!("rule {name:?} keyless[{k}]: {e}")))?;
                keyless.push(identity);
            }
            if rule.action == RuleAction::Require && keys.is_empty() && keyless.is_empty() {
                return Err(invalid(format!(
                    "rule {name:?} requires signatures but lists no `keys` and no `keyless` identities"
                )));
            }
            rules.push(Rule {
                name,
                images: rule.images,
                namespaces: rule.namespaces,
                action: rule.action,
                keys,
                keyless,
            });
        }
        Ok(Self {
            default: file.default,
            rules,
            sources,
        })
    }

    /// The first rule for `repository` (`registry/repository`, no tag or digest) in
    /// `namespace`, if any.
    pub fn rule_for(&self, repository: &str, namespace: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            r.images.iter().any(|g| glob_match(g, repository))
                && (r.namespaces.is_empty()
                    || r.namespaces.iter().any(|g| glob_match(g, namespace)))
        })
    }
}

/// Whether `text` matches `pattern`: `*` is any run of characters but `/`, `**` any run at
/// all, `?` one character but `/`; everything else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matching with memo over (pi, ti): patterns are short, so O(p * t) is fine.
    let mut memo = vec![vec![None; t.len() + 1]; p.len() + 1];
    fn go(p: &[char], t: &[char], pi: usize, ti: usize, memo: &mut [Vec<Option<bool>>]) -> bool {
        if let Some(v) = memo[pi][ti] {
            return v;
        }
        let v = if pi == p.len() {
            ti == t.len()
        } else if p[pi] == '*' {
            let double = p.get(pi + 1) == Some(&'*');
            let next = if double { pi + 2 } else { pi + 1 };
            go(p, t, next, ti, memo)
                || (ti < t.len() && (double || t[ti] != '/') && go(p, t, pi, ti + 1, memo))
        } else if ti < t.len() && (p[pi] == t[ti] || (p[pi] == '?' && t[ti] != '/')) {
            go(p, t, pi + 1, ti + 1, memo)
        } else {
            false
        };
        memo[pi][ti] = Some(v);
        v
    }
    go(&p, &t, 0, 0, &mut memo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_keep_star_within_a_path_segment() {
        assert!(glob_match("reg:5000/team/*", "reg:5000/team/app"));
        assert!(!glob_match("reg:5000/team/*", "reg:5000/team/sub/app"));
        assert!(glob_match("reg:5000/team/**", "reg:5000/team/sub/app"));
        assert!(glob_match(
            "127.0.0.1:*/e2e/signed-*",
            "127.0.0.1:5000/e2e/signed-x"
        ));
        assert!(glob_match("prod-?", "prod-a"));
        assert!(!glob_match("prod", "prod-a"));
        assert!(glob_match("**", "anything/at/all"));
    }

    #[test]
    fn rules_match_in_order_and_by_namespace() {
        let policy = Policy::parse(
            r#"
default: warn
rules:
  - name: open
    images: ["reg/public/*"]
    action: allow
  - name: prod
    images: ["reg/**"]
    namespaces: ["prod-*"]
    action: require
    keys:
      - name: ci
        pem: |
          -----BEGIN PUBLIC KEY-----
          MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=
          -----END PUBLIC KEY-----
"#,
            Path::new("/etc/policy.yaml"),
        )
        .expect("policy");
        assert_eq!(policy.default, DefaultAction::Warn);
        let name = |repo, ns| policy.rule_for(repo, ns).map(|r| r.name.as_str());
        assert_eq!(name("reg/public/a", "prod-1"), Some("open"));
        assert_eq!(name("reg/team/a", "prod-1"), Some("prod"));
        assert_eq!(name("reg/team/a", "dev"), None);
        assert_eq!(policy.rules[1].keys[0].name, "ci");
    }

    #[test]
    fn bad_policies_say_what_to_fix() {
        let path = Path::new("/p.yaml");
        let error = |text: &str| Policy::parse(text, path).expect_err(text).to_string();
        assert!(error("rules: [{images: [a], action: require}]").contains("lists no `keys`"));
        assert!(error("default: maybe").contains("docs/signing.md"));
        assert!(
            error("rules: [{images: [a], action: require, keyless: [{issuer: x, subject: y}]}]")
                .contains("trustedRoot")
        );
        assert!(
            error("rules: [{images: [a], action: require, keyless: [{issuer: x, subject: y, trustedRoot: /nonexistent/root.json}]}]")
                .contains("/nonexistent/root.json")
        );
        assert!(
            error("rules: [{images: [a], action: require, keys: [{pem: nonsense}]}]")
                .contains("keys[0]")
        );
    }
}
