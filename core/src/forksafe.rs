//! What a fork of the calling process must not inherit.
//!
//! A child forked from a multi-threaded process (Python's `os.fork`, a C host's `fork`) holds a
//! copy of every lock as it was at the fork: one another thread held then stays locked forever
//! in the child, and its first start would hang. The library's caches and queues are therefore
//! kept per process ([`PerProcess`]): a process finds the state it made itself, and a forked
//! child makes fresh state at its first use, leaving its parent's copy untouched (not dropped:
//! that could wait on what the parent's threads were doing, or close descriptors the child never
//! owned alone).
//!
//! The child also holds copies of every descriptor: those a start holds only until the sandbox
//! has its own ([`Ends`]) it closes at once, or a start waiting for their end of file would wait
//! for the child's exit.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// A process as the library's per-process state tells them apart: its pid, and how many forks
/// its memory has been through since the library first ran in it (a pid alone may be one a
/// process that has exited had: a grandchild can get its grandparent's).
pub(crate) type Process = (u32, u64);

/// Forks this process's memory has been through (bumped in each child, see `close_in_child`).
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The calling process (see [`Process`]).
pub(crate) fn process() -> Process {
    register_handlers();
    (std::process::id(), GENERATION.load(Ordering::Acquire))
}

/// `T` behind a lock of the calling process's own, made by `make` at its first use in a process.
pub(crate) struct PerProcess<T> {
    slot: AtomicPtr<Owned<T>>,
    make: fn() -> T,
}

