//! Warm pools: a pooled job gets the same isolation as a cold start, its own sandbox, and the
//! results of a normal run; nothing passes from one job to the next.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::*;
use rsandbox::{Pool, Process, Spec, Status, Stdio};

fn job(script: &str) -> Process {
    Process {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// The tests of this file run one at a time: one of them counts agent processes.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn pool(spec: &Spec, size: usize) -> Option<Pool> {
    match Pool::new(spec, size) {
        Ok(p) => Some(p),
        Err(e) => {
            skip(&format!("no pool here: {e}"));
            None
        }
    }
}

fn feature(r: &rsandbox::RunResult, name: &str) -> Option<rsandbox::Feature> {
    r.report.features.iter().find(|f| f.name == name).cloned()
}

#[test]
fn a_pooled_job_runs_with_the_cold_start_protections() {
    let _serial = serial();
    let Some(pool) = pool(&Spec::default(), 2) else {
        return;
    };
    assert!(pool.wait_full(Duration::from_secs(30)));
    // The processes are counted by the shell's own glob: a pipeline's processes start at their
    // own pace, and `ls /proc | grep -c` counted the grep or not.
    let script =
        "grep -E '^(Seccomp|NoNewPrivs|CapEff|CapBnd):' /proc/self/status; id -u; hostname; \
                  set -- /proc/[0-9]*; echo $#; echo $$";
    let pooled = pool.run(&job(script), None).unwrap();
    let cold = run(&sh(script));
    assert!(
        pooled.status.success(),
        "{:?} {}",
        pooled.status,
        err(&pooled)
    );
    // Same protections, same view; the PID namespace holds the init and the job's shell (pid 2).
    assert_eq!(out(&pooled), out(&cold), "pooled vs cold");
    assert!(out(&pooled).ends_with("\n2\n2\n"), "{}", out(&pooled));
    let p = feature(&pooled, "pool").expect("the report says where the sandbox came from");
    assert_eq!(p.status, Status::Enforced, "{p:?}");
    assert!(p.detail.contains("one job per sandbox"), "{}", p.detail);
    assert!(feature(&cold, "pool").is_none());
}

#[test]
fn nothing_passes_from_one_job_to_the_next() {
    let _serial = serial();
    let mut spec = Spec::default();
    spec.filesystem.mounts.push(rsandbox::Mount::Tmpfs {
        destination: "/scratch".into(),
        size: None,
        mode: None,
    });
    let Some(pool) = pool(&spec, 1) else {
        return;
    };
    // The first job leaves a file, a background process and a SysV semaphore behind.
    let first = pool
        .run(
            &job("echo secret >/scratch/left; (sleep 30 &) ; ipcmk -S 1 >/dev/null 2>&1; echo $$"),
            None,
        )
        .unwrap();
    assert!(first.status.success(), "{}", err(&first));
    for _ in 0..3 {
        let next = pool
            .run(
                &job("cat /scratch/left 2>/dev/null || echo clean; ps -e -o comm= | grep -c sleep; ipcs -s | grep -c '^0x' || true"),
                None,
            )
            .unwrap();
        assert_eq!(out(&next), "clean\n0\n0\n", "stderr: {}", err(&next));
    }
}

#[test]
fn pooled_jobs_get_their_own_streams_env_cwd_and_status() {
    let _serial = serial();
    let Some(pool) = pool(&Spec::default(), 2) else {
        return;
    };
    let mut p = job("cat; echo \"$GREETING\" >&2; pwd; exit 7");
    p.env.insert("GREETING".into(), "hello".into());
    p.cwd = Some("/tmp".into());
    let r = pool.run(&p, Some(b"from stdin\n")).unwrap();
    assert_eq!(r.status.code(), Some(7));
    assert_eq!(out(&r), "from stdin\n/tmp\n");
    assert_eq!(err(&r), "hello\n");
    // PATH lookup and the errors of a cold start.
    let r = pool
        .run(
            &Process {
                args: vec!["echo".into(), "looked up".into()],
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(out(&r), "looked up\n");
    let missing = pool.run(
        &Process {
            args: vec!["no-such-command-rsbx".into()],
            ..Default::default()
        },
        None,
    );
    assert!(
        matches!(missing, Err(rsandbox::Error::ExecutableNotFound { .. })),
        "{missing:?}"
    );
    let bad_cwd = pool.run(
        &Process {
            args: vec!["true".into()],
            cwd: Some("/no/such/dir".into()),
            ..Default::default()
        },
        None,
    );
    assert_eq!(bad_cwd.unwrap_err().step(), Some(rsandbox::Step::Chdir));
    // Signals and the job's own timeout, counted from the job's start.
    let r = pool.run(&job("kill -TERM $$"), None).unwrap();
    assert_eq!(r.status.signal(), Some(libc::SIGTERM));
    let spec = Spec {
        timeout: Some(0.5),
        ..Default::default()
    };
    let Some(timed) = self::pool(&spec, 1) else {
        return;
    };
    std::thread::sleep(Duration::from_millis(800));
    let r = timed.run(&job("sleep 0.2; echo done"), None).unwrap();
    assert_eq!(
        out(&r),
        "done\n",
        "the timeout counted from the pool's start"
    );
    let r = timed.run(&job("sleep 10"), None).unwrap();
    assert!(r.timed_out && r.usage.wall_time < 5.0, "{r:?}");
}

/// A job's argv and environment reach it whole, however many and long; a NUL byte in any of
/// them is refused before it is sent, and the sandbox is still there for the next job.
#[test]
fn job_argv_and_environment_arrive_whole_or_are_refused() {
    let _serial = serial();
    let Some(pool) = pool(&Spec::default(), 1) else {
        return;
    };
    let mut p = job("echo \"$#:$1:${#V0}:$V0$V99\"; env | grep -c '^V[0-9]*='");
    p.args.push("sh".into());
    p.args.push("x".repeat(10_000));
    for i in 0..100 {
        p.env
            .insert(format!("V{i}"), format!("{i}{}", "y".repeat(i * 10)));
    }
    let r = pool.run(&p, None).unwrap();
    assert_eq!(r.status.code(), Some(0), "{}", err(&r));
    let text = out(&r);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(format!("1:{}:1:099{}", "x".repeat(10_000), "y".repeat(990)).as_str())
    );
    assert_eq!(lines.next(), Some("100"));

    for bad in [
        {
            let mut p = job("true");
            p.env.insert("K".into(), "a\0b".into());
            p
        },
        {
            let mut p = job("true");
            p.env.insert("K\0".into(), "v".into());
            p
        },
        Process {
            args: vec!["true".into(), "a\0b".into()],
            ..Default::default()
        },
    ] {
        let e = pool.run(&bad, None).unwrap_err();
        assert_eq!(e.kind(), rsandbox::ErrorKind::InvalidSpec, "{e}");
        assert!(e.to_string().contains("NUL"), "{e}");
    }
    let r = pool.run(&job("echo still"), None).unwrap();
    assert_eq!(out(&r), "still\n");
}

#[test]
fn an_empty_pool_starts_on_the_spot_and_says_so() {
    let _serial = serial();
    let Some(pool) = pool(&Spec::default(), 1) else {
        return;
    };
    assert!(pool.wait_full(Duration::from_secs(30)));
    // Take the ready one and, at once, another: the second cannot have been refilled yet... or
    // may have; either way both run, and the report says which.
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let mut c = pool
            .spawn(&Process {
                args: vec!["true".into()],
                stdout: Stdio::Null,
                stderr: Stdio::Null,
                ..Default::default()
            })
            .unwrap();
        let status = c
            .report()
            .features
            .iter()
            .find(|f| f.name == "pool")
            .unwrap()
            .status;
        kinds.push(status);
        assert!(c.wait().unwrap().status.success());
    }
    assert_eq!(kinds[0], Status::Enforced);
}

#[test]
fn dropping_a_pool_leaves_no_process() {
    let _serial = serial();
    let Some(pool) = pool(&Spec::default(), 3) else {
        return;
    };
    assert!(pool.wait_full(Duration::from_secs(30)));
    let agents = pids_with("rsandbox-agent").len();
    assert!(agents >= 3, "{agents} agents running");
    drop(pool);
    assert!(
        gone_within("rsandbox-agent", Duration::from_secs(10)),
        "agents outlived their pool"
    );
}

#[test]
fn many_threads_share_a_pool() {
    let _serial = serial();
    let Some(pool) = pool(&Spec::default(), 4) else {
        return;
    };
    std::thread::scope(|s| {
        for t in 0..4 {
            let pool = &pool;
            s.spawn(move || {
                for i in 0..25 {
                    let r = pool.run(&job(&format!("echo {t}-{i}")), None).unwrap();
                    assert_eq!(out(&r), format!("{t}-{i}\n"));
                }
            });
        }
    });
}

#[test]
fn results_come_before_teardown_and_every_init_is_reaped() {
    let _serial = serial();
    let cgroup_parent = std::env::var_os("RSANDBOX_TEST_CGROUP").map(std::path::PathBuf::from);
    let mut spec = Spec::default();
    if let Some(p) = &cgroup_parent {
        spec.cgroup.parent = Some(p.clone());
        spec.cgroup.want = rsandbox::Want::Required;
    }
    let Some(pool) = pool(&spec, 2) else {
        return;
    };
    for _ in 0..20 {
        let r = pool.run(&job("echo hi"), None).unwrap();
        assert_eq!(out(&r), "hi\n");
        // The usage came with the status record.
        assert!(
            r.usage.wall_time > 0.0 && r.usage.max_rss > 0,
            "{:?}",
            r.usage
        );
    }
    drop(pool);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while children_of_this_process(true) > 0 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(children_of_this_process(true), 0, "inits left unreaped");
    if let Some(parent) = cgroup_parent {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let left = || {
            std::fs::read_dir(&parent)
                .map(|d| {
                    d.flatten()
                        .filter(|e| {
                            e.file_name()
                                .to_string_lossy()
                                .starts_with(&format!("rsandbox-{}-", std::process::id()))
                        })
                        .count()
                })
                .unwrap_or(0)
        };
        while left() > 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(left(), 0, "pooled sandboxes' cgroups were not removed");
    } else {
        skip("no delegated cgroup (RSANDBOX_TEST_CGROUP): cgroup removal after an early result not checked");
    }
}

#[test]
fn a_ready_sandbox_that_died_is_replaced() {
    let _serial = serial();
    let Some(pool) = pool(&Spec::default(), 2) else {
        return;
    };
    assert!(pool.wait_full(Duration::from_secs(30)));
    // Kill every waiting agent from outside: the pool must notice at dispatch and still run jobs.
    for pid in pids_with("rsandbox-agent") {
        // SAFETY: kill(2) with a pid and a signal; the agents are this test's own sandboxes.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let r = pool.run(&job("echo alive"), None).unwrap();
        assert_eq!(out(&r), "alive\n", "{}", err(&r));
    }
}

/// While a job runs and a sandbox is still ready, the pool does not start another (it would
/// compete with the job for the CPU); once the job's result is in, it fills up again.
#[test]
fn the_refill_waits_while_a_job_runs() {
    let _serial = serial();
    let Some(pool) = pool(&Spec::default(), 2) else {
        return;
    };
    assert!(pool.wait_full(Duration::from_secs(30)), "the pool fills");
    let mut child = pool.spawn(&job("sleep 1")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        pool.ready(),
        1,
        "no start while the job runs and one is ready"
    );
    let r = child.wait().unwrap();
    assert!(r.status.success(), "{r:?}");
    assert!(
        pool.wait_full(Duration::from_secs(30)),
        "the pool fills again once the job's result is in"
    );
    // Taking the last ready one while a job runs: the pool is empty, so it refills at once.
    let mut a = pool.spawn(&job("sleep 1")).unwrap();
    let mut b = pool.spawn(&job("sleep 1")).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while pool.ready() == 0 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        pool.ready() > 0,
        "an empty pool refills even while jobs run"
    );
    a.wait().unwrap();
    b.wait().unwrap();
}

