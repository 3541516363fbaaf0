//! Mount-tree templates (see [`crate::mounts::Build`]): the part of a sandbox's tree that is the
//! same for every start, built once per process in namespaces of its own and kept as two
//! descriptors (its user and mount namespaces). A start enters them (child::Enter) and takes a
//! copy of the tree with its own new namespaces.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::raw::c_int;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use nix::errno::Errno;

use crate::error::Step;
use crate::forksafe::PerProcess;
use crate::mounts::{Build, MountPlan};
use crate::sys;

/// A built template: its namespaces, held open.
pub(crate) struct Template {
    /// Descriptors of its user and mount namespaces.
    pub user: c_int,
    pub mnt: c_int,
    /// What the two descriptors are (device and inode), to notice a caller that closed them and
    /// reused the numbers.
    ids: [(u64, u64); 2],
    /// Network namespaces made ahead for its starts ([`Template::take_net`]).
    nets: Mutex<Nets>,
}

/// A template's network namespaces made ahead: each new, with loopback up, owned by the template's
/// user namespace and never entered by anything before the start that takes it.
#[derive(Default)]
struct Nets {
    /// Descriptors, each with its device and inode (as the template's own).
    ready: Vec<(c_int, (u64, u64))>,
    /// The process they were made for: a child forked from it holds copies of the descriptors,
    /// and must not join a namespace its parent may give to a sandbox of its own.
    pid: u32,
    /// Why none can be made here (not tried again).
    refused: Option<String>,
}

/// How many network namespaces a template keeps made ahead: one for the next start, one for a
/// start beside it.
const NETS_AHEAD: usize = 2;

impl Template {
    fn intact(&self) -> bool {
        [identity(self.user), identity(self.mnt)] == [Some(self.ids[0]), Some(self.ids[1])]
    }

