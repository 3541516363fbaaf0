//! The one place raw system calls are made.
//!
//! Every function here is a thin, allocation-free wrapper: it takes C strings and integers prepared
//! by the caller and returns the raw result or the errno. The sandbox's child side runs between
//! clone and execve in a copy of a possibly multi-threaded process, so nothing here may allocate,
//! lock, or touch thread-local state other than errno.

#![allow(clippy::missing_safety_doc)]

use std::ffi::CStr;
use std::os::raw::{c_int, c_long, c_uint, c_void};
use std::sync::atomic::{AtomicU8, Ordering};

use nix::errno::Errno;

/// Result of a raw call: the value, or the errno it failed with.
pub type SysResult<T> = Result<T, Errno>;

// Constants of the new mount API and friends, from <linux/mount.h>, <linux/openat2.h>, <linux/sched.h>.
pub const OPEN_TREE_CLONE: c_uint = 1;
pub const AT_RECURSIVE: c_uint = 0x8000;
pub const MOVE_MOUNT_F_EMPTY_PATH: c_uint = 0x04;
pub const MOVE_MOUNT_T_EMPTY_PATH: c_uint = 0x40;
pub const FSOPEN_CLOEXEC: c_uint = 0x01;
pub const FSCONFIG_SET_FLAG: c_uint = 0;
pub const FSCONFIG_SET_STRING: c_uint = 1;
pub const FSCONFIG_CMD_CREATE: c_uint = 6;
pub const FSMOUNT_CLOEXEC: c_uint = 0x01;
pub const MOUNT_ATTR_RDONLY: u64 = 0x01;
pub const MOUNT_ATTR_NOSUID: u64 = 0x02;
pub const MOUNT_ATTR_NODEV: u64 = 0x04;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x08;
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_IN_ROOT: u64 = 0x10;
pub const CLONE_PIDFD: u64 = 0x1000;
pub const CLOSE_RANGE_CLOEXEC: c_uint = 1 << 2;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `struct clone_args` (version 2 layout, 88 bytes, with the cgroup field).
#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Sets the effective, permitted and inheritable sets to `keep` and makes the ambient set exactly
/// `keep` (so kept capabilities survive execve for a non-zero uid).
pub fn set_capabilities(keep: u64) -> SysResult<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: c_int,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let (lo, hi) = (keep as u32, (keep >> 32) as u32);
    let data = [
        Data {
            effective: lo,
            permitted: lo,
            inheritable: lo,
        },
        Data {
            effective: hi,
            permitted: hi,
            inheritable: hi,
        },
    ];
    // SAFETY: header and data are valid v3 capability structs.
    check(unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) })?;
    prctl_ambient(libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0)?;
    for cap in 0..64 {
        if keep & (1 << cap) != 0 {
            prctl_ambient(libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong, cap)?;
        }
    }
    Ok(())
}

fn prctl_ambient(op: libc::c_ulong, cap: libc::c_ulong) -> SysResult<()> {
    // SAFETY: PR_CAP_AMBIENT takes integer arguments only.
    check_int(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            op,
            cap,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

/// How many CPUs this thread may run on (its affinity mask), with one system call; None when the
/// mask does not fit a `cpu_set_t` (over 1024 CPUs).
pub fn cpus_allowed() -> Option<usize> {
    // SAFETY: cpu_set_t is plain data and the kernel writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        usize::try_from(libc::CPU_COUNT(&set))
            .ok()
            .filter(|&n| n > 0)
    }
}

/// Resource numbers as prlimit64 takes them. The C libraries type them differently (glibc an
/// unsigned enum, musl an int); the kernel's numbers are the same.
#[allow(clippy::unnecessary_cast)] // already u32 with glibc
pub mod rlimit {
    pub const AS: u32 = libc::RLIMIT_AS as u32;
    pub const CORE: u32 = libc::RLIMIT_CORE as u32;
    pub const CPU: u32 = libc::RLIMIT_CPU as u32;
    pub const FSIZE: u32 = libc::RLIMIT_FSIZE as u32;
    pub const MEMLOCK: u32 = libc::RLIMIT_MEMLOCK as u32;
    pub const NOFILE: u32 = libc::RLIMIT_NOFILE as u32;
    pub const NPROC: u32 = libc::RLIMIT_NPROC as u32;
    pub const STACK: u32 = libc::RLIMIT_STACK as u32;
}

/// The soft limit of one resource of the calling process.
pub fn soft_rlimit(resource: u32) -> SysResult<u64> {
    rlimit_pair(resource).map(|(soft, _)| soft)
}

/// The hard limit of one resource of the calling process.
pub fn hard_rlimit(resource: u32) -> SysResult<u64> {
    rlimit_pair(resource).map(|(_, hard)| hard)
}

fn rlimit_pair(resource: u32) -> SysResult<(u64, u64)> {
    let mut lim = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the new-limit pointer is null; lim is a valid out-pointer; pid 0 is the caller.
    check(unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            resource,
            std::ptr::null::<libc::rlimit64>(),
            &mut lim as *mut libc::rlimit64,
        )
    })?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets one resource limit of the calling process (raw prlimit64, no libc state).
