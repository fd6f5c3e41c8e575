//! The compiled-program cache: in memory for this process (least recently used programs
//! evicted past a byte budget), and on disk so that a restarted Krustlet does not compile again.
//!
//! On disk: `<dir>/<engine hash>/<program sha256 hex>.cwasm`, where the engine hash is
//! wasmtime's `Engine::precompile_compatibility_hash` (engine settings and wasmtime version), so
//! an artifact is only ever loaded by an engine that can run it; directories of other engines
//! are removed at start. A file is wasmtime's serialized artifact followed by an HMAC-SHA256
//! tag under the node's secret key ([`CacheKey`]) over the engine hash, the program digest, its
//! kind and the artifact's SHA-256. Loading native code is only as safe as its origin, so an
//! entry that does not verify (tampered, copied from another node or program, or of an older
//! format) is rejected, deleted and compiled again, never handed to wasmtime.
//!
//! A first start (nothing in memory or on disk) can compile with Winch instead
//! ([`CompileCache::with_baseline_first_start`]): the pod starts on Winch's code, kept in
//! memory, and the runtime then compiles the program with Cranelift on the compile pool
//! ([`CompileCache::optimize`]), which replaces it in memory and is the only code stored on
//! disk. Pods already running keep the code they started with.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::engine::WasmEngine;
use crate::key::{CacheKey, TAG_LEN};
use crate::module::{Code, CompileError, Program, ProgramKind};
use wasmtime::component::Component;

/// Where a program came from; count these for cache metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheOutcome {
    /// Already compiled in this process.
    Memory,
    /// Loaded from the on-disk cache.
    Disk,
    /// Compiled now (a miss).
    Compiled,
    /// Compiled now with Winch for a first start (a miss); Cranelift's code is yet to come
    /// ([`CompileCache::optimize`]).
    Baseline,
}

impl CacheOutcome {
    /// A label for logs and metrics: `memory`, `disk`, `compiled` or `baseline`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Disk => "disk",
            Self::Compiled => "compiled",
            Self::Baseline => "baseline",
        }
    }
}

/// Why a program could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The wasm file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The wasm file is larger than `--max-module-size`.
    #[error(
        "the program is {bytes} bytes, larger than {limit} bytes, the limit set by --max-module-size"
    )]
    TooLarge {
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// It does not compile.
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// The on-disk half of the cache: a directory and the key that authenticates its entries.
#[derive(Debug)]
pub struct DiskCache {
    /// The cache's directory (`<data-dir>/images/compiled`).
    pub dir: PathBuf,
    /// The node's key.
    pub key: CacheKey,
}

/// Sizes of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Bytes of compiled code kept in memory (`--compile-cache-memory`).
    pub memory_bytes: u64,
    /// The largest wasm file compiled (`--max-module-size`).
    pub max_module_bytes: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            max_module_bytes: 128 << 20,
        }
    }
}

/// Compiled programs in memory, least recently used evicted first past a byte budget.
struct Lru {
    entries: HashMap<String, Entry>,
    used: u64,
    limit: u64,
    clock: u64,
    /// Programs forgotten while on Winch's code: the Cranelift compilation under way for
    /// each must not keep what it makes ([`CompileCache::optimize`]).
    forgotten: HashSet<String>,
}

struct Entry {
    program: Program,
    /// The component moved to the serving engine, once it was served ([`CompileCache::for_serving`]).
    serving: Option<Component>,
    bytes: u64,
    last_use: u64,
}

impl Lru {
    fn get(&mut self, digest: &str) -> Option<Program> {
        self.clock += 1;
        let entry = self.entries.get_mut(digest)?;
        entry.last_use = self.clock;
        Some(entry.program.clone())
    }

    /// Adds a program; returns the digests evicted. The newest entry always stays, even when
    /// it alone is over the budget.
    fn insert(&mut self, digest: &str, program: Program) -> Vec<String> {
        self.clock += 1;
        let bytes = program.code_bytes();
        if let Some(old) = self.entries.insert(
            digest.to_string(),
            Entry {
                program,
                serving: None,
                bytes,
                last_use: self.clock,
            },
        ) {
            self.used -= old.bytes;
        }
        self.used += bytes;
        let mut evicted = Vec::new();
        while self.used > self.limit && self.entries.len() > 1 {
            let Some(oldest) = self
                .entries
                .iter()
                .filter(|(d, _)| d.as_str() != digest)
                .min_by_key(|(_, e)| e.last_use)
                .map(|(d, _)| d.clone())
            else {
                break;
            };
            self.remove(&oldest);
            evicted.push(oldest);
        }
        evicted
    }

