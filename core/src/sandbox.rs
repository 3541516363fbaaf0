//! The public verbs: [`spawn`] a sandbox and get a [`Child`], or [`run`] one to completion and get a
//! [`RunResult`].

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::c_int;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::child::{self, Exec, Failure, OwnMaps, Plan};
use crate::error::{Error, Result, Step};
use crate::mounts::{sandbox_path, MountPlan};
use crate::overlay::{FuseSupport, FUSE_REQUEST};
use crate::report::{Feature, Report, Status};
use crate::spec::{IdMapping, Limits, Network, OverlayDriver, Root, Spec, Stdio, Want};
use crate::sys;
use crate::userns::{IdMaps, MapWriter};

/// `PATH` inside the sandbox unless the spec sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl ExitStatus {
    fn from_wait_status(status: c_int) -> ExitStatus {
        if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        }
    }

    /// The exit code, if it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Exited(c) => Some(c),
            ExitStatus::Signaled(_) => None,
        }
    }

    /// The signal, if one killed it.
    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Signaled(s) => Some(s),
            ExitStatus::Exited(_) => None,
        }
    }

    /// Exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }

    /// The shell convention: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

/// The one-word outcome of a run, for test runners and graders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Exited with code 0.
    Ok,
    /// Exited with another code.
    ExitNonzero,
    /// Killed by a signal it did not get from a limit.
    Signaled,
    /// Killed because the wall-clock limit passed.
    WallTimeout,
    /// The CPU-time limit was spent: the sandbox was killed for it, or ended having used more
    /// (where the limit falls back to RLIMIT_CPU, which limits each process alone).
    CpuTimeout,
    /// The OOM killer ended a process at the memory limit, and the command failed.
    MemoryLimit,
    /// Output passed the capture limit (the command itself finished).
    OutputLimit,
    /// The sandbox could not be set up; the command never ran (used in results built from an
    /// [`Error`], e.g. the CLI's `--json-result`).
    SetupError,
}

/// Resource usage of the whole sandbox (the init and every process it reaped).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Wall-clock time from spawn to exit, seconds.
    pub wall_time: f64,
    /// User CPU time, seconds.
    pub user_time: f64,
    /// System CPU time, seconds.
    pub system_time: f64,
    /// user + system, seconds.
    pub cpu_time: f64,
    /// Largest resident set size of any single process, bytes (getrusage `ru_maxrss`).
    pub max_rss: u64,
    /// Peak memory of the whole sandbox, bytes: `memory.peak` of its cgroup, or `max_rss`
    /// when there is no memory controller (see `memory_peak_source`).
    pub memory_peak: u64,
    /// Where `memory_peak` comes from.
    pub memory_peak_source: String,
    /// Processes the kernel's OOM killer ended inside the sandbox (memory.events `oom_kill`).
    pub oom_kills: u64,
    /// Most processes at once (pids.peak), where the kernel reports it.
    pub pids_peak: Option<u64>,
}

/// What a finished sandbox reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// How the command ended.
    pub status: ExitStatus,
    /// The one-word outcome.
    pub verdict: Verdict,
    /// The wall-clock limit passed and the sandbox was killed.
    pub timed_out: bool,
    /// Time and memory.
    pub usage: Usage,
    /// Captured standard output (`run` with a piped or default stdout). In JSON: a string when
    /// it is UTF-8 text, else `{"base64": "..."}` (as for `stderr`).
    #[serde(
        with = "output_bytes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stdout: Option<Vec<u8>>,
    /// Captured standard error.
    #[serde(
        with = "output_bytes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stderr: Option<Vec<u8>>,
    /// stdout was cut at the output limit.
    pub stdout_truncated: bool,
    /// stderr was cut at the output limit.
    pub stderr_truncated: bool,
    /// What was enforced.
    pub report: Report,
}

/// Output bytes in JSON: a string when they are UTF-8 text, else `{"base64": "..."}`, so that
/// nothing is lost or replaced.
pub(crate) mod output_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Text {
        Utf8(String),
        Bytes { base64: String },
    }

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v.as_deref().map(std::str::from_utf8) {
            Some(Ok(text)) => s.serialize_some(text),
            Some(Err(_)) => s.serialize_some(&Text::Bytes {
                base64: encode(v.as_deref().unwrap_or_default()),
            }),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<Text>::deserialize(d)? {
            None => Ok(None),
            Some(Text::Utf8(s)) => Ok(Some(s.into_bytes())),
            Some(Text::Bytes { base64 }) => decode(&base64)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("invalid base64 output")),
        }
    }

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Standard base64 with padding (RFC 4648).
    pub(crate) fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
        let text = text.trim_end_matches('=');
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let (mut n, mut bits) = (0u32, 0);
        for c in text.bytes() {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            n = n << 6 | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((n >> bits) as u8);
                n &= (1 << bits) - 1;
            }
        }
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn base64_round_trips_every_length() {
            assert_eq!(super::encode(b"a\xff\xfeb"), "Yf/+Yg==");
            assert_eq!(super::encode(b"foobar"), "Zm9vYmFy");
            let data: Vec<u8> = (0..=255).collect();
            for len in 0..data.len() {
                let text = super::encode(&data[..len]);
                assert_eq!(text.len() % 4, 0);
                assert_eq!(super::decode(&text).as_deref(), Some(&data[..len]));
            }
            assert_eq!(super::decode("Zm9v!"), None);
        }
    }
}

/// A running sandbox. Dropping it kills the sandbox and reaps it, unless the spec turned
/// `die_with_parent` off (then the sandbox runs on, like a dropped `std::process::Child`).
#[derive(Debug)]
pub struct Child {
    /// The process that started the sandbox: a child forked from it holds a copy of this handle,
    /// which must neither take the result nor end the sandbox.
    owner: crate::forksafe::Process,
    pid: libc::pid_t,
    command_pid: libc::pid_t,
    pid_ns: bool,
    die_with_parent: bool,
    pidfd: OwnedFd,
    /// fuse-overlayfs serving the root, when the kernel could not.
    fuse: Option<crate::overlay::FuseHelper>,
    /// The sandbox's own cgroup (removed once it has exited).
    cgroup: Option<Cgroup>,
    cpu_limit_usec: Option<u64>,
    cpu_timed_out: bool,
    /// SIGKILL was sent to the init, or it was asked to end the sandbox: if it ends without a
    /// status record, that is how.
    sigkill_sent: bool,
    /// The init was asked to end the sandbox ([`end`](Self::end)): by then it has, or SIGKILL
    /// from here does.
    kill_by: Option<Instant>,
    // Held open for the sandbox's life: the init kills everything when it closes.
    ctl: Option<crate::forksafe::Ends>,
    status_r: OwnedFd,
    pub(crate) started: Instant,
    /// `started` on CLOCK_MONOTONIC, ns: the init's record says when the command ended on it.
    pub(crate) started_ns: u64,
    pub(crate) deadline: Option<Instant>,
    /// The result once known, kept without its report (that is `report`).
    finished: Option<RunResult>,
    timed_out: bool,
    pub(crate) report: Report,
    /// The command's default HOME.
    pub(crate) home: String,
    /// Take the result from the init's status record (status and usage), without waiting for
    /// the init's exit and the namespaces' teardown, which a background thread then reaps.
    pub(crate) early_exit: bool,
    /// The result came early: the init is still to be reaped (and the cgroup removed).
    reap_later: bool,
    /// Held until the result is in: a pool job's place among the pool's running jobs.
    pub(crate) job: Option<crate::pool::Running>,
    /// The resident memory of this process the command's ru_maxrss counts (its peak for a start
    /// sharing its memory, what it held for one copying it; bytes; 0 when the command is
    /// started from elsewhere).
    pub(crate) starter_peak: u64,
    /// What [`result_fd`](Self::result_fd) gives where a time limit is watched: made at its
    /// first call.
    wake: std::sync::OnceLock<Option<Wake>>,
    /// The write end of the command's stdin, when it is a pipe.
    pub stdin: Option<File>,
    /// The same, kept marked for forks until [`communicate_with`](Self::communicate_with) feeds
    /// it (starts that do so at once: `run`, pools' `run`), instead of in `stdin`.
    pub(crate) stdin_held: Option<(crate::forksafe::Ends, RawFd)>,
    /// The read end of the command's stdout, when it is a pipe.
    pub stdout: Option<File>,
    /// The read end of the command's stderr, when it is a pipe.
    pub stderr: Option<File>,
}

/// Builds and starts a sandbox. Returns once the command has been executed inside it; every setup
/// failure, including a missing executable, is returned as an error.
///
/// ```no_run
/// let spec = rsandbox::Spec::new(["id", "-u"]);
/// let mut child = rsandbox::spawn(&spec)?;
/// let result = child.wait()?;
/// assert!(result.status.success());
/// # Ok::<(), rsandbox::Error>(())
/// ```
pub fn spawn(spec: &Spec) -> Result<Child> {
    spawn_held(spec, false)
}

/// [`spawn`]; with `keep_stdin`, the caller's end of a stdin pipe stays in the handle's own
/// keeping (marked for forks) for [`Child::communicate_with`], instead of in `stdin`.
fn spawn_held(spec: &Spec, keep_stdin: bool) -> Result<Child> {
    let starting = Starting::enter();
    let prepared = prepare(spec, false, starting.spare_cpu())?;
    launch(spec, prepared, keep_stdin)
}

/// Plans a sandbox of `spec` as [`spawn`] does before it clones (the spec's checks, id maps,
/// mount plan, seccomp filter, Landlock rules, pipes and stacks), then drops the plan. Only for
/// the micro-benchmarks (core/benches/spawn.rs): not part of the API.
#[doc(hidden)]
pub fn __bench_plan(spec: &Spec) -> Result<()> {
    prepare(spec, false, false).map(drop)
}

/// Starts a sandbox whose command is the pool's agent (see pool.rs): `spec.process` must name
/// the agent's streams (stdin: the job socket). A pool's sandboxes start in the background and
/// never take a second CPU for it: that would only slow down the jobs running meanwhile.
pub(crate) fn spawn_agent(spec: &Spec) -> Result<Child> {
    let _starting = Starting::enter();
    let prepared = prepare(spec, true, false)?;
    launch(spec, prepared, false)
}

/// Counts the sandboxes this process is starting (from planning to the end of setup), to decide
/// whether a start may use a second CPU (child::NetApart): only while fewer are starting than
/// there are CPUs for this process. Several threads starting sandboxes at once already keep
/// every CPU busy, and a helper would only add work.
struct Starting {
    count: usize,
}

static STARTING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Starting {
    fn enter() -> Starting {
        let count = STARTING.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Starting { count }
    }

    fn spare_cpu(&self) -> bool {
        static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        // The affinity mask: what a second task can run on. (The standard library's count also
        // reads cgroup v1 quota files, ten system calls more, ~50 us of a CLI start.)
        let cpus = *CPUS.get_or_init(|| {
            sys::cpus_allowed()
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        });
        self.count < cpus
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        STARTING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs a sandbox to completion, capturing stdout and stderr unless the spec sends them elsewhere.
/// `Stdio::Inherit` for stdout/stderr (the default) means "capture" here; stdin defaults to null.
pub fn run(spec: &Spec) -> Result<RunResult> {
    run_with_input(spec, None)
}

/// [`run`], feeding `input` to the command's stdin.
pub fn run_with_input(spec: &Spec, input: Option<&[u8]>) -> Result<RunResult> {
    let mut spec = spec.clone();
    if spec.process.stdout == Stdio::Inherit {
        spec.process.stdout = Stdio::Pipe;
    }
    if spec.process.stderr == Stdio::Inherit {
        spec.process.stderr = Stdio::Pipe;
    }
    spec.process.stdin = match input {
        Some(_) => Stdio::Pipe,
        None if spec.process.stdin == Stdio::Inherit => Stdio::Null,
        None => spec.process.stdin.clone(),
    };
    let mut child = spawn_held(&spec, true)?;
    child.communicate(input, spec.output_limit)
}

/// [`run_with_input`], with `interrupt` called at least every `every` as
/// [`Child::communicate_with`] does (embedders use it for Ctrl-C); only streams the spec sends
/// to pipes are captured.
pub fn run_interruptible(
    spec: &Spec,
    input: Option<&[u8]>,
    every: Duration,
    interrupt: &mut dyn FnMut() -> bool,
) -> Result<RunResult> {
    let mut child = spawn_held(spec, true)?;
    child.communicate_with(input, spec.output_limit, every, interrupt)
}

/// The caller-side pieces of a spawn, prepared before clone.
struct Prepared {
    plan: Plan,
    clone_flags: u64,
    maps: Option<IdMaps>,
    report: Report,
    // Keep the caller-side ends and the fds opened for the sandbox alive until clone.
    parent_ends: [Option<OwnedFd>; 3],
    /// The caller's end of a stdin pipe, marked in `held` until the handle has it.
    held: crate::forksafe::Ends,
    stdin_held: Option<RawFd>,
    /// The sandbox's ends (its streams, its ends of the pipes, the upper's lock), closed here
    /// once it has them.
    sandbox_ends: crate::forksafe::Ends,
    err_r: OwnedFd,
    /// The caller's end of the control pipe (marked for forks), and its number.
    ctl: crate::forksafe::Ends,
    ctl_w: RawFd,
    status_r: OwnedFd,
    scratch: Vec<c_int>,
    cgroup: Option<Cgroup>,
    cpu_limit_usec: Option<u64>,
    /// Stacks of a small-init start (setup process, command process), None for a forking start.
    stacks: Option<small::Stacks>,
    /// Why the start copies the caller, when it does.
    start_skipped: Option<String>,
    /// The template the mount tree is copied from (child::Enter).
    template: Option<std::sync::Arc<crate::template::Template>>,
    /// The network namespace made ahead that the start joins from the template's user namespace
    /// (the clone then makes none).
    net_ahead: Option<OwnedFd>,
    /// The command's default HOME (and working directory).
    home: String,
    /// Whether the init holds a persistent upper's lock (in `sandbox_ends` until the clone).
    upper_locked: bool,
}

/// Whether the kernel has the namespace `name` (its /proc/self/ns entry exists). Looked up once
/// per process: a running kernel does not gain or lose namespace types. An answer found without
/// a proc filesystem on /proc says nothing of the kernel, and is not kept.
fn kernel_has_namespace(name: &str) -> bool {
    const NAMES: [&str; 8] = ["user", "mnt", "pid", "ipc", "uts", "net", "cgroup", "time"];
    static KNOWN: [std::sync::OnceLock<bool>; 8] = [const { std::sync::OnceLock::new() }; 8];
    let probe = || Path::new(&format!("/proc/self/ns/{name}")).exists();
    let Some(i) = NAMES.iter().position(|n| *n == name) else {
        return probe();
    };
    if let Some(&known) = KNOWN[i].get() {
        return known;
    }
    let has = probe();
    if has || proc_mounted() {
        let _ = KNOWN[i].set(has);
    }
    has
}

/// What to do where /proc is not a proc filesystem ([`proc_mounted`]).
pub(crate) const PROC_REMEDY: &str = "mount it where this program runs (mount -t proc proc /proc)";

/// Whether /proc is a proc filesystem here: the library reads its namespaces, id maps,
/// descriptors and mount table there.
pub(crate) fn proc_mounted() -> bool {
    nix::sys::statfs::statfs("/proc")
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
}

fn ns_flag(want: Want, flag: c_int, name: &str, report: &mut Report, detail: &str) -> Result<u64> {
    let full = format!("namespace.{name}");
    if !want.wanted() {
        report.push(&full, want, Status::Off, "not requested".into());
        return Ok(0);
    }
    if !kernel_has_namespace(name) {
        if !proc_mounted() {
            return Err(Error::Unsupported {
                errno: None,
                feature: "/proc".into(),
                reason: "/proc is not a proc filesystem in this process's mount namespace (it is \
                         not mounted, or something covers it): the library reads this process's \
                         namespaces, id maps, descriptors and mounts there"
                    .into(),
                remedy: Some(PROC_REMEDY.into()),
            });
        }
        if want == Want::BestEffort {
            report.push(
                &full,
                want,
                Status::Skipped,
                "the kernel has no such namespace".into(),
            );
            return Ok(0);
        }
        return Err(Error::Unsupported {
            errno: Some(Errno::ENOENT),
            feature: format!("{name} namespace"),
            reason: format!("/proc/self/ns/{name} does not exist: the kernel lacks it"),
            remedy: Some(
                "use a kernel built with this namespace, or turn it off in the spec".into(),
            ),
        });
    }
    report.push(&full, want, Status::Enforced, detail.into());
    Ok(flag as u64)
}

/// An image root becomes a plain overlay: its unpacked layers go beneath the caller's lowers, and
/// its configuration fills what the caller left unset (argv, env, cwd, user).
fn resolve_image(spec: &Spec) -> Result<Option<(Spec, crate::image::UnpackedImage)>> {
    let Root::Overlay(ov) = &spec.filesystem.root else {
        return Ok(None);
    };
    let Some(img) = &ov.image else {
        return Ok(None);
    };
    let store = img
        .store
        .clone()
        .unwrap_or_else(crate::image::default_store);
    let unpacked = crate::image::unpack(&img.layout, img.tag.as_deref(), &store)?;
    let mut out = spec.clone();
    let mut ov = ov.clone();
    ov.image = None;
    ov.lowers.extend(unpacked.layers.iter().rev().cloned());
    out.filesystem.root = Root::Overlay(ov);
    let c = &unpacked.config;
    let p = &mut out.process;
    if p.args.is_empty() {
        p.args = c.entrypoint.iter().chain(&c.cmd).cloned().collect();
    }
    for kv in &c.env {
        if let Some((k, v)) = kv.split_once('=') {
            p.env.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    }
    if p.cwd.is_none() {
        p.cwd = c.working_dir.clone().filter(|w| !w.is_empty());
    }
    if let Some(user) = c.user.as_deref().filter(|u| !u.is_empty()) {
        let (uid, gid) = image_user(user, &unpacked.layers)?;
        out.user.uid = out.user.uid.or(Some(uid));
        out.user.gid = out.user.gid.or(gid).or(Some(uid));
    }
    Ok(Some((out, unpacked)))
}

/// The image's `User` (`uid`, `uid:gid`, `name` or `name:group`), names looked up in the image's
/// own /etc/passwd and /etc/group as its merged layers show them, never through the host.
fn image_user(user: &str, layers: &[std::path::PathBuf]) -> Result<(u32, Option<u32>)> {
    crate::image::resolve_user(user, layers)
}

impl Spec {
    /// Checks the values a start would refuse whatever the host: time limits, limits, the host
    /// name, the namespaces the filesystem needs, mount destinations and sizes, the
    /// environment's names, the working directory, Landlock's paths and rlimit names. What
    /// depends on the host (paths that must exist, the kernel's features, delegation) is
    /// checked when a sandbox starts. [`spawn`] makes these checks too.
    pub fn check(&self) -> Result<()> {
        if let Some(t) = self.timeout {
            check_seconds("timeout", t)?;
        }
        let ns = &self.namespaces;
        if !ns.mount.wanted()
            && (self.filesystem.root != Root::HostView || !self.filesystem.mounts.is_empty())
        {
            return Err(Error::invalid(
                "namespaces.mount",
                "a rootfs or mounts need the mount namespace",
            ));
        }
        if !ns.uts.wanted() && self.hostname != crate::spec::DEFAULT_HOSTNAME {
            return Err(Error::invalid(
                "hostname",
                format!(
                    "{:?} needs the sandbox's own UTS namespace, and namespaces.uts is off",
                    self.hostname
                ),
            ));
        }
        if ns.uts.wanted()
            && (self.hostname.is_empty()
                || self.hostname.len() > 64
                || self.hostname.contains('\0'))
        {
            return Err(Error::invalid(
                "hostname",
                "must be 1 to 64 bytes without NUL",
            ));
        }
        validate_limits(&self.limits)?;
        // An empty argv is for a start to refuse: a spec may be completed with one later.
        if self.process.args.first().is_some_and(String::is_empty) {
            return Err(Error::invalid(
                "process.args[0]",
                "the command name is empty",
            ));
        }
        to_cstrings("process.args", &self.process.args)?;
        if let Some(cwd) = &self.process.cwd {
            if cwd.contains('\0') {
                return Err(Error::invalid("process.cwd", "contains a NUL byte"));
            }
            if !cwd.starts_with('/') {
                return Err(Error::invalid(
                    "process.cwd",
                    format!("must be absolute: {cwd:?}"),
                ));
            }
        }
        if let Some(k) = self.process.env.keys().find(|k| !env_name_ok(k)) {
            return Err(env_name_error(k));
        }
        if let Some((k, _)) = self.process.env.iter().find(|(_, v)| v.contains('\0')) {
            return Err(Error::invalid(
                format!("process.env[{k:?}]"),
                "the value contains a NUL byte",
            ));
        }
        crate::mounts::check_mounts(&self.filesystem)?;
        for path in self
            .security
            .landlock
            .write
            .iter()
            .chain(&self.security.landlock.read)
        {
            if !path.starts_with('/') {
                return Err(Error::invalid(
                    "security.landlock",
                    format!("{path:?} is not an absolute path in the sandbox"),
                ));
            }
        }
        if let Some(name) = self
            .security
            .rlimits
            .keys()
            .find(|n| !RLIMITS.iter().any(|(known, _)| known == n))
        {
            return Err(Error::invalid(
                "security.rlimits",
                format!(
                    "unknown rlimit {name:?} (nofile, nproc, core, fsize, as, stack, memlock, cpu)"
                ),
            ));
        }
        Ok(())
    }
}

/// The resource limits a spec may set, by name.
const RLIMITS: [(&str, u32); 8] = [
    ("nofile", sys::rlimit::NOFILE),
    ("nproc", sys::rlimit::NPROC),
    ("core", sys::rlimit::CORE),
    ("fsize", sys::rlimit::FSIZE),
    ("as", sys::rlimit::AS),
    ("stack", sys::rlimit::STACK),
    ("memlock", sys::rlimit::MEMLOCK),
    ("cpu", sys::rlimit::CPU),
];

/// The spec's name of a resource limit.
fn rlimit_name(resource: u32) -> &'static str {
    RLIMITS
        .iter()
        .find(|(_, r)| *r == resource)
        .map_or("?", |(n, _)| n)
}

/// The longest time limit a spec may set, in seconds (about 31 years): beyond it a deadline is
/// no longer a point in time the clocks can represent.
pub(crate) const MAX_SECONDS: f64 = 1e9;

/// A time limit in seconds must be a positive number no larger than [`MAX_SECONDS`].
pub(crate) fn check_seconds(field: &str, t: f64) -> Result<()> {
    if t.is_finite() && t > 0.0 && t <= MAX_SECONDS {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("must be a positive number of seconds up to {MAX_SECONDS:e}, got {t}"),
        ))
    }
}