/// The state of one process. Never freed once published: a guard or a waiter may hold it for
/// as long as the process lives, and a forked child's copy of its parent's is left alone.
struct Owned<T> {
    process: Process,
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
        let this = process();
        loop {
            let current = self.slot.load(Ordering::Acquire);
            // SAFETY: a published slot is never freed (see Owned).
            if let Some(owned) = unsafe { current.as_ref() } {
                if owned.process == this {
                    return owned;
                }
            }
            let fresh = Box::into_raw(Box::new(Owned {
                process: this,
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

/// Descriptors whose copies in a forked child would hold this process up for as long as that
/// child lives: the sandbox's ends of its pipes (and the lock on a persistent upper), held until
/// the sandbox has them, whose end of file says the command was executed; the write end of a
/// stdin a run feeds, whose end of file the command waits for; the caller's end of a sandbox's
/// control pipe, whose closing is the caller's death. The child closes its copies at once (a
/// `pthread_atfork` handler): what owns them there is never dropped (the thread that held them
/// is not in the child; a handle copied by fork forgets them), so nothing closes them again.
pub(crate) struct InFlight {
    slots: Vec<usize>,
}

const IN_FLIGHT: usize = 1024;
static SLOTS: [AtomicI32; IN_FLIGHT] = [const { AtomicI32::new(-1) }; IN_FLIGHT];

/// Threads in a window where [`Creating`] is held (the low bits), and a fork under way
/// ([`FORKING`]): a fork lets the threads in a window finish and keeps others out until it is
/// done, the readers and the writer of a lock that a forked child never inherits held.
static WINDOWS: AtomicUsize = AtomicUsize::new(0);
const FORKING: usize = 1 << (usize::BITS - 1);

/// Held while descriptors that [`InFlight`] is to mark are made, and while they are unmarked and
/// closed: a fork waits until that is done (the window is a few system calls), so no child gets
/// an unmarked copy, nor closes a number that is another descriptor's by then.
pub(crate) struct Creating(());

impl Creating {
    pub(crate) fn begin() -> Creating {
        register_handlers();
        loop {
            let now = WINDOWS.load(Ordering::Acquire);
            if now & FORKING == 0
                && WINDOWS
                    .compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return Creating(());
            }
            if now & FORKING != 0 {
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for Creating {
    fn drop(&mut self) {
        // Never below zero: a child forked from inside a window starts with none open.
        let _ = WINDOWS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (w & !FORKING != 0).then(|| w - 1)
        });
    }
}

/// The handlers are registered as the library is loaded, before any thread of the program can
/// start a sandbox: registered at a first start instead, a fork by another thread at that moment
/// would run without them.
#[used]
#[link_section = ".init_array"]
static REGISTER_AT_LOAD: extern "C" fn() = {
    extern "C" fn at_load() {
        register_handlers();
    }
    at_load
};

fn register_handlers() {
    static HANDLERS: std::sync::Once = std::sync::Once::new();
    HANDLERS.call_once(|| {
        // SAFETY: the handlers make only async-signal-safe calls (atomic operations,
        // sched_yield, close) on static memory.
        unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(close_in_child)) };
    });
}

/// Before a fork: keeps new windows from opening, and lets the open ones close (each is a few
/// system calls). Bounded (a thread forking from inside a window, from a signal handler say,
/// must not wait for itself): after a second the fork goes on.
extern "C" fn before_fork() {
    while WINDOWS.fetch_or(FORKING, Ordering::AcqRel) & FORKING != 0 {
        // Another thread's fork holds it: wait for its end.
        // SAFETY: no arguments.
        unsafe { libc::sched_yield() };
    }
    let until = monotonic_ns().saturating_add(1_000_000_000);
    while WINDOWS.load(Ordering::Acquire) & !FORKING != 0 && monotonic_ns() < until {
        // SAFETY: no arguments.
        unsafe { libc::sched_yield() };
    }
}

/// CLOCK_MONOTONIC in nanoseconds (async-signal-safe, unlike `Instant` in principle).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// After a fork, in the parent: windows may open again.
extern "C" fn after_fork() {
    WINDOWS.fetch_and(!FORKING, Ordering::AcqRel);
}

impl InFlight {
    /// Marks `fds` too.
    fn add(&mut self, fds: &[RawFd]) {
        for &fd in fds.iter().filter(|&&fd| fd >= 0) {
            if let Some(i) = SLOTS.iter().position(|s| {
                s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            }) {
                self.slots.push(i);
            }
        }
    }

    /// Unmarks everything marked.
    fn release(&mut self) {
        for i in self.slots.drain(..) {
            SLOTS[i].store(-1, Ordering::Release);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.release();
    }
}

/// Descriptors of [`InFlight`]'s kinds, owned: marked while held, then unmarked and closed
/// together with forks held off, on every path (a number unmarked but still open could be copied
/// unmarked; one closed but still marked could be another descriptor's in a child).
pub(crate) struct Ends {
    marks: InFlight,
    fds: Vec<OwnedFd>,
}

impl std::fmt::Debug for Ends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ends({:?})", self.fds)
    }
}

impl Ends {
    pub(crate) fn new() -> Ends {
        register_handlers();
        Ends {
            marks: InFlight { slots: Vec::new() },
            fds: Vec::new(),
        }
    }

    /// Takes and marks `fd`, the sandbox's end of something just made (inside a [`Creating`]
    /// window, where a copy by fork would keep a start waiting); returns its number.
    pub(crate) fn keep(&mut self, fd: OwnedFd) -> RawFd {
        let raw = fd.as_raw_fd();
        self.marks.add(&[raw]);
        self.fds.push(fd);
        raw
    }
}

impl Ends {
    /// Hands `fd` (kept here) back, unmarked: from now on it is the caller's alone.
    pub(crate) fn take_back(&mut self, fd: RawFd) -> Option<OwnedFd> {
        let at = self.fds.iter().position(|f| f.as_raw_fd() == fd)?;
        let _window = Creating::begin();
        if let Some(k) = self
            .marks
            .slots
            .iter()
            .position(|&i| SLOTS[i].load(Ordering::Acquire) == fd)
        {
            SLOTS[self.marks.slots.swap_remove(k)].store(-1, Ordering::Release);
        }
        Some(self.fds.swap_remove(at))
    }

    /// The first descriptor kept (the only one, where one is kept).
    pub(crate) fn first(&self) -> Option<RawFd> {
        self.fds.first().map(AsRawFd::as_raw_fd)
    }

    /// Unmarks and closes them all, with forks held off.
    pub(crate) fn close(&mut self) {
        if self.fds.is_empty() {
            return;
        }
        let _window = Creating::begin();
        self.marks.release();
        self.fds.clear();
    }
}

impl Drop for Ends {
    fn drop(&mut self) {
        self.close();
    }
}

/// In a child just forked: closes its copies of the descriptors in flight. The threads that
/// held windows are not in the child: none is open there.
extern "C" fn close_in_child() {
    WINDOWS.store(0, Ordering::Release);
    GENERATION.fetch_add(1, Ordering::AcqRel);
    for slot in &SLOTS {
        let fd = slot.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: a copy of a descriptor another thread's start held at the fork; no code in
            // this process closes it otherwise.
            unsafe { libc::close(fd) };
        }
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
