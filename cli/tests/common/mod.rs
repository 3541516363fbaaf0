//! Helpers for the CLI integration tests. They run the real `rsandbox` binary, both as root and as
//! an unprivileged user (see scripts/test); nothing here assumes either identity.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../core/tests/common/mod.rs"]
mod shared;
#[allow(unused_imports)]
pub use shared::{
    busybox_rootfs, marker, must_work, my_gid, my_uid, refuse_clone3, skip,
    subordinate_ids_missing, TempDir,
};

/// The CLI under test: `$RSANDBOX_BIN` (the CI stages binaries where the unprivileged test user
/// can read them), else the binary cargo built for this package.
pub fn bin() -> PathBuf {
    match std::env::var_os("RSANDBOX_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_rsandbox")),
    }
}

/// A command running the CLI with `args`, stdin from /dev/null and both output streams piped.
pub fn cli<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// What one run of the CLI produced.
#[derive(Debug)]
pub struct Run {
    /// Exit code; a CLI killed by a signal is reported as 128 + signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(o: Output) -> Run {
        Run {
            code: code_of(o.status),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The shell's view of an exit status.
pub fn code_of(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => -1,
    }
}

/// Runs a prepared CLI command to completion, feeding it `input` when given.
#[track_caller]
pub fn run_cmd(mut cmd: Command, input: Option<&[u8]>) -> Run {
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin().display()));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
    }
    Run::from_output(child.wait_with_output().unwrap())
}

/// Runs `unshare UNSHARE_ARGS... sh -c SCRIPT BIN` to completion, where `$0` in the script is the
/// CLI under test: a host of the test's own making (namespaces whose limits or mounts it may
/// change without touching the machine's).
#[track_caller]
pub fn run_unshared(unshare_args: &[&str], script: &str) -> Run {
    let mut cmd = Command::new("unshare");
    cmd.args(unshare_args)
        .args(["sh", "-c", script])
        .arg(bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_cmd(cmd, None)
}

/// Runs `rsandbox ARGS...` to completion.
#[track_caller]
pub fn rsandbox(args: &[&str]) -> Run {
    run_cmd(cli(args), None)
}

/// Runs `rsandbox run OPTIONS... -- /bin/sh -c SCRIPT` to completion.
#[track_caller]
pub fn run_sh(options: &[&str], script: &str) -> Run {
    let mut args = vec!["run"];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    rsandbox(&args)
}

/// Waits up to `limit` for a spawned CLI to exit; kills it and panics when it does not.
#[track_caller]
pub fn wait_within(child: &mut Child, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return code_of(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rsandbox did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Command line of a host process, arguments separated by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&cmd).replace('\0', " "))
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
        if cmdline(pid).is_some_and(|cmd| cmd.contains(needle)) {
            found.push(pid);
        }
    }
    found
}

/// Host pids of `sleep` processes whose command line contains `needle` (not the CLI or the
/// sandbox's init, whose command lines carry the marker too).
pub fn sleeps_with(needle: &str) -> Vec<u32> {
    pids_with(needle)
        .into_iter()
        .filter(|&pid| cmdline(pid).is_some_and(|c| c.starts_with("sleep ")))
        .collect()
}

/// Waits up to `limit` until `count` sleep processes carrying `needle` run.
pub fn wait_for_sleeps(needle: &str, count: usize, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if sleeps_with(needle).len() >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
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

/// Sends `signal` to a process.
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions; pid is a child this test spawned and has
    // not reaped yet, so it cannot have been reused.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// Names of the network interfaces in a /proc/net/dev listing, sorted.
pub fn interfaces(proc_net_dev: &str) -> Vec<String> {
    let mut v: Vec<String> = proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect();
    v.sort();
    v
}
