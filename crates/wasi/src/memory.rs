//! `limits.memory`: a [`wasmtime::ResourceLimiter`] that caps a guest's linear memories and
//! tables together and keeps the container's [`Usage`] current.
//!
//! Growth past the limit traps at once (rather than making `memory.grow` return -1), the way
//! the kernel's OOM killer ends a container: the run ends as `OOMKilled` with exit code 137.

use std::sync::Arc;

use kubelet::runtime::Usage;

/// Host-side memory counted for every container on top of its wasm memories and tables: the
/// store, the WASI context and the async stack pages a guest touches. A container's
/// `limits.memory` covers both; a limit below this allowance leaves the guest nothing.
pub const HOST_OVERHEAD_BYTES: u64 = 1 << 20;

/// Bytes a table element takes in wasmtime (a pointer).
const TABLE_ELEMENT_BYTES: u64 = std::mem::size_of::<usize>() as u64;

/// A guest asked for more memory than its limit; the run ends as `OOMKilled`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "memory limit exceeded: the guest needed {needed} bytes (wasm memories and tables plus \
     {HOST_OVERHEAD_BYTES} bytes of host overhead), its limit is {limit} bytes"
)]
pub struct MemoryLimitExceeded {
    /// The limit in bytes.
    pub limit: u64,
    /// What the guest would have used after the growth.
    pub needed: u64,
}

/// Whether `error` (from instantiating or running a guest) is a memory limit hit.
pub fn is_memory_limit(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<MemoryLimitExceeded>().is_some())
}

/// Tracks one store's memories and tables against a limit.
pub(crate) struct MemoryLimiter {
    /// Bytes of wasm memories and tables now.
    wasm_bytes: u64,
    /// `wasm_bytes` before the growth last allowed, to undo it if wasmtime then fails it.
    before_last_growth: u64,
    usage: Arc<Usage>,
    /// One of several instances sharing `usage` and its limit (an HTTP server's requests):
    /// counts its growth into the total atomically and gives its share back when dropped.
    shared: bool,
}

impl MemoryLimiter {
    /// A limiter for a store. The limit is read from `usage.limits` at each growth, so an
    /// in-place resize applies to the next one.
    pub(crate) fn new(usage: Arc<Usage>) -> Self {
        usage.set_memory_bytes(HOST_OVERHEAD_BYTES);
        Self {
            wasm_bytes: 0,
            before_last_growth: 0,
            usage,
            shared: false,
        }
    }

    /// A limiter for one of several instances that share `usage` (and its limit): each counts
    /// its memories, tables and [`HOST_OVERHEAD_BYTES`] into the total while it lives.
    ///
    /// # Errors
    /// [`MemoryLimitExceeded`] when even the overhead does not fit.
    pub(crate) fn shared(usage: Arc<Usage>) -> Result<Self, MemoryLimitExceeded> {
        let limit = usage.limits.get().memory_bytes;
        usage
            .update_memory_bytes(|total| {
                let next = total.saturating_add(HOST_OVERHEAD_BYTES);
                limit.is_none_or(|l| next <= l).then_some(next)
            })
            .map_err(|total| MemoryLimitExceeded {
                limit: limit.unwrap_or(0),
                needed: total.saturating_add(HOST_OVERHEAD_BYTES),
            })?;
        Ok(Self {
            wasm_bytes: 0,
            before_last_growth: 0,
            usage,
            shared: true,
        })
    }

    fn grow(&mut self, current: u64, desired: u64) -> wasmtime::Result<bool> {
        let next = self
            .wasm_bytes
            .saturating_sub(current)
            .saturating_add(desired);
        if self.shared {
            let (mine, limit) = (self.wasm_bytes, self.usage.limits.get().memory_bytes);
            self.usage
                .update_memory_bytes(|total| {
                    let total_next = total.saturating_sub(mine).saturating_add(next);
                    (next <= mine || limit.is_none_or(|l| total_next <= l)).then_some(total_next)
                })
                .map_err(|total| MemoryLimitExceeded {
                    limit: limit.unwrap_or(0),
                    needed: total.saturating_sub(mine).saturating_add(next),
                })?;
            self.before_last_growth = self.wasm_bytes;
            self.wasm_bytes = next;
            return Ok(true);
        }
        let needed = next.saturating_add(HOST_OVERHEAD_BYTES);
        if let Some(limit) = self.usage.limits.get().memory_bytes
            && needed > limit
        {
            return Err(MemoryLimitExceeded { limit, needed }.into());
        }
        self.before_last_growth = self.wasm_bytes;
        self.wasm_bytes = next;
        self.usage.set_memory_bytes(needed);
        Ok(true)
    }

