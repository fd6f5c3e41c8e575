//! A bounded pool for compiling (and loading) programs: at most `size` at once, the rest wait
//! without holding a thread. wasmtime spreads one compilation over every core already, and
//! each takes memory in proportion to the module, so many at once would only starve the
//! running guests that share this process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

/// The compile pool.
#[derive(Debug)]
pub struct CompilePool {
    permits: Arc<Semaphore>,
    size: usize,
    active: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

/// The pool was closed, or a job panicked.
#[derive(Debug, thiserror::Error)]
#[error("the compile pool failed: {0}")]
pub struct PoolError(String);

impl CompilePool {
    /// A pool running at most `size` jobs at once (at least one).
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size,
            active: Arc::default(),
            peak: Arc::default(),
        }
    }

    /// How many jobs may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The most jobs that ever ran at once (for tests and benchmarks).
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Runs the blocking `job` once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| PoolError(e.to_string()))?;
        let (active, peak) = (self.active.clone(), self.peak.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let result = job();
            active.fetch_sub(1, Ordering::SeqCst);
            result
        })
        .await
        .map_err(|e| PoolError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_size_jobs_run_at_once() {
        let pool = Arc::new(CompilePool::new(2));
        let jobs = (0..8).map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    std::thread::sleep(Duration::from_millis(30));
                    i
                })
                .await
            })
        });
        let mut done: Vec<i32> = futures::future::join_all(jobs)
            .await
            .into_iter()
            .map(|r| r.expect("task").expect("job"))
            .collect();
        done.sort();
        assert_eq!(done, (0..8).collect::<Vec<_>>(), "every job ran");
        assert!(pool.peak() <= 2, "peak {}", pool.peak());
        assert!(pool.peak() >= 1);
        assert_eq!(CompilePool::new(0).size(), 1);
    }
}
