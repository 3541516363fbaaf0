//! The command's life: exit status, signals, timeouts, kill, die-with-parent, fds, env, stdio.

mod common;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::*;
use rsandbox::{ExitStatus, Spec, Stdio, Verdict};

#[test]
fn exit_codes_propagate() {
    for code in [0, 1, 7, 255] {
        let r = run(&sh(&format!("exit {code}")));
        assert_eq!(r.status, ExitStatus::Exited(code));
        assert_eq!(
            r.verdict,
            if code == 0 {
                Verdict::Ok
            } else {
                Verdict::ExitNonzero
            }
        );
    }
}

#[test]
fn signals_propagate() {
    let r = run(&sh("kill -TERM $$; sleep 5"));
    assert_eq!(r.status, ExitStatus::Signaled(libc::SIGTERM));
    assert_eq!(r.verdict, Verdict::Signaled);
    assert_eq!(r.status.shell_code(), 128 + libc::SIGTERM);
    let r = run(&sh("kill -KILL $$"));
    assert_eq!(r.status, ExitStatus::Signaled(libc::SIGKILL));
}

#[test]
fn timeout_kills_the_whole_tree() {
    let m = marker();
    let mut spec = sh(&format!("sleep 300{m} & (sleep 301{m} &) ; sleep 302{m}"));
    spec.timeout = Some(0.5);
    let start = Instant::now();
    let r = run(&spec);
    let took = start.elapsed();
    assert!(r.timed_out);
    assert_eq!(r.verdict, Verdict::WallTimeout);
    assert_eq!(r.status, ExitStatus::Signaled(libc::SIGKILL));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(r.usage.wall_time >= 0.5);
    assert!(
        gone_within(&m, Duration::from_secs(5)),
        "survivors: {:?}",
        pids_with(&m)
    );
}

/// The start variants whose inits end a sandbox differently: the small init in a PID namespace,
/// without one (the command's process group is the sandbox), the forking start's init, and a
/// sandbox that does not die with its handle.
fn end_variants(script: &str) -> Vec<(&'static str, Spec)> {
    let base = sh(script);
    let mut no_pid_ns = base.clone();
    no_pid_ns.namespaces.pid = rsandbox::Want::Off;
    let mut forking = base.clone();
    forking.security.capabilities = vec!["CAP_SYS_PTRACE".into()];
    let mut lasting = base.clone();
    lasting.die_with_parent = false;
    vec![
        ("small init", base),
        ("no PID namespace", no_pid_ns),
        ("forking start", forking),
        ("die_with_parent off", lasting),
    ]
}

/// What a run killed at its wall-clock limit spent is in its result: the CPU time of its
/// processes (two spinning), and the peak memory of one that held 64 MiB. Without a memory
/// cgroup these come from the processes' own accounting, which the kernel drops when it reaps
/// the processes of a killed init: the init ends the sandbox itself, and reports.
#[test]
fn a_run_killed_at_its_limit_keeps_its_usage() {
    let script = "sh -c 'while :; do :; done' & \
                  dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; while :; do :; done";
    for (name, mut spec) in end_variants(script) {
        spec.timeout = Some(1.0);
        let r = run(&spec);
        assert_eq!(r.verdict, Verdict::WallTimeout, "{name}");
        assert_eq!(r.status, ExitStatus::Signaled(libc::SIGKILL), "{name}");
        assert!(r.usage.cpu_time > 0.2, "{name}: {:?}", r.usage);
        assert!(r.usage.memory_peak >= 64 << 20, "{name}: {:?}", r.usage);
        assert!(
            r.report.features.iter().all(|f| f.name != "result.usage"),
            "{name}: {:?}",
            r.report.features
        );
    }
}

/// The wall-clock time is the sandbox's own, however late the caller takes the result: the init
/// records when the command ended.
#[test]
fn the_wall_time_is_the_sandboxs_own_however_late_it_is_taken() {
    for (name, spec) in end_variants("sleep 0.2") {
        let mut child = rsandbox::spawn(&spec).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let r = child.wait().unwrap();
        assert!(r.status.success(), "{name}: {r:?}");
        let wall = r.usage.wall_time;
        assert!((0.2..1.0).contains(&wall), "{name}: {wall}");
    }
}

