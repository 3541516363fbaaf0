//! What runs between clone and execve.
//!
//! [`Plan`] holds everything the sandbox needs, allocated by the caller before clone. The sandbox's
//! first process runs [`run`]: one linear setup sequence, then it forks the command and becomes
//! its init. Nothing here allocates, locks or logs: the caller may be a multi-threaded program whose
//! other threads held the allocator's lock at the moment of clone. A failure is sent to the caller
//! as a fixed-size [`Failure`] record over a close-on-exec pipe.

mod init;

use std::ffi::CString;
use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use nix::errno::Errno;

use crate::error::Step;
use crate::mounts::MountPlan;
use crate::sys;

/// The fixed-size record a failing sandbox writes to the error pipe.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Failure {
    pub step: u32,
    pub errno: i32,
    /// Index of the failing mount source/op, or `u32::MAX`.
    pub index: u32,
    /// For exec failures: whether any candidate path existed but was refused (EACCES & co).
    pub detail: u32,
}

impl Failure {
    pub const SIZE: usize = std::mem::size_of::<Failure>();

    pub fn to_bytes(self) -> [u8; Failure::SIZE] {
        let mut b = [0u8; Failure::SIZE];
        b[0..4].copy_from_slice(&self.step.to_ne_bytes());
        b[4..8].copy_from_slice(&self.errno.to_ne_bytes());
        b[8..12].copy_from_slice(&self.index.to_ne_bytes());
        b[12..16].copy_from_slice(&self.detail.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Failure::SIZE]) -> Failure {
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        Failure {
            step: u32::from_ne_bytes(word(0)),
            errno: i32::from_ne_bytes(word(4)),
            index: u32::from_ne_bytes(word(8)),
            detail: u32::from_ne_bytes(word(12)),
        }
    }
}

/// Exit status of the command process when it could not be executed (127: not found; 126: not
/// executable); the caller reads the real cause from the error pipe.
pub(crate) const EXIT_NOT_FOUND: c_int = 127;
pub(crate) const EXIT_NOT_EXECUTABLE: c_int = 126;
/// Exit status of the init when setup failed.
pub(crate) const EXIT_SETUP_FAILED: c_int = 125;

/// What the caller writes on the control pipe: during setup, that the sandbox may go on; once
/// the command runs, that the init is to end the sandbox, killing and reaping every process of it
/// so that their usage is in the result (child/init.c's CTL_END).
pub(crate) const CTL_GO_ON: u8 = 1;
pub(crate) const CTL_END: u8 = 2;
/// Once the command runs: stop every process but the init (SIGSTOP, which the init itself cannot
/// be sent to relay: it would stop it instead; child/init.c's CTL_STOP).
pub(crate) const CTL_STOP: u8 = 3;
/// Once the command runs: the wall-clock deadline (followed by 8 bytes, CLOCK_MONOTONIC ns in
/// native order) at which the init ends the sandbox itself (child/init.c's CTL_DEADLINE).
pub(crate) const CTL_DEADLINE: u8 = 4;
/// The flag in an init's status record: its own deadline ended the sandbox.
pub(crate) const RECORD_DEADLINE: u64 = 1;

/// Ids maps the sandbox writes itself.
pub(crate) struct OwnMaps {
    pub uid_map: Vec<u8>,
    pub gid_map: Vec<u8>,
}

/// The command: every candidate path for argv\[0\], argv and envp as NULL-terminated arrays.
pub(crate) struct Exec {
    pub candidates: Vec<CString>,
    // The CStrings own the memory the pointer arrays point into.
    pub _argv: Vec<CString>,
    pub _envp: Vec<CString>,
    pub argv_ptrs: Vec<*const c_char>,
    pub envp_ptrs: Vec<*const c_char>,
}

/// How a sandbox started without copying the caller (`CLONE_VM | CLONE_VFORK`) goes on after
/// setup: it starts the command the same way on `cmd_stack`, then executes the tiny init
/// (init.c, embedded) from `init_fd` in its own place, which gives up the caller's memory.
pub(crate) struct SmallInit {
    pub init_fd: c_int,
    /// Lowest address and size of the command process's stack until its execve.
    pub cmd_stack: (u64, u64),
    /// Set while the command process may run on `cmd_stack`; the kernel clears it (and wakes)
    /// at the command's exec or exit (`CLONE_CHILD_CLEARTID`). The caller reuses or frees the
    /// stacks only after that, even if this process is killed while it waits for the command.
    pub cmd_gone: *const std::sync::atomic::AtomicU32,
}

