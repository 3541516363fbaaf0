//! What the command can see: ids, processes, host name, network, filesystem.

mod common;

use common::*;
use rsandbox::{IdMapping, Mount, Network, Root, Spec, Status, Want};
use std::time::Duration;

#[test]
fn default_uid_and_gid_are_the_callers() {
    let (code, stdout, _) = run_sh("id -u; id -g");
    assert_eq!(code, 0);
    assert_eq!(stdout, format!("{}\n{}\n", my_uid(), my_gid()));
}

#[test]
fn root_inside_maps_to_the_caller() {
    let mut spec = sh("id -u; id -g; cat /proc/self/uid_map");
    spec.user.uid = Some(0);
    spec.user.gid = Some(0);
    let r = run(&spec);
    let stdout = out(&r);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["0", "0"]);
    let map: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(map, ["0", &my_uid().to_string(), "1"]);
    assert_eq!(r.report.uid_map.len(), 1);
}

#[test]
fn chosen_uid_inside() {
    let mut spec = sh("id -u; id -g");
    spec.user.uid = Some(1234);
    spec.user.gid = Some(4321);
    assert_eq!(out(&run(&spec)), "1234\n4321\n");
}

#[test]
fn setgroups_is_denied_with_a_single_mapping() {
    let (_, stdout, _) = run_sh("cat /proc/self/setgroups");
    assert_eq!(stdout.trim(), "deny");
}

#[test]
fn subordinate_range_maps_65536_ids() {
    if let Some(why) = subordinate_ids_missing() {
        return skip(&why);
    }
    let mut spec = sh("id -u; cat /proc/self/uid_map | wc -l; touch /tmp/f && chown 1000:1000 /tmp/f && stat -c %u /tmp/f");
    spec.user.mapping = IdMapping::SubordinateRange;
    // chown needs CAP_CHOWN, which the default drops.
    spec.security.capabilities = vec!["CAP_CHOWN".into()];
    let r = run(&spec);
    assert_eq!(out(&r), "0\n2\n1000\n", "stderr: {}", err(&r));
    let total: u32 = r.report.uid_map.iter().map(|m| m.count).sum();
    assert_eq!(total, 65536);

    // A chosen id inside the range is used for the command.
    let mut spec = sh("id -u");
    spec.user.mapping = IdMapping::SubordinateRange;
    spec.user.uid = Some(1000);
    spec.user.gid = Some(1000);
    assert_eq!(out(&run(&spec)), "1000\n");
}

#[test]
fn pid_one_is_the_init_and_host_pids_are_invisible() {
    let me = std::process::id();
    let (code, stdout, _) = run_sh(&format!(
        "echo $$; cat /proc/1/comm; test -e /proc/{me} && echo visible; ls /proc | grep -c '^[0-9]'"
    ));
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "2", "the command is pid 2, after its init");
    assert_ne!(lines[1], "sh", "pid 1 is the init, not the command");
    assert!(
        !stdout.contains("visible"),
        "host pid {me} visible: {stdout}"
    );
    // init, sh, ls, grep and maybe a subshell: nothing from the host.
    let count: u32 = lines.last().unwrap().parse().unwrap();
    assert!(count <= 5, "{count} processes visible");
}

#[test]
fn without_pid_namespace_host_pids_are_visible() {
    // Negative control for the test above.
    let mut spec = sh(&format!(
        "test -e /proc/{} && echo visible",
        std::process::id()
    ));
    spec.namespaces.pid = Want::Off;
    let r = run(&spec);
    assert_eq!(out(&r), "visible\n");
    assert_eq!(
        r.report.feature("namespace.pid").unwrap().status,
        Status::Off
    );
}

#[test]
fn hostname_default_and_chosen() {
    assert_eq!(run_sh("hostname").1, "rsandbox\n");
    let mut spec = sh("hostname");
    spec.hostname = "grader-7".into();
    assert_eq!(out(&run(&spec)), "grader-7\n");
}

fn interfaces(spec: &Spec) -> Vec<String> {
    let r = run(spec);
    out(&r)
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
        .collect()
}

