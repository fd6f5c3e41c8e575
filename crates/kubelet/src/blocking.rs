//! File-system work from async code without stalling the node.
//!
//! The node's async runtime has one worker thread per core, and every pod's watch, status
//! patch and API request runs on them. A pod's start makes directories and files (its volumes
//! directory, termination message and log), eight inodes, and each `mkdir` on the bench VM's
//! journal-less ext4 took 0.3-1 ms (BENCHMARKS.md, "Burst start"): done on a worker, every
//! other task on it waits meanwhile. Go's kubelet has no such stall: a goroutine blocked in a
//! system call gives its processor to another.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work`, which blocks on the file system, so that the runtime's other tasks go on
/// meanwhile (`block_in_place`); on a single-threaded runtime (tests) it simply runs it.
pub fn fs<T>(work: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_work_outside_a_runtime() {
        assert_eq!(fs(|| 7), 7);
    }

    #[tokio::test]
    async fn runs_the_work_on_a_single_threaded_runtime() {
        assert_eq!(fs(|| 7), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn other_tasks_go_on_while_the_work_blocks_the_only_worker() {
        let blocker = tokio::spawn(async {
            fs(|| {
                // Spawned from the worker, this task would wait for it without the hand-off.
                let (tx, rx) = std::sync::mpsc::channel();
                tokio::spawn(async move {
                    let _ = tx.send(());
                });
                rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok()
            })
        });
        assert!(
            blocker.await.expect("blocker"),
            "another task ran while the work blocked"
        );
    }
}