    fn remove(&mut self, digest: &str) {
        if let Some(entry) = self.entries.remove(digest) {
            self.used -= entry.bytes;
        }
    }
}

/// Compiled programs by program digest.
pub struct CompileCache {
    engine: WasmEngine,
    disk: Option<(PathBuf, String, CacheKey)>,
    memory: Mutex<Lru>,
    max_module_bytes: u64,
    // One compilation per digest at a time: pods started together wait for the first.
    compiling: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Whether a program's first start compiles it with Winch (`--first-start-compiler`).
    baseline_first_start: bool,
}

/// Keeps `program` in `memory`, logging what that evicts.
fn remember_in(memory: &mut Lru, digest: &str, program: Program) {
    for evicted in memory.insert(digest, program) {
        tracing::debug!(digest = %evicted, "compile cache: evicted from memory (least recently used)");
    }
}

/// Loads `artifact`, this process's own serialization of a component, into `engine`.
#[allow(unsafe_code)]
fn move_artifact(engine: &wasmtime::Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime trusts a serialized artifact to be its own output, and these bytes are:
    // serialized just now, in memory, from a component this process compiled or loaded after
    // verifying its tag; the engines share settings, which wasmtime checks again from the
    // artifact's header.
    unsafe { Component::deserialize(engine, artifact) }
}

/// `(module (func) (func))`, what [`CompileCache::warm_up`] compiles.
const TWO_FUNCTIONS: &[u8] = &[
    0, b'a', b's', b'm', 1, 0, 0, 0, // header
    1, 4, 1, 0x60, 0, 0, // types: [] -> []
    3, 3, 2, 0, 0, // functions: two of type 0
    10, 7, 2, 2, 0, 0x0b, 2, 0, 0x0b, // code: two empty bodies
];

/// The domain of the tags, so they can never be mistaken for another use of the key.
const TAG_DOMAIN: &[u8] = b"krustlet compile cache v2\0";

