//! Warm pools: sandboxes started ahead of their jobs, one job each.
//!
//! A pooled sandbox is a complete sandbox of the pool's spec (namespaces, mounts, cgroup, and every
//! restriction of the command: seccomp, Landlock, capabilities, ids, no_new_privs, rlimits, its own
//! session) whose command is the agent (child/init.c, "rsandbox-agent"). The agent waits on a
//! socket for one job: the working directory, candidate paths, argv, envp, and the job's three
//! standard streams. It installs the streams and executes the job, which inherits every
//! restriction (they all survive execve), in a sandbox nobody has used before: no state passes
//! from one job to the next, since each sandbox serves one job and is then gone. A job costs one
//! message and one execve; the pool starts a replacement in the background.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::child::Failure;
use crate::error::{Error, Result};
use crate::report::Status;
use crate::sandbox::{command_env, open_stdio, spawn_agent, Child, RunResult, StdioPlan};
use crate::spec::{Process, Root, Spec, Stdio, Upper, Want};
use crate::sys;

/// Must match JOB_MAGIC in child/init.c.
const JOB_MAGIC: u32 = 0x5253_4a42;
/// The agent's receive buffer (MAX_JOB in child/init.c) less the terminating NUL.
const MAX_JOB: usize = (1 << 20) - 1;
/// The most sandboxes a pool keeps ready.
pub(crate) const MAX_SIZE: usize = 1024;
/// The agent's table of string pointers (MAX_PTRS in child/init.c).
const MAX_PTRS: usize = 16384;

/// A pool of sandboxes of one spec, started ahead of their jobs.
///
/// ```no_run
/// let spec = rsandbox::Spec::default();
/// let pool = rsandbox::Pool::new(&spec, 4)?;
/// let r = pool.run(&rsandbox::Process { args: vec!["true".into()], ..Default::default() }, None)?;
/// assert!(r.status.success());
/// # Ok::<(), rsandbox::Error>(())
/// ```
pub struct Pool {
    /// The process that made the pool: a child forked from it holds a copy, of sandboxes and a
    /// refill thread that are not its own.
    owner: crate::forksafe::Process,
    shared: Arc<Shared>,
    refill: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    spec: Spec,
    size: usize,
    /// The sandboxes hold a persistent upper, one at a time: the refill starts none while a job
    /// runs, and a job waits for a start under way instead of making its own.
    exclusive: bool,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    ready: VecDeque<Ready>,
    closing: bool,
    /// Jobs still running (dispatched, result not yet taken). While there are some, the refill
    /// waits unless the pool is empty: a start in the background would compete with them for
    /// the CPU.
    running: usize,
    /// When the last job's result came in (or its handle went away unfinished). For `SETTLE`
    /// after it the refill waits too, unless the pool is empty: the job's caller is still
    /// handling the result, and a start then competes with it for the CPU, the allocator's
    /// locks and the kernel's RCU grace periods.
    last_done: Option<Instant>,
    /// The last error of the background refill (a later start that succeeds clears it).
    failure: Option<String>,
    /// The refill is starting a sandbox.
    starting: bool,
    /// Of the running jobs, those whose result is the caller's to take later (`spawn`), and
    /// those of `run` waiting for the persistent upper of an exclusive pool.
    held: usize,
    queued: usize,
}

/// A started sandbox whose agent waits for its job.
struct Ready {
    child: Child,
    socket: OwnedFd,
    since: Instant,
}

