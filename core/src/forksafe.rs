//! Process-wide state that a forked child never waits on.
//!
//! A child forked from a multi-threaded process (Python's `os.fork`, a C host's `fork`) holds a
//! copy of every lock as it was at the fork: one another thread held then stays locked forever
//! in the child, and its first start would hang. The library's caches and queues are therefore
//! kept per process: a process finds the state its own pid made, and a forked child makes fresh
//! state at its first use, leaving its parent's copy untouched (not dropped: that could wait on
//! what the parent's threads were doing, or close descriptors the child never owned alone).

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// `T` behind a lock of the calling process's own, made by `make` at its first use in a process.
pub(crate) struct PerProcess<T> {
    slot: AtomicPtr<Owned<T>>,
    make: fn() -> T,
}

/// The state of one process. Never freed once published: a guard or a waiter may hold it for
/// as long as the process lives, and a forked child's copy of its parent's is left alone.
struct Owned<T> {
    pid: u32,
    state: Mutex<T>,
    wake: Condvar,
}

impl<T> PerProcess<T> {
    pub(crate) const fn new(make: fn() -> T) -> PerProcess<T> {
        PerProcess {
            slot: AtomicPtr::new(std::ptr::null_mut()),
            make,
        }
    }

    /// This process's state.
    fn owned(&self) -> &Owned<T> {
        let pid = std::process::id();
        loop {
            let current = self.slot.load(Ordering::Acquire);
            // SAFETY: a published slot is never freed (see Owned).
            if let Some(owned) = unsafe { current.as_ref() } {
                if owned.pid == pid {
                    return owned;
                }
            }
            let fresh = Box::into_raw(Box::new(Owned {
                pid,
                state: Mutex::new((self.make)()),
                wake: Condvar::new(),
            }));
            if self
                .slot
                .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Another thread of this process published first: its state is the one.
                // SAFETY: `fresh` was never published; this thread owns it alone.
                drop(unsafe { Box::from_raw(fresh) });
            }
            // The parent's state (if any) is left as it was.
        }
    }

    /// Locks this process's state. A panic while it was held does not poison it for others:
    /// every user leaves it consistent between statements.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.owned().state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on this process's condition variable with its state's `guard`.
    pub(crate) fn wait<'a>(&'a self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.owned()
            .wake
            .wait(guard)
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes one waiter of this process.
    pub(crate) fn notify_one(&self) {
        self.owned().wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::PerProcess;

    static COUNTER: PerProcess<u32> = PerProcess::new(|| 7);

    /// A child forked while another thread holds the lock gets fresh state at once, and the
    /// parent's state is as it was.
    #[test]
    fn a_forked_child_never_waits_on_its_parents_lock() {
        *COUNTER.lock() += 1;
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let guard = COUNTER.lock();
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(guard);
        });
        held_rx.recv().unwrap();
        // SAFETY: the child makes only async-signal-safe calls and the lock under test (which
        // allocates once: glibc's malloc is fork-safe), then _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let fresh = *COUNTER.lock() == 7;
            // SAFETY: _exit ends the child at once.
            unsafe { libc::_exit(if fresh { 0 } else { 1 }) };
        }
        assert!(pid > 0, "fork failed");
        let mut status = 0;
        let mut waited = false;
        for _ in 0..1000 {
            // SAFETY: waitpid on the child forked above, without blocking.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                waited = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if !waited {
            // SAFETY: kills and reaps the child forked above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
        }
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(waited, "the child hung on its parent's lock");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(*COUNTER.lock(), 8, "the parent's state changed");
    }
}
