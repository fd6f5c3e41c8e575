//! Keyless signatures: a cosign signature made with a short-lived Fulcio certificate, checked
//! offline against a sigstore trusted root (`trusted_root.json`: Fulcio CA chains and Rekor
//! log keys) and the Rekor inclusion bundle cosign stores beside the signature.
//!
//! What a keyless signature must show, in the order checked (as cosign's `VerifyBundle`,
//! `TrustedCert` and `CheckCertificatePolicy` in `pkg/cosign/verify.go` do):
//! 1. a Rekor bundle whose signed entry timestamp (SET) a trusted Rekor key signed over the
//!    canonical JSON of `{body, integratedTime, logID, logIndex}`;
//! 2. a `hashedrekord` entry body naming this payload's SHA-256, this signature and this
//!    certificate;
//! 3. a log time (`integratedTime`) within the certificate's validity (Fulcio certificates
//!    live ten minutes: the log proves the signature was made while it was valid);
//! 4. a chain from the certificate to a Fulcio CA of the trusted root, valid at the log time,
//!    with the code-signing extended key usage;
//! 5. the identity: the OIDC issuer extension (OID 1.3.6.1.4.1.57264.1.8, else the older
//!    .1.1) equal to the policy's `issuer`, and a subject alternative name (email or URI)
//!    matching the policy's `subject` regular expression as a whole;
//! 6. the signature itself, by the certificate's key over the payload.
//!
//! Not checked (documented in `docs/signing.md`): certificate transparency SCTs, RFC 3161
//! timestamps, Rekor inclusion proofs (the SET is the promise of inclusion cosign checks
//! offline).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::keys::PublicKey;

/// The layer annotation holding the signing certificate (PEM).
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// The layer annotation holding the certificate's CA chain (PEM, intermediates first).
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
/// The layer annotation holding the Rekor bundle (JSON).
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
/// Fulcio's OIDC issuer extension (a DER UTF8String).
pub const OID_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
/// Fulcio's older OIDC issuer extension (the raw string).
pub const OID_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
/// The most certificates read from a chain annotation.
const MAX_CHAIN: usize = 8;
/// The longest subject regular expression a policy may give (compiled size is bounded too).
const MAX_SUBJECT_PATTERN: usize = 1024;
/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER contents.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// A time window in Unix seconds, open at an absent end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Window {
    start: Option<i64>,
    end: Option<i64>,
}

impl Window {
    fn contains(&self, t: i64) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t <= e)
    }

    fn text(&self) -> String {
        let end = |t: Option<i64>| t.map_or_else(|| "open".to_string(), time_text);
        format!("{} to {}", end(self.start), end(self.end))
    }
}

/// One Fulcio CA of a trusted root.
#[derive(Debug, Clone)]
struct CertificateAuthority {
    /// The last certificate of its chain: the trust anchor.
    anchor: Vec<u8>,
    /// The others (intermediates).
    intermediates: Vec<Vec<u8>>,
    valid: Window,
}

/// One Rekor log of a trusted root.
#[derive(Debug, Clone)]
struct TransparencyLog {
    /// SHA-256 of the key's DER SubjectPublicKeyInfo (or the root's `logId.keyId`).
    log_id: Vec<u8>,
    key: PublicKey,
    valid: Window,
}

/// A sigstore trusted root: the Fulcio CAs and Rekor keys keyless signatures are checked with.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    path: PathBuf,
    cas: Vec<CertificateAuthority>,
    logs: Vec<TransparencyLog>,
}

