//! Helpers shared by the integration tests. These tests run both as root and as an unprivileged
//! user (see scripts/test); nothing here assumes either.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rsandbox::{RunResult, Spec};

/// `RSANDBOX_MUST_WORK=1` turns skips of features this machine has into failures.
pub fn must_work() -> bool {
    std::env::var("RSANDBOX_MUST_WORK").is_ok_and(|v| v == "1")
}

/// Skips the current test with a reason, or fails it under `RSANDBOX_MUST_WORK=1`.
#[track_caller]
pub fn skip(reason: &str) {
    if must_work() {
        panic!("skipped under RSANDBOX_MUST_WORK=1: {reason}");
    }
    eprintln!("SKIP: {reason}");
}

/// A spec running a shell script.
pub fn sh(script: &str) -> Spec {
    Spec::new(["/bin/sh", "-c", script])
}

/// Runs a spec and returns its result, panicking with the error otherwise.
#[track_caller]
pub fn run(spec: &Spec) -> RunResult {
    match rsandbox::run(spec) {
        Ok(r) => r,
        Err(e) => panic!("run failed: {e}"),
    }
}

/// Runs a script and returns (exit code, stdout, stderr).
#[track_caller]
pub fn run_sh(script: &str) -> (i32, String, String) {
    let r = run(&sh(script));
    (r.status.shell_code(), out(&r), err(&r))
}

pub fn out(r: &RunResult) -> String {
    String::from_utf8_lossy(r.stdout.as_deref().unwrap_or_default()).into_owned()
}

pub fn err(r: &RunResult) -> String {
    String::from_utf8_lossy(r.stderr.as_deref().unwrap_or_default()).into_owned()
}

/// A string unique to this test process and call, for finding processes by command line.
pub fn marker() -> String {
    static N: AtomicU32 = AtomicU32::new(1);
    format!(
        "{}.{}",
        std::process::id() % 100000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Host pids whose command line contains `needle`.
pub fn pids_with(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// Waits up to `limit` for every process whose command line contains `needle` to disappear.
pub fn gone_within(needle: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if pids_with(needle).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    pids_with(needle).is_empty()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("rsbx-test-{tag}-{}", marker()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path of `name` inside the directory, as a string for a command line.
    pub fn join(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }

    /// The directory as a string for a command line.
    pub fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether fuse-overlayfs can run here; skips (or fails under RSANDBOX_MUST_WORK) otherwise.
pub fn fuse_usable() -> bool {
    if !Path::new("/usr/bin/fuse-overlayfs").exists() {
        skip("fuse-overlayfs is not installed (apt-get install fuse-overlayfs)");
        return false;
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        skip("/dev/fuse is not accessible read-write (chmod 0666 /dev/fuse; scripts/test does)");
        return false;
    }
    true
}

/// A tiny rootfs made of static busybox, or None (with a skip) when busybox-static is missing.
pub fn busybox_rootfs() -> Option<TempDir> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    let Some(busybox) = busybox else {
        skip("busybox-static is not installed (apt-get install busybox-static)");
        return None;
    };
    let dir = TempDir::new("rootfs");
    let root = dir.path();
    for d in ["bin", "proc", "dev", "tmp", "etc", "work"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for tool in [
        "sh", "ls", "cat", "id", "touch", "echo", "hostname", "ps", "mkdir", "stat",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    std::fs::write(root.join("etc/marker"), "busybox-rootfs\n").unwrap();
    Some(dir)
}

pub fn my_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

pub fn my_gid() -> u32 {
    // SAFETY: getgid cannot fail.
    unsafe { libc::getgid() }
}

/// Processes whose parent is this process (only zombies with `zombies_only`).
pub fn children_of_this_process(zombies_only: bool) -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter(|stat| {
                    // pid (comm) state ppid ...
                    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
                    let mut f = rest.split_whitespace();
                    let state = f.next();
                    (!zombies_only || state == Some("Z")) && f.next() == Some(me.as_str())
                })
                .count()
        })
        .unwrap_or(0)
}

/// The name of this process's uid in /etc/passwd ("" when it has none).
pub fn user_name() -> String {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == my_uid().to_string()).then(|| f[0].to_string())
        })
        .unwrap_or_default()
}

/// Why a subordinate-range mapping cannot run here, if it cannot: no /etc/subuid and
/// /etc/subgid entry for this user, or (as a user) no newuidmap.
pub fn subordinate_ids_missing() -> Option<String> {
    let name = user_name();
    let has_range = |file: &str| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                let owner = l.split(':').next();
                (!name.is_empty() && owner == Some(name.as_str()))
                    || owner == Some(my_uid().to_string().as_str())
            })
    };
    if !(has_range("/etc/subuid") && has_range("/etc/subgid")) {
        return Some(format!("no /etc/subuid and /etc/subgid entry for {name}"));
    }
    if my_uid() != 0 && !Path::new("/usr/bin/newuidmap").exists() {
        return Some("newuidmap is not installed (apt-get install uidmap)".into());
    }
    None
}

/// Installs a seccomp filter that fails clone3 with `errno` and allows the rest, in every thread
/// of the process and what it starts (no_new_privs first, as an unprivileged process must): a
/// host such as a container runtime's default profile. Async-signal-safe, for a `pre_exec` hook.
pub fn refuse_clone3(errno: u32) -> std::io::Result<()> {
    const SECCOMP_DATA_NR: u32 = 0;
    let filter = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_DATA_NR,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_clone3 as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | errno,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments, then seccomp(2) with a pointer to a filter that
    // outlives the call; both are async-signal-safe (for a pre_exec hook). TSYNC: every thread of
    // the process gets it, as with a policy in force from the start.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_TSYNC,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