pub fn set_rlimit(resource: u32, soft: u64, hard: u64) -> SysResult<()> {
    let lim = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: lim is a valid rlimit64; old-limit pointer is null; pid 0 is the caller.
    check(unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            resource,
            &lim as *const libc::rlimit64,
            std::ptr::null_mut::<libc::rlimit64>(),
        )
    })
    .map(drop)
}

#[inline]
fn check(ret: c_long) -> SysResult<c_long> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

#[inline]
pub fn check_int(ret: c_int) -> SysResult<c_int> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// Retries a call interrupted by a signal.
#[inline]
pub fn retry<T>(mut f: impl FnMut() -> SysResult<T>) -> SysResult<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// Whether clone3 is there to use: not yet known, yes, no.
static CLONE3: AtomicU8 = AtomicU8::new(CLONE3_UNKNOWN);
const CLONE3_UNKNOWN: u8 = 0;
const CLONE3_YES: u8 = 1;
const CLONE3_NO: u8 = 2;

/// Whether clone3 can be used here. Some seccomp policies refuse it, with ENOSYS (the default
/// profiles of Docker and Podman for a container without CAP_SYS_ADMIN, systemd's
/// `RestrictNamespaces=`, gVisor) or EPERM (older Docker), because a filter cannot read the
/// flags clone3 keeps in memory: they expect callers to use clone, whose flags it can read. Asked
/// once, without making a process: a kernel that has clone3 and lets it through refuses a call
/// with no arguments with EINVAL. The answer is kept, so children (which may only make raw
/// system calls) read it without asking again; a clone3 refused later (a filter the program
/// installed since) asks again ([`clone3_recheck`]).
pub fn clone3_usable() -> bool {
    match CLONE3.load(Ordering::Relaxed) {
        CLONE3_YES => true,
        CLONE3_NO => false,
        _ => clone3_recheck(),
    }
}

/// Asks again whether clone3 can be used, and keeps the answer. A refusal is for good: a seccomp
/// filter, once installed, stays.
pub fn clone3_recheck() -> bool {
    if CLONE3.load(Ordering::Relaxed) == CLONE3_NO {
        return false;
    }
    let usable = clone3_probe() == Err(Errno::EINVAL);
    let answer = if usable { CLONE3_YES } else { CLONE3_NO };
    CLONE3.store(answer, Ordering::Relaxed);
    usable
}

/// Whether a clone3 that failed with `ret` (a negative errno) was refused as a call, not for
/// what it asked: then the start goes on with clone.
fn clone3_refused(ret: isize) -> bool {
    (ret == -(libc::ENOSYS as isize) || ret == -(libc::EPERM as isize)) && !clone3_recheck()
}

/// clone3 with a null pointer and size 0: what the kernel, or a filter, answers (EINVAL where
/// clone3 is there and let through).
#[cfg(target_arch = "x86_64")]
pub fn clone3_probe() -> SysResult<()> {
    // SAFETY: clone3 with a null pointer and size 0 creates nothing: the kernel (or a filter)
    // refuses it before reading anything. Raw: errno is not touched.
    let ret = unsafe { syscall_raw(libc::SYS_clone3, 0, 0, 0) };
    if ret < 0 {
        Err(Errno::from_raw(-ret as i32))
    } else {
        Ok(())
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn clone3_probe() -> SysResult<()> {
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) }).map(drop)
}

