//! cgroup v2 on the host lane. This host's cgroup2 has no controllers, so limits are tested in the
//! VM lane (tests/vm_limits.rs); here: the layout, the no-delegation report and error, and what a
//! delegated subtree gives without controllers: the sandbox's own cgroup, cpu.stat accounting,
//! cgroup.kill teardown that reaches escaped processes, freeze/thaw, and clean removal.
//!
//! `RSANDBOX_TEST_CGROUP` names a delegated subtree (scripts/test creates one and starts every
//! test process in a leaf below it).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use rsandbox::{ErrorKind, Spec, Status, Verdict, Want};

fn delegated() -> Option<PathBuf> {
    match std::env::var_os("RSANDBOX_TEST_CGROUP") {
        Some(p) if Path::new(&p).join("cgroup.procs").exists() => Some(PathBuf::from(p)),
        _ => {
            skip("RSANDBOX_TEST_CGROUP names no delegated cgroup (scripts/test sets one up)");
            None
        }
    }
}

fn in_cgroup(parent: &Path, script: &str) -> Spec {
    let mut spec = sh(script);
    spec.cgroup.parent = Some(parent.to_path_buf());
    spec.cgroup.want = Want::Required;
    spec.timeout = Some(30.0);
    spec
}

#[test]
fn doctor_describes_the_cgroup_layout() {
    let d = rsandbox::doctor();
    let c = d.check("cgroup2").expect("cgroup2 check");
    let sys_is_v2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| {
            l.split_whitespace().nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 ")
        });
    if sys_is_v2 {
        assert!(!c.detail.contains("hybrid"), "{c:?}");
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        assert!(
            c.detail.contains("hybrid") && c.detail.contains("/sys/fs/cgroup/unified"),
            "{c:?}"
        );
    }
}

#[test]
fn without_delegation_limits_are_refused_or_reported_with_their_fallback() {
    let nowhere = "/sys/fs/cgroup/rsandbox-no-such-parent";
    // Required limits: a clear error naming the cause and the remedy.
    let mut spec = sh("true");
    spec.cgroup.parent = Some(nowhere.into());
    spec.limits.memory = Some(64 << 20);
    let e = rsandbox::spawn(&spec).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains(nowhere), "{e}");
    assert!(
        e.remedy().is_some_and(|r| r.contains("Delegate=yes")),
        "{e}"
    );

    // A required CPU-time budget alone fails the same way: per-process RLIMIT_CPU is only its
    // best-effort fallback.
    let mut cpu_only = spec.clone();
    cpu_only.limits.memory = None;
    cpu_only.limits.cpu_time = Some(5.0);
    let e = rsandbox::spawn(&cpu_only).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");

    // Best-effort: the run goes ahead, the report says what is not enforced, and the rlimit
    // fallbacks are in force inside.
    spec.limits.level = Want::BestEffort;
    spec.limits.cpu_time = Some(4.2);
    spec.process.args = vec!["/bin/sh".into(), "-c".into(), "ulimit -v; ulimit -t".into()];
    let r = run(&spec);
    assert_eq!(
        out(&r),
        format!("{}\n5\n", (64 << 20) / 1024),
        "{}",
        err(&r)
    );
    assert_eq!(r.report.feature("cgroup").unwrap().status, Status::Skipped);
    let mem = r.report.feature("limit.memory").unwrap();
    assert_eq!(mem.status, Status::Skipped);
    assert!(mem.detail.contains("RLIMIT_AS"), "{mem:?}");
    let cpu = r.report.feature("limit.cpu-time").unwrap();
    assert_eq!(cpu.status, Status::Skipped);
    // 4.2 s is enforced as 5 whole seconds (ulimit -t above), and the report says so.
    assert!(cpu.detail.contains("RLIMIT_CPU = 5 s"), "{cpu:?}");
    assert!(r.usage.memory_peak_source.starts_with("ru_maxrss"));
}