#[test]
fn network_namespace_has_only_loopback_and_it_is_up() {
    let spec = sh("cat /proc/net/dev");
    assert_eq!(interfaces(&spec), ["lo"]);
    // Loopback is up: a TCP connection to 127.0.0.1 succeeds.
    if !std::path::Path::new("/usr/bin/python3").exists() {
        return skip("python3 is needed to open a socket inside the sandbox");
    }
    let mut spec = Spec::new([
        "python3",
        "-c",
        "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); \
         c=socket.create_connection(s.getsockname(), timeout=5); print('connected')",
    ]);
    spec.timeout = Some(30.0);
    let r = run(&spec);
    assert_eq!(out(&r), "connected\n", "stderr: {}", err(&r));
}

#[test]
fn host_network_shows_host_interfaces() {
    let host: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
        .collect();
    let mut spec = sh("cat /proc/net/dev");
    spec.network = Network::Host;
    let mut inside = interfaces(&spec);
    let mut host = host;
    inside.sort();
    host.sort();
    assert_eq!(inside, host);
}

#[test]
fn host_view_hides_home_root_var_and_friends() {
    let (code, stdout, _) = run_sh("ls /");
    assert_eq!(code, 0);
    let entries: Vec<&str> = stdout.lines().collect();
    for hidden in ["home", "root", "var", "boot", "mnt", "sys", "srv", "media"] {
        assert!(
            !entries.contains(&hidden),
            "/{hidden} is visible: {entries:?}"
        );
    }
    for present in ["usr", "etc", "proc", "dev", "tmp", "run", "work"] {
        assert!(
            entries.contains(&present),
            "/{present} is missing: {entries:?}"
        );
    }
    // /root and /home are unreachable, not just unlisted.
    let (code, ..) = run_sh("test -e /root || test -e /home");
    assert_ne!(code, 0);
}

#[test]
fn host_symlinks_stay_symlinks() {
    for dir in ["/bin", "/lib", "/sbin"] {
        let Ok(target) = std::fs::read_link(dir) else {
            continue;
        };
        let (_, stdout, _) = run_sh(&format!("readlink {dir}"));
        assert_eq!(stdout.trim(), target.to_string_lossy());
    }
}

#[test]
fn host_view_is_read_only_and_tmp_work_are_writable() {
    let (code, _, stderr) = run_sh("touch /usr/rsbx-probe");
    assert_ne!(code, 0);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    let (code, _, stderr) = run_sh("mkdir /newdir");
    assert_ne!(code, 0, "the root itself is read-only");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    let (code, stdout, stderr) = run_sh("echo a > /tmp/a && echo b > /work/b && echo c > /run/c && cat /tmp/a /work/b /run/c && pwd && echo $HOME");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "a\nb\nc\n/work\n/work\n");
}

#[test]
fn minimal_dev_works() {
    let (code, stdout, stderr) = run_sh(
        "echo x > /dev/null && head -c 5 /dev/zero | wc -c && head -c 7 /dev/urandom | wc -c && \
         ls /dev | tr '\\n' ' ' && echo && readlink /dev/fd && test -c /dev/pts/ptmx && echo pts",
    );
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0].trim(), "5");
    assert_eq!(lines[1].trim(), "7");
    let devs: Vec<&str> = lines[2].split_whitespace().collect();
    let mut expected = vec![
        "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
        "urandom", "zero",
    ];
    expected.sort();
    let mut devs = devs.clone();
    devs.sort();
    assert_eq!(devs, expected);
    assert_eq!(lines[3], "/proc/self/fd");
    assert_eq!(lines[4], "pts");
    // No host block devices.
    let (code, ..) = run_sh("ls /dev/vda /dev/sda 2>/dev/null");
    assert_ne!(code, 0);
}

#[test]
fn read_only_bind_rejects_writes_and_read_write_bind_accepts_them() {
    let dir = TempDir::new("bind");
    std::fs::write(dir.path().join("hello"), "hi\n").unwrap();
    let mut spec = sh("cat /data/hello && touch /data/new");
    spec.filesystem.mounts.push(Mount::Bind {
        source: dir.path().into(),
        destination: "/data".into(),
        readonly: true,
    });
    let r = run(&spec);
    assert_eq!(out(&r), "hi\n");
    assert!(err(&r).contains("Read-only file system"), "{}", err(&r));
    assert!(!dir.path().join("new").exists());

    // Negative control: the same bind read-write lets the write through to the host.
    spec.filesystem.mounts[0] = Mount::Bind {
        source: dir.path().into(),
        destination: "/data".into(),
        readonly: false,
    };
    let r = run(&spec);
    assert!(r.status.success(), "{}", err(&r));
    assert!(dir.path().join("new").exists());
}