    /// A network namespace made ahead for a start from this template, if one is ready: a new one
    /// with loopback up, owned by the template's user namespace (so that the start can join it
    /// from there, and nothing in the sandbox, whose user namespace is nested in the template's,
    /// holds a capability over it). Another is made in the background in its place: the start
    /// does not wait for the kernel's work of making one (~0.4 ms here).
    pub fn take_net(self: &Arc<Self>) -> Option<OwnedFd> {
        let taken = {
            let mut nets = self.nets.lock().unwrap_or_else(|e| e.into_inner());
            if nets.refused.is_some() {
                return None;
            }
            if nets.pid != std::process::id() {
                // Forked: the copies are dropped (the parent's stay open) and this process
                // makes its own.
                for (fd, id) in std::mem::take(&mut nets.ready) {
                    if identity(fd) == Some(id) {
                        sys::close(fd);
                    }
                }
                nets.pid = std::process::id();
            }
            // A caller that closes descriptors it does not know may have closed (and reused)
            // some: those are forgotten, not closed.
            let mut taken = None;
            while let Some((fd, id)) = nets.ready.pop() {
                if identity(fd) == Some(id) {
                    taken = Some(fd);
                    break;
                }
            }
            taken
        };
        refill(self);
        // SAFETY: a descriptor the refill made and nothing else owns (checked above).
        taken.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Makes network namespaces until NETS_AHEAD are ready (the refill thread).
    fn fill_nets(&self) {
        loop {
            {
                let nets = self.nets.lock().unwrap_or_else(|e| e.into_inner());
                if nets.refused.is_some() || nets.ready.len() >= NETS_AHEAD {
                    return;
                }
            }
            let made = make_net(self.user);
            let mut nets = self.nets.lock().unwrap_or_else(|e| e.into_inner());
            match made {
                Ok(fd) => match identity(fd.as_raw_fd()) {
                    Some(id) => nets.ready.push((fd.into_raw_fd(), id)),
                    None => nets.refused = Some("its descriptor cannot be inspected".into()),
                },
                Err(why) => nets.refused = Some(why),
            }
        }
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        // Closed only while still ours: numbers the caller closed and reused are its own now.
        if self.intact() {
            sys::close(self.user);
            sys::close(self.mnt);
        }
        let nets = self.nets.get_mut().unwrap_or_else(|e| e.into_inner());
        for &(fd, id) in &nets.ready {
            if identity(fd) == Some(id) {
                sys::close(fd);
            }
        }
    }
}

/// Templates whose network namespaces made ahead are to be topped up, and the thread that does
/// it: the process it was started in, and whether it could be (None: not started yet).
struct Refill {
    queue: Vec<Weak<Template>>,
    thread: Option<(u32, bool)>,
}

static REFILL: PerProcess<Refill> = PerProcess::new(|| Refill {
    queue: Vec::new(),
    thread: None,
});

/// Asks the refill thread to top up `template`'s network namespaces.
fn refill(template: &Arc<Template>) {
    let mut r = REFILL.lock();
    let pid = std::process::id();
    // A forked child has no copy of its parent's thread: it starts its own.
    if r.thread.is_none_or(|(started_in, _)| started_in != pid) {
        let started = std::thread::Builder::new()
            .name("rsandbox-netns".into())
            .spawn(refill_thread)
            .is_ok();
        r.thread = Some((pid, started));
        r.queue.clear();
    }
    if r.thread != Some((pid, true)) {
        return;
    }
    let weak = Arc::downgrade(template);
    if !r.queue.iter().any(|w| w.ptr_eq(&weak)) {
        r.queue.push(weak);
    }
    REFILL.notify_one();
}

/// The refill thread: lives as long as the process, asleep unless a start has taken a namespace.
fn refill_thread() {
    loop {
        let next = {
            let mut r = REFILL.lock();
            loop {
                match r.queue.pop() {
                    Some(w) => break w,
                    None => r = REFILL.wait(r),
                }
            }
        };
        // A template dropped meanwhile (its mount table changed) needs none.
        if let Some(template) = next.upgrade() {
            template.fill_nets();
        }
    }
}

/// Runs `entry(arg)` as a task sharing our memory and descriptor table (`CLONE_FILES`: what it
/// opens is ours), on a stack of `stack_len` bytes, in new namespaces `namespaces` (clone flags),
/// and returns once it has exited and been reaped. It raises no signal at its exit: only we reap
/// it (by pid, __WALL).
///
/// # Safety
/// `entry` must make only raw syscalls on memory that outlives the call, and end in exit.
#[cfg(target_arch = "x86_64")]
unsafe fn run_task(
    namespaces: c_int,
    stack_len: usize,
    entry: unsafe extern "C" fn(usize) -> !,
    arg: usize,
) -> Result<(), Errno> {
    // 16-byte aligned memory for the task's stack.
    let mut stack = vec![0u128; stack_len / 16];
    let mut args = sys::CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | namespaces) as u64,
        exit_signal: 0,
        stack: stack.as_mut_ptr() as u64,
        stack_size: (stack.len() * 16) as u64,
        ..Default::default()
    };
    // SAFETY: the stack is ours and outlives the task (CLONE_VFORK: this thread waits until it
    // has exited); what `entry` does is the caller's promise.
    let pid = unsafe { sys::clone_on_stack(&mut args, entry, arg) }?;
    let _ = sys::retry(|| sys::waitpid_exited(pid));
    Ok(())
}

/// A new network namespace with loopback up, made in the user namespace `user` by a task that
/// joins it (child::net_ahead_entry). The descriptor is close-on-exec.
#[cfg(target_arch = "x86_64")]
fn make_net(user: c_int) -> Result<OwnedFd, String> {
    use crate::child::{NetAhead, NetResult};
    let ahead = NetAhead {
        user,
        result: NetResult::default(),
    };
    ahead.result.fd.store(-1, Ordering::SeqCst);
    // SAFETY: net_ahead_entry makes only raw syscalls on `ahead` (alive until the task has
    // exited) and exits.
    unsafe {
        run_task(
            0,
            16 * 1024,
            crate::child::net_ahead_entry,
            &ahead as *const NetAhead as usize,
        )
    }
    .map_err(|e| format!("clone for a network namespace made ahead: {e}"))?;
    let fd = ahead.result.fd.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: a descriptor the task opened in our table, owned by nothing else.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let step =
        Step::from_u32(ahead.result.step.load(Ordering::SeqCst)).unwrap_or(Step::NetworkNamespace);
    let errno = Errno::from_raw(ahead.result.errno.load(Ordering::SeqCst));
    Err(format!(
        "making a network namespace ahead failed at step {step}: {errno}"
    ))
}