fn prepare(spec: &Spec, agent: bool, spare_cpu: bool) -> Result<Prepared> {
    let image = resolve_image(spec)?;
    let spec = image.as_ref().map_or(spec, |(s, _)| s);
    let p = &spec.process;
    if p.args.is_empty() {
        return Err(Error::invalid(
            "process.args",
            "argv is empty: nothing to run",
        ));
    }
    spec.check()?;
    let argv = to_cstrings("process.args", &p.args)?;
    let ns = &spec.namespaces;
    let caller = (sys::getuid(), sys::getgid());
    let mut report = Report::default();

    // Namespaces.
    let user_ns = ns.user.wanted();
    if !user_ns && caller.0 != 0 {
        return Err(Error::invalid(
            "namespaces.user",
            "only root can create the other namespaces without a user namespace",
        ));
    }
    let mut flags = sys::CLONE_PIDFD;
    flags |= ns_flag(
        ns.user,
        libc::CLONE_NEWUSER,
        "user",
        &mut report,
        "own user namespace; setgroups denied unless a subordinate range is mapped",
    )?;
    flags |= ns_flag(
        ns.mount,
        libc::CLONE_NEWNS,
        "mnt",
        &mut report,
        "own mount namespace entered with pivot_root; old root detached",
    )?;
    flags |= ns_flag(
        ns.pid,
        libc::CLONE_NEWPID,
        "pid",
        &mut report,
        if ns.mount.wanted() {
            "own PID namespace; an init is pid 1 and host processes are invisible"
        } else {
            "own PID namespace; an init is pid 1; /proc is still the host's (no mount namespace of \
             its own): host processes are listed there, though no signal reaches them"
        },
    )?;
    flags |= ns_flag(
        ns.ipc,
        libc::CLONE_NEWIPC,
        "ipc",
        &mut report,
        "own System V IPC and POSIX message queues",
    )?;
    flags |= ns_flag(
        ns.uts,
        libc::CLONE_NEWUTS,
        "uts",
        &mut report,
        &format!("host name {:?}", spec.hostname),
    )?;
    let net_want = if spec.network == Network::Host {
        Want::Off
    } else {
        ns.net
    };
    flags |= ns_flag(
        net_want,
        libc::CLONE_NEWNET,
        "net",
        &mut report,
        "own network namespace holding only lo, up",
    )?;
    flags |= ns_flag(
        ns.cgroup,
        libc::CLONE_NEWCGROUP,
        "cgroup",
        &mut report,
        "own cgroup namespace: /proc/self/cgroup shows /",
    )?;
    let unshare_time = ns_flag(
        ns.time,
        libc::CLONE_NEWTIME,
        "time",
        &mut report,
        "own time namespace (monotonic and boot-time clocks)",
    )? != 0;
    let pid_ns = flags & libc::CLONE_NEWPID as u64 != 0;
    let mount_ns = flags & libc::CLONE_NEWNS as u64 != 0;

    // Ids.
    let mut own_maps = None;
    let mut wait_for_maps = false;
    let mut switch_ids = None;
    let mut clear_groups = false;
    let maps = if user_ns {
        let maps = IdMaps::plan(&spec.user, caller)?;
        report.uid_map = maps.uid.clone();
        report.gid_map = maps.gid.clone();
        match &maps.writer {
            MapWriter::Child { uid_map, gid_map } => {
                own_maps = Some(OwnMaps {
                    uid_map: uid_map.clone(),
                    gid_map: gid_map.clone(),
                });
            }
            MapWriter::Parent { .. } => {
                wait_for_maps = true;
                clear_groups = true;
                // The init runs as inside 0 (the caller); the command switches to its own ids.
                if (maps.inside_uid, maps.inside_gid) != (0, 0) {
                    switch_ids = Some((maps.inside_uid, maps.inside_gid));
                }
            }
        }
        Some(maps)
    } else {
        if spec.user.mapping == IdMapping::SubordinateRange {
            return Err(Error::invalid(
                "user.mapping",
                "a subordinate range needs the user namespace",
            ));
        }
        let (uid, gid) = (
            spec.user.uid.unwrap_or(caller.0),
            spec.user.gid.unwrap_or(caller.1),
        );
        if (uid, gid) != caller {
            switch_ids = Some((uid, gid));
            clear_groups = true;
        }
        None
    };
    let inside_ids = maps.as_ref().map_or(
        (
            spec.user.uid.unwrap_or(caller.0),
            spec.user.gid.unwrap_or(caller.1),
        ),
        |m| (m.inside_uid, m.inside_gid),
    );
    // The command's uid on the host: the kernel lets uid 0 write global settings in /proc/sys
    // and read what root owns, capabilities or not.
    let host_uid = match &maps {
        Some(m) => m
            .uid
            .iter()
            .find(|r| (r.inside..r.inside.saturating_add(r.count)).contains(&m.inside_uid))
            .map_or(u32::MAX, |r| r.outside + (m.inside_uid - r.inside)),
        None => inside_ids.0,
    };
    if spec.filesystem.proc && !spec.security.mask_proc {
        let mut detail = "off, as asked: /proc/sys is writable as far as the command's ids and \
                          capabilities allow, and the files the masks hide are visible"
            .to_string();
        if host_uid == 0 {
            detail.push_str(
                "; the command is the host's uid 0, which the kernel lets write global settings \
                 in /proc/sys (kernel.core_pattern runs a program as root on the host) and \
                 /proc/sysrq-trigger without any capability: keep the masks unless the command \
                 is trusted with the host",
            );
        }
        report.push("proc-masks", Want::Off, Status::Off, detail);
    }
    if host_uid == 0 {
        report.push(
            "unprivileged-on-host",
            Want::BestEffort,
            Status::Skipped,
            "the command runs as the host's uid 0 (the caller's, or mapped to it): without \
             capabilities, but files root owns in the host view are readable as root's (and \
             writable where mounted writable); run it as an unprivileged user, or map a \
             subordinate range and give the command a uid and gid other than 0 in it (CLI: \
             --map-range --uid 1000 --gid 1000; with the range alone the command is uid 0 \
             inside, which is still the host's 0)"
                .into(),
        );
    }

    // Filesystem.
    let mounts = if mount_ns {
        let fuse = match &spec.filesystem.root {
            Root::Overlay(ov) if ov.driver != OverlayDriver::Kernel => FuseSupport::probe(),
            _ => FuseSupport::none(),
        };
        let mut plan = crate::mounts::plan(
            &spec.filesystem,
            inside_ids,
            pid_ns,
            &fuse,
            spec.security.mask_proc,
        )?;
        if let Some(ov) = plan.overlay() {
            if ov.fuse_binary.is_some() && !pid_ns {
                return Err(Error::invalid(
                    "namespaces.pid",
                    "an overlay that may use fuse-overlayfs needs the PID namespace (use the kernel driver, or keep the PID namespace)",
                ));
            }
            ov.record_layers()?;
        }
        // The entries are for the report alone: taken from a plan of this start's own, copied
        // from one kept for later starts.
        report.mounts = match std::sync::Arc::get_mut(&mut plan) {
            Some(own) => std::mem::take(&mut own.entries),
            None => plan.entries.clone(),
        };
        Some(plan)
    } else {
        report.push(
            "filesystem",
            Want::Off,
            Status::Off,
            "no mount namespace: the host's filesystem is visible".into(),
        );
        None
    };
    let workdir = match (&spec.filesystem.workdir, mount_ns) {
        (Some(w), true)
            if report
                .mounts
                .iter()
                .any(|m| m.destination == *w && m.status == Status::Enforced) =>
        {
            Some(sandbox_path("filesystem.workdir", w)?)
        }
        _ => None,
    };
    let cwd = match (&p.cwd, &workdir) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(w)) => Some(w.clone()),
        (None, None) => mount_ns.then(|| "/".to_string()),
    };
    if let Some(c) = &cwd {
        if !c.starts_with('/') {
            return Err(Error::invalid(
                "process.cwd",
                format!("must be absolute: {c:?}"),
            ));
        }
    }

    // Environment.
    let home = workdir
        .clone()
        .or_else(|| cwd.clone())
        .unwrap_or_else(|| "/".into());
    let env = command_env(p, &home)?;
    let env_list: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let envp = to_cstrings("process.env", &env_list)?;
    let candidates = exec_candidates(
        &p.args[0],
        env.get("PATH").map(String::as_str).unwrap_or(""),
    )?;

    // Hostname.
    // (Checked by Spec::check.)
    let hostname =
        (flags & libc::CLONE_NEWUTS as u64 != 0).then(|| spec.hostname.as_bytes().to_vec());

    // Standard streams and pipes. The sandbox's ends are held here until the clone: a child
    // forked meanwhile closes its copies (forksafe::Ends).
    let mut ends = crate::forksafe::Ends::new();
    let mut held = crate::forksafe::Ends::new();
    let StdioPlan {
        sources: stdio,
        parent_ends,
        stdin_held,
    } = open_stdio(p, &mut ends, &mut held)?;
    let window = crate::forksafe::Creating::begin();
    let (err_r, err_w) = pipe()?;
    let err_w = ends.keep(err_w);
    let (ctl_r, ctl_w) = pipe()?;
    let ctl_r = ends.keep(ctl_r);
    // Ours for the sandbox's life: its closing is the caller's end (die_with_parent), which a
    // copy in a forked child would put off for as long as that child lives.
    let mut ctl = crate::forksafe::Ends::new();
    let ctl_w = ctl.keep(ctl_w);
    let (status_r, status_w) = pipe()?;
    let status_w = ends.keep(status_w);
    drop(window);
    // A start that does not copy the caller (and so costs the same from a large process) is
    // used whenever nothing needs the caller's help during setup: not for subordinate-range id
    // maps (the caller writes them) nor where fuse-overlayfs may be asked for.
    let fuse_possible = mounts
        .as_ref()
        .and_then(|m| m.overlay())
        .is_some_and(|ov| ov.fuse_binary.is_some());
    let small = if wait_for_maps {
        Err("subordinate-range id maps are written by the caller during setup")
    } else if fuse_possible {
        Err("fuse-overlayfs may have to be started by the caller during setup")
    } else if could_reach_setup(&spec.security.capabilities) {
        // Until it has executed the init, the setup process (pid 1) shares the caller's memory;
        // the command starts in that moment. Without CAP_SYS_PTRACE, and with fewer capabilities
        // than pid 1, the command cannot open pid 1's memory (nor can it under Landlock).
        Err("the command keeps CAP_SYS_PTRACE or every capability, and could reach the setup process while it shares the caller's memory")
    } else {
        small::prepare()
    };
    let start_skipped = small.as_ref().err().map(|why| why.to_string());
    if agent {
        if let Err(why) = &small {
            return Err(Error::Unsupported {
                errno: None,
                feature: "sandbox pool".into(),
                reason: format!("pooled sandboxes need the start without copying the caller, and here {why}"),
                remedy: Some("use the kernel overlay driver and a single-id mapping, or spawn without a pool".into()),
            });
        }
    }
    let small = small.ok();
    // A persistent upper serves one sandbox at a time (overlayfs leaves sharing one undefined):
    // a lock its init holds for the sandbox's whole life.
    let upper_lock = match mounts.as_ref().and_then(|m| m.overlay()) {
        Some(ov) => ov.lock_upper(&mut ends)?,
        None => None,
    };
    let mut keep_fds: Vec<c_int> = stdio.to_vec();
    keep_fds.extend([err_w, ctl_r, status_w]);
    keep_fds.extend(upper_lock);
    if let Some((fd, _)) = &small {
        keep_fds.push(*fd);
    }
    let close_ranges = gaps(&keep_fds);
    let mut mounts = mounts;
    // An overlay's plan is never kept for later starts (mounts::plan): it is this start's own.
    if let Some(ov) = mounts
        .as_mut()
        .and_then(std::sync::Arc::get_mut)
        .and_then(MountPlan::overlay_mut)
    {
        // Above every descriptor the sandbox keeps, so placing the layers clobbers nothing.
        ov.set_fd_base(keep_fds.iter().copied().max().unwrap_or(2) + 1);
    }

    let cg = crate::cgroup::prepare(
        spec.cgroup.parent.as_deref(),
        spec.cgroup.want,
        &spec.limits,
        &mut report,
    )?;
    // The mount tree from a template where it can be (mounts::Build): a start without copying
    // the caller, a PID namespace and ids the sandbox maps itself. Not for root with a cgroup:
    // the start enters the cgroup from the template's user namespace, where root's access to a
    // cgroup owned by someone else (a delegated one) is gone.
    // SAFETY: geteuid cannot fail.
    let root_in_cgroup = cg.cgroup.is_some() && unsafe { libc::geteuid() } == 0;
    let template = match (&small, &mounts, &own_maps) {
        (Some(_), Some(m), Some(_)) if pid_ns && user_ns && !root_in_cgroup => {
            match crate::template::get(m) {
                // The report says so once the start has entered it (launch).
                Some(Ok(t)) => Some(t),
                Some(Err(why)) => {
                    report.push(
                        "mount-template",
                        Want::BestEffort,
                        Status::Skipped,
                        format!("{why}: the tree is built in full"),
                    );
                    None
                }
                None => None,
            }
        }
        _ => None,
    };
    let rlimits = cg
        .rlimits
        .iter()
        .map(|&(res, v)| {
            if res == sys::rlimit::CPU {
                (res, v, v + 1)
            } else {
                (res, v, v)
            }
        })
        .collect();
    report_process(&mut report, spec, pid_ns);
    let security = plan_security(spec, pid_ns, &mut report)?;
    // Without the default profile's rule, the sandbox's own user namespace refuses nested ones
    // (only ever its own: never without CLONE_NEWUSER, where the limit would be the host's).
    let deny_nested_userns = !spec.security.allow_nested_userns
        && !matches!(spec.security.seccomp, crate::spec::Seccomp::Default)
        && flags & libc::CLONE_NEWUSER as u64 != 0;
    if deny_nested_userns {
        let keeps_resource = spec.security.capabilities.iter().any(|c| {
            c.eq_ignore_ascii_case("CAP_SYS_RESOURCE") || c.eq_ignore_ascii_case("SYS_RESOURCE")
        });
        if let Some(entry) = report
            .features
            .iter_mut()
            .find(|f| f.name == "nested-userns")
        {
            entry.status = if keeps_resource {
                Status::Skipped
            } else {
                Status::Enforced
            };
            entry.detail = if keeps_resource {
                "max_user_namespaces = 0 in the sandbox's user namespace, but the command keeps \
                 CAP_SYS_RESOURCE and may raise it again"
                    .into()
            } else {
                "refused: max_user_namespaces = 0 in the sandbox's user namespace (the default \
                 seccomp profile's rule is not in use)"
                    .into()
            };
        }
    }
    let mut rlimits: Vec<(u32, u64, u64)> = rlimits;
    if !rlimits.is_empty() {
        if let Some(entry) = report.features.iter_mut().find(|f| f.name == "rlimits") {
            let fallbacks: Vec<String> = rlimits
                .iter()
                .map(|&(res, soft, _)| format!("{}={soft}", rlimit_name(res)))
                .collect();
            entry.detail.push_str(&format!(
                "; set as the limits' fallbacks (see limit.*): {}",
                fallbacks.join(", ")
            ));
        }
    }
    for &(res, v) in &security.rlimits {
        match rlimits.iter_mut().find(|(r, _, _)| *r == res) {
            // Both a limit's fallback and the spec's own: the lower of each applies, so that
            // neither claim in the report is left out of force.
            Some(both) => {
                both.1 = both.1.min(v);
                both.2 = both.2.min(v);
                if let Some(entry) = report.features.iter_mut().find(|f| f.name == "rlimits") {
                    entry.detail.push_str(&format!(
                        "; {}: a limit's fallback sets it too, the lower applies (soft {}, hard {})",
                        rlimit_name(res),
                        both.1,
                        both.2
                    ));
                }
            }
            None => rlimits.push((res, v, v)),
        }
    }
    if let Some((_, img)) = &image {
        let mut detail = format!("{} ({} layers)", img.manifest_digest, img.layers.len());
        if !img.skipped.is_empty() {
            detail.push_str(&format!(
                "; not reproduced without privilege: {}",
                img.skipped.join(", ")
            ));
        }
        report.push("image", Want::Required, Status::Enforced, detail);
    }
    let scratch = vec![-1; mounts.as_ref().map_or(0, |m| m.source_count())];

    let argv_ptrs = null_terminated(&argv);
    let envp_ptrs = null_terminated(&envp);
    // From a template, the network namespace may have been made ahead (Template::take_net), when
    // the command keeps no capability: it would hold none over a namespace the template's user
    // namespace owns.
    let net_ahead = match &template {
        Some(t) if flags & libc::CLONE_NEWNET as u64 != 0 && security.keep_caps == 0 => {
            t.take_net()
        }
        _ => None,
    };
    if net_ahead.is_some() {
        flags &= !(libc::CLONE_NEWNET as u64);
    }
    // With a small start and a CPU to spare, the network namespace is made beside the mount tree
    // (child::NetApart): the start takes less time, though not less work. Not where clone3 is
    // refused (asked again: a filter may have come since): the helper takes pid 2, and only
    // clone3 can give it back to the command.
    let new_net = flags & libc::CLONE_NEWNET as u64 != 0;
    let net_apart = match &small {
        Some((_, stacks)) if new_net && !wait_for_maps && spare_cpu && sys::clone3_recheck() => {
            Some(child::NetApart {
                stack: stacks.command(),
                gone: stacks.helper_gone(),
            })
        }
        _ => None,
    };
    let plan = Plan {
        own_maps,
        wait_for_maps,
        mounts,
        hostname,
        loopback_up: new_net && net_apart.is_none(),
        net_apart,
        unshare_time,
        pid_ns,
        die_with_parent: spec.die_with_parent,
        deadline_ns: 0,
        cwd: cwd
            .map(|c| {
                CString::new(c).map_err(|_| Error::invalid("process.cwd", "contains a NUL byte"))
            })
            .transpose()?,
        switch_ids,
        clear_groups,
        rlimits,
        caps: Some((security.keep_caps, security.last_cap)),
        landlock: security.landlock,
        seccomp: security.seccomp,
        session_keyring: security.session_keyring,
        exec: Exec {
            candidates,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
        },
        stdio,
        close_ranges,
        err_w,
        ctl_r,
        status_w,
        exec_fd: if agent {
            small.as_ref().map(|(fd, _)| *fd)
        } else {
            None
        },
        small_init: small.as_ref().map(|(fd, stacks)| child::SmallInit {
            init_fd: *fd,
            cmd_stack: stacks.command(),
            cmd_gone: stacks.command_gone(),
        }),
        in_template: template.is_some(),
        join_cgroup: None,
        upper_lock: upper_lock.unwrap_or(-1),
        deny_nested_userns,
    };
    Ok(Prepared {
        plan,
        clone_flags: flags,
        maps,
        report,
        parent_ends,
        held,
        stdin_held,
        sandbox_ends: ends,
        err_r,
        ctl,
        ctl_w,
        status_r,
        scratch,
        cgroup: cg.cgroup,
        cpu_limit_usec: spec.limits.cpu_time.map(|t| (t * 1e6) as u64),
        stacks: small.map(|(_, stacks)| stacks),
        start_skipped,
        home,
        template,
        net_ahead,
        upper_locked: upper_lock.is_some(),
    })
}

