//! No allocation between clone and exec: the processes a start makes run on the caller's memory
//! (CLONE_VM) or on a copy of it (a forking start), where the allocator's locks may be held by
//! threads that do not exist there. This binary's allocator counts every call made from a
//! process other than this one, in a shared page the children write too, and each kind of
//! sandbox is started while it watches.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

use rsandbox::{Mount, Network, Overlay, OverlayDriver, Root, Spec, Stdio, Upper, Want};

/// Allocations made outside this process: a counter in a MAP_SHARED page, so a forked child's
/// calls are seen as well as those of a child sharing this memory.
static FOREIGN: AtomicPtr<AtomicUsize> = AtomicPtr::new(std::ptr::null_mut());
/// This process's id, once the watch is set up.
static OWNER: AtomicI32 = AtomicI32::new(0);

struct Watching;

impl Watching {
    /// Counts the call when it comes from another process.
    fn note(&self) {
        let counter = FOREIGN.load(Ordering::Relaxed);
        if counter.is_null() {
            return;
        }
        // SAFETY: getpid is a plain system call (no cache to go stale in a clone).
        let me = unsafe { libc::syscall(libc::SYS_getpid) } as i32;
        if me != OWNER.load(Ordering::Relaxed) {
            // SAFETY: the page mapped in watch() is never unmapped.
            unsafe { (*counter).fetch_add(1, Ordering::SeqCst) };
        }
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.note();
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.note();
        // SAFETY: forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// The tests share the counter: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn watch() -> &'static AtomicUsize {
    if FOREIGN.load(Ordering::SeqCst).is_null() {
        // SAFETY: a fresh shared anonymous mapping of one page, never unmapped.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED, "mmap a shared page");
        OWNER.store(std::process::id() as i32, Ordering::SeqCst);
        FOREIGN.store(page.cast(), Ordering::SeqCst);
    }
    // SAFETY: set above, never unmapped; zero-filled memory is a valid AtomicUsize.
    unsafe { &*FOREIGN.load(Ordering::SeqCst) }
}

fn quiet(mut spec: Spec) -> Spec {
    spec.cgroup.want = Want::Off;
    spec.process.stdin = Stdio::Null;
    spec.process.stdout = Stdio::Null;
    spec.process.stderr = Stdio::Null;
    spec.timeout = Some(60.0);
    spec
}

/// Starts `spec` `times` times (a template is used from the second start on) and returns how
/// many allocator calls came from outside this process meanwhile.
fn foreign_calls(name: &str, spec: &Spec, times: usize) -> usize {
    let counter = watch();
    let before = counter.load(Ordering::SeqCst);
    for i in 0..times {
        let mut child = rsandbox::spawn(spec).unwrap_or_else(|e| panic!("{name}, start {i}: {e}"));
        let r = child
            .wait()
            .unwrap_or_else(|e| panic!("{name}, wait {i}: {e}"));
        assert!(r.status.success(), "{name}, start {i}: {:?}", r.status);
    }
    counter.load(Ordering::SeqCst) - before
}

#[test]
fn the_watch_sees_a_child_that_allocates() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let counter = watch();
    let before = counter.load(Ordering::SeqCst);
    const STACK: usize = 64 * 1024;
    let mut stack = vec![0u8; STACK];
    extern "C" fn allocates(_: *mut libc::c_void) -> libc::c_int {
        let b = std::hint::black_box(Box::new(7u64));
        drop(b);
        0
    }
    // SAFETY: the child runs `allocates` on its own stack (the top of `stack`, 16-aligned), which
    // outlives it: CLONE_VFORK suspends this thread until the child has exited.
    let pid = unsafe {
        let top = (stack.as_mut_ptr().add(STACK) as usize & !15) as *mut libc::c_void;
        libc::clone(
            allocates,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::null_mut(),
        )
    };
    assert!(pid > 0, "clone: {}", std::io::Error::last_os_error());
    let mut status = 0;
    // SAFETY: pid is our child; status a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(status, 0);
    drop(stack);
    // A forked child writes the shared page too (it only notes a call: allocating after fork in
    // a threaded process is the very hazard this file guards against).
    // SAFETY: the child calls only note() (an atomic add and a system call) and _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        ALLOCATOR.note();
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(0) };
    }
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(
        counter.load(Ordering::SeqCst) - before,
        3,
        "the watch must count the allocation and the free of a CLONE_VM child and the call of a forked one"
    );
}