/// Without a cgroup the CPU-time budget falls back to RLIMIT_CPU, which limits each process
/// alone: processes that each stay under it but spend more than the budget together end with
/// the cpu-timeout verdict (their exit status stays as it was), and a budget they stay within
/// gives ok (the control). The rlimits entry of the report names the fallback.
#[test]
fn a_cpu_budget_spent_by_several_processes_is_a_cpu_timeout() {
    // Three processes of ~0.4 s of CPU each, one after the other.
    let burn = "for i in 1 2 3; do python3 -c 'import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass'; done";
    let spec_with = |budget: f64| {
        let mut spec = sh(burn);
        spec.cgroup.want = Want::Off;
        spec.limits.level = Want::BestEffort;
        spec.limits.cpu_time = Some(budget);
        spec.timeout = Some(60.0);
        spec
    };
    let r = run(&spec_with(1.0));
    // Where this process's cgroup takes a child (root here), the whole sandbox is watched and
    // killed at the budget instead: the same verdict.
    let watched = r.report.feature("limit.cpu-time").unwrap().status == Status::Enforced;
    if !watched {
        assert!(r.status.success(), "{:?} {}", r.status, err(&r));
    }
    assert!(r.usage.cpu_time >= 1.0, "{:?}", r.usage);
    assert_eq!(
        r.verdict,
        Verdict::CpuTimeout,
        "{:?} {:?}",
        r.status,
        r.usage
    );
    let rlimits = &r.report.feature("rlimits").unwrap().detail;
    assert!(rlimits.contains("cpu=1"), "{rlimits}");
    let r = run(&spec_with(30.0));
    assert!(r.status.success(), "{:?} {}", r.status, err(&r));
    assert_eq!(r.verdict, Verdict::Ok, "{:?}", r.usage);
}

#[test]
fn a_cgroup_of_its_own_with_accounting_and_clean_removal() {
    let Some(parent) = delegated() else { return };
    let r = run(&in_cgroup(
        &parent,
        "cat /proc/self/cgroup; i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done",
    ));
    assert!(r.status.success(), "{}", err(&r));
    // The cgroup namespace roots the sandbox at its own cgroup.
    assert!(out(&r).lines().any(|l| l == "0::/"), "{}", out(&r));
    let cg = r.report.cgroup.clone().expect("a cgroup in the report");
    assert!(cg.starts_with(&parent), "{}", cg.display());
    assert!(!cg.exists(), "the cgroup was not removed: {}", cg.display());
    assert_eq!(r.report.feature("cgroup").unwrap().status, Status::Enforced);
    assert!(r.usage.cpu_time > 0.0, "{:?}", r.usage);
}

#[test]
fn cgroup_kill_reaches_processes_that_escaped_the_process_group() {
    let Some(parent) = delegated() else { return };
    // Without a PID namespace nothing but the cgroup holds a daemonised process.
    let escape = |want: Want| {
        let m = marker();
        let mut spec = in_cgroup(&parent, &format!("m={m}; setsid sleep 600$m & sleep 0.2"));
        spec.namespaces.pid = Want::Off;
        spec.cgroup.want = want;
        if want == Want::Off {
            spec.cgroup.parent = None;
        }
        spec.process.stdout = rsandbox::Stdio::Null;
        let r = run(&spec);
        assert!(r.status.success(), "{}", err(&r));
        let survivors = pids_with(&format!("sleep 600{m}"));
        for pid in &survivors {
            // SAFETY: killing a process this test started.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        survivors
    };
    // Negative control: without a cgroup the escaped daemon outlives the sandbox.
    assert!(
        !escape(Want::Off).is_empty(),
        "the daemon did not escape: the test shows nothing"
    );
    assert!(
        escape(Want::Required).is_empty(),
        "cgroup.kill missed a process"
    );
}

#[test]
fn freeze_and_thaw() {
    let Some(parent) = delegated() else { return };
    let dir = TempDir::new("freeze");
    let mut spec = in_cgroup(
        &parent,
        "i=0; while :; do i=$((i+1)); echo $i > /shared/count; sleep 0.01; done",
    );
    spec.filesystem.mounts.push(rsandbox::Mount::Bind {
        source: dir.path().into(),
        destination: "/shared".into(),
        readonly: false,
    });
    let mut child = rsandbox::spawn(&spec).unwrap();
    let count = || {
        std::fs::read_to_string(dir.path().join("count"))
            .unwrap_or_default()
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let start = Instant::now();
    while count() < 3 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.freeze().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let frozen_at = count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), frozen_at, "the sandbox kept running while frozen");
    child.thaw().unwrap();
    let start = Instant::now();
    while count() <= frozen_at && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(count() > frozen_at, "the sandbox did not resume");
    child.kill(libc::SIGKILL).unwrap();
    child.wait().unwrap();
}