/// The default spec with `lower` under the persistent upper `upper` (kernel overlayfs).
fn over_persistent_upper(lower: &std::path::Path, upper: &std::path::Path) -> Spec {
    let mut spec = Spec::default();
    spec.filesystem.root = rsandbox::Root::Overlay(rsandbox::Overlay {
        lowers: vec![lower.to_path_buf()],
        image: None,
        upper: rsandbox::Upper::Persistent {
            path: upper.to_path_buf(),
        },
        driver: rsandbox::OverlayDriver::Kernel,
    });
    spec
}

/// A pool over a persistent upper holds one sandbox (each holds the upper until it has ended),
/// and its jobs follow one another on it without being refused: a job's result waits for its
/// sandbox to let go of the upper, as a cold start's does.
#[test]
fn a_pool_over_a_persistent_upper_runs_job_after_job() {
    let _serial = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let dir = TempDir::new("pool-upper");
    let spec = over_persistent_upper(rootfs.path(), &dir.path().join("u"));
    let e = Pool::new(&spec, 2)
        .err()
        .expect("a pool of 2 over one upper");
    assert_eq!(e.kind(), rsandbox::ErrorKind::InvalidSpec, "{e}");
    assert!(e.to_string().contains("one sandbox at a time"), "{e}");
    let Some(pool) = pool(&spec, 1) else {
        return;
    };
    for i in 0..12 {
        let r = pool
            .run(&job(&format!("echo {i} >>/log; tail -n 1 /log")), None)
            .unwrap_or_else(|e| panic!("job {i}: {e}"));
        assert_eq!(out(&r), format!("{i}\n"), "job {i}: {}", err(&r));
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("u/log"))
            .unwrap()
            .lines()
            .count(),
        12
    );
    // A second job while the first's result is not taken is refused at once (it could only
    // wait on it); once taken, jobs go on.
    let mut first = pool.spawn(&job("sleep 0.2; echo first >>/log")).unwrap();
    let started = std::time::Instant::now();
    let e = pool.spawn(&job("true")).expect_err("a second job at once");
    assert_eq!(e.kind(), rsandbox::ErrorKind::InvalidSpec, "{e}");
    assert!(started.elapsed() < Duration::from_millis(500), "{e}");
    assert!(first.wait().unwrap().status.success());
    drop(first);
    let r = pool.run(&job("tail -n 1 /log"), None).unwrap();
    assert_eq!(out(&r), "first\n", "{}", err(&r));
}