#[test]
fn a_start_allocates_nothing_between_clone_and_exec() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cases: Vec<(&str, Spec)> = Vec::new();
    cases.push(("default", quiet(Spec::new(["/bin/true"]))));
    let mut full = quiet(Spec::new(["/bin/true"]));
    full.filesystem.template = false;
    cases.push(("tree built in full", full));
    let mut host_net = quiet(Spec::new(["/bin/true"]));
    host_net.network = Network::Host;
    cases.push(("host network", host_net));
    // Keeping CAP_SYS_PTRACE makes the start fork (the command could reach a setup process
    // sharing the caller's memory).
    let mut forking = quiet(Spec::new(["/bin/true"]));
    forking.security.capabilities = vec!["CAP_SYS_PTRACE".into()];
    cases.push(("forking start", forking));
    let mut mounts = quiet(Spec::new(["/bin/true"]));
    let dir = common::TempDir::new("child-alloc");
    mounts.filesystem.mounts = vec![
        Mount::Bind {
            source: dir.path().to_path_buf(),
            destination: "/data".into(),
            readonly: false,
        },
        Mount::Tmpfs {
            destination: "/scratch".into(),
            size: Some(1 << 20),
            mode: Some(0o700),
        },
    ];
    mounts.security.rlimits.insert("nofile".into(), 64);
    mounts.hostname = "alloc-watch".into();
    cases.push(("extra mounts, rlimits, host name", mounts));
    let rootfs = common::busybox_rootfs();
    if let Some(r) = &rootfs {
        let mut dir_root = quiet(Spec::new(["/bin/sh", "-c", "exit 0"]));
        dir_root.filesystem.root = Root::Directory {
            path: r.path().to_path_buf(),
            writable: false,
        };
        cases.push(("directory root", dir_root));
        let mut overlay = quiet(Spec::new(["/bin/sh", "-c", "exit 0"]));
        overlay.filesystem.root = Root::Overlay(Overlay {
            lowers: vec![PathBuf::from(r.path())],
            image: None,
            upper: Upper::Ephemeral {
                size: Some(8 << 20),
            },
            driver: OverlayDriver::Kernel,
        });
        cases.push(("kernel overlay root", overlay));
    }
    let mut failures = Vec::new();
    for (name, spec) in &cases {
        let n = foreign_calls(name, spec, 3);
        eprintln!("{name}: {n} allocator calls outside the caller");
        if n != 0 {
            failures.push(format!("{name}: {n}"));
        }
    }
    assert!(
        failures.is_empty(),
        "allocator calls between clone and exec: {failures:?}"
    );
}

#[test]
fn a_pooled_job_allocates_nothing_between_clone_and_exec() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let counter = watch();
    let before = counter.load(Ordering::SeqCst);
    let pool = match rsandbox::Pool::new(&quiet(Spec::new(["/bin/true"])), 2) {
        Ok(p) => p,
        Err(e) => {
            common::skip(&format!("no pool here: {e}"));
            return;
        }
    };
    for i in 0..4 {
        let r = pool
            .run(&Spec::new(["/bin/true"]).process, None)
            .unwrap_or_else(|e| panic!("pooled job {i}: {e}"));
        assert!(r.status.success(), "pooled job {i}: {:?}", r.status);
    }
    drop(pool);
    let n = counter.load(Ordering::SeqCst) - before;
    assert_eq!(
        n, 0,
        "allocator calls between clone and exec in pooled starts"
    );
}
