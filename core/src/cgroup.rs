//! cgroup v2: one child cgroup per sandbox under a subtree the caller may manage, for limits,
//! accounting and a teardown that reaches every process (`cgroup.kill`).
//!
//! The sandbox is born in its cgroup (clone3 `CLONE_INTO_CGROUP`), so not one instruction of it
//! runs outside; where a seccomp policy refuses clone3, its first process moves itself in before
//! its setup (child::JoinCgroup). Controllers are only ever enabled on the parent, never in a
//! cgroup that holds processes (the kernel's "no internal processes" rule).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::report::{Report, Status};
use crate::spec::{Limits, Want};

/// Where cgroup2 is mounted, read once from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<&'static Path> {
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            // The conventional places first (one statfs each), the mount table only if neither
            // holds cgroup2.
            for place in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                if nix::sys::statfs::statfs(place)
                    .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
                {
                    return Some(PathBuf::from(place));
                }
            }
            let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            let mut found: Option<PathBuf> = None;
            for line in info.lines() {
                let (left, right) = line.split_once(" - ")?;
                if right.split_whitespace().next() != Some("cgroup2") {
                    continue;
                }
                let point = unescape(left.split_whitespace().nth(4)?);
                // Prefer the conventional place when several exist.
                if found.is_none() || point == Path::new("/sys/fs/cgroup") {
                    found = Some(point);
                }
            }
            found
        })
        .as_deref()
}

fn unescape(field: &str) -> PathBuf {
    let mut out = Vec::new();
    let b = field.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(n) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// The caller's own cgroup directory (from /proc/self/cgroup's `0::` line).
fn own_cgroup(mount: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = rel.trim_start_matches('/');
    Some(if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    })
}

/// Where the sandbox's cgroup goes: the spec's parent, `RSANDBOX_CGROUP_PARENT`, or the caller's
/// own cgroup. Relative paths are taken under the cgroup2 mount.
/// Why no cgroup can be made: the reason, the remedy, and the errno behind it where there is one.
type Refusal = (String, String, Option<Errno>);

fn find_parent(explicit: Option<&Path>) -> std::result::Result<PathBuf, Refusal> {
    let Some(mount) = cgroup2_mount() else {
        return Err((
            "no cgroup2 filesystem is mounted".into(),
            "boot with systemd.unified_cgroup_hierarchy=1, or mount cgroup2".into(),
            None,
        ));
    };
    let env = std::env::var_os("RSANDBOX_CGROUP_PARENT").map(PathBuf::from);
    let (parent, source) = match explicit.map(Path::to_path_buf).or(env) {
        Some(p) if p.is_absolute() => (p, "given parent"),
        Some(p) => (mount.join(p), "given parent"),
        None => match own_cgroup(mount) {
            Some(p) => (p, "the caller's own cgroup"),
            None => {
                return Err((
                    "/proc/self/cgroup has no cgroup2 entry".into(),
                    remedy(),
                    None,
                ))
            }
        },
    };
    // A directory elsewhere (even one holding a file named cgroup.procs) is no cgroup.
    match nix::sys::statfs::statfs(&parent) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => {}
        Ok(_) => {
            return Err((
                format!(
                    "{} ({source}) is not in a cgroup2 filesystem",
                    parent.display()
                ),
                remedy(),
                None,
            ))
        }
        Err(e) => {
            let what = if e == Errno::ENOENT {
                "does not exist".to_string()
            } else {
                format!("cannot be examined: {e:?}")
            };
            return Err((
                format!("{} ({source}) {what}", parent.display()),
                remedy(),
                Some(e),
            ));
        }
    }
    let probe =
        CString::new(parent.join("cgroup.procs").as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: access() only reads the NUL-terminated path.
    let writable = unsafe { libc::access(probe.as_ptr(), libc::W_OK) } == 0;
    if !writable {
        let e = Errno::last();
        return Err((
            format!(
                "{} ({}) is not writable by this user: {e:?}",
                parent.display(),
                source
            ),
            remedy(),
            Some(e),
        ));
    }
    Ok(parent)
}