/// What clone(2) takes for `args`: the flags word (exit signal in its low byte) and the pointer
/// its third argument takes (where CLONE_PIDFD or CLONE_PARENT_SETTID store). None where only
/// clone3 can do what `args` asks: flags above 32 bits (CLONE_INTO_CGROUP), chosen pids
/// (set_tid), an exit signal past the low byte, or both a pidfd and a parent tid.
fn clone_flags(args: &CloneArgs) -> Option<(u64, u64)> {
    let pidfd = args.flags & CLONE_PIDFD != 0;
    let settid = args.flags & libc::CLONE_PARENT_SETTID as u64 != 0;
    if args.flags >> 32 != 0
        || args.flags & libc::CSIGNAL as u64 != 0
        || args.exit_signal > libc::CSIGNAL as u64
        || args.set_tid != 0
        || (pidfd && settid)
    {
        return None;
    }
    let ptr = if pidfd { args.pidfd } else { args.parent_tid };
    Some((args.flags | args.exit_signal, ptr))
}

/// Creates a process with fork semantics (no new stack: the child continues on a copy of the
/// caller's), with clone3, or with clone where clone3 is refused ([`clone3_usable`]) and `args`
/// asks nothing clone cannot do (else ENOSYS). Returns 0 in the child and the child's pid in the
/// caller.
///
/// # Safety
/// The child runs in a copy of a possibly multi-threaded process: until it execs or exits it may
/// only make async-signal-safe calls and must never return into code that expects the caller's
/// threads to exist. `args` must not ask for `CLONE_VM` (the child would share a stack).
pub unsafe fn clone(args: &mut CloneArgs) -> SysResult<libc::pid_t> {
    if clone3_usable() {
        // SAFETY: args points to a valid clone_args of the size passed; the caller upholds the
        // post-fork restrictions stated above.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        let failed = if ret < 0 {
            -(Errno::last() as isize)
        } else {
            0
        };
        if !clone3_refused(failed) {
            return check(ret).map(|p| p as libc::pid_t);
        }
    }
    let ret = {
        let Some((flags, ptr)) = clone_flags(args) else {
            return Err(Errno::ENOSYS);
        };
        // clone(flags, no new stack, parent tid, child tid, tls) on x86_64; other architectures
        // order the last two otherwise.
        let (fourth, fifth) = if cfg!(target_arch = "x86_64") {
            (args.child_tid, args.tls)
        } else if cfg!(target_arch = "aarch64") {
            (args.tls, args.child_tid)
        } else {
            return Err(Errno::ENOSYS);
        };
        // SAFETY: the pointers are the caller's, valid as for clone3; the caller upholds the
        // post-fork restrictions.
        unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags as c_long,
                0 as c_long,
                ptr as c_long,
                fourth as c_long,
                fifth as c_long,
            )
        }
    };
    check(ret).map(|p| p as libc::pid_t)
}

/// Creates a process on a stack of its own, with clone3, or with clone where clone3 is refused
/// (as [`clone`]): the child calls `entry(arg)` there (it must never return) and the caller gets
/// the child's pid. Made for `CLONE_VM | CLONE_VFORK` starts, where the child runs in the
/// caller's memory while the calling thread waits for it to exec or exit; the caller's page
/// tables are not copied, so the cost does not grow with the caller's size.
///
/// # Safety
/// `args.stack`/`args.stack_size` must describe writable memory that outlives the child's use of
/// it, 16-byte aligned at its top. With `CLONE_VM` the child shares the caller's memory (and the
/// calling thread's thread-local storage): it may only make raw syscalls and
/// async-signal-safe calls on memory prepared before, and must end in execve or _exit.
#[cfg(target_arch = "x86_64")]
pub unsafe fn clone_on_stack(
    args: &mut CloneArgs,
    entry: unsafe extern "C" fn(usize) -> !,
    arg: usize,
) -> SysResult<libc::pid_t> {
    let mut ret: isize = -(libc::ENOSYS as isize);
    if clone3_usable() {
        let size = std::mem::size_of::<CloneArgs>() as u64;
        // SAFETY: the caller vouches for the stack and for what the child does.
        ret = unsafe {
            clone_call(
                libc::SYS_clone3,
                [args as *mut CloneArgs as u64, size, 0, 0, 0],
                entry,
                arg,
            )
        };
    }
    if ret < 0 && clone3_refused(ret) {
        let Some((flags, ptr)) = clone_flags(args) else {
            return Err(Errno::ENOSYS);
        };
        // clone takes the stack's top, where clone3 takes its bottom and size.
        let top = args.stack.wrapping_add(args.stack_size);
        // SAFETY: as above; clone(flags, top, ptr, child_tid, tls) in x86_64's order.
        ret = unsafe {
            clone_call(
                libc::SYS_clone,
                [flags, top, ptr, args.child_tid, args.tls],
                entry,
                arg,
            )
        };
    }
    if ret < 0 {
        Err(Errno::from_raw(-ret as i32))
    } else {
        Ok(ret as libc::pid_t)
    }
}