#[cfg(not(target_arch = "x86_64"))]
fn make_net(_user: c_int) -> Result<OwnedFd, String> {
    Err("network namespaces are made ahead on x86_64 only".into())
}

/// Device and inode of what `fd` refers to.
fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: st is a valid out-pointer; fstat writes only it.
    stat_id(|st| unsafe { libc::fstat(fd, st) })
}

/// Device and inode from a stat-family call that fills `st` and returns 0 on success.
fn stat_id(call: impl FnOnce(&mut libc::stat) -> c_int) -> Option<(u64, u64)> {
    // SAFETY: stat is plain data, valid all zero.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (call(&mut st) == 0).then_some((st.st_dev, st.st_ino))
}

/// Templates of this process by key (the shared ops and the caller's ids), or why one could not
/// be built (not tried again), and a watch on the caller's mount table.
struct Cache {
    entries: Vec<(String, Result<Arc<Template>, String>)>,
    /// Keys of the kinds of tree started before: a template pays off from the second start of a
    /// kind (a process that starts one sandbox, such as the CLI, builds none).
    seen: Vec<String>,
    /// /proc/thread-self/mountinfo, opened before the templates were built: it polls ready
    /// (POLLPRI) once the caller's mount namespace has changed. A template holds the host view as
    /// it was then, so they are built again after any change (a template in use stays alive
    /// until the starts using it are done).
    mountinfo: Option<OwnedFd>,
    /// Device and inode of `mountinfo`'s file.
    mountinfo_id: Option<(u64, u64)>,
    /// Where the templates were built: the calling thread's mount namespace and root directory
    /// (a thread may have its own, or the process may have changed root since).
    place: Option<Place>,
}

/// A thread's mount namespace and root directory, as (device, inode) pairs.
type Place = [(u64, u64); 2];

/// Where the calling thread is.
fn here() -> Option<Place> {
    // SAFETY: path is NUL-terminated and st a valid out-pointer; stat writes only it.
    let id = |path: &std::ffi::CStr| stat_id(|st| unsafe { libc::stat(path.as_ptr(), st) });
    Some([id(c"/proc/thread-self/ns/mnt")?, id(c"/")?])
}

static CACHE: PerProcess<Cache> = PerProcess::new(|| Cache {
    entries: Vec::new(),
    seen: Vec::new(),
    mountinfo: None,
    mountinfo_id: None,
    place: None,
});

impl Cache {
    /// Forgets the templates if the mount table they were built from has changed, or the calling
    /// thread is somewhere else (`place`).
    fn drop_if_stale(&mut self, place: Place) {
        let changed = match &self.mountinfo {
            _ if self.place != Some(place) => true,
            // A caller that closes descriptors it does not know may have closed this one.
            Some(fd) if identity(fd.as_raw_fd()) != self.mountinfo_id => true,
            Some(fd) => {
                let mut poll = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLPRI,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, no waiting.
                let n = unsafe { libc::poll(&mut poll, 1, 0) };
                n != 0 || poll.revents != 0
            }
            None => true,
        };
        if changed {
            self.entries.clear();
            // A descriptor the caller closed and reused must not be closed again here.
            if let Some(fd) = self.mountinfo.take() {
                if identity(fd.as_raw_fd()) != self.mountinfo_id {
                    std::mem::forget(fd);
                }
            }
            self.place = Some(place);
            self.mountinfo = sys::openat(
                libc::AT_FDCWD,
                c"/proc/thread-self/mountinfo",
                libc::O_RDONLY,
            )
            .ok()
            // SAFETY: a descriptor just opened, owned by nothing else.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            self.mountinfo_id = self
                .mountinfo
                .as_ref()
                .and_then(|f| identity(f.as_raw_fd()));
        }
    }
}