/// The controllers this host has bound to a cgroup v1 hierarchy (/proc/cgroups: a hierarchy id
/// other than 0, which is cgroup2's), enabled ones only.
pub(crate) fn v1_controllers() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                [name, hierarchy, _, "1"] if hierarchy != "0" => Some(name.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// What to do on a hybrid host whose cgroup v1 hierarchies hold `controllers`.
pub(crate) fn hybrid_remedy(controllers: &[&str]) -> String {
    format!(
        "this host mounts {} in cgroup v1 hierarchies (a hybrid layout), where cgroup v2 cannot \
         have them, delegated or not: boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2 \
         only) to give them to cgroup2",
        controllers.join(", ")
    )
}

fn remedy() -> String {
    "run under a delegated cgroup (systemd: `systemd-run --user --scope -p Delegate=yes ...`), or pass --cgroup-parent / RSANDBOX_CGROUP_PARENT naming a cgroup2 directory you own whose processes live in a leaf below it".into()
}

/// The controllers a set of limits needs.
fn controllers_for(l: &Limits) -> Vec<&'static str> {
    let mut c = Vec::new();
    if l.memory.is_some() || l.memory_swap.is_some() {
        c.push("memory");
    }
    if l.pids.is_some() {
        c.push("pids");
    }
    if l.cpus.is_some() || l.cpu_weight.is_some() {
        c.push("cpu");
    }
    c
}

/// One sandbox's cgroup.
#[derive(Debug)]
pub(crate) struct Cgroup {
    pub path: PathBuf,
    /// Opened O_DIRECTORY for clone3's CLONE_INTO_CGROUP.
    pub dir: OwnedFd,
    has_memory: bool,
    has_pids: bool,
    /// Leave the cgroup in place when dropped (a sandbox that outlives its handle), or it is
    /// already gone.
    keep: bool,
}

/// Accounting read from the cgroup after the sandbox ended.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Accounting {
    pub user_usec: Option<u64>,
    pub system_usec: Option<u64>,
    pub memory_peak: Option<u64>,
    pub oom_kills: Option<u64>,
    pub pids_peak: Option<u64>,
}

/// The cgroup decision for one spawn: a cgroup, or the reason there is none.
pub(crate) struct Plan {
    pub cgroup: Option<Cgroup>,
    /// Limits that must fall back to rlimits: (resource, value).
    pub rlimits: Vec<(u32, u64)>,
}

/// Creates the sandbox's cgroup and writes its limits, or reports why not. `want` says whether a
/// cgroup is wanted at all (accounting and teardown); limits in `limits` follow `limits.level`.
pub(crate) fn prepare(
    parent: Option<&Path>,
    want: Want,
    limits: &Limits,
    report: &mut Report,
) -> Result<Plan> {
    let needed = controllers_for(limits);
    let any_limit = !needed.is_empty() || limits.cpu_time.is_some();
    let want = if any_limit && want == Want::Off {
        Want::BestEffort
    } else {
        want
    };
    let mut plan = Plan {
        cgroup: None,
        rlimits: Vec::new(),
    };
    if want == Want::Off {
        report.push("cgroup", Want::Off, Status::Off, "not requested".into());
        limit_entries(limits, report, None, &mut plan);
        return Ok(plan);
    }
    // Limits whose controllers a cgroup v1 hierarchy holds: no delegation can bring them.
    let v1 = v1_controllers();
    let needed_on_v1: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|c| v1.iter().any(|v| v == c))
        .collect();
    let parent = match find_parent(parent) {
        Ok(p) => p,
        Err((reason, remedy, errno)) => {
            let remedy = if needed_on_v1.is_empty() {
                remedy
            } else {
                format!("{}; then: {remedy}", hybrid_remedy(&needed_on_v1))
            };
            if want == Want::Required {
                return Err(Error::Unsupported {
                    errno,
                    feature: "cgroup v2 delegation".into(),
                    reason,
                    remedy: Some(remedy),
                });
            }
            report.push(
                "cgroup",
                want,
                Status::Skipped,
                format!("{reason}; remedy: {remedy}"),
            );
            return finish_without(limits, report, plan, (&reason, &remedy, errno));
        }
    };
    // Controllers: those the parent offers, enabled in its subtree_control (which is allowed only
    // while it has no processes of its own).
    let available = read(&parent.join("cgroup.controllers")).unwrap_or_default();
    let available: Vec<&str> = available.split_whitespace().collect();
    let mut enabled: Vec<&str> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    // Controllers a cgroup v1 hierarchy holds (a hybrid host): no delegation brings them.
    let mut on_v1: Vec<&str> = Vec::new();
    for c in ["memory", "pids", "cpu"] {
        if !available.contains(&c) {
            if needed.contains(&c) {
                if needed_on_v1.contains(&c) {
                    on_v1.push(c);
                    missing.push(format!(
                        "{c} (held by a cgroup v1 hierarchy on this host, so no cgroup2 \
                         directory offers it)"
                    ));
                } else {
                    missing.push(format!("{c} (not offered by {})", parent.display()));
                }
            }
            continue;
        }
        let subtree = read(&parent.join("cgroup.subtree_control")).unwrap_or_default();
        if subtree.split_whitespace().any(|s| s == c) {
            enabled.push(c);
            continue;
        }
        match std::fs::write(parent.join("cgroup.subtree_control"), format!("+{c}")) {
            Ok(()) => enabled.push(c),
            Err(e) if needed.contains(&c) => {
                let why = if e.raw_os_error() == Some(libc::EBUSY) {
                    "the parent holds processes itself; run the caller from a leaf below it"
                        .to_string()
                } else {
                    e.to_string()
                };
                missing.push(format!(
                    "{c} (cannot enable in {}: {why})",
                    parent.display()
                ));
            }
            Err(_) => {}
        }
    }
    if !missing.is_empty() && limits.level == Want::Required {
        let host = if on_v1.is_empty() {
            remedy()
        } else {
            hybrid_remedy(&on_v1)
        };
        return Err(Error::Unsupported {
            errno: None,
            feature: "cgroup limits".into(),
            reason: format!("controllers unavailable: {}", missing.join(", ")),
            remedy: Some(format!(
                "{host}; or accept best-effort limits (--limits best-effort)"
            )),
        });
    }
    let cgroup = create_child(&parent, &enabled)?;
    let detail = format!(
        "{} (under {}); controllers: {}",
        cgroup.path.display(),
        parent.display(),
        if enabled.is_empty() {
            "none (accounting: cpu.stat; teardown: cgroup.kill)".to_string()
        } else {
            enabled.join(" ")
        }
    );
    report.push("cgroup", want, Status::Enforced, detail);
    report.cgroup = Some(cgroup.path.clone());
    if let Err(e) = write_limits(&cgroup, limits, &enabled) {
        let mut cgroup = cgroup;
        let _ = cgroup.remove();
        return Err(e);
    }
    limit_entries(limits, report, Some(&enabled), &mut plan);
    plan.cgroup = Some(cgroup);
    Ok(plan)
}