/// Why a trusted root file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "trusted root {path}: {message}; give a sigstore trusted_root.json with `certificateAuthorities` and `tlogs` (see docs/signing.md)"
)]
pub struct TrustedRootError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RootFile {
    #[serde(default)]
    certificate_authorities: Vec<CaFile>,
    #[serde(default)]
    tlogs: Vec<TlogFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CaFile {
    cert_chain: ChainFile,
    valid_for: Option<ValidFor>,
}

#[derive(Deserialize)]
struct ChainFile {
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogFile {
    public_key: TlogKey,
    log_id: Option<LogId>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogKey {
    raw_bytes: String,
    valid_for: Option<ValidFor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogId {
    key_id: String,
}

#[derive(Deserialize)]
struct ValidFor {
    start: Option<String>,
    end: Option<String>,
}

fn b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn window(valid: Option<&ValidFor>) -> Result<Window, String> {
    let parse = |t: &Option<String>| -> Result<Option<i64>, String> {
        t.as_deref()
            .map(|t| {
                t.parse::<jiff::Timestamp>()
                    .map(|ts| ts.as_second())
                    .map_err(|e| format!("time {t:?}: {e}"))
            })
            .transpose()
    };
    Ok(match valid {
        None => Window::default(),
        Some(v) => Window {
            start: parse(&v.start)?,
            end: parse(&v.end)?,
        },
    })
}

impl TrustedRoot {
    /// Parses a sigstore `trusted_root.json` read from `path` (which names it in errors).
    /// Rekor keys of unsupported kinds are skipped; at least one CA and one usable Rekor key
    /// are required.
    pub fn parse(json: &[u8], path: &Path) -> Result<Self, TrustedRootError> {
        let invalid = |message: String| TrustedRootError {
            path: path.into(),
            message,
        };
        let file: RootFile = serde_json::from_slice(json)
            .map_err(|e| invalid(format!("not JSON of the format: {e}")))?;
        let mut cas = Vec::new();
        for (i, ca) in file.certificate_authorities.iter().enumerate() {
            let mut chain = Vec::new();
            for (j, cert) in ca.cert_chain.certificates.iter().enumerate() {
                let der = b64(&cert.raw_bytes).ok_or_else(|| {
                    invalid(format!(
                        "certificateAuthorities[{i}] certificate {j} is not base64"
                    ))
                })?;
                X509Certificate::from_der(&der).map_err(|e| {
                    invalid(format!("certificateAuthorities[{i}] certificate {j}: {e}"))
                })?;
                chain.push(der);
            }
            let Some(anchor) = chain.pop() else {
                return Err(invalid(format!(
                    "certificateAuthorities[{i}] has no certificates"
                )));
            };
            cas.push(CertificateAuthority {
                anchor,
                intermediates: chain,
                valid: window(ca.valid_for.as_ref())
                    .map_err(|e| invalid(format!("certificateAuthorities[{i}] validFor: {e}")))?,
            });
        }
        let mut logs = Vec::new();
        for (i, log) in file.tlogs.iter().enumerate() {
            let der = b64(&log.public_key.raw_bytes)
                .ok_or_else(|| invalid(format!("tlogs[{i}] publicKey is not base64")))?;
            let Ok(key) = PublicKey::from_spki_der(&der) else {
                continue;
            };
            let log_id = match &log.log_id {
                Some(id) => b64(&id.key_id)
                    .ok_or_else(|| invalid(format!("tlogs[{i}] logId.keyId is not base64")))?,
                None => Sha256::digest(&der).to_vec(),
            };
            logs.push(TransparencyLog {
                log_id,
                key,
                valid: window(log.public_key.valid_for.as_ref())
                    .map_err(|e| invalid(format!("tlogs[{i}] validFor: {e}")))?,
            });
        }
        if cas.is_empty() {
            return Err(invalid("it lists no certificateAuthorities".into()));
        }
        if logs.is_empty() {
            return Err(invalid(
                "it lists no tlogs with an ECDSA P-256 or Ed25519 key".into(),
            ));
        }
        Ok(Self {
            path: path.into(),
            cas,
            logs,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A keyless identity a policy rule trusts: who (issuer + subject) under which trusted root.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The identity's name in the policy.
    pub name: String,
    /// The OIDC issuer the certificate must name, exactly.
    pub issuer: String,
    /// The regular expression the certificate's subject (email or URI) must match as a whole.
    pub subject: String,
    subject_re: regex::Regex,
    /// The CAs and logs to check with.
    pub root: Arc<TrustedRoot>,
}

impl Identity {
    /// An identity; `subject` must be a regular expression (it is matched as a whole).
    pub fn new(
        name: String,
        issuer: String,
        subject: String,
        root: Arc<TrustedRoot>,
    ) -> Result<Self, String> {
        if subject.len() > MAX_SUBJECT_PATTERN {
            return Err(format!(
                "subject pattern longer than {MAX_SUBJECT_PATTERN} characters"
            ));
        }
        let subject_re = regex::RegexBuilder::new(&format!("^(?:{subject})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("subject {subject:?} is not a regular expression: {e}"))?;
        if issuer.is_empty() {
            return Err("issuer is empty".into());
        }
        Ok(Self {
            name,
            issuer,
            subject,
            subject_re,
            root,
        })
    }
}

/// What a signature layer carries for keyless verification.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The simple-signing payload.
    pub payload: &'a [u8],
    /// The raw signature over it.
    pub signature: &'a [u8],
    /// The signing certificate (PEM), if any.
    pub certificate: Option<&'a str>,
    /// Its CA chain (PEM), if any.
    pub chain: Option<&'a str>,
    /// The Rekor bundle (JSON), if any.
    pub bundle: Option<&'a str>,
}

/// Who a verified keyless signature is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The certificate's OIDC issuer.
    pub issuer: String,
    /// The subject that matched.
    pub subject: String,
    /// The Rekor log index of the entry.
    pub log_index: i64,
}

/// Why a keyless signature does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeylessError {
    /// No certificate annotation.
    #[error("it has no signing certificate (no {CERTIFICATE_ANNOTATION} annotation)")]
    NoCertificate,
    /// The certificate does not parse.
    #[error("its signing certificate does not parse: {0}")]
    BadCertificate(String),
    /// No Rekor bundle annotation.
    #[error(
        "it has no Rekor bundle (no {BUNDLE_ANNOTATION} annotation); a keyless signature needs its transparency-log entry"
    )]
    NoBundle,
    /// The bundle does not parse.
    #[error("its Rekor bundle does not parse: {0}")]
    BadBundle(String),
    /// The bundle's log is not in the trusted root.
    #[error("its Rekor bundle is from log {log_id}, which trusted root {root} does not list")]
    UnknownLog {
        /// The bundle's log ID (hex).
        log_id: String,
        /// The trusted root file.
        root: String,
    },
    /// The SET does not verify.
    #[error(
        "its Rekor bundle's signed entry timestamp does not verify with the key of log {log_id} in trusted root {root} (the bundle was altered, or another log signed it)"
    )]
    BadTimestamp {
        /// The log ID (hex).
        log_id: String,
        /// The trusted root file.
        root: String,
    },
    /// The log entry is not for this signature.
    #[error("its Rekor bundle's entry is not for this signature: {0}")]
    EntryMismatch(String),
    /// Logged outside the certificate's (or the log key's) validity.
    #[error("it was logged at {time} (Unix seconds), outside the validity of {what} ({window})")]
    OutsideValidity {
        /// The log time.
        time: i64,
        /// What was not valid then.
        what: &'static str,
        /// The validity.
        window: String,
    },
    /// The certificate does not chain to a trusted CA.
    #[error(
        "its signing certificate was not issued by a Fulcio CA of trusted root {root} ({reason})"
    )]
    UntrustedCertificate {
        /// The trusted root file.
        root: String,
        /// webpki's reason.
        reason: String,
    },
    /// Wrong OIDC issuer.
    #[error("its certificate's OIDC issuer is {found:?}, not {wanted:?}")]
    WrongIssuer {
        /// The certificate's issuer.
        found: String,
        /// The policy's.
        wanted: String,
    },
    /// No subject matches.
    #[error("its certificate's subject {found:?} does not match the pattern {wanted:?}")]
    WrongSubject {
        /// The certificate's email/URI subjects, comma-separated.
        found: String,
        /// The policy's pattern.
        wanted: String,
    },
    /// The payload signature does not verify with the certificate's key.
    #[error("its signature does not verify with its certificate's key")]
    BadSignature,
}