/// Where the network namespace is made beside the rest of setup: the sandbox's first process
/// starts a helper task (sharing its memory and descriptors) that creates the namespace, brings
/// up loopback and hands back a descriptor for it, while the first process builds the mount tree;
/// the first process then enters the namespace. The two largest costs of a start overlap.
pub(crate) struct NetApart {
    /// The helper's stack (lowest address, size): the command's, unused until the helper is gone.
    pub stack: (u64, u64),
    /// Cleared by the kernel (and woken) when the helper has left this memory
    /// (`CLONE_CHILD_CLEARTID`): the caller frees the stacks only after that.
    pub gone: *const std::sync::atomic::AtomicU32,
}

/// Everything the sandbox needs, prepared before clone.
/// How an exec failed (Failure::detail at Step::Exec): nothing at any candidate path, a file the
/// kernel refused to execute, or a file whose interpreter is missing.
pub(crate) const EXEC_NOT_FOUND: u32 = 0;
pub(crate) const EXEC_REFUSED: u32 = 1;
pub(crate) const EXEC_NO_INTERPRETER: u32 = 2;

/// A notice on the error pipe: the command could not join a session keyring of its own.
pub(crate) const KEYRING_SKIPPED: u32 = 0x6b65;
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;

pub(crate) struct Plan {
    /// Write these maps from inside (single-id mapping).
    pub own_maps: Option<OwnMaps>,
    /// Block until the caller has written the maps (range mapping).
    pub wait_for_maps: bool,
    pub mounts: Option<std::sync::Arc<MountPlan>>,
    pub hostname: Option<Vec<u8>>,
    pub loopback_up: bool,
    /// Make the network namespace in a helper task (not in the clone flags).
    pub net_apart: Option<NetApart>,
    pub unshare_time: bool,
    /// The sandbox has its own PID namespace (init is pid 1).
    pub pid_ns: bool,
    pub die_with_parent: bool,
    /// The wall-clock deadline on CLOCK_MONOTONIC, ns (0: none), at which the init ends the
    /// sandbox itself: set just before the clone, from the start's own clock reading.
    pub deadline_ns: u64,
    pub cwd: Option<CString>,
    /// setresgid/setresuid to these before exec, when they differ from the init's.
    pub switch_ids: Option<(u32, u32)>,
    /// Clear supplementary groups (allowed only when setgroups is not denied).
    pub clear_groups: bool,
    /// Resource limits set on the command: (resource, soft, hard).
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Capabilities kept (bit mask) and the highest capability number of this kernel.
    pub caps: Option<(u64, u32)>,
    /// Landlock ruleset to apply.
    pub landlock: Option<crate::landlock::Plan>,
    /// seccomp program loaded last before execve.
    pub seccomp: Option<Vec<libc::sock_filter>>,
    /// Join a new, empty session keyring before execve.
    pub session_keyring: bool,
    pub exec: Exec,
    /// Sources of the command's fds 0, 1, 2, as numbered in the caller.
    pub stdio: [c_int; 3],
    /// Descriptor ranges to close right after clone: everything but stdio sources and our pipes.
    pub close_ranges: Vec<(u32, u32)>,
    pub err_w: c_int,
    pub ctl_r: c_int,
    pub status_w: c_int,
    /// Set for a start without copying the caller; None: fork the command and stay its init.
    pub small_init: Option<SmallInit>,
    /// Execute this file (the pool's agent) instead of looking up argv\[0\].
    pub exec_fd: Option<c_int>,
    /// The mount tree is a copy of a template's ([`crate::mounts::Build`]): the process that
    /// started us entered its namespaces first ([`Enter`]).
    pub in_template: bool,
    /// Where clone3 is refused, clone cannot start the sandbox in its cgroup: its first process
    /// moves itself there before anything else.
    pub join_cgroup: Option<JoinCgroup>,
    /// The lock on a persistent upper (-1 for none): kept by the init until the sandbox ends.
    pub upper_lock: c_int,
    /// Set the sandbox's own user namespace's `max_user_namespaces` to 0.
    pub deny_nested_userns: bool,
}

/// A cgroup the sandbox's first process moves itself into (see [`Plan::join_cgroup`]).
pub(crate) struct JoinCgroup {
    /// The cgroup's `cgroup.procs`, opened for writing by the caller: the kernel judges the move
    /// by the credentials and cgroup namespace of whoever opened it.
    pub procs: c_int,
    /// Then make a cgroup namespace, which the clone could not (it would be rooted where the
    /// process was born, not in its cgroup).
    pub namespace: bool,
}