#[test]
fn cpu_time_limit_kills_the_whole_sandbox() {
    let Some(parent) = delegated() else { return };
    let mut spec = in_cgroup(&parent, "while :; do :; done & while :; do :; done");
    spec.limits.cpu_time = Some(0.5);
    let start = Instant::now();
    let r = run(&spec);
    assert_eq!(r.verdict, Verdict::CpuTimeout, "{:?} {}", r.status, err(&r));
    assert!(
        r.usage.cpu_time >= 0.5 && r.usage.cpu_time < 3.0,
        "{:?}",
        r.usage
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(
        r.report.feature("limit.cpu-time").unwrap().status,
        Status::Enforced
    );
}

#[test]
fn many_runs_leave_no_cgroups_behind() {
    let Some(parent) = delegated() else { return };
    let mut paths = Vec::new();
    for _ in 0..50 {
        let r = run(&in_cgroup(&parent, "true"));
        assert!(r.status.success());
        paths.push(r.report.cgroup.clone().expect("a cgroup"));
    }
    let left: Vec<_> = paths.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A caller killed with SIGKILL cannot remove its sandboxes' cgroups: the next caller using the
/// same parent removes those of processes that are gone, and nothing else.
#[test]
fn cgroups_left_by_a_killed_caller_are_swept() {
    let Some(parent) = delegated() else { return };
    // A parent no start of this test process has used yet (the sweep runs once per parent).
    let fresh = parent.join(format!("sweep-{}", marker()));
    std::fs::create_dir(&fresh).unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/self/ns/pid").unwrap().ino();
    let stale = fresh.join(format!("rsandbox-{gone_pid}-0-{ns}"));
    // Controls: a live process's; one from another PID namespace (where the pid means another
    // process); a name that is not one of ours.
    let live = fresh.join(format!("rsandbox-{}-999999-{ns}", std::process::id()));
    let elsewhere = fresh.join(format!("rsandbox-{gone_pid}-0-{}", ns + 1));
    let foreign = fresh.join("rsandbox-of-someone-else");
    for dir in [&stale, &live, &elsewhere, &foreign] {
        std::fs::create_dir(dir).unwrap();
    }
    let r = run(&in_cgroup(&fresh, "true"));
    assert!(r.status.success(), "{}", err(&r));
    assert!(!stale.exists(), "left behind: {}", stale.display());
    assert!(live.exists() && elsewhere.exists() && foreign.exists());
    for dir in [&live, &elsewhere, &foreign, &fresh] {
        std::fs::remove_dir(dir).unwrap();
    }
}

/// On a hybrid host (memory held by a cgroup v1 hierarchy), a required memory limit is refused
/// with the remedy that can help, whether the caller has a delegated cgroup or not: no cgroup2
/// directory can offer the controller.
#[test]
fn a_hybrid_hosts_limits_get_the_remedy_that_helps() {
    let memory_on_v1 = std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            matches!(f[..], ["memory", h, _, "1"] if h != "0")
        });
    if !memory_on_v1 {
        eprintln!("memory is not held by a cgroup v1 hierarchy here: nothing to check");
        return;
    }
    let mut parents = vec![None];
    parents.extend(delegated_quietly().map(Some));
    for parent in parents {
        let mut spec = sh("true");
        spec.cgroup.parent = parent.clone();
        spec.limits.memory = Some(64 << 20);
        let e = rsandbox::spawn(&spec).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{parent:?}: {e}");
        let remedy = e.remedy().unwrap_or_default();
        assert!(
            remedy.contains("systemd.unified_cgroup_hierarchy=1"),
            "{parent:?}: {e}"
        );
    }
}

fn delegated_quietly() -> Option<PathBuf> {
    std::env::var_os("RSANDBOX_TEST_CGROUP")
        .map(PathBuf::from)
        .filter(|p| p.join("cgroup.procs").exists())
}