/// Over a persistent upper, `run`s from several threads take turns instead of being refused;
/// a `run` while a `spawn`'s result is untaken is refused at once (its caller may hold it).
#[test]
fn runs_from_several_threads_take_turns_on_a_persistent_upper() {
    let _serial = serial();
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let dir = TempDir::new("pool-turns");
    let spec = over_persistent_upper(rootfs.path(), &dir.path().join("u"));
    let Some(pool) = pool(&spec, 1) else {
        return;
    };
    std::thread::scope(|s| {
        for t in 0..3 {
            let pool = &pool;
            s.spawn(move || {
                for i in 0..3 {
                    // Each job appends, then checks that nobody else wrote in between.
                    let script = format!("echo {t}.{i} >>/log; sleep 0.05; tail -n 1 /log");
                    let r = pool
                        .run(&job(&script), None)
                        .unwrap_or_else(|e| panic!("{t}.{i}: {e}"));
                    assert_eq!(out(&r), format!("{t}.{i}\n"), "{}", err(&r));
                }
            });
        }
    });
    let log = std::fs::read_to_string(dir.path().join("u/log")).unwrap();
    assert_eq!(log.lines().count(), 9, "{log}");
    let mut held = pool.spawn(&job("sleep 0.2")).unwrap();
    let e = pool
        .run(&job("true"), None)
        .expect_err("a run behind a held job");
    assert_eq!(e.kind(), rsandbox::ErrorKind::InvalidSpec, "{e}");
    assert!(held.wait().unwrap().status.success());
    drop(held);
    assert!(pool.run(&job("true"), None).unwrap().status.success());
}