/// System call `nr` (clone3 or clone) with arguments `a`, whose child calls `entry(arg)` on the
/// stack the kernel switched it to; returns the kernel's answer in the caller (negative errno on
/// failure).
///
/// # Safety
/// As for [`clone_on_stack`]: the arguments name a stack the child may use, and `entry` never
/// returns.
#[cfg(target_arch = "x86_64")]
unsafe fn clone_call(
    nr: c_long,
    a: [u64; 5],
    entry: unsafe extern "C" fn(usize) -> !,
    arg: usize,
) -> isize {
    let ret: isize;
    // SAFETY: the caller vouches for the arguments. In the child the kernel has switched to the
    // new stack: clear the frame pointer and call entry(arg), which never returns (ud2 guards
    // the impossible). r12/r13 are callee-saved, so they reach the child unchanged; syscall
    // clobbers rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r12") arg,
            in("r13") entry as usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// A system call that returns the kernel's answer as is (negative errno on failure) and never
/// touches `errno`: for a task that runs beside another one sharing this thread's memory and
/// thread-local storage, where a libc wrapper's write to `errno` would race with the other's.
///
/// # Safety
/// The arguments must be valid for system call `nr`, as for `libc::syscall`.
#[cfg(target_arch = "x86_64")]
pub unsafe fn syscall_raw(nr: c_long, a: usize, b: usize, c: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller vouches for the arguments; syscall clobbers only rax, rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// execveat(fd, "", argv, envp, AT_EMPTY_PATH): executes the file `fd` refers to. Returns only on
/// failure.
pub fn execve_fd(fd: c_int, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> Errno {
    // SAFETY: argv and envp are NULL-terminated arrays of pointers to NUL-terminated strings that
    // outlive the call; the path is the empty C string.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd as c_long,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH as c_long,
        )
    };
    Errno::last()
}

/// setns(fd, nstype): enters the namespace `fd` refers to.
pub fn setns(fd: c_int, nstype: c_int) -> SysResult<()> {
    // SAFETY: setns with integer arguments.
    check_int(unsafe { libc::setns(fd, nstype) }).map(drop)
}

/// Waits until the child `pid` has exited and reaps it (`__WALL`: whatever its exit signal).
pub fn waitpid_exited(pid: libc::pid_t) -> SysResult<()> {
    let mut status: c_int = 0;
    // SAFETY: waitpid writes only the status integer.
    check_int(unsafe { libc::waitpid(pid, &mut status, libc::__WALL) }).map(drop)
}

/// Clears FD_CLOEXEC, so `fd` survives an exec.
pub fn keep_on_exec(fd: c_int) -> SysResult<()> {
    // SAFETY: F_SETFD with an integer argument.
    check_int(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop)
}

/// A plain fork through the raw clone syscall: unlike libc's fork(), it runs no atfork handlers and
/// takes no libc locks, so it is safe in a child of a multi-threaded process. The child raises
/// `exit_signal` at its exit; with 0 it raises none, and only a wait with `__WALL` (or
/// `__WCLONE`) sees it: neither a host ignoring SIGCHLD nor one reaping every child from a
/// SIGCHLD handler takes its status away.
///
/// # Safety
/// Same contract as [`clone`].
pub unsafe fn raw_fork(exit_signal: c_int) -> SysResult<libc::pid_t> {
    // SAFETY: clone with only an exit signal and null pointers is fork(); the caller upholds the
    // post-fork restrictions.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            exit_signal as c_long,
            0 as c_long,
            0 as c_long,
            0 as c_long,
            0 as c_long,
        )
    };
    check(ret).map(|p| p as libc::pid_t)
}

