//! The compiled-program cache: in memory for this process, and on disk so that a restarted
//! Krustlet does not compile again.
//!
//! On disk: `<dir>/<engine hash>/<program sha256 hex>.cwasm`, where the engine hash is
//! wasmtime's `Engine::precompile_compatibility_hash` (engine settings and wasmtime version), so
//! an artifact is only ever loaded by an engine that can run it. A file is wasmtime's serialized
//! artifact followed by the artifact's sha256, written through a temp file and a rename.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::engine::WasmEngine;
use crate::module::{Program, ProgramKind};

/// Where a program came from; count these for cache metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheOutcome {
    /// Already compiled in this process.
    Memory,
    /// Loaded from the on-disk cache.
    Disk,
    /// Compiled now (a miss).
    Compiled,
}

impl CacheOutcome {
    /// A label for logs and metrics: `memory`, `disk` or `compiled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Disk => "disk",
            Self::Compiled => "compiled",
        }
    }
}

/// Compiled programs by program digest.
pub struct CompileCache {
    engine: WasmEngine,
    dir: Option<PathBuf>,
    memory: Mutex<HashMap<String, Program>>,
    // One compilation per digest at a time: pods started together wait for the first.
    compiling: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

const CHECKSUM_LEN: usize = 32;

impl CompileCache {
    /// A cache for `engine`; with `dir`, artifacts are also kept on disk under it.
    pub fn new(engine: WasmEngine, dir: Option<PathBuf>) -> Self {
        let dir = dir.map(|d| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine
                .engine()
                .precompile_compatibility_hash()
                .hash(&mut hasher);
            d.join(format!("{:016x}", hasher.finish()))
        });
        Self {
            engine,
            dir,
            memory: Mutex::default(),
            compiling: Mutex::default(),
        }
    }

    /// The program in memory, if this process compiled or loaded it already.
    pub fn in_memory(&self, digest: &str) -> Option<Program> {
        let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory.get(digest).cloned()
    }

    fn disk_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        // The digest becomes a file name: only plain hex.
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.dir.as_ref()?.join(format!("{hex}.cwasm")))
    }

    /// The compiled program for the wasm file `source` with `digest`: from memory, from disk, or
    /// compiled now (and then stored). Blocking: call it off the async threads.
    pub fn get(&self, digest: &str, source: &Path) -> Result<(Program, CacheOutcome), String> {
        if let Some(program) = self.in_memory(digest) {
            return Ok((program, CacheOutcome::Memory));
        }
        let lock = {
            let mut compiling = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
            compiling.entry(digest.to_string()).or_default().clone()
        };
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(program) = self.in_memory(digest) {
            return Ok((program, CacheOutcome::Memory));
        }
        let bytes =
            std::fs::read(source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        let kind = ProgramKind::detect(&bytes);
        let cached = self.disk_path(digest);
        let loaded = match (&cached, kind) {
            (Some(path), Some(kind)) => self.load(path, kind),
            _ => None,
        };
        let (program, outcome) = match loaded {
            Some(program) => (program, CacheOutcome::Disk),
            None => {
                let started = Instant::now();
                let program = Program::compile(&self.engine, &bytes).map_err(|e| e.to_string())?;
                tracing::info!(
                    "compiled {digest} in {:?} (compile cache miss)",
                    started.elapsed()
                );
                if let Some(path) = &cached
                    && let Err(error) = store(path, &program)
                {
                    tracing::warn!(%error, path = %path.display(), "cannot write the compile cache");
                }
                (program, CacheOutcome::Compiled)
            }
        };
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest.to_string(), program.clone());
        Ok((program, outcome))
    }

    /// Loads a cached artifact whose checksum holds; a bad file is removed.
    #[allow(unsafe_code)]
    fn load(&self, path: &Path, kind: ProgramKind) -> Option<Program> {
        let file = std::fs::read(path).ok()?;
        let valid = file.len() > CHECKSUM_LEN && {
            let (artifact, sum) = file.split_at(file.len() - CHECKSUM_LEN);
            Sha256::digest(artifact).as_slice() == sum
        };
        if !valid {
            tracing::warn!(path = %path.display(), "removing a damaged compile cache entry");
            let _ = std::fs::remove_file(path);
            return None;
        }
        let artifact = &file[..file.len() - CHECKSUM_LEN];
        let engine = self.engine.engine();
        // SAFETY: wasmtime trusts a serialized artifact to be its own output. This file is ours:
        // written by `store` below from wasmtime's `serialize`, renamed into place only when
        // complete, kept in a directory keyed by this engine's precompile compatibility hash, and
        // its checksum was verified just now on the very bytes handed to wasmtime (read into
        // memory, so the file cannot change between check and use). wasmtime also checks the
        // artifact's engine and version header itself.
        let loaded = unsafe {
            match kind {
                ProgramKind::Module => {
                    wasmtime::Module::deserialize(engine, artifact).map(Program::Module)
                }
                ProgramKind::Component => {
                    wasmtime::component::Component::deserialize(engine, artifact)
                        .map(Program::Component)
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
}

/// Writes `program`'s artifact and checksum to `path` atomically.
fn store(path: &Path, program: &Program) -> Result<(), String> {
    let mut bytes = match program {
        Program::Module(m) => m.serialize(),
        Program::Component(c) => c.serialize(),
    }
    .map_err(|e| format!("serializing: {e}"))?;
    let sum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&sum);
    let dir = path.parent().ok_or("no parent directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = path.with_extension(format!("cwasm.tmp.{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_cache_on_the_same_dir_loads_from_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = krustlet_test_workloads::multitool().unwrap_or_else(|e| panic!("{e}"));
        let engine = WasmEngine::new().expect("engine");
        let digest = "sha256:00aa";
        let first = CompileCache::new(engine.clone(), Some(dir.path().into()));
        assert_eq!(
            first.get(digest, &wasm).expect("compile").1,
            CacheOutcome::Compiled
        );
        assert_eq!(
            first.get(digest, &wasm).expect("memory").1,
            CacheOutcome::Memory
        );
        let second = CompileCache::new(engine.clone(), Some(dir.path().into()));
        assert_eq!(
            second.get(digest, &wasm).expect("disk").1,
            CacheOutcome::Disk
        );
        // A damaged entry is dropped and compiled again.
        let path = second.disk_path(digest).expect("path");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[10] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        let third = CompileCache::new(engine, Some(dir.path().into()));
        assert_eq!(
            third.get(digest, &wasm).expect("again").1,
            CacheOutcome::Compiled
        );
    }
}