/// No cgroup: every limit is required (error) or falls back to an rlimit (reported).
fn finish_without(
    limits: &Limits,
    report: &mut Report,
    mut plan: Plan,
    (reason, remedy, errno): (&str, &str, Option<Errno>),
) -> Result<Plan> {
    // The CPU-time limit needs no controller, but its whole-sandbox form needs the cgroup's
    // cpu.stat: per-process RLIMIT_CPU alone is the best-effort fallback.
    let cgroup_limits = !controllers_for(limits).is_empty() || limits.cpu_time.is_some();
    if cgroup_limits && limits.level == Want::Required {
        return Err(Error::Unsupported {
            errno,
            feature: "cgroup limits".into(),
            reason: reason.into(),
            remedy: Some(format!(
                "{remedy}; or accept best-effort limits (--limits best-effort)"
            )),
        });
    }
    limit_entries(limits, report, None, &mut plan);
    Ok(plan)
}

/// Reports each limit, and queues rlimit fallbacks for those the cgroup cannot hold.
fn limit_entries(l: &Limits, report: &mut Report, enabled: Option<&[&str]>, plan: &mut Plan) {
    let has = |c: &str| enabled.is_some_and(|e| e.contains(&c));
    let level = l.level;
    if let Some(m) = l.memory {
        if has("memory") {
            report.push(
                "limit.memory",
                level,
                Status::Enforced,
                format!("memory.max = {m}"),
            );
        } else {
            plan.rlimits.push((crate::sys::rlimit::AS, m));
            report.push("limit.memory", level, Status::Skipped, format!("no memory controller; fallback RLIMIT_AS = {m} per process (caveat: caps address space, not resident memory; children each get their own)"));
        }
    }
    if let Some(s) = l.memory_swap {
        let status = if has("memory") {
            Status::Enforced
        } else {
            Status::Skipped
        };
        report.push(
            "limit.memory-swap",
            level,
            status,
            skipped_detail(status, "memory", format!("memory.swap.max = {s}")),
        );
    }
    if let Some(p) = l.pids {
        if has("pids") {
            report.push(
                "limit.pids",
                level,
                Status::Enforced,
                format!("pids.max = {p}"),
            );
        } else {
            report.push("limit.pids", level, Status::Skipped, "no pids controller; no fallback (RLIMIT_NPROC counts every process of the host uid, so it is not used)".into());
        }
    }
    if let Some(c) = l.cpus {
        let status = if has("cpu") {
            Status::Enforced
        } else {
            Status::Skipped
        };
        report.push(
            "limit.cpus",
            level,
            status,
            skipped_detail(
                status,
                "cpu",
                format!("cpu.max = {} per 100000 us", (c * 100_000.0).round() as u64),
            ),
        );
    }
    if let Some(w) = l.cpu_weight {
        let status = if has("cpu") {
            Status::Enforced
        } else {
            Status::Skipped
        };
        report.push(
            "limit.cpu-weight",
            level,
            status,
            skipped_detail(status, "cpu", format!("cpu.weight = {w}")),
        );
    }
    if let Some(t) = l.cpu_time {
        let secs = t.ceil() as u64;
        plan.rlimits.push((crate::sys::rlimit::CPU, secs));
        let how = if enabled.is_some() {
            format!("the whole sandbox's cpu.stat usage is watched and the sandbox killed past it; RLIMIT_CPU = {secs} s per process as backstop")
        } else {
            format!("no cgroup: fallback RLIMIT_CPU = {secs} s per process (caveat: whole seconds, rounded up; a process tree can use more in total)")
        };
        let status = if enabled.is_some() {
            Status::Enforced
        } else {
            Status::Skipped
        };
        report.push("limit.cpu-time", level, status, format!("{t} s: {how}"));
    }
}