impl Pool {
    /// Starts `size` sandboxes of `spec` (1 to 1024; its `process` is ignored: jobs bring theirs). The first
    /// starts before this returns, so a spec that cannot work fails here; the others start in a
    /// background thread, which keeps `size` sandboxes ready. While jobs are running (until
    /// their result is taken), and for 2 ms after a result while its caller handles it, it
    /// starts new ones only when none is left, so a job does not share the CPU with a start it
    /// does not need.
    ///
    /// Over a persistent upper the pool holds one sandbox, and one job runs at a time: `run`s
    /// from several threads take turns; a `spawn` while another job runs, or a `run` while a
    /// `spawn`'s result is untaken, is refused (its caller may be the one to take it).
    pub fn new(spec: &Spec, size: usize) -> Result<Pool> {
        if size == 0 || size > MAX_SIZE {
            return Err(Error::invalid(
                "pool size",
                format!("must be 1 to {MAX_SIZE}, not {size}: each ready sandbox holds processes and descriptors"),
            ));
        }
        if size > 1 && persistent_upper(spec) {
            return Err(Error::invalid(
                "pool size",
                "a persistent upper serves one sandbox at a time (each holds it until it ends): \
                 a pool over one holds one sandbox",
            ));
        }
        // The jobs' limit, which the sandboxes started ahead do not use.
        if let Some(t) = spec.timeout {
            crate::sandbox::check_seconds("timeout", t)?;
        }
        let first = start(spec)?;
        let shared = Arc::new(Shared {
            spec: spec.clone(),
            size,
            exclusive: persistent_upper(spec),
            state: Mutex::new(State {
                ready: VecDeque::from([first]),
                closing: false,
                running: 0,
                last_done: None,
                failure: None,
                starting: false,
                held: 0,
                queued: 0,
            }),
            changed: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let refill = match std::thread::Builder::new()
            .name("rsandbox-pool".into())
            .spawn(move || refill(&worker))
        {
            Ok(thread) => thread,
            Err(e) => {
                // The first sandbox never served: ended, whatever die_with_parent says.
                if let Some(first) = shared.lock().ready.pop_front() {
                    first.child.discard();
                }
                return Err(Error::io("start the pool's refill thread", None, e));
            }
        };
        Ok(Pool {
            owner: crate::forksafe::process(),
            shared,
            refill: Some(refill),
        })
    }

    /// Whether this process made the pool (not a fork of the process that did).
    fn owned(&self) -> bool {
        crate::forksafe::process() == self.owner
    }

    /// How many sandboxes are ready now (none for a forked process's copy of the pool).
    pub fn ready(&self) -> usize {
        if !self.owned() {
            return 0;
        }
        self.shared.lock().ready.len()
    }

    /// Waits up to `timeout` until the pool is full; true if it is (never for a forked
    /// process's copy of the pool).
    pub fn wait_full(&self, timeout: Duration) -> bool {
        if !self.owned() {
            return false;
        }
        // A timeout past what the clock can represent waits as long as it takes.
        let until = Instant::now().checked_add(timeout);
        let mut state = self.shared.lock();
        while state.ready.len() < self.shared.size {
            let left = until.map_or(Duration::MAX, |u| {
                u.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return false;
            }
            state = match self.shared.changed.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Runs `process` in a pooled sandbox (a fresh one started on the spot when none is ready)
    /// and returns as [`crate::spawn`] does: once the command has been executed. The pool's spec
    /// decides everything but the process; its `timeout` counts from now.
    pub fn spawn(&self, process: &Process) -> Result<Child> {
        self.spawn_with_timeout(process, self.shared.spec.timeout)
    }

    /// [`spawn`](Self::spawn) with this job's own wall-clock limit (seconds from its start)
    /// instead of the spec's.
    pub fn spawn_with_timeout(&self, process: &Process, timeout: Option<f64>) -> Result<Child> {
        self.spawn_job(process, timeout, false)
    }

    /// [`spawn_with_timeout`](Self::spawn_with_timeout); with `keep_stdin`, the caller's end of
    /// a stdin pipe stays marked in the handle for `communicate_with` (see `Child::stdin_held`).
    fn spawn_job(
        &self,
        process: &Process,
        timeout: Option<f64>,
        keep_stdin: bool,
    ) -> Result<Child> {
        if !self.owned() {
            // Its sandboxes are the other process's: a job sent to one would be run there, and
            // its result read by both.
            return Err(Error::Unsupported {
                errno: None,
                feature: "a pool copied by fork".into(),
                reason: format!(
                    "process {} made this pool; process {} is a fork of it, and the pool's \
                     sandboxes and refill thread are the other process's",
                    self.owner.0,
                    std::process::id()
                ),
                remedy: Some("make a new pool in the forked process".into()),
            });
        }
        if process.args.is_empty() {
            return Err(Error::invalid("process.args", "must name a command"));
        }
        if let Some(t) = timeout {
            crate::sandbox::check_seconds("timeout", t)?;
        }
        // The job counts as running from before a sandbox is taken (so the refill, woken by the
        // taking, already sees it) until its result is in or its handle dropped. A `run`
        // (keep_stdin) takes its result itself; a `spawn`'s is held for its caller.
        let held = !keep_stdin;
        let mut running = Some(Running::new(Arc::clone(&self.shared), held));
        // A ready sandbox may have died while it waited (killed from outside, or by its
        // cgroup): it is dropped and the next one taken; a fresh start is the last resort.
        loop {
            let taken = {
                let mut state = self.shared.lock();
                if self.shared.exclusive {
                    state = self.wait_for_upper(state, held)?;
                }
                while self.shared.exclusive && state.ready.is_empty() && state.starting {
                    state = match self.shared.changed.wait(state) {
                        Ok(s) => s,
                        Err(p) => p.into_inner(),
                    };
                }
                let taken = state.ready.pop_front();
                // Only an empty pool gives the refill something to do while a job runs.
                if state.ready.is_empty() {
                    self.shared.changed.notify_all();
                }
                taken
            };
            let (ready, waited) = match taken {
                Some(r) => (r, None),
                None => {
                    let begun = Instant::now();
                    (start(&self.shared.spec)?, Some(begun.elapsed()))
                }
            };
            let fresh = waited.is_some();
            match dispatch(&self.shared, ready, process, timeout, waited, keep_stdin)? {
                Some(mut child) => {
                    child.job = running.take();
                    return Ok(child);
                }
                None if fresh => {
                    return Err(Error::os(
                        "send the job to a new sandbox",
                        crate::Errno::EPIPE,
                    ))
                }
                None => continue,
            }
        }
    }

    /// Over a persistent upper (one job at a time), waits until the other jobs have let go of
    /// it, for a `run` (whose caller takes its result, and so is not among those waited for):
    /// `run`s from several threads go one after another. Refuses when a job whose result is
    /// held for its caller (`spawn`) is among them, as this job's caller may be the one to take
    /// it (and would wait on itself); so is a `spawn` while another job runs.
    fn wait_for_upper<'a>(
        &'a self,
        mut state: std::sync::MutexGuard<'a, State>,
        held: bool,
    ) -> Result<std::sync::MutexGuard<'a, State>> {
        let refuse = || {
            Error::invalid(
                "pool",
                "this pool's persistent upper serves one job at a time, and another job's \
                 result has not been taken yet: wait for it first",
            )
        };
        // Jobs other than this one that hold or are about to hold the upper: running, not
        // queued (this one is among the running, and among the queued while it waits).
        let others = |s: &State, queued: bool| s.running - 1 - (s.queued - usize::from(queued));
        if held {
            if state.running > 1 {
                return Err(refuse());
            }
            return Ok(state);
        }
        state.queued += 1;
        loop {
            if state.held > 0 {
                state.queued -= 1;
                return Err(refuse());
            }
            if state.closing {
                state.queued -= 1;
                return Err(Error::invalid("pool", "the pool is closing"));
            }
            if others(&state, true) == 0 {
                state.queued -= 1;
                return Ok(state);
            }
            state = match self.shared.changed.wait(state) {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
        }
    }

    /// [`spawn`](Self::spawn), then feeds `input` and collects the output as
    /// [`crate::run_with_input`] does (stdout/stderr left to inherit are captured).
    pub fn run(&self, process: &Process, input: Option<&[u8]>) -> Result<RunResult> {
        self.run_with(
            process,
            input,
            self.shared.spec.timeout,
            Duration::MAX,
            &mut || false,
        )
    }

    /// [`run`](Self::run) with this job's own timeout, calling `interrupt` at least every
    /// `every` as [`Child::communicate_with`] does (embedders use it for Ctrl-C).
    pub fn run_with(
        &self,
        process: &Process,
        input: Option<&[u8]>,
        timeout: Option<f64>,
        every: Duration,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<RunResult> {
        let mut process = process.clone();
        if process.stdout == Stdio::Inherit {
            process.stdout = Stdio::Pipe;
        }
        if process.stderr == Stdio::Inherit {
            process.stderr = Stdio::Pipe;
        }
        process.stdin = match input {
            Some(_) => Stdio::Pipe,
            None if process.stdin == Stdio::Inherit => Stdio::Null,
            None => process.stdin.clone(),
        };
        let mut child = self.spawn_job(&process, timeout, true)?;
        child.communicate_with(input, self.shared.spec.output_limit, every, interrupt)
    }
}

/// How long after a job's result the refill still waits (see `State::last_done`). On a 2-CPU
/// VM, a Python `Pool.run` of `/bin/true` took ~1.45x `subprocess.run` with the refill starting
/// at once and ~1.3x with it waiting 0.5-3 ms.
const SETTLE: Duration = Duration::from_millis(2);

/// What the refill does next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Stop,
    /// Wait until woken (the pool is full, or jobs run while a sandbox is still ready).
    Wait,
    /// Wait this long (a job's caller is still handling its result), then decide again.
    WaitFor(Duration),
    Start,
}

impl State {
    fn next(&self, size: usize, exclusive: bool, now: Instant) -> Next {
        if self.closing {
            return Next::Stop;
        }
        // Over a persistent upper, a start waits for the running job to let go of it.
        if exclusive && self.running > 0 {
            return Next::Wait;
        }
        refill_next(self.ready.len(), size, self.running, self.last_done, now)
    }
}

/// The refill's decision for a pool of `size` with `ready` sandboxes and `running` jobs.
fn refill_next(
    ready: usize,
    size: usize,
    running: usize,
    last_done: Option<Instant>,
    now: Instant,
) -> Next {
    if ready >= size || (running > 0 && ready > 0) {
        return Next::Wait;
    }
    let settling = last_done.map_or(Duration::ZERO, |t| {
        SETTLE.saturating_sub(now.duration_since(t))
    });
    if ready > 0 && !settling.is_zero() {
        return Next::WaitFor(settling);
    }
    Next::Start
}

/// Counts a job as running while it lives: held by the job's [`Child`] until its result is in.
pub(crate) struct Running(Arc<Shared>, bool);

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Running")
    }
}

impl Running {
    fn new(shared: Arc<Shared>, held: bool) -> Running {
        {
            let mut state = shared.lock();
            state.running += 1;
            state.held += usize::from(held);
        }
        Running(shared, held)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        {
            let mut state = self.0.lock();
            state.running -= 1;
            state.held -= usize::from(self.1);
            state.last_done = Some(Instant::now());
        }
        self.0.changed.notify_all();
    }
}

impl Drop for Pool {
    /// Stops the refill thread and kills every sandbox still waiting for a job.
    fn drop(&mut self) {
        if !self.owned() {
            // A fork's copy: the refill thread is not in this process (nothing to join), and the
            // state may be locked by that thread's copy. The sandboxes are the other process's.
            std::mem::forget(self.refill.take());
            return;
        }
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.refill.take() {
            let _ = t.join();
        }
        // Gone when the pool is: each killed and reaped before this returns.
        let ready = std::mem::take(&mut self.shared.lock().ready);
        for r in ready {
            r.child.discard_now();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The background thread: keeps `size` sandboxes ready until the pool is dropped.
fn refill(shared: &Shared) {
    let mut backoff = Duration::from_millis(10);
    loop {
        {
            let mut state = shared.lock();
            loop {
                state = match state.next(shared.size, shared.exclusive, Instant::now()) {
                    Next::Stop => return,
                    Next::Start => {
                        state.starting = true;
                        break;
                    }
                    Next::Wait => match shared.changed.wait(state) {
                        Ok(s) => s,
                        Err(p) => p.into_inner(),
                    },
                    Next::WaitFor(d) => match shared.changed.wait_timeout(state, d) {
                        Ok((s, _)) => s,
                        Err(p) => p.into_inner().0,
                    },
                };
            }
        }
        // `starting` is cleared however the start ends, a panic included (jobs wait on it); a
        // sandbox made is among the ready ones by then.
        struct Started<'a>(&'a Shared);
        impl Drop for Started<'_> {
            fn drop(&mut self) {
                self.0.lock().starting = false;
                self.0.changed.notify_all();
            }
        }
        let started = Started(shared);
        match start(&shared.spec) {
            Ok(r) => {
                backoff = Duration::from_millis(10);
                let mut state = shared.lock();
                state.failure = None;
                if state.closing {
                    drop(state);
                    // Reaped before the pool's drop (which joins this thread) returns.
                    r.child.discard_now();
                    return;
                }
                state.ready.push_back(r);
                drop(state);
                drop(started);
            }
            Err(e) => {
                // Jobs still run (started on the spot, which reports the error); retry later.
                shared.lock().failure = Some(e.to_string());
                drop(started);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Starts one sandbox of `spec` running the agent.
fn start(spec: &Spec) -> Result<Ready> {
    // The agent's end: a child forked meanwhile closes its copy (or the agent's end of file,
    // which tells of a job executed, would wait for that child).
    let mut ends = crate::forksafe::Ends::new();
    let window = crate::forksafe::Creating::begin();
    let (ours, theirs) = seqpacket_pair()?;
    let theirs = ends.keep(theirs);
    drop(window);
    let mut spec = spec.clone();
    spec.process.args = vec!["rsandbox-agent".into()];
    spec.process.stdin = Stdio::Fd(theirs);
    spec.process.stdout = Stdio::Null;
    spec.process.stderr = Stdio::Null;
    // The job's timeout counts from dispatch (see `dispatch`), not from here.
    spec.timeout = None;
    let child = spawn_agent(&spec)?;
    drop(ends);
    Ok(Ready {
        child,
        socket: ours,
        since: Instant::now(),
    })
}

fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: socketpair writes two descriptors into the array on success.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(Error::os("socketpair", crate::Errno::last()));
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends the job to a ready sandbox and waits until it has been executed there.
fn dispatch(
    shared: &Shared,
    ready: Ready,
    process: &Process,
    timeout: Option<f64>,
    cold: Option<Duration>,
    keep_stdin: bool,
) -> Result<Option<Child>> {
    let Ready {
        mut child,
        socket,
        since,
    } = ready;
    // A job refused before it reaches the agent spends the sandbox: it is ended, not leaked.
    // The job's ends of its streams are held until the agent has them (forksafe::Ends).
    let mut ends = crate::forksafe::Ends::new();
    let mut held = crate::forksafe::Ends::new();
    let (message, stdio) = match job_message(process, &child.home)
        .and_then(|m| Ok((m, open_stdio(process, &mut ends, &mut held)?)))
    {
        Ok(prepared) => prepared,
        Err(e) => {
            child.discard();
            return Err(e);
        }
    };
    let StdioPlan {
        sources,
        parent_ends,
        stdin_held,
    } = stdio;
    let dispatched = Instant::now();
    let dispatched_ns = sys::monotonic_ns();
    match send_job(socket.as_raw_fd(), &message, &sources) {
        Ok(()) => {}
        // The agent is gone: this sandbox died while it waited.
        Err(crate::Errno::EPIPE | crate::Errno::ECONNRESET | crate::Errno::ECONNREFUSED) => {
            child.discard();
            return Ok(None);
        }
        Err(e) => {
            child.discard();
            return Err(Error::os("send the job to a pooled sandbox", e));
        }
    }
    drop(ends);
    // End of file: the job was executed (the agent's last reference closed). A record: it failed.
    let mut buf = [0u8; Failure::SIZE];
    let n = match sys::retry(|| sys::read_full(socket.as_raw_fd(), &mut buf)) {
        Ok(n) => n,
        Err(e) => {
            child.discard();
            return Err(Error::os("read a pooled sandbox's answer", e));
        }
    };
    if n == Failure::SIZE {
        let failure = Failure::from_bytes(&buf);
        let _ = child.kill(libc::SIGKILL);
        let _ = child.wait();
        return Err(crate::sandbox::decode_job_failure(failure, process));
    }
    let [stdin, stdout, stderr] = parent_ends.map(|fd| fd.map(std::fs::File::from));
    let (stdin, stdin_held) = match stdin_held {
        Some(fd) if keep_stdin => (stdin, Some((held, fd))),
        Some(fd) => (held.take_back(fd).map(std::fs::File::from), None),
        None => (stdin, None),
    };
    child.stdin = stdin;
    child.stdin_held = stdin_held;
    child.stdout = stdout;
    child.stderr = stderr;
    child.started = dispatched;
    child.started_ns = dispatched_ns;
    // The job's result is its command's; the sandbox's teardown is not the job's time. Except
    // with a persistent upper: the next sandbox may take it only once this one's init has
    // exited, so the result waits for that, as a cold start's does.
    child.early_exit = !persistent_upper(&shared.spec);
    // The agent starts the job's command from its own small memory, not from this process's.
    child.starter_peak = 0;
    child.deadline = timeout.map(|t| dispatched + Duration::from_secs_f64(t));
    if let Some(t) = timeout {
        // The init keeps the job's deadline too (see Child::keep_deadline).
        child.keep_deadline(crate::sandbox::deadline_ns(dispatched_ns, t));
    }
    // What of the sandbox is its own (and so this job's alone), from its report.
    let own: Vec<&str> = [
        ("namespace.pid", "PID namespace and init"),
        ("namespace.mnt", "mounts"),
        ("namespace.net", "network"),
        ("namespace.ipc", "IPC"),
        ("cgroup", "cgroup"),
    ]
    .into_iter()
    .filter(|(name, _)| {
        child
            .report
            .feature(name)
            .is_some_and(|f| f.status == Status::Enforced)
    })
    .map(|(_, what)| what)
    .collect();
    let detail = match cold {
        None => format!(
            "started {:.1} ms ahead of this job in a pool of {}; one job per sandbox: its own {} are this job's alone",
            dispatched.duration_since(since).as_secs_f64() * 1e3,
            shared.size,
            if own.is_empty() { "processes".to_string() } else { own.join(", ") }
        ),
        Some(took) => format!(
            "the pool of {} had none ready: started for this job ({:.1} ms){}",
            shared.size,
            took.as_secs_f64() * 1e3,
            shared
                .lock()
                .failure
                .as_ref()
                .map(|f| format!("; the pool's last start failed: {f}"))
                .unwrap_or_default()
        ),
    };
    child.report.push(
        "pool",
        Want::BestEffort,
        if cold.is_none() {
            Status::Enforced
        } else {
            Status::Skipped
        },
        detail,
    );
    // The job's limit replaces what the start said (its sandbox had none while it waited).
    child.report.features.retain(|f| f.name != "wall-timeout");
    match timeout {
        Some(t) => child.report.push(
            "wall-timeout",
            Want::Required,
            Status::Enforced,
            format!("{t} s from the job's start, then the whole sandbox is killed"),
        ),
        None => child
            .report
            .push("wall-timeout", Want::Off, Status::Off, "no limit".into()),
    }
    Ok(Some(child))
}

/// Whether the sandboxes of `spec` hold a persistent upper (each until it has ended).
fn persistent_upper(spec: &Spec) -> bool {
    matches!(&spec.filesystem.root, Root::Overlay(ov) if matches!(ov.upper, Upper::Persistent { .. }))
}

/// The job as the agent reads it (see child/init.c): counts, cwd, PATH candidates, argv, envp.
fn job_message(process: &Process, home: &str) -> Result<Vec<u8>> {
    let env = command_env(process, home)?;
    let candidates = crate::sandbox::exec_candidates(
        &process.args[0],
        env.get("PATH").map(String::as_str).unwrap_or(""),
    )?;
    let cwd = match &process.cwd {
        Some(c) if !c.starts_with('/') => {
            return Err(Error::invalid(
                "process.cwd",
                format!("must be absolute: {c:?}"),
            ))
        }
        Some(c) => c.clone(),
        None => String::new(),
    };
    // Sized exactly: a large first allocation would make the C allocator consolidate its free
    // lists on the job's path.
    let fields = 1 + candidates.len() + process.args.len();
    let text: usize = cwd.len()
        + candidates.iter().map(|c| c.as_bytes().len()).sum::<usize>()
        + process.args.iter().map(String::len).sum::<usize>()
        + env
            .iter()
            .map(|(k, v)| k.len() + 1 + v.len())
            .sum::<usize>();
    let mut message = Vec::with_capacity(16 + text + fields + env.len());
    let counts = [
        JOB_MAGIC,
        candidates.len() as u32,
        process.args.len() as u32,
        env.len() as u32,
    ];
    for n in counts {
        message.extend_from_slice(&n.to_ne_bytes());
    }
    let mut push = |field: &str, text: &[u8]| -> Result<()> {
        if text.contains(&0) {
            return Err(Error::invalid(field, "contains a NUL byte"));
        }
        message.extend_from_slice(text);
        message.push(0);
        Ok(())
    };
    push("process.cwd", cwd.as_bytes())?;
    for c in &candidates {
        push("process.args[0]", c.as_bytes())?;
    }
    for a in &process.args {
        push("process.args", a.as_bytes())?;
    }
    for (k, v) in &env {
        if k.contains('\0') || v.contains('\0') {
            return Err(Error::invalid("process.env", "contains a NUL byte"));
        }
        message.extend_from_slice(k.as_bytes());
        message.push(b'=');
        message.extend_from_slice(v.as_bytes());
        message.push(0);
    }
    if message.len() > MAX_JOB {
        return Err(Error::invalid(
            "process",
            format!(
                "argv and environment take {} bytes; a pooled job takes at most {MAX_JOB}",
                message.len()
            ),
        ));
    }
    // The agent's table of pointers: every string, and three NULLs.
    if fields + env.len() + 3 > MAX_PTRS {
        return Err(Error::invalid(
            "process",
            format!(
                "{} arguments and variables; a pooled job takes at most {}",
                process.args.len() + env.len(),
                MAX_PTRS - 3 - 1 - candidates.len()
            ),
        ));
    }
    Ok(message)
}

/// sendmsg of `message` with the three descriptors as SCM_RIGHTS.
fn send_job(
    socket: RawFd,
    message: &[u8],
    fds: &[RawFd; 3],
) -> std::result::Result<(), crate::Errno> {
    const FDS_LEN: usize = 3 * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(FDS_LEN as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer holds CMSG_SPACE(12) bytes, so the first header and its data fit.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(FDS_LEN as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), FDS_LEN);
    }
    loop {
        // SAFETY: msg describes valid buffers (see above).
        let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        match crate::Errno::last() {
            crate::Errno::EINTR => continue,
            e => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Step;

    #[test]
    fn the_refill_starts_only_when_a_job_could_need_it() {
        use super::{refill_next, Next, SETTLE};
        use std::time::{Duration, Instant};
        let now = Instant::now();
        // A pool of 2 with `ready` sandboxes, `running` jobs, the last result `ago` before now.
        let next = |ready, running, ago: Option<Duration>| {
            refill_next(ready, 2, running, ago.map(|d| now - d), now)
        };
        // Full: nothing to do.
        assert_eq!(next(2, 0, None), Next::Wait);
        // A job runs and one is still ready: wait for it.
        assert_eq!(next(1, 1, None), Next::Wait);
        // Empty: start, even while jobs run or a result just came in.
        assert_eq!(next(0, 1, None), Next::Start);
        assert_eq!(next(0, 0, Some(Duration::ZERO)), Next::Start);
        // A result 0.5 ms ago, one still ready: its caller finishes first.
        let half = Duration::from_micros(500);
        assert_eq!(next(1, 0, Some(half)), Next::WaitFor(SETTLE - half));
        // Settled, or no job yet: start.
        assert_eq!(next(1, 0, Some(SETTLE)), Next::Start);
        assert_eq!(next(1, 0, None), Next::Start);
    }

    #[test]
    fn job_failure_steps_match_the_agent() {
        // child/init.c reports these numbers.
        assert_eq!(Step::Stdio as u32, 23);
        assert_eq!(Step::Chdir as u32, 24);
        assert_eq!(Step::Exec as u32, 29);
    }
}