/// How a start from a template begins: a first process, sharing the caller's memory and
/// descriptors, enters the template's user and mount namespaces (a multi-threaded caller cannot)
/// and starts the sandbox's first process from there, as a child of the caller
/// (`CLONE_PARENT`), with the clone arguments the caller prepared, then exits at once. The
/// sandbox's new user namespace is nested in the template's, which maps the caller's ids only,
/// and its new mount namespace is a copy of the template's tree. The caller waits on `started`,
/// which the kernel clears when the sandbox's first process executes or exits
/// (`CLONE_CHILD_CLEARTID`), or this process when it fails: one wake-up, as for a start without a
/// template.
pub(crate) struct Enter {
    pub user: c_int,
    pub mnt: c_int,
    /// A network namespace made ahead for this start in the template's user namespace
    /// ([`net_ahead_entry`]), joined before the clone (which then makes none); -1 for none.
    pub net: c_int,
    /// For the sandbox's first process, as prepared by the caller.
    pub args: *mut sys::CloneArgs,
    /// The address of the `(&Plan, &mut [c_int])` for [`entry`].
    pub target: usize,
    /// Nonzero until the sandbox's first process has executed (or exited), or this one failed.
    pub started: AtomicU32,
    /// The sandbox's pid, or 0 on failure ...
    pub pid: AtomicI32,
    /// ... with this step and errno.
    pub step: AtomicU32,
    pub errno: AtomicI32,
}

/// Entry of the first process of a start from a template; `arg` is the address of an [`Enter`].
///
/// # Safety
/// Only as the entry of a `CLONE_VM | CLONE_FILES` start whose caller keeps the Enter, the clone
/// arguments, the plan and the stacks alive until this process and the sandbox's first process
/// are done with them.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe extern "C" fn enter_entry(arg: usize) -> ! {
    // SAFETY: the caller passed a live Enter and is suspended until we exit.
    let e = unsafe { &*(arg as *const Enter) };
    let outcome = sys::setns(e.user, libc::CLONE_NEWUSER)
        .map_err(|errno| (Step::EnterTemplate, errno))
        .and_then(|()| match e.net {
            -1 => Ok(()),
            // Only from the template's user namespace, which owns it.
            net => {
                sys::setns(net, libc::CLONE_NEWNET).map_err(|errno| (Step::NetworkNamespace, errno))
            }
        })
        .and_then(|()| {
            sys::setns(e.mnt, libc::CLONE_NEWNS).map_err(|errno| (Step::EnterTemplate, errno))
        })
        .and_then(|()| {
            // SAFETY: the caller prepared the arguments (stack included) for entry, as for a
            // start without a template, and waits for the child's exec.
            unsafe { sys::clone_on_stack(&mut *e.args, entry, e.target) }
                .map_err(|errno| (Step::Clone, errno))
        });
    match outcome {
        Ok(pid) => e.pid.store(pid, Ordering::SeqCst),
        Err((step, errno)) => {
            e.step.store(step as u32, Ordering::SeqCst);
            e.errno.store(errno as i32, Ordering::SeqCst);
            e.started.store(0, Ordering::SeqCst);
            sys::futex_wake(&e.started);
        }
    }
    sys::exit(0)
}

/// Entry of a sandbox started with `sys::clone_on_stack`: `arg` is the address of the caller's
/// `(&Plan, &mut [c_int])`, valid until this process execs or exits (the caller waits).
///
/// # Safety
/// Only as the entry of such a start.
pub(crate) unsafe extern "C" fn entry(arg: usize) -> ! {
    // SAFETY: the caller passed the address of a live (&Plan, &mut [c_int]) and is suspended
    // (CLONE_VFORK) until this process execs or exits.
    let (plan, scratch) = unsafe { &mut *(arg as *mut (&Plan, &mut [c_int])) };
    run(plan, scratch)
}

/// Entry of the command process of a small-init start; `arg` is the address of the Plan.
unsafe extern "C" fn command_entry(arg: usize) -> ! {
    // SAFETY: the setup process passed its Plan and waits (CLONE_VFORK) until we exec or exit.
    let plan = unsafe { &*(arg as *const Plan) };
    exec_command(plan)
}

/// The sandbox's first process. Never returns.
pub(crate) fn run(plan: &Plan, scratch: &mut [c_int]) -> ! {
    match setup(plan, scratch) {
        Ok(()) => {}
        Err(f) => fail(plan.err_w, f, EXIT_SETUP_FAILED),
    }
    if let Some(small) = &plan.small_init {
        start_small(plan, small);
    }
    // The command is a child of this process, which stays behind as its init (woken by its
    // SIGCHLD). The init, a copy of the caller's memory, is not dumpable before the command
    // exists: the command (whose exec makes it dumpable again) can then neither trace it nor
    // open its /proc files, even keeping CAP_SYS_PTRACE and without Landlock. (This memory is
    // our own copy: a start sharing the caller's never comes here.)
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0);
    // SAFETY: we are single-threaded (a fresh clone) and the child only makes raw syscalls.
    match unsafe { sys::raw_fork(libc::SIGCHLD) } {
        Ok(0) => exec_command(plan),
        Ok(pid) => {
            sys::close(plan.err_w);
            init::run(plan, pid)
        }
        Err(e) => fail(plan.err_w, failure(Step::ForkCommand, e), EXIT_SETUP_FAILED),
    }
}