/// What the hardening layer puts on the command, planned before clone.
struct SecurityPlan {
    keep_caps: u64,
    last_cap: u32,
    rlimits: Vec<(u32, u64)>,
    landlock: Option<crate::landlock::Plan>,
    seccomp: Option<Vec<libc::sock_filter>>,
    /// Join a session keyring of its own before exec (see child::KEYRING_SKIPPED).
    session_keyring: bool,
}

/// `pid_ns`: the sandbox has its own PID namespace (asked for, and the kernel has it).
fn plan_security(spec: &Spec, pid_ns: bool, report: &mut Report) -> Result<SecurityPlan> {
    let sec = &spec.security;
    // Capabilities.
    let mut keep_caps = 0u64;
    let mut kept = Vec::new();
    for name in &sec.capabilities {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        let cap: caps::Capability = full.parse().map_err(|_| {
            Error::invalid(
                "security.capabilities",
                format!("unknown capability {name:?}"),
            )
        })?;
        keep_caps |= 1 << cap.index();
        kept.push(full);
    }
    static LAST_CAP: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let last_cap = *LAST_CAP.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63)
    });
    let detail = if kept.is_empty() {
        "all sets empty (effective, permitted, inheritable, ambient, bounding)".to_string()
    } else {
        let scope = if spec.namespaces.user.wanted() {
            "inside the sandbox's user namespace only"
        } else {
            "over the host (no user namespace of its own: these are the caller's real capabilities)"
        };
        format!(
            "kept {scope}: {}; every other capability dropped, bounding set included",
            kept.join(", ")
        )
    };
    report.push("capabilities", Want::Required, Status::Enforced, detail);

    // rlimits: core 0 unless set (names as in [`RLIMITS`]).
    let mut rlimits = Vec::new();
    let mut shown = Vec::new();
    let mut named = sec.rlimits.clone();
    named.entry("core".into()).or_insert(0);
    for (name, value) in &named {
        let Some(&(_, res)) = RLIMITS.iter().find(|(n, _)| n == name) else {
            return Err(Error::invalid(
                "security.rlimits",
                format!(
                    "unknown rlimit {name:?} (nofile, nproc, core, fsize, as, stack, memlock, cpu)"
                ),
            ));
        };
        rlimits.push((res, *value));
        shown.push(format!("{name}={value}"));
    }
    report.push(
        "rlimits",
        Want::Required,
        Status::Enforced,
        shown.join(", "),
    );

    // Landlock: write where the mounts are writable.
    let mut writable: Vec<String> = report
        .mounts
        .iter()
        .filter(|m| m.status == Status::Enforced && !m.options.iter().any(|o| o == "ro"))
        .filter(|m| matches!(m.kind.as_str(), "tmpfs" | "bind" | "overlay" | "rootfs"))
        .filter(|m| !m.destination.starts_with("/dev/") || m.destination == "/dev/shm")
        .filter(|m| m.destination != "/dev" && !m.destination.starts_with("/proc"))
        .map(|m| m.destination.clone())
        .collect();
    writable.dedup();
    let landlock = crate::landlock::plan(&sec.landlock, spec.network, pid_ns, &writable, report)?;

    // seccomp.
    let seccomp = match &sec.seccomp {
        crate::spec::Seccomp::None => {
            report.push("seccomp", Want::Off, Status::Off, "not requested".into());
            None
        }
        crate::spec::Seccomp::Default => {
            let f = crate::seccomp::default_filter(sec.allow_nested_userns)?;
            report.push(
                "seccomp",
                Want::Required,
                Status::Enforced,
                f.summary.clone(),
            );
            Some(f.program)
        }
        crate::spec::Seccomp::Profile { path } => {
            let f = crate::seccomp::profile_filter(path)?;
            report.push(
                "seccomp",
                Want::Required,
                Status::Enforced,
                f.summary.clone(),
            );
            Some(f.program)
        }
    };
    // Keyrings: the command inherits the caller's session keyring (its keys, its secrets).
    // The default profile refuses the keyring calls; otherwise it gets an empty one of its own.
    let session_keyring = !matches!(sec.seccomp, crate::spec::Seccomp::Default);
    if session_keyring {
        report.push(
            "keyring",
            Want::Required,
            Status::Enforced,
            "a session keyring of its own, empty: the caller's keys are out of reach (the \
             seccomp profile in use lets the command use keyrings)"
                .into(),
        );
    }
    // Nested user namespaces: refused by a rule of the default profile only.
    let (status, detail) = match (&sec.seccomp, sec.allow_nested_userns) {
        (_, true) => (Status::Off, "allowed, as asked".to_string()),
        (crate::spec::Seccomp::Default, false) => (
            Status::Enforced,
            "refused by the default seccomp profile (unshare and clone with CLONE_NEWUSER: EPERM; \
             clone3: ENOSYS)"
                .to_string(),
        ),
        (_, false) => (
            Status::Skipped,
            "not refused: the refusal is a rule of the default seccomp profile, which this \
             sandbox does not use; keep the default profile, or add the rule to your own"
                .to_string(),
        ),
    };
    let level = if sec.allow_nested_userns {
        Want::Off
    } else {
        Want::BestEffort
    };
    report.push("nested-userns", level, status, detail);
    Ok(SecurityPlan {
        keep_caps,
        last_cap,
        rlimits,
        landlock,
        seccomp,
        session_keyring,
    })
}

fn validate_limits(l: &Limits) -> Result<()> {
    let positive = |field: &str, ok: bool, what: String| {
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(format!("limits.{field}"), what))
        }
    };
    if let Some(m) = l.memory {
        positive(
            "memory",
            m >= 4096,
            format!("must be at least 4096 bytes, got {m}"),
        )?;
    }
    if let Some(p) = l.pids {
        positive("pids", p >= 1, "must be at least 1".into())?;
    }
    if let Some(c) = l.cpus {
        positive(
            "cpus",
            c.is_finite() && c > 0.0 && c <= 1024.0,
            format!("must be a positive number of CPUs, got {c}"),
        )?;
    }
    if let Some(w) = l.cpu_weight {
        positive(
            "cpu_weight",
            (1..=10000).contains(&w),
            format!("must be 1..=10000, got {w}"),
        )?;
    }
    if let Some(t) = l.cpu_time {
        check_seconds("limits.cpu_time", t)?;
    }
    if l.level == Want::Off {
        return Err(Error::invalid(
            "limits.level",
            "must be required or best-effort",
        ));
    }
    Ok(())
}

fn report_process(report: &mut Report, spec: &Spec, pid_ns: bool) {
    if spec.die_with_parent {
        let how = if pid_ns {
            "the init kills the PID namespace when the caller's handle or process goes away"
        } else {
            "the init kills the command's process group when the caller goes away (no PID namespace: processes that leave the group survive)"
        };
        report.push(
            "die-with-parent",
            Want::Required,
            Status::Enforced,
            how.into(),
        );
    } else {
        report.push(
            "die-with-parent",
            Want::Off,
            Status::Off,
            "not requested: the sandbox outlives its caller".into(),
        );
    }
    match spec.timeout {
        Some(t) => report.push(
            "wall-timeout",
            Want::Required,
            Status::Enforced,
            format!("{t} s, then the whole sandbox is killed"),
        ),
        None => report.push("wall-timeout", Want::Off, Status::Off, "no limit".into()),
    }
    report.push(
        "no-new-privs",
        Want::Required,
        Status::Enforced,
        "set before exec: setuid bits and file capabilities grant nothing".into(),
    );
    report.push(
        "new-session",
        Want::Required,
        Status::Enforced,
        "setsid: no controlling terminal shared with the caller".into(),
    );
    report.push(
        "fds-closed",
        Want::Required,
        Status::Enforced,
        "only fds 0, 1 and 2 reach the command".into(),
    );
}