pub fn open_tree(dirfd: c_int, path: &CStr, flags: c_uint) -> SysResult<c_int> {
    // SAFETY: path is a valid NUL-terminated string for the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, dirfd, path.as_ptr(), flags) };
    check(ret).map(|fd| fd as c_int)
}

pub fn move_mount(
    from_dirfd: c_int,
    from_path: &CStr,
    to_dirfd: c_int,
    to_path: &CStr,
    flags: c_uint,
) -> SysResult<()> {
    // SAFETY: both paths are valid NUL-terminated strings.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from_dirfd,
            from_path.as_ptr(),
            to_dirfd,
            to_path.as_ptr(),
            flags,
        )
    };
    check(ret).map(drop)
}

/// Sets (and clears) mount attributes; `AT_RECURSIVE` in `flags` applies them to the whole tree.
pub fn mount_setattr(
    dirfd: c_int,
    path: &CStr,
    flags: c_uint,
    set: u64,
    clear: u64,
    propagation: u64,
) -> SysResult<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation,
        userns_fd: 0,
    };
    // SAFETY: path is NUL-terminated; attr is a valid mount_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

pub fn fsopen(fstype: &CStr) -> SysResult<c_int> {
    // SAFETY: fstype is NUL-terminated.
    let ret = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
    check(ret).map(|fd| fd as c_int)
}

pub fn fsconfig_string(fsfd: c_int, key: &CStr, value: &CStr) -> SysResult<()> {
    // SAFETY: key and value are NUL-terminated.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fsfd,
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    };
    check(ret).map(drop)
}

pub fn fsconfig_flag(fsfd: c_int, key: &CStr) -> SysResult<()> {
    // SAFETY: key is NUL-terminated; value must be NULL for a flag.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fsfd,
            FSCONFIG_SET_FLAG,
            key.as_ptr(),
            std::ptr::null::<c_void>(),
            0,
        )
    };
    check(ret).map(drop)
}

pub fn fsconfig_create(fsfd: c_int) -> SysResult<()> {
    // SAFETY: FSCONFIG_CMD_CREATE takes no pointers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fsfd,
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<c_void>(),
            std::ptr::null::<c_void>(),
            0,
        )
    };
    check(ret).map(drop)
}

pub fn fsmount(fsfd: c_int, attr_flags: u64) -> SysResult<c_int> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_fsmount, fsfd, FSMOUNT_CLOEXEC, attr_flags) };
    check(ret).map(|fd| fd as c_int)
}

/// openat2 with `RESOLVE_IN_ROOT`: `path` is resolved as if `root` were `/`, so symlinks inside a
/// rootfs can never lead outside it.
pub fn open_in_root(root: c_int, path: &CStr, flags: c_int) -> SysResult<c_int> {
    openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
}

/// openat2 with close-on-exec added to `flags`.
fn openat2(dir: c_int, path: &CStr, flags: c_int, resolve: u64) -> SysResult<c_int> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: path is NUL-terminated; how is a valid open_how of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    check(ret).map(|fd| fd as c_int)
}

/// CLOCK_MONOTONIC in nanoseconds (the clock `Instant` reads, and the inits' timers use).
pub fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data the call fills.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// A timerfd (close-on-exec) that becomes readable at `at_ns` on CLOCK_MONOTONIC.
pub fn timer_at(at_ns: u64) -> SysResult<c_int> {
    // SAFETY: plain syscalls; the itimerspec is fully initialised.
    unsafe {
        let fd = check_int(libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_CLOEXEC,
        ))?;
        let when = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        if let Err(e) = check_int(libc::timerfd_settime(
            fd,
            libc::TFD_TIMER_ABSTIME,
            &when,
            std::ptr::null_mut(),
        )) {
            close(fd);
            return Err(e);
        }
        Ok(fd)
    }
}

/// Whether `fd` is the root directory of a proc filesystem.
pub fn is_proc_root(fd: c_int) -> bool {
    const PROC_SUPER_MAGIC: u64 = 0x9fa0;
    const PROC_ROOT_INO: u64 = 1;
    // SAFETY: both are plain data the calls fill.
    let (mut fs, mut st): (libc::statfs, libc::stat) = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; the buffers are valid for the calls.
    let ok = unsafe { libc::fstatfs(fd, &mut fs) == 0 && libc::fstat(fd, &mut st) == 0 };
    // (f_type is signed in glibc's struct, unsigned in musl's.)
    ok && fs.f_type as u64 == PROC_SUPER_MAGIC && st.st_ino == PROC_ROOT_INO
}

