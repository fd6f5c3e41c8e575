//! Authentication and authorization of kubelet API requests, as the kubelet's webhook mode
//! does it (upstream `pkg/kubelet/server/auth.go`): a verified client certificate or a bearer
//! token checked by a TokenReview names the user; a SubjectAccessReview on the Node decides.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::Digest;
use tokio::sync::watch;

/// How long an allowed decision is reused (the kubelet's default webhook cache TTL).
const ALLOWED_TTL: Duration = Duration::from_secs(30);
/// How long a denied decision is reused; short, so a new RoleBinding takes effect soon.
const DENIED_TTL: Duration = Duration::from_secs(10);
/// How long a token's review is reused without asking again: the kubelet's webhook cache TTL
/// of 2 minutes, for accepted and rejected tokens alike (`cache.New(tokenAuth, false, CacheTTL,
/// CacheTTL)` in k8s.io/apiserver `authenticatorfactory/delegating.go`), so a flood of one bogus
/// token costs one TokenReview.
const TOKEN_TTL: Duration = Duration::from_secs(120);
/// Cached entries beyond this are dropped wholesale, so no client can grow the caches forever.
const CACHE_LIMIT: usize = 10_000;

/// Why a request was not let through.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or credentials the cluster does not accept.
    #[error("Unauthorized")]
    Unauthorized,
    /// The user may not do this on this node.
    #[error(
        "Forbidden (user={user}, verb={verb}, resource=nodes, subresource={subresource}){reason}"
    )]
    Forbidden {
        /// Who asked.
        user: String,
        /// The verb checked.
        verb: String,
        /// The subresource checked.
        subresource: String,
        /// The authorizer's reason, with a leading ": ", or empty.
        reason: String,
    },
    /// The TokenReview or SubjectAccessReview could not be made.
    #[error("authentication or authorization check failed: {0}")]
    Review(#[from] kube::Error),
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// The user name (a certificate's CN).
    pub name: String,
    /// The uid, if the authenticator gave one.
    pub uid: Option<String>,
    /// Groups (a certificate's O values).
    pub groups: Vec<String>,
    /// Extra attributes from a TokenReview.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// The user a verified client certificate names: CN and O, as the API server reads them.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())?
            .to_string();
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(String::from))
            .collect();
        Some(Self {
            name,
            groups,
            ..Default::default()
        })
    }
}

/// What a request is checked as: `verb` on the `nodes/<subresource>` of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// get, create, update, patch or delete.
    pub verb: &'static str,
    /// proxy, log, stats or metrics.
    pub subresource: &'static str,
}

