//! cgroup v2 limits, run in the VM lane (tests/vm/run-in-vm, started by tests/run-extra): a pure
//! cgroup v2 guest where this binary runs as an unprivileged uid from a leaf of a delegated subtree
//! (`RSANDBOX_CGROUP_PARENT`). The host lane does not run this binary: the host's cgroup2 has no
//! controllers. Fork bombs and memory hogs here run only inside the VM, and bounded even there.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use rsandbox::{Mount, Spec, Status, Verdict, Want};

/// The delegated parent, with the controllers the limits need. Outside the VM lane this binary
/// has nothing to test: it says so and each test returns.
fn parent() -> Option<PathBuf> {
    let in_vm = std::env::var("RSANDBOX_VM_LANE").is_ok_and(|v| v == "1");
    let parent = std::env::var_os("RSANDBOX_CGROUP_PARENT").map(PathBuf::from);
    let ready = parent.as_ref().is_some_and(|p| {
        let c = std::fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default();
        ["memory", "pids", "cpu"]
            .iter()
            .all(|k| c.split_whitespace().any(|x| x == *k))
    });
    match (in_vm, ready) {
        (_, true) => parent,
        (true, false) => panic!("VM lane without a delegated memory/pids/cpu subtree: {parent:?}"),
        (false, false) => {
            eprintln!("not in the VM lane (RSANDBOX_VM_LANE unset): nothing to test here");
            None
        }
    }
}

fn limited(script: &str) -> Spec {
    let mut spec = sh(script);
    spec.limits.level = Want::Required;
    spec.cgroup.want = Want::Required;
    spec.timeout = Some(60.0);
    spec
}

/// Runs this test binary inside the sandbox as a memory allocator (see `hog_helper`).
fn hog(bytes: u64, limit: u64) -> Spec {
    let exe = std::env::current_exe().unwrap();
    let mut spec = Spec::new([
        "/run/hog",
        "--exact",
        "hog_helper",
        "--nocapture",
        "--test-threads=1",
    ]);
    spec.filesystem.mounts.push(Mount::Bind {
        source: exe,
        destination: "/run/hog".into(),
        readonly: true,
    });
    spec.process
        .env
        .insert("RSANDBOX_HOG_BYTES".into(), bytes.to_string());
    spec.limits.memory = Some(limit);
    spec.cgroup.want = Want::Required;
    spec.timeout = Some(120.0);
    spec
}

/// Not a test of its own: when started by `hog` with RSANDBOX_HOG_BYTES, it allocates and touches
/// that many bytes, then exits 0. Otherwise it returns at once.
#[test]
fn hog_helper() {
    let Some(bytes) = std::env::var("RSANDBOX_HOG_BYTES")
        .ok()
        .and_then(|b| b.parse::<usize>().ok())
    else {
        return;
    };
    // A non-zero fill writes every page, so all of it is resident.
    let v = vec![1u8; bytes];
    std::hint::black_box(&v);
    println!("allocated {bytes}");
}

/// The run ended at its memory limit, by the kernel's OOM killer.
#[track_caller]
fn assert_oom_killed(r: &rsandbox::RunResult) {
    assert_eq!(r.verdict, Verdict::MemoryLimit, "{:?} {}", r.status, err(r));
    assert!(r.usage.oom_kills >= 1, "{:?}", r.usage);
}

#[test]
fn memory_hog_is_oom_killed_at_the_limit() {
    let Some(_) = parent() else { return };
    let limit = 64 << 20;
    let r = run(&hog(256 << 20, limit));
    assert_oom_killed(&r);
    assert_eq!(r.usage.memory_peak_source, "memory.peak");
    let peak = r.usage.memory_peak as f64;
    assert!(
        peak >= limit as f64 * 0.9 && peak <= limit as f64 * 1.01,
        "peak {peak} vs limit {limit}"
    );
    assert_eq!(
        r.report.feature("limit.memory").unwrap().status,
        Status::Enforced
    );
    // Negative control: the same allocation under a roomy limit succeeds.
    let r = run(&hog(96 << 20, 512 << 20));
    assert_eq!(r.verdict, Verdict::Ok, "{}", err(&r));
    assert_eq!(r.usage.oom_kills, 0);
}

#[test]
fn peak_memory_matches_a_known_allocation() {
    let Some(_) = parent() else { return };
    let bytes: u64 = 150 << 20;
    let r = run(&hog(bytes, 600 << 20));
    assert_eq!(r.verdict, Verdict::Ok, "{}", err(&r));
    let peak = r.usage.memory_peak as f64;
    assert!(
        peak >= bytes as f64 && peak <= bytes as f64 * 1.10,
        "peak {peak} for {bytes} allocated"
    );
}

#[test]
fn fork_bomb_is_capped_by_pids_max_and_fully_cleaned() {
    let Some(parent) = parent() else { return };
    let before = count_procs(&parent);
    let mut spec = limited("bomb() { bomb | bomb & }; bomb; sleep 2; echo alive");
    spec.limits.pids = Some(32);
    spec.timeout = Some(8.0);
    spec.namespaces.pid = Want::Required;
    let start = Instant::now();
    let r = run(&spec);
    assert!(start.elapsed() < Duration::from_secs(30));
    let cg = r.report.cgroup.clone().expect("a cgroup");
    assert!(
        !cg.exists(),
        "the bomb's cgroup was not removed: {}",
        cg.display()
    );
    assert!(
        err(&r).contains("fork")
            || err(&r).contains("Resource temporarily unavailable")
            || r.timed_out,
        "pids.max never bit: {:?} {}",
        r.status,
        err(&r)
    );
    if let Some(peak) = r.usage.pids_peak {
        assert!(peak <= 32, "pids.peak {peak}");
    }
    // Nothing of it is left anywhere in the delegated subtree: only the test's own processes.
    let after = count_procs(&parent);
    assert!(
        after <= before,
        "{after} processes in the delegated subtree, {before} before"
    );
}