/// The small-init start after setup: the command starts on its own stack in this process's memory
/// (we wait until it has executed), then this process becomes the tiny init by executing it.
#[cfg(all(target_arch = "x86_64", rsandbox_small_init))]
fn start_small(plan: &Plan, small: &SmallInit) -> ! {
    let mut args = sys::CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_CHILD_CLEARTID) as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: small.cmd_stack.0,
        stack_size: small.cmd_stack.1,
        child_tid: small.cmd_gone as u64,
        ..Default::default()
    };
    // SAFETY: `cmd_gone` points at a word the caller keeps alive with the stacks.
    let cmd_gone = unsafe { &*small.cmd_gone };
    cmd_gone.store(1, Ordering::SeqCst);
    // The network helper took pid 2 of a new PID namespace: the command gets it back, as it
    // would without the helper (the number is free again once the helper is reaped).
    let pid_two: [libc::pid_t; 1] = [2];
    if plan.pid_ns && plan.net_apart.is_some() {
        args.set_tid = pid_two.as_ptr() as u64;
        args.set_tid_size = 1;
    }
    // SAFETY: cmd_stack was mapped by the caller for this; command_entry only makes raw syscalls
    // on the Plan and ends in execve or _exit, and we wait for that (CLONE_VFORK).
    let mut started =
        unsafe { sys::clone_on_stack(&mut args, command_entry, plan as *const Plan as usize) };
    if started.is_err() && args.set_tid != 0 {
        // A kernel that will not choose the number (EEXIST, EPERM, EINVAL): any number will do.
        args.set_tid = 0;
        args.set_tid_size = 0;
        // SAFETY: as above.
        started =
            unsafe { sys::clone_on_stack(&mut args, command_entry, plan as *const Plan as usize) };
    }
    let pid = match started {
        Ok(pid) => pid,
        Err(e) => {
            // No command process: nothing will clear the word.
            cmd_gone.store(0, Ordering::SeqCst);
            fail(plan.err_w, failure(Step::ForkCommand, e), EXIT_SETUP_FAILED)
        }
    };
    // The command has executed, or failed and said why on the error pipe; the init reaps it.
    let _ = sys::write_all(plan.status_w, &pid.to_ne_bytes());
    let ctl = plan.ctl_r;
    let kept = sys::keep_on_exec(plan.status_w)
        .and_then(|()| match ctl {
            -1 => Ok(()),
            fd => sys::keep_on_exec(fd),
        })
        .and_then(|()| match plan.upper_lock {
            -1 => Ok(()),
            fd => sys::keep_on_exec(fd),
        });
    if let Err(e) = kept {
        let _ = sys::kill(pid, libc::SIGKILL);
        fail(plan.err_w, failure(Step::ExecInit, e), EXIT_SETUP_FAILED);
    }
    // rsandbox-init STATUS_FD CTL_FD MAIN_PID PID_NS DIE_WITH_PARENT DEADLINE_NS, formatted
    // without allocating.
    let mut text = [[0u8; 24]; 6];
    let values = [
        plan.status_w.into(),
        ctl.into(),
        pid.into(),
        plan.pid_ns.into(),
        plan.die_with_parent.into(),
        i64::try_from(plan.deadline_ns).unwrap_or(i64::MAX),
    ];
    for (buf, value) in text.iter_mut().zip(values) {
        decimal(value, buf);
    }
    let argv = [
        c"rsandbox-init".as_ptr(),
        text[0].as_ptr().cast(),
        text[1].as_ptr().cast(),
        text[2].as_ptr().cast(),
        text[3].as_ptr().cast(),
        text[4].as_ptr().cast(),
        text[5].as_ptr().cast(),
        std::ptr::null(),
    ];
    let envp = [std::ptr::null()];
    let e = sys::execve_fd(small.init_fd, &argv, &envp);
    let _ = sys::kill(pid, libc::SIGKILL);
    fail(plan.err_w, failure(Step::ExecInit, e), EXIT_SETUP_FAILED)
}

#[cfg(not(all(target_arch = "x86_64", rsandbox_small_init)))]
fn start_small(_plan: &Plan, _small: &SmallInit) {}

/// Writes `value` in decimal, NUL-terminated, into `buf`.
fn decimal(value: i64, buf: &mut [u8; 24]) {
    let mut digits = [0u8; 20];
    let mut n = value.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut at = 0;
    if value < 0 {
        buf[0] = b'-';
        at = 1;
    }
    for i in 0..len {
        buf[at + i] = digits[len - 1 - i];
    }
    buf[at + len] = 0;
}

fn failure(step: Step, errno: Errno) -> Failure {
    Failure {
        step: step as u32,
        errno: errno as i32,
        index: u32::MAX,
        detail: 0,
    }
}

fn fail(err_w: c_int, f: Failure, code: c_int) -> ! {
    let _ = sys::write_all(err_w, &f.to_bytes());
    sys::exit(code)
}