fn launch(spec: &Spec, mut prep: Prepared, keep_stdin: bool) -> Result<Child> {
    let started = Instant::now();
    let started_ns = sys::monotonic_ns();
    // The init keeps the deadline too: it holds whether or not this process is waiting then.
    prep.plan.deadline_ns = spec.timeout.map_or(0, |t| deadline_ns(started_ns, t));
    let mut pidfd: c_int = -1;
    let mut args = sys::CloneArgs {
        flags: prep.clone_flags,
        pidfd: &mut pidfd as *mut c_int as u64,
        // No signal at its exit: we wait for it through its pidfd (with __WALL), and a host that
        // ignores SIGCHLD (the kernel then reaps its children at exit) or reaps every child from
        // a SIGCHLD handler can neither take its status nor be woken by it.
        exit_signal: 0,
        ..Default::default()
    };
    // Kept open until the sandbox's first process has moved itself in (clone returned).
    let mut _procs = None;
    if let Some(cg) = &prep.cgroup {
        // Asked again at each start with a cgroup (one system call): a filter installed since the
        // last start would refuse CLONE_INTO_CGROUP, which clone cannot do.
        if sys::clone3_recheck() {
            // Born in its cgroup: nothing of the sandbox ever runs outside it.
            args.flags |= sys::CLONE_INTO_CGROUP;
            args.cgroup = cg.dir_fd() as u64;
        } else {
            // clone cannot do that: the first process moves itself in before anything else,
            // and makes its cgroup namespace there.
            let procs = cg.procs()?;
            let namespace = args.flags & libc::CLONE_NEWCGROUP as u64 != 0;
            args.flags &= !(libc::CLONE_NEWCGROUP as u64);
            prep.plan.join_cgroup = Some(child::JoinCgroup {
                procs: procs.as_raw_fd(),
                namespace,
            });
            _procs = Some(procs);
            if let Some(entry) = prep.report.features.iter_mut().find(|f| f.name == "cgroup") {
                entry.detail.push_str(
                    "; entered by the sandbox's first process before its setup (clone3 is \
                     refused here, and clone cannot start a process in a cgroup)",
                );
            }
        }
    }
    if prep.plan.net_apart.is_some() {
        // The setup process's helper makes it.
        args.flags &= !(libc::CLONE_NEWNET as u64);
    }
    let mut start_refused = None;
    let (mut templated, mut template_refused) = (false, None);
    let cloned = match prep.stacks.take() {
        Some(stacks) => {
            args.flags |= (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
            (args.stack, args.stack_size) = stacks.setup();
            let template = prep.template.take();
            let net = prep.net_ahead.as_ref().map_or(-1, |fd| fd.as_raw_fd());
            let entered = template
                .as_deref()
                .map(|t| enter_template(t, net, &stacks, &mut args, &prep.plan, &mut prep.scratch));
            let r = match entered {
                Some(Err(e)) => return Err(e),
                Some(Ok(Err(e))) => {
                    // Not entered (the clone was refused): the start goes on without it, and
                    // makes its own network namespace.
                    prep.plan.in_template = false;
                    if prep.net_ahead.take().is_some() {
                        args.flags |= libc::CLONE_NEWNET as u64;
                        prep.plan.loopback_up = true;
                    }
                    template_refused = Some(e);
                    Err(e)
                }
                Some(Ok(Ok(pid))) => {
                    templated = true;
                    Ok(pid)
                }
                None => {
                    let mut target: (&Plan, &mut [c_int]) = (&prep.plan, &mut prep.scratch);
                    // SAFETY: the child runs child::entry on its own stack in our memory, makes
                    // only raw syscalls on the plan prepared above, and ends in execve or _exit;
                    // this thread is suspended until then (CLONE_VFORK), so `target` and the
                    // stacks outlive its use.
                    unsafe {
                        small::clone(
                            &mut args,
                            &mut target as *mut (&Plan, &mut [c_int]) as usize,
                        )
                    }
                }
            };
            let r = match r {
                // Refused here (an emulator such as valgrind, or a seccomp policy of the caller's):
                // the forking start, which still ends in the small init.
                Err(e @ (Errno::ENOSYS | Errno::EINVAL | Errno::EPERM)) => {
                    start_refused = Some(e);
                    args.flags &= !((libc::CLONE_VM | libc::CLONE_VFORK) as u64);
                    (args.stack, args.stack_size) = (0, 0);
                    // SAFETY: as for the forking start below.
                    match unsafe { sys::clone(&mut args) } {
                        Ok(0) => child::run(&prep.plan, &mut prep.scratch),
                        other => other,
                    }
                }
                other => other,
            };
            // Both processes have executed or exited: the stacks are free.
            drop(stacks);
            r
        }
        // SAFETY: in the child, child::run makes only raw syscalls on memory prepared above and
        // ends in execve or _exit; it never returns into this function.
        None => match unsafe { sys::clone(&mut args) } {
            Ok(0) => child::run(&prep.plan, &mut prep.scratch),
            other => other,
        },
    };
    // The kernel carries the peak of the memory a process executes from into its own, and the
    // command executes from this process's memory (shared: its peak so far; copied: what it held
    // when it was copied, about now): the least its ru_maxrss can read.
    let starter_peak = if args.flags & libc::CLONE_VM as u64 != 0 {
        sys::self_peak_rss()
    } else {
        sys::self_rss()
    };
    let pid = match cloned {
        Ok(pid) => pid,
        Err(e) => return Err(clone_error(e, prep.clone_flags)),
    };
    let upper_locked = prep.upper_locked;
    // SAFETY: clone3 with CLONE_PIDFD stored a new descriptor that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let Prepared {
        plan,
        maps,
        report,
        parent_ends,
        mut held,
        stdin_held,
        sandbox_ends,
        err_r,
        ctl,
        ctl_w,
        status_r,
        cgroup,
        cpu_limit_usec,
        start_skipped,
        home,
        net_ahead,
        ..
    } = prep;
    // The sandbox has its ends: ours close.
    drop(sandbox_ends);
    // The sandbox has joined the network namespace made ahead: our descriptor goes.
    let net_ahead = net_ahead.map(drop).is_some();

    let reap = |pidfd: &OwnedFd| {
        let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
        let mut info: libc::siginfo_t = zeroed();
        let mut usage: libc::rusage = zeroed();
        let _ = sys::retry(|| {
            sys::waitid_pidfd(pidfd.as_raw_fd(), libc::WEXITED, &mut info, &mut usage)
        });
    };

    if plan.wait_for_maps {
        if let Some(maps) = &maps {
            if let Err(e) = maps.install(pid) {
                reap(&pidfd);
                return Err(e);
            }
        }
        if let Err(e) = sys::write_all_nosigpipe(ctl_w, &[child::CTL_GO_ON]) {
            reap(&pidfd);
            return Err(Error::os("write to sandbox control pipe", e));
        }
    }

    // The error pipe closes without a record once the command has been executed. Before that it
    // may carry one request: start fuse-overlayfs.
    let mut report = report;
    let (status, detail) = match (&start_skipped, start_refused) {
        (None, None) => (
            Status::Enforced,
            "the caller's memory is not copied: setup runs in it (CLONE_VM|CLONE_VFORK) and the init is rsandbox-init, a few KiB, executed from a sealed memfd".to_string(),
        ),
        (None, Some(e)) => (
            Status::Skipped,
            format!("clone3 with CLONE_VM refused ({e}): setup ran in a copy of the caller, then executed rsandbox-init"),
        ),
        (Some(why), _) => (
            Status::Skipped,
            format!("{why}: setup runs in a copy of the caller, which stays on as the init"),
        ),
    };
    report.push("start-without-copy", Want::BestEffort, status, detail);
    match (&plan.mounts, template_refused) {
        (Some(_), _) if templated => note_template(&mut report, net_ahead),
        (_, Some(e)) => report.push(
            "mount-template",
            Want::BestEffort,
            Status::Skipped,
            format!("the start could not enter it (clone3: {e}): the tree was built in full"),
        ),
        _ => {}
    }
    let mut fuse_helper: Option<crate::overlay::FuseHelper> = None;
    let stop_helper = |helper: &mut Option<crate::overlay::FuseHelper>| {
        if let Some(mut h) = helper.take() {
            h.stop();
        }
    };
    loop {
        if let Some(helper) = &mut fuse_helper {
            // While the sandbox waits for the mount, a helper that dies must not leave it (and
            // us) waiting out the mount timeout: its status and messages are the error.
            if let Some(status) = wait_fuse_or_sandbox(err_r.as_raw_fd(), helper)? {
                let messages = helper.messages();
                reap(&pidfd);
                return Err(Error::Setup {
                    step: Step::Mount,
                    detail: format!(
                        "fuse-overlayfs exited ({status}) before mounting the root{}",
                        if messages.is_empty() {
                            String::new()
                        } else {
                            format!(": {messages}")
                        }
                    ),
                    errno: Errno::EIO,
                    remedy: Some(
                        "check the layers with fuse-overlayfs by hand (RSANDBOX_FUSE_LOG=FILE keeps its messages), or use the kernel driver".into(),
                    ),
                });
            }
        }
        let mut buf = [0u8; Failure::SIZE];
        let n = sys::read_full(err_r.as_raw_fd(), &mut buf)
            .map_err(|e| Error::os("read sandbox error pipe", e))?;
        if n != Failure::SIZE {
            break;
        }
        let failure = Failure::from_bytes(&buf);
        if failure.step == crate::landlock::RULE_SKIPPED {
            note_rule_skipped(&mut report, &plan, failure);
            continue;
        }
        if failure.step == crate::child::KEYRING_SKIPPED {
            if let Some(entry) = report.features.iter_mut().find(|f| f.name == "keyring") {
                entry.status = Status::Skipped;
                entry.detail = format!(
                    "no session keyring of its own ({:?}): the command holds the caller's, whose \
                     keys the seccomp profile in use lets it read",
                    Errno::from_raw(failure.errno)
                );
            }
            continue;
        }
        let overlay = plan
            .mounts
            .as_ref()
            .and_then(|m| Some((m.overlay()?, m.staging())));
        if let (FUSE_REQUEST, Some((ov, staging)), None) = (failure.step, overlay, &fuse_helper) {
            match crate::overlay::start_fuse(ov, staging, pid) {
                Ok(helper) => {
                    // Noted before the fuse mount can write to the upper.
                    ov.record_fuse();
                    note_fuse(
                        &mut report,
                        ov,
                        Errno::from_raw(failure.errno),
                        helper.process.id(),
                    );
                    fuse_helper = Some(helper);
                    if let Err(e) = sys::write_all_nosigpipe(ctl_w, &[child::CTL_GO_ON]) {
                        stop_helper(&mut fuse_helper);
                        reap(&pidfd);
                        return Err(Error::os("write to sandbox control pipe", e));
                    }
                    continue;
                }
                Err(e) => {
                    reap(&pidfd);
                    return Err(e);
                }
            }
        }
        reap(&pidfd);
        stop_helper(&mut fuse_helper);
        return Err(decode_failure(failure, spec, &plan));
    }
    let mut pid_buf = [0u8; 4];
    let command_pid = match sys::read_full(status_r.as_raw_fd(), &mut pid_buf) {
        Ok(4) => i32::from_ne_bytes(pid_buf),
        _ => {
            reap(&pidfd);
            return Err(Error::os("read sandbox status pipe", Errno::EPIPE));
        }
    };
    let [stdin, stdout, stderr] = parent_ends.map(|fd| fd.map(File::from));
    // Handed over with the handle (the caller's alone from here), or kept marked for
    // communicate_with.
    let (stdin, stdin_held) = match stdin_held {
        Some(fd) if keep_stdin => (stdin, Some((held, fd))),
        Some(fd) => (held.take_back(fd).map(File::from), None),
        None => (stdin, None),
    };
    // With rsandbox-init and no cgroup to remove, the result is the command's status record: the
    // kernel's teardown of the namespaces (about a millisecond) goes on after it, and the
    // library's reaper collects the init. With a cgroup, wait returns once it is removed.
    // A persistent upper is free for the next sandbox once the init has exited (it holds the
    // lock): the result waits for that, as for a cgroup.
    let early_exit = start_skipped.is_none() && cgroup.is_none() && !upper_locked;
    Ok(Child {
        owner: crate::forksafe::process(),
        pid,
        command_pid,
        pid_ns: plan.pid_ns,
        die_with_parent: plan.die_with_parent,
        pidfd,
        fuse: fuse_helper,
        cgroup,
        cpu_limit_usec,
        cpu_timed_out: false,
        sigkill_sent: false,
        kill_by: None,
        ctl: Some(ctl),
        status_r,
        started,
        started_ns,
        deadline: spec.timeout.map(|t| started + Duration::from_secs_f64(t)),
        home,
        early_exit,
        reap_later: false,
        starter_peak,
        wake: std::sync::OnceLock::new(),
        job: None,
        finished: None,
        timed_out: false,
        report,
        stdin,
        stdin_held,
        stdout,
        stderr,
    })
}

/// Says in the report that the mount tree is a copy of a template's.
fn note_template(report: &mut Report, net_ahead: bool) {
    MountPlan::note_template(&mut report.mounts);
    for f in &mut report.features {
        f.detail = match f.name.as_str() {
            "namespace.mnt" => "own mount namespace, the kernel's copy of the template's tree (the host's mounts were detached there)",
            "namespace.user" => "own user namespace, nested in the template's (which maps only the caller's ids); setgroups denied",
            "namespace.net" if net_ahead => "own network namespace holding only lo, up: made ahead of the start by this process in the template's user namespace and entered by nothing before; the command holds no capability over it",
            _ => continue,
        }
        .into();
    }
    report.push(
        "mount-template",
        Want::BestEffort,
        Status::Enforced,
        "the read-only root, the host view and /dev are the kernel's copy of a template built once per process (its own user and mount namespaces, which each start enters): no pivot_root and no old root to detach; /proc, /dev/pts, /dev/shm, /tmp, /run and the work directory are the sandbox's own".into(),
    );
}

/// Starts the sandbox's first process from inside `template`'s namespaces (child::Enter), with
/// `args` as prepared for a start without a template. Returns its pid as the clone would, or the
/// error when entering the template failed.
fn enter_template(
    template: &crate::template::Template,
    net: c_int,
    stacks: &small::Stacks,
    args: &mut sys::CloneArgs,
    plan: &Plan,
    scratch: &mut [c_int],
) -> Result<sys::SysResult<libc::pid_t>> {
    use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
    let mut target: (&Plan, &mut [c_int]) = (plan, scratch);
    let enter = child::Enter {
        user: template.user,
        mnt: template.mnt,
        net,
        args,
        target: &mut target as *mut (&Plan, &mut [c_int]) as usize,
        started: AtomicU32::new(1),
        pid: AtomicI32::new(0),
        step: AtomicU32::new(0),
        errno: AtomicI32::new(0),
    };
    // SAFETY: `enter.args` is the caller's `args`, borrowed for this call.
    let sandbox = unsafe { &mut *enter.args };
    // The sandbox is our child, as without a template (CLONE_PARENT), and takes its exit signal
    // from the entering process (clone3 takes none with CLONE_PARENT). Instead of a vfork wait in
    // the entering process, which then exits at once, the kernel clears `started` when the
    // sandbox's first process executes or exits.
    sandbox.flags &= !(libc::CLONE_VFORK as u64);
    sandbox.flags |= (libc::CLONE_PARENT | libc::CLONE_CHILD_CLEARTID) as u64;
    sandbox.child_tid = enter.started.as_ptr() as u64;
    sandbox.exit_signal = 0;
    let (stack, stack_size) = stacks.enter();
    let mut first = sys::CloneArgs {
        // CLONE_FILES: the sandbox's pidfd lands in our table. No exit signal, for this process
        // and for the sandbox (which takes ours): as without a template.
        flags: (libc::CLONE_VM | libc::CLONE_FILES) as u64,
        exit_signal: 0,
        stack,
        stack_size,
        ..Default::default()
    };
    // SAFETY: child::enter_entry runs on the third stack in our memory, makes only syscalls on
    // `enter` (and, through it, the sandbox's clone arguments, plan and stacks), and exits. This
    // thread waits below until the sandbox's first process has executed or exited (or the
    // entering process failed) and the entering process has exited, so all of them outlive
    // their use.
    let first_pid = match unsafe {
        small::clone_with(
            &mut first,
            child::enter_entry,
            &enter as *const child::Enter as usize,
        )
    } {
        Ok(pid) => pid,
        Err(e) => {
            restore_without_template(sandbox);
            return Ok(Err(e));
        }
    };
    while enter.started.load(Ordering::SeqCst) != 0 {
        sys::futex_wait(&enter.started, 1);
    }
    // It exits right after its clone; reaping it also says it has left its stack. (It raises no
    // signal: only a wait with __WALL elsewhere in this process could have reaped it first, and
    // then it is gone too.)
    let _ = sys::retry(|| sys::waitpid_exited(first_pid));
    let pid = enter.pid.load(Ordering::SeqCst);
    if pid > 0 {
        return Ok(Ok(pid));
    }
    restore_without_template(sandbox);
    let errno = Errno::from_raw(enter.errno.load(Ordering::SeqCst));
    match Step::from_u32(enter.step.load(Ordering::SeqCst)) {
        Some(Step::EnterTemplate) => Err(Error::Setup {
            step: Step::EnterTemplate,
            detail: "setns into the mount tree's template".into(),
            errno,
            remedy: match errno {
                Errno::EPERM => crate::userns::confinement_remedy(),
                _ => crate::error::descriptor_remedy(errno),
            },
        }),
        _ => Ok(Err(errno)),
    }
}