/// The report of a pooled job says what its sandbox is: one wall-timeout entry (the job's), and
/// a pool entry that names only what the sandbox has of its own.
#[test]
fn a_pooled_jobs_report_is_its_own() {
    let _serial = serial();
    let mut spec = Spec::default();
    spec.namespaces.pid = rsandbox::Want::Off;
    spec.filesystem.proc = false;
    let Some(pool) = pool(&spec, 1) else {
        return;
    };
    // Exactly one wall-timeout entry, of this status.
    let one_timeout = |r: &rsandbox::RunResult, status: Status| {
        let timeouts: Vec<_> = r
            .report
            .features
            .iter()
            .filter(|f| f.name == "wall-timeout")
            .collect();
        assert_eq!(timeouts.len(), 1, "{timeouts:?}");
        assert_eq!(timeouts[0].status, status, "{timeouts:?}");
    };
    let mut child = pool.spawn_with_timeout(&job("true"), Some(5.0)).unwrap();
    let r = child.wait().unwrap();
    one_timeout(&r, Status::Enforced);
    let p = feature(&r, "pool").unwrap();
    assert!(!p.detail.contains("PID namespace"), "{}", p.detail);
    assert!(p.detail.contains("mounts"), "{}", p.detail);
    // Without a limit for the job: one entry, off.
    one_timeout(&pool.run(&job("true"), None).unwrap(), Status::Off);
}

/// A job with more arguments than the agent's table holds is refused by name before it is sent,
/// and the pool goes on.
#[test]
fn a_job_too_long_for_the_agent_is_refused_by_name() {
    let _serial = serial();
    let Some(pool) = pool(&Spec::default(), 1) else {
        return;
    };
    for size in [0, 1025] {
        let e = Pool::new(&Spec::default(), size)
            .err()
            .expect("a pool size out of range");
        assert_eq!(e.kind(), rsandbox::ErrorKind::InvalidSpec, "{e}");
        assert!(e.to_string().contains("1 to 1024"), "{e}");
    }
    let mut long = job("echo $#");
    long.args.extend((0..17_000).map(|i| i.to_string()));
    let e = pool.run(&long, None).unwrap_err();
    assert_eq!(e.kind(), rsandbox::ErrorKind::InvalidSpec, "{e}");
    assert!(e.to_string().contains("a pooled job takes at most"), "{e}");
    let r = pool.run(&job("echo ok"), None).unwrap();
    assert_eq!(out(&r), "ok\n");
}