/// openat2 that follows no symbolic link at all and stays beneath `dir`: `path` names what is
/// there, under its own name, or the call fails (ELOOP for a link on the way).
pub fn open_beneath_no_links(dir: c_int, path: &CStr, flags: c_int) -> SysResult<c_int> {
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    const RESOLVE_BENEATH: u64 = 0x08;
    openat2(
        dir,
        path,
        flags | libc::O_NOFOLLOW,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )
}

pub fn mkdirat(dirfd: c_int, name: &CStr, mode: libc::mode_t) -> SysResult<()> {
    // SAFETY: name is NUL-terminated.
    check_int(unsafe { libc::mkdirat(dirfd, name.as_ptr(), mode) }).map(drop)
}

pub fn symlinkat(target: &CStr, dirfd: c_int, name: &CStr) -> SysResult<()> {
    // SAFETY: both strings are NUL-terminated.
    check_int(unsafe { libc::symlinkat(target.as_ptr(), dirfd, name.as_ptr()) }).map(drop)
}

/// Creates an empty regular file to serve as a mount point.
pub fn mkfileat(dirfd: c_int, name: &CStr) -> SysResult<()> {
    // SAFETY: name is NUL-terminated.
    let fd = check_int(unsafe {
        libc::openat(
            dirfd,
            name.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        )
    })?;
    close(fd);
    Ok(())
}

pub fn openat(dirfd: c_int, path: &CStr, flags: c_int) -> SysResult<c_int> {
    // SAFETY: path is NUL-terminated.
    check_int(unsafe { libc::openat(dirfd, path.as_ptr(), flags | libc::O_CLOEXEC) })
}

pub fn close(fd: c_int) {
    // SAFETY: closing an fd we own; errors from close are not actionable here.
    unsafe { libc::close(fd) };
}

pub fn close_range(first: c_uint, last: c_uint, flags: c_uint) -> SysResult<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) }).map(drop)
}

pub fn dup2(old: c_int, new: c_int) -> SysResult<()> {
    // SAFETY: plain integer arguments.
    check_int(unsafe { libc::dup2(old, new) }).map(drop)
}

/// dup3 refuses old == new; this treats that as "clear close-on-exec".
pub fn dup_to(old: c_int, new: c_int) -> SysResult<()> {
    if old == new {
        // SAFETY: F_SETFD on an fd we own.
        check_int(unsafe { libc::fcntl(old, libc::F_SETFD, 0) }).map(drop)
    } else {
        dup2(old, new)
    }
}

/// Moves `fd` to a number ≥ `min`, closing-on-exec, and returns the new number.
pub fn dup_above(fd: c_int, min: c_int) -> SysResult<c_int> {
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own.
    check_int(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

pub fn write_all(fd: c_int, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        let n = retry(|| {
            // SAFETY: buf is a valid slice for its length.
            let ret = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
            check(ret as c_long)
        })?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// write(2) to a pipe whose reader may be gone, without SIGPIPE: a C host keeps that signal's
/// default action, which ends the whole process, and a library's write must never do so. SIGPIPE
/// is blocked in this thread for the call, and one the call raised is taken before the thread's
/// mask is restored (one already pending for another reason is left as it was).
pub fn write_nosigpipe(fd: c_int, buf: &[u8]) -> SysResult<usize> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut pipe_only: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: every set is a valid sigset_t; pthread_sigmask changes this thread's mask only.
    let was_pending = unsafe {
        libc::sigemptyset(&mut pipe_only);
        libc::sigaddset(&mut pipe_only, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe_only, &mut old);
        libc::sigemptyset(&mut pending);
        libc::sigpending(&mut pending);
        libc::sigismember(&pending, libc::SIGPIPE) == 1
    };
    let res = retry(|| {
        // SAFETY: buf is a valid slice for its length.
        let ret = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        check(ret as c_long)
    });
    if res == Err(Errno::EPIPE) && !was_pending {
        let now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: takes the SIGPIPE just raised at this thread (pending, so at once).
        unsafe { libc::sigtimedwait(&pipe_only, std::ptr::null_mut(), &now) };
    }
    // SAFETY: old is the mask read above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    res.map(|n| n as usize)
}

/// [`write_all`] without SIGPIPE ([`write_nosigpipe`]).
pub fn write_all_nosigpipe(fd: c_int, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        match write_nosigpipe(fd, buf)? {
            0 => return Err(Errno::EIO),
            n => buf = &buf[n..],
        }
    }
    Ok(())
}

/// Reads until `buf` is full or end of file; returns the bytes read.
pub fn read_full(fd: c_int, buf: &mut [u8]) -> SysResult<usize> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        let n = retry(|| {
            // SAFETY: rest is a valid mutable slice for its length.
            let ret = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
            check(ret as c_long)
        })?;
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    Ok(got)
}

