//! The `rsandbox` command line, run as a real process: exit statuses, `--json-result`, timeouts,
//! die-with-parent, signal forwarding, every `run` option, `--report`, `doctor` and stdio.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Exit status

#[test]
fn exit_status_is_the_commands_own_code() {
    for code in [0, 1, 7, 255] {
        let r = run_sh(&[], &format!("exit {code}"));
        assert_eq!(r.code, code, "{r:?}");
    }
    assert_eq!(rsandbox(&["run", "--", "true"]).code, 0);
    assert_eq!(rsandbox(&["run", "--", "false"]).code, 1);
}

#[test]
fn killed_by_a_signal_gives_128_plus_the_signal() {
    let r = run_sh(&[], "kill -TERM $$; sleep 5");
    assert_eq!(r.code, 128 + libc::SIGTERM, "{r:?}");
    let r = run_sh(&[], "kill -KILL $$; sleep 5");
    assert_eq!(r.code, 128 + libc::SIGKILL, "{r:?}");
}

#[test]
fn missing_executable_gives_127() {
    let name = format!("no-such-command-{}", marker());
    let r = rsandbox(&["run", "--", &name, "arg"]);
    assert_eq!(r.code, 127, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("executable not found in sandbox: {name}")),
        "{r:?}"
    );
    // An absolute path that exists on the host but not in the sandbox (the host view hides /root
    // and /home) is missing too.
    let r = rsandbox(&["run", "--", "/home/no-such-dir/tool"]);
    assert_eq!(r.code, 127, "{r:?}");
}

