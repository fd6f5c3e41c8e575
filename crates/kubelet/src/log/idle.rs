//! Closing log files that nobody writes to.
//!
//! A container's log writer lives as long as its run, and most runs write a few lines at start
//! and then nothing for hours. A descriptor held for each of them is what bounds a node's pods
//! under a low `RLIMIT_NOFILE` (10 000 sleeping pods against a limit of 20 000), so one thread,
//! shared by every writer, closes a file once it has gone unwritten for a while, and the writer
//! opens it again at its next write. Only files open right now are on its list: a node of
//! sleeping pods costs it nothing, and it sleeps on a condition variable while the list is
//! empty.

use std::sync::{Condvar, Mutex, MutexGuard, Once, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How often the closer looks at the open files: a file is closed between its idle time and
/// that plus this.
const TICK: Duration = Duration::from_secs(1);

/// Something that holds a file open and can close it once it is idle.
pub(super) trait IdleClose: Send + Sync {
    /// Closes the file if it has not been used for long enough at `now`; whether it is still
    /// open (and so should be looked at again).
    fn close_if_idle(&self, now: Instant) -> bool;
}

#[derive(Default)]
struct Closer {
    /// The files that were open at their last write.
    open: Mutex<Vec<Weak<dyn IdleClose>>>,
    /// Signalled when the list stops being empty.
    added: Condvar,
}

impl Closer {
    fn open(&self) -> MutexGuard<'_, Vec<Weak<dyn IdleClose>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        loop {
            // Taken out of the list, so that a writer registering itself (with its own lock
            // held) never waits for a file being closed here.
            let taken = {
                let mut open = self.open();
                while open.is_empty() {
                    open = self.added.wait(open).unwrap_or_else(|e| e.into_inner());
                }
                std::mem::take(&mut *open)
            };
            let now = Instant::now();
            let still_open: Vec<_> = taken
                .into_iter()
                .filter(|file| file.upgrade().is_some_and(|f| f.close_if_idle(now)))
                .collect();
            self.open().extend(still_open);
            std::thread::sleep(TICK);
        }
    }
}

fn closer() -> &'static Closer {
    static CLOSER: OnceLock<Closer> = OnceLock::new();
    static THREAD: Once = Once::new();
    let closer = CLOSER.get_or_init(Closer::default);
    THREAD.call_once(|| {
        let started = std::thread::Builder::new()
            .name("log-idle-close".into())
            .spawn(move || closer.run());
        if let Err(error) = started {
            // Files then stay open for their whole run, as they did before this closer.
            tracing::warn!(%error, "cannot start the thread that closes idle log files");
        }
    });
    closer
}

/// Puts `file` on the closer's list: call it when the file is opened, once per opening (the
/// file leaves the list when it is closed, or when it is dropped).
pub(super) fn watch(file: Weak<dyn IdleClose>) {
    let closer = closer();
    closer.open().push(file);
    closer.added.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Open until its deadline.
    struct Fake {
        deadline: Instant,
        open: AtomicBool,
    }

    impl IdleClose for Fake {
        fn close_if_idle(&self, now: Instant) -> bool {
            if now < self.deadline {
                return true;
            }
            self.open.store(false, Ordering::SeqCst);
            false
        }
    }

    #[test]
    fn files_are_closed_once_idle_and_dropped_files_are_forgotten() {
        let soon = Arc::new(Fake {
            deadline: Instant::now() + Duration::from_millis(200),
            open: AtomicBool::new(true),
        });
        let later = Arc::new(Fake {
            deadline: Instant::now() + Duration::from_secs(3600),
            open: AtomicBool::new(true),
        });
        let gone = Arc::new(Fake {
            deadline: Instant::now(),
            open: AtomicBool::new(true),
        });
        for file in [&soon, &later, &gone] {
            watch(Arc::downgrade(file) as Weak<dyn IdleClose>);
        }
        drop(gone);
        let waited = Instant::now();
        while soon.open.load(Ordering::SeqCst) {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "not closed after its deadline"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(later.open.load(Ordering::SeqCst), "closed before its time");
    }
}