/// More distinct trees than this are built in full each time.
const MAX_TEMPLATES: usize = 8;

/// The template for `plan`, built at the second start of its kind; Err says why the tree is built
/// in full instead. None where the tree cannot come from a template, or this is the first start
/// of its kind.
pub(crate) fn get(plan: &MountPlan) -> Option<Result<Arc<Template>, String>> {
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // The shared ops and the ids the template maps.
    let key = plan.template_key(&format!("{uid}:{gid}\n"))?;
    let mut cache = CACHE.lock();
    if cache.entries.is_empty() && !cache.seen.contains(&key) {
        // The first start of its kind, and no template to check: nothing to watch yet (a
        // process that starts one sandbox, such as the CLI, never looks at the mount table).
        if cache.seen.len() < 4 * MAX_TEMPLATES {
            cache.seen.push(key);
        }
        return None;
    }
    let place = here()?;
    cache.drop_if_stale(place);
    if let Some(at) = cache.entries.iter().position(|(k, _)| *k == key) {
        match &cache.entries[at].1 {
            Ok(t) if !t.intact() => {
                // Its descriptors were closed (and perhaps reused) by the caller: build anew.
                drop(cache.entries.swap_remove(at));
            }
            found => return Some(found.clone()),
        }
    }
    if !cache.seen.contains(&key) {
        if cache.seen.len() < 4 * MAX_TEMPLATES {
            cache.seen.push(key);
        }
        return None;
    }
    if cache.entries.len() >= MAX_TEMPLATES {
        return Some(Err(format!(
            "this process already holds {MAX_TEMPLATES} templates"
        )));
    }
    let built = build(plan, uid, gid).map(Arc::new);
    cache.entries.push((key, built.clone()));
    Some(built)
}

/// Builds a template of the default host view and drops it: whether this process's sandboxes
/// can start from one (for `doctor`). Says what it holds, or why not.
pub(crate) fn probe() -> Result<String, String> {
    let fs = crate::spec::Filesystem::default();
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let plan = MountPlan::new(
        &fs,
        (uid, gid),
        true,
        &crate::overlay::FuseSupport::none(),
        true,
    )
    .map_err(|e| format!("planning the default host view: {e}"))?;
    build(&plan, uid, gid)?;
    let shared = plan.template_key("").map_or(0, |k| k.lines().count());
    Ok(format!(
        "a template of the default host view builds here ({shared} shared mount steps, in user and mount namespaces of its own)"
    ))
}

/// What the builder hands back through the memory it shares with us.
struct Outcome {
    user: AtomicI32,
    mnt: AtomicI32,
    step: AtomicU32,
    errno: AtomicI32,
    index: AtomicU32,
}

struct Builder<'a> {
    plan: &'a MountPlan,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    scratch: *mut [c_int],
    out: Outcome,
}

