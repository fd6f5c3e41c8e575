//! The node's CNI network configuration (CNI spec section 1 "Network configuration format"),
//! loaded as containerd's CRI does (go-cni `loadFromConfDir` over libcni's `ConfFiles`): the
//! files in `--cni-conf-dir` ending in `.conf`, `.conflist` or `.json`, sorted by name; the
//! first one is the pod network. A `.conflist` is a network configuration list; a `.conf` or
//! `.json` file is a single plugin configuration, wrapped into a list of one as libcni's
//! `ConfListFromConf` does. A `.conflist` without `loadOnlyInlinedPlugins: true` also gets the
//! plugins in `<conf-dir>/<network name>/*.conf` appended (spec 1.1, libcni
//! `NetworkConfFromFile`).
//!
//! Each plugin execution gets a request configuration derived from its plugin configuration
//! (spec section 3 "Deriving request configuration from plugin configuration"): `name` and
//! `cniVersion` from the list, `prevResult` when there is one, `runtimeConfig` from the
//! capability arguments the plugin declares in `capabilities` (which is not passed on).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The newest CNI spec version this runtime speaks.
pub const CURRENT_VERSION: &str = "1.1.0";

/// The largest configuration file read (a network configuration is a few hundred bytes).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Errors of CNI configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--cni-conf-dir` exists but cannot be listed.
    #[error("cannot read the CNI configuration directory {dir} (--cni-conf-dir): {source}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file cannot be read.
    #[error("cannot read the CNI configuration {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A configuration is not a valid CNI network configuration.
    #[error(
        "invalid CNI network configuration {}: {message}; fix the file (CNI spec section 1) or \
         remove it", path.display()
    )]
    Invalid {
        /// The file (empty for a cached configuration).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A network configuration list: the plugins to run, in order, for one network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// The network's name.
    pub name: String,
    /// The CNI version selected for it (section 1 "Version considerations").
    pub cni_version: String,
    /// `disableCheck`: never run CHECK.
    pub disable_check: bool,
    /// The plugins, in ADD order.
    pub plugins: Vec<PluginConf>,
    /// The file it came from (empty when rebuilt from a sandbox record).
    pub source: PathBuf,
}

/// One plugin configuration object of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    /// `type`: the plugin's executable name.
    pub plugin_type: String,
    /// `capabilities` the plugin declares (true ones only).
    pub capabilities: Vec<String>,
    /// The whole object, passed on unchanged but for what section 3 adds and removes.
    pub raw: Map<String, Value>,
}

/// The configuration files of `dir` in the order containerd reads them; none if the directory
/// does not exist.
///
/// # Errors
/// [`ConfigError::ReadDir`].
pub fn conf_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::ReadDir {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        // libcni skips directories only; a symlink to a file counts (as `IsDir` is false).
        .filter(|e| !e.path().is_dir())
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .collect();
    // Go's sort.Strings: byte order of the whole path.
    files.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    Ok(files)
}

/// The pod network of `dir`: the first configuration file, loaded; `None` when there is none.
///
/// # Errors
/// The first file cannot be read or is invalid (containerd then reports the network not
/// ready rather than skipping it).
pub fn load(dir: &Path) -> Result<Option<NetworkConfigList>, ConfigError> {
    let Some(path) = conf_files(dir)?.into_iter().next() else {
        return Ok(None);
    };
    let bytes = read(&path)?;
    let invalid = |message: String| ConfigError::Invalid {
        path: path.clone(),
        message,
    };
    let mut list = if path.extension().is_some_and(|e| e == "conflist") {
        let (mut list, inlined_only) = parse_list(&bytes).map_err(invalid)?;
        if !inlined_only {
            // Spec 1.1: plugins aggregated from `<dir>/<network name>/*.conf`.
            for file in conf_files(&dir.join(&list.name))?
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            {
                let plugin =
                    parse_plugin(&read(&file)?).map_err(|message| ConfigError::Invalid {
                        path: file.clone(),
                        message,
                    })?;
                list.plugins.push(plugin);
            }
        }
        if list.plugins.is_empty() {
            return Err(invalid("the network has no plugins".into()));
        }
        list
    } else {
        parse_conf(&bytes).map_err(invalid)?
    };
    list.source = path;
    Ok(Some(list))
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let error = |source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(error)?
        .take(MAX_CONFIG_BYTES)
        .read_to_end(&mut bytes)
        .map_err(error)?;
    Ok(bytes)
}