/// cosign's Rekor bundle (`bundle.RekorBundle`, Go field names).
#[derive(Deserialize)]
struct RekorBundle {
    #[serde(rename = "SignedEntryTimestamp")]
    set: String,
    #[serde(rename = "Payload")]
    payload: RekorPayload,
}

/// The signed part, in canonical (sorted, compact) JSON field order.
#[derive(Deserialize, Serialize)]
struct RekorPayload {
    body: String,
    #[serde(rename = "integratedTime")]
    integrated_time: i64,
    #[serde(rename = "logID")]
    log_id: String,
    #[serde(rename = "logIndex")]
    log_index: i64,
}

#[derive(Deserialize)]
struct Entry {
    kind: String,
    spec: HashedRekord,
}

#[derive(Deserialize)]
struct HashedRekord {
    data: RekordData,
    signature: RekordSignature,
}

#[derive(Deserialize)]
struct RekordData {
    hash: RekordHash,
}

#[derive(Deserialize)]
struct RekordHash {
    algorithm: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RekordSignature {
    content: String,
    public_key: RekordKey,
}

#[derive(Deserialize)]
struct RekordKey {
    content: String,
}

/// The DER of every `CERTIFICATE` block in `pem` (at most `max`).
fn pem_certificates(pem: &str, max: usize) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!("a {:?} PEM block, not a CERTIFICATE", block.label));
        }
        if out.len() == max {
            return Err(format!("more than {max} certificates"));
        }
        out.push(block.contents);
    }
    Ok(out)
}