/// The setup sequence, in order. Each step says why it is where it is.
fn setup(plan: &Plan, scratch: &mut [c_int]) -> Result<(), Failure> {
    let step = |s: Step| move |e: Errno| failure(s, e);

    // Block every signal first: the caller's handlers must never run in this copy of it. The init
    // reads signals from a signalfd; the command restores an empty mask before exec.
    sys::sigmask_set(&sys::sigset_full(), None).map_err(step(Step::InitSignals))?;
    // A caller ignoring SIGCHLD would have the kernel reap our children as they exit (the network
    // helper, the command) and send no SIGCHLD, and the init would keep that through its exec:
    // it would never learn the command's status.
    sys::default_action(libc::SIGCHLD).map_err(step(Step::InitSignals))?;

    // Into the cgroup first, so that all but these few instructions run there (and before the
    // descriptor is closed below).
    if let Some(join) = &plan.join_cgroup {
        sys::write_all(join.procs, b"0").map_err(step(Step::JoinCgroup))?;
        if join.namespace {
            sys::unshare(libc::CLONE_NEWCGROUP).map_err(step(Step::JoinCgroup))?;
        }
    }

    // Drop every descriptor we did not ask for before anything else, so other sandboxes spawned
    // concurrently by other threads see their pipes close promptly.
    for &(first, last) in &plan.close_ranges {
        sys::close_range(first, last, 0).map_err(step(Step::CloseFds))?;
    }

    // In a copy of a template's tree, /proc is the template's: ours goes on first, as writing
    // the id maps goes through /proc/self (mounting it creates no file).
    if plan.in_template {
        if let Some(mounts) = &plan.mounts {
            mounts
                .build(crate::mounts::Build::OwnProc, scratch, &|_| {
                    Err(Errno::ENOTSUP)
                })
                .map_err(build_failure)?;
        }
    }

    // Id maps come before anything that creates files: the kernel refuses unmapped owners.
    if let Some(maps) = &plan.own_maps {
        // A process that changed its ids without exec is not dumpable and may not open its own
        // /proc files; the flag only affects this process, which is about to exec anyway.
        if sys::prctl(libc::PR_GET_DUMPABLE, 0) == Ok(0) {
            sys::prctl(libc::PR_SET_DUMPABLE, 1).map_err(step(Step::UidMap))?;
        }
        sys::write_file(c"/proc/self/setgroups", b"deny").map_err(step(Step::DenySetgroups))?;
        sys::write_file(c"/proc/self/gid_map", &maps.gid_map).map_err(step(Step::GidMap))?;
        sys::write_file(c"/proc/self/uid_map", &maps.uid_map).map_err(step(Step::UidMap))?;
    } else if plan.wait_for_maps {
        let mut byte = [0u8; 1];
        match sys::read_full(plan.ctl_r, &mut byte) {
            Ok(1) => {}
            // The caller could not install the maps and went away: it reports why.
            Ok(_) => sys::exit(EXIT_SETUP_FAILED),
            Err(e) => return Err(failure(Step::WaitForMaps, e)),
        }
    }

    // Nested user namespaces, where no seccomp rule refuses them: the limit of this (the
    // sandbox's own) user namespace, which /proc/sys shows to its members.
    if plan.deny_nested_userns {
        sys::write_file(c"/proc/sys/user/max_user_namespaces", b"0")
            .map_err(step(Step::DenyNestedUserns))?;
    }

    // The network namespace is made beside the mount tree, and always joined before going on:
    // the helper shares this memory and must be gone before anything can release it.
    let net = NetResult::default();
    let helper = match &plan.net_apart {
        Some(apart) => Some(start_net_helper(apart, &net).map_err(step(Step::NetworkNamespace))?),
        None => None,
    };
    let built = build_filesystem(plan, scratch);
    if let Some(pid) = helper {
        let net_fd = join_net_helper(pid, &net);
        built?;
        let net_fd = net_fd?;
        let entered = sys::setns(net_fd, libc::CLONE_NEWNET);
        sys::close(net_fd);
        entered.map_err(step(Step::NetworkNamespace))?;
    } else {
        built?;
    }
    if let Some(name) = &plan.hostname {
        sys::sethostname(name).map_err(step(Step::SetHostname))?;
    }
    if plan.loopback_up {
        sys::loopback_up().map_err(step(Step::LoopbackUp))?;
    }
    // A time namespace applies to children only: enter it before forking the command.
    if plan.unshare_time {
        sys::unshare(libc::CLONE_NEWTIME).map_err(step(Step::UnshareTime))?;
    }
    Ok(())
}