/// Parses a network configuration list (a `.conflist`); also says whether it has
/// `loadOnlyInlinedPlugins: true`.
///
/// # Errors
/// What is wrong, for [`ConfigError::Invalid`].
pub fn parse_list(bytes: &[u8]) -> Result<(NetworkConfigList, bool), String> {
    let object = object_of(bytes)?;
    let name = match object.get("name") {
        Some(Value::String(name)) => name.clone(),
        Some(other) => return Err(format!("\"name\" must be a string, not {other}")),
        None => return Err("no \"name\"".into()),
    };
    validate_name(&name)?;
    let cni_version = select_version(&object)?;
    let read_bool = |key: &str| -> Result<bool, String> {
        // libcni accepts booleans and the strings "true"/"false".
        match object.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
            Some(other) => Err(format!("invalid value {other} for \"{key}\"")),
        }
    };
    let disable_check = read_bool("disableCheck")?;
    let inlined_only = read_bool("loadOnlyInlinedPlugins")?;
    let plugins = match object.get("plugins") {
        None if inlined_only => {
            return Err("\"loadOnlyInlinedPlugins\" is true and there is no \"plugins\"".into());
        }
        None => Vec::new(),
        Some(Value::Array(plugins)) if plugins.is_empty() => {
            return Err("no plugins in \"plugins\"".into());
        }
        Some(Value::Array(plugins)) => plugins
            .iter()
            .enumerate()
            .map(|(i, p)| {
                plugin_of(p.as_object().cloned().unwrap_or_default())
                    .map_err(|e| format!("plugin {i}: {e}"))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("\"plugins\" must be a list, not {other}")),
    };
    Ok((
        NetworkConfigList {
            name,
            cni_version,
            disable_check,
            plugins,
            source: PathBuf::new(),
        },
        inlined_only,
    ))
}

/// Parses a single plugin configuration (a `.conf` or `.json` file) into a list of one, as
/// libcni's `ConfListFromConf`: the list takes the plugin's `name` and `cniVersion`.
///
/// # Errors
/// What is wrong, for [`ConfigError::Invalid`].
pub fn parse_conf(bytes: &[u8]) -> Result<NetworkConfigList, String> {
    let object = object_of(bytes)?;
    if object.contains_key("plugins") {
        return Err(
            "this is a configuration list (it has \"plugins\"): name the file *.conflist".into(),
        );
    }
    let plugin = plugin_of(object.clone())?;
    let name = match object.get("name") {
        Some(Value::String(name)) => name.clone(),
        _ => return Err("no \"name\"".into()),
    };
    validate_name(&name)?;
    Ok(NetworkConfigList {
        name,
        cni_version: select_version(&object)?,
        disable_check: false,
        plugins: vec![plugin],
        source: PathBuf::new(),
    })
}

/// Parses one plugin configuration object from its own file (`<dir>/<network>/*.conf`).
fn parse_plugin(bytes: &[u8]) -> Result<PluginConf, String> {
    plugin_of(object_of(bytes)?)
}

fn object_of(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn plugin_of(raw: Map<String, Value>) -> Result<PluginConf, String> {
    let plugin_type = match raw.get("type") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => return Err("missing \"type\" (the plugin's executable name)".into()),
    };
    if plugin_type.contains('/') || plugin_type.contains('\\') || plugin_type.starts_with('.') {
        return Err(format!(
            "\"type\" {plugin_type:?} must be a plain executable name"
        ));
    }
    let capabilities = match raw.get("capabilities") {
        None => Vec::new(),
        Some(Value::Object(caps)) => caps
            .iter()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .map(|(name, _)| name.clone())
            .collect(),
        Some(other) => return Err(format!("\"capabilities\" must be an object, not {other}")),
    };
    Ok(PluginConf {
        plugin_type,
        capabilities,
        raw,
    })
}

/// libcni's `ValidateNetworkName`: an alphanumeric, then alphanumerics, `_`, `.`, `-`.
fn validate_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(format!(
            "network name {name:?} must start with a letter or digit and contain only letters, \
             digits, '_', '.' and '-'"
        ))
    }
}

/// A version `a.b.c` as numbers.
pub fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let v = (
        parts.next()??,
        parts.next()??,
        parts.next().unwrap_or(Some(0))?,
    );
    parts.next().is_none().then_some(v)
}

/// Whether `version` is at least `min` (unparsable versions are not).
pub fn at_least(version: &str, min: &str) -> bool {
    matches!((parse_version(version), parse_version(min)), (Some(v), Some(m)) if v >= m)
}