/// Maps a request to SubjectAccessReview attributes the way the kubelet does: the verb from
/// the HTTP method, the subresource from the path (`proxy` for everything else, including
/// `/containerLogs`, `/exec` and `/run`).
pub fn attributes(method: &Method, path: &str) -> Attributes {
    // HEAD included: upstream maps only these five methods, so HEAD has no verb either.
    let verb = match *method {
        Method::POST => "create",
        Method::GET => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        // Upstream leaves the verb empty, which no RBAC rule matches.
        _ => "",
    };
    let is_under = |root: &str| {
        path == root
            || path
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    let subresource = if is_under("/stats") {
        "stats"
    } else if is_under("/metrics") {
        "metrics"
    } else if is_under("/logs") {
        "log"
    } else {
        "proxy"
    };
    Attributes { verb, subresource }
}

/// A cache of answers by key, each with its expiry.
type Cache<T> = Mutex<HashMap<String, (T, Instant)>>;

/// Checks who calls and whether they may, caching the cluster's answers briefly.
pub struct Auth {
    node_name: String,
    clients: watch::Receiver<kube::Client>,
    /// `None`: the token was rejected.
    tokens: Cache<Option<User>>,
    /// One review at a time per token digest: concurrent requests with the same token wait
    /// for its answer instead of each asking the API server.
    reviewing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// `Err` holds the authorizer's reason for a denial.
    decisions: Cache<Result<(), String>>,
}

impl Auth {
    /// An authenticator and authorizer for `node_name`, using the node's current client.
    pub fn new(node_name: String, clients: watch::Receiver<kube::Client>) -> Self {
        Self {
            node_name,
            clients,
            tokens: Mutex::new(HashMap::new()),
            reviewing: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self) -> kube::Client {
        self.clients.borrow().clone()
    }

    /// The user behind a request: the client certificate's (already verified by TLS), else the
    /// bearer token's, by TokenReview.
    pub async fn authenticate(
        &self,
        certificate_user: Option<&User>,
        headers: &HeaderMap,
    ) -> Result<User, AuthError> {
        if let Some(user) = certificate_user {
            return Ok(user.clone());
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Unauthorized)?;
        // Keyed by digest, so the cache holds no usable credentials.
        let key = format!("{:x}", sha2::Sha256::digest(token.as_bytes()));
        if let Some(known) = cached(&self.tokens, &key) {
            return known.ok_or(AuthError::Unauthorized);
        }
        let gate = self
            .reviewing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let reviewed = {
            let _turn = gate.lock().await;
            // Whoever held the turn before may have answered it.
            match cached(&self.tokens, &key) {
                Some(known) => Ok(known),
                None => self.review(token, &key).await,
            }
        };
        {
            let mut reviewing = self.reviewing.lock().unwrap_or_else(|e| e.into_inner());
            // Ours and the map's: nobody else waits on this gate.
            if Arc::strong_count(&gate) <= 2 {
                reviewing.remove(&key);
            }
        }
        reviewed?.ok_or(AuthError::Unauthorized)
    }

    /// Asks the API server about `token` and caches the answer, a rejection included.
    async fn review(&self, token: &str, key: &str) -> Result<Option<User>, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: None,
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(info)) => Some(User {
                name: info.username.unwrap_or_default(),
                uid: info.uid,
                groups: info.groups.unwrap_or_default(),
                extra: info.extra.unwrap_or_default(),
            }),
            _ => {
                tracing::debug!(error = ?status.error, "bearer token rejected");
                None
            }
        };
        remember(&self.tokens, key.into(), user.clone(), TOKEN_TTL);
        Ok(user)
    }

    /// Asks the cluster whether `user` may do `attributes` on this node.
    pub async fn authorize(&self, user: &User, attributes: &Attributes) -> Result<(), AuthError> {
        let spec = SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: user.uid.clone(),
            groups: Some(user.groups.clone()),
            extra: Some(user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(attributes.verb.into()),
                group: Some(String::new()),
                version: Some("v1".into()),
                resource: Some("nodes".into()),
                subresource: Some(attributes.subresource.into()),
                name: Some(self.node_name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        // The whole spec is the key: user, groups, extra and attributes all matter.
        let key = serde_json::to_string(&spec).unwrap_or_default();
        let decision = match cached(&self.decisions, &key) {
            Some(decision) => decision,
            None => {
                let review = SubjectAccessReview {
                    spec,
                    ..Default::default()
                };
                let reviewed = Api::<SubjectAccessReview>::all(self.client())
                    .create(&PostParams::default(), &review)
                    .await?;
                let status = reviewed.status.unwrap_or_default();
                let decision = if status.allowed {
                    Ok(())
                } else {
                    Err(status.reason.unwrap_or_default())
                };
                let ttl = if decision.is_ok() {
                    ALLOWED_TTL
                } else {
                    DENIED_TTL
                };
                remember(&self.decisions, key, decision.clone(), ttl);
                decision
            }
        };
        decision.map_err(|reason| AuthError::Forbidden {
            user: user.name.clone(),
            verb: attributes.verb.into(),
            subresource: attributes.subresource.into(),
            reason: if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            },
        })
    }
}

fn cached<T: Clone>(cache: &Cache<T>, key: &str) -> Option<T> {
    let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .get(key)
        .filter(|(_, expires)| *expires > Instant::now())
        .map(|(value, _)| value.clone())
}

fn remember<T>(cache: &Cache<T>, key: String, value: T, ttl: Duration) {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if cache.len() >= CACHE_LIMIT {
        cache.retain(|_, (_, expires)| *expires > now);
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
    }
    cache.insert(key, (value, now + ttl));
}