/// The clone arguments of a start without a template again.
fn restore_without_template(args: &mut sys::CloneArgs) {
    args.flags &= !((libc::CLONE_PARENT | libc::CLONE_CHILD_CLEARTID) as u64);
    args.flags |= libc::CLONE_VFORK as u64;
    args.child_tid = 0;
    args.exit_signal = 0;
}

fn clone_error(e: Errno, flags: u64) -> Error {
    if flags & libc::CLONE_NEWUSER as u64 != 0
        && matches!(e, Errno::EPERM | Errno::ENOSPC | Errno::EACCES)
    {
        if let Some(err) = crate::userns::userns_refusal() {
            return err.with_errno(e);
        }
    }
    let remedy = match e {
        Errno::ENOSPC => Some(namespace_limit_remedy()),
        Errno::EAGAIN => Some(process_limit_remedy()),
        Errno::EPERM => crate::userns::confinement_remedy(),
        _ => crate::error::descriptor_remedy(e),
    };
    Error::Setup {
        step: Step::Clone,
        detail: if sys::clone3_usable() {
            format!("clone3(flags={flags:#x})")
        } else {
            format!("clone(flags={flags:#x}; clone3 is refused here)")
        },
        errno: e,
        remedy,
    }
}

/// What to do when the kernel refuses a new process with EAGAIN: this user's process limit
/// (RLIMIT_NPROC, counted over all of the user's processes) or a cgroup's pids.max is reached.
fn process_limit_remedy() -> String {
    let nproc = match sys::soft_rlimit(sys::rlimit::NPROC) {
        Ok(n) if n != libc::RLIM_INFINITY => format!(" ({n} here)"),
        _ => String::new(),
    };
    format!(
        "a limit on processes is reached: this user's RLIMIT_NPROC{nproc}, counted over all of its \
         processes, or the pids.max of the caller's cgroup: end other processes or sandboxes, or \
         raise the limit (ulimit -u, /etc/security/limits.conf, pids.max)"
    )
}

/// What to do when the kernel refuses a namespace with ENOSPC: a per-user limit (counted across
/// this user's namespaces, and settable in each user namespace) is reached. Names the limits that
/// are 0 here, where there are some.
fn namespace_limit_remedy() -> String {
    let zero: Vec<String> = ["user", "mnt", "pid", "ipc", "uts", "net", "cgroup", "time"]
        .iter()
        .map(|ns| format!("max_{ns}_namespaces"))
        .filter(|name| {
            std::fs::read_to_string(format!("/proc/sys/user/{name}")).is_ok_and(|v| v.trim() == "0")
        })
        .map(|name| format!("user.{name}"))
        .collect();
    if zero.is_empty() {
        "a limit on namespaces per user is reached (the user.max_*_namespaces sysctls, counted over every user namespace of this user): end other sandboxes or raise the limit with sysctl".into()
    } else {
        format!(
            "{} is 0 in this user namespace: raise it (sysctl -w {}=10000) where it was lowered",
            zero.join(", "),
            zero[0]
        )
    }
}

/// Records in the report that fuse-overlayfs assembles the root, and why.
fn note_fuse(report: &mut Report, ov: &crate::overlay::OverlayPlan, refused: Errno, pid: u32) {
    if let Some(root) = report.mounts.iter_mut().find(|m| m.destination == "/") {
        root.source = "fuse-overlayfs".into();
        root.detail = if ov.kernel_tried() {
            format!(
                "kernel overlayfs refused ({refused:?}: {}); fuse-overlayfs pid {pid} runs outside the sandbox's PID namespace",
                refused.desc()
            )
        } else {
            format!("fuse-overlayfs pid {pid} runs outside the sandbox's PID namespace")
        };
    }
}