#[test]
fn read_only_bind_keeps_locked_flags() {
    // Binding a mount that carries nosuid/nodev/noexec read-only must keep those flags: inside a
    // user namespace they are locked, and a remount that dropped them would fail with EPERM.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    // scripts/test mounts a tmpfs with all three at /tmp/rsandbox-ci/locked; any such mount will do.
    let flagged = mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let dir = *fields.get(1)?;
        let opts: Vec<String> = fields.get(3)?.split(',').map(str::to_string).collect();
        let locked: Vec<String> = opts
            .into_iter()
            .filter(|o| ["nosuid", "nodev", "noexec"].contains(&o.as_str()))
            .collect();
        let readable = std::fs::read_dir(dir).is_ok() && !dir.contains("\\");
        (!locked.is_empty() && readable).then(|| (dir.to_string(), locked))
    });
    let Some((dir, locked)) = flagged else {
        return skip("no host mount with nosuid/nodev/noexec to bind (scripts/test creates one)");
    };
    let mut spec = sh("grep ' /hostmnt ' /proc/self/mounts");
    spec.filesystem.mounts.push(Mount::Bind {
        source: dir.clone().into(),
        destination: "/hostmnt".into(),
        readonly: true,
    });
    let r = run(&spec);
    assert!(r.status.success(), "{}", err(&r));
    let line = out(&r);
    let opts: Vec<&str> = line
        .split_whitespace()
        .nth(3)
        .unwrap_or("")
        .split(',')
        .collect();
    assert!(opts.contains(&"ro"), "{line}");
    for flag in &locked {
        assert!(
            opts.contains(&flag.as_str()),
            "{flag} of {dir} lost: {line}"
        );
    }
}

#[test]
fn single_file_bind() {
    let dir = TempDir::new("file");
    let file = dir.path().join("config.txt");
    std::fs::write(&file, "value=1\n").unwrap();
    let mut spec = sh("cat /etc/app.conf 2>&1; cat /run/app.conf");
    spec.filesystem.mounts.push(Mount::Bind {
        source: file.clone(),
        destination: "/run/app.conf".into(),
        readonly: true,
    });
    let r = run(&spec);
    assert!(out(&r).ends_with("value=1\n"), "{}", out(&r));
}

#[test]
fn tmpfs_mount_at_a_chosen_path() {
    let mut spec =
        sh("echo ok > /scratch/x && cat /scratch/x && grep ' /scratch ' /proc/self/mounts");
    spec.filesystem.mounts.push(Mount::Tmpfs {
        destination: "/scratch".into(),
        size: Some(1 << 20),
        mode: Some(0o777),
    });
    let r = run(&spec);
    assert!(r.status.success(), "{}", err(&r));
    let text = out(&r);
    assert!(text.starts_with("ok\n"));
    assert!(text.contains("size=1024k"), "{text}");
}

#[test]
fn directory_rootfs_is_read_only_and_shows_only_itself() {
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let mut spec = Spec::new(["/bin/sh", "-c", "cat /etc/marker; ls /; touch /etc/x"]);
    spec.filesystem.root = Root::Directory {
        path: rootfs.path().into(),
        writable: false,
    };
    let r = run(&spec);
    let text = out(&r);
    assert!(text.starts_with("busybox-rootfs\n"), "{text} {}", err(&r));
    assert!(
        !text.contains("usr"),
        "host /usr leaked into the rootfs: {text}"
    );
    assert!(err(&r).contains("Read-only file system"), "{}", err(&r));
    assert!(!rootfs.path().join("etc/x").exists());
    // /run is missing in this rootfs: the default mount is skipped and the report says so.
    let run_entry = r
        .report
        .mounts
        .iter()
        .find(|m| m.destination == "/run")
        .unwrap();
    assert_eq!(run_entry.status, Status::Skipped);
}

