//! Running one CNI plugin (CNI spec section 2 "Execution Protocol"; libcni `pkg/invoke`): the
//! executable named by the plugin's `type` is looked up in `--cni-bin-dir` (`FindInPath`),
//! started with the `CNI_*` parameters in its environment and the request configuration on
//! stdin; exit 0 means success and stdout holds the result, any other exit an error result
//! `{code, msg, details}` (section 5 "Error"), read as `RawExec.pluginErr` reads it.
//!
//! Unlike libcni, every run is bounded: it is killed (with its whole process group, so a
//! delegated IPAM plugin goes too) after [`PluginExec::timeout`], and stdout or stderr past
//! [`PluginExec::max_output`] bytes is an error, so a hung or chatty plugin cannot hold a pod
//! worker or the kubelet's memory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::CniError;

/// A CNI operation (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Add the container to the network.
    Add,
    /// Remove it.
    Del,
    /// Check it is as expected.
    Check,
}

impl Command {
    /// The `CNI_COMMAND` value.
    pub fn as_env(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
        }
    }

    /// As libcni names it in errors (`failed (add)`).
    pub fn as_word(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Del => "delete",
            Self::Check => "check",
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_word())
    }
}

/// The attachment parameters of one execution (section 3 "Attachment Parameters").
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS`; empty when the namespace is gone (DEL only).
    pub netns: &'a Path,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS`, as `K=V` pairs.
    pub args: &'a [(String, String)],
}