fn decode_failure(f: Failure, spec: &Spec, plan: &Plan) -> Error {
    let errno = Errno::from_raw(f.errno);
    let step = Step::from_u32(f.step).unwrap_or(Step::Clone);
    let overlay = plan.mounts.as_ref().and_then(|m| m.overlay());
    if let (Some(ov), Step::CreateFilesystem, crate::mounts::OVERLAY_INDEX) =
        (overlay, step, f.index)
    {
        return ov.kernel_refusal(errno);
    }
    let name = spec.process.args[0].clone();
    if step == Step::Exec {
        return exec_error(name, errno, f.detail);
    }
    let detail = match step {
        Step::DenySetgroups => "write(\"/proc/self/setgroups\", \"deny\")".to_string(),
        Step::UidMap => "write(\"/proc/self/uid_map\")".to_string(),
        Step::GidMap => "write(\"/proc/self/gid_map\")".to_string(),
        Step::Chdir => format!(
            "chdir({:?})",
            plan.cwd
                .as_ref()
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        Step::SetHostname => format!("sethostname({:?})", spec.hostname),
        Step::LoopbackUp => "ioctl(SIOCSIFFLAGS, \"lo\", IFF_UP)".to_string(),
        Step::NetworkNamespace => "unshare(CLONE_NEWNET), then setns into it".to_string(),
        Step::SetUid | Step::SetGid => format!("setresuid/setresgid({:?})", plan.switch_ids),
        Step::Rlimits => match plan.rlimits.get(f.index as usize) {
            Some(&(res, soft, hard)) => format!(
                "setrlimit(RLIMIT_{}, soft {soft}, hard {hard})",
                rlimit_name(res).to_uppercase()
            ),
            None => step.name().to_string(),
        },
        _ => match (&plan.mounts, f.index) {
            (Some(m), i) if i != u32::MAX || is_mount_step(step) => m.describe(i),
            _ => step.name().to_string(),
        },
    };
    let remedy = match (step, errno) {
        (Step::UidMap | Step::GidMap | Step::DenySetgroups | Step::MakeRootPrivate | Step::CreateFilesystem, Errno::EPERM | Errno::EACCES) => {
            crate::userns::userns_refusal()
                .and_then(|e| e.remedy().map(str::to_string))
                .or_else(crate::userns::confinement_remedy)
        }
        (Step::NetworkNamespace, Errno::ENOSPC) => Some(namespace_limit_remedy()),
        (
            Step::NetworkNamespace
            | Step::OpenSource
            | Step::SetMountAttributes
            | Step::AttachRoot
            | Step::Mount
            | Step::PivotRoot
            | Step::DetachOldRoot
            | Step::EnterTemplate,
            Errno::EPERM,
        ) => crate::userns::confinement_remedy(),
        (Step::ForkCommand | Step::NetworkNamespace, Errno::EAGAIN) => Some(process_limit_remedy()),
        (Step::Rlimits, Errno::EPERM) => plan.rlimits.get(f.index as usize).map(|&(res, _, _)| {
            let hard = sys::hard_rlimit(res).map_or("unknown".into(), |h| {
                if h == u64::MAX { "unlimited".to_string() } else { h.to_string() }
            });
            format!(
                "a sandbox can lower its limits, never raise them: the hard limit of {} is {hard} \
                 here; ask for at most that, or raise it for the caller first (ulimit -H, or \
                 systemd's Limit*=)",
                rlimit_name(res)
            )
        }),
        (Step::Mount, Errno::EXDEV) if detail.starts_with("mask(") => Some(
                "the rootfs's proc directory is no longer where proc was mounted: something (another sandbox on a writable rootfs?) moved or replaced it while this one was built; a masked /proc cannot be promised then"
                    .into(),
            ),
        (Step::CreateMountPoint, Errno::EROFS) => Some(
                "the mount point is missing under a read-only mount (a read-only bind or rootfs): create it in the source, or mount a tmpfs on a parent first"
                    .into(),
            ),
        _ => crate::error::descriptor_remedy(errno),
    };
    Error::Setup {
        step,
        detail,
        errno,
        remedy,
    }
}

/// Whether a command keeping `kept` could pass the kernel's ptrace access check against the
/// sandbox's pid 1 (which holds every capability of the user namespace): with CAP_SYS_PTRACE, or
/// with a permitted set as large as pid 1's.
fn could_reach_setup(kept: &[String]) -> bool {
    if kept.is_empty() {
        return false;
    }
    let names: Vec<String> = kept
        .iter()
        .map(|n| {
            n.to_ascii_uppercase()
                .trim_start_matches("CAP_")
                .to_string()
        })
        .collect();
    names.iter().any(|n| n == "SYS_PTRACE") || names.len() >= caps::all().len()
}

/// The error for a failure record of a pool's agent (steps stdio, chdir and exec only).
pub(crate) fn decode_job_failure(f: Failure, process: &crate::spec::Process) -> Error {
    let errno = Errno::from_raw(f.errno);
    let step = Step::from_u32(f.step).unwrap_or(Step::Exec);
    let name = process.args[0].clone();
    match step {
        Step::Exec if errno != Errno::EINVAL || f.detail != 0 => exec_error(name, errno, f.detail),
        _ => Error::Setup {
            step,
            detail: match step {
                Step::Chdir => format!("chdir({:?})", process.cwd.clone().unwrap_or_default()),
                Step::Stdio => "install the job's standard streams".to_string(),
                _ => "the pooled sandbox's agent refused the job".to_string(),
            },
            errno,
            remedy: None,
        },
    }
}

/// The error of a command that could not be executed (`detail` as child::EXEC_*).
fn exec_error(name: String, errno: Errno, detail: u32) -> Error {
    match (detail, errno) {
        (_, Errno::E2BIG) => Error::invalid(
            "process",
            format!(
                "the arguments and environment of {name} are more than execve takes (E2BIG: the \
                 kernel's limit is a quarter of the stack limit, and 128 KiB for one string)"
            ),
        ),
        (crate::child::EXEC_REFUSED, _) => Error::NotExecutable { name, errno },
        (detail, _) => Error::ExecutableNotFound {
            name,
            errno,
            interpreter_missing: detail == crate::child::EXEC_NO_INTERPRETER,
        },
    }
}

fn is_mount_step(step: Step) -> bool {
    matches!(
        step,
        Step::OpenSource
            | Step::SetMountAttributes
            | Step::CreateFilesystem
            | Step::AttachRoot
            | Step::CreateMountPoint
            | Step::Mount
            | Step::Symlink
            | Step::PivotRoot
            | Step::DetachOldRoot
            | Step::RemountRootReadonly
            | Step::MakeRootPrivate
    )
}

impl Child {
    /// The host pid of the sandbox's init (the command's parent; pid 1 inside).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A pidfd for the init, usable with poll(2): it becomes readable when the sandbox exits.
    pub fn pidfd(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }

    /// A descriptor for an event loop: it becomes readable (poll(2)) when
    /// [`try_wait`](Self::try_wait) has something to do, which it then does. That is when the
    /// result is there (the sandbox's status pipe, when the result comes with the command's
    /// status ahead of the init's exit and the namespaces' teardown; else the pidfd), when a
    /// limit is due to be checked (the deadline; every 20 ms for CPU time), and when an init
    /// asked to end its sandbox has had its grace ([`END_GRACE`]), so that the limits and a
    /// kill hold for a caller that only polls this and calls `try_wait`. Owned by the child.
    pub fn result_fd(&self) -> RawFd {
        let plain = if self.early_exit {
            self.status_r.as_raw_fd()
        } else {
            self.pidfd.as_raw_fd()
        };
        // Without its descriptors (none left), the plain one: try_wait still checks the limits
        // each time it is called.
        match self.wake.get_or_init(|| Wake::new(self).ok()) {
            Some(w) => w.epoll.as_raw_fd(),
            None => plain,
        }
    }

    /// The command's pid as its init sees it (2 inside a PID namespace; a host pid without one).
    pub fn command_pid(&self) -> i32 {
        self.command_pid
    }

    /// What the sandbox enforces.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Sends `signal` (1 to SIGRTMAX; 0 checks that the init is there) to every process of the
    /// sandbox. SIGKILL ends the sandbox: its init kills and reaps every process (so that their
    /// CPU time and memory are in the result), or the kernel does if the init has not within
    /// [`END_GRACE`].
    pub fn kill(&mut self, signal: i32) -> Result<()> {
        self.own()?;
        if !(0..=libc::SIGRTMAX()).contains(&signal) {
            return Err(Error::invalid(
                "signal",
                format!(
                    "{signal} is not a signal number (1 to {})",
                    libc::SIGRTMAX()
                ),
            ));
        }
        if self.finished.is_some() {
            return Ok(());
        }
        match signal {
            libc::SIGKILL => self.end(),
            libc::SIGSTOP => self.stop_all(),
            _ => self.signal(signal),
        }
    }

    /// Gives the init the wall-clock deadline `at` (CLOCK_MONOTONIC ns) of a sandbox started
    /// ahead of it (a pool's): the init ends the sandbox then, whether or not this process is
    /// waiting. Best effort: this process's own watch keeps the deadline as well.
    pub(crate) fn keep_deadline(&mut self, at: u64) {
        let mut message = [0u8; 9];
        message[0] = child::CTL_DEADLINE;
        message[1..].copy_from_slice(&at.to_ne_bytes());
        if let Some(fd) = self.ctl.as_ref().and_then(crate::forksafe::Ends::first) {
            // One write of 9 bytes: a pipe takes it whole (PIPE_BUF), so the init reads it whole.
            let _ = sys::write_all_nosigpipe(fd, &message);
        }
    }

    /// SIGSTOP to every process but the init: the init relays it when asked on the control pipe
    /// (SIGSTOP sent to the init would stop the init alone). SIGCONT continues them.
    fn stop_all(&mut self) -> Result<()> {
        let asked = self
            .ctl
            .as_ref()
            .and_then(crate::forksafe::Ends::first)
            .map(|fd| sys::write_all_nosigpipe(fd, &[child::CTL_STOP]));
        match asked {
            Some(Ok(())) => Ok(()),
            // The init is gone: the sandbox has ended (its result says how).
            Some(Err(Errno::EPIPE)) => Ok(()),
            Some(Err(e)) => Err(Error::os("write to sandbox control pipe", e)),
            None => Err(Error::invalid(
                "signal",
                "SIGSTOP needs the sandbox's control pipe, which this handle no longer holds",
            )),
        }
    }

    /// Ends the sandbox. Its init is asked to, on the control pipe: it kills and reaps every
    /// process itself, and reports the command's status with the usage of them all. A SIGKILL
    /// of the init would lose that usage (the kernel releases a dying init's children without
    /// counting them): a run killed at its wall-clock limit would show none of the CPU time or
    /// memory it spent. Where the init cannot be asked, or has not ended by [`END_GRACE`]
    /// (`watch` sees to it), SIGKILL from here.
    fn end(&mut self) -> Result<()> {
        if self.kill_by.is_some() {
            // Asked already; the grace's end does the rest.
            return Ok(());
        }
        let asked = self
            .ctl
            .as_ref()
            .and_then(crate::forksafe::Ends::first)
            .is_some_and(|fd| sys::write_all_nosigpipe(fd, &[child::CTL_END]).is_ok());
        if !asked {
            return self.signal(libc::SIGKILL);
        }
        self.sigkill_sent = true;
        self.kill_by = Some(Instant::now() + END_GRACE);
        if let Some(Some(w)) = self.wake.get() {
            // So that a caller polling result_fd calls try_wait when the grace ends.
            let _ = w.arm(END_GRACE, Duration::ZERO);
        }
        Ok(())
    }

    /// Sends `signal` to the init (which forwards it to every process but SIGKILL, which ends
    /// it and so the PID namespace).
    fn signal(&mut self, signal: i32) -> Result<()> {
        if signal == libc::SIGKILL && !self.pid_ns {
            // No PID namespace: the init cannot relay SIGKILL, so reach the process group directly.
            let _ = sys::kill(-self.command_pid, libc::SIGKILL);
        }
        match sys::pidfd_send_signal(self.pidfd.as_raw_fd(), signal) {
            Ok(()) => {
                self.sigkill_sent |= signal == libc::SIGKILL;
                Ok(())
            }
            Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::os("pidfd_send_signal", e)),
        }
    }

    /// Waits for the sandbox to exit, enforcing the spec's wall-clock limit.
    pub fn wait(&mut self) -> Result<RunResult> {
        loop {
            if let Some(r) = self.wait_timeout(Duration::from_secs(3600))? {
                return Ok(r);
            }
        }
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` (the sandbox keeps running).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<RunResult>> {
        // A timeout past what the clock can represent: an hour at a time, for as long as it takes.
        let Some(until) = Instant::now().checked_add(timeout) else {
            loop {
                if let Some(r) = self.wait_timeout(Duration::from_secs(3600))? {
                    return Ok(Some(r));
                }
            }
        };
        loop {
            if let Some(r) = self.try_wait()? {
                return Ok(Some(r));
            }
            let now = Instant::now();
            // What is due next: the deadline (once expired, it has done its work: the exit is
            // waited for without spinning), the end of an init's grace to end the sandbox.
            let due = (self.deadline)
                .filter(|_| !self.timed_out)
                .into_iter()
                .chain(self.kill_by)
                .min();
            let stop = match due {
                Some(d) if d < until => d,
                _ => until,
            };
            if now >= stop {
                if due.is_some_and(|d| now >= d) {
                    self.watch()?;
                    continue;
                }
                return Ok(None);
            }
            let mut ms = (stop - now).as_millis().clamp(1, i32::MAX as u128) as c_int;
            if self.cpu_watch() {
                // The CPU-time limit is checked from cpu.stat every 20 ms.
                ms = ms.min(20);
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: if self.early_exit {
                        self.status_r.as_raw_fd()
                    } else {
                        -1
                    },
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            sys::retry(|| sys::poll(&mut fds, ms)).map_err(|e| Error::os("poll pidfd", e))?;
        }
    }

    /// Refuses a handle this process holds only as a copy made by fork: the sandbox, its result
    /// and its end are the starting process's.
    fn own(&self) -> Result<()> {
        if crate::forksafe::process() == self.owner {
            return Ok(());
        }
        Err(Error::Unsupported {
            errno: Some(Errno::ECHILD),
            feature: "a sandbox handle copied by fork".into(),
            reason: format!(
                "process {} started this sandbox; process {} is a fork of it and holds a copy \
                 of the handle, whose result and end are the starting process's",
                self.owner.0,
                std::process::id()
            ),
            remedy: Some(
                "wait for and signal a sandbox in the process that started it; a forked \
                 process starts sandboxes of its own"
                    .into(),
            ),
        })
    }

    /// Returns the result if the sandbox has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<RunResult>> {
        self.own()?;
        if let Some(Some(w)) = self.wake.get() {
            w.drain();
        }
        if let Some(r) = &self.finished {
            return Ok(Some(RunResult {
                report: self.report.clone(),
                ..r.clone()
            }));
        }
        // A result already there is taken before the limits are looked at: a command that ended
        // in time is not a timeout for being waited on late.
        if let Some(r) = self.take_result()? {
            return Ok(Some(r));
        }
        self.watch()?;
        self.take_result()
    }

    /// The result, if the sandbox has ended (see [`try_wait`](Self::try_wait)).
    fn take_result(&mut self) -> Result<Option<RunResult>> {
        if self.early_exit {
            if let Some(record) = self.status_record()? {
                let status = ExitStatus::from_wait_status(record.word);
                let end = Some((record.ended_ns, record.flags));
                return Ok(Some(self.conclude(status, record.usage, true, end)));
            }
        }
        let mut info: libc::siginfo_t = zeroed();
        let mut usage: libc::rusage = zeroed();
        let res = sys::retry(|| {
            sys::waitid_pidfd(
                self.pidfd.as_raw_fd(),
                libc::WEXITED | libc::WNOHANG,
                &mut info,
                &mut usage,
            )
        });
        // ECHILD: another part of this process reaped the init, which has exited, and its wait
        // status went with it. The kernel does that for a process ignoring SIGCHLD (or setting
        // SA_NOCLDWAIT), since an exec (the init's) makes a process raise SIGCHLD at its exit;
        // a SIGCHLD handler waiting for every child does it too.
        let reaped_elsewhere = match res {
            Ok(()) => false,
            Err(Errno::ECHILD) => true,
            Err(e) => return Err(Error::os("waitid", e)),
        };
        // SAFETY: waitid filled info (or left it zeroed when nothing was waitable).
        let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
        if pid == 0 && !reaped_elsewhere {
            return Ok(None);
        }
        // The command's status, from the init: the small init's whole record, or the status
        // word alone (the init of a forking start).
        let mut buf = [0u8; RECORD];
        let got = sys::read_full(self.status_r.as_raw_fd(), &mut buf).unwrap_or(0);
        let mut usage_lost = false;
        let mut end = None;
        let status = if got == RECORD {
            let record = parse_record(&buf);
            if reaped_elsewhere {
                usage = record.usage;
            }
            end = Some((record.ended_ns, record.flags));
            ExitStatus::from_wait_status(record.word)
        } else if got >= 4 {
            usage_lost = reaped_elsewhere;
            ExitStatus::from_wait_status(i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]))
        } else if reaped_elsewhere {
            // Killed by us before it could report: by SIGKILL, then. Otherwise, nothing says.
            if !self.sigkill_sent {
                return Err(status_lost());
            }
            usage_lost = true;
            ExitStatus::Signaled(libc::SIGKILL)
        } else if code == libc::CLD_EXITED {
            // The init died before the command (killed): report how the init ended.
            ExitStatus::Exited(status)
        } else {
            ExitStatus::Signaled(status)
        };
        if usage_lost {
            self.report.features.push(Feature {
                name: "result.usage".into(),
                level: Want::BestEffort,
                status: Status::Skipped,
                detail: format!(
                    "another part of this process reaped the sandbox's init before it reported \
                     ({REAPED_ELSEWHERE}), and the processes' resource usage went with its wait \
                     status: {}",
                    if self.cgroup.is_some() {
                        "times and memory come from the cgroup"
                    } else {
                        "times and memory read 0"
                    }
                ),
            });
        }
        Ok(Some(self.conclude(status, usage, false, end)))
    }

    /// The init's status record when it has been written; None while the command runs, or when
    /// the init ended without one.
    fn status_record(&mut self) -> Result<Option<Record>> {
        let mut fds = [libc::pollfd {
            fd: self.status_r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        sys::retry(|| sys::poll(&mut fds, 0)).map_err(|e| Error::os("poll status pipe", e))?;
        if fds[0].revents == 0 {
            return Ok(None);
        }
        let mut buf = [0u8; RECORD];
        match sys::read_full(self.status_r.as_raw_fd(), &mut buf) {
            Ok(RECORD) => Ok(Some(parse_record(&buf))),
            // No record: the init was killed; its exit says how (the waitid path).
            _ => {
                self.early_exit = false;
                if let Some(Some(w)) = self.wake.get() {
                    // At its end the pipe stays readable: from now on the pidfd says when.
                    w.forget(self.status_r.as_raw_fd());
                }
                Ok(None)
            }
        }
    }

    /// The result, from the command's status and the usage of the sandbox's processes.
    /// `init_alive`: the init is still exiting (its reaping and the cgroup's removal are left to
    /// the background reaper). `end`: from the init's record, when the command ended
    /// (CLOCK_MONOTONIC ns) and its flags: the wall-clock time is the sandbox's own, however late
    /// the result is taken, and a deadline the init kept itself is a timeout.
    fn conclude(
        &mut self,
        status: ExitStatus,
        usage: libc::rusage,
        init_alive: bool,
        end: Option<(u64, u64)>,
    ) -> RunResult {
        let wall = match end {
            Some((ended, _)) if ended >= self.started_ns => {
                Duration::from_nanos(ended - self.started_ns).min(self.started.elapsed())
            }
            _ => self.started.elapsed(),
        };
        if end.is_some_and(|(_, flags)| flags & child::RECORD_DEADLINE != 0) {
            self.timed_out = true;
        }
        // Accounting outlives the processes; read it, then remove the cgroup.
        let acct = self
            .cgroup
            .as_ref()
            .map(Cgroup::accounting)
            .unwrap_or_default();
        if init_alive {
            self.reap_later = true;
        } else if let Some(mut cg) = self.cgroup.take() {
            // A cgroup that will not go away must not cost the caller the result; the next
            // attempt is its drop.
            let _ = cg.remove();
        }
        let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        let rss = (usage.ru_maxrss.max(0) as u64) * 1024;
        // The cgroup counts processes the init never reaped; the init's record counts what it
        // reaped up to the moment it exited, which the cgroup's lazily gathered statistics may
        // not have caught up with yet (a process ended by RLIMIT_CPU can show less than its
        // limit there). The larger of the two is the more complete.
        let reaped = (secs(usage.ru_utime), secs(usage.ru_stime));
        let (user_time, system_time) = match (acct.user_usec, acct.system_usec) {
            (Some(u), Some(s)) if (u + s) as f64 / 1e6 >= reaped.0 + reaped.1 => {
                (u as f64 / 1e6, s as f64 / 1e6)
            }
            _ => reaped,
        };
        let cpu_used = user_time + system_time;
        let oom_kills = acct.oom_kills.unwrap_or(0);
        // The budget is spent whether the sandbox was stopped for it (by the watch, or by
        // RLIMIT_CPU's SIGXCPU) or ended having used more (RLIMIT_CPU, the fallback without a
        // cgroup, limits each process alone).
        let over_cpu = self
            .cpu_limit_usec
            .is_some_and(|l| cpu_used * 1e6 >= l as f64);
        let verdict = if self.timed_out {
            Verdict::WallTimeout
        } else if self.cpu_timed_out || over_cpu {
            Verdict::CpuTimeout
        } else if oom_kills > 0 && !status.success() {
            Verdict::MemoryLimit
        } else {
            match status {
                ExitStatus::Exited(0) => Verdict::Ok,
                ExitStatus::Exited(_) => Verdict::ExitNonzero,
                ExitStatus::Signaled(_) => Verdict::Signaled,
            }
        };
        let (memory_peak, memory_peak_source) = match acct.memory_peak {
            Some(p) => (p, "memory.peak".to_string()),
            // (With a margin for what this process grew by between the reading and the start.)
            None if rss > 0 && self.starter_peak > 0 && rss <= self.starter_peak + (1 << 20) => (
                rss,
                format!(
                    "ru_maxrss, an upper bound: the kernel counts in it the memory of the \
                     process the command was started from ({} KiB here); a memory cgroup \
                     measures the sandbox alone",
                    self.starter_peak / 1024
                ),
            ),
            None => (
                rss,
                "ru_maxrss (largest single process; no memory controller)".to_string(),
            ),
        };
        let result = RunResult {
            status,
            verdict,
            timed_out: self.timed_out,
            usage: Usage {
                wall_time: wall.as_secs_f64(),
                user_time,
                system_time,
                cpu_time: cpu_used,
                max_rss: rss,
                memory_peak,
                memory_peak_source,
                oom_kills,
                pids_peak: acct.pids_peak,
            },
            stdout: None,
            stderr: None,
            stdout_truncated: false,
            stderr_truncated: false,
            report: Report::default(),
        };
        if !init_alive {
            self.ctl = None;
        }
        self.stop_fuse();
        self.job = None;
        // The kept copy goes without the report (`self.report` has it): one copy per result.
        self.finished = Some(result.clone());
        RunResult {
            report: self.report.clone(),
            ..result
        }
    }

    /// Whether the CPU-time limit is watched through the cgroup.
    /// Enforces the wall-clock and CPU-time limits: kills the sandbox once either is spent.
    pub(crate) fn watch(&mut self) -> Result<()> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.expire()?;
        }
        if self.kill_by.is_some_and(|d| Instant::now() >= d) {
            // The init has not ended the sandbox it was asked to end: the kernel does.
            self.kill_by = None;
            self.signal(libc::SIGKILL)?;
        }
        if self.cpu_watch() {
            let used = self.cgroup.as_ref().and_then(Cgroup::cpu_usage_usec);
            if let (Some(used), Some(limit)) = (used, self.cpu_limit_usec) {
                if used >= limit {
                    self.cpu_timed_out = true;
                    self.kill(libc::SIGKILL)?;
                }
            }
        }
        Ok(())
    }

    /// How long a waiter may sleep before [`watch`](Self::watch) must run again (None: until
    /// something happens).
    pub(crate) fn watch_interval(&self) -> Option<Duration> {
        let until_deadline = self
            .deadline
            .filter(|_| !self.timed_out)
            .into_iter()
            .chain(self.kill_by)
            .min()
            .map(|d| d.saturating_duration_since(Instant::now()));
        // The CPU-time limit is checked from cpu.stat every 20 ms.
        let cpu = self.cpu_watch().then_some(Duration::from_millis(20));
        match (until_deadline, cpu) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn cpu_watch(&self) -> bool {
        self.cpu_limit_usec.is_some() && self.cgroup.is_some() && !self.cpu_timed_out
    }

    /// Freezes every process of the sandbox (cgroup.freeze); they stay frozen until [`thaw`](Self::thaw).
    pub fn freeze(&mut self) -> Result<()> {
        self.freezer()?.freeze(true)
    }

    /// Thaws a frozen sandbox.
    pub fn thaw(&mut self) -> Result<()> {
        self.freezer()?.freeze(false)
    }

    fn freezer(&self) -> Result<&Cgroup> {
        self.own()?;
        self.cgroup.as_ref().ok_or_else(|| Error::Unsupported {
            errno: None,
            feature: "freeze".into(),
            reason: "the sandbox has no cgroup (see the report's cgroup entry)".into(),
            remedy: Some("run with a delegated cgroup (--cgroup-parent)".into()),
        })
    }

    /// Lets go of a finished sandbox, for a program about to exit. When the result came before
    /// the sandbox's init had exited and nothing else is left to clean up (no cgroup to remove, no
    /// fuse-overlayfs to stop), its handles are just closed, without the background reaper a
    /// long-lived caller needs: the init, already exiting, is reaped by whoever inherits it when
    /// this program exits. Otherwise (or before a result) this is the same as dropping the handle.
    pub fn release_for_exit(mut self) {
        if self.reap_later && self.cgroup.is_none() && self.fuse.is_none() {
            self.reap_later = false;
        }
    }

    /// Ends a sandbox nobody will take a result from (a pool's, never given a job or refused
    /// one) and leaves its init to the background reaper, whatever `die_with_parent` says: the
    /// caller never saw it, so it must not linger, nor its init stay a zombie.
    pub(crate) fn discard(mut self) {
        // (At once, from here: nobody wants its usage.)
        if self.signal(libc::SIGKILL).is_ok() {
            self.reap_later = true;
        }
    }

    /// [`discard`](Self::discard), waiting until the sandbox's init has been reaped.
    pub(crate) fn discard_now(mut self) {
        // The drop of an unfinished sandbox that dies with its caller: kill, then reap here.
        self.die_with_parent = true;
        self.reap_later = false;
    }

    /// Stops fuse-overlayfs once nothing in the sandbox can use it any more.
    fn stop_fuse(&mut self) {
        if let Some(mut helper) = self.fuse.take() {
            helper.stop();
        }
    }

    fn expire(&mut self) -> Result<()> {
        if !self.timed_out {
            self.timed_out = true;
            self.kill(libc::SIGKILL)?;
        }
        Ok(())
    }

    /// Feeds `input` to stdin (then closes it), reads stdout and stderr to the end (each capped at
    /// `limit` bytes; the rest is read and discarded, so the command never blocks on a full pipe),
    /// and waits. Enforces the wall-clock limit throughout.
    pub fn communicate(&mut self, input: Option<&[u8]>, limit: Option<u64>) -> Result<RunResult> {
        self.communicate_with(input, limit, Duration::MAX, &mut || false)
    }

    /// Like [`communicate`](Self::communicate), calling `interrupt` at least every `every`: when
    /// it returns true the sandbox is killed (SIGKILL to every process in it) and the result, with
    /// what was read so far, is returned at once. Embedders use this to let a host signal (Ctrl-C
    /// in Python) stop a run that is blocked reading output.
    pub fn communicate_with(
        &mut self,
        input: Option<&[u8]>,
        limit: Option<u64>,
        every: Duration,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<RunResult> {
        // Before the streams are touched: a forked copy must not take the parent's output.
        self.own()?;
        let captured = crate::capture::communicate(self, input, limit, every, interrupt)?;
        // The streams are closed (or were never pipes); the command may run on: `interrupt`
        // keeps its say until the end.
        let slice = every.min(Duration::from_secs(3600));
        let mut interrupted = captured.interrupted;
        let mut result = loop {
            if let Some(r) = self.wait_timeout(slice)? {
                break r;
            }
            if !interrupted && interrupt() {
                interrupted = true;
                self.kill(libc::SIGKILL)?;
            }
        };
        result.stdout = captured.stdout;
        result.stderr = captured.stderr;
        result.stdout_truncated = captured.stdout_truncated;
        result.stderr_truncated = captured.stderr_truncated;
        if (captured.stdout_truncated || captured.stderr_truncated) && result.verdict == Verdict::Ok
        {
            result.verdict = Verdict::OutputLimit;
        }
        let report = std::mem::take(&mut result.report);
        self.finished = Some(result.clone());
        result.report = report;
        Ok(result)
    }
}

/// The descriptors behind [`Child::result_fd`] where a limit is watched: an epoll set of the
/// pidfd, the status pipe (for a result that comes with the command's status) and a timer at
/// the next check of a limit.
#[derive(Debug)]
struct Wake {
    epoll: OwnedFd,
    timer: OwnedFd,
}

impl Wake {
    fn new(child: &Child) -> std::result::Result<Wake, Errno> {
        // SAFETY: plain syscalls; each new descriptor is owned at once.
        let epoll = unsafe {
            OwnedFd::from_raw_fd(sys::check_int(libc::epoll_create1(libc::EPOLL_CLOEXEC))?)
        };
        // SAFETY: as above.
        let timer = unsafe {
            OwnedFd::from_raw_fd(sys::check_int(libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
            ))?)
        };
        let wake = Wake { epoll, timer };
        wake.watch(child.pidfd.as_raw_fd())?;
        if child.early_exit {
            wake.watch(child.status_r.as_raw_fd())?;
        }
        wake.watch(wake.timer.as_raw_fd())?;
        // First at the deadline (or the first CPU check, or the end of a grace), then every 20 ms
        // while CPU time is watched; Instant is CLOCK_MONOTONIC, as the timer. Nothing due:
        // left unarmed (`end` arms it).
        let every = if child.cpu_watch() {
            Duration::from_millis(20)
        } else {
            Duration::ZERO
        };
        if let Some(first) = child.watch_interval() {
            wake.arm(first, every)?;
        }
        Ok(wake)
    }

    /// Sets the timer: first after `first`, then every `every` (never again if zero).
    fn arm(&self, first: Duration, every: Duration) -> std::result::Result<(), Errno> {
        let spec = |d: Duration| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as _,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        let setting = libc::itimerspec {
            it_interval: spec(every),
            // Zero would disarm it: a deadline already passed fires at once.
            it_value: spec(first.max(Duration::from_nanos(1))),
        };
        // SAFETY: setting is a valid itimerspec; the old value is not asked for.
        sys::check_int(unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &setting, std::ptr::null_mut())
        })
        .map(drop)
    }

    fn watch(&self, fd: RawFd) -> std::result::Result<(), Errno> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: event is a valid epoll_event for the call.
        sys::check_int(unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
        })
        .map(drop)
    }

    fn forget(&self, fd: RawFd) {
        // SAFETY: EPOLL_CTL_DEL takes no event.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Takes the timer's expirations, so the set is readable again only when something new is
    /// due.
    fn drain(&self) {
        let mut count = [0u8; 8];
        // SAFETY: count is a writable 8-byte buffer; the timer is non-blocking.
        unsafe { libc::read(self.timer.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if crate::forksafe::process() != self.owner {
            // A copy made by fork (the forked process exiting, say): the sandbox goes on for
            // the process that started it. The copied descriptors close; the cgroup and a pool's
            // count of running jobs are left alone.
            std::mem::forget(self.cgroup.take());
            std::mem::forget(self.job.take());
            // The control pipe was marked: the fork closed this copy already.
            std::mem::forget(self.ctl.take());
            // Its stdin was marked: the fork closed this copy already.
            std::mem::forget(self.stdin_held.take());
            return;
        }
        if self.reap_later {
            // The command is done; the init is exiting. Reap it (and remove the cgroup) off the
            // caller's path.
            let pidfd = self.pidfd.try_clone();
            if let Ok(pidfd) = pidfd {
                reaper::hand_over(pidfd, self.cgroup.take(), self.ctl.take());
            }
            return;
        }
        if self.finished.is_none() && self.die_with_parent {
            // Closing the control pipe makes the init kill the sandbox; SIGKILL makes it certain.
            self.ctl = None;
            let _ = self.signal(libc::SIGKILL);
            let mut info: libc::siginfo_t = zeroed();
            let mut usage: libc::rusage = zeroed();
            let _ = sys::retry(|| {
                sys::waitid_pidfd(self.pidfd.as_raw_fd(), libc::WEXITED, &mut info, &mut usage)
            });
            self.stop_fuse();
        } else if let Some(cg) = self.cgroup.take() {
            cg.release();
        }
    }
}

/// The kernel's struct rusage, as getrusage wrote it in the init: two timevals and 14 longs. A C
/// library's may be larger (musl reserves 16 more longs), never smaller.
pub(crate) const RUSAGE: usize =
    2 * std::mem::size_of::<libc::timeval>() + 14 * std::mem::size_of::<libc::c_long>();
const _: () = assert!(RUSAGE <= std::mem::size_of::<libc::rusage>());
/// The inits' status record: the command's wait status, the usage of every process the init
/// reaped, when the command ended (CLOCK_MONOTONIC ns) and flags (child::RECORD_DEADLINE).
pub(crate) const RECORD: usize = 4 + RUSAGE + 16;

/// A status record, read.
struct Record {
    word: i32,
    usage: libc::rusage,
    ended_ns: u64,
    flags: u64,
}

/// `started_ns` plus `seconds` (checked finite and in range by the spec's check).
pub(crate) fn deadline_ns(started_ns: u64, seconds: f64) -> u64 {
    started_ns.saturating_add((seconds * 1e9) as u64)
}

fn parse_record(buf: &[u8; RECORD]) -> Record {
    let word = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut usage: libc::rusage = zeroed();
    // SAFETY: rusage is plain data that starts with the kernel's RUSAGE bytes, written by the
    // kernel (getrusage in the init) into the record.
    unsafe {
        std::ptr::copy_nonoverlapping(
            buf[4..].as_ptr(),
            (&mut usage as *mut libc::rusage).cast::<u8>(),
            RUSAGE,
        )
    };
    Record {
        word,
        usage,
        ended_ns: u64_at(4 + RUSAGE),
        flags: u64_at(4 + RUSAGE + 8),
    }
}

/// Who reaps a sandbox's init before the library can.
const REAPED_ELSEWHERE: &str =
    "SIGCHLD ignored, SA_NOCLDWAIT set, or a SIGCHLD handler waiting for every child";

/// The error of a sandbox whose init another part of this process reaped before it reported.
fn status_lost() -> Error {
    Error::Unsupported {
        // What waiting for it then gets.
        errno: Some(Errno::ECHILD),
        feature: "the sandbox's exit status".into(),
        reason: format!(
            "another part of this process reaped the sandbox's init before it reported the \
             command's status ({REAPED_ELSEWHERE})"
        ),
        remedy: Some(
            "leave SIGCHLD at its default action without SA_NOCLDWAIT, and wait only for \
             children by their pids"
                .into(),
        ),
    }
}

/// Records in the report a Landlock rule the command's process left out (its path is not in
/// the sandbox): the access it would have granted is not granted.
fn note_rule_skipped(report: &mut Report, plan: &Plan, note: Failure) {
    let path = plan
        .landlock
        .as_ref()
        .and_then(|l| l.rules.get(note.index as usize))
        .map_or_else(|| "?".into(), |r| r.path.to_string_lossy().into_owned());
    if let Some(entry) = report.features.iter_mut().find(|f| f.name == "landlock") {
        entry.detail.push_str(&format!(
            "; rule for {path} left out: not in the sandbox ({:?}), so nothing there is granted",
            Errno::from_raw(note.errno)
        ));
    }
}

/// How long a sandbox's init has to end it when asked ([`Child::kill`] with SIGKILL): killing and
/// reaping takes it well under a millisecond per process; past this, the kernel does it.
pub const END_GRACE: Duration = Duration::from_secs(1);

/// The background reaper of sandboxes whose result was taken before their init had exited.
///
/// An init exits after its result is sent, and its exit tears the sandbox's namespaces down,
/// which waits for RCU grace periods the kernel runs one after another: a caller starting
/// sandboxes faster than they are torn down would collect dying inits, and a descriptor for each,
/// until it ran out of descriptors. Past [`MAX_PENDING`] sandboxes waiting to be reaped (or a
/// sixteenth of the descriptors the caller may open, if fewer), the thread letting go of one reaps
/// it itself: it waits for the teardown it is ahead of, and the caller starts sandboxes no faster
/// than the kernel can end them.
mod reaper {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::{channel, Sender};

    use crate::cgroup::Cgroup;
    use crate::forksafe::PerProcess;
    use crate::sys;

    /// Sandboxes handed over and not yet reaped, at most.
    pub(super) const MAX_PENDING: usize = 64;

    /// How many may wait to be reaped: `max`, or a sixteenth of the descriptor limit `nofile`
    /// if fewer (each holds a descriptor), and always one.
    fn bound(max: usize, nofile: u64) -> usize {
        max.min(usize::try_from(nofile / 16).unwrap_or(usize::MAX))
            .max(1)
    }

    type Job = (OwnedFd, Option<Cgroup>);

    pub(super) struct Reaper {
        max: usize,
        /// Handed over to the thread and not yet reaped.
        pending: AtomicUsize,
        /// The reaper thread's queue, started at the first hand-over in each process.
        queue: PerProcess<Option<Queue>>,
    }

    struct Queue {
        /// None if the thread could not start.
        tx: Option<Sender<Job>>,
    }

    static REAPER: Reaper = Reaper::new(MAX_PENDING);

    /// Waits for the init behind `pidfd` to exit, then drops the cgroup (removing it), in the
    /// background thread, or in this thread when [`MAX_PENDING`] are waiting already or the
    /// thread cannot be started. The init no longer reads its control pipe once it has sent the
    /// result: that descriptor is closed here.
    pub(super) fn hand_over(
        pidfd: OwnedFd,
        cgroup: Option<Cgroup>,
        ctl: Option<crate::forksafe::Ends>,
    ) {
        drop(ctl);
        REAPER.hand_over((pidfd, cgroup));
    }

    impl Reaper {
        pub(super) const fn new(max: usize) -> Reaper {
            Reaper {
                max,
                pending: AtomicUsize::new(0),
                queue: PerProcess::new(|| None),
            }
        }

        pub(super) fn hand_over(&'static self, job: Job) {
            let sender = {
                // A forked child has a queue of its own (no copy of the parent's thread comes
                // with the fork), and what the parent's thread had pending is not its to reap:
                // the count starts again.
                let mut queue = self.queue.lock();
                if queue.is_none() {
                    self.pending.store(0, Ordering::SeqCst);
                    *queue = Some(Queue {
                        tx: self.start_thread(),
                    });
                }
                queue.as_ref().and_then(|q| q.tx.clone())
            };
            let nofile = sys::soft_rlimit(sys::rlimit::NOFILE).unwrap_or(u64::MAX);
            if self.pending.fetch_add(1, Ordering::SeqCst) >= bound(self.max, nofile) {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                return reap(job);
            }
            let refused = match sender {
                Some(tx) => tx.send(job).err().map(|e| e.0),
                None => Some(job),
            };
            if let Some(job) = refused {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                reap(job);
            }
        }

        /// Starts the thread that reaps what is queued; None if it cannot start.
        fn start_thread(&'static self) -> Option<Sender<Job>> {
            let (tx, rx) = channel::<Job>();
            std::thread::Builder::new()
                .name("rsandbox-reaper".into())
                .spawn(move || {
                    for job in rx {
                        reap(job);
                        self.pending.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .ok()
                .map(|_| tx)
        }

        /// How many are handed over and not yet reaped.
        #[cfg(test)]
        pub(super) fn pending(&self) -> usize {
            self.pending.load(Ordering::SeqCst)
        }
    }

    fn reap((pidfd, cgroup): Job) {
        let mut info: libc::siginfo_t = super::zeroed();
        let mut usage: libc::rusage = super::zeroed();
        let _ = sys::retry(|| {
            sys::waitid_pidfd(pidfd.as_raw_fd(), libc::WEXITED, &mut info, &mut usage)
        });
        if let Some(mut cg) = cgroup {
            let _ = cg.remove();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::{bound, Reaper};
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::time::{Duration, Instant};

        /// A child process sleeping `secs`, and a pidfd for it: the reaper under test waits for it.
        #[allow(clippy::zombie_processes)]
        fn sleeper(secs: &str) -> (OwnedFd, libc::pid_t) {
            let child = std::process::Command::new("sleep")
                .arg(secs)
                .spawn()
                .expect("start sleep");
            let pid = child.id() as libc::pid_t;
            // SAFETY: pidfd_open takes a pid and flags.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
            // SAFETY: pidfd_open returned a new descriptor that we now own.
            (unsafe { OwnedFd::from_raw_fd(fd as i32) }, pid)
        }

        /// Whether `pid` is still our child, exited or not (reaped: ECHILD).
        fn unreaped(pid: libc::pid_t) -> bool {
            let mut info: libc::siginfo_t = crate::sandbox::zeroed();
            let options = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            // SAFETY: info is a valid out-pointer.
            let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, options) };
            r == 0
        }

        #[test]
        fn the_bound_is_a_sixteenth_of_the_descriptor_limit_when_that_is_lower() {
            assert_eq!(bound(64, 1024), 64);
            assert_eq!(bound(64, u64::MAX), 64);
            assert_eq!(bound(64, 256), 16);
            assert_eq!(bound(64, 20), 1);
            assert_eq!(bound(2, 1024), 2);
        }

        #[test]
        fn past_the_bound_the_thread_letting_go_reaps_its_own() {
            static REAPER: Reaper = Reaper::new(2);
            let queued: Vec<_> = (0..2)
                .map(|_| {
                    let (fd, pid) = sleeper("2");
                    REAPER.hand_over((fd, None));
                    pid
                })
                .collect();
            assert_eq!(REAPER.pending(), 2);
            assert!(queued.iter().all(|&pid| unreaped(pid)));

            // The third is past the bound: this thread waits for its exit and reaps it.
            let (fd, third) = sleeper("0.3");
            REAPER.hand_over((fd, None));
            assert!(
                !unreaped(third),
                "the third process was not reaped by hand_over"
            );
            // The queued ones still sleep, in the reaper's hands.
            assert_eq!(REAPER.pending(), 2);
            assert!(queued.iter().all(|&pid| unreaped(pid)));

            // The reaper thread reaps them as they exit.
            let deadline = Instant::now() + Duration::from_secs(20);
            while REAPER.pending() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(REAPER.pending(), 0);
            assert!(queued.iter().all(|&pid| !unreaped(pid)));
        }
    }
}

fn zeroed<T: Copy>() -> T {
    // SAFETY: only used for plain C structs (siginfo_t, rusage) for which all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// The command's environment: `PATH` and `HOME` by default, the host variables named in
/// `pass_env`, then the spec's own.
pub(crate) fn command_env(
    p: &crate::spec::Process,
    home: &str,
) -> Result<BTreeMap<String, String>> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), DEFAULT_PATH.into());
    env.insert("HOME".into(), home.to_string());
    for name in &p.pass_env {
        if let Some(v) = std::env::var_os(name) {
            env.insert(name.clone(), v.to_string_lossy().into_owned());
        }
    }
    for (k, v) in &p.env {
        if !env_name_ok(k) {
            return Err(env_name_error(k));
        }
        env.insert(k.clone(), v.clone());
    }
    Ok(env)
}

fn env_name_ok(name: &str) -> bool {
    !name.is_empty() && !name.contains('=')
}

fn env_name_error(name: &str) -> Error {
    Error::invalid(
        format!("process.env[{name:?}]"),
        "a variable name must be non-empty and contain no '='",
    )
}

/// The command's standard streams: the descriptors (in this process) it gets as 0, 1 and 2, our
/// ends of its pipes, and the descriptors opened for it (kept open until it has them).
pub(crate) struct StdioPlan {
    pub sources: [RawFd; 3],
    pub parent_ends: [Option<OwnedFd>; 3],
    /// The caller's end of a stdin pipe, in `held` (see `open_stdio`).
    pub stdin_held: Option<RawFd>,
}

/// The command's streams: the sandbox's ends go to `ends`; the caller's end of a stdin pipe to
/// `held`, marked too until it is handed over (a copy in a child forked meanwhile would keep
/// the command from reading end of file), the other caller's ends to the plan.
pub(crate) fn open_stdio(
    p: &crate::spec::Process,
    ends: &mut crate::forksafe::Ends,
    held: &mut crate::forksafe::Ends,
) -> Result<StdioPlan> {
    let mut parent_ends: [Option<OwnedFd>; 3] = [None, None, None];
    let mut stdin_held = None;
    let mut stdio = [0, 1, 2];
    for (i, s) in [&p.stdin, &p.stdout, &p.stderr].into_iter().enumerate() {
        let fd = match s {
            Stdio::Inherit => i as RawFd,
            Stdio::Null => ends.keep(open_file(Path::new("/dev/null"), i, false)?),
            // Opened outside a window (a FIFO's open waits for its other end).
            Stdio::File { path, append } => ends.keep(open_file(path, i, *append)?),
            Stdio::Fd(fd) => {
                if nix::fcntl::fcntl(unsafe_borrow(*fd), nix::fcntl::FcntlArg::F_GETFD).is_err() {
                    return Err(Error::invalid(
                        stdio_name(i),
                        format!("fd {fd} is not open"),
                    ));
                }
                *fd
            }
            Stdio::Stdout if i == 2 => stdio[1],
            Stdio::Stdout => {
                return Err(Error::invalid(
                    stdio_name(i),
                    "\"stdout\" is only for stderr",
                ))
            }
            Stdio::Pipe => {
                let window = crate::forksafe::Creating::begin();
                let (r, w) = pipe()?;
                let (ours, theirs) = if i == 0 { (w, r) } else { (r, w) };
                if i == 0 {
                    stdin_held = Some(held.keep(ours));
                } else {
                    parent_ends[i] = Some(ours);
                }
                let theirs = ends.keep(theirs);
                drop(window);
                theirs
            }
        };
        stdio[i] = fd;
    }
    Ok(StdioPlan {
        sources: stdio,
        parent_ends,
        stdin_held,
    })
}

fn unsafe_borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: used only for an F_GETFD probe, which is harmless on any integer.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn stdio_name(i: usize) -> &'static str {
    ["process.stdin", "process.stdout", "process.stderr"][i]
}

fn open_file(path: &Path, i: usize, append: bool) -> Result<OwnedFd> {
    let mut o = std::fs::OpenOptions::new();
    if i == 0 {
        o.read(true);
    } else if path == Path::new("/dev/null") {
        o.write(true);
    } else {
        o.write(true).create(true);
        if append {
            o.append(true);
        } else {
            o.truncate(true);
        }
    }
    o.open(path).map(OwnedFd::from).map_err(|e| {
        Error::io(
            if i == 0 {
                "open stdin"
            } else {
                "open output file"
            },
            Some(path.to_path_buf()),
            e,
        )
    })
}

/// Waits until the sandbox's error pipe is readable (None) or the fuse helper has exited (its
/// status).
fn wait_fuse_or_sandbox(
    err_r: RawFd,
    helper: &mut crate::overlay::FuseHelper,
) -> Result<Option<std::process::ExitStatus>> {
    loop {
        let mut fds = [libc::pollfd {
            fd: err_r,
            events: libc::POLLIN,
            revents: 0,
        }];
        sys::retry(|| sys::poll(&mut fds, 10))
            .map_err(|e| Error::os("poll sandbox error pipe", e))?;
        if fds[0].revents != 0 {
            return Ok(None);
        }
        match helper.process.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) => {}
            Err(e) => return Err(Error::io("wait for fuse-overlayfs", None, e)),
        }
    }
}

/// The start that does not copy the caller's address space (see child::SmallInit).
mod small {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::raw::c_int;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;

    use crate::sys;

    /// Bytes of each stack; the setup process builds mount plans on it.
    const STACK: usize = 256 * 1024;
    const PAGE: usize = 4096;

    /// Three stacks (setup process, command process, the process entering a template), each
    /// above a guard page. Given back to [`SPARE`] on drop, or unmapped when it is full.
    pub(crate) struct Stacks {
        base: *mut libc::c_void,
        /// Nonzero while a task may still run on the command stack: [0] a network helper
        /// (child::NetApart), [1] the command process until it executes. The kernel clears each
        /// when its task leaves this memory (`CLONE_CHILD_CLEARTID`).
        words: Box<[AtomicU32; 2]>,
    }

    // SAFETY: the mapping is owned by this value alone; nothing else refers to it.
    unsafe impl Send for Stacks {}

    const LEN: usize = 3 * (PAGE + STACK);

    /// The base of a stack mapping no start is using.
    struct Spare(*mut libc::c_void);

    // SAFETY: a mapping no process runs on; whoever takes it from the list owns it alone.
    unsafe impl Send for Spare {}

    /// Mappings of finished starts, kept for the next ones: a fresh mapping costs an mmap, three
    /// mprotects, a page fault at each first touch and an munmap, whose TLB flush interrupts
    /// every other thread of the caller. At most [`SPARE_MAX`] are kept (a few pages each).
    static SPARE: crate::forksafe::PerProcess<Vec<Spare>> =
        crate::forksafe::PerProcess::new(Vec::new);
    const SPARE_MAX: usize = 4;

    impl Stacks {
        fn new() -> Option<Stacks> {
            let spare = SPARE.lock().pop();
            if let Some(Spare(base)) = spare {
                return Some(Stacks {
                    base,
                    words: Box::new([AtomicU32::new(0), AtomicU32::new(0)]),
                });
            }
            // SAFETY: a fresh anonymous private mapping; nothing else uses the range.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    LEN,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return None;
            }
            for guard in [0, PAGE + STACK, 2 * (PAGE + STACK)] {
                // SAFETY: the page lies inside the mapping made above.
                if unsafe {
                    libc::mprotect(base.cast::<u8>().add(guard).cast(), PAGE, libc::PROT_NONE)
                } != 0
                {
                    // SAFETY: the mapping made above, used by nothing yet.
                    unsafe { libc::munmap(base, LEN) };
                    return None;
                }
            }
            Some(Stacks {
                base,
                words: Box::new([AtomicU32::new(0), AtomicU32::new(0)]),
            })
        }

        fn stack(&self, i: usize) -> (u64, u64) {
            let low = self.base as u64 + (i * (PAGE + STACK) + PAGE) as u64;
            (low, STACK as u64)
        }

        /// The setup process's stack (lowest address, size).
        pub fn setup(&self) -> (u64, u64) {
            self.stack(0)
        }

        /// The command process's stack.
        pub fn command(&self) -> (u64, u64) {
            self.stack(1)
        }

        /// The stack of the process that enters a template (child::Enter).
        pub fn enter(&self) -> (u64, u64) {
            self.stack(2)
        }

        /// The word the kernel clears when a network helper leaves this memory.
        pub fn helper_gone(&self) -> *const AtomicU32 {
            &self.words[0]
        }

        /// The word the kernel clears when the command process leaves this memory.
        pub fn command_gone(&self) -> *const AtomicU32 {
            &self.words[1]
        }
    }

    impl Drop for Stacks {
        fn drop(&mut self) {
            // A network helper, then the command process, run on the command stack. The setup
            // process reaps the helper and waits for the command's exec before it goes on, so
            // both are gone here, unless the setup process was killed from outside meanwhile:
            // then wait for the kernel to clear their words as they leave.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            for word in self.words.iter() {
                loop {
                    let seen = word.load(Ordering::SeqCst);
                    if seen == 0 {
                        break;
                    }
                    let Some(left) = deadline.checked_duration_since(std::time::Instant::now())
                    else {
                        // Never reuse or free memory a task may still use: keep the mapping, and
                        // the words the kernel will clear, instead.
                        let words = std::mem::replace(
                            &mut self.words,
                            Box::new([AtomicU32::new(0), AtomicU32::new(0)]),
                        );
                        Box::leak(words);
                        return;
                    };
                    let timeout = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: left.as_nanos().min(100_000_000) as libc::c_long,
                    };
                    // SAFETY: FUTEX_WAIT on a live word with a relative timeout; it only sleeps.
                    unsafe {
                        libc::syscall(
                            libc::SYS_futex,
                            word.as_ptr(),
                            libc::FUTEX_WAIT,
                            seen,
                            &timeout as *const libc::timespec,
                        )
                    };
                }
            }
            // No process uses the mapping any more: keep it for the next start, or unmap it.
            {
                let mut spare = SPARE.lock();
                if spare.len() < SPARE_MAX {
                    spare.push(Spare(self.base));
                    return;
                }
            }
            // SAFETY: the mapping made in new(), no longer used by any process.
            unsafe { libc::munmap(self.base, LEN) };
        }
    }

    #[cfg(all(target_arch = "x86_64", rsandbox_small_init))]
    static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rsandbox-init"));

    /// A sealed memfd holding the tiny init, made once per process; None where there is none.
    #[cfg(all(target_arch = "x86_64", rsandbox_small_init))]
    fn init_fd() -> Option<c_int> {
        static FD: OnceLock<Option<OwnedFd>> = OnceLock::new();
        FD.get_or_init(|| {
            const MFD_EXEC: libc::c_uint = 0x10;
            let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
            // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
            let mut fd = unsafe { libc::memfd_create(c"rsandbox-init".as_ptr(), flags | MFD_EXEC) };
            if fd < 0 {
                // Kernels before 6.3 do not know MFD_EXEC (and need it not).
                // SAFETY: as above.
                fd = unsafe { libc::memfd_create(c"rsandbox-init".as_ptr(), flags) };
            }
            if fd < 0 {
                return None;
            }
            // SAFETY: a descriptor just created and owned by nothing else.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            sys::write_all(owned.as_raw_fd(), INIT).ok()?;
            // Execute-only: a process executing a file it cannot read is not dumpable from its
            // exec on, so the sandbox's command never has a moment to trace its init.
            // SAFETY: fchmod on a descriptor owned here.
            if unsafe { libc::fchmod(owned.as_raw_fd(), 0o111) } != 0 {
                return None;
            }
            let seals =
                libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
            // SAFETY: F_ADD_SEALS with an integer argument.
            if unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
                return None;
            }
            Some(owned)
        })
        .as_ref()
        .map(AsRawFd::as_raw_fd)
    }

    /// The init's descriptor and fresh stacks, or None when this build or host has no small init.
    #[cfg(all(target_arch = "x86_64", rsandbox_small_init))]
    pub(crate) fn prepare() -> Result<(c_int, Stacks), &'static str> {
        if std::env::var_os("RSANDBOX_FORK_START").is_some() {
            return Err("RSANDBOX_FORK_START is set");
        }
        let fd = init_fd().ok_or("no memfd for rsandbox-init")?;
        Ok((fd, Stacks::new().ok_or("cannot map the setup stacks")?))
    }

    #[cfg(not(all(target_arch = "x86_64", rsandbox_small_init)))]
    pub(crate) fn prepare() -> Result<(c_int, Stacks), &'static str> {
        Err("this build has no rsandbox-init (x86_64 and a C compiler at build time)")
    }

    /// clone3 into child::entry on the setup stack.
    ///
    /// # Safety
    /// See `sys::clone_on_stack`; `target` is the address of a live `(&Plan, &mut [c_int])`.
    #[cfg(all(target_arch = "x86_64", rsandbox_small_init))]
    pub(crate) unsafe fn clone(
        args: &mut sys::CloneArgs,
        target: usize,
    ) -> sys::SysResult<libc::pid_t> {
        // SAFETY: forwarded from the caller.
        unsafe { sys::clone_on_stack(args, crate::child::entry, target) }
    }

    #[cfg(not(all(target_arch = "x86_64", rsandbox_small_init)))]
    pub(crate) unsafe fn clone(_: &mut sys::CloneArgs, _: usize) -> sys::SysResult<libc::pid_t> {
        Err(nix::errno::Errno::ENOSYS)
    }

    /// clone3 into `entry` on the stack `args` names.
    ///
    /// # Safety
    /// See `sys::clone_on_stack`.
    #[cfg(all(target_arch = "x86_64", rsandbox_small_init))]
    pub(crate) unsafe fn clone_with(
        args: &mut sys::CloneArgs,
        entry: unsafe extern "C" fn(usize) -> !,
        arg: usize,
    ) -> sys::SysResult<libc::pid_t> {
        // SAFETY: forwarded from the caller.
        unsafe { sys::clone_on_stack(args, entry, arg) }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The permissions /proc/self/maps gives the page at `addr`.
        fn perms_at(addr: usize) -> String {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            maps.lines()
                .find_map(|l| {
                    let (range, rest) = l.split_once(' ')?;
                    let (lo, hi) = range.split_once('-')?;
                    let (lo, hi) = (
                        usize::from_str_radix(lo, 16).ok()?,
                        usize::from_str_radix(hi, 16).ok()?,
                    );
                    (lo <= addr && addr < hi)
                        .then(|| rest.split(' ').next().unwrap_or("").to_string())
                })
                .unwrap_or_default()
        }

        /// The tests share the spare list: one at a time.
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

        #[test]
        fn finished_stacks_are_kept_for_the_next_start_up_to_a_bound() {
            let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
            let made: Vec<Stacks> = (0..SPARE_MAX + 2).map(|_| Stacks::new().unwrap()).collect();
            let bases: Vec<usize> = made.iter().map(|s| s.base as usize).collect();
            drop(made);
            assert!(SPARE.lock().len() <= SPARE_MAX, "the spare list is bounded");
            // Some were kept (still mapped), those past the bound unmapped. Another test's thread
            // may map something where one was: a kept one is known by its three guard pages.
            let kept = |base: usize| {
                (0..3).all(|i| perms_at(base + i * (PAGE + STACK)) == "---p")
                    && perms_at(base + PAGE) == "rw-p"
            };
            let unmapped = bases.iter().filter(|b| !kept(**b)).count();
            assert!(unmapped < bases.len(), "none of the mappings was kept");
            assert!(
                unmapped >= 2,
                "{unmapped} of {} mappings unmapped",
                bases.len()
            );
            let again = Stacks::new().unwrap();
            let base = again.base as usize;
            assert!(bases.contains(&base), "a new start takes a kept mapping");
            // Reused, the stacks keep their guard pages below them and stay writable.
            for i in 0..3 {
                let (low, _) = again.stack(i);
                assert_eq!(
                    perms_at(low as usize - PAGE),
                    "---p",
                    "guard page of stack {i}"
                );
                assert_eq!(perms_at(low as usize), "rw-p", "stack {i}");
            }
        }

        /// Clears `word` as the kernel does when a task leaves the stacks, and wakes its waiter.
        fn leave(word: &AtomicU32) {
            word.store(0, Ordering::SeqCst);
            // SAFETY: FUTEX_WAKE on a live word.
            unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
        }

        #[test]
        fn stacks_are_given_back_only_after_their_tasks_have_left() {
            let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
            for i in 0..2 {
                let stacks = Stacks::new().unwrap();
                let base = stacks.base as usize;
                // A task still on the stacks (the network helper, then the command process).
                stacks.words[i].store(1, Ordering::SeqCst);
                let word = &stacks.words[i] as *const AtomicU32 as usize;
                let left = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let leaving = {
                    let left = left.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        left.store(true, Ordering::SeqCst);
                        // SAFETY: the word lives until `stacks` is dropped, which waits for this.
                        leave(unsafe { &*(word as *const AtomicU32) });
                    })
                };
                drop(stacks);
                assert!(
                    left.load(Ordering::SeqCst),
                    "word {i}: given back before the task left"
                );
                leaving.join().unwrap();
                let kept = SPARE.lock().iter().any(|s| s.0 as usize == base);
                assert!(
                    kept || perms_at(base).is_empty(),
                    "word {i}: kept or unmapped"
                );
            }
        }

        #[test]
        fn stacks_a_task_never_leaves_are_neither_reused_nor_unmapped() {
            let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
            let stacks = Stacks::new().unwrap();
            let base = stacks.base as usize;
            stacks.words[1].store(1, Ordering::SeqCst);
            drop(stacks);
            assert!(
                !SPARE.lock().iter().any(|s| s.0 as usize == base),
                "a mapping a task may still use must not be reused"
            );
            assert_eq!(
                perms_at(base),
                "---p",
                "nor unmapped (its guard page is still there)"
            );
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::os("pipe2", e))
}

fn to_cstrings(field: &str, items: &[String]) -> Result<Vec<CString>> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            CString::new(s.as_bytes())
                .map_err(|_| Error::invalid(format!("{field}[{i}]"), "contains a NUL byte"))
        })
        .collect()
}

fn null_terminated(items: &[CString]) -> Vec<*const libc::c_char> {
    items
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Paths to try for argv\[0\]: itself when it has a `/`, otherwise each `PATH` entry.
pub(crate) fn exec_candidates(name: &str, path: &str) -> Result<Vec<CString>> {
    let mk = |s: String| {
        CString::new(s).map_err(|_| Error::invalid("process.args[0]", "contains a NUL byte"))
    };
    if name.contains('/') {
        return Ok(vec![mk(name.to_string())?]);
    }
    path.split(':')
        .map(|dir| {
            if dir.is_empty() {
                ".".to_string()
            } else {
                dir.trim_end_matches('/').to_string()
            }
        })
        .map(|dir| mk(format!("{dir}/{name}")))
        .collect()
}

/// The descriptor ranges the sandbox closes: everything from 3 up that is not in `keep`.
fn gaps(keep: &[c_int]) -> Vec<(u32, u32)> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|&&f| f >= 0)
        .map(|&f| f as u32)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut out = Vec::new();
    let mut next = 3u32;
    for fd in keep {
        if fd < next {
            continue;
        }
        if fd > next {
            out.push((next, fd - 1));
        }
        next = fd + 1;
    }
    out.push((next, u32::MAX));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_skip_kept_fds() {
        assert_eq!(
            gaps(&[0, 1, 2, 5, 7, 8]),
            vec![(3, 4), (6, 6), (9, u32::MAX)]
        );
        assert_eq!(gaps(&[0, 1, 2]), vec![(3, u32::MAX)]);
    }

    #[test]
    fn candidates_follow_path() {
        let c = exec_candidates("sh", "/usr/bin:/bin").unwrap();
        assert_eq!(
            c,
            vec![
                CString::new("/usr/bin/sh").unwrap(),
                CString::new("/bin/sh").unwrap()
            ]
        );
        assert_eq!(exec_candidates("./x", "/bin").unwrap().len(), 1);
    }

    #[test]
    fn empty_argv_and_nul_are_invalid() {
        assert_eq!(
            prepare(&Spec::default(), false, false)
                .err()
                .unwrap()
                .kind(),
            crate::ErrorKind::InvalidSpec
        );
        let spec = Spec::new(["echo", "a\0b"]);
        let err = prepare(&spec, false, false).err().unwrap();
        assert!(err.to_string().contains("process.args[1]"), "{err}");
    }
}