fn time_text(t: i64) -> String {
    jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |ts| ts.to_string())
}

/// The certificate's OIDC issuer, from Fulcio's extensions.
fn oidc_issuer(cert: &X509Certificate<'_>) -> Option<String> {
    let find = |oid: &str| {
        cert.extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == oid)
    };
    if let Some(ext) = find(OID_ISSUER_V2) {
        let (_, object) = x509_parser::der_parser::der::parse_der_utf8string(ext.value).ok()?;
        return object.as_str().ok().map(str::to_string);
    }
    find(OID_ISSUER_V1).and_then(|e| std::str::from_utf8(e.value).ok().map(str::to_string))
}

/// The certificate's email and URI subject alternative names.
fn subjects(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::RFC822Name(s) | GeneralName::URI(s) => Some(s.to_string()),
            _ => None,
        })
        .collect()
}

/// Checks the Rekor bundle against the payload, signature and certificate; returns the
/// checked payload (log time and index).
fn check_bundle(
    evidence: &Evidence<'_>,
    leaf_der: &[u8],
    root: &TrustedRoot,
) -> Result<RekorPayload, KeylessError> {
    let bundle: RekorBundle = serde_json::from_str(evidence.bundle.ok_or(KeylessError::NoBundle)?)
        .map_err(|e| KeylessError::BadBundle(e.to_string()))?;
    let root_name = root.path.display().to_string();
    let log_id = bundle.payload.log_id.to_ascii_lowercase();
    let log = root
        .logs
        .iter()
        .find(|l| hex(&l.log_id) == log_id)
        .ok_or_else(|| KeylessError::UnknownLog {
            log_id: log_id.clone(),
            root: root_name.clone(),
        })?;
    let set = b64(&bundle.set)
        .ok_or_else(|| KeylessError::BadBundle("SignedEntryTimestamp is not base64".into()))?;
    // Canonical JSON (RFC 8785) of the payload: its fields are sorted and its values are a
    // string and integers, so compact serde_json output is canonical.
    let canonical =
        serde_json::to_vec(&bundle.payload).map_err(|e| KeylessError::BadBundle(e.to_string()))?;
    if !log.key.verifies(&canonical, &set) {
        return Err(KeylessError::BadTimestamp {
            log_id,
            root: root_name,
        });
    }
    let time = bundle.payload.integrated_time;
    if !log.valid.contains(time) {
        return Err(KeylessError::OutsideValidity {
            time,
            what: "the Rekor log key",
            window: log.valid.text(),
        });
    }
    let body = b64(&bundle.payload.body)
        .ok_or_else(|| KeylessError::BadBundle("the entry body is not base64".into()))?;
    let entry: Entry = serde_json::from_slice(&body)
        .map_err(|e| KeylessError::EntryMismatch(format!("not a hashedrekord entry ({e})")))?;
    let mismatch = |what: &str| Err(KeylessError::EntryMismatch(what.into()));
    if entry.kind != "hashedrekord" {
        return mismatch("its kind is not hashedrekord");
    }
    if entry.spec.data.hash.algorithm != "sha256"
        || !entry
            .spec
            .data
            .hash
            .value
            .eq_ignore_ascii_case(&hex(&Sha256::digest(evidence.payload)))
    {
        return mismatch("it logs another payload hash");
    }
    if b64(&entry.spec.signature.content).as_deref() != Some(evidence.signature) {
        return mismatch("it logs another signature");
    }
    let logged_cert = b64(&entry.spec.signature.public_key.content)
        .and_then(|pem| String::from_utf8(pem).ok())
        .and_then(|pem| pem_certificates(&pem, 1).ok())
        .and_then(|mut certs| certs.pop());
    if logged_cert.as_deref() != Some(leaf_der) {
        return mismatch("it logs another certificate");
    }
    Ok(bundle.payload)
}