/// `CNI_ARGS` from pairs: `K1=V1;K2=V2` (libcni `stringify`).
pub fn args_string(args: &[(String, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// How plugins are found and bounded.
#[derive(Debug, Clone)]
pub struct PluginExec {
    /// Where plugins are looked for, in order (`CNI_PATH`).
    pub bin_dirs: Vec<PathBuf>,
    /// The longest a plugin may run before it is killed.
    pub timeout: Duration,
    /// The most bytes read from a plugin's stdout, and from its stderr.
    pub max_output: usize,
}

impl PluginExec {
    /// The executable for `plugin_type`: the first file of that name in the bin dirs that is
    /// executable (libcni `FindInPath`).
    ///
    /// # Errors
    /// [`CniError::PluginNotFound`].
    pub fn find(&self, plugin_type: &str) -> Result<PathBuf, CniError> {
        use std::os::unix::fs::PermissionsExt;
        self.bin_dirs
            .iter()
            .map(|dir| dir.join(plugin_type))
            .find(|path| {
                std::fs::metadata(path)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin_type.to_string(),
                dirs: self.cni_path(),
            })
    }

    /// `CNI_PATH`: the bin dirs joined with `:`.
    pub fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Runs plugin `plugin_type` (described as `plugin` in errors) for `command` with `request`
    /// on stdin; returns its stdout as JSON for ADD (the result), `Value::Null` otherwise
    /// (libcni's `ExecPluginWithoutResult` ignores it).
    ///
    /// # Errors
    /// [`CniError::PluginNotFound`], [`CniError::Spawn`], [`CniError::Timeout`],
    /// [`CniError::OutputTooLarge`], [`CniError::Plugin`] (its error result),
    /// [`CniError::BadResult`].
    pub async fn exec(
        &self,
        command: Command,
        plugin_type: &str,
        plugin: &str,
        request: &Value,
        attachment: &Attachment<'_>,
    ) -> Result<Value, CniError> {
        let path = self.find(plugin_type)?;
        let stdin = serde_json::to_vec(request).unwrap_or_default();
        let env = [
            ("CNI_COMMAND", command.as_env().to_string()),
            ("CNI_CONTAINERID", attachment.container_id.to_string()),
            ("CNI_NETNS", attachment.netns.display().to_string()),
            ("CNI_ARGS", args_string(attachment.args)),
            ("CNI_IFNAME", attachment.ifname.to_string()),
            ("CNI_PATH", self.cni_path()),
        ];
        tracing::debug!(%plugin, %command, netns = %attachment.netns.display(), ifname = attachment.ifname, "running CNI plugin");
        let output = self.run(&path, plugin, command, stdin, &env).await?;
        if !output.stderr.is_empty() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            tracing::debug!(%plugin, %command, stderr = %stderr.trim_end(), "CNI plugin stderr");
        }
        if !output.success {
            return Err(plugin_error(plugin, command, &output));
        }
        if command != Command::Add {
            return Ok(Value::Null);
        }
        match serde_json::from_slice::<Value>(&output.stdout) {
            Ok(result @ Value::Object(_)) => Ok(result),
            Ok(_) | Err(_) => Err(CniError::BadResult {
                plugin: plugin.to_string(),
                command,
                message: format!(
                    "its output is not a JSON result object: {:?}",
                    truncate(&output.stdout)
                ),
            }),
        }
    }

    async fn run(
        &self,
        path: &Path,
        plugin: &str,
        command: Command,
        stdin: Vec<u8>,
        env: &[(&str, String)],
    ) -> Result<Output, CniError> {
        // libcni retries "text file busy" (a plugin being written, or a write descriptor a
        // concurrent fork still holds) a few times.
        let mut attempt = 0u32;
        let mut child = loop {
            let mut cmd = tokio::process::Command::new(path);
            cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                // Its own process group: a timeout kills delegated plugins too.
                .process_group(0);
            match cmd.spawn() {
                Ok(child) => break child,
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && attempt < 5 => {
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    attempt += 1;
                }
                Err(source) => {
                    return Err(CniError::Spawn {
                        plugin: plugin.to_string(),
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        };
        let group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(nix::unistd::Pid::from_raw);
        let (mut input, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let limit = self.max_output;
        let work = async {
            let write = async move {
                if let Some(input) = input.as_mut() {
                    // A plugin that does not read its stdin is its own business.
                    let _ = input.write_all(&stdin).await;
                }
                drop(input);
                Ok::<(), Failure>(())
            };
            let (_, out, err) = tokio::try_join!(
                write,
                read_bounded(stdout, limit),
                read_bounded(stderr, limit)
            )?;
            let status = child.wait().await.map_err(Failure::Wait)?;
            Ok::<_, Failure>(Output {
                success: status.success(),
                status: status.to_string(),
                stdout: out,
                stderr: err,
            })
        };
        let outcome = tokio::time::timeout(self.timeout, work).await;
        let kill = || {
            if let Some(group) = group {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
        };
        match outcome {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(Failure::Wait(source))) => {
                kill();
                Err(CniError::Spawn {
                    plugin: plugin.to_string(),
                    path: path.to_path_buf(),
                    source,
                })
            }
            Ok(Err(Failure::Overflow)) => {
                kill();
                Err(CniError::OutputTooLarge {
                    plugin: plugin.to_string(),
                    command,
                    limit,
                })
            }
            Err(_) => {
                kill();
                let _ = child.wait().await;
                Err(CniError::Timeout {
                    plugin: plugin.to_string(),
                    command,
                    timeout: self.timeout,
                })
            }
        }
    }
}

/// What a plugin run gave.
#[derive(Debug)]
struct Output {
    success: bool,
    status: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Why a run did not give an [`Output`].
#[derive(Debug)]
enum Failure {
    /// More output than allowed.
    Overflow,
    /// Waiting for the plugin failed.
    Wait(std::io::Error),
}

async fn read_bounded(
    pipe: Option<impl AsyncRead + Unpin>,
    limit: usize,
) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    if let Some(pipe) = pipe {
        let bound = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
        pipe.take(bound)
            .read_to_end(&mut buf)
            .await
            .map_err(Failure::Wait)?;
    }
    if buf.len() > limit {
        return Err(Failure::Overflow);
    }
    Ok(buf)
}

/// The error of a failed run, as libcni's `RawExec.pluginErr`: the error result on stdout,
/// else stderr, else the exit status.
fn plugin_error(plugin: &str, command: Command, output: &Output) -> CniError {
    #[derive(serde::Deserialize)]
    struct ErrorResult {
        #[serde(default)]
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    let (code, msg, details) = if output.stdout.iter().all(u8::is_ascii_whitespace) {
        let stderr = truncate(&output.stderr);
        if stderr.trim().is_empty() {
            (
                0,
                format!("netplugin failed with no error message: {}", output.status),
                String::new(),
            )
        } else {
            (
                0,
                format!(
                    "netplugin failed: {:?}: {}",
                    stderr.trim_end(),
                    output.status
                ),
                String::new(),
            )
        }
    } else {
        match serde_json::from_slice::<ErrorResult>(&output.stdout) {
            Ok(e) => (e.code, e.msg, e.details),
            Err(error) => (
                0,
                format!(
                    "netplugin failed but error parsing its diagnostic message {:?}: {error}",
                    truncate(&output.stdout)
                ),
                String::new(),
            ),
        }
    };
    CniError::Plugin {
        plugin: plugin.to_string(),
        command,
        code,
        msg,
        details,
    }
}

/// At most 4 KiB of output, as text, for messages.
fn truncate(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned();
    if bytes.len() > 4096 {
        text + "..."
    } else {
        text
    }
}

/// The container's IPs in an ADD result (section 5 "ADD Success"): the `ips` whose
/// `interface` is one inside the container (an interface with a `sandbox`), or that name no
/// interface; for pre-0.3 results, `ip4.ip` and `ip6.ip`. Addresses are in CIDR notation.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    let parse = |cidr: &str| -> Option<IpAddr> { cidr.split('/').next()?.trim().parse().ok() };
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let inside = |index: Option<u64>| -> bool {
        let Some(index) = index else { return true };
        let Some(interfaces) = interfaces else {
            return true;
        };
        usize::try_from(index)
            .ok()
            .and_then(|i| interfaces.get(i))
            .and_then(|iface| iface.get("sandbox"))
            .and_then(Value::as_str)
            .is_some_and(|sandbox| !sandbox.is_empty())
    };
    let mut ips: Vec<IpAddr> = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|ip| inside(ip.get("interface").and_then(Value::as_u64)))
        .filter_map(|ip| parse(ip.get("address")?.as_str()?))
        .collect();
    for legacy in ["ip4", "ip6"] {
        if let Some(ip) = result
            .get(legacy)
            .and_then(|v| v.get("ip"))
            .and_then(Value::as_str)
            .and_then(parse)
        {
            ips.push(ip);
        }
    }
    let mut seen = Vec::new();
    ips.retain(|ip| {
        let new = !seen.contains(ip);
        seen.push(*ip);
        new
    });
    ips
}

/// The pod's IPs in `status.podIPs` order: the first IPv4 address (else the first address),
/// then the first address of the other family (the API server allows one per family).
pub fn pod_ips(ips: &[IpAddr]) -> Vec<IpAddr> {
    let Some(primary) = ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()).copied() else {
        return Vec::new();
    };
    let mut out = vec![primary];
    if let Some(other) = ips.iter().find(|ip| ip.is_ipv4() != primary.is_ipv4()) {
        out.push(*other);
    }
    out
}
