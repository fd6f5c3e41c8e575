//! Compiled programs: WASI preview-1 core modules and preview-2 components.

use std::sync::{Arc, OnceLock};

use crate::engine::WasmEngine;
use crate::link::{self, Linked, Linkers};

/// Which kind of WebAssembly binary a program is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    /// A core module importing `wasi_snapshot_preview1`.
    Module,
    /// A component exporting `wasi:cli/run` (a preview-2 command).
    Component,
}

impl ProgramKind {
    /// Tells a component from a core module by the binary header; `None` if it is neither.
    ///
    /// Both start with `\0asm`; a core module's next four bytes are version 1 (`01 00 00 00`), a
    /// component's are a version and then layer 1 (`.. .. 01 00`).
    pub fn detect(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [0, b'a', b's', b'm', 1, 0, 0, 0, ..] => Some(Self::Module),
            [0, b'a', b's', b'm', _, _, 1, 0, ..] => Some(Self::Component),
            _ => None,
        }
    }
}

/// Errors compiling a program.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The bytes are not a WebAssembly binary at all (wrong file, or a non-wasm image).
    #[error("not a WebAssembly module or component (the file does not start with a wasm header)")]
    NotWasm,
    /// wasmtime could not validate or compile the binary.
    #[error("invalid WebAssembly {kind:?}: {source:#}")]
    Invalid {
        /// What the header said the binary is.
        kind: ProgramKind,
        /// wasmtime's reason.
        #[source]
        source: wasmtime::Error,
    },
}

/// A compiled program, cheap to clone and to run many times: its code, and its imports
/// resolved against its engine's run linker at its first run (shared by its clones).
#[derive(Clone)]
pub struct Program {
    code: Code,
    linked: Arc<OnceLock<Result<Linked, String>>>,
}

/// A program's compiled code.
#[derive(Clone)]
pub enum Code {
    /// A preview-1 core module.
    Module(wasmtime::Module),
    /// A preview-2 component.
    Component(wasmtime::component::Component),
}

impl From<Code> for Program {
    fn from(code: Code) -> Self {
        Self {
            code,
            linked: Arc::default(),
        }
    }
}

impl Program {
    /// Compiles `bytes` with Cranelift, detecting whether they are a module or a component.
    pub fn compile(engine: &WasmEngine, bytes: &[u8]) -> Result<Self, CompileError> {
        Self::compile_on(engine.engine(), bytes)
    }

    /// Compiles `bytes` on `engine` (the Cranelift or the Winch engine of a [`WasmEngine`]).
    pub fn compile_on(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Self, CompileError> {
        let kind = ProgramKind::detect(bytes).ok_or(CompileError::NotWasm)?;
        let invalid = |source| CompileError::Invalid { kind, source };
        let code = match kind {
            ProgramKind::Module => {
                Code::Module(wasmtime::Module::new(engine, bytes).map_err(invalid)?)
            }
            ProgramKind::Component => Code::Component(
                wasmtime::component::Component::new(engine, bytes).map_err(invalid)?,
            ),
        };
        Ok(code.into())
    }

    /// The compiled code.
    pub fn code(&self) -> &Code {
        &self.code
    }

    /// The program with its imports resolved against `linkers` (its engine's), done at the
    /// first call and kept: a module's WASI imports, a command component's.
    ///
    /// # Errors
    /// wasmtime's message, the same at every call: an import this runtime does not provide,
    /// or a component without `wasi:cli/run`.
    pub(crate) fn linked(&self, linkers: &Linkers) -> Result<&Linked, wasmtime::Error> {
        self.linked
            .get_or_init(|| {
                match &self.code {
                    Code::Module(module) => link::module(linkers, module),
                    Code::Component(component) => link::command(linkers, component),
                }
                .map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| wasmtime::Error::msg(e.clone()))
    }

    /// The engine the program was compiled for (its code runs only there).
    pub fn engine(&self) -> &wasmtime::Engine {
        match &self.code {
            Code::Module(m) => m.engine(),
            Code::Component(c) => c.engine(),
        }
    }

    /// Bytes of compiled code and data this program keeps mapped (its weight in memory).
    pub fn code_bytes(&self) -> u64 {
        let range = match &self.code {
            Code::Module(m) => m.image_range(),
            Code::Component(c) => c.image_range(),
        };
        (range.end as usize).saturating_sub(range.start as usize) as u64
    }

    /// Which kind of program this is.
    pub fn kind(&self) -> ProgramKind {
        match &self.code {
            Code::Module(_) => ProgramKind::Module,
            Code::Component(_) => ProgramKind::Component,
        }
    }
}