/// Verifies a keyless signature for `identity`; see the module docs for what is checked.
pub fn verify(evidence: &Evidence<'_>, identity: &Identity) -> Result<Signer, KeylessError> {
    let root = &identity.root;
    let root_name = root.path.display().to_string();
    let certificate = evidence.certificate.ok_or(KeylessError::NoCertificate)?;
    let leaf_der = pem_certificates(certificate, 1)
        .map_err(KeylessError::BadCertificate)?
        .pop()
        .ok_or_else(|| KeylessError::BadCertificate("no CERTIFICATE block".into()))?;
    let (_, leaf) = X509Certificate::from_der(&leaf_der)
        .map_err(|e| KeylessError::BadCertificate(e.to_string()))?;

    let logged = check_bundle(evidence, &leaf_der, root)?;
    let time = logged.integrated_time;
    let validity = leaf.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if time < not_before || time > not_after || time < 0 {
        return Err(KeylessError::OutsideValidity {
            time,
            what: "its signing certificate",
            window: format!("{} to {}", time_text(not_before), time_text(not_after)),
        });
    }

    // The chain, at the log time (cosign's TrustedCert checks it at the certificate's
    // notBefore; the log time lies within the validity, checked above).
    let code_signing = leaf
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.code_signing);
    if !code_signing {
        return Err(KeylessError::UntrustedCertificate {
            root: root_name,
            reason: "it lacks the code-signing extended key usage".into(),
        });
    }
    let extra = match evidence.chain {
        Some(chain) => pem_certificates(chain, MAX_CHAIN).map_err(|e| {
            KeylessError::BadCertificate(format!("its {CHAIN_ANNOTATION} annotation: {e}"))
        })?,
        None => Vec::new(),
    };
    let leaf_cert = CertificateDer::from(leaf_der.as_slice());
    let end_entity = webpki::EndEntityCert::try_from(&leaf_cert)
        .map_err(|e| KeylessError::BadCertificate(e.to_string()))?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(time.unsigned_abs()));
    let mut reason = format!("no CA of the root was valid at {}", time_text(time));
    let mut trusted = false;
    for ca in root.cas.iter().filter(|ca| ca.valid.contains(time)) {
        let anchor_der = CertificateDer::from(ca.anchor.as_slice());
        let anchor = match webpki::anchor_from_trusted_cert(&anchor_der) {
            Ok(anchor) => anchor,
            Err(e) => {
                reason = format!("its CA certificate is unusable: {e}");
                continue;
            }
        };
        let mut seen = HashSet::new();
        let intermediates: Vec<CertificateDer<'_>> = ca
            .intermediates
            .iter()
            .chain(extra.iter())
            .filter(|der| seen.insert(der.as_slice()))
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        match end_entity.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &intermediates,
            at,
            webpki::KeyUsage::required_if_present(CODE_SIGNING),
            None,
            None,
        ) {
            Ok(_) => {
                trusted = true;
                break;
            }
            Err(e) => reason = format!("{e:?}"),
        }
    }
    if !trusted {
        return Err(KeylessError::UntrustedCertificate {
            root: root_name,
            reason,
        });
    }

    // The identity (cosign's CheckCertificatePolicy).
    let issuer = oidc_issuer(&leaf).unwrap_or_default();
    if issuer != identity.issuer {
        return Err(KeylessError::WrongIssuer {
            found: issuer,
            wanted: identity.issuer.clone(),
        });
    }
    let found = subjects(&leaf);
    let Some(subject) = found.iter().find(|s| identity.subject_re.is_match(s)) else {
        return Err(KeylessError::WrongSubject {
            found: found.join(", "),
            wanted: identity.subject.clone(),
        });
    };

    let key = PublicKey::from_spki_der(leaf.public_key().raw)
        .map_err(|e| KeylessError::BadCertificate(e.to_string()))?;
    if !key.verifies(evidence.payload, evidence.signature) {
        return Err(KeylessError::BadSignature);
    }
    Ok(Signer {
        issuer,
        subject: subject.clone(),
        log_index: logged.log_index,
    })
}