/// The version to speak (section 1 "Version considerations"): the highest of `cniVersions`
/// and `cniVersion` that this runtime supports (libcni ignores newer ones); a configuration
/// without either is a pre-0.2 one, `0.1.0`.
fn select_version(object: &Map<String, Value>) -> Result<String, String> {
    let current = parse_version(CURRENT_VERSION);
    let mut candidates = Vec::new();
    match object.get("cniVersion") {
        None => {}
        Some(Value::String(v)) => candidates.push(v.clone()),
        Some(other) => return Err(format!("\"cniVersion\" must be a string, not {other}")),
    }
    match object.get("cniVersions") {
        None => {}
        Some(Value::Array(versions)) => {
            for v in versions {
                match v.as_str() {
                    Some(v) => candidates.push(v.to_string()),
                    None => return Err(format!("\"cniVersions\" has a non-string entry {v}")),
                }
            }
        }
        Some(other) => return Err(format!("\"cniVersions\" must be a list, not {other}")),
    }
    if candidates.is_empty() {
        return Ok("0.1.0".into());
    }
    let mut best: Option<((u32, u32, u32), String)> = None;
    for candidate in &candidates {
        let parsed = parse_version(candidate)
            .ok_or_else(|| format!("{candidate:?} is not a CNI version like 1.0.0"))?;
        if Some(parsed) > current {
            continue;
        }
        if best.as_ref().is_none_or(|(b, _)| parsed > *b) {
            best = Some((parsed, candidate.clone()));
        }
    }
    best.map(|(_, v)| v).ok_or_else(|| {
        format!(
            "CNI version {} is newer than this Krustlet speaks ({CURRENT_VERSION}); list an older \
             one in \"cniVersions\"",
            candidates.join(", ")
        )
    })
}

impl NetworkConfigList {
    /// The list as JSON, as it is kept in a sandbox record to DEL with later.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "loadOnlyInlinedPlugins": true,
            "plugins": self.plugins.iter().map(|p| Value::Object(p.raw.clone())).collect::<Vec<_>>(),
        })
    }

    /// A list kept by [`NetworkConfigList::to_json`].
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] (with an empty path).
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        parse_list(&bytes)
            .map(|(list, _)| list)
            .map_err(|message| ConfigError::Invalid {
                path: PathBuf::new(),
                message,
            })
    }

    /// Whether DEL and CHECK get the ADD result as `prevResult` (spec 0.4.0 and later; libcni
    /// passes none to older versions).
    pub fn passes_prev_result(&self) -> bool {
        at_least(&self.cni_version, "0.4.0")
    }

    /// Whether CHECK may run (spec 0.4.0 and later, and not `disableCheck`).
    pub fn checks(&self) -> bool {
        self.passes_prev_result() && !self.disable_check
    }

    /// Whether a plugin of the list declares `capability`.
    pub fn declares(&self, capability: &str) -> bool {
        self.plugins
            .iter()
            .any(|p| p.capabilities.iter().any(|c| c == capability))
    }
}

impl PluginConf {
    /// How libcni names a plugin in errors: `type="bridge" name="mynet"`.
    pub fn describe(&self, network: &str) -> String {
        format!("type={:?} name={network:?}", self.plugin_type)
    }