/// The wall-clock limit holds while the caller is not waiting (busy elsewhere, or waiting for
/// another sandbox first): the init keeps the deadline too, and the result says it was the
/// limit, with the time it took. Also for a pool's job, whose deadline the init learns at
/// dispatch.
#[test]
fn the_deadline_holds_while_the_caller_is_not_waiting() {
    let check = |name: &str, mut child: rsandbox::Child, m: &str| {
        let start = Instant::now();
        assert!(
            gone_within(m, Duration::from_secs(4)),
            "{name}: still running {:?} after {:?}",
            pids_with(m),
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
        let r = child.wait().unwrap();
        assert_eq!(r.verdict, Verdict::WallTimeout, "{name}: {r:?}");
        assert!(r.timed_out, "{name}");
        let wall = r.usage.wall_time;
        assert!((0.5..1.5).contains(&wall), "{name}: {wall}");
    };
    for (name, spec) in end_variants("") {
        let m = marker();
        let mut spec = spec;
        spec.process.args = sh(&format!("sleep 360{m}")).process.args;
        spec.timeout = Some(0.5);
        check(name, rsandbox::spawn(&spec).unwrap(), &m);
    }
    if std::env::var_os("RSANDBOX_FORK_START").is_some() {
        // Pools need the start without copying, which this run turns off on purpose.
        eprintln!("the pool's case needs the start without copying (RSANDBOX_FORK_START is set)");
        return;
    }
    let Ok(pool) = rsandbox::Pool::new(&sh("true"), 1) else {
        return skip("no pool here");
    };
    let m = marker();
    let job = rsandbox::Process {
        args: sh(&format!("sleep 361{m}")).process.args,
        ..Default::default()
    };
    check(
        "pool",
        pool.spawn_with_timeout(&job, Some(0.5)).unwrap(),
        &m,
    );
}

/// The same for a sandbox the caller kills, and every process is gone when the result is in.
#[test]
fn a_sandbox_killed_by_its_caller_keeps_its_usage() {
    for (name, spec) in end_variants("while :; do :; done") {
        let mut child = rsandbox::spawn(&spec).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        child.kill(libc::SIGKILL).unwrap();
        let r = child.wait().unwrap();
        assert_eq!(r.status, ExitStatus::Signaled(libc::SIGKILL), "{name}");
        assert_eq!(r.verdict, Verdict::Signaled, "{name}");
        assert!(r.usage.cpu_time > 0.1, "{name}: {:?}", r.usage);
        // A second kill of an ended sandbox is nothing.
        child.kill(libc::SIGKILL).unwrap();
    }
}

/// An init that does not end its sandbox when asked (stopped here) is killed once
/// `END_GRACE` has passed: the sandbox ends all the same, only without its usage.
/// (Both for a caller in `wait` and for one that only polls `result_fd` and calls `try_wait`,
/// with no limit that would wake it otherwise.)
#[test]
fn an_init_that_does_not_end_the_sandbox_is_killed_after_the_grace() {
    for polling in [false, true] {
        let m = marker();
        let mut child = rsandbox::spawn(&sh(&format!("sleep 340{m}"))).unwrap();
        // SAFETY: signalling our own child process (SIGSTOP reaches a PID namespace's init from
        // its parent namespace).
        assert_eq!(unsafe { libc::kill(child.pid(), libc::SIGSTOP) }, 0);
        let asked = Instant::now();
        child.kill(libc::SIGKILL).unwrap();
        let r = if polling {
            loop {
                let mut fds = [libc::pollfd {
                    fd: child.result_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: fds is one valid pollfd.
                unsafe { libc::poll(fds.as_mut_ptr(), 1, 10_000) };
                if let Some(r) = child.try_wait().unwrap() {
                    break r;
                }
                assert!(asked.elapsed() < Duration::from_secs(8), "never woken");
            }
        } else {
            child.wait().unwrap()
        };
        let took = asked.elapsed();
        assert_eq!(r.status, ExitStatus::Signaled(libc::SIGKILL), "{polling}");
        assert!(took >= rsandbox::END_GRACE, "{polling}: took {took:?}");
        assert!(
            took < rsandbox::END_GRACE + Duration::from_secs(5),
            "{polling}: took {took:?}"
        );
        assert!(
            gone_within(&m, Duration::from_secs(5)),
            "survivors: {:?}",
            pids_with(&m)
        );
    }
}

/// A result taken after the deadline is what happened: a command that ended in time is not a
/// timeout, nor one its caller killed first; the wall time is its own.
#[test]
fn a_result_taken_after_the_deadline_is_what_happened() {
    let mut spec = sh("true");
    spec.timeout = Some(0.5);
    let mut child = rsandbox::spawn(&spec).unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let r = child.wait().unwrap();
    assert_eq!((r.verdict, r.timed_out), (Verdict::Ok, false), "{r:?}");
    assert!(r.usage.wall_time < 0.5, "{}", r.usage.wall_time);
    let mut spec = sh("sleep 30");
    spec.timeout = Some(0.5);
    let mut child = rsandbox::spawn(&spec).unwrap();
    child.kill(libc::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let r = child.wait().unwrap();
    assert_eq!(
        (r.verdict, r.timed_out),
        (Verdict::Signaled, false),
        "{r:?}"
    );
}

/// SIGSTOP stops every process of the sandbox but its init (which relays it: sent to the init
/// itself it would stop the init alone), and SIGCONT continues them.
#[test]
fn sigstop_and_sigcont_reach_every_process() {
    let state = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(") ").next().and_then(|r| r.chars().next()))
    };
    let all_in = |m: &str, want: bool| {
        let start = Instant::now();
        loop {
            let pids = pids_with(m);
            let stopped = pids.iter().filter(|&&p| state(p) == Some('T')).count();
            if pids.len() >= 2 && (stopped == pids.len()) == want && (stopped == 0) != want {
                return true;
            }
            if start.elapsed() > Duration::from_secs(5) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for (name, spec) in end_variants("") {
        let m = marker();
        let mut spec = spec;
        spec.process.args = sh(&format!("sleep 350{m} & sleep 351{m} & wait"))
            .process
            .args;
        let mut child = rsandbox::spawn(&spec).unwrap();
        assert!(all_in(&m, false), "{name}: not started");
        child.kill(libc::SIGSTOP).unwrap();
        assert!(all_in(&m, true), "{name}: not all stopped");
        assert_ne!(
            state(child.pid() as u32),
            Some('T'),
            "{name}: the init stopped"
        );
        child.kill(libc::SIGCONT).unwrap();
        assert!(all_in(&m, false), "{name}: not all continued");
        child.kill(libc::SIGKILL).unwrap();
        child.wait().unwrap();
    }
}

/// A number that is no signal is refused by name, and the sandbox runs on.
#[test]
fn kill_refuses_what_is_not_a_signal() {
    let mut child = rsandbox::spawn(&sh("sleep 30")).unwrap();
    for bad in [-1, 65, 9999] {
        let e = child.kill(bad).unwrap_err();
        assert_eq!(e.kind(), rsandbox::ErrorKind::InvalidSpec, "{bad}: {e}");
        assert!(e.to_string().contains("signal"), "{e}");
    }
    assert!(child
        .wait_timeout(Duration::from_millis(50))
        .unwrap()
        .is_none());
    child.kill(0).unwrap();
    child.kill(libc::SIGKILL).unwrap();
    assert_eq!(
        child.wait().unwrap().status,
        ExitStatus::Signaled(libc::SIGKILL)
    );
}

#[test]
fn kill_reaches_every_process() {
    let m = marker();
    let mut spec = sh(&format!("sleep 310{m} & sleep 311{m} & wait"));
    spec.process.stdout = Stdio::Null;
    let mut child = rsandbox::spawn(&spec).unwrap();
    // Wait until both sleeps run.
    let start = Instant::now();
    while pids_with(&m).len() < 3 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(pids_with(&m).len() >= 2);
    child.kill(libc::SIGTERM).unwrap();
    let r = child.wait().unwrap();
    assert!(
        gone_within(&m, Duration::from_secs(5)),
        "survivors: {:?}",
        pids_with(&m)
    );
    assert!(!r.status.success());
}

#[test]
fn dropping_the_handle_kills_the_sandbox() {
    let m = marker();
    let child = rsandbox::spawn(&sh(&format!("sleep 320{m} & sleep 321{m}"))).unwrap();
    let start = Instant::now();
    while pids_with(&m).len() < 3 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(child);
    assert!(
        gone_within(&m, Duration::from_secs(5)),
        "survivors: {:?}",
        pids_with(&m)
    );
}

#[test]
fn without_die_with_parent_the_sandbox_outlives_its_handle() {
    // Negative control for the test above.
    let m = marker();
    let mut spec = sh(&format!("sleep 330{m}"));
    spec.die_with_parent = false;
    spec.timeout = None;
    let child = rsandbox::spawn(&spec).unwrap();
    let init = child.pid();
    let cgroup = child.report().cgroup.clone();
    drop(child);
    std::thread::sleep(Duration::from_millis(200));
    let alive = pids_with(&m);
    // Clean up: the sandbox's init is our child; killing it ends the PID namespace.
    // SAFETY: signalling and reaping our own child process.
    unsafe {
        libc::kill(init, libc::SIGKILL);
        libc::waitpid(init, std::ptr::null_mut(), libc::__WALL);
    }
    assert!(!alive.is_empty(), "the sandbox died with its handle");
    assert!(gone_within(&m, Duration::from_secs(5)));
    if let Some(cg) = cgroup {
        // Its cgroup stayed for it, too: ours to remove now.
        assert!(cg.exists());
        std::fs::remove_dir(&cg).unwrap();
    }
}

#[test]
fn wait_timeout_and_try_wait() {
    let mut child = rsandbox::spawn(&sh("sleep 0.3")).unwrap();
    assert!(child.try_wait().unwrap().is_none());
    assert!(child
        .wait_timeout(Duration::from_millis(20))
        .unwrap()
        .is_none());
    let r = child
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("finished");
    assert!(r.status.success());
    // Waiting again returns the same result.
    assert_eq!(child.wait().unwrap().status, r.status);
    assert!(child.pid() > 0);
    assert!(child.pidfd() >= 0);
}

#[test]
fn no_descriptor_leaks_into_the_sandbox() {
    // An inheritable descriptor in the caller (no O_CLOEXEC) must not reach the command.
    let file = std::fs::File::open("/etc/hostname").unwrap();
    // SAFETY: dup of a valid fd; the copy has no close-on-exec flag and is closed below.
    let leaked = unsafe { libc::dup(file.as_raw_fd()) };
    assert!(leaked > 2);
    let (_, stdout, _) = run_sh("ls /proc/$$/fd");
    // SAFETY: closing the fd dup'ed above.
    unsafe { libc::close(leaked) };
    let fds: Vec<&str> = stdout.lines().collect();
    assert_eq!(fds, ["0", "1", "2"]);
}

#[test]
fn environment_is_cleared() {
    std::env::set_var("RSBX_SECRET_TOKEN", "leak");
    let mut spec = sh("env | sort");
    spec.process
        .env
        .insert("GREETING".into(), "hello world".into());
    let r = run(&spec);
    let env = out(&r);
    assert!(!env.contains("RSBX_SECRET_TOKEN"), "{env}");
    assert!(env.contains("GREETING=hello world\n"));
    assert!(env.contains(&format!("PATH={}\n", rsandbox::DEFAULT_PATH)));
    assert!(env.contains("HOME=/work\n"));
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    for name in &names {
        assert!(
            ["GREETING", "PATH", "HOME", "TERM", "PWD", "SHLVL", "_", "OLDPWD"].contains(name),
            "unexpected variable {name}: {env}"
        );
    }
}

#[test]
fn cwd_option() {
    let mut spec = sh("pwd");
    spec.process.cwd = Some("/tmp".into());
    assert_eq!(out(&run(&spec)), "/tmp\n");
}

#[test]
fn stdin_input_and_both_streams_captured() {
    let spec = sh("cat; echo err >&2");
    let r = rsandbox::run_with_input(&spec, Some(b"from stdin\n")).unwrap();
    assert_eq!(out(&r), "from stdin\n");
    assert_eq!(err(&r), "err\n");
}

#[test]
fn flooding_both_streams_does_not_deadlock() {
    let mut spec = sh("head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2");
    spec.timeout = Some(60.0);
    let r = run(&spec);
    assert!(!r.timed_out);
    assert_eq!(r.stdout.as_ref().unwrap().len(), 3_000_000);
    assert_eq!(r.stderr.as_ref().unwrap().len(), 2_000_000);
    assert!(!r.stdout_truncated);
}

#[test]
fn output_limit_truncates_and_flags() {
    let mut spec = sh("head -c 100000 /dev/zero; echo done >&2");
    spec.output_limit = Some(1000);
    let r = run(&spec);
    assert_eq!(r.stdout.as_ref().unwrap().len(), 1000);
    assert!(r.stdout_truncated);
    assert!(!r.stderr_truncated);
    assert_eq!(r.verdict, Verdict::OutputLimit);
    assert!(r.status.success(), "the command ran to the end");
}

#[test]
fn stdio_to_files_and_null() {
    let dir = TempDir::new("stdio");
    let out_path = dir.path().join("out.txt");
    let mut spec = sh("echo to-file; echo to-null >&2");
    spec.process.stdout = Stdio::File {
        path: out_path.clone(),
        append: false,
    };
    spec.process.stderr = Stdio::Null;
    let r = run(&spec);
    assert!(r.status.success());
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), "to-file\n");
    assert_eq!(r.stdout, None);
}

#[test]
fn usage_is_measured() {
    let r = run(&sh("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"));
    assert!(r.usage.wall_time > 0.0);
    assert!(
        r.usage.user_time + r.usage.system_time > 0.0,
        "{:?}",
        r.usage
    );
    assert!(r.usage.max_rss > 100 * 1024, "{:?}", r.usage);
}

#[test]
fn no_new_privs_and_no_capabilities_for_non_root_ids() {
    let mut spec = Spec::new([
        "/bin/sh",
        "-c",
        "grep -E '^(NoNewPrivs|CapEff)' /proc/self/status",
    ]);
    spec.user.uid = Some(1000);
    spec.user.gid = Some(1000);
    let text = out(&run(&spec));
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
}

#[test]
fn the_command_runs_in_its_own_session() {
    let (_, stdout, _) = run_sh("ps -o sid= -p $$; echo $$");
    let v: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(v[0], v[1], "the command leads its own session");
}

#[test]
fn ignored_signals_of_the_caller_are_reset() {
    // SAFETY: ignoring SIGUSR1 in this test process; restored below.
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
    let r = run(&sh("kill -USR1 $$; sleep 5"));
    // SAFETY: restoring the default disposition.
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_DFL) };
    assert_eq!(r.status, ExitStatus::Signaled(libc::SIGUSR1));
}