impl CompileCache {
    /// A cache for `engine`; with `disk`, artifacts are also kept on disk, authenticated.
    pub fn new(engine: WasmEngine, disk: Option<DiskCache>, limits: CacheLimits) -> Self {
        let disk = disk.map(|DiskCache { dir, key }| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine
                .engine()
                .precompile_compatibility_hash()
                .hash(&mut hasher);
            let engine_hash = format!("{:016x}", hasher.finish());
            remove_other_engines(&dir, &engine_hash);
            (dir.join(&engine_hash), engine_hash, key)
        });
        Self {
            engine,
            disk,
            memory: Mutex::new(Lru {
                entries: HashMap::new(),
                used: 0,
                limit: limits.memory_bytes,
                clock: 0,
                forgotten: HashSet::new(),
            }),
            max_module_bytes: limits.max_module_bytes,
            compiling: Mutex::default(),
            baseline_first_start: false,
        }
    }

    /// Compiles a program's first start with Winch when `on` (see [`CompileCache::optimize`]).
    #[must_use]
    pub fn with_baseline_first_start(mut self, on: bool) -> Self {
        self.baseline_first_start = on;
        self
    }

    /// The program in memory, if this process compiled or loaded it already (and kept it).
    pub fn in_memory(&self, digest: &str) -> Option<Program> {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
    }

    /// `component`, the program of `digest`, on the engine HTTP components are served on
    /// ([`WasmEngine::serving`]): moved there at its first serving (wasmtime's own artifact,
    /// serialized and loaded, no second compilation) and kept beside the program while it is
    /// cached. A component that does not fit the pooling allocator's slots (a table over
    /// 20 000 elements, more than one memory in a module) stays on the on-demand engine, and
    /// the log says why. Blocking, like [`CompileCache::get`].
    ///
    /// # Errors
    /// wasmtime's message if the artifact cannot be serialized (a bug).
    pub fn for_serving(&self, digest: &str, component: &Component) -> Result<Component, String> {
        if let Some(served) = self.served(digest, component) {
            return Ok(served);
        }
        let engine = self.engine.serving();
        let artifact = component
            .serialize()
            .map_err(|e| format!("cannot serialize the compiled component: {e:#}"))?;
        let served = match move_artifact(engine, &artifact) {
            Ok(served) => served,
            Err(error) => {
                tracing::warn!(
                    %digest,
                    error = %format!("{error:#}"),
                    "the HTTP component does not fit the pooling allocator's slots; it is \
                     served on the on-demand allocator"
                );
                component.clone()
            }
        };
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        // A component left on the on-demand engine is the program itself: no more bytes.
        let bytes = if wasmtime::Engine::same(served.engine(), engine) {
            Program::from(Code::Component(served.clone())).code_bytes()
        } else {
            0
        };
        if let Some(entry) = memory.entries.get_mut(digest)
            && entry.serving.is_none()
        {
            entry.serving = Some(served.clone());
            entry.bytes += bytes;
            memory.used += bytes;
        }
        Ok(served)
    }

    /// What [`CompileCache::for_serving`] gives without work: the component itself when there
    /// is no pooling engine, or the one moved there at an earlier start; `None` when it must
    /// be moved now.
    pub fn served(&self, digest: &str, component: &Component) -> Option<Component> {
        if wasmtime::Engine::same(self.engine.serving(), self.engine.engine()) {
            return Some(component.clone());
        }
        let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory.entries.get(digest).and_then(|e| e.serving.clone())
    }

    /// Bytes of compiled code held in memory now.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).used
    }

    /// Where the artifact of `digest` lives on disk (with a disk cache and a valid digest).
    pub fn disk_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        // The digest becomes a file name: only plain hex.
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.disk.as_ref()?.0.join(format!("{hex}.cwasm")))
    }

    /// The compiled program for the wasm file `source` with `digest`: from memory, from disk, or
    /// compiled now (and then stored). Blocking: call it off the async threads, on the pool.
    pub fn get(&self, digest: &str, source: &Path) -> Result<(Program, CacheOutcome), CacheError> {
        if let Some(program) = self.in_memory(digest) {
            return Ok((program, CacheOutcome::Memory));
        }
        self.one_at_a_time(digest, || self.get_locked(digest, source))
    }

    /// Runs `job` holding the compile lock of `digest` (one compilation per digest at a time).
    fn one_at_a_time<T>(&self, digest: &str, job: impl FnOnce() -> T) -> T {
        let lock = {
            let mut compiling = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
            compiling.entry(digest.to_string()).or_default().clone()
        };
        let result = {
            let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            job()
        };
        let mut compiling = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
        // The map's and ours: nobody else waits on it, so the entry can go.
        if Arc::strong_count(&lock) <= 2 {
            compiling.remove(digest);
        }
        result
    }

    fn get_locked(
        &self,
        digest: &str,
        source: &Path,
    ) -> Result<(Program, CacheOutcome), CacheError> {
        if let Some(program) = self.in_memory(digest) {
            return Ok((program, CacheOutcome::Memory));
        }
        let bytes = self.read(source)?;
        let kind = ProgramKind::detect(&bytes);
        let cached = self.disk_path(digest);
        let loaded = match (&cached, kind) {
            (Some(path), Some(kind)) => self.load(path, digest, kind),
            _ => None,
        };
        let (program, outcome) = match loaded {
            Some(program) => (program, CacheOutcome::Disk),
            None => match self.compile_baseline(digest, &bytes) {
                Some(program) => (program, CacheOutcome::Baseline),
                None => (
                    self.compile_and_store(
                        digest,
                        &bytes,
                        cached.as_deref(),
                        "compile cache miss",
                    )?,
                    CacheOutcome::Compiled,
                ),
            },
        };
        self.remember(digest, program.clone());
        Ok((program, outcome))
    }

    /// The wasm file `source`, if it is within `--max-module-size`.
    fn read(&self, source: &Path) -> Result<Vec<u8>, CacheError> {
        let read_error = |source_error| CacheError::Read {
            path: source.into(),
            source: source_error,
        };
        let bytes = std::fs::metadata(source).map_err(read_error)?.len();
        if bytes > self.max_module_bytes {
            return Err(CacheError::TooLarge {
                bytes,
                limit: self.max_module_bytes,
            });
        }
        std::fs::read(source).map_err(read_error)
    }

    /// Keeps `program` in memory (evicting the least recently used past the budget).
    fn remember(&self, digest: &str, program: Program) {
        remember_in(
            &mut self.memory.lock().unwrap_or_else(|e| e.into_inner()),
            digest,
            program,
        );
    }

    /// Compiles `bytes` with Cranelift and stores the artifact at `cached` (if any); `why`
    /// ends the log line.
    fn compile_and_store(
        &self,
        digest: &str,
        bytes: &[u8],
        cached: Option<&Path>,
        why: &str,
    ) -> Result<Program, CacheError> {
        let started = Instant::now();
        let program = Program::compile(&self.engine, bytes)?;
        tracing::info!("compiled {digest} in {:?} ({why})", started.elapsed());
        if let Some(path) = cached
            && let Err(error) = self.store(path, digest, &program)
        {
            tracing::warn!(%error, path = %path.display(), "cannot write the compile cache");
        }
        Ok(program)
    }

    /// `bytes` compiled with Winch for a first start, when first starts use it and it can
    /// compile them (Winch lacks some proposals that Cranelift has; those wait for Cranelift).
    fn compile_baseline(&self, digest: &str, bytes: &[u8]) -> Option<Program> {
        if !self.baseline_first_start {
            return None;
        }
        let engine = self.engine.baseline()?;
        let started = Instant::now();
        match Program::compile_on(engine, bytes) {
            Ok(program) => {
                tracing::info!(
                    "compiled {digest} with Winch in {:?} (compile cache miss; a first start, \
                     Cranelift compiles it for the next ones)",
                    started.elapsed()
                );
                Some(program)
            }
            Err(error) => {
                tracing::info!(%digest, %error, "Winch cannot compile it; compiling with Cranelift");
                None
            }
        }
    }

    /// Compiles a two-function module on the engine of first starts (Winch's, made now, or
    /// Cranelift's), so that the first pod does not pay for that engine, wasmtime's compile
    /// threads and the compiler's first run (a first Winch compile took 47 ms where later ones
    /// took 19, release). Blocking.
    pub fn warm_up(&self) {
        let baseline = self
            .baseline_first_start
            .then(|| self.engine.baseline())
            .flatten();
        let compiled = match baseline {
            Some(engine) => Program::compile_on(engine, TWO_FUNCTIONS),
            None => Program::compile(&self.engine, TWO_FUNCTIONS),
        };
        if let Err(error) = compiled {
            tracing::warn!(%error, "cannot warm up the compiler");
        }
    }

    /// Whether `program` was compiled with Winch (for a first start) and awaits Cranelift.
    pub fn is_baseline(&self, program: &Program) -> bool {
        self.engine.is_baseline(program.engine())
    }

    /// The program of `digest` compiled with Cranelift: what is in memory if it is that
    /// already, else compiled now from `source`, stored on disk and kept in memory in place of
    /// the Winch one ([`CacheOutcome::Baseline`]). Called in the background after a first
    /// start on Winch, and at once by a start that needs Cranelift's code (an HTTP component,
    /// served from the pooling engine). Blocking, like [`CompileCache::get`].
    ///
    /// # Errors
    /// When the file cannot be read (an image removed since) or does not compile.
    pub fn optimize(&self, digest: &str, source: &Path) -> Result<Program, CacheError> {
        self.one_at_a_time(digest, || {
            let result = match self.in_memory(digest) {
                Some(program) if !self.is_baseline(&program) => Ok(program),
                _ => self.read(source).and_then(|bytes| {
                    self.compile_and_store(
                        digest,
                        &bytes,
                        self.disk_path(digest).as_deref(),
                        "with Cranelift, after a first start on Winch",
                    )
                }),
            };
            let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            // Its image was removed while it compiled ([`CompileCache::forget`]): keep nothing.
            let forgotten = memory.forgotten.remove(digest);
            match &result {
                Ok(program) if !forgotten => remember_in(&mut memory, digest, program.clone()),
                _ => {
                    if forgotten && let Some(path) = self.disk_path(digest) {
                        let _ = std::fs::remove_file(path);
                    }
                    // Without Cranelift's code, the next start compiles again (and retries).
                    if memory
                        .entries
                        .get(digest)
                        .is_some_and(|e| self.is_baseline(&e.program))
                    {
                        memory.remove(digest);
                    }
                }
            }
            result
        })
    }

    /// What the tag of an entry covers.
    fn tag_message(&self, digest: &str, kind: ProgramKind, artifact: &[u8]) -> Option<Vec<u8>> {
        let (_, engine_hash, _) = self.disk.as_ref()?;
        let mut message = TAG_DOMAIN.to_vec();
        for part in [engine_hash.as_bytes(), digest.as_bytes()] {
            message.extend_from_slice(&(part.len() as u64).to_be_bytes());
            message.extend_from_slice(part);
        }
        message.push(match kind {
            ProgramKind::Module => b'm',
            ProgramKind::Component => b'c',
        });
        message.extend_from_slice(&Sha256::digest(artifact));
        Some(message)
    }

    /// Loads a cached artifact whose tag verifies; any other file is removed.
    #[allow(unsafe_code)]
    fn load(&self, path: &Path, digest: &str, kind: ProgramKind) -> Option<Program> {
        let file = std::fs::read(path).ok()?;
        let (_, _, key) = self.disk.as_ref()?;
        let authentic = file.len() > TAG_LEN && {
            let (artifact, tag) = file.split_at(file.len() - TAG_LEN);
            self.tag_message(digest, kind, artifact)
                .is_some_and(|message| key.verify(&message, tag))
        };
        if !authentic {
            tracing::warn!(
                path = %path.display(),
                %digest,
                "rejected a compile cache entry: it does not carry this node's authentication tag \
                 (tampered, damaged, copied from elsewhere or of an older format); it is deleted \
                 and the program compiled again"
            );
            let _ = std::fs::remove_file(path);
            return None;
        }
        let artifact = &file[..file.len() - TAG_LEN];
        let engine = self.engine.engine();
        // SAFETY: wasmtime trusts a serialized artifact to be its own output. These bytes are:
        // their HMAC under this node's secret key (which only this process writes, 0600) was
        // verified just now on the very bytes handed to wasmtime (read into memory, so the file
        // cannot change between check and use), and the tag binds them to this program digest,
        // program kind and engine, so an authentic entry of another program cannot be swapped
        // in. wasmtime also checks the artifact's engine and version header itself.
        let loaded = unsafe {
            match kind {
                ProgramKind::Module => wasmtime::Module::deserialize(engine, artifact)
                    .map(|m| Program::from(Code::Module(m))),
                ProgramKind::Component => {
                    wasmtime::component::Component::deserialize(engine, artifact)
                        .map(|c| Program::from(Code::Component(c)))
                }
            }
        };
        match loaded {
            Ok(program) => Some(program),
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "discarding an unusable compile cache entry");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    /// Writes `program`'s artifact and tag to `path` atomically.
    fn store(&self, path: &Path, digest: &str, program: &Program) -> Result<(), String> {
        let (_, _, key) = self.disk.as_ref().ok_or("no disk cache")?;
        let mut bytes = match program.code() {
            Code::Module(m) => m.serialize(),
            Code::Component(c) => c.serialize(),
        }
        .map_err(|e| format!("serializing: {e}"))?;
        let message = self
            .tag_message(digest, program.kind(), &bytes)
            .ok_or("no disk cache")?;
        bytes.extend_from_slice(&key.sign(&message));
        let dir = path.parent().ok_or("no parent directory")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = path.with_extension(format!("cwasm.tmp.{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Drops the programs of `digests` from memory and disk (their images were removed).
    pub fn forget(&self, digests: &[String]) {
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        for digest in digests {
            if memory
                .entries
                .get(digest)
                .is_some_and(|e| self.is_baseline(&e.program))
            {
                memory.forgotten.insert(digest.clone());
            }
            memory.remove(digest);
            if let Some(path) = self.disk_path(digest)
                && std::fs::remove_file(&path).is_ok()
            {
                tracing::info!(%digest, "removed the compiled program of a removed image");
            }
        }
    }

    /// Drops every program whose digest is not in `keep`, from memory and disk.
    pub fn retain(&self, keep: &HashSet<String>) {
        let gone: Vec<String> = {
            let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            memory
                .entries
                .keys()
                .filter(|d| !keep.contains(*d))
                .cloned()
                .collect()
        };
        let mut gone: HashSet<String> = gone.into_iter().collect();
        if let Some((dir, _, _)) = &self.disk
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                match name.strip_suffix(".cwasm") {
                    Some(hex) if !keep.contains(&format!("sha256:{hex}")) => {
                        gone.insert(format!("sha256:{hex}"));
                    }
                    Some(_) => {}
                    // A temp file a crash left behind.
                    None if name.contains(".tmp.") => {
                        let _ = std::fs::remove_file(entry.path());
                    }
                    None => {}
                }
            }
        }
        self.forget(&gone.into_iter().collect::<Vec<_>>());
    }
}

/// Removes the artifacts of other engines (an older wasmtime, other settings): no engine of
/// this process can load them.
fn remove_other_engines(dir: &Path, ours: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_engine_dir = name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if is_engine_dir && name != ours && entry.path().is_dir() {
            tracing::info!(path = %entry.path().display(), "removing compiled programs of another wasmtime engine");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dir: &Path) -> Option<DiskCache> {
        Some(DiskCache {
            dir: dir.into(),
            key: CacheKey::from_bytes(&[1; 32]),
        })
    }

    fn multitool() -> PathBuf {
        krustlet_test_workloads::multitool().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_second_cache_on_the_same_dir_loads_from_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = multitool();
        let engine = WasmEngine::new().expect("engine");
        let digest = "sha256:00aa";
        let limits = CacheLimits::default();
        let first = CompileCache::new(engine.clone(), disk(dir.path()), limits);
        assert_eq!(
            first.get(digest, &wasm).expect("compile").1,
            CacheOutcome::Compiled
        );
        assert_eq!(
            first.get(digest, &wasm).expect("memory").1,
            CacheOutcome::Memory
        );
        let second = CompileCache::new(engine.clone(), disk(dir.path()), limits);
        assert_eq!(
            second.get(digest, &wasm).expect("disk").1,
            CacheOutcome::Disk
        );
        // A damaged entry is dropped and compiled again.
        let path = second.disk_path(digest).expect("path");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[10] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        let third = CompileCache::new(engine, disk(dir.path()), limits);
        assert_eq!(
            third.get(digest, &wasm).expect("again").1,
            CacheOutcome::Compiled
        );
    }

    #[test]
    fn a_first_start_on_winch_is_replaced_by_cranelift_which_alone_goes_to_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = multitool();
        let engine = WasmEngine::new().expect("engine");
        let digest = "sha256:0e";
        let limits = CacheLimits::default();
        let cache = CompileCache::new(engine.clone(), disk(dir.path()), limits)
            .with_baseline_first_start(true);
        let (first, outcome) = cache.get(digest, &wasm).expect("winch");
        assert_eq!(outcome, CacheOutcome::Baseline);
        assert!(cache.is_baseline(&first), "compiled with Winch");
        let path = cache.disk_path(digest).expect("path");
        assert!(!path.exists(), "Winch's code is never stored");
        // Starts before Cranelift's code is ready take Winch's from memory.
        let (again, outcome) = cache.get(digest, &wasm).expect("memory");
        assert_eq!(outcome, CacheOutcome::Memory);
        assert!(cache.is_baseline(&again));

        let optimized = cache.optimize(digest, &wasm).expect("cranelift");
        assert!(!cache.is_baseline(&optimized));
        assert!(wasmtime::Engine::same(optimized.engine(), engine.engine()));
        assert!(path.exists(), "Cranelift's code is stored");
        let (later, outcome) = cache.get(digest, &wasm).expect("memory");
        assert_eq!(outcome, CacheOutcome::Memory);
        assert!(!cache.is_baseline(&later), "it replaced Winch's in memory");
        // A second optimize (the background one after a start that needed it at once) is free.
        let before = std::fs::metadata(&path)
            .expect("stat")
            .modified()
            .expect("mtime");
        cache.optimize(digest, &wasm).expect("kept");
        let after = std::fs::metadata(&path)
            .expect("stat")
            .modified()
            .expect("mtime");
        assert_eq!(before, after, "not compiled twice");

        // A restarted node loads Cranelift's code from disk: no Winch start.
        let restarted =
            CompileCache::new(engine, disk(dir.path()), limits).with_baseline_first_start(true);
        assert_eq!(
            restarted.get(digest, &wasm).expect("disk").1,
            CacheOutcome::Disk
        );
    }

    #[test]
    fn a_program_forgotten_while_cranelift_compiles_it_is_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = multitool();
        let engine = WasmEngine::new().expect("engine");
        let digest = "sha256:1e";
        let cache = CompileCache::new(engine, disk(dir.path()), CacheLimits::default())
            .with_baseline_first_start(true);
        assert_eq!(
            cache.get(digest, &wasm).expect("winch").1,
            CacheOutcome::Baseline
        );
        // Image GC removes the image between the first start and the background compile.
        cache.forget(&[digest.to_string()]);
        cache.optimize(digest, &wasm).expect("compiled");
        assert!(
            !cache.disk_path(digest).expect("path").exists(),
            "not stored"
        );
        assert!(cache.in_memory(digest).is_none(), "not kept");
        assert_eq!(cache.memory_bytes(), 0);
    }

    #[test]
    fn the_warm_up_module_is_valid_wasm() {
        let engine = WasmEngine::new().expect("engine");
        let baseline = engine.baseline().expect("Winch on x86-64");
        assert!(Program::compile_on(baseline, TWO_FUNCTIONS).is_ok());
        assert!(Program::compile(&engine, TWO_FUNCTIONS).is_ok());
    }

    #[test]
    fn a_module_winch_cannot_compile_waits_for_cranelift() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("tail-call.wasm");
        // A tail call: Cranelift compiles it, Winch does not (wasmtime 48).
        let wasm =
            wat::parse_str(r#"(module (func $f (return_call $f)) (func (export "_start")))"#)
                .expect("wat");
        std::fs::write(&source, wasm).expect("write");
        let engine = WasmEngine::new().expect("engine");
        let cache =
            CompileCache::new(engine, None, CacheLimits::default()).with_baseline_first_start(true);
        let (program, outcome) = cache.get("sha256:0f", &source).expect("compiled");
        assert_eq!(outcome, CacheOutcome::Compiled);
        assert!(!cache.is_baseline(&program));
    }

    #[test]
    fn a_served_component_moves_to_the_pooling_engine_once_and_is_kept() {
        let wasm = krustlet_test_workloads::http_component().unwrap_or_else(|e| panic!("{e}"));
        let engine = WasmEngine::new().expect("engine");
        let cache = CompileCache::new(engine.clone(), None, CacheLimits::default());
        let digest = "sha256:0c";
        let Code::Component(component) =
            cache.get(digest, &wasm).expect("compile").0.code().clone()
        else {
            panic!("the http workload is not a component");
        };
        let compiled = cache.memory_bytes();
        let served = cache.for_serving(digest, &component).expect("moved");
        assert!(wasmtime::Engine::same(served.engine(), engine.serving()));
        assert!(!wasmtime::Engine::same(served.engine(), engine.engine()));
        assert_eq!(
            cache.memory_bytes(),
            2 * compiled,
            "kept beside the program"
        );
        let again = cache.for_serving(digest, &component).expect("kept");
        assert_eq!(again.image_range(), served.image_range(), "not moved twice");
        assert_eq!(cache.memory_bytes(), 2 * compiled);
        cache.forget(&[digest.to_string()]);
        assert_eq!(cache.memory_bytes(), 0);

        // A table larger than a pooling slot's 20 000 elements: served on demand.
        let big = Component::new(
            engine.engine(),
            "(component (core module (table 30000 funcref)) (core instance (instantiate 0)))",
        )
        .expect("compile");
        let served = cache
            .for_serving("sha256:0d", &big)
            .expect("kept on demand");
        assert!(wasmtime::Engine::same(served.engine(), engine.engine()));
    }

    #[test]
    fn tampered_swapped_or_foreign_entries_are_rejected_not_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = multitool();
        let engine = WasmEngine::new().expect("engine");
        let limits = CacheLimits::default();
        let (a, b) = ("sha256:0a", "sha256:0b");
        let cache = CompileCache::new(engine.clone(), disk(dir.path()), limits);
        cache.get(a, &wasm).expect("compile a");
        cache.get(b, &wasm).expect("compile b");
        let (path_a, path_b) = (
            cache.disk_path(a).expect("a"),
            cache.disk_path(b).expect("b"),
        );
        let fresh = || CompileCache::new(engine.clone(), disk(dir.path()), limits);

        // 1. Changed code with a recomputed SHA-256 trailer (what the old format accepted).
        let mut bytes = std::fs::read(&path_a).expect("read");
        let artifact_len = bytes.len() - TAG_LEN;
        bytes[artifact_len / 2] ^= 0x01;
        let sum = Sha256::digest(&bytes[..artifact_len]);
        bytes[artifact_len..].copy_from_slice(&sum);
        std::fs::write(&path_a, &bytes).expect("tamper");
        assert_eq!(fresh().get(a, &wasm).expect("a").1, CacheOutcome::Compiled);

        // 2. An authentic entry of another program under this program's name.
        std::fs::copy(&path_a, &path_b).expect("swap");
        assert_eq!(fresh().get(b, &wasm).expect("b").1, CacheOutcome::Compiled);

        // 3. An entry written under another node's key.
        let other = CompileCache::new(
            engine.clone(),
            Some(DiskCache {
                dir: dir.path().into(),
                key: CacheKey::from_bytes(&[2; 32]),
            }),
            limits,
        );
        assert_eq!(other.get(a, &wasm).expect("a").1, CacheOutcome::Compiled);
        assert_eq!(fresh().get(a, &wasm).expect("a").1, CacheOutcome::Compiled);
        // ...and what this node writes itself loads.
        assert_eq!(fresh().get(a, &wasm).expect("a").1, CacheOutcome::Disk);
    }

    #[test]
    fn memory_keeps_the_most_recently_used_within_its_budget() {
        let engine = WasmEngine::new().expect("engine");
        let wasm = multitool();
        let probe = CompileCache::new(engine.clone(), None, CacheLimits::default());
        probe.get("sha256:01", &wasm).expect("compile");
        let one = probe.memory_bytes();
        assert!(one > 0);
        // Room for two programs.
        let cache = CompileCache::new(
            engine,
            None,
            CacheLimits {
                memory_bytes: one * 2 + one / 2,
                ..CacheLimits::default()
            },
        );
        let program = |d: &str| cache.get(d, &wasm).expect("get").1;
        assert_eq!(program("sha256:01"), CacheOutcome::Compiled);
        assert_eq!(program("sha256:02"), CacheOutcome::Compiled);
        assert_eq!(
            program("sha256:01"),
            CacheOutcome::Memory,
            "01 is now the most recent"
        );
        assert_eq!(program("sha256:03"), CacheOutcome::Compiled, "evicts 02");
        assert!(cache.memory_bytes() <= one * 2 + one / 2);
        assert!(
            cache.in_memory("sha256:02").is_none(),
            "least recently used"
        );
        assert!(cache.in_memory("sha256:01").is_some());
        assert!(cache.in_memory("sha256:03").is_some());
    }

    #[test]
    fn artifacts_go_with_their_images_and_other_engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stale = dir.path().join("00112233aabbccdd");
        std::fs::create_dir_all(&stale).expect("stale engine dir");
        std::fs::write(stale.join("00.cwasm"), b"old").expect("stale artifact");
        let engine = WasmEngine::new().expect("engine");
        let cache = CompileCache::new(engine, disk(dir.path()), CacheLimits::default());
        assert!(!stale.exists(), "another engine's artifacts are removed");
        let wasm = multitool();
        for d in ["sha256:01", "sha256:02", "sha256:03"] {
            cache.get(d, &wasm).expect("compile");
        }
        let path = |d: &str| cache.disk_path(d).expect("path");
        cache.forget(&["sha256:01".to_string()]);
        assert!(!path("sha256:01").exists() && cache.in_memory("sha256:01").is_none());
        cache.retain(&HashSet::from(["sha256:02".to_string()]));
        assert!(path("sha256:02").exists() && cache.in_memory("sha256:02").is_some());
        assert!(!path("sha256:03").exists() && cache.in_memory("sha256:03").is_none());
    }

    #[test]
    fn programs_over_the_size_limit_are_refused() {
        let engine = WasmEngine::new().expect("engine");
        let cache = CompileCache::new(
            engine,
            None,
            CacheLimits {
                max_module_bytes: 16,
                ..CacheLimits::default()
            },
        );
        let error = match cache.get("sha256:01", &multitool()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a program over the limit compiled"),
        };
        assert!(error.contains("--max-module-size"), "{error}");
    }
}