    /// The request configuration of one execution of this plugin (section 3): its object with
    /// `name` and `cniVersion` of `list`, `prevResult` if given, `runtimeConfig` with the
    /// capability arguments it declares, and without `capabilities`.
    pub fn request(
        &self,
        list: &NetworkConfigList,
        prev_result: Option<&Value>,
        capability_args: &BTreeMap<String, Value>,
    ) -> Value {
        let mut object = self.raw.clone();
        object.remove("capabilities");
        object.insert("name".into(), Value::String(list.name.clone()));
        object.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
        if let Some(prev) = prev_result {
            object.insert("prevResult".into(), prev.clone());
        }
        // Section 3 "Deriving runtimeConfig": the union of what the plugin declares and what
        // the runtime provides (libcni `injectRuntimeConfig`).
        let runtime: Map<String, Value> = self
            .capabilities
            .iter()
            .filter_map(|c| capability_args.get(c).map(|v| (c.clone(), v.clone())))
            .collect();
        if !runtime.is_empty() {
            object.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        Value::Object(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, json: &str) {
        std::fs::write(dir.join(name), json).expect("write");
    }

    #[test]
    fn the_lexically_first_file_is_the_network_and_a_conf_is_wrapped() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            load(&dir.path().join("missing")).expect("missing dir"),
            None
        );
        assert_eq!(load(dir.path()).expect("empty dir"), None);
        // Other extensions and directories are not configurations.
        write(dir.path(), "00-notes.txt", "not json");
        std::fs::create_dir(dir.path().join("01-dir.conf")).expect("mkdir");
        assert_eq!(load(dir.path()).expect("nothing usable"), None);
        write(
            dir.path(),
            "20-bridge.conflist",
            r#"{"cniVersion":"1.0.0","name":"list","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true,"other":false}}]}"#,
        );
        write(
            dir.path(),
            "10-single.conf",
            r#"{"cniVersion":"0.4.0","name":"single","type":"ptp","ipam":{"type":"host-local"}}"#,
        );
        let list = load(dir.path()).expect("load").expect("a network");
        assert_eq!(list.name, "single");
        assert_eq!(list.cni_version, "0.4.0");
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0].plugin_type, "ptp");
        assert_eq!(list.source, dir.path().join("10-single.conf"));
        assert!(list.passes_prev_result());
        std::fs::remove_file(dir.path().join("10-single.conf")).expect("rm");
        let list = load(dir.path()).expect("load").expect("a network");
        assert_eq!(list.name, "list");
        assert_eq!(
            list.plugins
                .iter()
                .map(|p| p.plugin_type.as_str())
                .collect::<Vec<_>>(),
            ["bridge", "portmap"]
        );
        assert!(list.declares("portMappings"));
        assert!(!list.declares("other"));
        // A .json sorts after; an invalid first file is an error, not skipped.
        write(dir.path(), "05-broken.json", "{");
        let error = load(dir.path()).expect_err("invalid");
        assert!(error.to_string().contains("05-broken.json"), "{error}");
        assert!(error.to_string().contains("not JSON"), "{error}");
    }

    #[test]
    fn aggregated_plugins_and_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "net.conflist",
            r#"{"cniVersion":"0.3.1","cniVersions":["1.0.0","1.1.0","2.0.0"],"name":"agg","plugins":[{"type":"bridge"}]}"#,
        );
        std::fs::create_dir(dir.path().join("agg")).expect("mkdir");
        write(&dir.path().join("agg"), "b.conf", r#"{"type":"tuning"}"#);
        write(&dir.path().join("agg"), "a.conf", r#"{"type":"firewall"}"#);
        let list = load(dir.path()).expect("load").expect("a network");
        assert_eq!(list.cni_version, "1.1.0", "the highest supported");
        let types: Vec<&str> = list
            .plugins
            .iter()
            .map(|p| p.plugin_type.as_str())
            .collect();
        assert_eq!(types, ["bridge", "firewall", "tuning"]);
        // Too new, no name, a path as type: each says what is wrong.
        for (json, says) in [
            (r#"{"cniVersion":"2.0.0","name":"n","type":"x"}"#, "newer"),
            (r#"{"cniVersion":"1.0.0","type":"x"}"#, "no \"name\""),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"../x"}"#,
                "plain executable",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"-n","type":"x"}"#,
                "must start",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "configuration list",
            ),
        ] {
            let error = parse_conf(json.as_bytes()).expect_err(json);
            assert!(error.contains(says), "{json}: {error}");
        }
    }

    #[test]
    fn requests_get_name_version_prev_result_and_declared_capabilities() {
        let (list, _) = parse_list(
            br#"{"cniVersion":"1.0.0","name":"net","plugins":[
                {"type":"bridge","name":"ignored","bridge":"cni0","runtimeConfig":{"old":1}},
                {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":true}}]}"#,
        )
        .expect("list");
        let args = BTreeMap::from([
            (
                "portMappings".to_string(),
                serde_json::json!([{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}]),
            ),
            ("ipRanges".to_string(), serde_json::json!([])),
        ]);
        let first = list.plugins[0].request(&list, None, &args);
        assert_eq!(first["name"], "net");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert_eq!(first["bridge"], "cni0", "other keys pass through");
        assert_eq!(first["runtimeConfig"], serde_json::json!({"old": 1}));
        assert!(first.get("prevResult").is_none());
        let prev = serde_json::json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]});
        let second = list.plugins[1].request(&list, Some(&prev), &args);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(
            second["runtimeConfig"],
            serde_json::json!({"portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}]})
        );
        assert!(second.get("capabilities").is_none());
        // Kept and rebuilt for DEL, unchanged.
        let again = NetworkConfigList::from_json(&list.to_json()).expect("rebuilt");
        assert_eq!(again, list);
    }
}