fn count_procs(dir: &std::path::Path) -> u32 {
    let mut n = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().count() as u32)
        .unwrap_or(0);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                n += count_procs(&e.path());
            }
        }
    }
    n
}

#[test]
fn cpus_hold_a_busy_loop_at_the_quota() {
    let Some(_) = parent() else { return };
    let mut spec = limited("while :; do :; done");
    spec.limits.cpus = Some(0.3);
    spec.timeout = Some(3.0);
    let r = run(&spec);
    assert!(r.timed_out);
    let share = r.usage.cpu_time / r.usage.wall_time;
    assert!(
        (0.25..=0.35).contains(&share),
        "cpu share {share:.3} ({:?})",
        r.usage
    );
    // Negative control: unlimited, the loop takes a whole CPU.
    let mut spec = limited("while :; do :; done");
    spec.timeout = Some(2.0);
    let r = run(&spec);
    let share = r.usage.cpu_time / r.usage.wall_time;
    assert!(share > 0.6, "unlimited share {share:.3}");
}

#[test]
fn cpu_time_limit_gives_cpu_timeout() {
    let Some(_) = parent() else { return };
    let mut spec = limited("while :; do :; done");
    spec.limits.cpu_time = Some(1.0);
    let r = run(&spec);
    assert_eq!(r.verdict, Verdict::CpuTimeout, "{:?}", r.usage);
    assert!(
        r.usage.cpu_time >= 1.0 && r.usage.cpu_time < 2.5,
        "{:?}",
        r.usage
    );
}

#[test]
fn two_hundred_runs_leave_nothing_behind() {
    let Some(parent) = parent() else { return };
    let before = count_procs(&parent);
    let mut paths = Vec::new();
    for i in 0..200 {
        let mut spec = limited("true");
        spec.limits.memory = Some(32 << 20);
        spec.limits.pids = Some(16);
        let r = run(&spec);
        assert!(r.status.success(), "run {i}: {}", err(&r));
        paths.push(r.report.cgroup.clone().expect("a cgroup"));
    }
    assert!(paths.iter().all(|p| !p.exists()), "cgroups left behind");
    assert!(count_procs(&parent) <= before, "processes left behind");
}

/// What `clone3_refused_limits` runs under, set by the test that starts it.
const CLONE3_VAR: &str = "RSANDBOX_TEST_CLONE3_REFUSED";

#[test]
fn a_host_refusing_clone3_still_has_its_limits() {
    let Some(_) = parent() else { return };
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "clone3_refused_limits",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CLONE3_VAR, "1");
    // SAFETY: the hook only makes two prctl calls (async-signal-safe).
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| refuse_clone3(libc::ENOSYS as u32));
    }
    let output = cmd.output().expect("run the refused host");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{text}");
    assert!(output.status.success());
    assert!(
        text.contains("clone3 refused: limits held"),
        "the checks did not run"
    );
}

/// Not a test of its own: run by the test above under a filter refusing clone3 with ENOSYS (a
/// container runtime's default profile), where a sandbox moves itself into its cgroup. Otherwise
/// it returns at once.
#[test]
fn clone3_refused_limits() {
    if std::env::var(CLONE3_VAR).as_deref() != Ok("1") {
        return;
    }
    // Control: the filter is in force (clone3 with no arguments would be EINVAL).
    // SAFETY: clone3 with a null pointer and size 0 creates nothing.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!((ret, errno), (-1, Some(libc::ENOSYS)));

    // Memory: the hog is killed at the limit, which only its cgroup holds it to.
    let r = run(&hog(256 << 20, 64 << 20));
    assert_oom_killed(&r);
    let detail = &r.report.feature("cgroup").expect("a cgroup entry").detail;
    assert!(detail.contains("clone3 is refused"), "{detail}");

    // Processes: pids.max bites, and the cgroup namespace is rooted at the sandbox's cgroup.
    let mut spec = limited(
        "grep '^0::' /proc/self/cgroup; i=0; while [ $i -lt 20 ]; do sleep 3 & i=$((i+1)); done",
    );
    spec.limits.pids = Some(8);
    let r = run(&spec);
    assert!(out(&r).starts_with("0::/\n"), "{}", out(&r));
    assert!(
        err(&r).contains("fork") || err(&r).contains("Resource temporarily unavailable"),
        "pids.max never bit: {}",
        err(&r)
    );
    if let Some(peak) = r.usage.pids_peak {
        assert!(peak <= 8, "pids.peak {peak}");
    }
    // Control: under a roomy pids.max the same loop starts every sleep.
    let mut spec = limited("i=0; while [ $i -lt 20 ]; do sleep 1 & i=$((i+1)); done; wait");
    spec.limits.pids = Some(64);
    let r = run(&spec);
    assert!(r.status.success(), "{}", err(&r));
    assert_eq!(err(&r), "");
    println!("clone3 refused: limits held");
}