#[test]
fn directory_rootfs_writable_on_request() {
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let mut spec = Spec::new(["/bin/sh", "-c", "echo hi > /etc/written"]);
    spec.filesystem.root = Root::Directory {
        path: rootfs.path().into(),
        writable: true,
    };
    let r = run(&spec);
    assert!(r.status.success(), "{}", err(&r));
    assert_eq!(
        std::fs::read_to_string(rootfs.path().join("etc/written")).unwrap(),
        "hi\n"
    );
}

#[test]
fn rootfs_symlink_cannot_redirect_a_mount_outside_the_root() {
    // Mount destinations are resolved inside the new root: an absolute symlink in the rootfs
    // leads to the same path *inside* the rootfs, never to the host's.
    let Some(rootfs) = busybox_rootfs() else {
        return;
    };
    let name = format!("/etc/rsbx-escape-{}", marker());
    std::fs::create_dir_all(rootfs.path().join(&name[1..])).unwrap();
    std::os::unix::fs::symlink(&name, rootfs.path().join("escape")).unwrap();
    let mut spec = Spec::new([
        "/bin/sh",
        "-c",
        &format!("grep ' {name} ' /proc/self/mounts"),
    ]);
    spec.filesystem.root = Root::Directory {
        path: rootfs.path().into(),
        writable: true,
    };
    spec.filesystem.mounts.push(Mount::Tmpfs {
        destination: "/escape".into(),
        size: None,
        mode: None,
    });
    let r = run(&spec);
    assert!(
        r.status.success(),
        "the tmpfs is not at {name} inside: {} {}",
        out(&r),
        err(&r)
    );

    // A symlink to a host directory that the rootfs lacks: the mount fails instead of following
    // it out, and the host directory is untouched.
    let outside = TempDir::new("outside");
    std::fs::remove_file(rootfs.path().join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.path(), rootfs.path().join("escape")).unwrap();
    let e = rsandbox::spawn(&spec).expect_err("the mount must fail");
    assert_eq!(e.kind(), rsandbox::ErrorKind::Setup, "{e}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn cgroup_namespace_hides_the_host_cgroup_path() {
    let (_, stdout, _) = run_sh("cat /proc/self/cgroup");
    for line in stdout.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        assert_eq!(path, "/", "cgroup path visible: {line}");
    }
}

#[test]
fn ipc_namespace_is_private() {
    let host = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    let (_, stdout, _) = run_sh("readlink /proc/self/ns/ipc");
    assert_ne!(stdout.trim(), host.to_string_lossy());
}

#[test]
fn time_namespace_on_request() {
    if !std::path::Path::new("/proc/self/ns/time").exists() {
        return skip("kernel has no time namespaces");
    }
    let host = std::fs::read_link("/proc/self/ns/time").unwrap();
    let mut spec = sh("readlink /proc/self/ns/time");
    spec.namespaces.time = Want::Required;
    let r = run(&spec);
    assert_ne!(out(&r).trim(), host.to_string_lossy());
    assert_eq!(
        r.report.feature("namespace.time").unwrap().status,
        Status::Enforced
    );
}

#[test]
fn report_lists_every_namespace_and_mount() {
    let r = run(&sh("true"));
    for ns in ["user", "mnt", "pid", "ipc", "uts", "net", "cgroup", "time"] {
        assert!(
            r.report.feature(&format!("namespace.{ns}")).is_some(),
            "namespace.{ns} missing"
        );
    }
    assert_eq!(
        r.report.feature("namespace.net").unwrap().status,
        Status::Enforced
    );
    let usr = r
        .report
        .mounts
        .iter()
        .find(|m| m.destination == "/usr")
        .unwrap();
    assert!(usr.options.contains(&"ro".to_string()));
    assert_eq!(r.report.uid_map[0].outside, my_uid());
    assert!(
        r.report.skipped().is_empty()
            || r.report
                .skipped()
                .iter()
                .all(|s| !s.starts_with("namespace"))
    );
}

fn start_feature(r: &rsandbox::RunResult) -> rsandbox::Feature {
    r.report
        .features
        .iter()
        .find(|f| f.name == "start-without-copy")
        .cloned()
        .expect("the report has a start-without-copy entry")
}