#[cfg(target_arch = "x86_64")]
fn build(plan: &MountPlan, uid: u32, gid: u32) -> Result<Template, String> {
    // One slot per source and one for the root (see MountPlan::build): what a failure leaves
    // open there is in our descriptor table, which the builder shares.
    let mut scratch = vec![-1; plan.source_count() + 1];
    let builder = Builder {
        plan,
        uid_map: format!("{uid} {uid} 1\n").into_bytes(),
        gid_map: format!("{gid} {gid} 1\n").into_bytes(),
        scratch: scratch.as_mut_slice() as *mut [c_int],
        out: Outcome {
            user: AtomicI32::new(-1),
            mnt: AtomicI32::new(-1),
            step: AtomicU32::new(0),
            errno: AtomicI32::new(0),
            index: AtomicU32::new(u32::MAX),
        },
    };
    // A PID namespace of its own gives it a proc to mount (see mounts::Build::Template).
    let namespaces = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID;
    // SAFETY: builder_entry makes only syscalls on the Builder prepared above (alive until the
    // task has exited) and ends in _exit.
    unsafe {
        run_task(
            namespaces,
            256 * 1024,
            builder_entry,
            &builder as *const Builder as usize,
        )
    }
    .map_err(|e| format!("clone for the template's namespaces: {e}"))?;
    for fd in scratch.iter().copied().filter(|&fd| fd >= 0) {
        sys::close(fd);
    }
    let out = &builder.out;
    let (user, mnt) = (
        out.user.load(Ordering::SeqCst),
        out.mnt.load(Ordering::SeqCst),
    );
    // SAFETY: descriptors the builder opened in our table (CLONE_FILES), owned by nothing else.
    let owned = |fd: c_int| (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
    match (owned(user), owned(mnt)) {
        (Some(user), Some(mnt)) => {
            let ids = [identity(user.as_raw_fd()), identity(mnt.as_raw_fd())];
            match ids {
                [Some(u), Some(m)] => Ok(Template {
                    user: user.into_raw_fd(),
                    mnt: mnt.into_raw_fd(),
                    ids: [u, m],
                    nets: Mutex::new(Nets {
                        pid: std::process::id(),
                        ..Nets::default()
                    }),
                }),
                _ => Err("the template's namespaces cannot be inspected (fstat)".into()),
            }
        }
        _ => {
            let step = Step::from_u32(out.step.load(Ordering::SeqCst)).unwrap_or(Step::Mount);
            let errno = Errno::from_raw(out.errno.load(Ordering::SeqCst));
            let index = out.index.load(Ordering::SeqCst);
            Err(format!(
                "building the template failed at step {step} ({}): {errno}",
                plan.describe(index)
            ))
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn build(_plan: &MountPlan, _uid: u32, _gid: u32) -> Result<Template, String> {
    Err("templates are built on x86_64 only".into())
}

/// The builder: maps the caller's ids, builds the shared tree, switches to it and opens its
/// namespaces. Shares our memory and descriptors; exits when done.
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn builder_entry(arg: usize) -> ! {
    // SAFETY: the caller passed a live Builder and waits (CLONE_VFORK) until we exit.
    let b = unsafe { &*(arg as *const Builder) };
    // SAFETY: the scratch slice is the caller's, unused by it until we exit.
    let scratch = unsafe { &mut *b.scratch };
    let fail = |step: Step, e: Errno, index: u32| {
        b.out.step.store(step as u32, Ordering::SeqCst);
        b.out.errno.store(e as i32, Ordering::SeqCst);
        b.out.index.store(index, Ordering::SeqCst);
        sys::exit(1)
    };
    let mut maps = sys::write_file(c"/proc/self/setgroups", b"deny")
        .map_err(|e| (Step::DenySetgroups, e))
        .and_then(|()| {
            sys::write_file(c"/proc/self/gid_map", &b.gid_map).map_err(|e| (Step::GidMap, e))
        });
    if maps.is_ok() {
        maps = sys::write_file(c"/proc/self/uid_map", &b.uid_map).map_err(|e| (Step::UidMap, e));
    }
    if let Err((step, e)) = maps {
        fail(step, e, u32::MAX);
    }
    let no_fuse = |_: Errno| Err(Errno::ENOTSUP);
    if let Err((step, e, index)) = b.plan.build(Build::Template, scratch, &no_fuse) {
        fail(step, e, index);
    }
    for (path, slot) in [
        (c"/proc/self/ns/user", &b.out.user),
        (c"/proc/self/ns/mnt", &b.out.mnt),
    ] {
        match sys::openat(libc::AT_FDCWD, path, libc::O_RDONLY) {
            Ok(fd) => slot.store(fd, Ordering::SeqCst),
            Err(e) => fail(Step::EnterTemplate, e, u32::MAX),
        }
    }
    sys::exit(0)
}