/// A limit's detail: the setting, and when it is skipped, why and that nothing replaces it.
fn skipped_detail(status: Status, controller: &str, setting: String) -> String {
    if status == Status::Enforced {
        setting
    } else {
        format!("no {controller} controller; no fallback (would be {setting})")
    }
}

/// This process's PID namespace (its inode number), which a sandbox's cgroup name carries: a
/// pid means something only in its own namespace. 0 when /proc cannot say.
fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    static NS: OnceLock<u64> = OnceLock::new();
    *NS.get_or_init(|| {
        std::fs::metadata("/proc/self/ns/pid")
            .map(|m| m.ino())
            .unwrap_or(0)
    })
}

/// Removes what sandboxes of processes that no longer exist left under `parent` (a process
/// killed with SIGKILL cannot remove its sandboxes' cgroups): directories named as
/// [`create_child`] names them, by a process of this PID namespace that is gone. The kernel
/// refuses to remove one that still has processes or cgroups below it, so a sandbox that
/// outlived its caller keeps its own. Once per parent in a process's life.
fn sweep_leftovers(parent: &Path) {
    let ns = pid_namespace();
    if ns == 0 {
        return;
    }
    static SWEPT: crate::forksafe::PerProcess<Vec<PathBuf>> =
        crate::forksafe::PerProcess::new(Vec::new);
    {
        let mut swept = SWEPT.lock();
        if swept.iter().any(|p| p == parent) {
            return;
        }
        swept.push(parent.to_path_buf());
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        // rsandbox-PID-N-NS
        let fields: Vec<&str> = name
            .to_str()
            .and_then(|n| n.strip_prefix("rsandbox-"))
            .map(|rest| rest.split('-').collect())
            .unwrap_or_default();
        let [pid, n, their_ns] = fields[..] else {
            continue;
        };
        let (Ok(pid), Ok(_), Ok(their_ns)) = (
            pid.parse::<libc::pid_t>(),
            n.parse::<u64>(),
            their_ns.parse::<u64>(),
        ) else {
            continue;
        };
        if their_ns != ns {
            continue;
        }
        // SAFETY: signal 0 only checks whether the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

fn create_child(parent: &Path, enabled: &[&str]) -> Result<Cgroup> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    sweep_leftovers(parent);
    let name = format!(
        "rsandbox-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        pid_namespace()
    );
    let path = parent.join(name);
    std::fs::create_dir(&path).map_err(|e| Error::io("create cgroup", Some(path.clone()), e))?;
    let c = CString::new(path.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: open() of a NUL-terminated path; the result is checked and owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(&path);
        return Err(Error::io("open cgroup", Some(path), e));
    }
    Ok(Cgroup {
        path,
        // SAFETY: fd was just opened and is owned by nothing else.
        dir: unsafe { OwnedFd::from_raw_fd(fd) },
        has_memory: enabled.contains(&"memory"),
        has_pids: enabled.contains(&"pids"),
        keep: false,
    })
}

fn write_limits(cg: &Cgroup, l: &Limits, enabled: &[&str]) -> Result<()> {
    let set = |file: &str, value: String| -> Result<()> {
        let p = cg.path.join(file);
        std::fs::write(&p, &value).map_err(|e| Error::io("write cgroup limit", Some(p), e))
    };
    if enabled.contains(&"memory") {
        if let Some(m) = l.memory {
            set("memory.max", m.to_string())?;
            // Without swap accounting the limit would leak into swap.
            if l.memory_swap.is_none() && cg.path.join("memory.swap.max").exists() {
                set("memory.swap.max", "0".into())?;
            }
        }
        if let Some(s) = l.memory_swap {
            set("memory.swap.max", s.to_string())?;
        }
    }
    if enabled.contains(&"pids") {
        if let Some(p) = l.pids {
            set("pids.max", p.to_string())?;
        }
    }
    if enabled.contains(&"cpu") {
        if let Some(c) = l.cpus {
            let quota = ((c * 100_000.0).round() as u64).max(1000);
            set("cpu.max", format!("{quota} 100000"))?;
        }
        if let Some(w) = l.cpu_weight {
            set("cpu.weight", w.to_string())?;
        }
    }
    Ok(())
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Cgroup {
    /// CPU time used so far by every process of the sandbox, in microseconds.
    pub fn cpu_usage_usec(&self) -> Option<u64> {
        keyed(&read(&self.path.join("cpu.stat"))?, "usage_usec")
    }

    /// Reads the figures that outlive the processes.
    pub fn accounting(&self) -> Accounting {
        let cpu = read(&self.path.join("cpu.stat")).unwrap_or_default();
        let events = if self.has_memory {
            read(&self.path.join("memory.events"))
        } else {
            None
        };
        Accounting {
            user_usec: keyed(&cpu, "user_usec"),
            system_usec: keyed(&cpu, "system_usec"),
            memory_peak: if self.has_memory {
                read(&self.path.join("memory.peak")).and_then(|s| s.trim().parse().ok())
            } else {
                None
            },
            oom_kills: events.as_deref().and_then(|e| keyed(e, "oom_kill")),
            pids_peak: if self.has_pids {
                read(&self.path.join("pids.peak")).and_then(|s| s.trim().parse().ok())
            } else {
                None
            },
        }
    }

    /// Freezes (true) or thaws (false) every process of the sandbox.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let p = self.path.join("cgroup.freeze");
        std::fs::write(&p, if frozen { "1" } else { "0" })
            .map_err(|e| Error::io("write cgroup.freeze", Some(p), e))
    }

    /// Kills every process in the cgroup.
    pub fn kill(&self) {
        let p = self.path.join("cgroup.kill");
        if std::fs::write(&p, "1").is_err() {
            // Kernels before 5.14: signal each listed process.
            if let Some(pids) = read(&self.path.join("cgroup.procs")) {
                for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::SIGKILL,
                    );
                }
            }
        }
    }

    /// Kills what is left, waits for the cgroup to empty, and removes it. Once it is gone, the
    /// drop has nothing left to do; after a failure the drop tries again.
    pub fn remove(&mut self) -> Result<()> {
        self.kill();
        let start = Instant::now();
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => {
                    self.keep = true;
                    return Ok(());
                }
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && start.elapsed() < Duration::from_secs(5) =>
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.keep = true;
                    return Ok(());
                }
                Err(e) => return Err(Error::io("remove cgroup", Some(self.path.clone()), e)),
            }
        }
    }

    /// Lets go of the cgroup without removing it: the sandbox lives on in it.
    pub fn release(mut self) {
        self.keep = true;
    }

    /// The raw descriptor for clone3.
    pub fn dir_fd(&self) -> i32 {
        self.dir.as_raw_fd()
    }

    /// Its `cgroup.procs`, opened for writing (close-on-exec): for a sandbox that moves itself in
    /// where clone3 cannot start it there.
    pub fn procs(&self) -> Result<OwnedFd> {
        nix::fcntl::openat(
            &self.dir,
            "cgroup.procs",
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| {
            Error::io(
                "open cgroup.procs",
                Some(self.path.join("cgroup.procs")),
                e.into(),
            )
        })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Idempotent: a removed cgroup is simply not found.
        if !self.keep {
            let _ = self.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_parse() {
        let stat = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(keyed(stat, "user_usec"), Some(1000));
        assert_eq!(keyed(stat, "nope"), None);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
    }

    #[test]
    fn controllers_follow_limits() {
        let l = Limits {
            memory: Some(1),
            cpus: Some(0.5),
            ..Limits::default()
        };
        assert_eq!(controllers_for(&l), ["memory", "cpu"]);
    }
}