/// Reads one HTTP/1.1 request from `tcp`: its head, and as much body as it announces; `None`
/// when the peer closes first. For the tests' fake API servers.
#[cfg(test)]
pub(crate) async fn read_test_request(tcp: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    use tokio::io::AsyncReadExt;
    let mut request = Vec::new();
    let mut buffer = [0; 8192];
    loop {
        let n = tcp.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                return Some((text[..end].to_string(), text[end + 4..].to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_follow_the_http_method() {
        for (method, verb) in [
            (Method::GET, "get"),
            (Method::HEAD, ""),
            (Method::POST, "create"),
            (Method::PUT, "update"),
            (Method::PATCH, "patch"),
            (Method::DELETE, "delete"),
            (Method::OPTIONS, ""),
        ] {
            assert_eq!(attributes(&method, "/pods").verb, verb, "{method}");
        }
    }

    #[test]
    fn subresources_follow_the_path() {
        for (path, subresource) in [
            ("/stats", "stats"),
            ("/stats/summary", "stats"),
            ("/metrics", "metrics"),
            ("/metrics/cadvisor", "metrics"),
            ("/logs/", "log"),
            ("/logs/syslog", "log"),
            ("/containerLogs/ns/pod/c", "proxy"),
            ("/exec/ns/pod/c", "proxy"),
            ("/run/ns/pod/c", "proxy"),
            ("/pods", "proxy"),
            ("/statsfoo", "proxy"),
            ("/", "proxy"),
        ] {
            assert_eq!(
                attributes(&Method::GET, path).subresource,
                subresource,
                "{path}"
            );
        }
    }

    #[test]
    fn certificate_users_are_cn_and_groups_o() {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "jane");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "devs");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let user = User::from_certificate(cert.der()).expect("user");
        assert_eq!(user.name, "jane");
        assert_eq!(user.groups, ["devs"]);
    }

    #[test]
    fn forbidden_names_user_verb_and_subresource() {
        let error = AuthError::Forbidden {
            user: "jane".into(),
            verb: "get".into(),
            subresource: "proxy".into(),
            reason: String::new(),
        };
        assert_eq!(
            error.to_string(),
            "Forbidden (user=jane, verb=get, resource=nodes, subresource=proxy)"
        );
    }

    /// A fake API server that rejects every TokenReview; returns its URL and the count.
    async fn rejecting_api_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::AsyncWriteExt;
        let reviews = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counter = reviews.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    if read_test_request(&mut tcp).await.is_none() {
                        return;
                    }
                    // Slow enough that concurrent requests overlap.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{},"spec":{},"status":{"authenticated":false,"error":"invalid bearer token"}}"#;
                    let response = format!(
                        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(response.as_bytes()).await;
                });
            }
        });
        (format!("http://{addr}"), reviews)
    }

    #[tokio::test]
    async fn a_rejected_token_is_reviewed_once_however_often_it_comes() {
        let (url, reviews) = rejecting_api_server().await;
        let config = kube::Config::new(url.parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        let auth = Arc::new(Auth::new("node-a".into(), watch::channel(client).1));
        let headers = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().expect("header"),
            );
            headers
        };
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100 {
            let (auth, headers) = (
                auth.clone(),
                headers(if i % 2 == 0 { "bogus-a" } else { "bogus-b" }),
            );
            tasks.spawn(async move { auth.authenticate(None, &headers).await });
        }
        while let Some(result) = tasks.join_next().await {
            assert!(matches!(
                result.expect("join"),
                Err(AuthError::Unauthorized)
            ));
        }
        assert_eq!(reviews.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Later requests come from the cache, and leave no review gates behind.
        let again = auth.authenticate(None, &headers("bogus-a")).await;
        assert!(matches!(again, Err(AuthError::Unauthorized)));
        assert_eq!(reviews.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(auth.reviewing.lock().expect("lock").is_empty());
    }

    #[test]
    fn cache_entries_expire() {
        let cache = Mutex::new(HashMap::new());
        remember(&cache, "a".into(), 1, Duration::from_secs(60));
        remember(&cache, "b".into(), 2, Duration::ZERO);
        assert_eq!(cached(&cache, "a"), Some(1));
        assert_eq!(cached(&cache, "b"), None);
    }
}