#[test]
fn non_executable_file_gives_126() {
    let dir = TempDir::new("noexec");
    let file = dir.path().join("script");
    std::fs::write(&file, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let bind = format!("{}:/tmp/script", file.display());
    let r = rsandbox(&["run", "--ro-bind", &bind, "--", "/tmp/script"]);
    assert_eq!(r.code, 126, "{r:?}");
    assert!(r.stderr.contains("/tmp/script"), "{r:?}");
    assert!(!r.stdout.contains("ran"), "{r:?}");

    // Negative control: the same file with an execute bit runs.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = rsandbox(&["run", "--ro-bind", &bind, "--", "/tmp/script"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "ran\n"), "{r:?}");
}

#[test]
fn setup_failure_gives_125_and_names_the_path() {
    let missing = format!("/nonexistent-rootfs-{}", marker());
    let r = rsandbox(&["run", "--rootfs", &missing, "--", "true"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains(&missing), "{r:?}");
    assert!(r.stderr.starts_with("rsandbox: "), "{r:?}");

    let missing_src = format!("/nonexistent-bind-{}", marker());
    let r = rsandbox(&[
        "run",
        "--ro-bind",
        &format!("{missing_src}:/x"),
        "--",
        "true",
    ]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains(&missing_src), "{r:?}");
}

#[test]
fn no_command_gives_125() {
    for args in [&["run"][..], &["run", "--"][..]] {
        let r = rsandbox(args);
        assert_eq!(r.code, 125, "{args:?}: {r:?}");
        assert!(r.stderr.contains("no command given"), "{r:?}");
    }
}

#[test]
fn malformed_option_values_give_125() {
    let r = rsandbox(&["run", "--env", "NO_EQUALS_SIGN", "--", "true"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("NO_EQUALS_SIGN"), "{r:?}");
    let r = rsandbox(&["run", "--bind", ":/x", "--", "true"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("SRC:DST"), "{r:?}");
}

#[test]
fn command_line_usage_errors_give_125() {
    for args in [
        &["run", "--no-such-option", "--", "true"][..],
        &["run", "--root", "--uid", "5", "--", "true"][..],
        &["run", "--rootfs-writable", "--", "true"][..],
        &["run", "--net", "bogus", "--", "true"][..],
        &["no-such-subcommand"][..],
    ] {
        let r = rsandbox(args);
        // Never a code the command could have given (2 is common): this program's own.
        assert_eq!(r.code, 125, "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("error: "), "{args:?}: {r:?}");
    }
    // Control: asking for help or the version is no error.
    for args in [&["--help"][..], &["run", "--help"][..], &["--version"][..]] {
        let r = rsandbox(args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(!r.stdout.is_empty(), "{args:?}: {r:?}");
    }
}

/// Options that contradict each other, or that the sandbox could not honour as asked, are
/// refused before anything runs, never dropped: each with the option and the reason.
#[test]
fn contradictory_or_unusable_options_are_refused() {
    for (args, names) in [
        (
            &["--share", "uts", "--hostname", "foo"][..],
            "UTS namespace",
        ),
        (&["--share", "net", "--net", "none"][..], "--share net"),
        (&["--bind", "/tmp:/"][..], "cannot replace the root"),
        (&["--tmpfs", "/scratch:0"][..], "at least 1 byte"),
        (&["--landlock-rw", "relative"][..], "not an absolute path"),
        (&["--timeout", "1e20"][..], "timeout"),
        (&["--cpu-time", "1e20"][..], "cpu_time"),
    ] {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "true"]);
        let r = rsandbox(&all);
        assert_eq!(r.code, 125, "{args:?}: {r:?}");
        assert!(r.stderr.contains(names), "{args:?}: {r:?}");
    }
    // Controls: each option alone is fine.
    for args in [
        &["--hostname", "foo"][..],
        &["--share", "net"][..],
        &["--net", "none"][..],
        &["--tmpfs", "/scratch:1M"][..],
        &["--timeout", "1e9"][..],
    ] {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "true"]);
        assert_eq!(rsandbox(&all).code, 0, "{args:?}");
    }
}

/// A Landlock rule for a path the sandbox does not have grants nothing, and the report says so.
#[test]
fn a_landlock_rule_for_a_missing_path_is_reported_left_out() {
    let r = rsandbox(&[
        "run",
        "--report",
        "--landlock-rw",
        "/no-such-dir-rsbx",
        "--landlock-ro",
        "/etc",
        "--",
        "true",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let line = line_starting(&r.stderr, "landlock");
    assert!(
        line.contains("rule for /no-such-dir-rsbx left out"),
        "{line}"
    );
    // Control: the rule for a path that is there is not.
    assert!(!line.contains("rule for /etc left out"), "{line}");
}

/// A spec's stream set to "pipe" would leave the command waiting on an end nobody uses; under
/// --output-limit a file stream would escape the limit. Both are refused; stderr into stdout
/// is captured with it.
#[test]
fn spec_streams_the_command_line_cannot_serve_are_refused() {
    let dir = std::env::temp_dir().join(format!("rsbx-cli-streams-{}", marker()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = |name: &str, process: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{{\"process\": {process}}}")).unwrap();
        path.to_string_lossy().into_owned()
    };
    let stdin_pipe = spec("in.json", r#"{"args": ["cat"], "stdin": "pipe"}"#);
    let stdout_pipe = spec("out.json", r#"{"args": ["echo", "x"], "stdout": "pipe"}"#);
    let out_file = dir.join("out.txt");
    let stdout_file = spec(
        "file.json",
        &format!(
            r#"{{"args": ["echo", "x"], "stdout": {{"file": {{"path": "{}"}}}}}}"#,
            out_file.display()
        ),
    );
    let merged = spec(
        "merged.json",
        r#"{"args": ["sh", "-c", "echo out; echo err >&2"], "stderr": "stdout"}"#,
    );
    for (args, field) in [
        (vec!["run", "--spec", &stdin_pipe], "process.stdin"),
        (vec!["run", "--spec", &stdout_pipe], "process.stdout"),
        (
            vec!["run", "--output-limit", "1K", "--spec", &stdout_file],
            "process.stdout",
        ),
    ] {
        let r = rsandbox(&args);
        assert_eq!(r.code, 125, "{args:?}: {r:?}");
        assert!(r.stderr.contains(field), "{args:?}: {r:?}");
    }
    // Controls: a file stream without the limit is written; a pipe under the limit is
    // captured; stderr merged into stdout arrives on stdout.
    assert_eq!(rsandbox(&["run", "--spec", &stdout_file]).code, 0);
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "x\n");
    let r = rsandbox(&["run", "--output-limit", "1K", "--spec", &stdout_pipe]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "x\n"), "{r:?}");
    let r = rsandbox(&["run", "--output-limit", "1K", "--spec", &merged]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "out\nerr\n", "{r:?}");
    assert_eq!(r.stderr, "", "{r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// --json-result

fn read_json(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} not written: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON ({e}): {text}"))
}

/// Runs a script with `--json-result` and returns (exit code, parsed result).
fn json_run(options: &[&str], script: &str) -> (i32, Value) {
    let dir = TempDir::new("json");
    let path = dir.join("result.json");
    let mut opts = vec!["--json-result", path.as_str()];
    opts.extend_from_slice(options);
    let r = run_sh(&opts, script);
    (r.code, read_json(std::path::Path::new(&path)))
}

/// Captured output that is not UTF-8 reaches the JSON result whole, as base64; text stays text.
#[test]
fn json_result_keeps_output_that_is_not_text() {
    let (code, j) = json_run(
        &["--output-limit", "100"],
        r"printf 'a\377\376b'; printf 'ok' >&2",
    );
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["stdout"]["base64"], "Yf/+Yg==", "{j}");
    // Control: UTF-8 output is a plain string.
    assert_eq!(j["stderr"], "ok", "{j}");
    // Sizes take K, M, G and T, as in Python.
    let (code, j) = json_run(&["--output-limit", "1T"], "printf ok");
    assert_eq!((code, &j["stdout"]), (0, &serde_json::json!("ok")), "{j}");
}

/// --output-limit passes each stream on as it comes, cut at the limit (the command still runs to
/// its end: it is never blocked on a full pipe), says so on stderr, and records both the output
/// and the cut in the JSON result.
#[test]
fn output_limit_passes_output_on_as_it_comes_and_cuts_it() {
    use std::io::Read;
    let dir = TempDir::new("outlim");
    let path = dir.join("r.json");
    let mut child = cli([
        "run",
        "--output-limit",
        "10",
        "--json-result",
        &path,
        "--",
        "sh",
        "-c",
        "echo first; sleep 1; yes | head -c 100000; echo err >&2; echo done > /dev/null",
    ])
    .spawn()
    .unwrap();
    // The first line arrives while the command still sleeps.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    let start = Instant::now();
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"first\n");
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(format!("first\n{rest}"), "first\ny\ny\n", "cut at 10 bytes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("err\n"), "{stderr}");
    assert!(
        stderr.contains("stdout cut at --output-limit (10 bytes)"),
        "{stderr}"
    );
    assert!(!stderr.contains("stderr cut"), "{stderr}");
    let j = read_json(std::path::Path::new(&path));
    assert_eq!(j["verdict"], "output-limit", "{j}");
    assert_eq!(j["stdout"], "first\ny\ny\n", "{j}");
    assert_eq!(j["stdout_truncated"], true, "{j}");
    assert_eq!(j["stderr_truncated"], false, "{j}");
}

#[test]
fn json_result_of_finished_runs() {
    let (code, j) = json_run(&[], "exit 0");
    assert_eq!(code, 0);
    assert_eq!(j["verdict"], "ok", "{j}");
    assert_eq!(j["status"]["exited"], 0, "{j}");
    assert_eq!(j["timed_out"], false, "{j}");
    let wall = j["usage"]["wall_time"].as_f64().expect("usage.wall_time");
    assert!(wall > 0.0 && wall < 30.0, "{j}");

    // The report: every feature has a name and a status; the pid namespace is enforced; the host
    // view's /usr is among the mounts.
    let features = j["report"]["features"].as_array().expect("report.features");
    assert!(!features.is_empty());
    for f in features {
        assert!(f["name"].is_string() && f["status"].is_string(), "{f}");
    }
    let pid = features
        .iter()
        .find(|f| f["name"] == "namespace.pid")
        .expect("namespace.pid in report");
    assert_eq!(pid["status"], "enforced");
    let mounts = j["report"]["mounts"].as_array().expect("report.mounts");
    assert!(
        mounts
            .iter()
            .any(|m| m["destination"] == "/usr" && m["status"] == "enforced"),
        "{j}"
    );

    let (code, j) = json_run(&[], "exit 3");
    assert_eq!(code, 3);
    assert_eq!(j["verdict"], "exit-nonzero", "{j}");
    assert_eq!(j["status"]["exited"], 3, "{j}");

    let (code, j) = json_run(&[], "kill -TERM $$; sleep 5");
    assert_eq!(code, 143);
    assert_eq!(j["verdict"], "signaled", "{j}");
    assert_eq!(j["status"]["signaled"], libc::SIGTERM, "{j}");
    assert_eq!(j["timed_out"], false, "{j}");

    // The option changes the report: without --share pid the pid namespace is off.
    let (_, j) = json_run(&["--share", "pid"], "true");
    let pid = j["report"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "namespace.pid")
        .cloned()
        .unwrap();
    assert_eq!(pid["status"], "off", "{j}");
}

#[test]
fn json_result_of_setup_errors() {
    let dir = TempDir::new("json-err");
    let path = dir.join("result.json");
    let missing = format!("/nonexistent-rootfs-{}", marker());
    let r = rsandbox(&[
        "run",
        "--json-result",
        &path,
        "--rootfs",
        &missing,
        "--",
        "true",
    ]);
    assert_eq!(r.code, 125, "{r:?}");
    let j = read_json(std::path::Path::new(&path));
    assert_eq!(j["verdict"], "setup-error", "{j}");
    let e = &j["error"];
    assert!(e.is_object(), "{j}");
    for key in ["kind", "message", "step", "errno"] {
        assert!(e.get(key).is_some(), "error.{key} missing: {j}");
    }
    assert!(e["kind"].is_string(), "{j}");
    assert!(e["message"].as_str().unwrap().contains(&missing), "{j}");
    assert_eq!(e["errno"], "ENOENT", "{j}");
    assert_eq!(e["path"], missing.as_str(), "{j}");

    // An option the parser refuses writes the file too, whichever way the file is named.
    for (args, bad) in [
        (
            vec!["--json-result", path.as_str(), "--net", "bogus"],
            "bogus",
        ),
        (
            vec!["--timeout", "-1", "--json-result", path.as_str()],
            "-1",
        ),
    ] {
        let _ = std::fs::remove_file(&path);
        let mut argv = vec!["run"];
        argv.extend(args);
        argv.extend(["--", "true"]);
        let r = rsandbox(&argv);
        assert_eq!(r.code, 125, "{r:?}");
        let j = read_json(std::path::Path::new(&path));
        assert_eq!(j["verdict"], "setup-error", "{j}");
        assert_eq!(j["error"]["kind"], "invalid-spec", "{j}");
        assert!(j["error"]["message"].as_str().unwrap().contains(bad), "{j}");
    }
    let eq = format!("--json-result={path}");
    let _ = std::fs::remove_file(&path);
    let r = rsandbox(&["run", &eq, "--memory", "1e3", "--", "true"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert_eq!(
        read_json(std::path::Path::new(&path))["verdict"],
        "setup-error"
    );

    // A failure inside the sandbox names its step.
    let name = format!("no-such-command-{}", marker());
    let r = rsandbox(&["run", "--json-result", &path, "--", &name]);
    assert_eq!(r.code, 127, "{r:?}");
    let j = read_json(std::path::Path::new(&path));
    assert_eq!(j["verdict"], "setup-error", "{j}");
    assert_eq!(j["error"]["step"], "exec", "{j}");
    assert!(
        j["error"]["message"].as_str().unwrap().contains(&name),
        "{j}"
    );
}

// ---------------------------------------------------------------------------------------------
// Timeout, die-with-parent, signal forwarding

#[test]
fn timeout_kills_the_whole_sandbox_promptly() {
    let m = marker();
    let dir = TempDir::new("timeout");
    let path = dir.join("result.json");
    let start = Instant::now();
    let r = run_sh(
        &["--timeout", "0.5", "--json-result", &path],
        &format!("sleep 300{m} & (sleep 301{m} &); sleep 302{m}"),
    );
    let took = start.elapsed();
    assert_eq!(r.code, 137, "{r:?}");
    assert!(took >= Duration::from_millis(500), "took {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let j = read_json(std::path::Path::new(&path));
    assert_eq!(j["verdict"], "wall-timeout", "{j}");
    assert_eq!(j["timed_out"], true, "{j}");
    assert_eq!(j["status"]["signaled"], libc::SIGKILL, "{j}");
    assert!(j["usage"]["wall_time"].as_f64().unwrap() >= 0.5, "{j}");
    assert!(
        gone_within(&m, Duration::from_secs(5)),
        "survivors: {:?}",
        pids_with(&m)
    );
}

#[test]
fn a_command_within_its_timeout_is_not_killed() {
    let (code, j) = json_run(&["--timeout", "30"], "sleep 0.1; exit 4");
    assert_eq!(code, 4);
    assert_eq!(j["verdict"], "exit-nonzero", "{j}");
    assert_eq!(j["timed_out"], false, "{j}");
}

#[test]
fn the_sandbox_dies_with_the_cli() {
    let m = marker();
    let mut child = cli([
        "run",
        "--",
        "/bin/sh",
        "-c",
        &format!("sleep 1000{m} & sleep 1001{m}"),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let started = wait_for_sleeps(&m, 2, Duration::from_secs(10));
    child.kill().unwrap(); // SIGKILL: the CLI gets no chance to clean up.
    child.wait().unwrap();
    assert!(started, "the sleeps never started: {:?}", pids_with(&m));
    assert!(
        gone_within(&m, Duration::from_secs(5)),
        "survivors after the CLI was killed: {:?}",
        pids_with(&m)
    );
}

/// Starts `rsandbox run OPTIONS -- ARGS`, waits until `sleeps` sleep processes with `m` run,
/// sends `signal` to the CLI and returns its exit code.
fn signal_cli(options: &[&str], args: &[String], m: &str, sleeps: usize, signal: i32) -> i32 {
    let mut all = vec!["run".to_string()];
    all.extend(options.iter().map(|o| o.to_string()));
    all.push("--".to_string());
    all.extend_from_slice(args);
    let mut child = cli(&all)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if !wait_for_sleeps(m, sleeps, Duration::from_secs(10)) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the sleeps never started: {:?}", pids_with(m));
    }
    send_signal(child.id(), signal);
    wait_within(&mut child, Duration::from_secs(10))
}

#[test]
fn sigterm_to_the_cli_is_forwarded_to_the_command() {
    let m = marker();
    let start = Instant::now();
    let code = signal_cli(
        &[],
        &["sleep".into(), format!("400{m}")],
        &m,
        1,
        libc::SIGTERM,
    );
    assert_eq!(
        code,
        128 + libc::SIGTERM,
        "the command was killed by SIGTERM"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(
        gone_within(&m, Duration::from_secs(5)),
        "survivors: {:?}",
        pids_with(&m)
    );
}

/// With --output-limit the CLI reads the output while it waits: signals are relayed all the same.
#[test]
fn signals_are_relayed_while_output_is_captured() {
    let m = marker();
    let args = ["sleep".to_string(), format!("400{m}")];
    let code = signal_cli(&["--output-limit", "1K"], &args, &m, 1, libc::SIGTERM);
    assert_eq!(code, 128 + libc::SIGTERM);
    assert!(
        gone_within(&m, Duration::from_secs(5)),
        "survivors: {:?}",
        pids_with(&m)
    );
}

#[test]
fn sigint_sighup_and_sigquit_to_the_cli_are_forwarded_too() {
    for (i, signal) in [libc::SIGINT, libc::SIGHUP, libc::SIGQUIT]
        .into_iter()
        .enumerate()
    {
        let m = marker();
        let code = signal_cli(&[], &["sleep".into(), format!("41{i}{m}")], &m, 1, signal);
        assert_eq!(
            code,
            128 + signal,
            "the command was killed by signal {signal}"
        );
        assert!(
            gone_within(&m, Duration::from_secs(5)),
            "survivors: {:?}",
            pids_with(&m)
        );
    }
}

/// Ctrl-C that ends the command ends the CLI by SIGINT too (a calling shell then stops its loop,
/// as it would for any interrupted program); another relayed signal gives its exit status.
#[test]
fn ctrl_c_ends_the_cli_by_sigint() {
    use std::os::unix::process::ExitStatusExt;
    for (signal, by_signal) in [(libc::SIGINT, true), (libc::SIGTERM, false)] {
        let m = marker();
        let mut child = cli(["run", "--", "sleep", &format!("43{signal}{m}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_for_sleeps(&m, 1, Duration::from_secs(10)));
        send_signal(child.id(), signal);
        let status = child.wait().unwrap();
        if by_signal {
            assert_eq!(status.signal(), Some(signal), "{status:?}");
        } else {
            assert_eq!(status.code(), Some(128 + signal), "{status:?}");
        }
        assert!(gone_within(&m, Duration::from_secs(5)));
    }
}

/// A signal the CLI was started ignoring (`nohup` and SIGHUP) is not relayed: the command runs
/// on as it would under the same caller. Control: not ignored, it is relayed (the test above).
#[test]
fn signals_the_cli_ignores_are_not_relayed() {
    use std::os::unix::process::CommandExt;
    let m = marker();
    let mut cmd = cli([
        "run",
        "--",
        "sh",
        "-c",
        &format!("sleep 400{m} & s=$!; sleep 0.8; kill $s; echo survived"),
    ]);
    // SAFETY: signal() is async-signal-safe and touches nothing else of this process's state.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    assert!(wait_for_sleeps(&m, 1, Duration::from_secs(10)));
    send_signal(child.id(), libc::SIGHUP);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "survived\n");
}

/// Ctrl-Z (SIGTSTP) stops every process of the sandbox, then the CLI; SIGCONT continues them.
#[test]
fn ctrl_z_stops_the_sandbox_and_continue_resumes_it() {
    let dir = TempDir::new("tstp");
    let ticks = dir.path().join("ticks");
    let script = format!(
        "while :; do echo tick >> {}; sleep 0.05; done",
        ticks.display()
    );
    let bind = format!("{}:{}", dir.path().display(), dir.path().display());
    // In a process group of its own whose parent (this test) is outside it, as a shell's job:
    // the kernel discards a stop signal's default action in an orphaned group.
    use std::os::unix::process::CommandExt;
    let mut child = cli(["run", "--bind", &bind, "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let lines = || {
        std::fs::read_to_string(&ticks)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let state = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(") ").next().and_then(|r| r.chars().next()))
    };
    let until = |what: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !what() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    until(&|| lines() >= 3);
    send_signal(child.id(), libc::SIGTSTP);
    until(&|| state(child.id()) == Some('T'));
    std::thread::sleep(Duration::from_millis(200));
    let stopped_at = lines();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        lines(),
        stopped_at,
        "the sandbox ran on while the CLI was stopped"
    );
    send_signal(child.id(), libc::SIGCONT);
    until(&|| lines() > stopped_at + 2);
    send_signal(child.id(), libc::SIGTERM);
    assert_eq!(
        wait_within(&mut child, Duration::from_secs(10)),
        128 + libc::SIGTERM
    );
}

/// --output-limit with a reader of the CLI's output that does not read: what is kept waits, and
/// Ctrl-C still reaches the sandbox and ends the CLI at once (it does not wait to write it).
#[test]
fn a_stalled_reader_of_limited_output_does_not_hold_off_ctrl_c() {
    use std::os::unix::process::ExitStatusExt;
    let m = marker();
    let script = format!("head -c 1000000 /dev/zero; sleep 440{m}");
    let mut child = cli(["run", "--output-limit", "2M", "--", "sh", "-c", &script])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // stdout is a pipe nobody reads (64 KiB of it fill it).
    assert!(wait_for_sleeps(&m, 1, Duration::from_secs(10)));
    send_signal(child.id(), libc::SIGINT);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the CLI is still writing"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert!(gone_within(&m, Duration::from_secs(5)));
}

#[test]
fn a_forwarded_signal_leaves_no_background_process() {
    let m = marker();
    let script = format!("sleep 420{m} & sleep 421{m}; :");
    let code = signal_cli(
        &[],
        &["/bin/sh".into(), "-c".into(), script],
        &m,
        2,
        libc::SIGTERM,
    );
    assert_eq!(code, 128 + libc::SIGTERM);
    assert!(
        gone_within(&m, Duration::from_secs(5)),
        "survivors: {:?}",
        pids_with(&m)
    );
}

// ---------------------------------------------------------------------------------------------
// Options

#[test]
fn hostname_option() {
    let r = rsandbox(&["run", "--hostname", "grader-7", "--", "hostname"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "grader-7\n"), "{r:?}");
    let r = rsandbox(&["run", "--", "hostname"]);
    assert_eq!(r.stdout, "rsandbox\n", "{r:?}");
}

#[test]
fn uid_and_gid_options() {
    let r = run_sh(
        &["--uid", "1234", "--gid", "567"],
        "id -u; id -g; cat /proc/self/uid_map",
    );
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{r:?}");
    assert_eq!(lines[..2], ["1234", "567"], "{r:?}");
    let map: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(map, ["1234", &my_uid().to_string(), "1"], "{r:?}");

    // Without the options the caller's own ids are used.
    let r = run_sh(&[], "id -u; id -g");
    assert_eq!(r.stdout, format!("{}\n{}\n", my_uid(), my_gid()), "{r:?}");
}

#[test]
fn root_option() {
    let r = run_sh(&["--root"], "id -u; id -g; cat /proc/self/uid_map");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{r:?}");
    assert_eq!(lines[..2], ["0", "0"], "{r:?}");
    let map: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(map, ["0", &my_uid().to_string(), "1"], "{r:?}");
}

#[test]
fn env_option_sets_variables_and_the_clis_environment_stays_out() {
    let mut cmd = cli([
        "run",
        "--env",
        "GREETING=hello world",
        "--env",
        "EMPTY=",
        "--env",
        "EQ=a=b",
        "--",
        "env",
    ]);
    cmd.env("RSBX_CLI_SECRET", "leak").env("TERM", "rsbx-term");
    let r = run_cmd(cmd, None);
    assert_eq!(r.code, 0, "{r:?}");
    let vars: Vec<&str> = r.stdout.lines().collect();
    assert!(vars.contains(&"GREETING=hello world"), "{r:?}");
    assert!(vars.contains(&"EMPTY="), "{r:?}");
    assert!(vars.contains(&"EQ=a=b"), "{r:?}");
    assert!(vars.contains(&"TERM=rsbx-term"), "TERM is passed on: {r:?}");
    assert!(!r.stdout.contains("RSBX_CLI_SECRET"), "{r:?}");
    assert!(!r.stdout.contains("leak"), "{r:?}");
}

#[test]
fn cwd_option() {
    let r = rsandbox(&["run", "--cwd", "/tmp", "--", "pwd"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "/tmp\n"), "{r:?}");
    let r = rsandbox(&["run", "--", "pwd"]);
    assert_eq!(r.stdout, "/work\n", "{r:?}");
}

/// A relative bind source is the CLI's current directory's, as for any command; alone, it is
/// bound at the same (absolute) path in the sandbox.
#[test]
fn relative_bind_sources_are_resolved_from_the_current_directory() {
    let dir = TempDir::new("relbind");
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/f"), "here\n").unwrap();
    let mut cmd = cli(["run", "--ro-bind", "data:/in", "--", "cat", "/in/f"]);
    cmd.current_dir(dir.path());
    let r = run_cmd(cmd, None);
    assert_eq!((r.code, r.stdout.as_str()), (0, "here\n"), "{r:?}");
    let same = dir.path().join("data/f");
    let mut cmd = cli([
        "run",
        "--ro-bind",
        "data",
        "--",
        "cat",
        &same.display().to_string(),
    ]);
    cmd.current_dir(dir.path());
    let r = run_cmd(cmd, None);
    assert_eq!((r.code, r.stdout.as_str()), (0, "here\n"), "{r:?}");
}

#[test]
fn read_write_bind_reaches_the_host_and_read_only_bind_does_not() {
    let dir = TempDir::new("bind");
    std::fs::write(dir.path().join("hello"), "hi\n").unwrap();
    let rw = format!("{}:/data", dir.arg());
    let r = run_sh(
        &["--bind", &rw],
        "cat /data/hello && echo written > /data/new",
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "hi\n"), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("new")).unwrap(),
        "written\n"
    );
    std::fs::remove_file(dir.path().join("new")).unwrap();

    let r = run_sh(
        &["--ro-bind", &rw],
        "cat /data/hello && echo written > /data/new",
    );
    assert_eq!(r.stdout, "hi\n", "{r:?}");
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("Read-only file system"), "{r:?}");
    assert!(!dir.path().join("new").exists());

    // SRC alone binds at the same path.
    let r = run_sh(&["--bind", &dir.arg()], &format!("cat {}/hello", dir.arg()));
    assert_eq!((r.code, r.stdout.as_str()), (0, "hi\n"), "{r:?}");
}

#[test]
fn tmpfs_option() {
    // /usr/local is part of the read-only host view; a tmpfs there is writable, empty and private.
    let r = run_sh(
        &["--tmpfs", "/usr/local"],
        "ls /usr/local | wc -l; echo x > /usr/local/f && cat /usr/local/f; \
         grep ' /usr/local ' /proc/mounts",
    );
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[..2], ["0", "x"], "{r:?}");
    assert!(lines[2].contains("tmpfs"), "{r:?}");
    assert!(!std::path::Path::new("/usr/local/f").exists());

    // Negative control: without it the same write fails.
    let r = run_sh(&[], "echo x > /usr/local/f");
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("Read-only file system"), "{r:?}");
}

#[test]
fn net_host_shows_host_interfaces_and_the_default_only_loopback() {
    let host = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    let r = rsandbox(&["run", "--net", "host", "--", "cat", "/proc/net/dev"]);
    assert_eq!(interfaces(&r.stdout), host, "{r:?}");
    let r = rsandbox(&["run", "--share", "net", "--", "cat", "/proc/net/dev"]);
    assert_eq!(interfaces(&r.stdout), host, "{r:?}");
    for opts in [&[][..], &["--net", "none"][..]] {
        let mut args = vec!["run"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--", "cat", "/proc/net/dev"]);
        let r = rsandbox(&args);
        assert_eq!(interfaces(&r.stdout), ["lo"], "{opts:?}: {r:?}");
    }
}

#[test]
fn share_pid_shows_host_processes() {
    let me = std::process::id();
    let script = format!("test -e /proc/{me} && echo visible; echo $$");
    let r = run_sh(&["--share", "pid"], &script);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"visible"), "{r:?}");
    // Negative control: in its own pid namespace the test process is invisible and sh is pid 2.
    let r = run_sh(&[], &script);
    assert_eq!(r.stdout, "2\n", "{r:?}");
}

#[test]
fn rootfs_option_with_a_busybox_tree() {
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let root = rootfs.arg();
    let r = run_sh(
        &["--rootfs", &root],
        "cat /etc/marker; ls /; touch /made-here",
    );
    assert_eq!(r.code, 1, "the read-only root rejects the write: {r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "busybox-rootfs", "{r:?}");
    assert!(lines.contains(&"bin"), "{r:?}");
    assert!(
        !lines.contains(&"usr"),
        "the host's /usr is not there: {r:?}"
    );
    assert!(r.stderr.contains("Read-only file system"), "{r:?}");
    assert!(!rootfs.path().join("made-here").exists());

    let r = run_sh(
        &["--rootfs", &root, "--rootfs-writable"],
        "touch /made-here",
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(rootfs.path().join("made-here").exists());
}

#[test]
fn print_spec_output_is_accepted_by_spec() {
    let r = rsandbox(&[
        "run",
        "--print-spec",
        "--hostname",
        "spec-host",
        "--env",
        "A=one",
        "--cwd",
        "/tmp",
        "--",
        "echo",
        "from-spec",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    // Only the spec is printed: nothing ran.
    let spec: Value = serde_json::from_str(&r.stdout).expect("stdout is JSON");
    assert_eq!(spec["hostname"], "spec-host");
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!(["echo", "from-spec"])
    );
    assert_eq!(spec["process"]["env"]["A"], "one");
    assert_eq!(spec["process"]["cwd"], "/tmp");

    let dir = TempDir::new("spec");
    let file = dir.join("spec.json");
    std::fs::write(&file, &r.stdout).unwrap();
    // The spec's command.
    let r = rsandbox(&["run", "--spec", &file]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "from-spec\n"), "{r:?}");
    // Another command, with the spec's settings.
    let r = rsandbox(&[
        "run",
        "--spec",
        &file,
        "--",
        "/bin/sh",
        "-c",
        "hostname; echo $A; pwd",
    ]);
    assert_eq!(r.stdout, "spec-host\none\n/tmp\n", "{r:?}");
    // Options override the spec's fields.
    let r = rsandbox(&[
        "run",
        "--spec",
        &file,
        "--hostname",
        "other",
        "--",
        "hostname",
    ]);
    assert_eq!(r.stdout, "other\n", "{r:?}");
    // Printing again reproduces the same spec.
    let again = rsandbox(&["run", "--spec", &file, "--print-spec"]);
    let again: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(again, spec);

    // A spec with an unknown field is refused.
    std::fs::write(&file, r#"{"no_such_field": 1}"#).unwrap();
    let r = rsandbox(&["run", "--spec", &file, "--", "true"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("no_such_field"), "{r:?}");
}

#[test]
fn map_range_option() {
    if let Some(why) = subordinate_ids_missing() {
        return skip(&why);
    }
    let r = run_sh(&["--map-range"], "id -u; wc -l < /proc/self/uid_map");
    assert_eq!((r.code, r.stdout.as_str()), (0, "0\n2\n"), "{r:?}");
    // Negative control: a single mapping has one line.
    let r = run_sh(&[], "wc -l < /proc/self/uid_map");
    assert_eq!(r.stdout, "1\n", "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// --report, doctor, stdio

#[test]
fn report_option_prints_the_enforcement_report_on_stderr() {
    let r = rsandbox(&["run", "--report", "--", "echo", "out"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "out\n"), "{r:?}");
    let pid_line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("namespace.pid"))
        .unwrap_or_else(|| panic!("no namespace.pid line: {}", r.stderr));
    assert!(pid_line.contains("enforced"), "{pid_line}");
    assert!(r.stderr.contains("mount /usr"), "{}", r.stderr);
    assert!(r.stderr.contains("verdict=ok"), "{}", r.stderr);
    // One sandbox per process: its tree is built in full, no template is made for it.
    assert!(!r.stderr.contains("mount-template"), "{}", r.stderr);
    let mnt_line = r.stderr.lines().find(|l| l.starts_with("namespace.mnt"));
    assert!(
        mnt_line.is_some_and(|l| l.contains("pivot_root")),
        "{}",
        r.stderr
    );

    // Without the option the CLI adds nothing to stderr.
    let r = rsandbox(&["run", "--", "echo", "out"]);
    assert_eq!(r.stderr, "", "{r:?}");
}

#[test]
fn doctor_prints_json_checks_and_text() {
    let r = rsandbox(&["doctor", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j: Value = serde_json::from_str(&r.stdout).expect("doctor --json prints JSON");
    assert!(j["checks"].is_array(), "{j}");
    let r = rsandbox(&["doctor"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("ready: a default sandbox can run here"),
        "{r:?}"
    );
    // Inside a sandbox (no nested user namespaces, no mount API) a default sandbox cannot run:
    // doctor says so and exits 1.
    let bin = bin().display().to_string();
    let r = rsandbox(&[
        "run",
        "--ro-bind",
        &format!("{bin}:/rsandbox"),
        "--",
        "/rsandbox",
        "doctor",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("NOT READY: a default sandbox needs"),
        "{r:?}"
    );
}

#[test]
fn stdin_reaches_the_command_and_stdout_and_stderr_stay_separate() {
    let r = run_cmd(cli(["run", "--", "cat"]), Some(b"hello\n"));
    assert_eq!((r.code, r.stdout.as_str()), (0, "hello\n"), "{r:?}");

    let r = run_cmd(
        cli([
            "run",
            "--",
            "/bin/sh",
            "-c",
            "read line; echo \"out:$line\"; echo \"err:$line\" >&2",
        ]),
        Some(b"piped\n"),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "out:piped\n");
    assert_eq!(r.stderr, "err:piped\n");
}

#[test]
fn a_reached_process_limit_is_explained_with_the_remedy() {
    if my_uid() == 0 {
        // The kernel does not hold root (CAP_SYS_RESOURCE) to RLIMIT_NPROC.
        eprintln!("not run as root: RLIMIT_NPROC does not apply to root");
        return;
    }
    // RLIMIT_NPROC of 1: this user already has more processes (this test), so no clone passes.
    let mut cmd = cli(["run", "--", "true"]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let one = libc::rlimit {
                rlim_cur: 1,
                rlim_max: 1,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &one) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let r = run_cmd(cmd, None);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("EAGAIN"), "{r:?}");
    assert!(
        r.stderr.contains("RLIMIT_NPROC (1 here)") && r.stderr.contains("ulimit -u"),
        "{r:?}"
    );
    // Control: the same start without the limit works.
    assert_eq!(rsandbox(&["run", "--", "true"]).code, 0);
}

#[test]
fn a_reached_descriptor_limit_is_explained_with_the_remedy() {
    // Limits low enough to run out at different points of a start: its pipes, the clone, the
    // mount tree.
    for limit in [8, 12, 16] {
        let mut cmd = cli(["run", "--", "true"]);
        // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let r = run_cmd(cmd, None);
        // A start that fits under 12 or 16 descriptors is no failure; under 8 (the standard
        // streams, the CLI's own and a start's pipes) none does.
        if r.code == 0 && limit > 8 {
            eprintln!("RLIMIT_NOFILE {limit}: the start fit");
            continue;
        }
        assert_eq!(r.code, 125, "{r:?}");
        assert!(
            r.stderr.contains(&format!("RLIMIT_NOFILE ({limit} here)"))
                && r.stderr.contains("ulimit -n"),
            "{limit}: {r:?}"
        );
    }
    // Control: the same start without the limit works.
    assert_eq!(rsandbox(&["run", "--", "true"]).code, 0);
}

#[test]
fn refused_user_namespaces_are_explained_with_the_remedy() {
    // A nested sandbox: root inside the outer one may lower max_user_namespaces for its own
    // namespace, which makes the inner rsandbox meet a host that refuses user namespaces.
    let binary = bin();
    let bind = format!("{}:/run/rsbx", binary.display());
    // The outer sandbox must allow what the inner one needs: nesting, a writable /proc/sys,
    // CAP_SYS_RESOURCE (which guards that sysctl inside a user namespace) and CAP_SETFCAP (the
    // kernel requires it to map the outer root into a new user namespace); and, since a nested
    // sandbox mounts, neither seccomp's default profile nor Landlock (both refuse mount(2)).
    let outer = [
        "--root",
        "--ro-bind",
        &bind,
        "--allow-nested-userns",
        "--no-mask-proc",
        "--cap-keep",
        "CAP_SYS_RESOURCE",
        "--cap-keep",
        "CAP_SETFCAP",
        "--seccomp",
        "none",
        "--landlock",
        "off",
    ];
    let r = run_sh(
        &outer,
        "echo 0 > /proc/sys/user/max_user_namespaces && /run/rsbx run -- true",
    );
    assert_eq!(r.code, 125, "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains("user.max_user_namespaces is 0"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("remedy: sysctl -w user.max_user_namespaces="),
        "{}",
        r.stderr
    );

    // Negative control: with namespaces allowed, the same nested run works.
    let r = run_sh(
        &outer,
        "echo 5 > /proc/sys/user/max_user_namespaces && /run/rsbx run -- echo nested-ok",
    );
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "nested-ok\n");
}

/// Inside a sandbox whose seccomp filter refuses new namespaces (the default), a nested start
/// fails with EPERM at the clone, and the error says that a seccomp filter is in force and what
/// to allow. With nesting allowed but the outer filter still on, it fails at the first mount,
/// with the same explanation. The control: with both allowed, the nested start works (see above).
#[test]
fn a_start_refused_by_a_seccomp_filter_names_the_filter() {
    let binary = bin();
    let bind = format!("{}:/run/rsbx", binary.display());
    for (outer, step) in [
        (vec!["--ro-bind", &bind], "step clone"),
        (
            vec!["--ro-bind", &bind, "--allow-nested-userns"],
            "=> EPERM",
        ),
    ] {
        let r = run_sh(&outer, "/run/rsbx run -- true");
        assert_eq!(r.code, 125, "stderr: {}", r.stderr);
        assert!(
            r.stderr.contains(step) && r.stderr.contains("EPERM"),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr
                .contains("remedy: this process runs under seccomp filters")
                && r.stderr.contains("--allow-nested-userns"),
            "{}",
            r.stderr
        );
    }
    // Outside any filter the same start works, and nothing mentions one.
    let r = rsandbox(&["run", "--", "true"]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
}

/// Without a proc filesystem on /proc (here a tmpfs over it, in a user and mount namespace of the
/// test's own), the error says so, instead of blaming the kernel for the namespaces it cannot see.
#[test]
fn a_missing_proc_is_explained_with_the_remedy() {
    let attempt = |cover: bool| {
        let script = if cover {
            "mount -t tmpfs none /proc && exec \"$0\" run -- true"
        } else {
            "exec \"$0\" run -- true"
        };
        run_unshared(&["-Urm"], script)
    };
    let r = attempt(true);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr.contains("/proc is not a proc filesystem") && r.stderr.contains("mount -t proc"),
        "{r:?}"
    );
    // Control: the same start with /proc in place works.
    let r = attempt(false);
    assert_eq!(r.code, 0, "{r:?}");
    // `doctor` says so first, and sends what reads /proc there, not to the kernel's build.
    let doctor = run_unshared(&["-Urm"], "mount -t tmpfs none /proc && exec \"$0\" doctor");
    let text = &doctor.stdout;
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("proc ") && l.contains("MISSING")),
        "{text}"
    );
    let seccomp = text
        .lines()
        .skip_while(|l| !l.starts_with("seccomp "))
        .nth(1);
    assert!(
        seccomp.is_some_and(|l| l.contains("mount /proc first")),
        "{text}"
    );
    let doctor = run_unshared(&["-Urm"], "exec \"$0\" doctor");
    assert!(
        doctor
            .stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("proc ") && l.contains(" ok ")),
        "{doctor:?}"
    );
}

/// A namespace refused because a per-user limit is reached names the step, ENOSPC and the
/// sysctl to raise. The limit is lowered to 0 inside a user namespace of the test's own (the
/// host's limits are untouched); with it untouched, the same command runs (the negative control).
#[test]
fn a_namespace_limit_is_explained_with_the_sysctl_to_raise() {
    let attempt = |lower: bool| {
        let prefix = if lower {
            "echo 0 > /proc/sys/user/max_net_namespaces && "
        } else {
            ""
        };
        run_unshared(&["-Ur"], &format!("{prefix}exec \"$0\" run -- /bin/true"))
    };
    let control = attempt(false);
    if control.code != 0 {
        return skip(&format!(
            "unshare -Ur cannot host a sandbox here (exit {}): {}",
            control.code,
            control.stderr.trim()
        ));
    }
    let r = attempt(true);
    assert_eq!(r.code, 125, "setup failure: {r:?}");
    assert!(r.stderr.contains("ENOSPC"), "{}", r.stderr);
    assert!(
        r.stderr.contains("step network-namespace") || r.stderr.contains("step clone"),
        "names the step: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("remedy: user.max_net_namespaces is 0"),
        "names the limit: {}",
        r.stderr
    );
}

#[test]
fn a_host_refusing_clone3_still_runs_sandboxes() {
    // ENOSYS: container runtimes' default profiles, systemd's RestrictNamespaces=, gVisor; EPERM:
    // older Docker.
    for (errno, name) in [(libc::ENOSYS, "ENOSYS"), (libc::EPERM, "EPERM")] {
        let refused = |args: &[&str]| {
            let mut cmd = cli(args);
            // SAFETY: the hook only makes two prctl calls (async-signal-safe).
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(move || refuse_clone3(errno as u32));
            }
            run_cmd(cmd, None)
        };
        // Control: the filter is in force, and `doctor` sees it.
        let doctor = refused(&["doctor"]);
        let line = line_starting(&doctor.stdout, "clone3 ");
        assert!(
            line.contains("MISSING") && line.contains(name),
            "{doctor:?}"
        );
        let r = refused(&[
            "run",
            "--report",
            "--",
            "/bin/sh",
            "-c",
            "echo $$; hostname; grep -c : /proc/net/dev; exit 6",
        ]);
        assert_eq!(r.code, 6, "{name}: {r:?}");
        assert_eq!(r.stdout, "2\nrsandbox\n1\n", "{name}: {r:?}");
        for feature in ["namespace.pid", "namespace.net", "seccomp", "landlock"] {
            let line = line_starting(&r.stderr, &format!("{feature} "));
            assert!(line.contains("enforced"), "{name}, {feature}: {r:?}");
        }
        let r = refused(&["run", "--timeout", "0.5", "--", "sleep", "30"]);
        assert_eq!(r.code, 128 + libc::SIGKILL, "{name}: {r:?}");
    }
    // Without the filter, doctor finds clone3.
    let doctor = rsandbox(&["doctor"]);
    let line = line_starting(&doctor.stdout, "clone3 ");
    assert!(line.contains(" ok "), "{doctor:?}");
}

/// The first line of `text` that starts with `prefix` (empty if none).
fn line_starting<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_default()
}

/// A resource limit above the hard limit names the resource, the values and the hard limit.
#[test]
fn an_rlimit_above_the_hard_limit_is_explained() {
    // SAFETY: getrlimit fills a valid out-pointer.
    let hard = unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_max
    };
    if hard == libc::RLIM_INFINITY || hard >= 1 << 30 {
        eprintln!("no finite hard limit on descriptors here: nothing to exceed");
        return;
    }
    let over = (hard + 1).to_string();
    let r = rsandbox(&["run", "--rlimit", &format!("nofile={over}"), "--", "true"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr.contains(&format!("RLIMIT_NOFILE, soft {over}"))
            && r.stderr
                .contains(&format!("the hard limit of nofile is {hard}")),
        "{r:?}"
    );
    // Control: at the hard limit it runs.
    let r = rsandbox(&["run", "--rlimit", &format!("nofile={hard}"), "--", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// A cgroup parent that is not in a cgroup2 filesystem is refused by name, before anything is
/// made in it.
#[test]
fn a_cgroup_parent_outside_cgroup2_is_refused() {
    let dir = TempDir::new("not-a-cgroup");
    std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
    let r = rsandbox(&[
        "run",
        "--cgroup-parent",
        &dir.arg(),
        "--memory",
        "64M",
        "--",
        "true",
    ]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr.contains("is not in a cgroup2 filesystem") && r.stderr.contains(&dir.arg()),
        "{r:?}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "made in it: {left:?}");
    let r = rsandbox(&[
        "run",
        "--cgroup-parent",
        "/no-such-cgroup-rsbx",
        "--memory",
        "64M",
        "--",
        "true",
    ]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("does not exist"), "{r:?}");
}

/// Where something asked for (or implied) is not in force as it would be by default, the report
/// says so; each claim is checked inside the sandbox, with the default as control.
#[test]
fn the_report_says_what_is_not_in_force() {
    // A limit's rlimit fallback and the spec's own rlimit for the same resource: the lower one.
    let r = rsandbox(&[
        "run",
        "--report",
        "--limits",
        "best-effort",
        "--memory",
        "16M",
        "--rlimit",
        "as=1G",
        "--",
        "sh",
        "-c",
        "ulimit -v",
    ]);
    assert_eq!((r.code, r.stdout.trim()), (0, "16384"), "{r:?}");
    assert!(
        line_starting(&r.stderr, "rlimits").contains("the lower applies"),
        "{r:?}"
    );

    // Nested user namespaces: refused by the default profile, and without it by the sandbox's
    // own user namespace's limit; allowed only when asked.
    let nested = |options: &[&str]| {
        let mut argv = vec!["run", "--report"];
        argv.extend_from_slice(options);
        argv.extend(["--", "sh", "-c", "unshare -U true; echo $?"]);
        rsandbox(&argv)
    };
    for (options, refused, said) in [
        (&[][..], true, "enforced"),
        (&["--seccomp", "none"][..], true, "max_user_namespaces = 0"),
        (
            &["--seccomp", "none", "--allow-nested-userns"][..],
            false,
            "allowed",
        ),
    ] {
        let r = nested(options);
        assert_eq!(r.stdout.trim() != "0", refused, "{options:?}: {r:?}");
        assert!(
            line_starting(&r.stderr, "nested-userns").contains(said),
            "{options:?}: {r:?}"
        );
    }

    // No PID namespace: the host's /proc, unmasked (control: masked by default).
    let r = rsandbox(&["run", "--report", "--share", "pid", "--", "true"]);
    assert!(
        line_starting(&r.stderr, "mount /proc/*").contains("not masked"),
        "{r:?}"
    );
    let r = rsandbox(&["run", "--report", "--", "true"]);
    assert!(
        line_starting(&r.stderr, "mount /proc/*").contains("enforced"),
        "{r:?}"
    );

    // No mount namespace: host processes are listed in the host's /proc.
    let r = rsandbox(&[
        "run",
        "--report",
        "--share",
        "mount",
        "--",
        "sh",
        "-c",
        "ls /proc | grep -c '^[0-9]'",
    ]);
    assert!(r.stdout.trim().parse::<u32>().unwrap_or(0) > 2, "{r:?}");
    assert!(
        line_starting(&r.stderr, "namespace.pid").contains("host processes are listed"),
        "{r:?}"
    );

    // Landlock off, with rules: they are named as not applied.
    let r = rsandbox(&[
        "run",
        "--report",
        "--landlock",
        "off",
        "--landlock-rw",
        "/data",
        "--",
        "true",
    ]);
    assert!(
        line_starting(&r.stderr, "landlock").contains("(/data) are not applied"),
        "{r:?}"
    );

    // As root without a user namespace, a kept capability is a real one over the host.
    if my_uid() == 0 {
        for (share, scope) in [
            (&["--share", "user"][..], "over the host"),
            (&[][..], "inside the sandbox's user namespace"),
        ] {
            let mut args = vec!["run", "--report", "--cap-keep", "CAP_DAC_OVERRIDE"];
            args.extend_from_slice(share);
            args.extend_from_slice(&["--", "true"]);
            let r = rsandbox(&args);
            assert!(
                line_starting(&r.stderr, "capabilities").contains(scope),
                "{r:?}"
            );
        }
    }
}

/// Mounts nest whatever order they are given in: the outer one first.
#[test]
fn a_mount_given_before_its_parent_is_not_hidden() {
    let dir = TempDir::new("nested-mount");
    std::fs::write(dir.path().join("f"), "inside\n").unwrap();
    let src = format!("{}:/sandbox/tests", dir.arg());
    // Given inner first (and the command line puts binds before tmpfs anyway).
    let r = rsandbox(&[
        "run",
        "--ro-bind",
        &src,
        "--tmpfs",
        "/sandbox",
        "--",
        "cat",
        "/sandbox/tests/f",
    ]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "inside\n"), "{r:?}");
}