/// The mount tree, when the sandbox has its own.
fn build_filesystem(plan: &Plan, scratch: &mut [c_int]) -> Result<(), Failure> {
    if let Some(mounts) = &plan.mounts {
        // When kernel overlayfs refuses, the caller starts fuse-overlayfs for us (outside our
        // PID namespace) and answers on the control pipe.
        let request_fuse = |refused: Errno| -> Result<(), Errno> {
            let f = Failure {
                step: crate::overlay::FUSE_REQUEST,
                errno: refused as i32,
                index: 0,
                detail: 0,
            };
            sys::write_all(plan.err_w, &f.to_bytes())?;
            let mut answer = [0u8; 1];
            match sys::read_full(plan.ctl_r, &mut answer)? {
                1 if answer[0] == CTL_GO_ON => Ok(()),
                _ => Err(Errno::ECANCELED),
            }
        };
        let how = if plan.in_template {
            crate::mounts::Build::OwnRest
        } else {
            crate::mounts::Build::Full
        };
        mounts
            .build(how, scratch, &request_fuse)
            .map_err(build_failure)?;
    }
    Ok(())
}

fn build_failure((step, errno, index): crate::mounts::BuildError) -> Failure {
    Failure {
        step: step as u32,
        errno: errno as i32,
        index,
        detail: 0,
    }
}

/// What the network helper hands back: a descriptor of the new namespace, or the step and errno
/// that stopped it. Written by the helper before it exits, read after it has been reaped.
#[derive(Default)]
pub(crate) struct NetResult {
    pub fd: AtomicI32,
    pub step: AtomicU32,
    pub errno: AtomicI32,
}

/// What [`net_ahead_entry`] works on: the template's user namespace, and where the result goes.
pub(crate) struct NetAhead {
    pub user: c_int,
    pub result: NetResult,
}

/// Entry of a task that makes a network namespace ahead of a start from a template
/// (`crate::template`): it joins the template's user namespace, where it holds every capability,
/// and makes a namespace with loopback up there, whose descriptor lands in the caller's table
/// (`CLONE_FILES`). A start joins it from the same user namespace (see [`Enter`]); the sandbox's
/// own user namespace is nested in the template's, so nothing in the sandbox holds a capability
/// over it.
///
/// # Safety
/// Only as the entry of a `CLONE_VM | CLONE_FILES | CLONE_VFORK` task whose caller keeps the
/// NetAhead `arg` points to alive until the task has exited.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe extern "C" fn net_ahead_entry(arg: usize) -> ! {
    // SAFETY: the caller passed a live NetAhead and is suspended (CLONE_VFORK) until we exit.
    let ahead = unsafe { &*(arg as *const NetAhead) };
    let made = sys::setns(ahead.user, libc::CLONE_NEWUSER)
        .map_err(|e| (Step::EnterTemplate, e as i32))
        .and_then(|()| make_net_namespace());
    match made {
        Ok(fd) => ahead.result.fd.store(fd, Ordering::SeqCst),
        Err((step, errno)) => {
            ahead.result.step.store(step as u32, Ordering::SeqCst);
            ahead.result.errno.store(errno, Ordering::SeqCst);
        }
    }
    sys::exit(0)
}

#[cfg(target_arch = "x86_64")]
fn start_net_helper(apart: &NetApart, net: &NetResult) -> Result<libc::pid_t, Errno> {
    net.fd.store(-1, Ordering::SeqCst);
    let mut args = sys::CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_FILES | libc::CLONE_CHILD_CLEARTID) as u64,
        child_tid: apart.gone as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: apart.stack.0,
        stack_size: apart.stack.1,
        ..Default::default()
    };
    // Nonzero until the kernel clears it at the helper's exit; the caller waits for zero.
    // SAFETY: `gone` points at a word the caller keeps alive with the stacks.
    unsafe { &*apart.gone }.store(1, Ordering::SeqCst);
    // SAFETY: the stack is the command's, unused until the helper is reaped; net_helper makes only
    // raw syscalls that leave errno alone, writes only `net`, and ends in exit.
    let r = unsafe { sys::clone_on_stack(&mut args, net_helper, net as *const NetResult as usize) };
    if r.is_err() {
        // SAFETY: as above.
        unsafe { &*apart.gone }.store(0, Ordering::SeqCst);
    }
    r
}

#[cfg(not(target_arch = "x86_64"))]
fn start_net_helper(_apart: &NetApart, _net: &NetResult) -> Result<libc::pid_t, Errno> {
    Err(Errno::ENOSYS)
}

/// Waits for the helper to exit (it always does, promptly); returns the namespace's descriptor.
fn join_net_helper(pid: libc::pid_t, net: &NetResult) -> Result<c_int, Failure> {
    loop {
        match sys::waitpid_exited(pid) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(failure(Step::NetworkNamespace, e)),
            Ok(()) => break,
        }
    }
    let fd = net.fd.load(Ordering::SeqCst);
    if fd >= 0 {
        return Ok(fd);
    }
    let step = Step::from_u32(net.step.load(Ordering::SeqCst)).unwrap_or(Step::NetworkNamespace);
    Err(Failure {
        step: step as u32,
        errno: net.errno.load(Ordering::SeqCst),
        index: u32::MAX,
        detail: 0,
    })
}