/// Writes `data` to the file at `path` (used for /proc/self/{uid_map,gid_map,setgroups}).
pub fn write_file(path: &CStr, data: &[u8]) -> SysResult<()> {
    let fd = openat(libc::AT_FDCWD, path, libc::O_WRONLY)?;
    let res = write_all(fd, data);
    close(fd);
    res
}

pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
) -> SysResult<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: all strings are NUL-terminated or NULL; data is NULL.
    check_int(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            std::ptr::null(),
        )
    })
    .map(drop)
}

pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> SysResult<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

pub fn umount2(target: &CStr, flags: c_int) -> SysResult<()> {
    // SAFETY: target is NUL-terminated.
    check_int(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

pub fn fchdir(fd: c_int) -> SysResult<()> {
    // SAFETY: plain integer argument.
    check_int(unsafe { libc::fchdir(fd) }).map(drop)
}

pub fn chdir(path: &CStr) -> SysResult<()> {
    // SAFETY: path is NUL-terminated.
    check_int(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

pub fn sethostname(name: &[u8]) -> SysResult<()> {
    // SAFETY: name is a valid slice for its length.
    check_int(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

pub fn unshare(flags: c_int) -> SysResult<()> {
    // SAFETY: plain integer argument.
    check_int(unsafe { libc::unshare(flags) }).map(drop)
}

pub fn prctl(option: c_int, arg2: libc::c_ulong) -> SysResult<c_int> {
    // SAFETY: prctl options used here take integer arguments only.
    check_int(unsafe { libc::prctl(option, arg2, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) })
}

/// Wakes every waiter on `word` (FUTEX_WAKE).
pub fn futex_wake(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live word; it reads nothing else.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// Sleeps while `word` holds `value` (FUTEX_WAIT); returns on a wake-up, a signal or a change.
pub fn futex_wait(word: &std::sync::atomic::AtomicU32, value: u32) {
    // SAFETY: FUTEX_WAIT on a live word without a timeout; it only sleeps.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            value,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

/// This process's peak resident set size in bytes (0 if unknown).
pub fn self_peak_rss() -> u64 {
    // SAFETY: usage is a valid out-pointer for getrusage.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0 {
            (usage.ru_maxrss.max(0) as u64) * 1024
        } else {
            0
        }
    }
}

/// This process's resident set size now, in bytes (0 if unknown).
pub fn self_rss() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    pages * page
}

pub fn setsid() -> SysResult<()> {
    // SAFETY: no arguments.
    check_int(unsafe { libc::setsid() }).map(drop)
}

pub fn setresuid(uid: u32) -> SysResult<()> {
    // SAFETY: raw syscall so that only this thread's copy changes (the child is single-threaded).
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

pub fn setresgid(gid: u32) -> SysResult<()> {
    // SAFETY: as for setresuid.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
}

pub fn setgroups_empty() -> SysResult<()> {
    // SAFETY: size 0 with a null list clears the supplementary groups.
    check(unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) })
        .map(drop)
}

pub fn getuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getuid() }
}

pub fn getgid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getgid() }
}

/// execve; returns only on failure.
pub fn execve(path: &CStr, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> Errno {
    // SAFETY: path is NUL-terminated; argv and envp are NULL-terminated arrays of pointers to
    // NUL-terminated strings that outlive the call (they are built before clone).
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Errno::last()
}

/// Whether `path` names something (following links), without opening it.
pub fn exists(path: &CStr) -> bool {
    // SAFETY: path is NUL-terminated; faccessat reads it only.
    unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), libc::F_OK, 0) == 0 }
}