/// Test material: a Fulcio-like CA, a Rekor-like log key and keyless signatures made with
/// them, as the end-to-end tests and docs/signing.md describe.
#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
    };
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};

    use super::*;

    const ISSUER: &str = "https://issuer.test";
    const SUBJECT: &str = "ci@example.test";

    fn enc(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        der: Vec<u8>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let der = params.self_signed(&key).expect("ca cert").der().to_vec();
        Ca { params, key, der }
    }

    struct Log {
        key: EcdsaKeyPair,
        spki: Vec<u8>,
    }

    fn log() -> Log {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("pkcs8");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("log key");
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki.extend_from_slice(key.public_key().as_ref());
        Log { key, spki }
    }

    fn root_json(ca: &Ca, log: &Log) -> String {
        serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": "https://rekor.test",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": enc(&log.spki), "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                              "validFor": {"start": "2000-01-01T00:00:00Z"}},
                "logId": {"keyId": enc(&Sha256::digest(&log.spki))}
            }],
            "certificateAuthorities": [{
                "subject": {"organization": "test", "commonName": "test"},
                "uri": "https://fulcio.test",
                "certChain": {"certificates": [{"rawBytes": enc(&ca.der)}]},
                "validFor": {"start": "2000-01-01T00:00:00Z"}
            }]
        })
        .to_string()
    }

    /// A signature layer's annotations: (payload, signature, certificate PEM, bundle JSON).
    struct Signed {
        payload: Vec<u8>,
        signature: Vec<u8>,
        certificate: String,
        bundle: String,
    }

    fn pem(der: &[u8]) -> String {
        crate::image::signature::keys::tests::pem_block("CERTIFICATE", der)
    }

    /// A keyless signature by `subject` from `issuer`, certified by `ca` and logged by `log`
    /// at `time`, the certificate valid for ten minutes from `time - 60`.
    fn sign(ca: &Ca, log: &Log, issuer: &str, subject: &str, time: i64) -> Signed {
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![SanType::Rfc822Name(subject.try_into().expect("ia5"))];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp(time - 60).expect("not before");
        params.not_after =
            time::OffsetDateTime::from_unix_timestamp(time + 540).expect("not after");
        // DER UTF8String of the issuer (short form length: test issuers are short).
        let mut v2 = vec![0x0c, issuer.len() as u8];
        v2.extend_from_slice(issuer.as_bytes());
        params.custom_extensions = vec![
            CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 1], issuer.into()),
            CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 8], v2),
        ];
        let issuer_ca = Issuer::from_params(&ca.params, &ca.key);
        let leaf = params.signed_by(&leaf_key, &issuer_ca).expect("leaf");
        let certificate = pem(leaf.der());
        let payload = br#"{"critical":{"identity":{"docker-reference":"r/a"},"image":{"docker-manifest-digest":"sha256:ab"},"type":"cosign container image signature"},"optional":null}"#.to_vec();
        let signature = rcgen::SigningKey::sign(&leaf_key, &payload).expect("sign");
        let body = serde_json::json!({
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": hex(&Sha256::digest(&payload))}},
                "signature": {"content": enc(&signature), "publicKey": {"content": enc(certificate.as_bytes())}}
            }
        });
        let logged = RekorPayload {
            body: enc(body.to_string().as_bytes()),
            integrated_time: time,
            log_id: hex(&Sha256::digest(&log.spki)),
            log_index: 7,
        };
        let canonical = serde_json::to_vec(&logged).expect("json");
        let set = log.key.sign(&SystemRandom::new(), &canonical).expect("set");
        let bundle = serde_json::json!({
            "SignedEntryTimestamp": enc(set.as_ref()),
            "Payload": {"body": logged.body, "integratedTime": time,
                        "logIndex": 7, "logID": logged.log_id}
        })
        .to_string();
        Signed {
            payload,
            signature,
            certificate,
            bundle,
        }
    }

    fn identity(ca: &Ca, log: &Log, subject: &str) -> Identity {
        let root = TrustedRoot::parse(root_json(ca, log).as_bytes(), Path::new("/root.json"))
            .expect("root");
        Identity::new("ci".into(), ISSUER.into(), subject.into(), Arc::new(root)).expect("id")
    }

    fn evidence(s: &Signed) -> Evidence<'_> {
        Evidence {
            payload: &s.payload,
            signature: &s.signature,
            certificate: Some(&s.certificate),
            chain: None,
            bundle: Some(&s.bundle),
        }
    }

    fn now() -> i64 {
        jiff::Timestamp::now().as_second()
    }

    #[test]
    fn a_logged_signature_from_the_trusted_ca_and_identity_verifies_even_after_its_certificate_expired()
     {
        let (ca, log) = (ca("fulcio"), log());
        let id = identity(&ca, &log, r"ci@example\.test");
        // Signed and logged a day ago: the ten-minute certificate has long expired.
        let signed = sign(&ca, &log, ISSUER, SUBJECT, now() - 86_400);
        let signer = verify(&evidence(&signed), &id).expect("verifies");
        assert_eq!(signer.subject, SUBJECT);
        assert_eq!(signer.issuer, ISSUER);
        assert_eq!(signer.log_index, 7);
    }

    #[test]
    fn each_failure_names_what_failed() {
        let (ca, log) = (ca("fulcio"), log());
        let id = identity(&ca, &log, r".*@example\.test");
        let check = |s: &Signed| verify(&evidence(s), &id).expect_err("refused");

        let wrong_subject = sign(&ca, &log, ISSUER, "mallory@evil.test", now());
        assert!(matches!(
            check(&wrong_subject),
            KeylessError::WrongSubject { .. }
        ));
        // A subject that only contains a match is not a match.
        let suffix = sign(&ca, &log, ISSUER, "ci@example.test.evil", now());
        assert!(matches!(check(&suffix), KeylessError::WrongSubject { .. }));

        let wrong_issuer = sign(&ca, &log, "https://other.test", SUBJECT, now());
        let error = check(&wrong_issuer);
        assert!(matches!(error, KeylessError::WrongIssuer { .. }), "{error}");
        assert!(error.to_string().contains("https://other.test"), "{error}");

        let other_ca = sign(&self::ca("other"), &log, ISSUER, SUBJECT, now());
        let error = check(&other_ca);
        assert!(
            matches!(error, KeylessError::UntrustedCertificate { .. }),
            "{error}"
        );

        let other_log = sign(&ca, &self::log(), ISSUER, SUBJECT, now());
        assert!(matches!(check(&other_log), KeylessError::UnknownLog { .. }));

        // A bundle whose log time was moved: the SET no longer verifies.
        let mut tampered = sign(&ca, &log, ISSUER, SUBJECT, now());
        let mut bundle: serde_json::Value = serde_json::from_str(&tampered.bundle).expect("json");
        bundle["Payload"]["integratedTime"] = serde_json::json!(now() - 30);
        tampered.bundle = bundle.to_string();
        assert!(matches!(
            check(&tampered),
            KeylessError::BadTimestamp { .. }
        ));

        // Another payload under the same log entry.
        let mut swapped = sign(&ca, &log, ISSUER, SUBJECT, now());
        swapped.payload.push(b' ');
        let error = check(&swapped);
        assert!(matches!(error, KeylessError::EntryMismatch(_)), "{error}");

        let unlogged = sign(&ca, &log, ISSUER, SUBJECT, now());
        assert!(matches!(
            verify(
                &Evidence {
                    bundle: None,
                    ..evidence(&unlogged)
                },
                &id
            ),
            Err(KeylessError::NoBundle)
        ));
    }

    #[test]
    fn trusted_roots_and_identities_that_cannot_work_are_refused_at_load() {
        let path = Path::new("/root.json");
        assert!(TrustedRoot::parse(b"nope", path).is_err());
        let error = TrustedRoot::parse(br#"{"tlogs": []}"#, path).expect_err("no CA");
        assert!(
            error.to_string().contains("certificateAuthorities"),
            "{error}"
        );
        let (ca, log) = (ca("fulcio"), log());
        let root = Arc::new(TrustedRoot::parse(root_json(&ca, &log).as_bytes(), path).expect("ok"));
        assert!(Identity::new("x".into(), ISSUER.into(), "(".into(), root.clone()).is_err());
        assert!(Identity::new("x".into(), String::new(), "a".into(), root).is_err());
    }
}