/// The helper task: a new network namespace with loopback up, handed back as a descriptor.
/// Runs beside the sandbox's first process in the same memory and thread-local storage, so it
/// makes only errno-free raw syscalls.
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn net_helper(arg: usize) -> ! {
    // SAFETY: the first process passed its NetResult, which outlives us (it reaps us first).
    let net = unsafe { &*(arg as *const NetResult) };
    match make_net_namespace() {
        Ok(fd) => net.fd.store(fd, Ordering::SeqCst),
        Err((step, errno)) => {
            net.step.store(step as u32, Ordering::SeqCst);
            net.errno.store(errno, Ordering::SeqCst);
        }
    }
    // SAFETY: exit ends only this task.
    unsafe { sys::syscall_raw(libc::SYS_exit, 0, 0, 0) };
    // exit does not return.
    loop {
        std::hint::spin_loop();
    }
}

#[cfg(target_arch = "x86_64")]
fn make_net_namespace() -> Result<c_int, (Step, i32)> {
    /// A raw call with integer arguments only, its failure tagged with `step`.
    fn call(step: Step, nr: libc::c_long, a: usize, b: usize) -> Result<usize, (Step, i32)> {
        // SAFETY: only the integer-argument calls below come here (unshare, socket, the
        // SIOCGSKNS ioctl, close), none of which reads or writes memory of ours.
        let ret = unsafe { sys::syscall_raw(nr, a, b, 0) };
        if ret < 0 {
            Err((step, -ret as i32))
        } else {
            Ok(ret as usize)
        }
    }
    /// An interface ioctl on `req`, its failure tagged as bringing up loopback.
    fn ifreq_ioctl(
        sock: usize,
        request: libc::c_ulong,
        req: &mut libc::ifreq,
    ) -> Result<(), (Step, i32)> {
        let at: *mut libc::ifreq = req;
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write only the ifreq `at` points to.
        let ret = unsafe { sys::syscall_raw(libc::SYS_ioctl, sock, request as usize, at as usize) };
        if ret < 0 {
            Err((Step::LoopbackUp, -ret as i32))
        } else {
            Ok(())
        }
    }
    call(
        Step::NetworkNamespace,
        libc::SYS_unshare,
        libc::CLONE_NEWNET as usize,
        0,
    )?;
    let sock = call(
        Step::LoopbackUp,
        libc::SYS_socket,
        libc::AF_INET as usize,
        (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as usize,
    )?;
    let result = (|| {
        // SAFETY: ifreq is plain data, valid all zero.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        ifreq_ioctl(sock, libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: ifru_flags is the union member SIOCGIFFLAGS just filled.
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        ifreq_ioctl(sock, libc::SIOCSIFFLAGS, &mut req)?;
        // The socket's network namespace, as a descriptor (close-on-exec).
        let fd = call(
            Step::NetworkNamespace,
            libc::SYS_ioctl,
            sock,
            libc::SIOCGSKNS as usize,
        )?;
        Ok(fd as c_int)
    })();
    let _ = call(Step::NetworkNamespace, libc::SYS_close, sock, 0);
    result
}

/// The command process: per-process setup, then execve. Never returns.
fn exec_command(plan: &Plan) -> ! {
    let err_w = plan.err_w;
    let die = |step: Step, e: Errno| fail(err_w, failure(step, e), EXIT_SETUP_FAILED);

    // Its own session: no controlling terminal shared with the caller, and a process group the
    // init can signal as a whole when there is no PID namespace.
    if let Err(e) = sys::setsid() {
        die(Step::Setsid, e);
    }
    // Move the stdio sources out of the way first, so that installing one cannot clobber another.
    let mut moved = [0; 3];
    for (i, &src) in plan.stdio.iter().enumerate() {
        moved[i] = match sys::dup_above(src, 3) {
            Ok(fd) => fd,
            Err(e) => die(Step::Stdio, e),
        };
    }
    for (i, &fd) in moved.iter().enumerate() {
        if let Err(e) = sys::dup_to(fd, i as c_int) {
            die(Step::Stdio, e);
        }
    }
    if let Some(cwd) = &plan.cwd {
        if let Err(e) = sys::chdir(cwd) {
            die(Step::Chdir, e);
        }
    }
    // The bounding set is dropped while the process still has CAP_SETPCAP, before any id change.
    if let Some((keep, last)) = plan.caps {
        for cap in 0..=last {
            if keep & (1 << cap) == 0 {
                match sys::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) {
                    Ok(_) | Err(Errno::EINVAL) => {}
                    Err(e) => {
                        die(Step::Capabilities, e);
                    }
                }
            }
        }
        if keep != 0 && plan.switch_ids.is_some() {
            if let Err(e) = sys::prctl(libc::PR_SET_KEEPCAPS, 1) {
                die(Step::Capabilities, e);
            }
        }
    }
    if let Some((uid, gid)) = plan.switch_ids {
        if plan.clear_groups {
            if let Err(e) = sys::setgroups_empty() {
                die(Step::SetGid, e);
            }
        }
        if let Err(e) = sys::setresgid(gid) {
            die(Step::SetGid, e);
        }
        if let Err(e) = sys::setresuid(uid) {
            die(Step::SetUid, e);
        }
    }
    if let Some((keep, _)) = plan.caps {
        if let Err(e) = sys::set_capabilities(keep) {
            die(Step::Capabilities, e);
        }
    }
    for (i, &(resource, soft, hard)) in plan.rlimits.iter().enumerate() {
        if let Err(e) = sys::set_rlimit(resource, soft, hard) {
            let f = Failure {
                index: i as u32,
                ..failure(Step::Rlimits, e)
            };
            fail(err_w, f, EXIT_SETUP_FAILED);
        }
    }
    if let Err(e) = sys::reset_signal_dispositions() {
        die(Step::ResetSignals, e);
    }
    if let Err(e) = sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1) {
        die(Step::NoNewPrivs, e);
    }
    if plan.session_keyring {
        // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL): an anonymous keyring, no memory read.
        let joined = unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_JOIN_SESSION_KEYRING,
                std::ptr::null::<libc::c_char>(),
            )
        };
        if joined < 0 {
            // Told to the caller (the report says the keyring is shared), not fatal: a user's
            // key quota may be spent by other sandboxes.
            let note = Failure {
                step: KEYRING_SKIPPED,
                errno: Errno::last() as i32,
                index: u32::MAX,
                detail: 0,
            };
            let _ = sys::write_all(err_w, &note.to_bytes());
        }
    }
    // Landlock needs no_new_privs (set above) and the final tree (built by the init).
    if let Some(ll) = &plan.landlock {
        // A rule left out is told to the caller, for the report.
        let mut skipped = |index: usize, e: Errno| {
            let note = Failure {
                step: crate::landlock::RULE_SKIPPED,
                errno: e as i32,
                index: index as u32,
                detail: 0,
            };
            let _ = sys::write_all(err_w, &note.to_bytes());
        };
        if let Err(e) = crate::landlock::apply(ll, &mut skipped) {
            die(Step::Landlock, e);
        }
    }
    // Everything above 2 closes at exec, including the error pipe, whose closing tells the caller
    // that exec succeeded.
    if let Err(e) = sys::close_range(3, u32::MAX, sys::CLOSE_RANGE_CLOEXEC) {
        die(Step::CloseFds, e);
    }
    if let Err(e) = sys::sigmask_set(&sys::sigset_empty(), None) {
        die(Step::ResetSignals, e);
    }
    // The filter goes on last: everything above may use syscalls the profile refuses.
    if let Some(program) = &plan.seccomp {
        if let Err(e) = crate::seccomp::load(program) {
            die(Step::Seccomp, e);
        }
    }

    // PATH search, execvp-style: keep going past missing entries, remember refusals.
    let mut refused: Option<Errno> = None;
    let mut last = Errno::ENOENT;
    // A file that is there but gives ENOENT: its interpreter (#! line, ELF loader) is not.
    let mut no_interpreter = false;
    if let Some(fd) = plan.exec_fd {
        refused = Some(sys::execve_fd(
            fd,
            &plan.exec.argv_ptrs,
            &plan.exec.envp_ptrs,
        ));
    }
    for path in plan
        .exec
        .candidates
        .iter()
        .filter(|_| plan.exec_fd.is_none())
    {
        let e = sys::execve(path, &plan.exec.argv_ptrs, &plan.exec.envp_ptrs);
        match e {
            Errno::ENOENT if sys::exists(path) => no_interpreter = true,
            Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG => last = e,
            Errno::EACCES | Errno::EPERM | Errno::EISDIR => {
                refused.get_or_insert(e);
            }
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    let (errno, code) = match refused {
        Some(e) => (e, EXIT_NOT_EXECUTABLE),
        None => (last, EXIT_NOT_FOUND),
    };
    let detail = match (refused, no_interpreter) {
        (Some(_), _) => EXEC_REFUSED,
        (None, true) => EXEC_NO_INTERPRETER,
        (None, false) => EXEC_NOT_FOUND,
    };
    let errno = if detail == EXEC_NO_INTERPRETER {
        Errno::ENOENT
    } else {
        errno
    };
    let f = Failure {
        step: Step::Exec as u32,
        errno: errno as i32,
        index: u32::MAX,
        detail,
    };
    fail(err_w, f, code)
}