/// `release_for_exit` leaves the finished sandbox's init to whoever inherits it, instead of
/// starting the background reaper: the init is still this process's child to reap, and it has
/// exited cleanly (nothing of the sandbox was left running).
#[test]
fn release_for_exit_leaves_the_init_to_be_reaped() {
    let mut child = rsandbox::spawn(&sh("exit 3")).unwrap();
    let init = child.pid();
    let r = child.wait().unwrap();
    assert_eq!(r.status, ExitStatus::Exited(3));
    child.release_for_exit();
    let mut status = 0;
    // SAFETY: waitpid writes only the status integer.
    let reaped = unsafe { libc::waitpid(init, &mut status, 0) };
    if std::env::var_os("RSANDBOX_FORK_START").is_some() || r.report.cgroup.is_some() {
        // The forking start (the setup process stays on as the init), or a cgroup to remove:
        // the result waited for the init's exit, so there is nothing left to reap.
        assert_eq!(reaped, -1, "the init was reaped before the result");
        return;
    }
    assert_eq!(reaped, init, "the init is left to this process to reap");
    assert!(libc::WIFEXITED(status), "the init exited: {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "the init exited cleanly");
}

/// Waiting again, or polling after the result, gives the same result, report and output
/// included.
#[test]
fn the_result_is_the_same_when_asked_again() {
    let mut spec = sh("echo out; echo err >&2; exit 3");
    spec.process.stdout = Stdio::Pipe;
    spec.process.stderr = Stdio::Pipe;
    let mut child = rsandbox::spawn(&spec).expect("spawn");
    let first = child.communicate(None, None).expect("communicate");
    assert_eq!(first.status, ExitStatus::Exited(3));
    assert_eq!(first.stdout.as_deref(), Some(&b"out\n"[..]));
    assert!(
        !first.report.features.is_empty() && !first.report.mounts.is_empty(),
        "{:?}",
        first.report
    );
    assert_eq!(&first.report, child.report());
    let again = child.wait().expect("wait again");
    assert_eq!(again, first);
    let polled = child.try_wait().expect("try_wait").expect("a result");
    assert_eq!(polled, first);
}

/// Set: `memory_peak_of_a_large_caller` runs (in a process of its own: it leaves the process's
/// peak memory at 400 MiB for good).
const LARGE_CALLER_VAR: &str = "RSANDBOX_TEST_LARGE_CALLER";

/// Without a memory cgroup the peak comes from ru_maxrss, where the kernel also counts the peak
/// of the process the command was started from: the result says when that bounds the figure.
#[test]
fn memory_peak_says_when_the_callers_memory_bounds_it() {
    let mut spec = sh("x=$(head -c 150000000 /dev/zero | tr '\\0' a); echo ${#x}");
    spec.cgroup.want = rsandbox::Want::Off;
    // A command that needs more than this process ever had: its own peak, as measured.
    let r = run(&spec);
    assert_eq!(out(&r).trim(), "150000000", "{}", err(&r));
    assert!(r.usage.memory_peak >= 150_000_000, "{:?}", r.usage);
    assert!(
        r.usage.memory_peak_source.starts_with("ru_maxrss (largest"),
        "{:?}",
        r.usage
    );
    // A caller that has had 400 MiB, in a process of its own.
    let exe = std::env::current_exe().expect("test executable");
    let output = std::process::Command::new(exe)
        .args(["--exact", "memory_peak_of_a_large_caller", "--nocapture"])
        .env(LARGE_CALLER_VAR, "1")
        .output()
        .expect("run the large caller");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("large caller: checked"),
        "the check did not run: {text}"
    );
}

/// The large caller of `memory_peak_says_when_the_callers_memory_bounds_it`.
#[test]
fn memory_peak_of_a_large_caller() {
    if std::env::var_os(LARGE_CALLER_VAR).is_none() {
        return;
    }
    let mut big = vec![0u8; 400 << 20];
    for page in big.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&big);
    let mut spec = sh("true");
    spec.cgroup.want = rsandbox::Want::Off;
    // Still held: a start that copies this process (RSANDBOX_FORK_START) counts what it holds,
    // one that shares its memory counts its peak.
    let r = run(&spec);
    drop(big);
    assert!(r.status.success());
    // A small command's figure is bounded by the caller's 400 MiB, and the result says so.
    let source = &r.usage.memory_peak_source;
    assert!(source.contains("upper bound"), "{:?}", r.usage);
    assert!(r.usage.memory_peak >= 400 << 20, "{:?}", r.usage);
    assert!(!source.contains("  "), "{source:?}");
    eprintln!("large caller: checked");
}