/// Lets another runnable task on this CPU go first.
pub fn yield_now() {
    // SAFETY: no arguments; it cannot fail on Linux.
    unsafe { libc::sched_yield() };
}

pub fn exit(code: c_int) -> ! {
    // SAFETY: _exit runs no atexit handlers and flushes nothing: right for a forked child.
    unsafe { libc::_exit(code) }
}

pub fn kill(pid: libc::pid_t, sig: c_int) -> SysResult<()> {
    // SAFETY: plain integer arguments.
    check_int(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Blocks every signal (or restores `old`) for the calling thread.
pub fn sigmask_set(set: &libc::sigset_t, old: Option<&mut libc::sigset_t>) -> SysResult<()> {
    let oldp = old.map_or(std::ptr::null_mut(), |o| o as *mut libc::sigset_t);
    // SAFETY: set points to a valid sigset; oldp is null or valid.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, set, oldp) };
    if ret != 0 {
        Err(Errno::from_raw(ret))
    } else {
        Ok(())
    }
}

pub fn sigset_full() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

pub fn sigset_empty() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// Resets every catchable signal to its default action (ignored signals survive execve otherwise).
pub fn reset_signal_dispositions() -> SysResult<()> {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        match default_action(sig) {
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sets one signal's action to the default (raw rt_sigaction: no libc state, and none of libc's
/// handling of its reserved signals).
pub fn default_action(sig: c_int) -> SysResult<()> {
    // SAFETY: a zeroed sigaction with SIG_DFL is valid; the old action is not asked for.
    check(unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = libc::SIG_DFL;
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &act as *const libc::sigaction,
            std::ptr::null_mut::<libc::sigaction>(),
            8usize,
        )
    })
    .map(drop)
}

pub fn signalfd(set: &libc::sigset_t) -> SysResult<c_int> {
    // SAFETY: set is a valid sigset.
    check_int(unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC) })
}

/// Waits for any child without blocking; returns (pid, status) or None when nothing is waitable.
pub fn reap_any() -> Option<(libc::pid_t, c_int)> {
    let mut status: c_int = 0;
    // SAFETY: status is a valid out-pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid > 0 {
        Some((pid, status))
    } else {
        None
    }
}

/// Waits for any child to end (blocking); its pid and wait status.
pub fn wait_any() -> SysResult<(libc::pid_t, c_int)> {
    let mut status: c_int = 0;
    // SAFETY: status is a valid out-pointer.
    let pid = retry(|| check_int(unsafe { libc::waitpid(-1, &mut status, 0) }))?;
    Ok((pid, status))
}

pub fn poll(fds: &mut [libc::pollfd], timeout_ms: c_int) -> SysResult<c_int> {
    // SAFETY: fds is a valid slice of pollfd.
    check_int(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) })
}

/// Brings up the loopback interface of the current network namespace.
pub fn loopback_up() -> SysResult<()> {
    // SAFETY: socket() with constant arguments.
    let sock = check_int(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: ifreq is plain data; the name "lo" fits; the ioctls read and write only the struct.
    let res = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            Err(Errno::last())
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &mut req) < 0 {
                Err(Errno::last())
            } else {
                Ok(())
            }
        }
    };
    close(sock);
    res
}

/// pidfd_send_signal.
pub fn pidfd_send_signal(pidfd: c_int, sig: c_int) -> SysResult<()> {
    // SAFETY: null siginfo means "as kill() would send it".
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// waitid(P_PIDFD) through the raw syscall, which also fills the resource usage of the waited
/// process and its waited-for descendants. `__WALL` is added: a sandbox's first process raises no
/// signal at its exit (see `sandbox::launch`), which makes it a "clone" child to wait.
pub fn waitid_pidfd(
    pidfd: c_int,
    options: c_int,
    info: &mut libc::siginfo_t,
    usage: &mut libc::rusage,
) -> SysResult<()> {
    const P_PIDFD: c_int = 3;
    // SAFETY: info and usage are valid out-pointers.
    check(unsafe {
        libc::syscall(
            libc::SYS_waitid,
            P_PIDFD,
            pidfd,
            info as *mut libc::siginfo_t,
            options | libc::__WALL,
            usage as *mut libc::rusage,
        )
    })
    .map(drop)
}