#[test]
fn init_is_the_small_program_and_the_caller_is_not_copied() {
    let r = run(&sh(
        // pid 1 executes rsandbox-init right after the command has started: give it that moment.
        "sleep 0.2; tr '\\0' ' ' </proc/1/cmdline; echo; grep -E '^(VmRSS|Name):' /proc/1/status",
    ));
    let start = start_feature(&r);
    if std::env::var_os("RSANDBOX_FORK_START").is_some() {
        // The lane that runs the suite with the forking start.
        assert_eq!(start.status, rsandbox::Status::Skipped, "{start:?}");
        assert!(
            start.detail.contains("RSANDBOX_FORK_START"),
            "{}",
            start.detail
        );
        assert!(!out(&r).starts_with("rsandbox-init"), "{}", out(&r));
        return;
    }
    if start.status != rsandbox::Status::Enforced {
        return skip(&format!(
            "the start copies the caller here: {}",
            start.detail
        ));
    }
    let text = out(&r);
    let mut lines = text.lines();
    let cmdline = lines.next().unwrap_or_default();
    assert!(
        cmdline.starts_with("rsandbox-init "),
        "pid 1 runs {cmdline:?}"
    );
    // A copy of this (multi-megabyte) test process would be resident in megabytes; the small init
    // is resident in a few pages.
    let rss_kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(rss_kib < 512, "pid 1 is resident in {rss_kib} KiB: {text}");
    // The small init relays signals and reports statuses like the other: a signal sent to the
    // init reaches the command, and the command's status is the sandbox's.
    let r = run(&sh("kill -TERM 1; sleep 5; exit 0"));
    assert_eq!(r.status.signal(), Some(libc::SIGTERM), "{:?}", r.status);
    let r = run(&sh("exit 42"));
    assert_eq!(r.status.code(), Some(42));
}

#[test]
fn a_command_keeping_cap_sys_ptrace_uses_the_forking_start() {
    // Negative control: the start without copying is used when the command could not reach
    // pid 1 while that shares the caller's memory; with CAP_SYS_PTRACE it could, so it forks.
    let mut spec = sh("true");
    spec.security.capabilities = vec!["CAP_SYS_PTRACE".into()];
    let start = start_feature(&run(&spec));
    assert_eq!(start.status, rsandbox::Status::Skipped, "{start:?}");
    assert!(start.detail.contains("CAP_SYS_PTRACE"), "{}", start.detail);
    let mut spec = sh("true");
    spec.security.capabilities = vec!["CAP_NET_RAW".into()];
    let start = start_feature(&run(&spec));
    if std::env::var_os("RSANDBOX_FORK_START").is_none() {
        assert_eq!(start.status, rsandbox::Status::Enforced, "{start:?}");
    }
}

#[test]
fn a_range_mapping_uses_the_forking_start_and_says_so() {
    // Negative control of the test above: the caller writes range maps during setup, so this start
    // must fork, and pid 1 is then a copy of this test process.
    if let Some(why) = subordinate_ids_missing() {
        return skip(&why);
    }
    let mut spec = sh("tr '\\0' ' ' </proc/1/cmdline");
    spec.user.mapping = IdMapping::SubordinateRange;
    let r = run(&spec);
    let start = start_feature(&r);
    assert_eq!(start.status, rsandbox::Status::Skipped, "{start:?}");
    assert!(start.detail.contains("range"), "{}", start.detail);
    assert!(!out(&r).starts_with("rsandbox-init"), "{}", out(&r));
}

#[test]
fn without_a_cgroup_the_result_comes_first_and_the_rest_is_gone_soon_after() {
    let m = marker();
    let mut spec = sh(&format!("sleep 100{m} & (sleep 101{m} &); echo started"));
    spec.cgroup.want = Want::Off;
    let r = run(&spec);
    assert_eq!(out(&r), "started\n");
    assert!(r.status.success() && r.usage.max_rss > 0, "{r:?}");
    // The orphans die with the PID namespace, torn down right after the status came.
    assert!(
        gone_within(&m, Duration::from_secs(5)),
        "survivors: {:?}",
        pids_with(&m)
    );
}