    fn undo_last_growth(&mut self) {
        if self.shared {
            let (now, before) = (self.wasm_bytes, self.before_last_growth);
            let _ = self.usage.update_memory_bytes(|total| {
                Some(total.saturating_sub(now).saturating_add(before))
            });
            self.wasm_bytes = before;
            return;
        }
        self.wasm_bytes = self.before_last_growth;
        self.usage
            .set_memory_bytes(self.wasm_bytes.saturating_add(HOST_OVERHEAD_BYTES));
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        if self.shared {
            let mine = self.wasm_bytes.saturating_add(HOST_OVERHEAD_BYTES);
            let _ = self
                .usage
                .update_memory_bytes(|total| Some(total.saturating_sub(mine)));
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current as u64, desired as u64)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo_last_growth();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            (current as u64).saturating_mul(TABLE_ELEMENT_BYTES),
            (desired as u64).saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo_last_growth();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::ResourceLimiter;

    use super::*;

    #[test]
    fn counts_memories_and_tables_against_one_limit() {
        let usage = Arc::new(Usage::default());
        usage.limits.set(kubelet::runtime::Limits {
            memory_bytes: Some(HOST_OVERHEAD_BYTES + 200),
            ..Default::default()
        });
        let mut limiter = MemoryLimiter::new(usage.clone());
        assert_eq!(usage.memory_bytes(), HOST_OVERHEAD_BYTES);
        assert!(limiter.memory_growing(0, 100, None).expect("fits"));
        assert!(limiter.table_growing(0, 10, None).expect("fits"));
        assert_eq!(usage.memory_bytes(), HOST_OVERHEAD_BYTES + 180);
        let error = limiter.memory_growing(100, 150, None).expect_err("over");
        assert!(is_memory_limit(&error), "{error}");
        // A growth wasmtime fails after we allowed it is not counted.
        assert!(limiter.memory_growing(100, 110, None).expect("fits"));
        limiter
            .memory_grow_failed(wasmtime::Error::msg("maximum"))
            .expect("ok");
        assert_eq!(usage.memory_bytes(), HOST_OVERHEAD_BYTES + 180);
    }

    #[test]
    fn shared_instances_hold_one_limit_and_give_memory_back() {
        let usage = Arc::new(Usage::default());
        usage.limits.set(kubelet::runtime::Limits {
            memory_bytes: Some(2 * HOST_OVERHEAD_BYTES + 300),
            ..Default::default()
        });
        let mut a = MemoryLimiter::shared(usage.clone()).expect("a");
        let mut b = MemoryLimiter::shared(usage.clone()).expect("b");
        assert!(
            MemoryLimiter::shared(usage.clone()).is_err(),
            "no room for a third"
        );
        assert!(a.memory_growing(0, 200, None).expect("fits"));
        let error = b
            .memory_growing(0, 200, None)
            .expect_err("over the shared limit");
        assert!(is_memory_limit(&error), "{error}");
        assert!(b.memory_growing(0, 100, None).expect("fits"));
        assert_eq!(usage.memory_bytes(), 2 * HOST_OVERHEAD_BYTES + 300);
        drop(a);
        assert_eq!(usage.memory_bytes(), HOST_OVERHEAD_BYTES + 100);
        drop(b);
        assert_eq!(usage.memory_bytes(), 0);
    }

    #[test]
    fn no_limit_still_reports_usage() {
        let usage = Arc::new(Usage::default());
        let mut limiter = MemoryLimiter::new(usage.clone());
        assert!(limiter.memory_growing(0, 1 << 30, None).expect("fits"));
        assert_eq!(usage.memory_bytes(), (1 << 30) + HOST_OVERHEAD_BYTES);
    }
}
